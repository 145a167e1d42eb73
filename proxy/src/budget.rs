//! Token budgets per key group: `tokens_per_day` and `tokens_per_month` from the policy,
//! counted in UTC days and calendar months from the usage the proxy records.
//!
//! Each request's tokens (in plus out, as the upstream reported them) are added to its
//! group's counters when the request ends; a request is refused (429) when its group's
//! counter has reached the budget in force. A budget is checked before the request and
//! charged after it, so requests in flight when a budget runs out can take it past its
//! figure by what they use. At start-up the counters are seeded from `state.sqlite` (request
//! rows and the `no_log` aggregates), so a restart does not refill a budget; that history is
//! kept for `[logging] retention_days`, which should cover a month where monthly budgets are
//! set.

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use krouter_policy::Group;
use time::{Date, Month, OffsetDateTime, Time};

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `tokens_per_day`, in UTC days.
    Day,
    /// `tokens_per_month`, in UTC calendar months.
    Month,
}

/// The groups' token counters.
#[derive(Debug, Default)]
pub struct Budgets {
    table: Mutex<HashMap<String, Counter>>,
    /// Whether any counter exists, so that a request of a group without budgets (or the
    /// first of a run) takes no lock when nothing is counted.
    counting: AtomicBool,
}

/// A budget that ran out: which one, and when it refills (unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// The budget.
    pub period: Period,
    /// When the next day or month begins, unix milliseconds.
    pub refills_at_ms: i64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counter {
    /// The UTC day (days since the epoch) `day_tokens` counts.
    day: i64,
    day_tokens: u64,
    /// The UTC month (`year * 12 + month - 1`) `month_tokens` counts.
    month: i64,
    month_tokens: u64,
}

/// The day and month of a moment, and when each ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    day: i64,
    month: i64,
    /// Start of this UTC day, unix milliseconds.
    pub day_start_ms: i64,
    /// Start of this UTC month, unix milliseconds.
    pub month_start_ms: i64,
    next_day_ms: i64,
    next_month_ms: i64,
}

/// Whether the caller's group has a token budget in the policy in force.
pub fn applies(ctx: &crate::ctx::RequestCtx) -> bool {
    ctx.caller
        .as_ref()
        .and_then(|c| c.group.as_deref())
        .and_then(|g| ctx.snapshot.policy().access().group(g))
        .is_some_and(|g| g.tokens_per_day().is_some() || g.tokens_per_month().is_some())
}

// === impl Budgets ===

impl Budgets {
    /// Counters seeded with each group's tokens so far `(group, today, this month)`.
    pub fn restore(spent: Vec<(String, u64, u64)>, now_ms: i64) -> Self {
        let when = Calendar::at(now_ms);
        let table: HashMap<String, Counter> = spent
            .into_iter()
            .map(|(group, day_tokens, month_tokens)| {
                let counter = Counter {
                    day: when.day,
                    day_tokens,
                    month: when.month,
                    month_tokens,
                };
                (group, counter)
            })
            .collect();
        Self {
            counting: AtomicBool::new(!table.is_empty()),
            table: Mutex::new(table),
        }
    }

    /// Whether `group` may spend more tokens at `now_ms`.
    pub fn check(&self, group: &Group, now_ms: i64) -> Result<(), Exhausted> {
        let (per_day, per_month) = (group.tokens_per_day(), group.tokens_per_month());
        if per_day.is_none() && per_month.is_none() || !self.counting.load(Ordering::Acquire) {
            return Ok(());
        }
        let when = Calendar::at(now_ms);
        let Some(counter) = self.lock().get(group.name()).copied() else {
            return Ok(());
        };
        let counter = counter.rolled(&when);
        if per_day.is_some_and(|limit| counter.day_tokens >= limit) {
            return Err(Exhausted {
                period: Period::Day,
                refills_at_ms: when.next_day_ms,
            });
        }
        if per_month.is_some_and(|limit| counter.month_tokens >= limit) {
            return Err(Exhausted {
                period: Period::Month,
                refills_at_ms: when.next_month_ms,
            });
        }
        Ok(())
    }

    /// Adds `tokens` spent by `group` at `now_ms`.
    pub fn charge(&self, group: &str, tokens: u64, now_ms: i64) {
        if tokens == 0 {
            return;
        }
        let when = Calendar::at(now_ms);
        let mut table = self.lock();
        if !table.contains_key(group) {
            table.insert(group.to_owned(), Counter::default());
        }
        let Some(counter) = table.get_mut(group) else {
            return;
        };
        let mut rolled = counter.rolled(&when);
        rolled.day_tokens = rolled.day_tokens.saturating_add(tokens);
        rolled.month_tokens = rolled.month_tokens.saturating_add(tokens);
        *counter = rolled;
        self.counting.store(true, Ordering::Release);
    }

    /// Tokens `group` has spent today and this month, as of `now_ms`.
    pub fn spent(&self, group: &str, now_ms: i64) -> (u64, u64) {
        let when = Calendar::at(now_ms);
        self.lock().get(group).map_or((0, 0), |c| {
            let c = c.rolled(&when);
            (c.day_tokens, c.month_tokens)
        })
    }

    /// Forgets groups the policy in force no longer has.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|group, _| keep(group));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Counter>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Counter ===

impl Counter {
    /// The counter as of `when`: a past day or month counts from zero.
    fn rolled(self, when: &Calendar) -> Self {
        let mut next = self;
        if next.day != when.day {
            next.day = when.day;
            next.day_tokens = 0;
        }
        if next.month != when.month {
            next.month = when.month;
            next.month_tokens = 0;
        }
        next
    }
}

// === impl Calendar ===

impl Calendar {
    /// The UTC day and month of `now_ms` (unix milliseconds).
    pub fn at(now_ms: i64) -> Self {
        let seconds = now_ms.div_euclid(1000);
        let moment =
            OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let date = moment.date();
        let day = seconds.div_euclid(86_400);
        let month_first = Date::from_calendar_date(date.year(), date.month(), 1).unwrap_or(date);
        let (next_year, next_month) = match date.month() {
            Month::December => (date.year().saturating_add(1), Month::January),
            month => (date.year(), month.next()),
        };
        let next_first = Date::from_calendar_date(next_year, next_month, 1).unwrap_or(date);
        let ms = |date: Date| {
            date.with_time(Time::MIDNIGHT)
                .assume_utc()
                .unix_timestamp()
                .saturating_mul(1000)
        };
        Self {
            day,
            month: i64::from(date.year()) * 12 + i64::from(u8::from(date.month())) - 1,
            day_start_ms: day.saturating_mul(86_400_000),
            month_start_ms: ms(month_first),
            next_day_ms: day.saturating_add(1).saturating_mul(86_400_000),
            next_month_ms: ms(next_first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30T23:59:59.500Z.
    const END_OF_NOVEMBER: i64 = 1_796_083_199_500;

    #[test]
    fn the_calendar_is_utc_days_and_months() {
        let when = Calendar::at(END_OF_NOVEMBER);
        assert_eq!(when.next_day_ms, END_OF_NOVEMBER + 500);
        assert_eq!(when.next_month_ms, END_OF_NOVEMBER + 500);
        assert_eq!(when.day_start_ms, END_OF_NOVEMBER + 500 - 86_400_000);
        // 2026-11-01T00:00:00Z.
        assert_eq!(when.month_start_ms, 1_793_491_200_000);
        let december = Calendar::at(END_OF_NOVEMBER + 31 * 86_400_000);
        // 2027-01-01T00:00:00Z.
        assert_eq!(december.next_month_ms, 1_798_761_600_000);
    }

    #[test]
    fn counters_roll_over_at_midnight_and_on_the_first() {
        let budgets = Budgets::restore(vec![("g".into(), 90, 500)], END_OF_NOVEMBER);
        assert_eq!(budgets.spent("g", END_OF_NOVEMBER), (90, 500));
        budgets.charge("g", 10, END_OF_NOVEMBER);
        assert_eq!(budgets.spent("g", END_OF_NOVEMBER), (100, 510));
        // A second later it is December: both start again.
        assert_eq!(budgets.spent("g", END_OF_NOVEMBER + 1000), (0, 0));
        budgets.charge("g", 7, END_OF_NOVEMBER + 1000);
        assert_eq!(budgets.spent("g", END_OF_NOVEMBER + 1000), (7, 7));
        assert_eq!(
            budgets.spent("g", END_OF_NOVEMBER + 1000 + 86_400_000),
            (0, 7)
        );
        budgets.retain(|g| g != "g");
        assert_eq!(budgets.spent("g", END_OF_NOVEMBER + 1000), (0, 0));
    }
}
