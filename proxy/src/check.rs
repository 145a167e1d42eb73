//! `krouter check`: the effective configuration after every start-up check, with secrets
//! shown only as where they came from; with `--sandbox`, the start-up sandbox applied to the
//! checking process and shown to hold ([`crate::sandbox::proof`]).

use std::fmt::Write as _;

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
    out
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
