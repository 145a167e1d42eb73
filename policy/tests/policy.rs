//! The policy contract, through the public API only: the issue's minimal file validates,
//! each validation rule has a table row (what is written → which line, field and message),
//! and load's order and rollback rules hold.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: helpers fail the test by panicking"
)]

use std::time::Duration;

use krouter_policy::{
    AcceptedPolicy, Error, PolicyFiles, SignatureError, SigningKey, SkipCredentialCheck,
    TrustedKeys, check, load,
};

/// The file from the foundation issue, verbatim: it must validate.
const MINIMAL: &str = r#"serial = 1                      # integer; must never decrease

[access]
require_api_keys = true         # default true

[[providers]]
name = "local"
kind = "openai-compatible"      # "openai" | "anthropic" | "openai-compatible"
base_url = "http://127.0.0.1:11434/v1"
# credential = "openai-main"    # name of a stored credential; optional for local servers

[[routes]]
model = "llama"                 # the model name clients send
targets = ["local:llama3.1"]    # provider:upstream-model, tried in order
"#;

fn problems(text: &str) -> Vec<String> {
    match check("policy.toml", text.as_bytes(), &SkipCredentialCheck) {
        Ok(_) => Vec::new(),
        Err(Error::Invalid(p)) => p.lines(),
        Err(other) => vec![other.to_string()],
    }
}

/// A runtime-made string with the shape of a provider key, so no real-looking secret is
/// committed.
fn fake_key(prefix: &str) -> String {
    let mut s = prefix.to_owned();
    for i in 0..40u32 {
        let c = b"Ab3dE5gH7jK9mN1pQ2sT4vW6yZ8"[(i * 7 % 27) as usize];
        s.push(char::from(c));
    }
    s
}

#[test]
fn the_minimal_policy_validates_with_documented_defaults() {
    let summary = check("policy.toml", MINIMAL.as_bytes(), &SkipCredentialCheck).unwrap();
    assert_eq!(summary.serial, 1);
    assert!(summary.require_api_keys);
    assert_eq!(summary.providers, ["local"]);
    assert_eq!(summary.routes, ["llama"]);
    assert_eq!(summary.groups, ["default"]);
}

#[test]
fn limits_have_their_documented_defaults_and_can_be_set() {
    let signed = |text: &str| {
        let (key, _) = SigningKey::generate().unwrap();
        let mut trusted = TrustedKeys::new();
        trusted.insert("k.pub", key.trusted_key()).unwrap();
        let (bytes, sig) = signed(&key, text);
        load_with(&trusted, &bytes, &sig, None).unwrap()
    };
    let policy = signed(MINIMAL);
    let l = policy.limits();
    assert_eq!(l.max_header_bytes(), 32 * 1024);
    assert_eq!(l.max_headers(), 100);
    assert_eq!(l.header_read_timeout(), Duration::from_secs(10));
    assert_eq!(l.keep_alive_idle(), Duration::from_secs(60));
    assert_eq!(l.body_read_timeout(), Duration::from_secs(60));
    assert_eq!(l.body_min_bytes_per_sec(), 1024);
    assert_eq!(l.body_min_rate_grace(), Duration::from_secs(5));
    assert_eq!(l.response_write_timeout(), Duration::from_secs(60));
    assert_eq!(l.max_connections(), 1024);
    assert_eq!(l.max_connections_per_address(), 512);
    assert_eq!(l.h2_max_concurrent_streams(), 100);
    let b = l.max_body_bytes();
    let mib = 1024 * 1024;
    assert_eq!(
        [
            b.chat_completions(),
            b.responses(),
            b.messages(),
            b.count_tokens(),
            b.embeddings()
        ],
        [32 * mib, 32 * mib, 32 * mib, 16 * mib, 4 * mib]
    );
    assert_eq!(b.largest(), 32 * mib);

    let tight = format!(
        "{MINIMAL}[limits]\nmax_header_bytes = 8192\nheader_read_timeout_ms = 1500\nbody_min_bytes_per_sec = 0\nmax_connections = 8\nmax_connections_per_address = 2\n[limits.max_body_bytes]\nchat_completions = 2048\nresponses = 1024\nmessages = 4096\ncount_tokens = 1024\nembeddings = 1024\n"
    );
    let policy = signed(&tight);
    let l = policy.limits();
    assert_eq!(l.max_header_bytes(), 8192);
    assert_eq!(l.header_read_timeout(), Duration::from_millis(1500));
    assert_eq!(l.body_min_bytes_per_sec(), 0);
    assert_eq!(l.max_connections(), 8);
    assert_eq!(l.max_connections_per_address(), 2);
    assert_eq!(l.max_body_bytes().largest(), 4096);
    assert_eq!(
        l.keep_alive_idle(),
        Duration::from_secs(60),
        "unset fields keep their default"
    );
}

#[test]
fn a_provider_resilience_table_overrides_the_policy_and_inherits_the_rest() {
    let (key, _) = SigningKey::generate().unwrap();
    let mut trusted = TrustedKeys::new();
    trusted.insert("k.pub", key.trusted_key()).unwrap();
    let text = MINIMAL.replace(
        "[[routes]]",
        "[providers.resilience]\nretries = 0\nrate_limit_cooldown_secs = 5\n[providers.resilience.breaker]\nfailure_threshold = 2\n\n[[providers]]\nname = \"spare\"\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:8080/v1\"\n\n[[routes]]",
    ) + "[resilience]\nretries = 3\nretry_budget_ms = 4000\n[resilience.breaker]\nopen_secs = 7\n";
    let (bytes, sig) = signed(&key, &text);
    let policy = load_with(&trusted, &bytes, &sig, None).unwrap();

    let wide = policy.resilience();
    assert_eq!(
        (wide.retries(), wide.breaker().open()),
        (3, Duration::from_secs(7))
    );
    let own = policy.provider("local").unwrap().resilience();
    assert_eq!(own.retries(), 0, "its own value");
    assert_eq!(own.rate_limit_cooldown(), Duration::from_secs(5));
    assert_eq!(own.breaker().failure_threshold(), 2);
    assert_eq!(
        own.breaker().open(),
        Duration::from_secs(7),
        "the policy's breaker value"
    );
    assert_eq!(
        own.breaker().half_open_probes(),
        1,
        "the documented default"
    );
    assert_eq!(
        own.retry_budget(),
        Duration::from_secs(4),
        "always the policy's"
    );
    assert_eq!(own.backoff_initial(), Duration::from_millis(100));
    let spare = policy.provider("spare").unwrap().resilience();
    assert_eq!(
        (spare.retries(), spare.breaker().failure_threshold()),
        (3, 5)
    );
    assert_eq!(spare.rate_limit_cooldown(), Duration::from_secs(30));
}

#[test]
fn the_documented_example_validates() {
    let text = include_str!("../../docs/examples/policy.toml");
    assert_eq!(problems(text), Vec::<String>::new());
}

/// Each row: text appended to or replacing the minimal policy → the one problem expected,
/// as `line path: message fragment`.
#[test]
fn every_validation_rule_names_line_field_and_problem() {
    let base = MINIMAL;
    let with = |extra: &str| format!("{base}{extra}");
    let openai_key = fake_key("sk-");
    let anthropic_key = fake_key("sk-ant-api03-");
    let aws_key: String = format!(
        "AKIA{}",
        fake_key("").to_ascii_uppercase().get(..16).unwrap()
    );
    let rows: Vec<(&str, String, &str)> = vec![
        (
            "unknown root field",
            format!("colour = \"blue\"\n{base}"),
            ":1 colour: unknown field",
        ),
        (
            "unknown nested field",
            base.replace("require_api_keys = true", "require_keys = true"),
            ":4 access.require_keys: unknown field",
        ),
        (
            "wrong type",
            base.replace("require_api_keys = true ", "require_api_keys = 1 "),
            ":4 access.require_api_keys: wrong type: found an integer",
        ),
        (
            "a table written as a positional array",
            base.replace(
                "[access]\nrequire_api_keys = true         # default true",
                "access = [false]",
            ),
            ":3 access: wrong type: found an array, expected a table",
        ),
        (
            "an array of tables written as arrays",
            format!(
                "routes = [[\"llama\", [\"local:llama3.1\"]]]\n{}",
                base.split("[[routes]]").next().unwrap()
            ),
            ":1 routes[0]: wrong type: found an array, expected a table",
        ),
        (
            "a date-time where an integer belongs",
            base.replace("serial = 1 ", "serial = 1979-05-27 "),
            ":1 serial: wrong type: found a date-time, expected an integer",
        ),
        (
            "ssrf ipv6 metadata",
            base.replace("127.0.0.1:11434", "[fd20:ce::254]"),
            ":9 providers[0].base_url: host refused: cloud metadata endpoint",
        ),
        (
            "ssrf non-canonical address",
            base.replace("127.0.0.1:11434", "0x7f.1"),
            ":9 providers[0].base_url: host refused",
        ),
        (
            "serial zero",
            base.replace("serial = 1 ", "serial = 0 "),
            ":1 serial: must be a positive integer",
        ),
        (
            "serial missing",
            base.replace("serial = 1 ", "#"),
            ":1 serial: missing required field",
        ),
        (
            "duplicate provider",
            with(
                "[[providers]]\nname = \"local\"\nkind = \"openai-compatible\"\nbase_url = \"http://10.0.0.2/v1\"\n",
            ),
            ":16 providers[1].name: duplicate provider `local`",
        ),
        (
            "duplicate route",
            with("[[routes]]\nmodel = \"llama\"\ntargets = [\"local:x\"]\n"),
            ":16 routes[1].model: duplicate route for model `llama`",
        ),
        (
            "dangling target",
            base.replace("local:llama3.1", "remote:llama3.1"),
            ":14 routes[0].targets[0]: no provider named `remote`",
        ),
        (
            "target without colon",
            base.replace("local:llama3.1", "llama3.1"),
            ":14 routes[0].targets[0]: a target is \"provider:model\"",
        ),
        (
            "empty targets",
            base.replace("[\"local:llama3.1\"]", "[]"),
            ":14 routes[0].targets: a route needs at least one target",
        ),
        (
            "duplicate target",
            base.replace("[\"local:llama3.1\"]", "[\"local:a\", \"local:a\"]"),
            ":14 routes[0].targets[1]: the same target is listed twice",
        ),
        (
            "missing provider kind",
            base.replace("kind = \"openai-compatible\"", ""),
            ":6 providers[0].kind: missing required field",
        ),
        (
            "unknown kind",
            base.replace("\"openai-compatible\"      #", "\"ollama\" #"),
            ":8 providers[0].kind: unknown kind",
        ),
        (
            "bad provider name",
            base.replace("name = \"local\"", "name = \"my provider\"")
                .replace("local:", "my provider:"),
            ":7 providers[0].name: `my provider` is not a valid name",
        ),
        (
            "ssrf metadata",
            base.replace("127.0.0.1:11434", "169.254.169.254"),
            ":9 providers[0].base_url:",
        ),
        (
            "ssrf scheme",
            base.replace("http://127.0.0.1:11434/v1", "file:///etc/passwd"),
            ":9 providers[0].base_url:",
        ),
        (
            "cloud kind needs a credential",
            base.replace("\"openai-compatible\"      #", "\"openai\" #"),
            ":6 providers[0].credential: a provider of kind \"openai\" needs a credential",
        ),
        (
            "credential over plain http to a public host",
            base.replace("http://127.0.0.1:11434/v1", "http://api.example.com/v1")
                .replace("# credential =", "credential ="),
            ":9 providers[0].base_url: a credential would be sent over plain http",
        ),
        (
            "timeout out of range",
            base.replace("# credential", "connect_timeout_ms = 0\n# credential"),
            ":10 providers[0].connect_timeout_ms: must be between 1 and 120000, got 0",
        ),
        (
            "bad cidr",
            base.replace("require_api_keys = true", "ip_allow = [\"10.0.0.0/33\"]"),
            ":4 access.ip_allow[0]: not an IP address or CIDR network",
        ),
        (
            "wildcard cors",
            base.replace("require_api_keys = true", "cors_origins = [\"*\"]"),
            ":4 access.cors_origins[0]: a wildcard origin is not allowed",
        ),
        (
            "cors origin with a path",
            base.replace(
                "require_api_keys = true",
                "cors_origins = [\"https://a.example/x\"]",
            ),
            ":4 access.cors_origins[0]: an origin is exactly scheme://host[:port]",
        ),
        (
            "unauthenticated rate limit out of range",
            base.replace(
                "require_api_keys = true",
                "unauthenticated_requests_per_minute = 0",
            ),
            ":4 access.unauthenticated_requests_per_minute: must be between 1 and 1000000",
        ),
        (
            "lockout out of range",
            with("[access.lockout]\nmax_failures = 0\n"),
            ":16 access.lockout.max_failures: must be between 1 and 1000",
        ),
        (
            "group naming a missing route",
            with("[[access.groups]]\nname = \"team\"\nmodels = [\"gpt\"]\n"),
            ":17 access.groups[0].models[0]: no route for model `gpt`",
        ),
        (
            "duplicate group",
            with("[[access.groups]]\nname = \"a\"\n[[access.groups]]\nname = \"a\"\n"),
            ":18 access.groups[1].name: duplicate group `a`",
        ),
        (
            "wildcard mixed with models",
            with("[[access.groups]]\nname = \"a\"\nmodels = [\"*\", \"llama\"]\n"),
            ":17 access.groups[0].models[0]: \"*\" (every route) must be the only entry",
        ),
        (
            "negative budget",
            with("[[access.groups]]\nname = \"a\"\ntokens_per_day = -5\n"),
            ":17 access.groups[0].tokens_per_day: must be between 1 and",
        ),
        (
            "backoff max below initial",
            with("[resilience]\nbackoff_initial_ms = 500\nbackoff_max_ms = 100\n"),
            ":17 resilience.backoff_max_ms: must be at least resilience.backoff_initial_ms",
        ),
        (
            "breaker out of range",
            with("[resilience.breaker]\nfailure_threshold = 0\n"),
            ":16 resilience.breaker.failure_threshold: must be between 1 and 1000",
        ),
        (
            "provider resilience out of range",
            base.replace(
                "[[routes]]",
                "[providers.resilience]\nretries = 9\n[[routes]]",
            ),
            ":13 providers[0].resilience.retries: must be between 0 and 5",
        ),
        (
            "provider breaker out of range",
            base.replace(
                "[[routes]]",
                "[providers.resilience.breaker]\nhalf_open_probes = 0\n[[routes]]",
            ),
            ":13 providers[0].resilience.breaker.half_open_probes: must be between 1 and 100",
        ),
        (
            "provider backoff max below the policy's initial",
            base.replace(
                "[[routes]]",
                "[providers.resilience]\nbackoff_max_ms = 50\n[[routes]]",
            ) + "[resilience]\nbackoff_initial_ms = 200\n",
            ":13 providers[0].resilience.backoff_max_ms: must be at least providers[0].resilience.backoff_initial_ms",
        ),
        (
            "a retry budget is per request, not per provider",
            base.replace(
                "[[routes]]",
                "[providers.resilience]\nretry_budget_ms = 50\n[[routes]]",
            ),
            ":13 providers[0].resilience.retry_budget_ms: unknown field",
        ),
        (
            "retention out of range",
            with("[logging]\nretention_days = 0\n"),
            ":16 logging.retention_days: must be between 1 and 3650",
        ),
        (
            "unknown limits field",
            with("[limits]\nmax_uri_bytes = 100\n"),
            ":16 limits.max_uri_bytes: unknown field",
        ),
        (
            "header buffer below hyper's minimum",
            with("[limits]\nmax_header_bytes = 4096\n"),
            ":16 limits.max_header_bytes: must be between 8192 and 1048576, got 4096",
        ),
        (
            "no connection per address",
            with("[limits]\nmax_connections_per_address = 0\n"),
            ":16 limits.max_connections_per_address: must be between 1 and 1000000, got 0",
        ),
        (
            "too few headers",
            with("[limits]\nmax_headers = 0\n"),
            ":16 limits.max_headers: must be between 16 and 1000, got 0",
        ),
        (
            "zero header timeout",
            with("[limits]\nheader_read_timeout_ms = 0\n"),
            ":16 limits.header_read_timeout_ms: must be between 100 and 300000, got 0",
        ),
        (
            "idle keep-alive out of range",
            with("[limits]\nkeep_alive_idle_ms = 3600001\n"),
            ":16 limits.keep_alive_idle_ms: must be between 100 and 3600000",
        ),
        (
            "negative minimum body rate",
            with("[limits]\nbody_min_bytes_per_sec = -1\n"),
            ":16 limits.body_min_bytes_per_sec: must be between 0 and 104857600, got -1",
        ),
        (
            "no connections at all",
            with("[limits]\nmax_connections = 0\n"),
            ":16 limits.max_connections: must be between 1 and 1000000, got 0",
        ),
        (
            "too many HTTP/2 streams",
            with("[limits]\nh2_max_concurrent_streams = 100000\n"),
            ":16 limits.h2_max_concurrent_streams: must be between 1 and 1000",
        ),
        (
            "a body limit over 32 MiB",
            with("[limits.max_body_bytes]\nmessages = 33554433\n"),
            ":16 limits.max_body_bytes.messages: must be between 1024 and 33554432, got 33554433",
        ),
        (
            "an unknown endpoint body limit",
            with("[limits.max_body_bytes]\nmodels = 1024\n"),
            ":16 limits.max_body_bytes.models: unknown field",
        ),
        (
            "openai key literal",
            with(&format!(
                "[logging]\nretention_days = 1\n# x\n[[routes]]\nmodel = \"{openai_key}\"\ntargets = [\"local:a\"]\n"
            )),
            ":19 routes[1].model: looks like a secret (an OpenAI-style API key)",
        ),
        (
            "anthropic key literal in an unknown field",
            base.replace(
                "# credential = \"openai-main\"",
                &format!("api_key = \"{anthropic_key}\""),
            ),
            ":10 providers[0].api_key: looks like a secret (an Anthropic API key)",
        ),
        (
            "aws key literal",
            base.replace("\"llama\"  ", &format!("\"{aws_key}\"")),
            ":13 routes[0].model: looks like a secret (an AWS access key id)",
        ),
        (
            "high entropy literal",
            base.replace("\"llama\"  ", &format!("\"{}\"", fake_key("x"))),
            ":13 routes[0].model: looks like a secret (a long random string)",
        ),
    ];
    for (name, text, want) in rows {
        let got = problems(&text);
        assert!(
            got.iter().any(|line| line.contains(want)),
            "{name}: wanted a problem containing {want:?}, got {got:#?}"
        );
        for secret in [&openai_key, &anthropic_key, &aws_key] {
            assert!(
                got.iter().all(|line| !line.contains(secret.as_str())),
                "{name}: a message echoed a secret: {got:#?}"
            );
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = MINIMAL
        .replace("serial = 1 ", "serial = -1 ")
        .replace(
            "require_api_keys = true",
            "require_api_keys = true\nextra = 1",
        )
        .replace("local:llama3.1", "nowhere:llama3.1")
        .replace("127.0.0.1:11434", "169.254.169.254");
    let got = problems(&text);
    assert_eq!(got.len(), 4, "{got:#?}");
    let lines: Vec<_> = got
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "policy.toml:1",
            "policy.toml:5",
            "policy.toml:10",
            "policy.toml:15"
        ]
    );
}

#[test]
fn an_invalid_provider_or_route_is_not_reported_again_where_it_is_used() {
    let text = MINIMAL.replace("127.0.0.1:11434", "169.254.169.254")
        + "[[routes]]\nmodel = \"bad\"\ntargets = []\n"
        + "\n[[access.groups]]\nname = \"g\"\nmodels = [\"bad\", \"llama\"]\n";
    let got = problems(&text);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].contains(":9 providers[0].base_url"), "{got:#?}");
    assert!(got[1].contains(":17 routes[1].targets"), "{got:#?}");
}

#[test]
fn a_secret_in_a_target_is_never_echoed_in_part() {
    let password = fake_key("");
    let text = MINIMAL
        .replace("# credential = \"openai-main\"", "models = [\"llama3.1\"]")
        .replace(
            "\"local:llama3.1\"]",
            &format!("\"local:llama3.1\", \"local://user:{password}@host\"]"),
        );
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].contains("routes[0].targets[1]: looks like a secret"),
        "{got:#?}"
    );
    assert!(!got[0].contains(&password), "{got:#?}");
}

#[test]
fn syntax_and_encoding_errors_name_the_line() {
    let err = check("p.toml", b"serial = 1\n[access\n", &SkipCredentialCheck).unwrap_err();
    assert!(
        err.to_string().starts_with("p.toml:2: not valid TOML"),
        "{err}"
    );
    let err = check("p.toml", b"serial = 1\n\xff\n", &SkipCredentialCheck).unwrap_err();
    assert!(
        err.to_string()
            .contains("p.toml:2: not valid TOML: the file is not UTF-8"),
        "{err}"
    );
    let big = vec![b'#'; krouter_policy::MAX_POLICY_BYTES + 1];
    assert!(matches!(
        check("p.toml", &big, &SkipCredentialCheck),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn credentials_are_checked_against_the_store_when_one_is_given() {
    let text = MINIMAL.replace("# credential = \"openai-main\"", "credential = \"ollama\"");
    let err = check("policy.toml", text.as_bytes(), &["other"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("no stored credential named `ollama`"),
        "{err}"
    );
    assert!(check("policy.toml", text.as_bytes(), &["ollama"]).is_ok());
}

fn signed(key: &SigningKey, text: &str) -> (Vec<u8>, String) {
    (
        text.as_bytes().to_vec(),
        key.sign(text.as_bytes()).to_file_text(),
    )
}

fn load_with(
    trusted: &TrustedKeys,
    bytes: &[u8],
    sig: &str,
    last: Option<&AcceptedPolicy>,
) -> Result<krouter_policy::Policy, Error> {
    load(
        PolicyFiles {
            name: "policy.toml",
            bytes,
            sig_name: "policy.toml.sig",
            sig: sig.as_bytes(),
        },
        trusted,
        last,
        &SkipCredentialCheck,
    )
}

#[test]
fn load_verifies_before_it_parses() {
    let (key, _) = SigningKey::generate().unwrap();
    let mut trusted = TrustedKeys::new();
    trusted.insert("k.pub", key.trusted_key()).unwrap();
    // An invalid file with a bad signature is a signature error, not a parse error: no
    // unsigned byte reaches the parser.
    let (_, sig) = signed(&key, MINIMAL);
    let err = load_with(&trusted, b"[not toml", &sig, None).unwrap_err();
    assert!(
        matches!(err, Error::Signature(SignatureError::Mismatch { .. })),
        "{err}"
    );
    // A validly signed but invalid policy is still refused, with its problems.
    let (bytes, sig) = signed(&key, "serial = 1\nbogus = true\n");
    let err = load_with(&trusted, &bytes, &sig, None).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let (bytes, sig) = signed(&key, MINIMAL);
    let policy = load_with(&trusted, &bytes, &sig, None).unwrap();
    assert_eq!(policy.signer(), Some(key.key_id()));
    assert_eq!(
        policy.route("llama").unwrap().targets()[0].to_string(),
        "local:llama3.1"
    );
    assert_eq!(policy.upstream_ports(), [11434]);
}

#[test]
fn rollback_and_reused_serials_are_refused() {
    let (key, _) = SigningKey::generate().unwrap();
    let mut trusted = TrustedKeys::new();
    trusted.insert("k.pub", key.trusted_key()).unwrap();
    let v2 = MINIMAL.replace("serial = 1 ", "serial = 2 ");
    let (bytes, sig) = signed(&key, &v2);
    let accepted = load_with(&trusted, &bytes, &sig, None).unwrap().accepted();

    let (bytes, sig) = signed(&key, MINIMAL);
    let err = load_with(&trusted, &bytes, &sig, Some(&accepted)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rollback {
                accepted: 2,
                got: 1,
                ..
            }
        ),
        "{err}"
    );

    let changed = v2.replace("llama3.1", "llama3.2");
    let (bytes, sig) = signed(&key, &changed);
    let err = load_with(&trusted, &bytes, &sig, Some(&accepted)).unwrap_err();
    assert!(
        matches!(err, Error::SerialReused { serial: 2, .. }),
        "{err}"
    );

    // The same file again (a restart) and a higher serial are both fine.
    let (bytes, sig) = signed(&key, &v2);
    assert!(load_with(&trusted, &bytes, &sig, Some(&accepted)).is_ok());
    let v3 = changed.replace("serial = 2 ", "serial = 3 ");
    let (bytes, sig) = signed(&key, &v3);
    assert!(load_with(&trusted, &bytes, &sig, Some(&accepted)).is_ok());
}

/// Replays every file of `fuzz/corpus/<target>/` through the fuzz entry points on stable,
/// so inputs that once crashed a target (saved into the corpus) stay fixed.
#[test]
fn fuzz_corpus_replays_without_panics() {
    use krouter_policy::fuzzing;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in [
        ("policy_toml", fuzzing::policy_toml as fn(&[u8])),
        ("policy_sig", fuzzing::policy_sig),
        ("ssrf_host", fuzzing::ssrf_host),
    ] {
        let dir = root.join(name);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            target(&std::fs::read(&path).unwrap());
            count += 1;
        }
        assert!(count > 0, "{} has no corpus files", dir.display());
    }
}
