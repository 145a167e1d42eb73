//! The Prometheus listener of the real `krouter`: a scrape parses, and its counters match the
//! requests, rejections, breakers and reloads the test caused; only `GET /metrics` is served;
//! `metrics_listen = "off"` turns it off.

use std::collections::BTreeMap;
use std::time::Duration;

use krouter_tests::client::send;
use krouter_tests::home::TempHome;
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::upstream::MockUpstream;

use super::proxy_serve::{chat, complete, provider, route};

/// One scrape, parsed: `name{labels}` (labels sorted as written) to value. Panics on a line
/// that is not a comment, a sample or the final `# EOF`.
pub(super) fn scrape(krouter: &Krouter) -> BTreeMap<String, f64> {
    let addr = krouter.metrics.expect("a metrics listener");
    let reply = send("GET", &format!("http://{addr}/metrics"), &[], "");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);
    let mut samples = BTreeMap::new();
    for line in reply.body.lines() {
        if line.starts_with("# HELP ")
            || line.starts_with("# TYPE ")
            || line.starts_with("# UNIT ")
            || line == "# EOF"
        {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let name_ok = series
            .split('{')
            .next()
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert!(name_ok, "bad metric name: {line}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

pub(super) fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
}

#[test]
fn a_scrape_parses_and_its_counters_match_what_happened() {
    let home = TempHome::init();
    let a = MockUpstream::start();
    let text = [
        provider("a", "openai-compatible", &a.base_url(), None, ""),
        route("chat", &["a:ok"]),
        route("broken", &["a:fail-503"]),
        "[resilience.breaker]\nfailure_threshold = 2\nopen_secs = 60\n\n".to_owned(),
    ]
    .concat();
    home.write_policy(&policy(2, &text));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);

    let before = scrape(&krouter);
    assert_eq!(value(&before, "krouter_policy_serial"), 2.0);
    assert!(
        !before
            .keys()
            .any(|k| k.starts_with("krouter_requests_total{")),
        "{before:#?}"
    );

    for _ in 0..3 {
        assert_eq!(complete(&krouter, &key, &chat("chat")).status, 200);
    }
    // Two 502s open the breaker; the third request is refused before any attempt.
    for status in [502, 502, 503] {
        assert_eq!(complete(&krouter, &key, &chat("broken")).status, status);
    }
    assert_eq!(
        complete(&krouter, "sk-krouter-not-a-key", &chat("chat")).status,
        401
    );

    // A refused policy (unsigned) counts as refused; the serial in force stays.
    std::fs::write(home.root.join("policy/policy.toml"), policy(3, &text)).unwrap();
    krouter.wait_for_log("new policy refused", Duration::from_secs(5));

    let after = scrape(&krouter);
    let requests = |status: u16, provider: &str| {
        value(
            &after,
            &format!(
                "krouter_requests_total{{endpoint=\"chat.completions\",status=\"{status}\",provider=\"{provider}\"}}"
            ),
        )
    };
    assert_eq!(requests(200, "a"), 3.0);
    assert_eq!(requests(502, "a"), 2.0);
    assert_eq!(requests(503, ""), 1.0);
    assert_eq!(requests(401, ""), 1.0);
    assert_eq!(
        value(
            &after,
            "krouter_request_duration_seconds_count{endpoint=\"chat.completions\"}"
        ),
        7.0
    );
    // Time to first byte is of relayed answers only: krouter's own errors have none.
    assert_eq!(
        value(
            &after,
            "krouter_time_to_first_byte_seconds_count{endpoint=\"chat.completions\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "krouter_upstream_attempts_total{provider=\"a\",outcome=\"answered\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "krouter_upstream_attempts_total{provider=\"a\",outcome=\"server_error\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "krouter_rejections_total{reason=\"targets_unavailable\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "krouter_target_unavailable{provider=\"a\",model=\"fail-503\",state=\"open\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "krouter_policy_reloads_total{result=\"refused\"}"),
        1.0
    );
    assert_eq!(value(&after, "krouter_policy_serial"), 2.0);
    assert_eq!(value(&after, "krouter_metadata_rows_dropped_total"), 0.0);
    assert_eq!(value(&after, "krouter_lockouts_total"), 0.0);
    // No key, client address or secret in any label.
    let scraped = send(
        "GET",
        &format!("http://{}/metrics", krouter.metrics.unwrap()),
        &[],
        "",
    );
    for secret in [key.as_str(), "sk-krouter-not-a-key", "127.0.0.1"] {
        assert!(!scraped.body.contains(secret), "{secret} in the metrics");
    }

    // Only GET /metrics.
    let base = format!("http://{}", krouter.metrics.unwrap());
    assert_eq!(send("GET", &format!("{base}/"), &[], "").status, 404);
    let post = send("POST", &format!("{base}/metrics"), &[], "");
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET"));
    // And never on the client port.
    assert_eq!(send("GET", &krouter.url("/metrics"), &[], "").status, 404);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn metrics_can_be_turned_off() {
    let home = TempHome::init();
    let krouter = Krouter::spawn(&home, &[("KROUTER_METRICS_LISTEN", "off")]);
    assert_eq!(krouter.metrics, None);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    let run = home.check(&[("KROUTER_METRICS_LISTEN", "off")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("  metrics     off"), "{}", run.stdout);
    let run = home.check(&[("KROUTER_METRICS_LISTEN", "nowhere")]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("metrics_listen"), "{}", run.stderr);
}
