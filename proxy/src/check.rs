//! `krouter check`: the effective configuration after every start-up check, with secrets
//! shown only as where they came from; with `--sandbox`, the start-up sandbox applied to the
//! checking process and shown to hold ([`crate::sandbox::proof`]).

use std::fmt::Write as _;

use krouter_policy::{Limits, Policy};

use crate::error::Error;
use crate::sandbox::{self, Access, Plan, proof};
use crate::startup::Loaded;

/// The report `krouter check` prints.
pub fn report(loaded: &Loaded) -> String {
    let mut out = String::new();
    let policy = &loaded.policy;
    let summary = policy.summary();
    let _ = writeln!(out, "krouter configuration OK");
    let _ = writeln!(out, "  home        {}", loaded.home.root().display());
    let _ = writeln!(out, "  listen      {}", loaded.settings.listen());
    let _ = writeln!(
        out,
        "  metrics     {}",
        loaded
            .settings
            .metrics_listen()
            .map_or_else(|| "off".to_owned(), |m| format!("{m} (/metrics)"))
    );
    let _ = writeln!(out, "  log format  {}", loaded.settings.log_format());
    let _ = writeln!(
        out,
        "  upstream CA public roots{}",
        loaded
            .settings
            .upstream_ca_file()
            .map(|p| format!(" + {}", p.display()))
            .unwrap_or_default()
    );
    for (name, origin) in &loaded.secrets {
        let _ = writeln!(out, "  secret      {name}: set ({origin})");
    }
    let _ = writeln!(
        out,
        "  policy      serial {}, signed by {}, sha256 {}",
        summary.serial,
        summary.signed_by.as_deref().unwrap_or("?"),
        summary.sha256
    );
    match &loaded.previously_accepted {
        Some(accepted) => {
            let _ = writeln!(
                out,
                "              last accepted serial {}",
                accepted.serial()
            );
        }
        None => {
            let _ = writeln!(out, "              no policy accepted before");
        }
    }
    let _ = writeln!(
        out,
        "  api keys    {}",
        if summary.require_api_keys {
            "required"
        } else {
            "NOT required (loopback only)"
        }
    );
    for provider in policy.providers() {
        let _ = writeln!(
            out,
            "  provider    {} ({}) {}{}",
            provider.name(),
            provider.kind(),
            provider.base_url(),
            provider
                .credential()
                .map(|c| format!(", credential {c}"))
                .unwrap_or_default()
        );
    }
    for route in policy.routes() {
        let targets: Vec<String> = route.targets().iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  route       {} -> {}",
            route.model(),
            targets.join(", ")
        );
    }
    let _ = writeln!(out, "  groups      {}", summary.groups.join(", "));
    let _ = writeln!(out, "  upstream ports {:?}", policy.upstream_ports());
    access(&mut out, policy);
    limits(&mut out, policy.limits());
    out
}

/// The `[access]` lines: who may connect, whose `X-Forwarded-For` counts, lockout, rate
/// limits and CORS, so an operator sees the edge the proxy would enforce.
fn access(out: &mut String, policy: &Policy) {
    let access = policy.access();
    let nets = |nets: &[ipnet::IpNet]| {
        if nets.is_empty() {
            "none".to_owned()
        } else {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(
        out,
        "  ip allow    {}",
        if access.ip_allow().is_empty() {
            "any address not denied".to_owned()
        } else {
            nets(access.ip_allow())
        }
    );
    let _ = writeln!(out, "  ip deny     {}", nets(access.ip_deny()));
    let _ = writeln!(out, "  trusted proxies {}", nets(access.trusted_proxies()));
    let lockout = access.lockout();
    let _ = writeln!(
        out,
        "  lockout     {} failures in {} s lock an address for {} s",
        lockout.max_failures(),
        lockout.window().as_secs(),
        lockout.duration().as_secs()
    );
    let _ = writeln!(
        out,
        "  rate limits {} per minute per address without a valid key; per key: {}",
        access
            .unauthenticated_requests_per_minute()
            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        access
            .groups()
            .iter()
            .map(|group| format!(
                "{} {}",
                group.name(),
                group
                    .requests_per_minute()
                    .map_or_else(|| "unlimited".to_owned(), |n| format!("{n}/min"))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "  cors origins {}",
        if access.cors_origins().is_empty() {
            "none".to_owned()
        } else {
            access.cors_origins().join(", ")
        }
    );
}

/// The `[limits]` lines: every size, count and time the edge holds clients to.
fn limits(out: &mut String, limits: &Limits) {
    let ms = |d: std::time::Duration| d.as_millis();
    let _ = writeln!(
        out,
        "  limits      head {} bytes, {} headers, head within {} ms, idle {} ms, {} connections ({} per address), {} HTTP/2 streams",
        limits.max_header_bytes(),
        limits.max_headers(),
        ms(limits.header_read_timeout()),
        ms(limits.keep_alive_idle()),
        limits.max_connections(),
        limits.max_connections_per_address(),
        limits.h2_max_concurrent_streams()
    );
    let _ = writeln!(
        out,
        "              body within {} ms, at least {} bytes/s after {} ms; response writes stall at most {} ms",
        ms(limits.body_read_timeout()),
        limits.body_min_bytes_per_sec(),
        ms(limits.body_min_rate_grace()),
        ms(limits.response_write_timeout())
    );
    let body = limits.max_body_bytes();
    let _ = writeln!(
        out,
        "              body bytes: chat_completions {}, responses {}, messages {}, count_tokens {}, embeddings {}",
        body.chat_completions(),
        body.responses(),
        body.messages(),
        body.count_tokens(),
        body.embeddings()
    );
}

/// `krouter check --sandbox`: builds the plan serving would use, applies it to this process
/// and runs the checks, writing each line to `out` as it goes. Fails if the sandbox cannot be
/// set up or any check fails. The process stays sandboxed afterwards.
pub fn sandbox(loaded: &Loaded, out: &mut dyn std::io::Write) -> Result<(), Error> {
    let plan = Plan::for_start(loaded);
    let prepared = proof::prepare(&plan).map_err(|source| Error::Start {
        what: "the listener the connect check needs",
        source,
    })?;
    let applied = sandbox::apply(&plan)?;
    let mut text = format!("sandbox: {}\n", applied.status);
    for rule in plan.paths() {
        let access = match rule.access() {
            Access::Read => "read      ",
            Access::ReadWrite => "read-write",
        };
        let _ = writeln!(
            text,
            "  {access}  {} ({})",
            rule.path().display(),
            rule.why()
        );
    }
    for (path, why) in &applied.skipped {
        let _ = writeln!(text, "  no rule     {} ({why})", path.display());
    }
    let _ = writeln!(
        text,
        "  bind TCP    {}",
        sandbox::port_list(plan.bind_ports().iter().copied())
    );
    let _ = writeln!(
        text,
        "  connect TCP {}",
        sandbox::port_list(plan.connect_ports().iter())
    );
    text.push_str("checks:\n");
    let _ = out.write_all(text.as_bytes());
    let report = proof::run(&plan, &loaded.home, &prepared);
    let _ = write!(out, "{report}");
    let failures = report.failures();
    if failures.is_empty() {
        let _ = writeln!(out, "sandbox proven");
        Ok(())
    } else {
        Err(Error::SandboxNotProven {
            failed: failures.join("; "),
        })
    }
}
