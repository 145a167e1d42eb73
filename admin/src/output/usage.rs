//! How `usage` prints: a heading, a table with a TOTAL row, or the same as JSON with each
//! row's name in a field named after the grouping (`"model": "gpt-4o"`).

use std::path::PathBuf;

use krouter_config::usage::Figures;
use serde::ser::SerializeMap as _;
use serde::{Serialize, Serializer};

use super::table;

/// What `usage` reports.
#[derive(Debug, Serialize)]
pub struct UsageOutcome {
    /// The grouping: `key`, `group`, `model`, `provider` or `day`.
    pub by: &'static str,
    /// The window as given, such as `7d`.
    pub since: String,
    /// The window's start, RFC 3339: request rows at or after it count.
    pub from: String,
    /// The window's start, unix milliseconds.
    pub from_ms: i64,
    /// The first UTC date whose `no_log` daily counters count (`YYYY-MM-DD`).
    pub counters_from: String,
    /// The state database read.
    pub state_file: PathBuf,
    /// Whether it exists yet; without it there is no usage to report.
    pub found: bool,
    /// One row per key, group, model, provider or day with requests in the window.
    pub rows: Vec<UsageLine>,
    /// All the rows together; a percentile is `null` without request rows.
    pub total: Figures,
}

/// One row of the report.
#[derive(Debug, Serialize)]
pub struct UsageLine {
    /// What the row counts.
    #[serde(flatten)]
    pub name: RowName,
    /// True for the row of the `no_log` groups' counters, which have no key id (`--by key`).
    pub no_log: bool,
    /// The row's figures; a percentile is `null` without request rows.
    #[serde(flatten)]
    pub figures: Figures,
}

/// A row's name, serialized as one field named after the grouping; `null` for "none".
#[derive(Debug)]
pub struct RowName {
    /// The field: the grouping's name.
    pub field: &'static str,
    /// The name, if the requests had one.
    pub value: Option<String>,
}

// === impl UsageOutcome ===

impl UsageOutcome {
    /// The heading and table, or why there is nothing to show.
    pub(super) fn human(&self) -> String {
        if !self.found {
            return format!(
                "no usage yet: {} does not exist (krouter creates it when it first serves)",
                self.state_file.display()
            );
        }
        let heading = format!(
            "usage by {} since {} ({}); times in ms; no_log groups' daily counters from {} (UTC)",
            self.by, self.from, self.since, self.counters_from
        );
        let mut rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|line| {
                let name = match (&line.name.value, line.no_log) {
                    (_, true) => "(no_log)".to_owned(),
                    (Some(value), false) => printable(value),
                    (None, false) => "-".to_owned(),
                };
                cells(&line.figures, name)
            })
            .collect();
        if !rows.is_empty() {
            rows.push(cells(&self.total, "TOTAL".to_owned()));
        }
        let name = self.by.to_uppercase();
        let headers = [
            name.as_str(),
            "REQUESTS",
            "ERRORS",
            "TOKENS_IN",
            "TOKENS_OUT",
            "LATENCY_P50",
            "LATENCY_P95",
            "TTFB_P50",
            "TTFB_P95",
        ];
        format!("{heading}\n{}", table(&headers, rows))
    }
}

// === impl RowName ===

impl Serialize for RowName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.field, &self.value)?;
        map.end()
    }
}

/// The table cells of a row named `name`.
fn cells(figures: &Figures, name: String) -> Vec<String> {
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    vec![
        name,
        figures.requests.to_string(),
        figures.errors.to_string(),
        figures.tokens_in.to_string(),
        figures.tokens_out.to_string(),
        ms(figures.latency_p50_ms),
        ms(figures.latency_p95_ms),
        ms(figures.ttfb_p50_ms),
        ms(figures.ttfb_p95_ms),
    ]
}

/// `text` with control characters escaped: a model name comes from a client's request, and
/// must not move the operator's cursor or recolour their terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(requests: u64, p50: Option<u64>) -> Figures {
        Figures {
            requests,
            errors: 1,
            tokens_in: 10,
            tokens_out: 20,
            latency_p50_ms: p50,
            latency_p95_ms: p50,
            ttfb_p50_ms: None,
            ttfb_p95_ms: None,
        }
    }

    fn outcome(by: &'static str, rows: Vec<UsageLine>, found: bool) -> UsageOutcome {
        UsageOutcome {
            by,
            since: "7d".to_owned(),
            from: "2025-06-08T12:00:00Z".to_owned(),
            from_ms: 1_749_384_000_000,
            counters_from: "2025-06-08".to_owned(),
            state_file: PathBuf::from("/h/state/state.sqlite"),
            found,
            rows,
            total: figures(3, Some(5)),
        }
    }

    fn line(by: &'static str, value: Option<&str>, no_log: bool) -> UsageLine {
        UsageLine {
            name: RowName {
                field: by,
                value: value.map(str::to_owned),
            },
            no_log,
            figures: figures(1, (!no_log).then_some(5)),
        }
    }

    #[test]
    fn a_table_names_none_and_no_log_and_ends_with_total() {
        let out = outcome(
            "key",
            vec![
                line("key", Some("kid_a"), false),
                line("key", None, false),
                line("key", None, true),
            ],
            true,
        )
        .human();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "usage by key since 2025-06-08T12:00:00Z (7d); times in ms; no_log groups' daily counters from 2025-06-08 (UTC)"
        );
        assert_eq!(
            lines[1],
            "KEY       REQUESTS  ERRORS  TOKENS_IN  TOKENS_OUT  LATENCY_P50  LATENCY_P95  TTFB_P50  TTFB_P95"
        );
        assert_eq!(
            lines[2],
            "kid_a     1         1       10         20          5            5            -         -"
        );
        assert!(lines[3].starts_with("-         1 "), "{out}");
        assert!(lines[4].starts_with("(no_log)  1 "), "{out}");
        assert!(
            lines[4].ends_with("-            -            -         -"),
            "{out}"
        );
        assert!(lines[5].starts_with("TOTAL     3 "), "{out}");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn an_empty_window_and_a_missing_database_say_so() {
        let empty = outcome("model", Vec::new(), true).human();
        assert!(empty.ends_with("TTFB_P95\n(none)"), "{empty}");
        assert!(!empty.contains("TOTAL"), "{empty}");
        assert_eq!(
            outcome("model", Vec::new(), false).human(),
            "no usage yet: /h/state/state.sqlite does not exist (krouter creates it when it first serves)"
        );
    }

    #[test]
    fn json_names_the_field_after_the_grouping() {
        let json = serde_json::to_value(outcome(
            "group",
            vec![
                line("group", Some("team"), false),
                line("group", None, false),
            ],
            true,
        ))
        .unwrap();
        assert_eq!(json["rows"][0]["group"], "team");
        assert_eq!(json["rows"][0]["no_log"], false);
        assert_eq!(json["rows"][0]["latency_p50_ms"], 5);
        assert_eq!(json["rows"][0]["ttfb_p50_ms"], serde_json::Value::Null);
        assert_eq!(json["rows"][1]["group"], serde_json::Value::Null);
        assert_eq!(json["total"]["requests"], 3);
        assert!(json["total"].get("group").is_none());
    }

    #[test]
    fn control_characters_in_a_name_are_escaped() {
        assert_eq!(printable("gpt\u{1b}[31m\n"), "gpt\\u{1b}[31m\\n");
        assert_eq!(printable("modèle-4o"), "modèle-4o");
    }
}
