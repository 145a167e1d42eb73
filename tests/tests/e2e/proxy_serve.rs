//! The proxy serving real requests: the real `krouter` between the test client and the
//! scripted mock upstream.

use std::time::Duration;

use krouter_tests::client::post;
use krouter_tests::home::TempHome;
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::leak::{assert_absent, assert_absent_from_files, fake_secret};
use krouter_tests::upstream::MockUpstream;

/// A home whose policy routes `chat` to an OpenAI-compatible mock that demands a credential.
fn openai_setup() -> (TempHome, MockUpstream, String, String) {
    let home = TempHome::init();
    let credential = fake_secret("sk-upstream-", 32);
    let upstream = MockUpstream::builder()
        .credential(Some(credential.clone()))
        .start();
    home.set_credential("mock", "openai-compatible", &credential);
    home.write_policy(&policy(
        2,
        &format!(
            "[[providers]]\nname = \"mock\"\nkind = \"openai-compatible\"\nbase_url = \"{}\"\ncredential = \"mock\"\n\n[[routes]]\nmodel = \"chat\"\ntargets = [\"mock:real-model\"]\n",
            upstream.base_url()
        ),
    ));
    (home, upstream, credential, String::new())
}

#[test]
fn a_chat_completion_goes_through_with_the_upstream_credential_and_nothing_leaks() {
    let (home, upstream, credential, _) = openai_setup();
    let (_id, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let reply = post(
        &krouter.url("/v1/chat/completions"),
        Some(&key),
        r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| id.starts_with("req_"))
    );
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 11);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].json().unwrap()["model"], "real-model");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {credential}").as_str())
    );
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("\"tokens_in\":11"), "{log}");
    assert_absent(&log, &[&key, &credential], "the krouter log");
    assert_absent_from_files(&home.root, &[&key, &credential], &[]);
    let _ = Duration::ZERO;
}
