//! The official Python SDKs (`openai`, `anthropic`) against the real `krouter` in front of
//! the mock upstream: every call a client app makes (chat, streaming with usage, embeddings,
//! the Responses API, model lists, messages, token counting) parses, and errors surface as
//! the SDKs' own exception types. The SDKs live in a virtualenv made by `.ci/python-env`
//! (pinned in `tests/python/requirements.txt`); the checks are `tests/python/sdk_check.py`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use krouter_tests::home::TempHome;
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::leak::{assert_absent, assert_absent_from_files, fake_secret};
use krouter_tests::upstream::MockUpstream;

/// The route to the OpenAI-compatible mock, and the upstream model it names.
const OPENAI_ROUTE: (&str, &str) = ("gpt-demo", "gpt-4o-mini");
/// The route to the Anthropic mock, and the upstream model it names.
const ANTHROPIC_ROUTE: (&str, &str) = ("claude-demo", "claude-3-5-haiku-latest");
/// The longest the whole SDK run may take.
const SDK_RUN_LIMIT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository")
        .to_owned()
}

/// The venv's Python, after `.ci/python-env` made sure the venv is current (once per test
/// binary; the script is idempotent and fast when nothing changed).
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo().join(".ci/python-env"))
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .expect("bash runs .ci/python-env");
        assert!(
            output.status.success(),
            ".ci/python-env failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        venv_dir().join("bin/python")
    })
}

/// Where `.ci/python-env` puts the venv: `$KROUTER_VENV` (relative to the repository), else
/// `~/.cache/krouter/venv`.
#[expect(
    clippy::disallowed_methods,
    reason = "the venv location is a test-runner setting and must match .ci/python-env"
)]
fn venv_dir() -> PathBuf {
    match std::env::var_os("KROUTER_VENV") {
        Some(dir) if !dir.is_empty() => repo().join(dir),
        _ => {
            let home = std::env::var_os("HOME").expect("HOME is set (the venv is under it)");
            PathBuf::from(home).join(".cache/krouter/venv")
        }
    }
}

/// A finished SDK run.
struct SdkRun {
    success: bool,
    output: String,
}

/// Runs `sdk_check.py` (the checks named in `args`, or all) with nothing but `vars`, a
/// minimal `PATH`, `HOME` in the test's temporary directory and proxies off; kills it after
/// [`SDK_RUN_LIMIT`].
fn run_sdk_check(home: &TempHome, args: &[&str], vars: &[(&str, &str)]) -> SdkRun {
    let mut child = Command::new(python())
        // Isolated (no PYTHON* variables, no user site) and no .pyc files written.
        .args(["-I", "-B"])
        .arg(repo().join("tests/python/sdk_check.py"))
        .args(args)
        .current_dir(home.parent())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.parent())
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python starts");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for python") {
            break Some(status);
        }
        if started.elapsed() > SDK_RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = stdout.join().unwrap_or_default();
    output.push_str(&stderr.join().unwrap_or_default());
    if status.is_none() {
        output.push_str(&format!("\n(killed after {SDK_RUN_LIMIT:?})"));
    }
    SdkRun {
        success: status.is_some_and(|s| s.success()),
        output,
    }
}

/// `krouter` with a key, routing to two mocks: an OpenAI-compatible one without a
/// credential and an Anthropic one that demands krouter's stored credential.
struct Stack {
    home: TempHome,
    openai: MockUpstream,
    anthropic: MockUpstream,
    credential: String,
    key: String,
    /// Well-formed, but not a key krouter issued.
    wrong_key: String,
    krouter: Krouter,
}

impl Stack {
    fn start() -> Self {
        let home = TempHome::init();
        let openai = MockUpstream::start();
        let credential = fake_secret("sk-ant-test-", 40);
        home.set_credential("anthropic-main", "anthropic", &credential);
        let anthropic = MockUpstream::builder()
            .credential(Some(credential.clone()))
            .start();
        // Routes to the mock's failing models, for the SDKs' error types.
        // A stream the upstream aborts after its first content: krouter ends it with the
        // dialect's error event, which the SDK must raise.
        let mut failing = String::from(
            "\n[[routes]]\nmodel = \"openai-stream-cut\"\ntargets = [\"compat:stream-cut\"]\n",
        );
        for status in [400, 429, 500] {
            failing.push_str(&format!(
                r#"
[[routes]]
model = "openai-fail-{status}"
targets = ["compat:fail-{status}"]

[[routes]]
model = "anthropic-fail-{status}"
targets = ["anthropic:fail-{status}"]
"#
            ));
        }
        home.write_policy(&policy(
            2,
            &format!(
                r#"[[providers]]
name = "compat"
kind = "openai-compatible"
base_url = "{openai_url}"

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{anthropic_url}"
credential = "anthropic-main"

[[routes]]
model = "{openai_route}"
targets = ["compat:{openai_upstream}"]

[[routes]]
model = "{anthropic_route}"
targets = ["anthropic:{anthropic_upstream}"]
{failing}"#,
                openai_url = openai.base_url(),
                anthropic_url = anthropic.base_url(),
                openai_route = OPENAI_ROUTE.0,
                openai_upstream = OPENAI_ROUTE.1,
                anthropic_route = ANTHROPIC_ROUTE.0,
                anthropic_upstream = ANTHROPIC_ROUTE.1,
            ),
        ));
        let (_id, key) = home.create_key("sdk");
        let wrong_key = fake_secret("sk-krouter-", key.len() - "sk-krouter-".len());
        let krouter = Krouter::spawn(&home, &[]);
        Self {
            home,
            openai,
            anthropic,
            credential,
            key,
            wrong_key,
            krouter,
        }
    }

    /// Runs the checks named in `checks` (all when empty); fails the test, with the SDK's
    /// output and krouter's log, unless every one passed.
    fn check(&self, checks: &[&str]) -> String {
        let base_url = self.krouter.url("");
        let run = run_sdk_check(
            &self.home,
            checks,
            &[
                ("KROUTER_BASE_URL", &base_url),
                ("KROUTER_KEY", &self.key),
                ("KROUTER_WRONG_KEY", &self.wrong_key),
                ("KROUTER_OPENAI_MODEL", OPENAI_ROUTE.0),
                ("KROUTER_OPENAI_UPSTREAM", OPENAI_ROUTE.1),
                ("KROUTER_ANTHROPIC_MODEL", ANTHROPIC_ROUTE.0),
                ("KROUTER_ANTHROPIC_UPSTREAM", ANTHROPIC_ROUTE.1),
            ],
        );
        // Shown by `--nocapture`, and with any failure below.
        println!("{}", run.output);
        assert!(
            run.success,
            "sdk_check.py failed:\n{}\nkrouter log:\n{}",
            run.output,
            self.krouter.log()
        );
        assert!(
            run.output.contains("sdk_check: all ") && !run.output.contains("FAIL"),
            "not every check ran:\n{}",
            run.output
        );
        run.output
    }

    /// Stops krouter and scans everything for the key, the wrong key and the credential:
    /// the upstream requests (krouter's credential only, never the client's key), krouter's
    /// log, the SDK's output and the home's files.
    fn stop_and_scan(self, sdk_output: &str) {
        let secrets = [
            self.key.as_str(),
            self.wrong_key.as_str(),
            self.credential.as_str(),
        ];
        let openai_seen = self.openai.requests();
        let anthropic_seen = self.anthropic.requests();
        for seen in &openai_seen {
            assert!(!seen.path.starts_with("/v1/messages"), "{seen:?}");
            assert_eq!(seen.header("authorization"), None, "{seen:?}");
        }
        for seen in &anthropic_seen {
            assert!(seen.path.starts_with("/v1/messages"), "{seen:?}");
            assert_eq!(seen.header("x-api-key"), Some(self.credential.as_str()));
        }
        for seen in openai_seen.iter().chain(&anthropic_seen) {
            let headers = format!("{:?}", seen.headers);
            let body = String::from_utf8_lossy(&seen.body);
            let client_keys = [self.key.as_str(), self.wrong_key.as_str()];
            assert_absent(&headers, &client_keys, "the upstream request headers");
            assert_absent(&body, &client_keys, "the upstream request body");
        }
        let (status, log) = self.krouter.stop();
        assert!(status.success(), "{log}");
        assert_absent(&log, &secrets, "the krouter log");
        assert_absent(sdk_output, &secrets, "the SDK output");
        assert_absent_from_files(&self.home.root, &secrets, &[]);
    }
}

#[test]
fn the_official_openai_and_anthropic_sdks_work_through_krouter() {
    let stack = Stack::start();
    let output = stack.check(&[]);
    assert!(!stack.openai.requests().is_empty());
    assert!(!stack.anthropic.requests().is_empty());
    assert!(
        stack.krouter.log().contains("\"tokens_in\":11"),
        "{}",
        stack.krouter.log()
    );
    stack.stop_and_scan(&output);
}
