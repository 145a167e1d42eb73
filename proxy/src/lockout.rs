//! Brute-force lockout: failed authentications are counted per client ([`ClientKey`]), and
//! a client with the policy's `max_failures` within `window_secs` is locked out for
//! `lockout_secs`. A locked client is answered 429 before any key is looked at.
//!
//! The table lives in memory for the request path and every failure and lock is also
//! queued to the state database (through the [`Recorder`]), from which [`Lockouts::restore`]
//! rebuilds it at start-up, so a restart does not reset anyone. The table is bounded: past
//! [`MAX_CLIENTS`] addresses, the failure counts of clients that are not locked are
//! forgotten, and when locks in force alone fill it, the sixteenth of them that end soonest
//! go too, so an attacker rotating addresses costs memory only up to the bound. (One who can
//! lock that many addresses gains no guesses by it that the addresses do not already give.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use krouter_config::state::{AuthEvent, LockoutState};
use krouter_policy::Lockout;

use crate::address::ClientKey;
use crate::recorder::Recorder;

/// Clients tracked at most.
pub const MAX_CLIENTS: usize = 65_536;

/// The lockout table.
#[derive(Debug, Default)]
pub struct Lockouts {
    table: Mutex<HashMap<ClientKey, Entry>>,
    /// Entries in the table, so the common case (nobody is tracked) takes no lock.
    tracked: AtomicUsize,
}

/// What a failed authentication led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted: this many failures in the window so far.
    Counted(u32),
    /// This failure locked the client out for the given time.
    Locked(Duration),
}

/// The thresholds, from the policy's `[access.lockout]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Failures that lock.
    pub max_failures: u32,
    /// Window they are counted in.
    pub window: Duration,
    /// How long a lock lasts.
    pub duration: Duration,
}

#[derive(Debug, Default)]
struct Entry {
    /// Failure times (unix ms) in the window, oldest first; at most `max_failures`.
    failures: VecDeque<i64>,
    /// Locked until (unix ms); 0 when not locked.
    locked_until: i64,
}

// === impl Lockouts ===

impl Lockouts {
    /// The table as the state database left it.
    pub fn restore(state: LockoutState) -> Self {
        let mut table: HashMap<ClientKey, Entry> = HashMap::new();
        for (client, at_ms) in state.failures {
            if let Some(key) = ClientKey::parse(&client) {
                table.entry(key).or_default().failures.push_back(at_ms);
            }
        }
        for (client, until_ms) in state.locks {
            if let Some(key) = ClientKey::parse(&client) {
                let entry = table.entry(key).or_default();
                entry.locked_until = entry.locked_until.max(until_ms);
            }
        }
        // Restored failures are trimmed to the policy's bound on their next use; past the
        // table's bound, counts go before locks, as while serving.
        if table.len() > MAX_CLIENTS {
            make_room(&mut table, 0);
        }
        Self {
            tracked: AtomicUsize::new(table.len()),
            table: Mutex::new(table),
        }
    }

    /// How long `client` stays locked out, if it is.
    pub fn locked(&self, client: ClientKey, now_ms: i64) -> Option<Duration> {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let until = table.get(&client)?.locked_until;
        remaining(until, now_ms)
    }

    /// Counts a failed authentication by `client` at `now_ms` under `rules`, queues it (and
    /// a lock it causes) for the state database, and says what it led to.
    pub fn fail(
        &self,
        client: ClientKey,
        now_ms: i64,
        rules: Rules,
        recorder: &Recorder,
    ) -> Failure {
        let window = millis(rules.window);
        let max = usize::try_from(rules.max_failures).unwrap_or(usize::MAX);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_CLIENTS && !table.contains_key(&client) {
            make_room(&mut table, now_ms);
        }
        let entry = table.entry(client).or_default();
        while entry
            .failures
            .front()
            .is_some_and(|at| *at <= now_ms.saturating_sub(window))
        {
            entry.failures.pop_front();
        }
        entry.failures.push_back(now_ms);
        while entry.failures.len() > max {
            entry.failures.pop_front();
        }
        let count = entry.failures.len();
        let mut events = vec![AuthEvent::Failure {
            client: client.to_string(),
            at_ms: now_ms,
        }];
        let outcome = if count >= max && remaining(entry.locked_until, now_ms).is_none() {
            let until = now_ms.saturating_add(millis(rules.duration));
            entry.locked_until = until;
            entry.failures.clear();
            events.push(AuthEvent::Locked {
                client: client.to_string(),
                until_ms: until,
            });
            Failure::Locked(rules.duration)
        } else {
            Failure::Counted(u32::try_from(count).unwrap_or(u32::MAX))
        };
        self.tracked.store(table.len(), Ordering::Relaxed);
        drop(table);
        for event in events {
            recorder.auth_event(event);
        }
        outcome
    }

    /// Forgets failures older than `window` and locks that have ended (called now and then
    /// from the recorder's side of the house, not per request).
    pub fn prune(&self, now_ms: i64, window: Duration) {
        let window = millis(window);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.retain(|_, entry| {
            while entry
                .failures
                .front()
                .is_some_and(|at| *at <= now_ms.saturating_sub(window))
            {
                entry.failures.pop_front();
            }
            !entry.failures.is_empty() || entry.locked_until > now_ms
        });
        self.tracked.store(table.len(), Ordering::Relaxed);
    }
}

// === impl Rules ===

impl From<&Lockout> for Rules {
    fn from(lockout: &Lockout) -> Self {
        Self {
            max_failures: lockout.max_failures(),
            window: lockout.window(),
            duration: lockout.duration(),
        }
    }
}

/// Past the bound: forget the counts of clients that are not locked (and locks that have
/// ended); if locks in force still fill the table, drop the sixteenth that end soonest. Each
/// call frees at least that much room, so the scans it takes are paid once per thousands of
/// new clients, not per failure.
fn make_room(table: &mut HashMap<ClientKey, Entry>, now_ms: i64) {
    let before = table.len();
    table.retain(|_, entry| entry.locked_until > now_ms);
    let forgotten = before - table.len();
    let mut dropped = 0;
    if table.len() + MAX_CLIENTS / 16 > MAX_CLIENTS {
        let mut ends: Vec<i64> = table.values().map(|entry| entry.locked_until).collect();
        let cut = (table.len() + MAX_CLIENTS / 16).saturating_sub(MAX_CLIENTS);
        if let Some(last) = cut.checked_sub(1) {
            let (_, threshold, _) = ends.select_nth_unstable(last);
            let threshold = *threshold;
            let locks = table.len();
            table.retain(|_, entry| entry.locked_until > threshold);
            dropped = locks - table.len();
        }
    }
    tracing::warn!(
        forgotten,
        locks_dropped = dropped,
        "lockout table full: failure counts of clients that are not locked were reset, and \
         the locks that end soonest dropped when locks alone filled it"
    );
}

fn remaining(until_ms: i64, now_ms: i64) -> Option<Duration> {
    let left = until_ms.checked_sub(now_ms).filter(|left| *left > 0)?;
    Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn rules(max_failures: u32, window_secs: u64, lock_secs: u64) -> Rules {
        Rules {
            max_failures,
            window: Duration::from_secs(window_secs),
            duration: Duration::from_secs(lock_secs),
        }
    }

    fn key(text: &str) -> ClientKey {
        ClientKey::of(text.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn the_nth_failure_in_the_window_locks_and_old_ones_expire() {
        let table = Lockouts::default();
        let recorder = Recorder::disconnected();
        let rules = rules(3, 60, 900);
        let a = key("192.0.2.1");
        assert_eq!(table.fail(a, 0, rules, &recorder), Failure::Counted(1));
        assert_eq!(table.fail(a, 1_000, rules, &recorder), Failure::Counted(2));
        // The first failure left the window: still two.
        assert_eq!(table.fail(a, 60_500, rules, &recorder), Failure::Counted(2));
        assert_eq!(table.locked(a, 60_500), None);
        assert_eq!(
            table.fail(a, 60_900, rules, &recorder),
            Failure::Locked(Duration::from_secs(900))
        );
        assert_eq!(table.locked(a, 60_900), Some(Duration::from_secs(900)));
        assert_eq!(table.locked(key("192.0.2.2"), 60_900), None);
        assert_eq!(table.locked(a, 60_900 + 900_000), None);
        // Another /64 member shares the lock.
        let v6 = rules;
        let b = key("2001:db8::1");
        for at in 0..3 {
            table.fail(b, at, v6, &recorder);
        }
        assert!(table.locked(key("2001:db8::ffff"), 10).is_some());
    }

    #[test]
    fn a_restart_restores_counts_and_locks() {
        let state = LockoutState {
            failures: vec![("192.0.2.1".into(), 1_000), ("192.0.2.1".into(), 2_000)],
            locks: vec![("2001:db8::/64".into(), 50_000), ("garbage".into(), 50_000)],
        };
        let table = Lockouts::restore(state);
        let recorder = Recorder::disconnected();
        assert_eq!(
            table.locked(key("2001:db8::5"), 10_000),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            table.fail(key("192.0.2.1"), 3_000, rules(3, 60, 60), &recorder),
            Failure::Locked(Duration::from_secs(60))
        );
    }

    #[test]
    fn memory_stays_bounded_when_addresses_rotate() {
        let table = Lockouts::default();
        let recorder = Recorder::disconnected();
        let rules = rules(2, 60, 900);
        let locked = key("192.0.2.1");
        table.fail(locked, 0, rules, &recorder);
        table.fail(locked, 1, rules, &recorder);
        for n in 0..(MAX_CLIENTS as u32 + 10) {
            let ip = IpAddr::from((0x0a00_0000_u32 + n).to_be_bytes());
            table.fail(ClientKey::of(ip), 2, rules, &recorder);
        }
        let len = table.table.lock().unwrap().len();
        assert!(len <= MAX_CLIENTS, "{len}");
        assert!(table.locked(locked, 3).is_some(), "a lock was forgotten");
        table.prune(10_000_000, Duration::from_secs(60));
        assert_eq!(table.table.lock().unwrap().len(), 0);
    }

    #[test]
    fn memory_stays_bounded_when_locks_alone_fill_the_table() {
        let table = Lockouts::default();
        let recorder = Recorder::disconnected();
        // One failure locks; each address's lock ends a millisecond after the one before.
        let rules = rules(1, 60, 900);
        let ip = |n: u32| ClientKey::of(IpAddr::from((0x0a00_0000_u32 + n).to_be_bytes()));
        let total = MAX_CLIENTS as u32 * 2;
        for n in 0..total {
            assert!(matches!(
                table.fail(ip(n), i64::from(n), rules, &recorder),
                Failure::Locked(_)
            ));
            let len = table.table.lock().unwrap().len();
            assert!(len <= MAX_CLIENTS, "{len} after {n}");
        }
        let now = i64::from(total);
        // The newest locks hold; the oldest (ending soonest) were the ones dropped.
        assert!(table.locked(ip(total - 1), now).is_some());
        assert!(
            table
                .locked(ip(total - MAX_CLIENTS as u32 / 2), now)
                .is_some()
        );
        assert!(table.locked(ip(0), now).is_none());
        // A restart from more locks than the bound keeps the ones that end last.
        let state = LockoutState {
            failures: Vec::new(),
            locks: (0..total)
                .map(|n| (ip(n).to_string(), 1_000_000 + i64::from(n)))
                .collect(),
        };
        let restored = Lockouts::restore(state);
        let len = restored.table.lock().unwrap().len();
        assert!(len <= MAX_CLIENTS, "{len}");
        assert!(restored.locked(ip(total - 1), 0).is_some());
        assert!(restored.locked(ip(0), 0).is_none());
    }
}
