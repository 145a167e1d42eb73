//! Settings: `krouter.toml` overlaid with `KROUTER_*` variables, through figment. Settings
//! say where things are and how to run (bind address, log format, whether the sandbox must
//! be fully enforced); they hold no secrets and no security posture, which belong to the
//! secrets and the signed policy (`require_sandbox` can only make a start fail, never widen
//! what krouter may do). A value that looks like a secret is refused by field name, and so
//! is any unknown key or variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use krouter_policy::secret_like;
use serde::Deserialize;

use crate::error::Error;
use crate::home::KrouterHome;
use crate::secret::load::Source;

/// Prefix of the variables that override settings.
const PREFIX: &str = "KROUTER_";
/// `KROUTER_*` variables that are not settings.
const NOT_SETTINGS: &[&str] = &["KROUTER_HOME"];
/// The default client listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:20128";
/// The default metrics listener.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:20129";

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    log_format: LogFormat,
    upstream_ca_file: Option<PathBuf>,
    require_sandbox: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (default): for collectors.
    Json,
    /// Human-readable lines: for a terminal.
    Pretty,
}

/// The settings file as written; every value a string so that variables and the file are
/// parsed by the same code.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    listen: Option<String>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
    upstream_ca_file: Option<String>,
    require_sandbox: Option<RawFlag>,
}

/// A yes/no setting: a TOML boolean in the file, `true` or `false` in a variable.
#[derive(Debug)]
enum RawFlag {
    Bool(bool),
    Text(String),
}

/// `KROUTER_*` variables as a figment provider.
struct Variables(Dict);

impl Settings {
    /// Reads `krouter.toml` (if present) and the `KROUTER_*` variables.
    pub fn load(home: &KrouterHome, source: &dyn Source) -> Result<Self, Error> {
        let file = home.settings_file();
        let text = if file.exists() {
            let bytes = crate::fs::read_limited(&file, 64 * 1024)?;
            Some(String::from_utf8(bytes).map_err(|_| Error::Settings {
                origin: file.display().to_string(),
                field: "(file)".to_owned(),
                what: "the file is not UTF-8 text".to_owned(),
            })?)
        } else {
            None
        };
        Self::from_parts(&file, text.as_deref(), source)
    }

    /// Settings from the file text (if any) and the variables; `file` names it in messages.
    pub fn from_parts(file: &Path, text: Option<&str>, source: &dyn Source) -> Result<Self, Error> {
        let vars = Variables::from_source(source);
        let mut figment = Figment::new();
        if let Some(text) = text {
            figment = figment.merge(Toml::string(text));
        }
        let figment = figment.merge(vars);
        let raw: RawSettings = figment
            .extract()
            .map_err(|e| settings_error(&e, file, text))?;
        let origin = |field: &str| origin_of(&figment, field, file, text);

        for (field, value) in [
            ("listen", &raw.listen),
            ("metrics_listen", &raw.metrics_listen),
            ("log_format", &raw.log_format),
            ("upstream_ca_file", &raw.upstream_ca_file),
        ] {
            if let Some(kind) = value.as_deref().and_then(secret_like::detect) {
                return Err(Error::Settings {
                    origin: origin(field),
                    field: field.to_owned(),
                    what: format!("looks like a secret ({kind}); settings hold no secrets"),
                });
            }
        }
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen.parse::<SocketAddr>().map_err(|_| Error::Settings {
            origin: origin("listen"),
            field: "listen".to_owned(),
            what: "not an address:port such as \"127.0.0.1:20128\" or \"[::1]:20128\"".to_owned(),
        })?;
        let metrics_listen = match raw
            .metrics_listen
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_LISTEN)
        {
            "off" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|_| Error::Settings {
                origin: origin("metrics_listen"),
                field: "metrics_listen".to_owned(),
                what: "not an address:port such as \"127.0.0.1:20129\", or \"off\"".to_owned(),
            })?),
        };
        if metrics_listen.is_some_and(|m| m.port() != 0 && m.port() == listen.port()) {
            return Err(Error::Settings {
                origin: origin("metrics_listen"),
                field: "metrics_listen".to_owned(),
                what: "uses the client listener's port; metrics need a listener of their own"
                    .to_owned(),
            });
        }
        let log_format = match raw.log_format.as_deref().unwrap_or("json") {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            _ => {
                return Err(Error::Settings {
                    origin: origin("log_format"),
                    field: "log_format".to_owned(),
                    what: "expected \"json\" or \"pretty\"".to_owned(),
                });
            }
        };
        // A relative CA path is relative to the home (the settings file's directory).
        let upstream_ca_file = match raw.upstream_ca_file.as_deref() {
            None => None,
            Some("") => {
                return Err(Error::Settings {
                    origin: origin("upstream_ca_file"),
                    field: "upstream_ca_file".to_owned(),
                    what: "empty; remove the setting or name a PEM file".to_owned(),
                });
            }
            Some(path) => Some(match file.parent() {
                Some(home) => home.join(path),
                None => PathBuf::from(path),
            }),
        };
        let require_sandbox = match raw.require_sandbox {
            None => false,
            Some(RawFlag::Bool(flag)) => flag,
            Some(RawFlag::Text(text)) => match text.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(Error::Settings {
                        origin: origin("require_sandbox"),
                        field: "require_sandbox".to_owned(),
                        what: "expected true or false".to_owned(),
                    });
                }
            },
        };
        Ok(Self {
            listen,
            metrics_listen,
            log_format,
            upstream_ca_file,
            require_sandbox,
        })
    }

    /// The client listener (default `127.0.0.1:20128`).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The Prometheus metrics listener (default `127.0.0.1:20129`); `None` when turned off
    /// with `metrics_listen = "off"`.
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics_listen
    }

    /// The log format (default JSON).
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// An extra PEM file of CA certificates trusted for upstream TLS, besides the public
    /// roots (for a private provider; the tests use their own CA).
    pub fn upstream_ca_file(&self) -> Option<&Path> {
        self.upstream_ca_file.as_deref()
    }

    /// Whether krouter must refuse to serve unless its landlock sandbox is fully enforced
    /// (default false: it serves and logs what the kernel could not enforce).
    pub fn require_sandbox(&self) -> bool {
        self.require_sandbox
    }

    /// The settings file text `krouter-admin init` writes.
    pub fn starter_file() -> String {
        format!(
            "# krouter settings: where things are and how to run. No secrets here; no security\n\
             # posture either (that is the signed policy). Each key can be overridden by a\n\
             # KROUTER_<KEY> variable, e.g. KROUTER_LISTEN.\n\
             listen = \"{DEFAULT_LISTEN}\"\n\
             metrics_listen = \"{DEFAULT_METRICS_LISTEN}\"   # Prometheus /metrics; \"off\" for none\n\
             log_format = \"json\"   # or \"pretty\"\n\
             # upstream_ca_file = \"certs/upstream-ca.pem\"   # extra CA for upstream TLS\n\
             # require_sandbox = true   # refuse to serve unless the sandbox is fully enforced\n"
        )
    }
}

/// Where a field's value came from, for messages.
fn origin_of(figment: &Figment, field: &str, file: &Path, text: Option<&str>) -> String {
    match figment.find_metadata(field) {
        Some(meta) if meta.name == VARIABLES => {
            format!("the {PREFIX}{} variable", field.to_ascii_uppercase())
        }
        _ => file_origin(file, text, field),
    }
}

/// `file:line` of `field` in the settings text, when it can be found.
fn file_origin(file: &Path, text: Option<&str>, field: &str) -> String {
    let line = text.and_then(|t| {
        t.lines().position(|l| {
            l.trim_start()
                .strip_prefix(field)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    });
    match line {
        Some(i) => format!("{}:{}", file.display(), i + 1),
        None => file.display().to_string(),
    }
}

const VARIABLES: &str = "KROUTER_* variables";

/// A figment error as a settings error that names the field and never the value.
fn settings_error(error: &figment::Error, file: &Path, text: Option<&str>) -> Error {
    use figment::error::Kind;
    let from_vars = error.metadata.as_ref().is_some_and(|m| m.name == VARIABLES);
    let (field, what) = match &error.kind {
        Kind::UnknownField(name, expected) => (
            name.clone(),
            format!("unknown setting; known settings: {}", expected.join(", ")),
        ),
        Kind::InvalidType(_, expected) => (
            error.path.join("."),
            format!("wrong type: expected {expected}"),
        ),
        Kind::InvalidValue(_, expected) => (
            error.path.join("."),
            format!("invalid value: expected {expected}"),
        ),
        Kind::Message(_) => (
            error.path.join("."),
            "the file is not valid TOML".to_owned(),
        ),
        _ => (error.path.join("."), "invalid setting".to_owned()),
    };
    let origin = if from_vars {
        format!("the {PREFIX}{} variable", field.to_ascii_uppercase())
    } else {
        file_origin(file, text, &field)
    };
    Error::Settings {
        origin,
        field,
        what,
    }
}

// === impl Variables ===

impl Variables {
    fn from_source(source: &dyn Source) -> Self {
        let dict = source
            .with_prefix(PREFIX)
            .into_iter()
            .filter(|(name, _)| !NOT_SETTINGS.contains(name))
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(PREFIX)?.to_ascii_lowercase();
                Some((key, Value::from(value.to_owned())))
            })
            .collect();
        Self(dict)
    }
}

impl Provider for Variables {
    fn metadata(&self) -> Metadata {
        Metadata::named(VARIABLES)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

// === impl RawFlag ===

impl<'de> Deserialize<'de> for RawFlag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = RawFlag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, flag: bool) -> Result<RawFlag, E> {
                Ok(RawFlag::Bool(flag))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawFlag, E> {
                Ok(RawFlag::Text(text.to_owned()))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Pretty => "pretty",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::load::Vars;

    fn load(text: Option<&str>, vars: &[(&str, &str)]) -> Result<Settings, Error> {
        Settings::from_parts(
            Path::new("krouter.toml"),
            text,
            &Vars::from_pairs(vars.iter().copied()),
        )
    }

    #[test]
    fn defaults_file_and_variables_layer_in_that_order() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.listen().to_string(), DEFAULT_LISTEN);
        assert_eq!(s.log_format(), LogFormat::Json);
        let s = load(
            Some("listen = \"0.0.0.0:8080\"\nlog_format = \"pretty\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.listen().to_string(), "0.0.0.0:8080");
        let s = load(
            Some("listen = \"0.0.0.0:8080\"\n"),
            &[("KROUTER_LISTEN", "[::1]:9000"), ("KROUTER_HOME", "/x")],
        )
        .unwrap();
        assert_eq!(s.listen().to_string(), "[::1]:9000");
        let s = load(Some(&Settings::starter_file()), &[]).unwrap();
        assert_eq!(s.listen().to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn bad_settings_name_their_origin_and_field() {
        /// Variables for one case.
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: [(Option<&str>, Pairs, &str); 6] = [
            (
                Some("colour = 1\n"),
                &[],
                "krouter.toml:1: colour: unknown setting",
            ),
            (
                None,
                &[("KROUTER_COLOUR", "x")],
                "the KROUTER_COLOUR variable: colour: unknown setting",
            ),
            (
                Some("\n\nlisten = \"nowhere\"\n"),
                &[],
                "krouter.toml:3: listen: not an address:port",
            ),
            (
                None,
                &[("KROUTER_LISTEN", "nowhere")],
                "the KROUTER_LISTEN variable: listen: not an address",
            ),
            (
                Some("log_format = \"xml\"\n"),
                &[],
                "krouter.toml:1: log_format: expected",
            ),
            (
                Some("listen = [1]\n"),
                &[],
                "krouter.toml:1: listen: wrong type",
            ),
        ];
        for (text, vars, want) in cases {
            let err = load(text, vars).unwrap_err().to_string();
            assert!(err.starts_with(want), "wanted {want:?}, got {err:?}");
        }
    }

    #[test]
    fn require_sandbox_is_a_boolean_in_the_file_and_true_or_false_in_a_variable() {
        assert!(!load(None, &[]).unwrap().require_sandbox());
        assert!(
            load(Some("require_sandbox = true\n"), &[])
                .unwrap()
                .require_sandbox()
        );
        assert!(
            load(None, &[("KROUTER_REQUIRE_SANDBOX", "true")])
                .unwrap()
                .require_sandbox()
        );
        assert!(
            !load(
                Some("require_sandbox = true\n"),
                &[("KROUTER_REQUIRE_SANDBOX", "false")]
            )
            .unwrap()
            .require_sandbox()
        );
        /// Variables for one case.
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: [(Option<&str>, Pairs, &str); 3] = [
            (
                None,
                &[("KROUTER_REQUIRE_SANDBOX", "yes")],
                "the KROUTER_REQUIRE_SANDBOX variable: require_sandbox: expected true or false",
            ),
            (
                Some("require_sandbox = \"on\"\n"),
                &[],
                "krouter.toml:1: require_sandbox: expected true or false",
            ),
            (
                Some("require_sandbox = 1\n"),
                &[],
                "krouter.toml:1: require_sandbox: wrong type: expected true or false",
            ),
        ];
        for (text, vars, want) in cases {
            let err = load(text, vars).unwrap_err().to_string();
            assert!(err.starts_with(want), "wanted {want:?}, got {err:?}");
        }
    }

    #[test]
    fn a_secret_looking_setting_is_refused_without_its_value() {
        let fake: String = std::iter::once("sk-ant-api03-")
            .chain(std::iter::repeat_n("Zx9Qw2", 6))
            .collect();
        let err = load(Some(&format!("log_format = \"{fake}\"\n")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_format: looks like a secret"), "{err}");
        assert!(!err.contains(&fake), "{err}");
    }
}
