//! `krouter-admin usage`: requests, errors, tokens and latency per key, group, model,
//! provider or day, from the proxy's state database. Reads only: the file is opened
//! read-only and never created or migrated, so a report can run beside a serving proxy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use krouter_config::usage::{self, Bucket, Dimension};

use crate::cli::{UsageArgs, UsageBy};
use crate::context::Context;
use crate::error::Error;
use crate::output::{Outcome, RowName, UsageLine, UsageOutcome, time};

/// The longest window: ten years, past the longest request retention a policy can set.
const MAX_SINCE: Duration = Duration::from_secs(10 * 366 * 86_400);

pub(crate) fn report(ctx: &Context<'_>, args: &UsageArgs) -> Result<Outcome, Error> {
    let since = since(&args.since)?;
    let from_ms = now_ms().saturating_sub(millis(since));
    let state_file = ctx.home.state_file();
    let report = usage::report(&state_file, dimension(args.by), from_ms)?;
    let found = report.is_some();
    let field = field(args.by);
    let (rows, total) = report.map_or_else(Default::default, |report| {
        let rows = report
            .rows
            .into_iter()
            .map(|row| UsageLine {
                no_log: row.bucket == Bucket::NoLog,
                name: RowName {
                    field,
                    value: match row.bucket {
                        Bucket::Value(value) => Some(value),
                        Bucket::Absent | Bucket::NoLog => None,
                    },
                },
                figures: row.figures,
            })
            .collect();
        (rows, report.total)
    });
    Ok(Outcome::Usage(UsageOutcome {
        by: field,
        since: args.since.clone(),
        from: time(from_ms.div_euclid(1000)),
        from_ms,
        counters_from: usage::utc_day(from_ms),
        state_file,
        found,
        rows,
        total,
    }))
}

/// `--since`: a number and a unit (`30m`, `24h`, `7d`, `2w`), more than zero and at most ten
/// years.
fn since(text: &str) -> Result<Duration, Error> {
    let bad = || {
        Error::Usage(format!(
            "--since {text:?} is not a window: use a number and a unit, such as 30m, 24h, 7d or 2w (at most ten years)"
        ))
    };
    let window = humantime::parse_duration(text).map_err(|_| bad())?;
    if window.is_zero() || window > MAX_SINCE {
        return Err(bad());
    }
    Ok(window)
}

fn dimension(by: UsageBy) -> Dimension {
    match by {
        UsageBy::Key => Dimension::Key,
        UsageBy::Group => Dimension::Group,
        UsageBy::Model => Dimension::Model,
        UsageBy::Provider => Dimension::Provider,
        UsageBy::Day => Dimension::Day,
    }
}

/// The grouping's name, as `--by` spells it and as the JSON field of each row.
fn field(by: UsageBy) -> &'static str {
    match by {
        UsageBy::Key => "key",
        UsageBy::Group => "group",
        UsageBy::Model => "model",
        UsageBy::Provider => "provider",
        UsageBy::Day => "day",
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_a_number_and_a_unit() {
        assert_eq!(since("30m").unwrap(), Duration::from_secs(1_800));
        assert_eq!(since("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(since("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(since("2w").unwrap(), Duration::from_secs(14 * 86_400));
        for bad in ["", "7", "0d", "-1d", "7 days ago", "3661d", "1e3d", "d"] {
            let error = since(bad).unwrap_err();
            assert!(matches!(error, Error::Usage(_)), "{bad}");
            let message = error.to_string();
            assert!(
                message.starts_with("--since ") && message.contains("30m, 24h, 7d or 2w"),
                "{message}"
            );
        }
    }

    #[test]
    fn every_grouping_has_its_field_name() {
        for by in [
            UsageBy::Key,
            UsageBy::Group,
            UsageBy::Model,
            UsageBy::Provider,
            UsageBy::Day,
        ] {
            let value = clap::ValueEnum::to_possible_value(&by).unwrap();
            assert_eq!(value.get_name(), field(by));
        }
    }
}
