//! The policy file as written: serde types with `deny_unknown_fields` and spans for line
//! numbers. Nothing outside this crate sees these types; [`crate::validate`] turns them into
//! the model. Every field is optional here so that a missing one is reported by validation,
//! together with every other problem, rather than stopping the parse.

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::error::{Error, Problem};
use crate::tree::{self, Lines, Shape};

/// Most type errors reported before the parse gives up on a badly broken file.
const MAX_TYPE_ERRORS: usize = 20;

/// The root of the policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub(crate) serial: Option<Spanned<i64>>,
    pub(crate) access: Option<Spanned<RawAccess>>,
    #[serde(default)]
    pub(crate) providers: Vec<Spanned<RawProvider>>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    pub(crate) resilience: Option<Spanned<RawResilience>>,
    pub(crate) logging: Option<Spanned<RawLogging>>,
    pub(crate) limits: Option<Spanned<RawLimits>>,
}

/// `[access]`: who may call krouter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccess {
    pub(crate) require_api_keys: Option<Spanned<bool>>,
    pub(crate) ip_allow: Option<Vec<Spanned<String>>>,
    pub(crate) ip_deny: Option<Vec<Spanned<String>>>,
    pub(crate) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(crate) cors_origins: Option<Vec<Spanned<String>>>,
    pub(crate) lockout: Option<Spanned<RawLockout>>,
    pub(crate) unauthenticated_requests_per_minute: Option<Spanned<i64>>,
    pub(crate) groups: Option<Vec<Spanned<RawGroup>>>,
}

/// `[access.lockout]`: brute-force thresholds per client address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLockout {
    pub(crate) max_failures: Option<Spanned<i64>>,
    pub(crate) window_secs: Option<Spanned<i64>>,
    pub(crate) lockout_secs: Option<Spanned<i64>>,
}

/// `[[access.groups]]`: what the keys of one group may do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) models: Option<Vec<Spanned<String>>>,
    pub(crate) requests_per_minute: Option<Spanned<i64>>,
    pub(crate) tokens_per_day: Option<Spanned<i64>>,
    pub(crate) tokens_per_month: Option<Spanned<i64>>,
    pub(crate) no_log: Option<Spanned<bool>>,
}

/// `[[providers]]`: one upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) kind: Option<Spanned<String>>,
    pub(crate) base_url: Option<Spanned<String>>,
    pub(crate) credential: Option<Spanned<String>>,
    pub(crate) models: Option<Vec<Spanned<String>>>,
    pub(crate) connect_timeout_ms: Option<Spanned<i64>>,
    pub(crate) first_byte_timeout_ms: Option<Spanned<i64>>,
    pub(crate) idle_timeout_ms: Option<Spanned<i64>>,
    pub(crate) total_timeout_ms: Option<Spanned<i64>>,
    pub(crate) resilience: Option<Spanned<RawProviderResilience>>,
}

/// `[providers.resilience]`: a provider's own retries, backoff, 429 cool-down, stream
/// readiness and breaker; what it leaves out comes from `[resilience]`. The retry budget is
/// per request, so it is policy-wide only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProviderResilience {
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) backoff_initial_ms: Option<Spanned<i64>>,
    pub(crate) backoff_max_ms: Option<Spanned<i64>>,
    pub(crate) rate_limit_cooldown_secs: Option<Spanned<i64>>,
    pub(crate) stream_first_content_timeout_ms: Option<Spanned<i64>>,
    pub(crate) breaker: Option<Spanned<RawBreaker>>,
}

/// `[[routes]]`: a client-facing model name and its ordered targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) model: Option<Spanned<String>>,
    pub(crate) targets: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[resilience]`: retries, backoff and the circuit breaker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResilience {
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) backoff_initial_ms: Option<Spanned<i64>>,
    pub(crate) backoff_max_ms: Option<Spanned<i64>>,
    pub(crate) retry_budget_ms: Option<Spanned<i64>>,
    pub(crate) rate_limit_cooldown_secs: Option<Spanned<i64>>,
    pub(crate) stream_first_content_timeout_ms: Option<Spanned<i64>>,
    pub(crate) breaker: Option<Spanned<RawBreaker>>,
}

/// `[resilience.breaker]`: per-target circuit breaker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub(crate) failure_threshold: Option<Spanned<i64>>,
    pub(crate) open_secs: Option<Spanned<i64>>,
    pub(crate) half_open_probes: Option<Spanned<i64>>,
}

/// `[logging]`: what the proxy records about requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogging {
    pub(crate) request_metadata: Option<Spanned<bool>>,
    pub(crate) retention_days: Option<Spanned<i64>>,
}

/// `[limits]`: what one client may make the proxy hold: sizes, counts and times.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_header_bytes: Option<Spanned<i64>>,
    pub(crate) max_headers: Option<Spanned<i64>>,
    pub(crate) header_read_timeout_ms: Option<Spanned<i64>>,
    pub(crate) keep_alive_idle_ms: Option<Spanned<i64>>,
    pub(crate) body_read_timeout_ms: Option<Spanned<i64>>,
    pub(crate) body_min_bytes_per_sec: Option<Spanned<i64>>,
    pub(crate) body_min_rate_grace_ms: Option<Spanned<i64>>,
    pub(crate) response_write_timeout_ms: Option<Spanned<i64>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_connections_per_address: Option<Spanned<i64>>,
    pub(crate) h2_max_concurrent_streams: Option<Spanned<i64>>,
    pub(crate) max_body_bytes: Option<Spanned<RawBodyLimits>>,
}

/// `[limits.max_body_bytes]`: the largest request body per endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBodyLimits {
    pub(crate) chat_completions: Option<Spanned<i64>>,
    pub(crate) responses: Option<Spanned<i64>>,
    pub(crate) embeddings: Option<Spanned<i64>>,
    pub(crate) messages: Option<Spanned<i64>>,
    pub(crate) count_tokens: Option<Spanned<i64>>,
}

/// The typed tree, the problems found on the way, and the fields dropped for having the
/// wrong type (validation must not report those again as missing).
pub(crate) struct Parsed {
    pub(crate) raw: RawPolicy,
    pub(crate) lines: Lines,
    pub(crate) problems: Vec<Problem>,
    pub(crate) dropped: Vec<String>,
}

/// Parses `text` into the raw tree, collecting secret-looking literals, unknown fields and
/// type errors. Only a syntax error stops it.
pub(crate) fn parse(file: &str, text: &str) -> Result<Parsed, Error> {
    let lines = Lines::new(text);
    let mut doc = DeTable::parse(text).map_err(|e| Error::Syntax {
        file: file.to_owned(),
        line: lines.of(e.span()),
        what: syntax_message(e.message()),
    })?;
    let mut problems = Vec::new();
    let mut dropped = Vec::new();
    tree::scan_secrets(doc.get_ref(), &lines, "", &mut problems);
    sweep(
        doc.get_mut(),
        &mut Shape {
            lines: &lines,
            out: &mut problems,
            dropped: &mut dropped,
        },
    );

    for _ in 0..MAX_TYPE_ERRORS {
        match RawPolicy::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => {
                return Ok(Parsed {
                    raw,
                    lines,
                    problems,
                    dropped,
                });
            }
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let steps = tree::path_at(doc.get_ref(), offset);
                let path = tree::render(&steps);
                let found = tree::value_at(doc.get_ref(), &steps).map(|v| v.type_str());
                problems.push(Problem::new(
                    lines.line(offset),
                    path.clone(),
                    type_message(e.message(), found),
                ));
                if !tree::remove_at(doc.get_mut(), &steps) {
                    break;
                }
                // The removed entry is the deepest key on the path.
                let key_path = match steps.iter().rposition(|s| matches!(s, tree::Step::Key(_))) {
                    Some(i) => tree::render(steps.get(..=i).unwrap_or(&[])),
                    None => path,
                };
                dropped.push(key_path);
            }
        }
    }
    Err(Error::Invalid(crate::error::Problems::new(file, problems)))
}

/// Reports and removes unknown fields, and values of the wrong shape where the schema
/// expects a table, at every level the schema defines.
fn sweep(root: &mut DeTable<'_>, shape: &mut Shape<'_>) {
    use tree::fields_of;

    shape.fields(root, fields_of::<RawPolicy>(), "");
    if let Some(access) = shape.table(root, "access", "") {
        shape.fields(access, fields_of::<RawAccess>(), "access");
        if let Some(lockout) = shape.table(access, "lockout", "access") {
            shape.fields(lockout, fields_of::<RawLockout>(), "access.lockout");
        }
        for (i, group) in shape.tables(access, "groups", "access") {
            let path = format!("access.groups[{i}]");
            shape.fields(group, fields_of::<RawGroup>(), &path);
        }
    }
    for (i, provider) in shape.tables(root, "providers", "") {
        let path = format!("providers[{i}]");
        shape.fields(provider, fields_of::<RawProvider>(), &path);
        if let Some(resilience) = shape.table(provider, "resilience", &path) {
            let path = format!("{path}.resilience");
            shape.fields(resilience, fields_of::<RawProviderResilience>(), &path);
            if let Some(breaker) = shape.table(resilience, "breaker", &path) {
                shape.fields(
                    breaker,
                    fields_of::<RawBreaker>(),
                    &format!("{path}.breaker"),
                );
            }
        }
    }
    for (i, route) in shape.tables(root, "routes", "") {
        let path = format!("routes[{i}]");
        shape.fields(route, fields_of::<RawRoute>(), &path);
    }
    if let Some(resilience) = shape.table(root, "resilience", "") {
        shape.fields(resilience, fields_of::<RawResilience>(), "resilience");
        if let Some(breaker) = shape.table(resilience, "breaker", "resilience") {
            shape.fields(breaker, fields_of::<RawBreaker>(), "resilience.breaker");
        }
    }
    if let Some(logging) = shape.table(root, "logging", "") {
        shape.fields(logging, fields_of::<RawLogging>(), "logging");
    }
    if let Some(limits) = shape.table(root, "limits", "") {
        shape.fields(limits, fields_of::<RawLimits>(), "limits");
        if let Some(body) = shape.table(limits, "max_body_bytes", "limits") {
            shape.fields(body, fields_of::<RawBodyLimits>(), "limits.max_body_bytes");
        }
    }
}

/// A serde type error without the offending value: serde quotes the value it found
/// (`invalid type: string "...", expected i64`), and that value could be a secret.
fn type_message(message: &str, found_in_file: Option<&str>) -> String {
    let message = message.lines().next().unwrap_or_default();
    let expected = message
        .rsplit_once(", expected ")
        .map(|(_, expected)| expected);
    let found = [
        "string", "integer", "float", "boolean", "datetime", "sequence", "map",
    ]
    .into_iter()
    .find(|kind| message.starts_with(&format!("invalid type: {kind}")));
    match (found, expected.map(expected_name)) {
        // What the file holds is more precise than serde's view (a date-time reaches serde
        // as a table).
        (Some(_), Some(expected)) if found_in_file.is_some() => format!(
            "wrong type: found {}, expected {expected}",
            tree::article(found_in_file.unwrap_or_default())
        ),
        (Some(found), Some(expected)) => {
            format!(
                "wrong type: found {}, expected {expected}",
                toml_name(found)
            )
        }
        (None, Some(expected)) => format!("invalid value: expected {expected}"),
        _ if message.contains('"') || message.contains('`') => "invalid value".to_owned(),
        _ => message.to_owned(),
    }
}

/// serde's description of the expected Rust type, as an operator reading TOML calls it.
fn expected_name(expected: &str) -> &str {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer",
        "a sequence" => "an array",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e => e,
    }
}

/// serde's name for a kind of value, as an operator reading TOML calls it.
fn toml_name(serde_kind: &str) -> &str {
    match serde_kind {
        "sequence" => "an array",
        "map" => "a table",
        "string" => "a string",
        "integer" => "an integer",
        "float" => "a float",
        "boolean" => "a boolean",
        other => other,
    }
}

/// The TOML parser's description without any quoted input.
fn syntax_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    if first.is_empty() {
        "syntax error".to_owned()
    } else {
        first.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_messages_never_carry_the_value() {
        let m = type_message("invalid type: string \"hunter2\", expected i64", None);
        assert_eq!(m, "wrong type: found a string, expected an integer");
        let m = type_message("invalid type: integer `7`, expected struct RawAccess", None);
        assert_eq!(m, "wrong type: found an integer, expected a table");
        let m = type_message("invalid type: sequence, expected a boolean", None);
        assert_eq!(m, "wrong type: found an array, expected a boolean");
        assert_eq!(type_message("odd \"hunter2\"", None), "invalid value");
        let m = type_message("invalid type: map, expected i64", Some("datetime"));
        assert_eq!(m, "wrong type: found a date-time, expected an integer");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let Err(Error::Syntax { line, .. }) = parse("p.toml", "serial = 1\n[access\n") else {
            panic!("expected a syntax error");
        };
        assert_eq!(line, 2);
    }

    #[test]
    fn every_wrong_type_is_reported_and_dropped() {
        let text = "serial = \"one\"\n[access]\nrequire_api_keys = 3\n";
        let parsed = parse("p.toml", text).unwrap();
        let paths: Vec<_> = parsed
            .problems
            .iter()
            .map(|p| p.path().to_owned())
            .collect();
        assert_eq!(paths, ["access.require_api_keys", "serial"]);
        assert_eq!(parsed.dropped.len(), 2);
        assert!(parsed.raw.serial.is_none());
    }
}
