//! What a request is decided against: the verified policy, the API keys and the sealed
//! provider credentials, as one immutable value. [`Live`] holds the current one; a request
//! takes it once, at its start, and keeps it to the end, so a reload never changes the rules
//! half-way through a request.

use foldhash::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use krouter_config::apikey::KeyDigest;
use krouter_config::store::{ApiKeyRecord, CredentialVault};
use krouter_policy::Policy;

/// One consistent view of policy and store.
#[derive(Debug)]
pub struct Snapshot {
    policy: Arc<Policy>,
    keys: Arc<KeyTable>,
    vault: Arc<CredentialVault>,
}

/// API keys by digest.
#[derive(Debug, Default)]
pub struct KeyTable(HashMap<[u8; 32], KeyEntry>);

/// What the proxy knows about one API key: never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key's public id (shared with each request's context and metadata row).
    pub id: Arc<str>,
    /// The digest, compared again in constant time after the lookup.
    pub digest: KeyDigest,
    /// Its policy group.
    pub group: Arc<str>,
    /// Expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Revocation time, unix seconds.
    pub revoked_at: Option<i64>,
}

/// The snapshot in force, swapped atomically by [`crate::reload`].
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Snapshot>,
    store_readable: AtomicBool,
}

// === impl Snapshot ===

impl Snapshot {
    /// A snapshot of `policy` with the store's keys and credentials.
    pub fn new(policy: Policy, keys: KeyTable, vault: CredentialVault) -> Self {
        Self {
            policy: Arc::new(policy),
            keys: Arc::new(keys),
            vault: Arc::new(vault),
        }
    }

    /// The verified policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The API keys.
    pub fn keys(&self) -> &KeyTable {
        &self.keys
    }

    /// The sealed credentials.
    pub fn vault(&self) -> &CredentialVault {
        &self.vault
    }

    /// This snapshot with another policy.
    pub fn with_policy(&self, policy: Policy) -> Self {
        Self {
            policy: Arc::new(policy),
            keys: Arc::clone(&self.keys),
            vault: Arc::clone(&self.vault),
        }
    }

    /// This snapshot with other store contents.
    pub fn with_store(&self, keys: KeyTable, vault: CredentialVault) -> Self {
        Self {
            policy: Arc::clone(&self.policy),
            keys: Arc::new(keys),
            vault: Arc::new(vault),
        }
    }
}

// === impl KeyTable ===

impl KeyTable {
    /// The table of `records`.
    pub fn new(records: Vec<ApiKeyRecord>) -> Self {
        Self(
            records
                .into_iter()
                .map(|r| {
                    (
                        *r.digest.as_bytes(),
                        KeyEntry {
                            id: r.id.as_str().into(),
                            digest: r.digest,
                            group: r.group.into(),
                            expires_at: r.expires_at,
                            revoked_at: r.revoked_at,
                        },
                    )
                })
                .collect(),
        )
    }

    /// The key whose digest is `digest`. The map lookup finds the candidate; the digest is
    /// then compared in constant time.
    pub fn find(&self, digest: &KeyDigest) -> Option<&KeyEntry> {
        self.0
            .get(digest.as_bytes())
            .filter(|entry| entry.digest.ct_eq(digest))
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// === impl Live ===

impl Live {
    /// Starts with `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
            store_readable: AtomicBool::new(true),
        }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Puts `snapshot` in force for requests that start from now on.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// Whether the last store check succeeded (for `/readyz`).
    pub fn store_readable(&self) -> bool {
        self.store_readable.load(Ordering::Relaxed)
    }

    /// Records whether the store could be read.
    pub fn set_store_readable(&self, readable: bool) {
        self.store_readable.store(readable, Ordering::Relaxed);
    }
}
