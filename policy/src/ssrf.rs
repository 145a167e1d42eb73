//! SSRF guard: decides whether krouter may connect to an upstream host.
//!
//! The same rules run twice. At validation time, a provider `base_url` in the
//! operator's policy goes through [`parse_base_url`] (and its host through
//! [`classify_host`]); at connect time, the proxy checks every address a host
//! name resolved to with [`classify_ip`]. The module is pure: no I/O, no DNS.
//!
//! The threat is a policy or a DNS answer that steers krouter to a cloud
//! metadata endpoint or another internal-only address, using any spelling a
//! URL parser or a lenient resolver (glibc `inet_aton`, the WHATWG URL parser)
//! might accept. Numeric hosts are decoded under every plausible reading
//! (octal or decimal leading zeros, wrapped overflow) and refused if any
//! reading is refused; anything but canonical dotted decimal or a bracketed
//! IPv6 literal is refused as non-canonical.

use std::error::Error;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

mod address;
mod host;
mod url;

/// What the guard decided about a host or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// krouter may connect; the value says how far the destination reaches.
    Allowed(Reach),
    /// krouter must not connect, for the given reason.
    Refused(Refusal),
}

/// How far an allowed host or address reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// This machine: 127.0.0.0/8, `::1`, `localhost` and `*.localhost`.
    Loopback,
    /// A private network: RFC 1918, 100.64.0.0/10 shared space (Tailscale), IPv6 ULA fc00::/7.
    Private,
    /// Anything else, including any host name not refused by name (its
    /// addresses are checked again with [`classify_ip`] at connect time).
    Public,
}

/// Why a host or an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A cloud metadata endpoint (address or well-known name).
    Metadata,
    /// Link-local: 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// Unspecified or "this network": 0.0.0.0/8 or `::`.
    Unspecified,
    /// The limited broadcast address 255.255.255.255.
    Broadcast,
    /// Multicast: 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// Reserved or special-purpose: 240.0.0.0/4, 192.0.0.0/24, 198.18.0.0/15,
    /// fec0::/10, 100::/64, ORCHID, benchmarking, IPv6 outside 2000::/3.
    Reserved,
    /// Documentation ranges: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// A tunnel or translation address (Teredo, 6to4, NAT64, IPv4-compatible,
    /// 6to4 relay anycast) whose real destination cannot be trusted.
    Tunnel,
    /// A bracketed IPv6 literal with a zone id (`%25eth0`).
    ZoneId,
    /// A host spelled in a non-canonical form (percent-encoding, octal, hex,
    /// short or dotless IPv4, trailing dot on an address, unbracketed IPv6).
    NonCanonical {
        /// The address the spelling decodes to, if it is an address.
        decodes_to: Option<IpAddr>,
    },
    /// A numeric host that is not a valid address: overflow, too many parts, bad digits.
    InvalidAddress,
    /// A host name with characters outside `a-z 0-9 . - _`, empty or overlong
    /// labels, several trailing dots, or non-ASCII text.
    InvalidName,
}

/// The scheme of a base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTP over TLS (default port 443).
    Https,
}

/// The host of a base URL after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An address literal, as the canonical parsed address.
    Ip(IpAddr),
    /// A DNS name, lower-cased, without its trailing dot.
    Name(String),
}

/// A validated provider base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: Scheme,
    host: Host,
    port: u16,
    path: String,
    reach: Reach,
    /// The normalised URL, built once: the proxy joins it to every upstream request path.
    text: String,
}

/// Why a base URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlProblem {
    /// Not an absolute URL with a scheme and `//` authority.
    NotAUrl,
    /// Rejected by the URL parser for another reason.
    Malformed,
    /// Whitespace, a control character, a backslash, or non-ASCII text in the path.
    Character,
    /// A scheme other than `http` or `https`.
    Scheme,
    /// No host in the authority.
    MissingHost,
    /// User info (`user:password@`) in the authority.
    UserInfo,
    /// A query string (`?…`).
    Query,
    /// A fragment (`#…`).
    Fragment,
    /// A port that is not a plain decimal number from 1 to 65535.
    Port,
    /// A `.` or `..` path segment (also percent-encoded).
    Path,
    /// The host is refused.
    Host(Refusal),
}

// === functions ===

/// Classifies an address, e.g. one a host name resolved to at connect time.
///
/// IPv6 addresses that embed an IPv4 address (mapped, compatible, translated,
/// NAT64, 6to4) are judged by the embedded address; tunnel forms that only
/// look like they reach a loopback or private address are refused as
/// [`Refusal::Tunnel`].
pub fn classify_ip(ip: IpAddr) -> Verdict {
    match ip {
        IpAddr::V4(v4) => address::classify_v4(v4),
        IpAddr::V6(v6) => address::classify_v6(v6),
    }
}

/// Classifies a host exactly as written in a URL authority (IPv6 in
/// brackets), before any normalisation.
///
/// Host names that are not refused by name are allowed as
/// [`Reach::Public`] (or [`Reach::Loopback`] for `localhost`); their
/// addresses must be checked with [`classify_ip`] at connect time.
pub fn classify_host(host: &str) -> Verdict {
    match host::analyse(host, 0) {
        Ok((_, reach)) => Verdict::Allowed(reach),
        Err(refusal) => Verdict::Refused(refusal),
    }
}

/// Parses and validates a provider base URL.
///
/// The URL is split with [`http::Uri`], the parser the proxy's upstream
/// client uses, then checked more strictly: `http` or `https`, a host, no
/// user info, query or fragment, a port from 1 to 65535, no dot segments,
/// and a host that [`classify_host`] allows.
pub fn parse_base_url(text: &str) -> Result<BaseUrl, UrlProblem> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '\\';
    if text.contains(bad) {
        return Err(UrlProblem::Character);
    }
    // http::Uri silently drops a fragment.
    if text.contains('#') {
        return Err(UrlProblem::Fragment);
    }
    let Ok(uri) = text.parse::<http::Uri>() else {
        return Err(url::diagnose(text));
    };
    let scheme = match uri.scheme_str() {
        None => return Err(UrlProblem::NotAUrl),
        Some(name) => Scheme::from_name(name).ok_or(UrlProblem::Scheme)?,
    };
    let authority = uri.authority().ok_or(UrlProblem::NotAUrl)?.as_str();
    if authority.contains('@') {
        return Err(UrlProblem::UserInfo);
    }
    if uri.query().is_some() {
        return Err(UrlProblem::Query);
    }
    let raw_host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(UrlProblem::MissingHost)?;
    // http::Uri ignores out-of-range or signed ports and text after `]`.
    let rest = authority
        .strip_prefix(raw_host)
        .ok_or(UrlProblem::Malformed)?;
    let port = url::parse_port(rest, scheme)?;
    let (host, reach) = host::analyse(raw_host, 0).map_err(UrlProblem::Host)?;
    let path = url::normalise_path(uri.path())?;
    let mut text = format!("{scheme}://{host}");
    if port != scheme.default_port() {
        text.push(':');
        text.push_str(&port.to_string());
    }
    text.push_str(&path);
    Ok(BaseUrl {
        scheme,
        host,
        port,
        path,
        reach,
        text,
    })
}

// === impl Refusal ===

impl Refusal {
    /// Lower is more severe: metadata, link-local, other address classes, then spelling problems.
    const fn rank(self) -> u8 {
        match self {
            Self::Metadata => 0,
            Self::LinkLocal => 1,
            Self::ZoneId => 3,
            Self::NonCanonical { .. } => 4,
            Self::InvalidAddress => 5,
            Self::InvalidName => 6,
            _ => 2,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Metadata => f.write_str("cloud metadata endpoint"),
            Self::LinkLocal => f.write_str("link-local address (169.254.0.0/16 or fe80::/10)"),
            Self::Unspecified => {
                f.write_str("unspecified or \"this network\" address (0.0.0.0/8 or ::)")
            }
            Self::Broadcast => f.write_str("broadcast address (255.255.255.255)"),
            Self::Multicast => f.write_str("multicast address (224.0.0.0/4 or ff00::/8)"),
            Self::Reserved => f.write_str("reserved or special-purpose address, not a provider"),
            Self::Documentation => {
                f.write_str("documentation-only address (e.g. 192.0.2.0/24, 2001:db8::/32)")
            }
            Self::Tunnel => f.write_str(
                "tunnel or translation address (teredo, 6to4, nat64, ipv4-compatible) whose real \
                 destination cannot be trusted; write the destination address itself",
            ),
            Self::ZoneId => f.write_str("ipv6 zone id (%interface) is not allowed in a host"),
            Self::NonCanonical {
                decodes_to: Some(IpAddr::V4(ip)),
            } => write!(
                f,
                "address spelled in a non-canonical form (decodes to {ip}); write it as dotted decimal"
            ),
            Self::NonCanonical {
                decodes_to: Some(IpAddr::V6(ip)),
            } => write!(
                f,
                "address spelled in a non-canonical form (decodes to {ip}); write it as [{ip}]"
            ),
            Self::NonCanonical { decodes_to: None } => f.write_str(
                "host name spelled with percent-encoding; write it in plain lower-case ascii",
            ),
            Self::InvalidAddress => f.write_str(
                "numeric host is not a valid ip address (overflow, too many parts or bad digits)",
            ),
            Self::InvalidName => f.write_str(
                "invalid host name: use only a-z, 0-9, '.', '-' and '_' with non-empty labels; \
                 write non-ascii names in their xn-- (punycode) form",
            ),
        }
    }
}

impl Error for Refusal {}

// === impl Reach ===

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback",
            Self::Private => "private network",
            Self::Public => "public",
        })
    }
}

// === impl Scheme ===

impl Scheme {
    /// The scheme's default port: 80 or 443.
    pub const fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// The scheme as written in a URL: `http` or `https`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Http, Self::Https]
            .into_iter()
            .find(|s| name.eq_ignore_ascii_case(s.as_str()))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Host ===

impl Host {
    /// The address, if the host is an address literal.
    pub const fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ip(ip) => Some(*ip),
            Self::Name(_) => None,
        }
    }
}

impl fmt::Display for Host {
    /// As written in a URL authority: IPv6 in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

// === impl BaseUrl ===

impl BaseUrl {
    /// The normalised URL (as [`Display`](fmt::Display) writes it); the port is omitted when
    /// it is the scheme's default.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The scheme.
    pub const fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The normalised host.
    pub const fn host(&self) -> &Host {
        &self.host
    }

    /// The explicit port, or the scheme's default.
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The path without trailing slashes; `""` for the root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// How far the host reaches (names other than `localhost` are [`Reach::Public`]).
    pub const fn reach(&self) -> Reach {
        self.reach
    }
}

impl fmt::Display for BaseUrl {
    /// The normalised URL; the port is omitted when it is the scheme's default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for BaseUrl {
    type Err = UrlProblem;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_base_url(text)
    }
}

// === impl UrlProblem ===

impl fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAUrl => {
                f.write_str("not an absolute url; write it as https://host[:port][/path]")
            }
            Self::Malformed => f.write_str("malformed url; write it as https://host[:port][/path]"),
            Self::Character => f.write_str(
                "url contains whitespace, a control character, a backslash or non-ascii text; \
                 percent-encode the path",
            ),
            Self::Scheme => f.write_str("only http and https urls are allowed"),
            Self::MissingHost => f.write_str("url has no host"),
            Self::UserInfo => f.write_str(
                "user info (user:password@) is not allowed in a base url; \
                 store credentials with krouter-admin credentials set",
            ),
            Self::Query => f.write_str("a base url may not have a query string (?...); remove it"),
            Self::Fragment => f.write_str("a base url may not have a fragment (#...); remove it"),
            Self::Port => f.write_str(
                "port must be a decimal number from 1 to 65535 without sign or leading zeros; \
                 leave it out for the scheme default",
            ),
            Self::Path => {
                f.write_str("path may not contain . or .. segments; write the path they resolve to")
            }
            Self::Host(refusal) => write!(f, "host refused: {refusal}"),
        }
    }
}

impl Error for UrlProblem {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Host(refusal) => Some(refusal),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
