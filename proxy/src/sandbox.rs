//! The landlock sandbox krouter serves in (DESIGN §1, §8; `docs/sandbox.md`). This module owns
//! what the proxy may touch once start-up is over:
//!
//! - [`Plan`]: the paths with their access, the TCP port it may bind and the TCP ports it may
//!   connect to, built from what start-up loaded (plus the system files name resolution
//!   reads);
//! - [`apply`]: has the kernel enforce a plan on the calling thread and on every thread it
//!   creates afterwards, best effort, and reports a [`Status`];
//! - [`require`]: the `--require-sandbox` decision;
//! - [`check_upstream_ports`]: the rule the reload watcher applies to a later policy;
//! - [`proof`]: `krouter check --sandbox`, which shows that the rules hold.
//!
//! It must be applied before any other thread exists (landlock restricts the calling thread and
//! its future children only; [`apply`] refuses a process with more than one thread), and it
//! never widens access: a path that cannot be opened gets no rule, and no rule means no access.
//! No path is given the right to execute.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use krouter_config::home::KrouterHome;
use krouter_config::secret::SecretName;
use krouter_config::secret::load::Origin;
use krouter_config::settings::Settings;
use krouter_policy::Policy;
use landlock::{
    ABI, Access as _, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr as _, RulesetCreatedAttr as _, RulesetError, Scope,
};

use crate::startup::Loaded;

pub mod proof;
mod status;
mod system;

pub use status::{Applied, Missing, Status, missing_for};
pub use system::{nss_modules, resolver_files};

/// The newest Landlock ABI whose rights the sandbox asks for: every filesystem right up to
/// ioctl on devices (ABI 5), TCP bind and connect (ABI 4), and signal and abstract UNIX socket
/// scoping (ABI 6, Linux 6.12). Rights of a newer ABI are never asked for, so a newer kernel
/// cannot change what krouter may do.
pub const TARGET_ABI: ABI = ABI::V6;

/// DNS over TCP, which the resolver falls back to for large answers.
pub const DNS_PORT: u16 = 53;

/// What the sandbox allows, decided before it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    paths: Vec<PathRule>,
    bind: BTreeSet<u16>,
    connect: ConnectPorts,
}

/// One path and what krouter may do beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    path: PathBuf,
    access: Access,
    why: &'static str,
}

/// Access to a path (and everything beneath it, for a directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Open files for reading and list directories.
    Read,
    /// Also write, truncate, create and remove regular files (never directories, links,
    /// sockets, pipes or devices).
    ReadWrite,
}

/// The TCP ports krouter may connect to: the start-up policy's upstream ports and DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPorts(BTreeSet<u16>);

/// Why the sandbox could not be set up. Start-up stops: serving unsandboxed because of a bug
/// would be silent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Other threads exist already; they would escape the sandbox.
    #[error(
        "the sandbox must be applied while krouter has one thread, and it has {threads}; the others would escape it"
    )]
    Threads {
        /// How many threads the process has.
        threads: usize,
    },
    /// A landlock call failed.
    #[error("could not {step} for the sandbox")]
    Landlock {
        /// What was being done.
        step: &'static str,
        /// The landlock crate's error.
        #[source]
        source: RulesetError,
    },
    /// A path rule was refused.
    #[error("could not add the sandbox rule for {path}")]
    PathRule {
        /// The path.
        path: PathBuf,
        /// The landlock crate's error.
        #[source]
        source: RulesetError,
    },
    /// A port rule was refused.
    #[error("could not add the sandbox rule for TCP port {port}")]
    PortRule {
        /// The port.
        port: u16,
        /// The landlock crate's error.
        #[source]
        source: RulesetError,
    },
}

// === impl Plan ===

impl Plan {
    /// The plan for what start-up loaded: [`Plan::new`] with what is found on this machine:
    /// the system files name resolution needs ([`resolver_files`]) and, when the storage key
    /// file is reached through a symbolic link, the directory it really is in.
    pub fn for_start(loaded: &Loaded) -> Self {
        let storage_key_file = loaded
            .secrets
            .iter()
            .find_map(|(name, origin)| match origin {
                Origin::VariableFile(file) if *name == SecretName::StorageKey => {
                    Some(file.as_path())
                }
                _ => None,
            });
        let mut found = resolver_files();
        if let Some(dir) = storage_key_file
            .and_then(|file| file.canonicalize().ok())
            .and_then(|file| file.parent().map(Path::to_path_buf))
        {
            found.push(PathRule::read(dir, "storage key file's directory"));
        }
        Self::new(
            &loaded.home,
            &loaded.settings,
            storage_key_file,
            &loaded.policy.upstream_ports(),
            found,
        )
    }

    /// The plan, from the home, the settings, the file the storage key came from (when set
    /// by `STORAGE_ENCRYPTION_KEY_FILE`), the start-up policy's upstream ports and rules for
    /// what was found on this machine (`found`):
    ///
    /// - read: the settings file, `policy/` (policy, signature, trusted keys), `db/` (the
    ///   store), `secrets/` (the storage key, read again after `store rekey`), the directory
    ///   of the storage key file, `certs/`, `upstream_ca_file`, and `found`;
    /// - read and write: `state/` only;
    /// - bind: the listen port and the metrics port; connect: `upstream_ports` and
    ///   [`DNS_PORT`].
    pub fn new(
        home: &KrouterHome,
        settings: &Settings,
        storage_key_file: Option<&Path>,
        upstream_ports: &[u16],
        found: Vec<PathRule>,
    ) -> Self {
        let mut paths = vec![
            PathRule::read(home.settings_file(), "the settings"),
            PathRule::read(home.policy_dir(), "the signed policy and the trusted keys"),
            PathRule::read(home.db_dir(), "the store"),
            PathRule::read(
                home.secrets_dir(),
                "the storage key, read again after a rekey",
            ),
            PathRule::read(home.certs_dir(), "the certificates"),
            PathRule {
                path: home.state_dir(),
                access: Access::ReadWrite,
                why: "the state database",
            },
        ];
        // The directory, not the file: a mounted secret is replaced by swapping a symlink or
        // renaming a new file into place, and a rule on the old file would not see the new one.
        if let Some(dir) = storage_key_file.and_then(Path::parent) {
            paths.push(PathRule::read(
                dir.to_path_buf(),
                "storage key file's directory",
            ));
        }
        if let Some(ca) = settings.upstream_ca_file() {
            paths.push(PathRule::read(ca.to_path_buf(), "upstream CA file"));
        }
        paths.extend(found);
        Self::from_parts(
            paths,
            std::iter::once(settings.listen().port())
                .chain(settings.metrics_listen().map(|m| m.port())),
            upstream_ports.iter().copied(),
        )
    }

    /// A plan from its parts, sorted and without duplicates (a path named twice gets the
    /// wider access of the two). [`DNS_PORT`] is always allowed.
    pub fn from_parts(
        mut paths: Vec<PathRule>,
        bind: impl IntoIterator<Item = u16>,
        connect: impl IntoIterator<Item = u16>,
    ) -> Self {
        paths.sort_by(|a, b| a.path.cmp(&b.path).then(b.access.cmp(&a.access)));
        paths.dedup_by(|later, kept| later.path == kept.path);
        let connect = connect.into_iter().chain([DNS_PORT]).collect();
        Self {
            paths,
            bind: bind.into_iter().collect(),
            connect: ConnectPorts(connect),
        }
    }

    /// The path rules, sorted by path.
    pub fn paths(&self) -> &[PathRule] {
        &self.paths
    }

    /// The TCP ports krouter may bind.
    pub fn bind_ports(&self) -> &BTreeSet<u16> {
        &self.bind
    }

    /// The TCP ports krouter may connect to.
    pub fn connect_ports(&self) -> &ConnectPorts {
        &self.connect
    }

    /// The read-write paths: the state directory.
    pub fn writable(&self) -> impl Iterator<Item = &Path> {
        self.paths
            .iter()
            .filter(|r| r.access == Access::ReadWrite)
            .map(|r| r.path.as_path())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} path rule(s), bind TCP {}, connect TCP {}",
            self.paths.len(),
            port_list(self.bind.iter().copied()),
            port_list(self.connect.iter())
        )
    }
}

// === impl PathRule ===

impl PathRule {
    /// Read-only access to `path`, for the reason `why`.
    pub fn read(path: PathBuf, why: &'static str) -> Self {
        Self {
            path,
            access: Access::Read,
            why,
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The access.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Why krouter needs it.
    pub fn why(&self) -> &'static str {
        self.why
    }
}

// === impl Access ===

impl Access {
    /// The landlock rights for a directory (`dir`) or a file. Never `Execute`.
    pub fn rights(self, dir: bool) -> BitFlags<AccessFs> {
        let read = if dir {
            AccessFs::ReadFile | AccessFs::ReadDir
        } else {
            AccessFs::ReadFile.into()
        };
        match self {
            Self::Read => read,
            Self::ReadWrite if dir => {
                read | AccessFs::WriteFile
                    | AccessFs::Truncate
                    | AccessFs::MakeReg
                    | AccessFs::RemoveFile
            }
            Self::ReadWrite => read | AccessFs::WriteFile | AccessFs::Truncate,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::ReadWrite => "read-write",
        })
    }
}

// === impl ConnectPorts ===

impl ConnectPorts {
    /// Whether `port` is allowed.
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }

    /// The ports, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }
}

/// `--require-sandbox` (or `require_sandbox = true`): anything but [`Status::FullyEnforced`]
/// is refused, with what is missing.
pub fn require(status: &Status) -> Result<(), crate::Error> {
    match status {
        Status::FullyEnforced => Ok(()),
        Status::PartiallyEnforced { .. } | Status::NotEnforced { .. } => {
            Err(crate::Error::SandboxRequired {
                status: status.to_string(),
            })
        }
    }
}

/// Refuses a policy whose providers need a TCP port outside `allowed` (the connect rules
/// applied at start-up, which cannot be widened while the process lives). Names every such
/// provider.
pub fn check_upstream_ports(allowed: &ConnectPorts, policy: &Policy) -> Result<(), String> {
    let refused: Vec<String> = policy
        .providers()
        .iter()
        .filter(|p| !allowed.contains(p.base_url().port()))
        .map(|p| {
            format!(
                "provider {} uses port {}, which the sandbox applied at start-up does not allow",
                p.name(),
                p.base_url().port()
            )
        })
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}; restart krouter to use this policy",
            refused.join("; ")
        ))
    }
}

/// Restricts this thread, and every thread it creates from now on, to `plan`. Best effort:
/// what the kernel cannot enforce is reported in the [`Status`], not an error.
pub fn apply(plan: &Plan) -> Result<Applied, Error> {
    if let Some(threads) = thread_count()
        && threads > 1
    {
        return Err(Error::Threads { threads });
    }
    let step = |step: &'static str| move |source| Error::Landlock { step, source };
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(step("declare the filesystem rights"))?
        .handle_access(AccessNet::from_all(TARGET_ABI))
        .map_err(step("declare the network rights"))?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(step("declare the scopes"))?
        .create()
        .map_err(step("create the ruleset"))?;
    let mut skipped = Vec::new();
    for rule in &plan.paths {
        let dir = match std::fs::metadata(&rule.path) {
            Ok(meta) => meta.is_dir(),
            Err(error) => {
                skipped.push((rule.path.clone(), error.to_string()));
                continue;
            }
        };
        let fd = match PathFd::new(&rule.path) {
            Ok(fd) => fd,
            Err(error) => {
                skipped.push((rule.path.clone(), error.to_string()));
                continue;
            }
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, rule.access.rights(dir)))
            .map_err(|source| Error::PathRule {
                path: rule.path.clone(),
                source,
            })?;
    }
    let ports = plan
        .bind
        .iter()
        .map(|&port| (port, AccessNet::BindTcp))
        .chain(
            plan.connect
                .iter()
                .map(|port| (port, AccessNet::ConnectTcp)),
        );
    for (port, access) in ports {
        ruleset = ruleset
            .add_rule(NetPort::new(port, access))
            .map_err(|source| Error::PortRule { port, source })?;
    }
    let restricted = ruleset
        .restrict_self()
        .map_err(step("restrict the process"))?;
    Ok(Applied {
        status: Status::from_kernel(&restricted.ruleset, restricted.landlock),
        skipped,
    })
}

/// Ports as `53, 443, 11434`.
pub fn port_list(ports: impl Iterator<Item = u16>) -> String {
    ports.map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// Threads of this process, from `/proc/self/task`; `None` if that cannot be read.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|entries| entries.count())
}

#[cfg(test)]
mod tests;
