//! `TempHome`: a fresh `KROUTER_HOME` in a temporary directory, initialized by the real
//! `krouter-admin init`, with helpers to run both binaries against it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, OpenFlags};

use crate::bins::{Run, admin_with, proxy_path};

/// A temporary krouter home; removed when dropped.
pub struct TempHome {
    _dir: tempfile::TempDir,
    /// The home directory (`KROUTER_HOME`).
    pub root: PathBuf,
}

impl TempHome {
    /// A new home, initialized by `krouter-admin init`.
    pub fn init() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().join("home");
        let home = Self { _dir: dir, root };
        let run = home.admin(&["init"]);
        assert_eq!(run.code, 0, "{run:?}");
        // Metrics on a port of their own choosing, so that tests can run side by side.
        let settings = home.root.join("krouter.toml");
        let text = fs::read_to_string(&settings).expect("init writes krouter.toml");
        let text = text.replace(
            "metrics_listen = \"127.0.0.1:20129\"",
            "metrics_listen = \"127.0.0.1:0\"",
        );
        fs::write(&settings, text).expect("krouter.toml is writable");
        home
    }

    /// The variables every command gets: the home and a user name for the audit log.
    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            (
                "KROUTER_HOME",
                self.root.to_str().expect("a UTF-8 temp path"),
            ),
            ("USER", "tester"),
        ]
    }

    /// The directory holding the home, where commands run.
    pub fn parent(&self) -> &Path {
        self.root.parent().expect("the home has a parent")
    }

    /// Runs `krouter-admin` against this home.
    pub fn admin(&self, args: &[&str]) -> Run {
        admin_with(self.parent(), args, &self.env(), None)
    }

    /// Runs `krouter-admin` against this home with `stdin` piped in.
    pub fn admin_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        admin_with(self.parent(), args, &self.env(), Some(stdin))
    }

    /// Runs `krouter check` against this home, with `extra` variables.
    pub fn check(&self, extra: &[(&str, &str)]) -> Run {
        let output = Command::new(proxy_path())
            .arg("check")
            .current_dir(self.parent())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env())
            .envs(extra.iter().copied())
            .output()
            .expect("krouter runs");
        Run::from_output(output)
    }

    /// `db/store.sqlite`.
    pub fn store(&self) -> PathBuf {
        self.root.join("db/store.sqlite")
    }

    /// The text of `secrets/<file>`.
    pub fn secret(&self, file: &str) -> String {
        fs::read_to_string(self.root.join("secrets").join(file)).expect("the secret file")
    }

    /// Raw SQL access to the store, as someone holding the file would have.
    pub fn raw(&self) -> Connection {
        Connection::open_with_flags(self.store(), OpenFlags::SQLITE_OPEN_READ_WRITE)
            .expect("the store opens")
    }

    /// Creates an API key; returns its id and the key.
    pub fn create_key(&self, label: &str) -> (String, String) {
        let run = self.admin(&["--json", "keys", "create", "--label", label]);
        assert_eq!(run.code, 0, "{run:?}");
        let id = json_field(&run.stdout, "id");
        let key = json_field(&run.stdout, "secret");
        assert!(key.starts_with("sk-krouter-"), "{run:?}");
        (id, key)
    }
}

/// The string value of `"field": "..."` in pretty JSON output.
pub fn json_field(json: &str, field: &str) -> String {
    let marker = format!("\"{field}\": \"");
    let start = json
        .find(&marker)
        .unwrap_or_else(|| panic!("{field} in {json}"))
        + marker.len();
    let end = json[start..].find('"').expect("a closing quote") + start;
    json[start..end].to_owned()
}
