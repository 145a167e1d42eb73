//! Raw policy → validated [`Policy`]. Every rule is checked and every problem collected
//! before failing, each with its line and field path; defaults are applied here and nowhere
//! else (they are listed in `docs/policy.md`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::error::{Error, Problem, Problems};
use crate::load::CredentialNames;
use crate::model::{
    Access, Breaker, Group, Lockout, Logging, Policy, PolicyDigest, Provider, ProviderKind,
    Resilience, Route, Serial, Target, Timeouts,
};
use crate::raw::{
    Parsed, RawAccess, RawBreaker, RawGroup, RawLockout, RawLogging, RawProvider, RawResilience,
    RawRoute,
};
use crate::secret_like::shown;
use crate::ssrf::{self, Reach, Scheme};
use crate::tree::Lines;

/// Longest name of a provider, group or credential.
const MAX_NAME: usize = 64;
/// Longest model name, client-facing or upstream.
const MAX_MODEL: usize = 256;

/// Collects problems while walking the raw tree.
struct Checker<'a> {
    lines: &'a Lines,
    dropped: &'a [String],
    problems: Vec<Problem>,
}

/// An integer field's bounds and default, in the field's own unit.
struct Bounds {
    min: i64,
    max: i64,
    default: i64,
}

/// Turns the parsed tree into a policy, or lists every problem with it.
pub(crate) fn validate(
    file: &str,
    parsed: Parsed,
    digest: PolicyDigest,
    credentials: &dyn CredentialNames,
) -> Result<Policy, Error> {
    let Parsed {
        raw,
        lines,
        problems,
        dropped,
    } = parsed;
    let mut c = Checker {
        lines: &lines,
        dropped: &dropped,
        problems,
    };

    let serial = match c.required(&raw.serial, 1, "serial") {
        Some(s) if *s.get_ref() >= 1 => u64::try_from(*s.get_ref()).ok().map(Serial),
        Some(s) => {
            let line = c.line(s);
            c.push(line, "serial", "must be a positive integer");
            None
        }
        None => None,
    };

    let providers = raw
        .providers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| c.provider(p, &format!("providers[{i}]"), credentials))
        .collect::<Vec<_>>();
    c.unique(
        raw.providers.iter().enumerate().filter_map(|(i, p)| {
            Some((p.get_ref().name.as_ref()?, format!("providers[{i}].name")))
        }),
        "provider",
    );

    let routes = raw
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| c.route(r, &format!("routes[{i}]"), &providers))
        .collect::<Vec<_>>();
    c.unique(
        raw.routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((r.get_ref().model.as_ref()?, format!("routes[{i}].model")))),
        "route for model",
    );

    let access = c.access(raw.access.as_ref(), &routes);
    let resilience = c.resilience(raw.resilience.as_ref());
    let logging = c.logging(raw.logging.as_ref());

    if !c.problems.is_empty() {
        return Err(Error::Invalid(Problems::new(file, c.problems)));
    }
    match (serial, access) {
        (Some(serial), Some(access)) => Ok(Policy {
            serial,
            digest,
            access,
            providers,
            routes,
            resilience,
            logging,
            signer: None,
        }),
        // Unreachable in practice: a missing part always leaves a problem behind.
        _ => Err(Error::Invalid(Problems::new(
            file,
            vec![Problem::new(1, "", "the policy is incomplete")],
        ))),
    }
}

// === impl Checker ===

impl Checker<'_> {
    fn line<T>(&self, value: &Spanned<T>) -> usize {
        self.lines.line(value.span().start)
    }

    fn push(&mut self, line: usize, path: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem::new(line, path, what));
    }

    /// A required field, or a "missing" problem at the enclosing table's line (unless the
    /// field was already reported for having the wrong type).
    fn required<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        parent_line: usize,
        path: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() && !self.dropped.iter().any(|d| d == path) {
            self.push(parent_line, path, "missing required field");
        }
        value.as_ref()
    }

    /// An integer within `bounds`, or its default when absent.
    fn int(&mut self, value: &Option<Spanned<i64>>, path: &str, b: &Bounds) -> i64 {
        match value {
            None => b.default,
            Some(v) => {
                let n = *v.get_ref();
                if (b.min..=b.max).contains(&n) {
                    n
                } else {
                    let line = self.line(v);
                    self.push(
                        line,
                        path,
                        format!("must be between {} and {}, got {n}", b.min, b.max),
                    );
                    b.default
                }
            }
        }
    }

    fn millis(&mut self, value: &Option<Spanned<i64>>, path: &str, b: &Bounds) -> Duration {
        Duration::from_millis(self.int(value, path, b).unsigned_abs())
    }

    fn secs(&mut self, value: &Option<Spanned<i64>>, path: &str, b: &Bounds) -> Duration {
        Duration::from_secs(self.int(value, path, b).unsigned_abs())
    }

    fn count(&mut self, value: &Option<Spanned<i64>>, path: &str, b: &Bounds) -> u32 {
        u32::try_from(self.int(value, path, b)).unwrap_or(0)
    }

    /// A name: 1–64 characters of ASCII letters, digits, `.`, `_`, `-`, starting alphanumeric.
    fn name(&mut self, value: &Spanned<String>, path: &str) -> Option<String> {
        let text = value.get_ref();
        let ok = text.len() <= MAX_NAME
            && text
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Some(text.clone())
        } else {
            let line = self.line(value);
            self.push(
                line,
                path,
                format!(
                    "{} is not a valid name: use 1-{MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit",
                    shown(text)
                ),
            );
            None
        }
    }

    /// A model name: 1–256 printable ASCII characters without spaces.
    fn model(&mut self, value: &Spanned<String>, path: &str) -> Option<String> {
        let text = value.get_ref();
        let ok = !text.is_empty()
            && text.len() <= MAX_MODEL
            && text.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Some(text.clone())
        } else {
            let line = self.line(value);
            self.push(
                line,
                path,
                format!("model names are 1-{MAX_MODEL} printable ASCII characters without spaces"),
            );
            None
        }
    }

    /// Reports every name used more than once.
    fn unique<'v>(
        &mut self,
        names: impl Iterator<Item = (&'v Spanned<String>, String)>,
        what: &str,
    ) {
        let mut seen = BTreeSet::new();
        for (name, path) in names {
            if !seen.insert(name.get_ref().as_str()) {
                let line = self.line(name);
                self.push(
                    line,
                    path,
                    format!(
                        "duplicate {what} {}: each must appear once",
                        shown(name.get_ref())
                    ),
                );
            }
        }
    }

    fn provider(
        &mut self,
        spanned: &Spanned<RawProvider>,
        path: &str,
        credentials: &dyn CredentialNames,
    ) -> Option<Provider> {
        let line = self.line(spanned);
        let p = spanned.get_ref();
        let name = self
            .required(&p.name, line, &format!("{path}.name"))
            .and_then(|n| self.name(n, &format!("{path}.name")));

        let kind_path = format!("{path}.kind");
        let kind = self.required(&p.kind, line, &kind_path).and_then(|k| {
            let kind = ProviderKind::parse(k.get_ref());
            if kind.is_none() {
                let line = self.line(k);
                self.push(
                    line,
                    kind_path.as_str(),
                    "unknown kind: expected \"openai\", \"anthropic\" or \"openai-compatible\"",
                );
            }
            kind
        });

        let url_path = format!("{path}.base_url");
        let base_url = self.required(&p.base_url, line, &url_path).and_then(|u| {
            match ssrf::parse_base_url(u.get_ref()) {
                Ok(url) => Some((url, self.line(u))),
                Err(problem) => {
                    let line = self.line(u);
                    self.push(line, url_path.as_str(), problem.to_string());
                    None
                }
            }
        });

        let cred_path = format!("{path}.credential");
        let credential = match &p.credential {
            None => None,
            Some(c) => match self.name(c, &cred_path) {
                Some(name) if credentials.contains(&name) => Some(name),
                Some(name) => {
                    let line = self.line(c);
                    self.push(
                        line,
                        cred_path.as_str(),
                        format!(
                            "no stored credential named {}: add it with `krouter-admin credentials set {name}`",
                            shown(&name)
                        ),
                    );
                    None
                }
                None => None,
            },
        };
        if let (Some(kind @ (ProviderKind::OpenAi | ProviderKind::Anthropic)), None) =
            (kind, &p.credential)
        {
            self.push(
                line,
                cred_path.as_str(),
                format!("a provider of kind \"{kind}\" needs a credential"),
            );
        }
        if let (Some((url, url_line)), Some(_)) = (&base_url, &p.credential)
            && url.scheme() == Scheme::Http
            && url.reach() == Reach::Public
        {
            self.push(
                *url_line,
                url_path.as_str(),
                "a credential would be sent over plain http to a public host: use https",
            );
        }

        let models = p.models.as_ref().map(|list| {
            let models: Vec<String> = list
                .iter()
                .enumerate()
                .filter_map(|(i, m)| self.model(m, &format!("{path}.models[{i}]")))
                .collect();
            self.unique(
                list.iter()
                    .enumerate()
                    .map(|(i, m)| (m, format!("{path}.models[{i}]"))),
                "model",
            );
            models
        });

        let timeouts = self.timeouts(p, path);
        Some(Provider {
            name: name?,
            kind: kind?,
            base_url: base_url?.0,
            credential,
            models,
            timeouts,
        })
    }

    fn timeouts(&mut self, p: &RawProvider, path: &str) -> Timeouts {
        let connect = self.millis(
            &p.connect_timeout_ms,
            &format!("{path}.connect_timeout_ms"),
            &Bounds {
                min: 1,
                max: 120_000,
                default: 10_000,
            },
        );
        let first_byte = self.millis(
            &p.first_byte_timeout_ms,
            &format!("{path}.first_byte_timeout_ms"),
            &Bounds {
                min: 1,
                max: 600_000,
                default: 60_000,
            },
        );
        let idle = self.millis(
            &p.idle_timeout_ms,
            &format!("{path}.idle_timeout_ms"),
            &Bounds {
                min: 1,
                max: 600_000,
                default: 60_000,
            },
        );
        let total_path = format!("{path}.total_timeout_ms");
        let total = self.millis(
            &p.total_timeout_ms,
            &total_path,
            &Bounds {
                min: 1,
                max: 3_600_000,
                default: 600_000,
            },
        );
        if let Some(t) = &p.total_timeout_ms
            && (total < first_byte || total < connect)
        {
            let line = self.line(t);
            self.push(
                line,
                total_path,
                "must be at least the connect and first-byte timeouts",
            );
        }
        Timeouts {
            connect,
            first_byte,
            idle,
            total,
        }
    }

    fn route(
        &mut self,
        spanned: &Spanned<RawRoute>,
        path: &str,
        providers: &[Provider],
    ) -> Option<Route> {
        let line = self.line(spanned);
        let r = spanned.get_ref();
        let model = self
            .required(&r.model, line, &format!("{path}.model"))
            .and_then(|m| self.model(m, &format!("{path}.model")));
        let targets_path = format!("{path}.targets");
        let list = self.required(&r.targets, line, &targets_path)?;
        if list.get_ref().is_empty() {
            let line = self.line(list);
            self.push(
                line,
                targets_path.as_str(),
                "a route needs at least one target",
            );
            return None;
        }
        let mut targets = Vec::new();
        for (i, t) in list.get_ref().iter().enumerate() {
            let tpath = format!("{targets_path}[{i}]");
            if let Some(target) = self.target(t, &tpath, providers) {
                if targets.contains(&target) {
                    let line = self.line(t);
                    self.push(line, tpath, "the same target is listed twice in this route");
                } else {
                    targets.push(target);
                }
            }
        }
        let ok = targets.len() == list.get_ref().len();
        Some(Route {
            model: model?,
            targets,
        })
        .filter(|_| ok)
    }

    fn target(
        &mut self,
        t: &Spanned<String>,
        path: &str,
        providers: &[Provider],
    ) -> Option<Target> {
        let line = self.line(t);
        let Some((provider, model)) = t.get_ref().split_once(':') else {
            self.push(
                line,
                path,
                "a target is \"provider:model\", e.g. \"local:llama3.1\"",
            );
            return None;
        };
        if provider.is_empty() || model.is_empty() {
            self.push(
                line,
                path,
                "a target is \"provider:model\" with both parts present",
            );
            return None;
        }
        let Some(p) = providers.iter().find(|p| p.name == provider) else {
            self.push(
                line,
                path,
                format!("no provider named {} in [[providers]]", shown(provider)),
            );
            return None;
        };
        let spanned_model = Spanned::new(t.span(), model.to_owned());
        let model = self.model(&spanned_model, path)?;
        if let Some(models) = &p.models
            && !models.contains(&model)
        {
            self.push(
                line,
                path,
                format!(
                    "provider {} does not list model {} in its models",
                    shown(provider),
                    shown(&model)
                ),
            );
            return None;
        }
        Some(Target {
            provider: provider.to_owned(),
            model,
        })
    }

    fn access(&mut self, spanned: Option<&Spanned<RawAccess>>, routes: &[Route]) -> Option<Access> {
        let empty = RawAccess {
            require_api_keys: None,
            ip_allow: None,
            ip_deny: None,
            trusted_proxies: None,
            cors_origins: None,
            lockout: None,
            groups: None,
        };
        let a = spanned.map_or(&empty, Spanned::get_ref);
        let ip_allow = self.networks(a.ip_allow.as_deref(), "access.ip_allow");
        let ip_deny = self.networks(a.ip_deny.as_deref(), "access.ip_deny");
        let trusted_proxies = self.networks(a.trusted_proxies.as_deref(), "access.trusted_proxies");
        let cors_origins = self.origins(a.cors_origins.as_deref());
        let lockout = self.lockout(a.lockout.as_ref().map(Spanned::get_ref));
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
        routes: &[Route],
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
                    } else if routes.iter().any(|r| &r.model == m.get_ref()) {
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

    fn resilience(&mut self, spanned: Option<&Spanned<RawResilience>>) -> Resilience {
        let none = RawResilience {
            retries: None,
            backoff_initial_ms: None,
            backoff_max_ms: None,
            retry_budget_ms: None,
            rate_limit_cooldown_secs: None,
            stream_first_content_timeout_ms: None,
            breaker: None,
        };
        let r = spanned.map_or(&none, Spanned::get_ref);
        let backoff_initial = self.millis(
            &r.backoff_initial_ms,
            "resilience.backoff_initial_ms",
            &Bounds {
                min: 1,
                max: 60_000,
                default: 100,
            },
        );
        let backoff_max = self.millis(
            &r.backoff_max_ms,
            "resilience.backoff_max_ms",
            &Bounds {
                min: 1,
                max: 300_000,
                default: 2_000,
            },
        );
        if backoff_max < backoff_initial {
            let line = r
                .backoff_max_ms
                .as_ref()
                .or(r.backoff_initial_ms.as_ref())
                .map_or(1, |v| self.line(v));
            self.push(
                line,
                "resilience.backoff_max_ms",
                "must be at least resilience.backoff_initial_ms",
            );
        }
        Resilience {
            retries: self.count(
                &r.retries,
                "resilience.retries",
                &Bounds {
                    min: 0,
                    max: 5,
                    default: 1,
                },
            ),
            backoff_initial,
            backoff_max,
            retry_budget: self.millis(
                &r.retry_budget_ms,
                "resilience.retry_budget_ms",
                &Bounds {
                    min: 1,
                    max: 600_000,
                    default: 10_000,
                },
            ),
            rate_limit_cooldown: self.secs(
                &r.rate_limit_cooldown_secs,
                "resilience.rate_limit_cooldown_secs",
                &Bounds {
                    min: 1,
                    max: 3_600,
                    default: 30,
                },
            ),
            stream_first_content_timeout: self.millis(
                &r.stream_first_content_timeout_ms,
                "resilience.stream_first_content_timeout_ms",
                &Bounds {
                    min: 1,
                    max: 600_000,
                    default: 30_000,
                },
            ),
            breaker: self.breaker(r.breaker.as_ref().map(Spanned::get_ref)),
        }
    }

    fn breaker(&mut self, b: Option<&RawBreaker>) -> Breaker {
        let none = RawBreaker {
            failure_threshold: None,
            open_secs: None,
            half_open_probes: None,
        };
        let b = b.unwrap_or(&none);
        Breaker {
            failure_threshold: self.count(
                &b.failure_threshold,
                "resilience.breaker.failure_threshold",
                &Bounds {
                    min: 1,
                    max: 1_000,
                    default: 5,
                },
            ),
            open: self.secs(
                &b.open_secs,
                "resilience.breaker.open_secs",
                &Bounds {
                    min: 1,
                    max: 3_600,
                    default: 30,
                },
            ),
            half_open_probes: self.count(
                &b.half_open_probes,
                "resilience.breaker.half_open_probes",
                &Bounds {
                    min: 1,
                    max: 100,
                    default: 1,
                },
            ),
        }
    }

    fn logging(&mut self, spanned: Option<&Spanned<RawLogging>>) -> Logging {
        let none = RawLogging {
            request_metadata: None,
            retention_days: None,
        };
        let l = spanned.map_or(&none, Spanned::get_ref);
        let days = self.int(
            &l.retention_days,
            "logging.retention_days",
            &Bounds {
                min: 1,
                max: 3_650,
                default: 30,
            },
        );
        Logging {
            request_metadata: l.request_metadata.as_ref().is_none_or(|r| *r.get_ref()),
            retention: Duration::from_secs(days.unsigned_abs() * 86_400),
        }
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
