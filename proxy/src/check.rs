//! `krouter check`: the effective configuration after every start-up check, with secrets
//! shown only as where they came from.

use std::fmt::Write as _;

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
