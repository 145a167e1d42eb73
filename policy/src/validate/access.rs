//! Checks of the `[access]` section: IP networks, CORS origins, lockout and the groups of
//! API keys.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use toml::Spanned;

use crate::model::{Access, DEFAULT_UNAUTHENTICATED_RPM, Group, Lockout};
use crate::raw::{RawAccess, RawGroup, RawLockout};
use crate::secret_like::shown;
use crate::validate::{Bounds, Checker};

// === impl Checker ===

impl Checker<'_> {
    pub(super) fn access(
        &mut self,
        spanned: Option<&Spanned<RawAccess>>,
        routes: &HashSet<&str>,
    ) -> Option<Access> {
        let empty = RawAccess {
            require_api_keys: None,
            ip_allow: None,
            ip_deny: None,
            trusted_proxies: None,
            cors_origins: None,
            lockout: None,
            unauthenticated_requests_per_minute: None,
            groups: None,
        };
        let a = spanned.map_or(&empty, Spanned::get_ref);
        let ip_allow = self.networks(a.ip_allow.as_deref(), "access.ip_allow");
        let ip_deny = self.networks(a.ip_deny.as_deref(), "access.ip_deny");
        let trusted_proxies = self.networks(a.trusted_proxies.as_deref(), "access.trusted_proxies");
        let cors_origins = self.origins(a.cors_origins.as_deref());
        let lockout = self.lockout(a.lockout.as_ref().map(Spanned::get_ref));
        let unauthenticated_rpm = self.count(
            &a.unauthenticated_requests_per_minute,
            "access.unauthenticated_requests_per_minute",
            &Bounds {
                min: 1,
                max: 1_000_000,
                default: i64::from(DEFAULT_UNAUTHENTICATED_RPM),
            },
        );
        let groups = match &a.groups {
            None => vec![Group {
                name: "default".to_owned(),
                models: None,
                requests_per_minute: None,
                tokens_per_day: None,
                tokens_per_month: None,
                no_log: false,
            }],
            Some(list) => {
                if list.is_empty() {
                    let line = spanned.map_or(1, |s| self.line(s));
                    self.push(line, "access.groups", "define at least one group, or leave groups out for the implicit \"default\" group");
                }
                let groups = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, g)| self.group(g, &format!("access.groups[{i}]"), routes))
                    .collect();
                self.unique(
                    list.iter().enumerate().filter_map(|(i, g)| {
                        Some((
                            g.get_ref().name.as_ref()?,
                            format!("access.groups[{i}].name"),
                        ))
                    }),
                    "group",
                );
                groups
            }
        };
        Some(Access {
            require_api_keys: a.require_api_keys.as_ref().is_none_or(|r| *r.get_ref()),
            ip_allow,
            ip_deny,
            trusted_proxies,
            cors_origins,
            lockout,
            unauthenticated_requests_per_minute: a
                .unauthenticated_requests_per_minute
                .as_ref()
                .map(|_| unauthenticated_rpm),
            groups,
        })
    }

    fn networks(&mut self, list: Option<&[Spanned<String>]>, path: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let text = item.get_ref().trim();
            let net = text
                .parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
            match net {
                Some(net) => out.push(net.trunc()),
                None => {
                    let line = self.line(item);
                    self.push(
                        line,
                        format!("{path}[{i}]"),
                        "not an IP address or CIDR network such as \"10.0.0.0/8\" or \"2001:db8::/32\"",
                    );
                }
            }
        }
        out
    }

    fn origins(&mut self, list: Option<&[Spanned<String>]>) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in list.unwrap_or_default().iter().enumerate() {
            let path = format!("access.cors_origins[{i}]");
            let text = item.get_ref();
            let line = self.line(item);
            if text == "*" {
                self.push(line, path, "a wildcard origin is not allowed: list each origin, e.g. \"https://app.example.com\"");
                continue;
            }
            match origin(text) {
                Some(o) => out.push(o),
                None => self.push(
                    line,
                    path,
                    "an origin is exactly scheme://host[:port] with scheme http or https, lower case, no path",
                ),
            }
        }
        out
    }

    fn lockout(&mut self, l: Option<&RawLockout>) -> Lockout {
        let none = RawLockout {
            max_failures: None,
            window_secs: None,
            lockout_secs: None,
        };
        let l = l.unwrap_or(&none);
        Lockout {
            max_failures: self.count(
                &l.max_failures,
                "access.lockout.max_failures",
                &Bounds {
                    min: 1,
                    max: 1_000,
                    default: 10,
                },
            ),
            window: self.secs(
                &l.window_secs,
                "access.lockout.window_secs",
                &Bounds {
                    min: 1,
                    max: 86_400,
                    default: 60,
                },
            ),
            duration: self.secs(
                &l.lockout_secs,
                "access.lockout.lockout_secs",
                &Bounds {
                    min: 1,
                    max: 604_800,
                    default: 900,
                },
            ),
        }
    }

    fn group(
        &mut self,
        spanned: &Spanned<RawGroup>,
        path: &str,
        routes: &HashSet<&str>,
    ) -> Option<Group> {
        let line = self.line(spanned);
        let g = spanned.get_ref();
        let name = self
            .required(&g.name, line, &format!("{path}.name"))
            .and_then(|n| self.name(n, &format!("{path}.name")));
        let models = match &g.models {
            None => None,
            Some(list) if list.len() == 1 && list.first().is_some_and(|m| m.get_ref() == "*") => {
                None
            }
            Some(list) => {
                let mut models = Vec::new();
                for (i, m) in list.iter().enumerate() {
                    let mpath = format!("{path}.models[{i}]");
                    let line = self.line(m);
                    if m.get_ref() == "*" {
                        self.push(line, mpath, "\"*\" (every route) must be the only entry");
                    } else if routes.contains(m.get_ref().as_str()) {
                        models.push(m.get_ref().clone());
                    } else {
                        self.push(
                            line,
                            mpath,
                            format!("no route for model {} in [[routes]]", shown(m.get_ref())),
                        );
                    }
                }
                if list.is_empty() {
                    self.push(
                        line,
                        format!("{path}.models"),
                        "an empty list allows nothing: list route models, or \"*\" for all",
                    );
                }
                Some(models)
            }
        };
        let rpm = self.count(
            &g.requests_per_minute,
            &format!("{path}.requests_per_minute"),
            &Bounds {
                min: 1,
                max: 1_000_000,
                default: 1,
            },
        );
        let per_day = self.int(
            &g.tokens_per_day,
            &format!("{path}.tokens_per_day"),
            &Bounds {
                min: 1,
                max: 1_000_000_000_000,
                default: 1,
            },
        );
        let per_month = self.int(
            &g.tokens_per_month,
            &format!("{path}.tokens_per_month"),
            &Bounds {
                min: 1,
                max: 1_000_000_000_000,
                default: 1,
            },
        );
        Some(Group {
            name: name?,
            models,
            requests_per_minute: g.requests_per_minute.as_ref().map(|_| rpm),
            tokens_per_day: g.tokens_per_day.as_ref().map(|_| per_day.unsigned_abs()),
            tokens_per_month: g
                .tokens_per_month
                .as_ref()
                .map(|_| per_month.unsigned_abs()),
            no_log: g.no_log.as_ref().is_some_and(|n| *n.get_ref()),
        })
    }
}

/// A browser origin in its serialized form (`scheme://host[:port]`), or `None`.
fn origin(text: &str) -> Option<String> {
    let uri: http::Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let canonical = format!("{scheme}://{authority}");
    let ok = matches!(scheme, "http" | "https")
        && canonical == text
        && !authority.as_str().contains('@')
        && !authority.host().is_empty()
        && text == text.to_ascii_lowercase();
    ok.then_some(canonical)
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn origins_are_exact() {
        assert_eq!(
            origin("https://app.example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert!(origin("http://localhost:3000").is_some());
        for bad in [
            "https://app.example.com/",
            "https://App.example.com",
            "app.example.com",
            "ftp://x.example",
            "https://u@x.example",
            "https://x.example/path",
            "",
        ] {
            assert_eq!(origin(bad), None, "{bad}");
        }
    }
}
