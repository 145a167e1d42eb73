//! `krouter-admin init|keys|credentials|store|audit` through the real binary: the whole
//! life cycle, tampering, wrong keys, concurrent commands, a rekey killed mid-way, and a
//! scan of everything the commands printed and wrote for the secrets they handled.

use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use krouter_config::secret::load::{self, Vars};
use krouter_config::store::{AuditEntry, CredentialKind, StoreWriter};
use krouter_tests::bins::{Run, admin_command, admin_with};
use krouter_tests::home::{TempHome as Home, json_field};
use krouter_tests::leak;

#[test]
fn the_whole_life_cycle_leaks_no_secret() {
    let home = Home::init();
    let mut outputs = Vec::new();
    let old_storage_key = home.secret("storage.key");
    let api_key_secret = home.secret("api-key.secret");

    let (id, key) = home.create_key("alice");
    let listed = home.admin(&["keys", "list"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(
        listed.stdout.contains(&id) && listed.stdout.contains("active"),
        "{listed:?}"
    );
    outputs.push(listed);

    let credential = leak::fake_secret("upstream-", 40);
    let set = home.admin_stdin(
        &["credentials", "set", "openai-main"],
        credential.as_bytes(),
    );
    assert_eq!(set.code, 0, "{set:?}");
    let list = home.admin(&["credentials", "list"]);
    assert!(
        list.stdout.contains("openai-main") && list.stdout.contains("fp_"),
        "{list:?}"
    );
    outputs.extend([set, list]);

    let out_file = home.parent().join("ci.key");
    let to_file = home.admin(&[
        "keys",
        "create",
        "--label",
        "ci",
        "--expires",
        "90d",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(to_file.code, 0, "{to_file:?}");
    let file_key = fs::read_to_string(&out_file).unwrap().trim().to_owned();
    assert!(file_key.starts_with("sk-krouter-"));
    outputs.push(to_file);

    let rotated = home.admin(&["--json", "keys", "rotate", &id, "--grace", "1h"]);
    assert_eq!(rotated.code, 0, "{rotated:?}");
    let rotated_key = json_field(&rotated.stdout, "secret");
    let revoked = home.admin(&["keys", "revoke", &id]);
    assert_eq!(revoked.code, 0, "{revoked:?}");

    let rekey = home.admin(&["store", "rekey", "--generate"]);
    assert_eq!(rekey.code, 0, "{rekey:?}");
    let new_storage_key = home.secret("storage.key");
    assert_ne!(new_storage_key, old_storage_key);

    let verify = home.admin(&["store", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify.stdout.contains("1 credential(s) decrypt"),
        "{verify:?}"
    );
    let backup_path = home.parent().join("backup.sqlite");
    let backup = home.admin(&["store", "backup", "--out", backup_path.to_str().unwrap()]);
    assert_eq!(backup.code, 0, "{backup:?}");
    let audit = home.admin(&["audit", "verify"]);
    assert_eq!(audit.code, 0, "{audit:?}");
    let audit_list = home.admin(&["audit", "list"]);
    for action in [
        "init",
        "keys.create",
        "credentials.set",
        "keys.rotate",
        "keys.revoke",
        "store.rekey",
        "store.backup",
    ] {
        assert!(
            audit_list.stdout.contains(action),
            "{action}: {audit_list:?}"
        );
    }
    assert!(audit_list.stdout.contains("tester"), "{audit_list:?}");
    outputs.extend([rotated, revoked, rekey, verify, backup, audit, audit_list]);

    // The secrets handled: none may appear in any output, nor in any file other than the one
    // meant to hold it.
    let api_keys = [key.as_str(), file_key.as_str(), rotated_key.as_str()];
    let all_output: String = outputs.iter().map(Run::all_output).collect();
    leak::assert_absent(
        &all_output.replace(&rotated_key, ""),
        &[&key, &file_key],
        "command output",
    );
    leak::assert_absent(
        &all_output,
        &[
            &credential,
            old_storage_key.trim(),
            new_storage_key.trim(),
            api_key_secret.trim(),
        ],
        "command output",
    );
    let storage_file = home.root.join("secrets/storage.key");
    let api_secret_file = home.root.join("secrets/api-key.secret");
    leak::assert_absent_from_files(&home.root, &api_keys, &[]);
    leak::assert_absent_from_files(&home.root, &[&credential, old_storage_key.trim()], &[]);
    leak::assert_absent_from_files(&home.root, &[new_storage_key.trim()], &[&storage_file]);
    leak::assert_absent_from_files(&home.root, &[api_key_secret.trim()], &[&api_secret_file]);
    leak::assert_absent(
        &fs::read_to_string(&backup_path).unwrap_or_default(),
        &[&credential],
        "the backup",
    );
}

#[test]
fn init_on_an_existing_home_changes_nothing() {
    let home = Home::init();
    let before = fs::read(home.store()).unwrap();
    let key_before = home.secret("storage.key");
    let run = home.admin(&["init"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("already holds a krouter home"),
        "{run:?}"
    );
    assert_eq!(fs::read(home.store()).unwrap(), before);
    assert_eq!(home.secret("storage.key"), key_before);
}

#[test]
fn tampering_is_refused_with_a_clear_error() {
    let home = Home::init();
    for name in ["a", "b"] {
        let run = home.admin_stdin(
            &["credentials", "set", name],
            format!("value-of-{name}-0123456789").as_bytes(),
        );
        assert_eq!(run.code, 0, "{run:?}");
    }
    // Swap the two ciphertexts.
    let conn = home.raw();
    let a: String = conn
        .query_row("SELECT value FROM credentials WHERE name='a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let b: String = conn
        .query_row("SELECT value FROM credentials WHERE name='b'", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute("UPDATE credentials SET value=?1 WHERE name='a'", [&b])
        .unwrap();
    conn.execute("UPDATE credentials SET value=?1 WHERE name='b'", [&a])
        .unwrap();
    drop(conn);
    let run = home.admin(&["store", "verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("credentials.value of row a does not decrypt"),
        "{run:?}"
    );
    assert!(!run.all_output().contains("value-of-"), "{run:?}");

    // Edit, then delete, audit rows.
    let home = Home::init();
    for i in 0..3 {
        home.create_key(&format!("k{i}"));
    }
    let conn = home.raw();
    conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    let actor: String = conn
        .query_row("SELECT actor FROM audit WHERE seq=2", [], |r| r.get(0))
        .unwrap();
    conn.execute("UPDATE audit SET actor='mallory' WHERE seq=2", [])
        .unwrap();
    let run = home.admin(&["audit", "verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("audit row 2 was edited"), "{run:?}");
    conn.execute("UPDATE audit SET actor=?1 WHERE seq=2", [&actor])
        .unwrap();
    assert_eq!(home.admin(&["audit", "verify"]).code, 0);
    conn.execute("DELETE FROM audit WHERE seq=3", []).unwrap();
    let run = home.admin(&["audit", "verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("audit row 3 is missing"), "{run:?}");
    conn.execute(
        "INSERT INTO audit (seq, at, actor, action, target, outcome, prev_mac, mac) VALUES (3, 0, 'x', 'x', 'x', 'ok', 'x', 'x')",
        [],
    )
    .unwrap();
    let run = home.admin(&["store", "verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("audit row 3 does not follow"),
        "{run:?}"
    );
}

#[test]
fn a_wrong_key_or_a_damaged_file_is_a_clear_error() {
    let home = Home::init();
    let wrong = leak::fake_secret("", 44);
    let mut env = home.env();
    env.push(("STORAGE_ENCRYPTION_KEY", &wrong));
    let run = admin_with(home.parent(), &["keys", "list"], &env, None);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the storage key does not match this store"),
        "{run:?}"
    );
    leak::assert_absent(&run.all_output(), &[&wrong], "wrong-key error");

    let weak = [
        ("STORAGE_ENCRYPTION_KEY", "changeme"),
        ("KROUTER_HOME", home.root.to_str().unwrap()),
    ];
    let run = admin_with(home.parent(), &["keys", "list"], &weak, None);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "STORAGE_ENCRYPTION_KEY (from the STORAGE_ENCRYPTION_KEY variable) is 8 bytes"
        ),
        "{run:?}"
    );

    let bytes = fs::read(home.store()).unwrap();
    fs::write(home.store(), &bytes[..bytes.len() / 3]).unwrap();
    let _ = fs::remove_file(format!("{}-wal", home.store().display()));
    let run = home.admin(&["store", "verify"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("store.sqlite"), "{run:?}");
}

#[test]
fn secrets_are_never_taken_as_arguments() {
    let home = Home::init();
    let fake = leak::fake_secret("sk-", 40);
    let run = home.admin(&["keys", "create", "--label", &fake]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("never takes secrets on the command line"),
        "{run:?}"
    );
    leak::assert_absent(&run.all_output(), &[&fake], "refusal");
    let run = home.admin_stdin(&["credentials", "set", "x"], b"");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no value given"), "{run:?}");
    let run = home.admin(&["keys", "create", "--label", "x", "--group", "nope"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("defines no group named nope"),
        "{run:?}"
    );
    let run = home.admin(&["keys", "create", "--label", "x", "--expires", "soon"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn concurrent_commands_serialise_instead_of_failing() {
    let home = Home::init();
    let env = home.env();
    let children: Vec<_> = (0..8)
        .map(|i| {
            admin_command(
                home.parent(),
                &["keys", "create", "--label", &format!("c{i}")],
                &env,
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let run = home.admin(&["audit", "verify"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("9 row(s)"), "{run:?}");
}

/// Kills `store rekey` at varying moments; every time, exactly one of the keys opens the
/// store and every credential still decrypts. Thousands of credentials (written through the
/// library, which is much faster than one process each) make the rekey transaction long
/// enough for most kills to land inside it.
#[test]
fn a_rekey_killed_at_any_moment_loses_nothing() {
    const CREDENTIALS: usize = 4000;
    let home = Home::init();
    fill_credentials(&home, CREDENTIALS);
    let env = home.env();
    let deadline = Instant::now() + Duration::from_secs(300);
    for round in 0u64..12 {
        assert!(Instant::now() < deadline, "the kill loop took too long");
        let mut child = admin_command(home.parent(), &["store", "rekey", "--generate"], &env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(round * 37 % 400));
        let _ = child.kill();
        let _ = child.wait();
        // The next command finishes or clears the interrupted rekey, then verifies.
        let run = home.admin(&["store", "verify"]);
        assert_eq!(run.code, 0, "round {round}: {run:?}");
        let want = format!("{CREDENTIALS} credential(s) decrypt");
        assert!(run.stdout.contains(&want), "round {round}: {run:?}");
        assert!(
            !home.root.join("secrets/storage.key.new").exists(),
            "round {round}"
        );
    }
}

/// Commands run while a long rekey is in flight wait for it or work on the old key; none of
/// them removes the rekey's staged key, and the store ends opened by the key on disk.
#[test]
fn commands_during_a_rekey_never_lose_the_new_key() {
    let home = Home::init();
    fill_credentials(&home, 4000);
    let env = home.env();
    let mut rekey = admin_command(home.parent(), &["store", "rekey", "--generate"], &env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while rekey.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the rekey never finished");
        let run = home.admin(&["credentials", "list", "--json"]);
        // Listing may fail only because the store was re-keyed under it; never otherwise.
        assert!(run.code == 0 || run.stderr.contains("re-keyed"), "{run:?}");
    }
    let out = rekey.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = home.admin(&["store", "verify"]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_crlf_key_file_rekeys_and_opens_the_same() {
    let home = Home::init();
    let dir = home.parent();
    let old = dir.join("old.key");
    let new = dir.join("new.key");
    for (path, text) in [
        (&old, format!("{}\r\n", home.secret("storage.key").trim())),
        (&new, format!("{}\r\n", leak::fake_secret("", 44))),
    ] {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let with_file = |file: &PathBuf, args: &[&str]| {
        let mut env = home.env();
        let file = file.to_str().unwrap().to_owned();
        env.push(("STORAGE_ENCRYPTION_KEY_FILE", &file));
        admin_with(dir, args, &env, None)
    };
    let run = with_file(
        &old,
        &["store", "rekey", "--new-key-file", new.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("update STORAGE_ENCRYPTION_KEY"),
        "{run:?}"
    );
    let run = with_file(&new, &["store", "verify"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = with_file(&new, &["store", "rekey", "--generate"]);
    assert_eq!(
        run.code, 2,
        "--generate has nowhere to put the key: {run:?}"
    );
}

#[test]
fn edited_rows_damaged_files_and_odd_arguments_are_refused() {
    let home = Home::init();
    let (id, key) = home.create_key("victim");
    assert_eq!(home.admin(&["keys", "revoke", &id]).code, 0);
    home.raw()
        .execute("UPDATE api_keys SET revoked_at = NULL", [])
        .unwrap();
    let run = home.admin(&["store", "verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("was edited outside krouter-admin"),
        "{run:?}"
    );

    // A pasted key (or a piece of one) is refused as an argument and never echoed.
    let prefix = &key[..20];
    let run = home.admin(&["keys", "revoke", prefix]);
    assert_eq!(run.code, 2, "{run:?}");
    leak::assert_absent(&run.all_output(), &[prefix], "refusal");

    let home = Home::init();
    let run = home.admin(&["keys", "create", "--label", "x", "--expires", "10000y"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = home.admin(&["keys", "create", "--label", "x", "--expires", "7d"]);
    assert_eq!(run.code, 0, "{run:?}");
    let list = home.admin(&["--json", "keys", "list"]);
    let id = json_field(&list.stdout, "id");
    let rotated = home.admin(&["--json", "keys", "rotate", &id, "--grace", "0s"]);
    assert_eq!(rotated.code, 0, "{rotated:?}");
    assert!(
        rotated.stdout.matches("\"expires\"").count() >= 2,
        "{rotated:?}"
    );
    assert!(
        !rotated.stdout.contains("\"expires\": null"),
        "the new key keeps a lifetime: {rotated:?}"
    );

    fs::write(home.store(), b"").unwrap();
    let _ = fs::remove_file(format!("{}-wal", home.store().display()));
    let run = home.admin(&["store", "migrate"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("empty or not a krouter store"),
        "{run:?}"
    );
    assert_eq!(
        fs::metadata(home.store()).unwrap().len(),
        0,
        "migrate changed a damaged file"
    );
}

/// Adds `count` credentials through the library in one transaction (one process per
/// credential would take minutes).
fn fill_credentials(home: &Home, count: usize) {
    let key_text = home.secret("storage.key");
    let vars = Vars::from_pairs([("STORAGE_ENCRYPTION_KEY", key_text.trim())]);
    let key = load::storage_key(&vars, &home.root.join("secrets")).unwrap();
    let mut writer = StoreWriter::open(&home.store(), &key, "test-fill").unwrap();
    let entry = AuditEntry {
        action: "test.fill".to_owned(),
        target: format!("{count} credentials"),
        outcome: "ok".to_owned(),
    };
    writer
        .transaction(&entry, |tx| {
            for i in 0..count {
                let value = format!("secret-c{i}-abcdefgh");
                tx.set_credential(&format!("c{i}"), CredentialKind::Generic, value.as_bytes())?;
            }
            Ok(())
        })
        .unwrap();
}
