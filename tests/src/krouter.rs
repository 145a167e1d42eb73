//! `Krouter`: the real `krouter` binary serving a [`TempHome`] on `127.0.0.1:0`, with its
//! log captured; and policy helpers to write, sign and swap the home's policy.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bins::proxy_path;
use crate::home::TempHome;

/// A running `krouter`; killed when dropped.
pub struct Krouter {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address its metrics listener listens on, when it has one.
    pub metrics: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Krouter {
    /// Starts `krouter` against `home` with `extra` variables and waits until it listens.
    pub fn spawn(home: &TempHome, extra: &[(&str, &str)]) -> Self {
        Self::spawn_command(Self::command(home, &[], extra))
    }

    /// `krouter ARGS` against `home`, listening on port 0, with nothing but the home's
    /// variables and `extra`.
    pub fn command(home: &TempHome, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new(proxy_path());
        command
            .args(args)
            .current_dir(home.parent())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(home.env())
            .env("KROUTER_LISTEN", "127.0.0.1:0")
            .envs(extra.iter().copied());
        command
    }

    /// Starts a prepared command (for wrappers such as `unshare`) and waits until it listens.
    pub fn spawn_command(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("krouter starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("\"message\":\"listening\"")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(line.clone());
                    }
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            let log = log.lock().map(|l| l.clone()).unwrap_or_default();
            panic!("krouter did not start listening:\n{log}");
        };
        let addr = json_str(&line, "addr")
            .parse()
            .expect("the listening line carries the address");
        let metrics = line
            .contains("\"metrics_addr\":")
            .then(|| json_str(&line, "metrics_addr").parse().ok())
            .flatten();
        Self {
            child: Some(child),
            addr,
            metrics,
            log,
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The CPU time (user and system) the process has used so far, from `/proc`.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
        // The fields after the command name, which is in parentheses and may hold spaces:
        // utime and stime are the 14th and 15th fields, in clock ticks (100 per second).
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let field = |n: usize| -> u64 {
            rest.split(' ')
                .nth(n - 3)
                .and_then(|f| f.parse().ok())
                .expect("stat field")
        };
        Duration::from_millis((field(14) + field(15)) * 10)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics after `limit`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let started = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                started.elapsed() < limit,
                "krouter never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the status and the whole log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().expect("krouter exits");
        // Let the reader thread drain the pipe.
        std::thread::sleep(Duration::from_millis(50));
        (status, self.log())
    }
}

impl Drop for Krouter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The string value of `"field":"..."` in one compact JSON log line.
pub fn json_str(line: &str, field: &str) -> String {
    let marker = format!("\"{field}\":\"");
    let start = line
        .find(&marker)
        .unwrap_or_else(|| panic!("{field} in {line}"))
        + marker.len();
    let end = line[start..].find('"').expect("a closing quote") + start;
    line[start..end].to_owned()
}

impl TempHome {
    /// Replaces the home's policy with `text` and signs it with the home's signing key.
    pub fn write_policy(&self, text: &str) {
        let policy = self.root.join("policy/policy.toml");
        std::fs::write(&policy, text).expect("policy written");
        self.sign_policy();
    }

    /// Signs the home's current policy file.
    pub fn sign_policy(&self) {
        let key = self.root.join("secrets/policy-signing.key");
        let policy = self.root.join("policy/policy.toml");
        let run = self.admin(&[
            "policy",
            "sign",
            "--key",
            key.to_str().expect("UTF-8 path"),
            policy.to_str().expect("UTF-8 path"),
        ]);
        assert_eq!(run.code, 0, "{run:?}");
    }

    /// Stores credential `name` of `kind` with `value` (through stdin, as an operator would).
    pub fn set_credential(&self, name: &str, kind: &str, value: &str) {
        let run = self.admin_stdin(
            &["credentials", "set", name, "--kind", kind],
            value.as_bytes(),
        );
        assert_eq!(run.code, 0, "{run:?}");
    }
}

/// A policy with one group `default` (all models), plus `body` (providers and routes).
pub fn policy(serial: u64, body: &str) -> String {
    format!(
        "serial = {serial}\n\n[access]\nrequire_api_keys = true\n\n[[access.groups]]\nname = \"default\"\nmodels = [\"*\"]\n\n{body}"
    )
}
