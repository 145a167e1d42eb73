//! `krouter-admin policy`: keygen → check → sign → verify → tamper → verify, and every
//! failure's exit code and message, through the real binary.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use krouter_tests::bins::{Run, admin};
use krouter_tests::leak;

const POLICY: &str = include_str!("../../../docs/examples/policy.toml");

/// A fresh directory with a key pair in `keys/`, its public key in `trusted/` and the
/// example policy as `policy.toml`.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let run = admin(dir.path(), &["policy", "keygen", "--out", "keys"]);
    assert_eq!(run.code, 0, "{run:?}");
    fs::create_dir(dir.path().join("trusted")).unwrap();
    fs::copy(
        dir.path().join("keys/policy-signing.pub"),
        dir.path().join("trusted/policy-signing.pub"),
    )
    .unwrap();
    fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    dir
}

fn private_key_body(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("keys/policy-signing.key")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("pkcs8: "))
        .unwrap()
        .to_owned()
}

fn sign(dir: &Path) -> Run {
    admin(
        dir,
        &[
            "policy",
            "sign",
            "policy.toml",
            "--key",
            "keys/policy-signing.key",
        ],
    )
}

fn verify(dir: &Path) -> Run {
    admin(
        dir,
        &["policy", "verify", "policy.toml", "--trusted", "trusted"],
    )
}

#[test]
fn keygen_sign_verify_tamper_verify() {
    let dir = setup();
    let d = dir.path();
    let key_mode = fs::metadata(d.join("keys/policy-signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert_eq!(
        fs::metadata(d.join("keys")).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let check = admin(d, &["policy", "check", "policy.toml"]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(check.stdout.contains("serial 1"), "{check:?}");

    let signed = sign(d);
    assert_eq!(signed.code, 0, "{signed:?}");
    assert!(d.join("policy.toml.sig").is_file());

    let ok = verify(d);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("signature OK"), "{ok:?}");

    // One changed byte: refused with exit 3 and a message that says what happened.
    let mut bytes = fs::read(d.join("policy.toml")).unwrap();
    let at = bytes.iter().position(|&b| b == b'1').unwrap();
    bytes[at] = b'2';
    fs::write(d.join("policy.toml"), &bytes).unwrap();
    let tampered = verify(d);
    assert_eq!(tampered.code, 3, "{tampered:?}");
    assert!(
        tampered.stderr.contains("does not match the policy"),
        "{tampered:?}"
    );

    // Re-signing the changed file makes it verify again.
    assert_eq!(sign(d).code, 0);
    assert_eq!(verify(d).code, 0);

    let secret = private_key_body(d);
    for run in [&check, &signed, &ok, &tampered] {
        leak::assert_absent(&run.all_output(), &[&secret], "command output");
    }
    let key_path = d.join("keys/policy-signing.key");
    leak::assert_absent_from_files(d, &[&secret], &[&key_path]);
}

#[test]
fn json_output_is_machine_readable() {
    let dir = setup();
    let d = dir.path();
    assert_eq!(sign(d).code, 0);
    let run = admin(
        d,
        &[
            "--json",
            "policy",
            "verify",
            "policy.toml",
            "--trusted",
            "trusted",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("\"result\": \"verified\""), "{run:?}");
    assert!(run.stdout.contains("\"serial\": 1"), "{run:?}");

    fs::write(d.join("bad.toml"), "serial = 1\ncolour = 1\n").unwrap();
    let run = admin(d, &["policy", "check", "bad.toml", "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("\"path\": \"colour\""), "{run:?}");
    assert!(run.stdout.contains("\"line\": 2"), "{run:?}");
}

#[test]
fn each_signature_failure_is_distinct() {
    let dir = setup();
    let d = dir.path();

    // Missing signature file.
    let run = verify(d);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("not signed"), "{run:?}");

    // Malformed signature file.
    fs::write(d.join("policy.toml.sig"), "hello\n").unwrap();
    let run = verify(d);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("policy.toml.sig:1: malformed signature file"),
        "{run:?}"
    );

    // Signed by a key that is not trusted.
    let other = admin(d, &["policy", "keygen", "--out", "other"]);
    assert_eq!(other.code, 0, "{other:?}");
    let run = admin(
        d,
        &[
            "policy",
            "sign",
            "policy.toml",
            "--key",
            "other/policy-signing.key",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let run = verify(d);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("which is not trusted"), "{run:?}");

    // No trusted keys at all.
    fs::create_dir(d.join("empty")).unwrap();
    let run = admin(
        d,
        &["policy", "verify", "policy.toml", "--trusted", "empty"],
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("no trusted policy keys"), "{run:?}");

    // A trusted key file that is not a key.
    fs::write(d.join("trusted/broken.pub"), "garbage").unwrap();
    let run = verify(d);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("broken.pub"), "{run:?}");
}

#[test]
fn sign_refuses_an_invalid_policy_and_an_exposed_key() {
    let dir = setup();
    let d = dir.path();
    fs::write(d.join("policy.toml"), "serial = 1\nbogus = true\n").unwrap();
    let run = sign(d);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("policy.toml:2 bogus: unknown field"),
        "{run:?}"
    );
    assert!(!d.join("policy.toml.sig").exists());

    fs::write(d.join("policy.toml"), POLICY).unwrap();
    fs::set_permissions(
        d.join("keys/policy-signing.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let run = sign(d);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("chmod go-rwx"), "{run:?}");
    assert!(!d.join("policy.toml.sig").exists());
}

#[test]
fn keygen_never_overwrites_a_key() {
    let dir = setup();
    let d = dir.path();
    let before = fs::read(d.join("keys/policy-signing.key")).unwrap();
    let run = admin(d, &["policy", "keygen", "--out", "keys"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("already exists"), "{run:?}");
    assert_eq!(fs::read(d.join("keys/policy-signing.key")).unwrap(), before);
}

#[test]
fn a_policy_with_a_secret_is_refused_without_echoing_it() {
    let dir = setup();
    let d = dir.path();
    // Built at run time: a provider-key-shaped value that is not a real key.
    let fake = leak::fake_secret("sk-", 40);
    let text = POLICY.replace(
        "# credential = \"ollama-token\"",
        &format!("credential = \"{fake}\""),
    );
    fs::write(d.join("policy.toml"), text).unwrap();
    let run = admin(d, &["policy", "check", "policy.toml"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("providers[0].credential: looks like a secret"),
        "{run:?}"
    );
    leak::assert_absent(&run.all_output(), &[&fake], "check output");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["policy"][..],
        &["policy", "sign", "policy.toml"],
        &["nonsense"],
        &["policy", "verify", "p.toml"],
    ] {
        let run = admin(dir.path(), args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    let run = admin(dir.path(), &["--help"]);
    assert_eq!(run.code, 0, "{run:?}");
}
