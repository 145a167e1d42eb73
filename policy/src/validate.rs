//! Raw policy → validated [`Policy`]. Every rule is checked and every problem collected
//! before failing, each with its line and field path; defaults are applied here and nowhere
//! else (they are listed in `docs/policy.md`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use toml::Spanned;

use crate::error::{Error, Problem, Problems};
use crate::load::CredentialNames;
use crate::model::{Policy, PolicyDigest, Provider, Serial};
use crate::raw::Parsed;
use crate::secret_like::shown;
use crate::tree::Lines;

mod access;
mod limits;
mod providers;
mod routes;
mod tuning;

/// Longest name of a provider, group or credential.
pub const MAX_NAME: usize = 64;
/// Longest model name, client-facing or upstream.
const MAX_MODEL: usize = 256;

/// Collects problems while walking the raw tree.
struct Checker<'a> {
    lines: &'a Lines,
    dropped: &'a [String],
    problems: Vec<Problem>,
}

/// The providers a file declares, valid or not, indexed for the route checks. A target
/// naming a provider that is declared but invalid is not reported again as dangling: the
/// provider's own problem already is. Sets keep validation linear in the file's size.
struct ProviderIndex<'a> {
    declared: HashSet<&'a str>,
    valid: HashMap<&'a str, &'a Provider>,
    models: HashMap<&'a str, HashSet<&'a str>>,
}

/// An integer field's bounds and default, in the field's own unit.
struct Bounds {
    min: i64,
    max: i64,
    default: i64,
}

/// Whether `text` is a valid provider, group or credential name: 1-64 ASCII letters,
/// digits, `.`, `_` or `-`, starting with a letter or digit. The admin checks credential
/// names with the same rule, so a stored name can always be referred to.
pub fn is_valid_name(text: &str) -> bool {
    text.len() <= MAX_NAME
        && text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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

    // Before the providers: theirs inherit from it.
    let resilience = c.resilience(raw.resilience.as_ref());
    let providers = raw
        .providers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| c.provider(p, &format!("providers[{i}]"), credentials, &resilience))
        .collect::<Vec<_>>();
    c.unique(
        raw.providers.iter().enumerate().filter_map(|(i, p)| {
            Some((p.get_ref().name.as_ref()?, format!("providers[{i}].name")))
        }),
        "provider",
    );

    let index = ProviderIndex {
        declared: raw
            .providers
            .iter()
            .filter_map(|p| Some(p.get_ref().name.as_ref()?.get_ref().as_str()))
            .collect(),
        valid: providers.iter().map(|p| (p.name.as_str(), p)).collect(),
        models: providers
            .iter()
            .filter_map(|p| {
                let models = p.models.as_ref()?.iter().map(String::as_str).collect();
                Some((p.name.as_str(), models))
            })
            .collect(),
    };
    let routes = raw
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| c.route(r, &format!("routes[{i}]"), &index))
        .collect::<Vec<_>>();
    let declared_routes: HashSet<&str> = raw
        .routes
        .iter()
        .filter_map(|r| Some(r.get_ref().model.as_ref()?.get_ref().as_str()))
        .collect();
    c.unique(
        raw.routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((r.get_ref().model.as_ref()?, format!("routes[{i}].model")))),
        "route for model",
    );

    let access = c.access(raw.access.as_ref(), &declared_routes);
    let logging = c.logging(raw.logging.as_ref());
    let limits = c.limits(raw.limits.as_ref());

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
            limits,
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
        if value.is_none() && !self.was_dropped(path) {
            self.push(parent_line, path, "missing required field");
        }
        value.as_ref()
    }

    /// Whether `path`, or a table or array it lies in, was dropped for having the wrong type.
    fn was_dropped(&self, path: &str) -> bool {
        self.dropped.iter().any(|d| {
            path.strip_prefix(d.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
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
        if is_valid_name(text) {
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
}
