//! `krouter check` through the real binary: a fresh home passes and the report names where
//! each secret came from without showing it; a tampered policy, a rolled-back serial and a
//! public listener without API keys are each refused with their exit code.

use std::fs;
use std::path::PathBuf;

use krouter_config::state::StateDb;
use krouter_policy::{AcceptedPolicy, PolicyDigest, Serial};
use krouter_tests::bins::{Run, admin_with, proxy_path};
use krouter_tests::leak;

struct Home {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Home {
    fn init() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let home = Self { _dir: dir, root };
        let run = admin_with(&home.parent(), &["init"], &home.env(&[]), None);
        assert_eq!(run.code, 0, "{run:?}");
        home
    }

    fn parent(&self) -> PathBuf {
        self.root.parent().unwrap().to_owned()
    }

    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("KROUTER_HOME", self.root.to_str().unwrap())];
        env.extend_from_slice(extra);
        env
    }

    fn check(&self, extra: &[(&str, &str)]) -> Run {
        let output = std::process::Command::new(proxy_path())
            .arg("check")
            .current_dir(self.parent())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env(extra))
            .output()
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

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
        &home.parent(),
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
