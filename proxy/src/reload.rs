//! Live changes without a restart. A watcher thread looks every [`POLL`] at the store's data
//! version and at the policy files' size, time and inode:
//!
//! - the store changed (a key created, revoked or rotated, a credential set or removed):
//!   the keys and sealed credentials are read again and swapped in;
//! - the policy or its signature changed: the files are verified, parsed and validated
//!   exactly as at start-up, against the last accepted serial; a good policy is recorded in
//!   the state database and swapped in, a bad one is logged with its reason (once per
//!   version of the files) and the last good policy keeps serving. A policy whose providers
//!   need a TCP port the sandbox applied at start-up does not allow is bad too: the sandbox
//!   cannot be widened while the process lives, so it needs a restart.
//!
//! Swaps are atomic ([`crate::snapshot::Live`]); requests in flight keep the snapshot they
//! started with.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use krouter_config::home::KrouterHome;
use krouter_config::policy_files::{read_signed, read_trusted_dir, signature_path};
use krouter_config::secret::SecretName;
use krouter_config::secret::load::{self, Vars};
use krouter_config::state::StateDb;
use krouter_config::store::StoreReader;
use krouter_policy::{AcceptedPolicy, Policy};

use crate::pipeline::Shared;
use crate::sandbox::{self, ConnectPorts};
use crate::snapshot::KeyTable;

/// How often the watcher looks.
pub const POLL: Duration = Duration::from_millis(100);

/// The watcher's own state.
pub struct Watcher {
    home: KrouterHome,
    vars: Vars,
    listen: SocketAddr,
    sandbox_connect: Option<ConnectPorts>,
    store: StoreReader,
    state: StateDb,
    store_version: Option<i64>,
    store_file: Option<(u64, u64)>,
    policy_stamp: Stamp,
    refused_stamp: Option<Stamp>,
    store_failing: bool,
}

/// A running watcher; stopped and joined by [`WatcherHandle::stop`].
pub struct WatcherHandle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// What identifies one version of the policy files (and the trusted keys directory) without
/// reading them: size, modification and change times, inode and device of each.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<[i64; 7]>);

// === impl Watcher ===

impl Watcher {
    /// A watcher over `home`'s policy and `store`, writing accepted serials to `state`.
    ///
    /// `store_version` is the store's data version taken before the snapshot in force read
    /// its keys, so that a change committed in between is not missed.
    pub fn new(
        home: KrouterHome,
        vars: &Vars,
        listen: SocketAddr,
        store: StoreReader,
        state: StateDb,
        store_version: Option<i64>,
    ) -> Self {
        let policy_stamp = Stamp::of(&home.policy_file(), &home.trusted_dir());
        let store_file = file_id(&home.store_file());
        // Only what re-reading the storage key after `store rekey` needs.
        let names = [SecretName::StorageKey.var()];
        let file_var = format!("{}_FILE", SecretName::StorageKey.var());
        let vars = vars.only(&[names[0], file_var.as_str()]);
        Self {
            home,
            vars,
            store_file,
            listen,
            sandbox_connect: None,
            store,
            state,
            store_version,
            policy_stamp,
            refused_stamp: None,
            store_failing: false,
        }
    }

    /// Refuses policies whose providers need a TCP port outside `ports`, the connect rules the
    /// sandbox enforces (`None`: no such rules are enforced, any port is fine).
    #[must_use]
    pub fn with_sandbox_connect(mut self, ports: Option<ConnectPorts>) -> Self {
        self.sandbox_connect = ports;
        self
    }

    /// Starts watching on its own thread.
    pub fn spawn(mut self, shared: Arc<Shared>) -> std::io::Result<WatcherHandle> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("krouter-reload".to_owned())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        self.tick(&shared);
                        std::thread::sleep(POLL);
                    }
                }
            })?;
        Ok(WatcherHandle { stop, thread })
    }

    /// One look at the store and the policy.
    pub fn tick(&mut self, shared: &Shared) {
        self.tick_store(shared);
        self.tick_policy(shared);
    }

    fn tick_store(&mut self, shared: &Shared) {
        // A store file replaced (renamed over, or a mounted secret's symlink swapped) or
        // removed is not visible through the open connection: watch the path too.
        let on_disk = file_id(&self.home.store_file());
        if on_disk.is_none() {
            self.store_failed(shared, "the store file is gone");
            return;
        }
        if on_disk != self.store_file {
            if let Err(error) = self.reopen_store() {
                self.store_failed(shared, &error);
                return;
            }
            self.store_file = on_disk;
            self.store_version = None;
        }
        let version = match self.store.data_version() {
            Ok(version) => Some(version),
            Err(error) => {
                self.store_failed(shared, &error.to_string());
                return;
            }
        };
        if version == self.store_version && !self.store_failing {
            return;
        }
        match self.read_store() {
            Ok((keys, vault)) => {
                let current = shared.live.load();
                for provider in current.policy().providers() {
                    if let Some(name) = provider.credential()
                        && !vault.contains(name)
                    {
                        tracing::warn!(
                            provider = provider.name(),
                            credential = name,
                            "the policy names a credential the store no longer has; requests to this provider fail until it is set again"
                        );
                    }
                }
                tracing::info!(keys = keys.len(), "store change applied");
                shared.live.store(current.with_store(keys, vault));
                shared.live.set_store_readable(true);
                self.store_failing = false;
                self.store_version = version;
            }
            Err(error) => self.store_failed(shared, &error),
        }
    }

    fn read_store(&mut self) -> Result<(KeyTable, krouter_config::store::CredentialVault), String> {
        if self.store.check_key().is_err() {
            // `store rekey` ran: the new storage key is where the old one was read from.
            self.reopen_store()?;
        }
        let keys = self.store.api_keys().map_err(|e| e.to_string())?;
        let vault = self.store.vault().map_err(|e| e.to_string())?;
        Ok((KeyTable::new(keys), vault))
    }

    fn reopen_store(&mut self) -> Result<(), String> {
        let key =
            load::storage_key(&self.vars, &self.home.secrets_dir()).map_err(|e| e.to_string())?;
        self.store = StoreReader::open(&self.home.store_file(), &key).map_err(|e| {
            format!("{e} (after `store rekey`, give krouter the new storage key and restart it)")
        })?;
        tracing::info!("store reopened");
        Ok(())
    }

    fn store_failed(&mut self, shared: &Shared, error: &str) {
        if !self.store_failing {
            tracing::error!(
                error,
                "cannot read the store; serving with the last good keys and credentials"
            );
        }
        self.store_failing = true;
        shared.live.set_store_readable(false);
    }

    fn tick_policy(&mut self, shared: &Shared) {
        let stamp = Stamp::of(&self.home.policy_file(), &self.home.trusted_dir());
        if stamp == self.policy_stamp {
            return;
        }
        self.policy_stamp = stamp.clone();
        let current = shared.live.load();
        match self.load_policy(current.vault()) {
            Ok(policy) => {
                let old = current.policy();
                if policy.serial() == old.serial() && policy.digest() == old.digest() {
                    return;
                }
                let accepted = AcceptedPolicy::new(policy.serial(), policy.digest());
                if let Err(error) = self.state.record_accepted(&accepted) {
                    tracing::error!(%error, "could not record the accepted policy; keeping the one in force");
                    return;
                }
                tracing::info!(
                    serial = policy.serial().get(),
                    previous_serial = old.serial().get(),
                    "policy applied"
                );
                shared.live.store(current.with_policy(policy));
                shared.metrics.reload(true);
                self.refused_stamp = None;
            }
            Err(reason) => {
                if self.refused_stamp.as_ref() != Some(&stamp) {
                    shared.metrics.reload(false);
                    tracing::warn!(
                        reason,
                        serial_in_force = current.policy().serial().get(),
                        "new policy refused; the last good policy keeps serving"
                    );
                    self.refused_stamp = Some(stamp);
                }
            }
        }
    }

    fn load_policy(
        &self,
        credentials: &dyn krouter_policy::CredentialNames,
    ) -> Result<Policy, String> {
        let trusted = read_trusted_dir(&self.home.trusted_dir()).map_err(|e| chain(&e))?;
        let files = read_signed(&self.home.policy_file(), None).map_err(|e| chain(&e))?;
        let accepted = self.state.accepted().map_err(|e| chain(&e))?;
        let policy =
            krouter_policy::load(files.as_files(), &trusted, accepted.as_ref(), credentials)
                .map_err(|e| policy_reason(&e))?;
        if !self.listen.ip().is_loopback() && !policy.access().require_api_keys() {
            return Err(format!(
                "it does not require API keys while krouter listens on {}, which is not a loopback address",
                self.listen
            ));
        }
        if let Some(allowed) = &self.sandbox_connect {
            sandbox::check_upstream_ports(allowed, &policy)?;
        }
        Ok(policy)
    }
}

// === impl WatcherHandle ===

impl WatcherHandle {
    /// Stops the watcher and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

// === impl Stamp ===

impl Stamp {
    fn of(policy: &Path, trusted: &Path) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let paths = [
            policy.to_owned(),
            signature_path(policy),
            trusted.to_owned(),
        ];
        let wide = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Self(
            paths
                .iter()
                .map(|path| match std::fs::metadata(path) {
                    Ok(m) => [
                        wide(m.len()),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                        wide(m.ino()),
                        wide(m.dev()),
                    ],
                    Err(_) => [0; 7],
                })
                .collect(),
        )
    }
}

/// `(device, inode)` of `path`, following symlinks; `None` if it cannot be read.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// An error and its causes on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A policy error with every validation problem, on one line.
pub fn policy_reason(error: &krouter_policy::Error) -> String {
    match error {
        krouter_policy::Error::Invalid(problems) => {
            let lines = problems.lines();
            format!(
                "invalid policy, {} problem(s): {}",
                lines.len(),
                lines.join("; ")
            )
        }
        _ => chain(error),
    }
}
