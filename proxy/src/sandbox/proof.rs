//! `krouter check --sandbox`: the start-up [`Plan`] applied to the checking process, and the
//! checks that show it holds: writes outside the state directory, a directory made inside it,
//! an exec, a TCP connect to a port the plan does not allow (to a listener opened before the
//! sandbox, so that without it the connect would succeed) and a bind outside the listen port
//! are refused; writing and removing a file in the state directory, reading the policy and
//! resolving `localhost` still work. Each check is printed with its result.

use std::fmt;
use std::io::{ErrorKind, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use krouter_config::home::KrouterHome;

use super::Plan;

/// How long the refused connect may take before it counts as not refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Listeners tried before giving up on one whose port the plan does not allow.
const LISTENER_TRIES: usize = 16;

/// What the checks need from before the sandbox.
pub struct Prepared {
    /// Keeps the refused port's listener open; reached only if the sandbox lets it.
    _listeners: Vec<TcpListener>,
    refused: SocketAddr,
    localhost_resolves: bool,
}

/// The checks and their results.
#[derive(Debug)]
pub struct Report {
    checks: Vec<Check>,
}

/// One check.
#[derive(Debug)]
struct Check {
    what: String,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// Shown: the result as expected.
    Ok(String),
    /// Not as expected.
    Failed(String),
    /// Could not be run here.
    Skipped(String),
}

/// Before the sandbox: a loopback listener on a port `plan` does not let krouter connect to,
/// and whether `localhost` resolves at all.
pub fn prepare(plan: &Plan) -> std::io::Result<Prepared> {
    let mut listeners = Vec::new();
    let refused = loop {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        listeners.push(listener);
        if !plan.connect_ports().contains(addr.port()) {
            break addr;
        }
        if listeners.len() >= LISTENER_TRIES {
            return Err(std::io::Error::other(
                "every loopback port the system gave is one the sandbox allows",
            ));
        }
    };
    Ok(Prepared {
        _listeners: listeners,
        refused,
        localhost_resolves: resolves_localhost(),
    })
}

/// After [`super::apply`]: runs every check.
pub fn run(plan: &Plan, home: &KrouterHome, prepared: &Prepared) -> Report {
    let probe = format!(".krouter-sandbox-probe-{}", std::process::id());
    let mut checks = Vec::new();
    for dir in [home.policy_dir(), home.root().to_path_buf(), temp_dir()] {
        checks.push(Check {
            what: format!("create a file in {}", dir.display()),
            outcome: refused_write(&dir.join(&probe)),
        });
    }
    for state in plan.writable() {
        checks.push(Check {
            what: format!("create a directory in {}", state.display()),
            outcome: refused_mkdir(&state.join(&probe)),
        });
    }
    checks.push(Check {
        what: "run a program".to_owned(),
        outcome: refused_exec(),
    });
    checks.push(Check {
        what: format!(
            "connect to {}, a port the sandbox does not allow",
            prepared.refused
        ),
        outcome: refused_connect(prepared.refused),
    });
    checks.push(Check {
        what: "bind a TCP port other than the listen and metrics ports".to_owned(),
        outcome: if plan.bind_ports().contains(&0) {
            Outcome::Skipped(
                "the listen or metrics port is 0, so any ephemeral port may be bound".to_owned(),
            )
        } else {
            refused_bind()
        },
    });
    for state in plan.writable() {
        checks.push(Check {
            what: format!("write and remove a file in {}", state.display()),
            outcome: write_and_remove(&state.join(&probe)),
        });
    }
    checks.push(Check {
        what: "read the policy and list the trusted keys".to_owned(),
        outcome: read_policy(home),
    });
    checks.push(Check {
        what: "resolve localhost".to_owned(),
        outcome: if !prepared.localhost_resolves {
            Outcome::Skipped("localhost did not resolve before the sandbox either".to_owned())
        } else if resolves_localhost() {
            Outcome::Ok("resolved".to_owned())
        } else {
            Outcome::Failed("it resolved before the sandbox and does not now".to_owned())
        },
    });
    Report { checks }
}

// === impl Report ===

impl Report {
    /// The failed checks, one per entry.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|c| match &c.outcome {
                Outcome::Failed(why) => Some(format!("{}: {why}", c.what)),
                Outcome::Ok(_) | Outcome::Skipped(_) => None,
            })
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            let (mark, detail) = match &check.outcome {
                Outcome::Ok(d) => ("ok  ", d),
                Outcome::Failed(d) => ("FAIL", d),
                Outcome::Skipped(d) => ("skip", d),
            };
            writeln!(f, "  {mark}  {}: {detail}", check.what)?;
        }
        Ok(())
    }
}

/// `/tmp`, the system temporary directory krouter never needs.
fn temp_dir() -> PathBuf {
    PathBuf::from("/tmp")
}

fn resolves_localhost() -> bool {
    ("localhost", 0)
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.next().is_some())
}

/// Creating `path` must fail: denied by the sandbox, or by a read-only file system.
fn refused_write(path: &Path) -> Outcome {
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path);
    match created {
        Ok(_) => {
            let _ = std::fs::remove_file(path);
            Outcome::Failed(format!(
                "allowed: {} was created (and removed again)",
                path.display()
            ))
        }
        Err(e) => refusal(&e),
    }
}

/// Creating directory `path` must be denied.
fn refused_mkdir(path: &Path) -> Outcome {
    match std::fs::create_dir(path) {
        Ok(()) => {
            let _ = std::fs::remove_dir(path);
            Outcome::Failed(format!(
                "allowed: {} was created (and removed again)",
                path.display()
            ))
        }
        Err(e) => refusal(&e),
    }
}

/// Running this very program (which certainly exists and is executable) must be denied.
fn refused_exec() -> Outcome {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Outcome::Skipped(format!("cannot find this program: {e}")),
    };
    let run = Command::new(&exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match run {
        Ok(_) => Outcome::Failed(format!("allowed: {} ran", exe.display())),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Outcome::Ok("refused (permission denied)".to_owned())
        }
        Err(e) => Outcome::Failed(format!("failed, but not as refused: {e}")),
    }
}

fn refused_connect(addr: SocketAddr) -> Outcome {
    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(_) => Outcome::Failed("allowed: connected".to_owned()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Outcome::Ok("refused (permission denied)".to_owned())
        }
        Err(e) => Outcome::Failed(format!("failed, but not as refused: {e}")),
    }
}

fn refused_bind() -> Outcome {
    match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))) {
        Ok(listener) => Outcome::Failed(format!(
            "allowed: bound {}",
            listener
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        )),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Outcome::Ok("refused (permission denied)".to_owned())
        }
        Err(e) => Outcome::Failed(format!("failed, but not as refused: {e}")),
    }
}

/// A refused file system change: permission denied is the sandbox; a read-only file system
/// also stops it (and is reported as such); anything else is not a refusal.
fn refusal(error: &std::io::Error) -> Outcome {
    match error.kind() {
        ErrorKind::PermissionDenied => Outcome::Ok("refused (permission denied)".to_owned()),
        ErrorKind::ReadOnlyFilesystem => Outcome::Ok(
            "refused by the read-only file system (before the sandbox is consulted)".to_owned(),
        ),
        ErrorKind::NotFound => Outcome::Skipped("the directory does not exist".to_owned()),
        _ => Outcome::Failed(format!("failed, but not as refused: {error}")),
    }
}

fn write_and_remove(path: &Path) -> Outcome {
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| file.write_all(b"probe"));
    if let Err(e) = written {
        return Outcome::Failed(format!("could not write {}: {e}", path.display()));
    }
    match std::fs::remove_file(path) {
        Ok(()) => Outcome::Ok("written and removed".to_owned()),
        Err(e) => Outcome::Failed(format!("could not remove {}: {e}", path.display())),
    }
}

fn read_policy(home: &KrouterHome) -> Outcome {
    let policy = home.policy_file();
    if let Err(e) = std::fs::read(&policy) {
        return Outcome::Failed(format!("could not read {}: {e}", policy.display()));
    }
    let trusted = home.trusted_dir();
    match std::fs::read_dir(&trusted) {
        Ok(_) => Outcome::Ok("read".to_owned()),
        Err(e) => Outcome::Failed(format!("could not list {}: {e}", trusted.display())),
    }
}
