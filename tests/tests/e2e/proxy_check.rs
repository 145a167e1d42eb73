//! `krouter check` through the real binary: a fresh home passes and the report names where
//! each secret came from without showing it, and the edge's access rules and limits; a tampered policy, a rolled-back serial and a
//! public listener without API keys are each refused with their exit code.

use std::fs;

use krouter_config::state::StateDb;
use krouter_policy::{AcceptedPolicy, PolicyDigest, Serial};
use krouter_tests::bins::admin_with;
use krouter_tests::home::TempHome as Home;
use krouter_tests::leak;

#[test]
fn a_fresh_home_checks_out_without_showing_secrets() {
    let home = Home::init();
    let run = home.check(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    for want in [
        "krouter configuration OK",
        "listen      127.0.0.1:20128",
        "serial 1",
        "STORAGE_ENCRYPTION_KEY: set (from",
        // The edge the default policy enforces.
        "ip allow    any address not denied",
        "lockout     10 failures in 60 s lock an address for 900 s",
        "rate limits 120 per minute per address without a valid key",
        "cors origins none",
        "limits      head 32768 bytes, 100 headers, head within 10000 ms, idle 60000 ms, 1024 connections (512 per address), 100 HTTP/2 streams",
        "embeddings 4194304",
    ] {
        assert!(run.stdout.contains(want), "{want}: {run:?}");
    }
    let storage_key = fs::read_to_string(home.root.join("secrets/storage.key")).unwrap();
    let api_secret = fs::read_to_string(home.root.join("secrets/api-key.secret")).unwrap();
    leak::assert_absent(
        &run.all_output(),
        &[storage_key.trim(), api_secret.trim()],
        "krouter check",
    );
    assert!(
        !home.root.join("state/state.sqlite").exists(),
        "check wrote the state database"
    );
}

#[test]
fn tampered_rolled_back_and_exposed_configurations_are_refused() {
    let home = Home::init();
    let policy = home.root.join("policy/policy.toml");
    let original = fs::read_to_string(&policy).unwrap();
    fs::write(&policy, original.replace("retries = 1", "retries = 2")).unwrap();
    let run = home.check(&[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("does not match the policy"), "{run:?}");
    fs::write(&policy, &original).unwrap();

    let state = StateDb::open(&home.root.join("state/state.sqlite")).unwrap();
    state
        .record_accepted(&AcceptedPolicy::new(
            Serial::try_new(5).unwrap(),
            PolicyDigest::of(b"newer"),
        ))
        .unwrap();
    drop(state);
    let run = home.check(&[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("lower than the last accepted serial 5"),
        "{run:?}"
    );
    fs::remove_file(home.root.join("state/state.sqlite")).unwrap();

    fs::write(
        &policy,
        original.replace("require_api_keys = true", "require_api_keys = false"),
    )
    .unwrap();
    let key = home.root.join("secrets/policy-signing.key");
    let signed = admin_with(
        home.parent(),
        &[
            "policy",
            "sign",
            policy.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(signed.code, 0, "{signed:?}");
    assert_eq!(home.check(&[]).code, 0, "loopback without keys is allowed");
    let run = home.check(&[("KROUTER_LISTEN", "0.0.0.0:20128")]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not a loopback address"), "{run:?}");

    let run = home.check(&[("KROUTER_LISTEN", "nowhere")]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("the KROUTER_LISTEN variable: listen"),
        "{run:?}"
    );
}
