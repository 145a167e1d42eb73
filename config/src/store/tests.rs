use std::path::PathBuf;

use rusqlite::params;
use zeroize::Zeroizing;

use super::*;
use crate::apikey::{ApiKey, KeyDigest, KeyId};
use crate::secret::ApiKeySecret;
use crate::store::CredentialKind;

fn storage_key(seed: u8) -> StorageKey {
    let bytes: Vec<u8> = (0u8..44)
        .map(|i| i.wrapping_mul(37).wrapping_add(seed))
        .collect();
    StorageKey::from_checked(Zeroizing::new(bytes))
}

fn entry(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: "ok".to_owned(),
    }
}

fn new_store() -> (tempfile::TempDir, PathBuf, StoreWriter) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    let writer = StoreWriter::create(&path, &storage_key(1), "tester").unwrap();
    (dir, path, writer)
}

/// Raw access, as an attacker with the file would have.
fn raw(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap()
}

#[test]
fn credentials_round_trip_through_a_reader() {
    let (_dir, path, mut w) = new_store();
    let fp = w
        .transaction(&entry("credentials.set", "openai"), |tx| {
            tx.set_credential("openai", CredentialKind::Generic, b"upstream-value-1")
        })
        .unwrap();
    assert!(fp.starts_with("fp_"));
    let r = StoreReader::open(&path, &storage_key(1)).unwrap();
    assert_eq!(
        r.credential("openai").unwrap().expose_secret(),
        b"upstream-value-1"
    );
    let listed = r.credentials().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].fingerprint, fp);
    assert!(matches!(
        r.credential("missing"),
        Err(Error::Store(StoreError::NotFound { .. }))
    ));
    // Nothing in the file holds the plaintext.
    drop(r);
    drop(w);
    for suffix in ["", "-wal"] {
        let bytes = std::fs::read(format!("{}{suffix}", path.display())).unwrap_or_default();
        assert!(
            !bytes.windows(16).any(|w| w == b"upstream-value-1"),
            "plaintext in {suffix}"
        );
    }
}

#[test]
fn a_wrong_storage_key_is_a_clear_error_at_open() {
    let (_dir, path, _w) = new_store();
    for result in [
        StoreReader::open(&path, &storage_key(2)).map(|_| ()),
        StoreWriter::open(&path, &storage_key(2), "t").map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Store(StoreError::WrongKey { .. })),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("the storage key does not match this store")
        );
    }
}

#[test]
fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
    let (_dir, path, mut w) = new_store();
    w.transaction(&entry("credentials.set", "a"), |tx| {
        tx.set_credential("a", CredentialKind::Generic, b"value-a")
    })
    .unwrap();
    w.transaction(&entry("credentials.set", "b"), |tx| {
        tx.set_credential("b", CredentialKind::Generic, b"value-b")
    })
    .unwrap();
    let conn = raw(&path);
    let a: String = conn
        .query_row("SELECT value FROM credentials WHERE name = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let b: String = conn
        .query_row("SELECT value FROM credentials WHERE name = 'b'", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute(
        "UPDATE credentials SET value = ?1 WHERE name = 'a'",
        params![b],
    )
    .unwrap();
    conn.execute(
        "UPDATE credentials SET value = ?1 WHERE name = 'b'",
        params![a],
    )
    .unwrap();
    drop(conn);
    let r = StoreReader::open(&path, &storage_key(1)).unwrap();
    let err = r.credential("a").unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Envelope { .. })),
        "{err}"
    );
    let err = w.reader_view().verify_envelopes().unwrap_err();
    assert!(
        err.to_string().contains("credentials.value of row a"),
        "{err}"
    );
}

#[test]
fn a_failed_command_leaves_the_store_as_it_was() {
    let (_dir, _path, mut w) = new_store();
    let result: Result<(), Error> = w.transaction(&entry("credentials.set", "x"), |tx| {
        tx.set_credential("x", CredentialKind::Generic, b"v")?;
        Err(StoreError::NotFound {
            what: "thing",
            name: "y".to_owned(),
        }
        .into())
    });
    assert!(result.is_err());
    assert!(w.reader_view().credentials().unwrap().is_empty());
    assert!(w.reader_view().audit().unwrap().is_empty());
}

#[test]
fn keys_are_stored_as_digests_and_can_be_revoked_and_expired() {
    let (_dir, path, mut w) = new_store();
    let secret = ApiKeySecret::from_checked(Zeroizing::new(vec![7u8; 32]));
    let key = ApiKey::generate().unwrap();
    let record = ApiKeyRecord {
        id: KeyId::generate().unwrap(),
        digest: KeyDigest::of(&secret, &key),
        label: "ci".to_owned(),
        group: "default".to_owned(),
        created_at: 100,
        expires_at: None,
        revoked_at: None,
    };
    let id = record.id.as_str().to_owned();
    w.transaction(&entry("keys.create", &id), |tx| tx.insert_key(&record))
        .unwrap();
    w.transaction(&entry("keys.rotate", &id), |tx| tx.expire_key(&id, 500))
        .unwrap();
    let listed = w.reader_view().api_keys().unwrap();
    assert_eq!(listed[0].expires_at, Some(500));
    assert!(listed[0].is_active(499) && !listed[0].is_active(500));
    w.transaction(&entry("keys.revoke", &id), |tx| tx.revoke_key(&id))
        .unwrap();
    assert!(!w.reader_view().api_keys().unwrap()[0].is_active(0));
    assert!(
        w.transaction(&entry("keys.revoke", "kid_nope"), |tx| tx
            .revoke_key("kid_nope"))
            .is_err()
    );
    drop(w);
    let bytes = std::fs::read(&path).unwrap();
    let text = key.expose_secret().as_bytes();
    assert!(!bytes.windows(text.len()).any(|w| w == text));
}

#[test]
fn the_audit_chain_detects_edits_inserts_and_deletes() {
    let (_dir, path, mut w) = new_store();
    for i in 0..4 {
        let name = format!("c{i}");
        w.transaction(&entry("credentials.set", &name), |tx| {
            tx.set_credential(&name, CredentialKind::Generic, b"v")
        })
        .unwrap();
    }
    assert_eq!(w.reader_view().verify_audit().unwrap(), 4);

    let conn = raw(&path);
    // The triggers stop accidents; an attacker drops them first.
    conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    conn.execute("UPDATE audit SET target = 'other' WHERE seq = 2", [])
        .unwrap();
    let err = w.reader_view().verify_audit().unwrap_err();
    assert!(err.to_string().contains("audit row 2 was edited"), "{err}");

    conn.execute("UPDATE audit SET target = 'c1' WHERE seq = 2", [])
        .unwrap();
    assert_eq!(w.reader_view().verify_audit().unwrap(), 4);
    conn.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
    let err = w.reader_view().verify_audit().unwrap_err();
    assert!(err.to_string().contains("audit row 3 is missing"), "{err}");

    // Re-number to hide the gap: the chain still breaks at the renumbered row.
    conn.execute("UPDATE audit SET seq = 3 WHERE seq = 4", [])
        .unwrap();
    let err = w.reader_view().verify_audit().unwrap_err();
    assert!(
        err.to_string().contains("audit row 3 does not follow"),
        "{err}"
    );
}

#[test]
fn the_audit_log_refuses_updates_through_sql() {
    let (_dir, path, mut w) = new_store();
    w.transaction(&entry("x", "y"), |_| Ok(())).unwrap();
    let conn = raw(&path);
    assert!(conn.execute("UPDATE audit SET target = 'z'", []).is_err());
    assert!(conn.execute("DELETE FROM audit", []).is_err());
}

#[test]
fn rekey_reencrypts_everything_and_only_the_new_key_opens() {
    let (_dir, path, mut w) = new_store();
    for name in ["a", "b", "c"] {
        w.transaction(&entry("credentials.set", name), |tx| {
            tx.set_credential(name, CredentialKind::Generic, name.as_bytes())
        })
        .unwrap();
    }
    let before = w.reader_view().credentials().unwrap();
    let n = w.rekey(&storage_key(9), &entry("store.rekey", "")).unwrap();
    assert_eq!(n, 3);
    assert_eq!(w.reader_view().verify_envelopes().unwrap(), 3);
    assert_eq!(w.reader_view().verify_audit().unwrap(), 4);
    // Fingerprints are stable across a rekey.
    assert_eq!(w.reader_view().credentials().unwrap(), before);
    drop(w);
    assert!(StoreReader::open(&path, &storage_key(1)).is_err());
    let r = StoreReader::open(&path, &storage_key(9)).unwrap();
    assert_eq!(r.credential("b").unwrap().expose_secret(), b"b");
}

#[test]
fn backup_is_a_private_consistent_copy() {
    use std::os::unix::fs::MetadataExt as _;
    let (dir, _path, mut w) = new_store();
    w.transaction(&entry("credentials.set", "a"), |tx| {
        tx.set_credential("a", CredentialKind::Generic, b"v")
    })
    .unwrap();
    let out = dir.path().join("backup.sqlite");
    w.backup(&out).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
    let r = StoreReader::open(&out, &storage_key(1)).unwrap();
    assert_eq!(r.credential("a").unwrap().expose_secret(), b"v");
    assert!(w.backup(&out).is_err(), "a backup never overwrites");
}

#[test]
fn the_wal_files_persist_after_the_writer_closes() {
    let (_dir, path, mut w) = new_store();
    w.transaction(&entry("x", "y"), |tx| {
        tx.set_credential("a", CredentialKind::Generic, b"v")
    })
    .unwrap();
    drop(w);
    for suffix in ["-wal", "-shm"] {
        assert!(
            PathBuf::from(format!("{}{suffix}", path.display())).exists(),
            "{suffix} was removed"
        );
    }
    let r = StoreReader::open(&path, &storage_key(1)).unwrap();
    assert_eq!(r.credential("a").unwrap().expose_secret(), b"v");
}

#[test]
fn schema_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sqlite");
    assert!(matches!(
        StoreReader::open(&missing, &storage_key(1)),
        Err(Error::Store(StoreError::Missing { .. }))
    ));
    let (_dir, path, w) = new_store();
    drop(w);
    raw(&path).pragma_update(None, "user_version", 99).unwrap();
    let err = StoreReader::open(&path, &storage_key(1))
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("schema version is 99"), "{err}");
}

/// Name of the variable that turns a run of this test binary into the read-only child.
const RO_CHILD: &str = "KROUTER_TEST_READONLY_STORE";

/// The child half of `a_reader_without_write_permission_reads_while_the_writer_commits`:
/// runs without any capability (so even root obeys file modes), in a directory it cannot
/// write, and reads the store before and after the parent commits.
#[test]
fn readonly_child() {
    #[expect(
        clippy::disallowed_methods,
        reason = "test-only switch between parent and child"
    )]
    let Some(path) = std::env::var_os(RO_CHILD) else {
        return;
    };
    let path = PathBuf::from(path);
    let dir = path.parent().unwrap();
    assert!(
        std::fs::write(dir.join("probe"), b"x").is_err(),
        "the child can write the store's directory; the test proves nothing"
    );
    let r = StoreReader::open(&path, &storage_key(1)).unwrap();
    assert_eq!(r.credential("a").unwrap().expose_secret(), b"first");
    println!("ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(b) = r.credential("b") {
            assert_eq!(b.expose_secret(), b"second");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw the writer's commit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_reader_without_write_permission_reads_while_the_writer_commits() {
    use std::io::BufRead as _;
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::{Command, Stdio};

    if Command::new("setpriv").arg("--version").output().is_err() {
        panic!("setpriv (util-linux) is needed to drop capabilities for this test");
    }
    let (dir, path, mut w) = new_store();
    w.transaction(&entry("credentials.set", "a"), |tx| {
        tx.set_credential("a", CredentialKind::Generic, b"first")
    })
    .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let child = |path: &Path| {
        Command::new("setpriv")
            .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::readonly_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(RO_CHILD, path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // While the writer is open: the child reads, then sees the next commit.
    let mut reader = child(&path);
    let mut lines = std::io::BufReader::new(reader.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("ready"));
    assert!(ready, "the read-only child never got ready");
    w.transaction(&entry("credentials.set", "b"), |tx| {
        tx.set_credential("b", CredentialKind::Generic, b"second")
    })
    .unwrap();
    let out = reader.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // After the writer has gone: the persistent WAL files are still there to read with.
    drop(w);
    let out = child(&path).wait_with_output().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready"));
}

#[test]
fn a_writer_opened_before_a_rekey_cannot_seal_under_the_old_key() {
    let (_dir, path, mut first) = new_store();
    let mut second = StoreWriter::open(&path, &storage_key(1), "other").unwrap();
    second
        .rekey(&storage_key(5), &entry("store.rekey", ""))
        .unwrap();
    let err = first
        .transaction(&entry("credentials.set", "late"), |tx| {
            tx.set_credential("late", CredentialKind::Generic, b"v")
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Rekeyed { .. })),
        "{err}"
    );
    drop(second);
    let r = StoreReader::open(&path, &storage_key(5)).unwrap();
    assert!(r.credentials().unwrap().is_empty());
}

#[test]
fn edited_key_rows_and_credential_kinds_are_detected() {
    let (_dir, path, mut w) = new_store();
    let secret = ApiKeySecret::from_checked(Zeroizing::new(vec![7u8; 32]));
    let record = ApiKeyRecord {
        id: KeyId::generate().unwrap(),
        digest: KeyDigest::of(&secret, &ApiKey::generate().unwrap()),
        label: "ci".to_owned(),
        group: "default".to_owned(),
        created_at: 1,
        expires_at: None,
        revoked_at: None,
    };
    let id = record.id.as_str().to_owned();
    w.transaction(&entry("keys.create", &id), |tx| tx.insert_key(&record))
        .unwrap();
    w.transaction(&entry("keys.revoke", &id), |tx| tx.revoke_key(&id))
        .unwrap();
    w.transaction(&entry("credentials.set", "c"), |tx| {
        tx.set_credential("c", CredentialKind::OpenAi, b"v")
    })
    .unwrap();
    let conn = raw(&path);
    conn.execute("UPDATE api_keys SET revoked_at = NULL", [])
        .unwrap();
    conn.execute("UPDATE credentials SET kind = 'anthropic'", [])
        .unwrap();
    drop(conn);
    let r = StoreReader::open(&path, &storage_key(1)).unwrap();
    let err = r.api_keys().unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::KeyTampered { .. })),
        "{err}"
    );
    assert!(matches!(
        r.credential("c"),
        Err(Error::Store(StoreError::Envelope { .. }))
    ));
}
