//! Checks of the `[[providers]]` section: a provider's name, kind, base URL (through the
//! SSRF guard), credential, models, timeouts and resilience overrides.

use toml::Spanned;

use crate::load::CredentialNames;
use crate::model::{Provider, ProviderKind, Resilience, Timeouts};
use crate::raw::RawProvider;
use crate::secret_like::shown;
use crate::ssrf::{self, Reach, Scheme};
use crate::validate::{Bounds, Checker};

// === impl Checker ===

impl Checker<'_> {
    pub(super) fn provider(
        &mut self,
        spanned: &Spanned<RawProvider>,
        path: &str,
        credentials: &dyn CredentialNames,
        policy_resilience: &Resilience,
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
        let resilience = self.provider_resilience(p.resilience.as_ref(), path, policy_resilience);
        Some(Provider {
            name: name?,
            kind: kind?,
            base_url: base_url?.0,
            credential,
            models,
            timeouts,
            resilience,
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
}
