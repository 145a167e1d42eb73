//! Request-rate limits: per API key, at its group's `requests_per_minute`, and per client
//! address (an IPv6 /64) for requests without a valid key, at the policy's
//! `unauthenticated_requests_per_minute`. GCRA buckets from `governor`: a full minute's
//! allowance may arrive as a burst, then requests are admitted at the steady rate.
//!
//! The limiters outlive policies: a reload that keeps a group's figure keeps its buckets, a
//! changed figure starts fresh buckets at the new rate. Memory is bounded: buckets that have
//! refilled are dropped by [`Limits::tidy`], and while [`MAX_TRACKED`] keys or addresses are
//! held, every request of that limiter shares one overflow bucket, so rotating addresses
//! cannot grow the table (it only makes the rotating traffic share one small allowance).

use foldhash::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::address::ClientKey;

/// Keys or addresses tracked per limiter at most.
pub const MAX_TRACKED: usize = 65_536;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Every limiter.
#[derive(Default)]
pub struct Limits {
    /// Per group: its rate and the buckets of its keys (by key id).
    groups: Mutex<HashMap<String, Bucket<String>>>,
    /// Addresses without a valid key.
    addresses: Mutex<Option<Bucket<ClientKey>>>,
}

/// One rate and its buckets.
struct Bucket<K: Hash + Eq + Clone> {
    per_minute: u32,
    limiter: Arc<Keyed<Option<K>>>,
}

// === impl Limits ===

impl Limits {
    /// Takes one request from the bucket of key `key_id` in `group` at `per_minute`;
    /// `Err` says how long until the next request would be admitted.
    pub fn key(&self, group: &str, per_minute: u32, key_id: &str) -> Result<(), Duration> {
        let limiter = {
            let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
            match groups.get(group) {
                Some(bucket) if bucket.per_minute == per_minute => Arc::clone(&bucket.limiter),
                _ => {
                    let bucket = Bucket::new(per_minute);
                    let limiter = Arc::clone(&bucket.limiter);
                    groups.insert(group.to_owned(), bucket);
                    limiter
                }
            }
        };
        take(&limiter, key_id.to_owned())
    }

    /// Takes one request from the bucket of `client` at `per_minute`.
    pub fn address(&self, per_minute: u32, client: ClientKey) -> Result<(), Duration> {
        let limiter = {
            let mut addresses = self
                .addresses
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match addresses.as_ref() {
                Some(bucket) if bucket.per_minute == per_minute => Arc::clone(&bucket.limiter),
                _ => {
                    let bucket = Bucket::new(per_minute);
                    let limiter = Arc::clone(&bucket.limiter);
                    *addresses = Some(bucket);
                    limiter
                }
            }
        };
        take(&limiter, client)
    }

    /// Drops buckets that have refilled (a new one would be the same), and the limiters of
    /// groups no longer in `groups`. Call now and then, not per request.
    pub fn tidy<'a>(&self, groups: impl IntoIterator<Item = &'a str>) {
        let keep: Vec<&str> = groups.into_iter().collect();
        let mut table = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        table.retain(|name, _| keep.contains(&name.as_str()));
        for bucket in table.values() {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
        drop(table);
        if let Some(bucket) = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
    }
}

/// One request from `key`'s bucket; while [`MAX_TRACKED`] buckets are held (until the
/// next [`Limits::tidy`]), from the one shared overflow bucket (`None`) instead.
fn take<K: Hash + Eq + Clone>(limiter: &Keyed<Option<K>>, key: K) -> Result<(), Duration> {
    let key = (limiter.len() < MAX_TRACKED).then_some(key);
    limiter
        .check_key(&key)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

// === impl Bucket ===

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(per_minute: u32) -> Self {
        let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            per_minute,
            limiter: Arc::new(RateLimiter::keyed(Quota::per_minute(rate))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn client(n: u32) -> ClientKey {
        ClientKey::of(IpAddr::from(n.to_be_bytes()))
    }

    #[test]
    fn a_key_gets_its_groups_rate_and_keys_do_not_share() {
        let limits = Limits::default();
        for _ in 0..3 {
            assert!(limits.key("team", 3, "kid_a").is_ok());
        }
        let wait = limits.key("team", 3, "kid_a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limits.key("team", 3, "kid_b").is_ok());
        // A new figure (a policy reload) starts fresh buckets at the new rate.
        assert!(limits.key("team", 4, "kid_a").is_ok());
    }

    #[test]
    fn addresses_are_limited_and_rotation_stays_bounded() {
        let limits = Limits::default();
        assert!(limits.address(1, client(1)).is_ok());
        assert!(limits.address(1, client(1)).is_err());
        assert!(limits.address(1, client(2)).is_ok());
        for n in 10..(10 + MAX_TRACKED as u32 + 100) {
            let _ = limits.address(1_000_000, client(n));
        }
        let tracked = limits
            .addresses
            .lock()
            .unwrap()
            .as_ref()
            .map(|b| b.limiter.len());
        assert!(tracked.is_some_and(|n| n <= MAX_TRACKED + 1), "{tracked:?}");
    }

    #[test]
    fn tidy_forgets_removed_groups() {
        let limits = Limits::default();
        assert!(limits.key("gone", 1, "kid_a").is_ok());
        assert!(limits.key("kept", 1, "kid_a").is_ok());
        limits.tidy(["kept"]);
        assert!(limits.groups.lock().unwrap().contains_key("kept"));
        assert!(!limits.groups.lock().unwrap().contains_key("gone"));
        // The removed group's key starts over if the group comes back.
        assert!(limits.key("gone", 1, "kid_a").is_ok());
    }
}
