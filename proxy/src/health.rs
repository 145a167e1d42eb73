//! Per-target health: the circuit breaker and the 429 rest, for each target (a provider and
//! an upstream model).
//!
//! The breaker is closed until `failure_threshold` consecutive failures (connect errors,
//! timeouts, 500/502/503/504, broken or empty streams; never a 4xx) open it for
//! `open_secs`. After that it is half-open: at most `half_open_probes` requests at once may
//! try the target; a probe that succeeds closes the breaker, one that fails opens it again.
//! A 429 is not a failure: the target rests for the upstream's `Retry-After` (or the
//! policy's `rate_limit_cooldown_secs`) and requests go to the next target meanwhile.
//!
//! The table lives in memory for the request path and holds only targets that are not
//! healthy (a success removes a closed entry), so it stays as small as the policy's targets
//! and is searched in place; while every target is healthy a request takes no lock.
//! Each change of state (opened, half-open probe failed, closed, a rest) is queued to the
//! state database through the [`Recorder`], from which [`Health::restore`] rebuilds the
//! table at start-up: a restart keeps an open breaker open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use krouter_config::state::TargetHealthRow;
use krouter_policy::Breaker;

use crate::recorder::Recorder;

/// Longest rest a 429 can impose, whatever its `Retry-After` says: one hour.
pub const MAX_REST: Duration = Duration::from_secs(3600);

/// A target: provider name and upstream model.
pub type TargetKey = (String, String);

/// The health table.
#[derive(Debug, Default)]
pub struct Health {
    table: Mutex<Vec<(TargetKey, Entry)>>,
    /// Entries in the table, so that the common case (all healthy) takes no lock.
    tracked: AtomicUsize,
}

/// Whether a target may be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Closed, or half-open with a probe free.
    Ready,
    /// Open, resting, or half-open with every probe taken; free again at about this time
    /// (unix milliseconds).
    Unavailable {
        /// When it may be tried again, unix milliseconds.
        until_ms: i64,
    },
}

/// Permission to try a target once; report how it went with one of its methods. Dropped
/// unreported (the request went away), it only frees its probe.
#[derive(Debug)]
pub struct Pass {
    health: Arc<Health>,
    /// The target, when this pass holds one of its half-open probes.
    probe: Option<TargetKey>,
}

/// How an attempt on a target went, for its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered (a success, or a 4xx that is the client's or krouter's matter).
    Answered,
    /// A breaker failure.
    Failed,
    /// The target answered 429: it rests this long.
    RateLimited(Duration),
    /// Nothing learned about the target (krouter could not even send the request).
    Nothing,
}

/// A change of state worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    Opened,
    Reopened,
    Closed,
    Resting,
}

#[derive(Debug, Default)]
struct Entry {
    /// Consecutive failures while closed.
    failures: u32,
    /// Open until (unix ms); half-open once passed. `None`: closed.
    open_until: Option<i64>,
    /// Probes in flight while half-open.
    probes: u32,
    /// Resting after a 429 until (unix ms).
    cool_until: Option<i64>,
}

// === impl Health ===

impl Health {
    /// The table as the state database left it at `now_ms`.
    pub fn restore(rows: Vec<TargetHealthRow>, now_ms: i64) -> Self {
        let table: Vec<(TargetKey, Entry)> = rows
            .into_iter()
            .map(|row| {
                let entry = Entry {
                    failures: 0,
                    open_until: row.open_until_ms,
                    probes: 0,
                    cool_until: row.cool_until_ms.filter(|until| *until > now_ms),
                };
                ((row.provider, row.model), entry)
            })
            .filter(|(_, entry)| !entry.is_healthy())
            .collect();
        Self {
            tracked: AtomicUsize::new(table.len()),
            table: Mutex::new(table),
        }
    }

    /// Whether the target `provider`, `model` may be tried at `now_ms`, without taking a
    /// probe.
    pub fn availability(
        &self,
        provider: &str,
        model: &str,
        breaker: &Breaker,
        now_ms: i64,
    ) -> Availability {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return Availability::Ready;
        }
        let table = self.lock();
        match find(&table, provider, model) {
            None => Availability::Ready,
            Some(i) => table.get(i).map_or(Availability::Ready, |(_, e)| {
                e.availability(breaker, now_ms)
            }),
        }
    }

    /// A pass to try the target at `now_ms`, taking a probe if its breaker is half-open;
    /// when it is unavailable, when it may be tried again (unix milliseconds).
    pub fn enter(
        self: &Arc<Self>,
        provider: &str,
        model: &str,
        breaker: &Breaker,
        now_ms: i64,
    ) -> Result<Pass, i64> {
        let mut probe = None;
        if self.tracked.load(Ordering::Acquire) != 0 {
            let mut table = self.lock();
            if let Some((key, entry)) = find(&table, provider, model).and_then(|i| table.get_mut(i))
            {
                if let Availability::Unavailable { until_ms } = entry.availability(breaker, now_ms)
                {
                    return Err(until_ms);
                }
                if entry.open_until.is_some() {
                    entry.probes += 1;
                    probe = Some(key.clone());
                }
            }
        }
        Ok(Pass {
            health: Arc::clone(self),
            probe,
        })
    }

    /// Forgets targets the policy in force no longer has.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut table = self.lock();
        table.retain(|((provider, model), _)| keep(provider, model));
        self.tracked.store(table.len(), Ordering::Release);
    }

    /// Every target that is not available at `now_ms`, with its state: `open`, `half_open`
    /// or `resting` (a target can be in more than one), for metrics.
    pub fn states(&self, now_ms: i64) -> Vec<(String, String, &'static str)> {
        if self.tracked() == 0 {
            return Vec::new();
        }
        let mut states = Vec::new();
        for ((provider, model), entry) in self.lock().iter() {
            let mut add = |state| states.push((provider.clone(), model.clone(), state));
            match entry.open_until {
                Some(until) if until > now_ms => add("open"),
                Some(_) => add("half_open"),
                None => {}
            }
            if entry.cool_until.is_some_and(|until| until > now_ms) {
                add("resting");
            }
        }
        states
    }

    /// Targets tracked (not healthy), for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    /// Applies `outcome` of an attempt on `key`; returns the change and the row to persist.
    fn report(
        &self,
        (provider, model): (&str, &str),
        probe: bool,
        outcome: Outcome,
        breaker: &Breaker,
        now_ms: i64,
    ) -> (Change, Option<TargetHealthRow>) {
        // Nothing to note: the common case, a healthy target answering.
        if !probe
            && matches!(outcome, Outcome::Answered | Outcome::Nothing)
            && self.tracked.load(Ordering::Acquire) == 0
        {
            return (Change::None, None);
        }
        let mut table = self.lock();
        let index = match find(&table, provider, model) {
            Some(i) => i,
            None if matches!(outcome, Outcome::Answered | Outcome::Nothing) => {
                return (Change::None, None);
            }
            None => {
                table.push(((provider.to_owned(), model.to_owned()), Entry::default()));
                table.len() - 1
            }
        };
        let Some((_, entry)) = table.get_mut(index) else {
            return (Change::None, None);
        };
        if probe {
            entry.probes = entry.probes.saturating_sub(1);
        }
        let open_ms = millis(breaker.open());
        let change = match outcome {
            Outcome::Nothing => Change::None,
            Outcome::Answered => {
                entry.failures = 0;
                // Only a probe closes an open breaker: an answer to a request sent before
                // the breaker opened says little about now.
                if probe && entry.open_until.is_some() {
                    entry.open_until = None;
                    Change::Closed
                } else {
                    Change::None
                }
            }
            Outcome::Failed => match entry.open_until {
                Some(_) if probe => {
                    entry.open_until = Some(now_ms.saturating_add(open_ms));
                    Change::Reopened
                }
                Some(_) => Change::None,
                None => {
                    entry.failures = entry.failures.saturating_add(1);
                    if entry.failures >= breaker.failure_threshold() {
                        entry.failures = 0;
                        entry.open_until = Some(now_ms.saturating_add(open_ms));
                        Change::Opened
                    } else {
                        Change::None
                    }
                }
            },
            Outcome::RateLimited(rest) => {
                let until = now_ms.saturating_add(millis(rest.min(MAX_REST)));
                entry.cool_until = Some(entry.cool_until.map_or(until, |u| u.max(until)));
                Change::Resting
            }
        };
        let row = (change != Change::None).then(|| TargetHealthRow {
            provider: provider.to_owned(),
            model: model.to_owned(),
            open_until_ms: entry.open_until,
            cool_until_ms: entry.cool_until,
        });
        if entry.is_healthy() && entry.probes == 0 && entry.failures == 0 {
            table.swap_remove(index);
        }
        self.tracked.store(table.len(), Ordering::Release);
        (change, row)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(TargetKey, Entry)>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the target is in `table`.
fn find(table: &[(TargetKey, Entry)], provider: &str, model: &str) -> Option<usize> {
    table
        .iter()
        .position(|((p, m), _)| p == provider && m == model)
}

// === impl Entry ===

impl Entry {
    fn is_healthy(&self) -> bool {
        self.open_until.is_none() && self.cool_until.is_none()
    }

    fn availability(&self, breaker: &Breaker, now_ms: i64) -> Availability {
        let mut until = None::<i64>;
        let mut later = |t: i64| until = Some(until.map_or(t, |u| u.max(t)));
        if let Some(cool) = self.cool_until
            && cool > now_ms
        {
            later(cool);
        }
        match self.open_until {
            Some(open) if open > now_ms => later(open),
            // Half-open with every probe taken: try again in a second.
            Some(_) if self.probes >= breaker.half_open_probes() => {
                later(now_ms.saturating_add(1000));
            }
            _ => {}
        }
        match until {
            None => Availability::Ready,
            Some(until_ms) => Availability::Unavailable { until_ms },
        }
    }
}

// === impl Pass ===

impl Pass {
    /// Reports how the attempt on the target `provider`, `model` went, logs a change of
    /// state and queues it to the state database.
    pub fn report(
        mut self,
        (provider, model): (&str, &str),
        outcome: Outcome,
        breaker: &Breaker,
        recorder: &Recorder,
    ) {
        let probe = self.probe.take().is_some();
        let now = crate::ctx::now_ms();
        let (change, row) = self
            .health
            .report((provider, model), probe, outcome, breaker, now);
        match change {
            Change::None => {}
            Change::Opened => tracing::warn!(
                provider,
                upstream_model = model,
                failures = breaker.failure_threshold(),
                open_secs = breaker.open().as_secs(),
                "circuit breaker opened"
            ),
            Change::Reopened => tracing::warn!(
                provider,
                upstream_model = model,
                open_secs = breaker.open().as_secs(),
                "circuit breaker probe failed; open again"
            ),
            Change::Closed => {
                tracing::info!(provider, upstream_model = model, "circuit breaker closed")
            }
            Change::Resting => tracing::info!(
                provider,
                upstream_model = model,
                rest_ms = match outcome {
                    Outcome::RateLimited(rest) => millis(rest.min(MAX_REST)),
                    _ => 0,
                },
                "upstream rate limited; target rests"
            ),
        }
        if let Some(row) = row {
            recorder.target_health(row);
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some((provider, model)) = self.probe.take() {
            let mut table = self.health.lock();
            if let Some((_, entry)) = find(&table, &provider, &model).and_then(|i| table.get_mut(i))
            {
                entry.probes = entry.probes.saturating_sub(1);
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: (&str, &str) = ("p", "m");

    fn breaker(threshold: u32, open_secs: u64, probes: u32) -> Breaker {
        Breaker::new(threshold, Duration::from_secs(open_secs), probes)
    }

    fn available(health: &Health, b: &Breaker, now: i64) -> Availability {
        health.availability(T.0, T.1, b, now)
    }

    #[test]
    fn consecutive_failures_open_then_a_probe_closes() {
        let health = Arc::new(Health::default());
        let b = breaker(2, 30, 1);
        let recorder = Recorder::disconnected();
        let t0 = 1_000_000;
        let pass = health.enter(T.0, T.1, &b, t0).unwrap();
        pass.report(T, Outcome::Failed, &b, &recorder);
        assert_eq!(health.tracked(), 1);
        assert_eq!(available(&health, &b, t0), Availability::Ready);
        // A success in between resets the count and forgets the target.
        let pass = health.enter(T.0, T.1, &b, t0).unwrap();
        pass.report(T, Outcome::Answered, &b, &recorder);
        assert_eq!(health.tracked(), 0);
        assert_eq!(
            health.report(T, false, Outcome::Failed, &b, t0).0,
            Change::None
        );
        assert_eq!(
            health.report(T, false, Outcome::Failed, &b, t0).0,
            Change::Opened
        );
        assert_eq!(
            available(&health, &b, t0 + 1),
            Availability::Unavailable {
                until_ms: t0 + 30_000
            }
        );
        assert!(health.enter(T.0, T.1, &b, t0 + 1).is_err());
        // Half-open: one probe at a time; a probe dropped unreported frees its place.
        let probe = health.enter(T.0, T.1, &b, t0 + 30_000).unwrap();
        assert!(health.enter(T.0, T.1, &b, t0 + 30_000).is_err());
        drop(probe);
        let mut probe = health.enter(T.0, T.1, &b, t0 + 30_000).unwrap();
        assert!(probe.probe.take().is_some());
        let (change, row) = health.report(T, true, Outcome::Answered, &b, t0 + 30_001);
        assert_eq!(change, Change::Closed);
        assert_eq!(row.unwrap().open_until_ms, None);
        assert_eq!(health.tracked(), 0);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_old_answer_does_not_close() {
        let health = Health::default();
        let b = breaker(1, 10, 1);
        let t0 = 5_000;
        assert_eq!(
            health.report(T, false, Outcome::Failed, &b, t0).0,
            Change::Opened
        );
        let (change, row) = health.report(T, true, Outcome::Failed, &b, t0 + 10_000);
        assert_eq!(change, Change::Reopened);
        assert_eq!(row.unwrap().open_until_ms, Some(t0 + 20_000));
        assert_eq!(
            health
                .report(T, false, Outcome::Answered, &b, t0 + 10_001)
                .0,
            Change::None
        );
        assert!(matches!(
            available(&health, &b, t0 + 10_002),
            Availability::Unavailable { .. }
        ));
    }

    #[test]
    fn a_rest_is_not_a_breaker_failure_and_is_bounded() {
        let health = Health::default();
        let b = breaker(1, 10, 1);
        let day = Outcome::RateLimited(Duration::from_secs(86_400));
        let (change, row) = health.report(T, false, day, &b, 0);
        assert_eq!(change, Change::Resting);
        let row = row.unwrap();
        assert_eq!(row.open_until_ms, None);
        assert_eq!(row.cool_until_ms, Some(3_600_000));
        assert_eq!(
            available(&health, &b, 1),
            Availability::Unavailable {
                until_ms: 3_600_000
            }
        );
        assert_eq!(available(&health, &b, 3_600_000), Availability::Ready);
    }

    #[test]
    fn restored_state_keeps_an_open_breaker_open() {
        let row = |provider: &str, open: Option<i64>, cool: Option<i64>| TargetHealthRow {
            provider: provider.into(),
            model: "m".into(),
            open_until_ms: open,
            cool_until_ms: cool,
        };
        let health = Health::restore(
            vec![row("p", Some(50_000), None), row("q", None, Some(10))],
            20,
        );
        let b = breaker(1, 10, 1);
        assert_eq!(
            available(&health, &b, 20),
            Availability::Unavailable { until_ms: 50_000 }
        );
        // The rest had ended: not tracked.
        assert_eq!(health.tracked(), 1);
        health.retain(|provider, _| provider != "p");
        assert_eq!(health.tracked(), 0);
    }
}
