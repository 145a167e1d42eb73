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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

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

/// Addresses of cloud metadata services (AWS, GCP, Azure, ECS, Alibaba, Oracle).
const METADATA_V4: [Ipv4Addr; 7] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(169, 254, 0, 23),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(192, 0, 0, 192),
];
/// AWS IMDS and its DNS over IPv6 (Nitro).
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
];
/// Well-known metadata host names (plus `metadata.*.internal`).
const METADATA_NAMES: [&str; 8] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.azure.internal",
    "metadata.packet.net",
];
/// Longest host text examined; anything longer is refused as a name.
const MAX_HOST_LEN: usize = 1024;
/// How many nested decodings (percent-encoding, truncation) are followed.
const MAX_DEPTH: u8 = 8;

/// How a part with a leading zero is read; parsers disagree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LeadingZero {
    /// As octal (WHATWG, `inet_aton`).
    Octal,
    /// As decimal (many hand-written parsers).
    Decimal,
    /// As octal if the digits are octal, else as decimal.
    OctalElseDecimal,
}

/// One part of a numeric host under one reading.
#[derive(Clone, Copy)]
struct Part {
    /// The value, if it fits in 32 bits.
    exact: Option<u32>,
    /// The value modulo 2^32.
    wrapped: u32,
}

/// The readings of a numeric host.
#[derive(Default)]
struct Readings {
    /// The WHATWG / `inet_aton` reading, if valid.
    standard: Option<Ipv4Addr>,
    /// Every distinct address any plausible reading yields.
    all: Vec<Ipv4Addr>,
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
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Classifies a host exactly as written in a URL authority (IPv6 in
/// brackets), before any normalisation.
///
/// Host names that are not refused by name are allowed as
/// [`Reach::Public`] (or [`Reach::Loopback`] for `localhost`); their
/// addresses must be checked with [`classify_ip`] at connect time.
pub fn classify_host(host: &str) -> Verdict {
    match analyse(host, 0) {
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
        return Err(diagnose(text));
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
    let port = parse_port(rest, scheme)?;
    let (host, reach) = analyse(raw_host, 0).map_err(UrlProblem::Host)?;
    let path = normalise_path(uri.path())?;
    Ok(BaseUrl {
        scheme,
        host,
        port,
        path,
        reach,
    })
}

/// The best explanation for a URL that `http::Uri` rejected.
fn diagnose(text: &str) -> UrlProblem {
    let Some((scheme, rest)) = text.split_once("://") else {
        return UrlProblem::NotAUrl;
    };
    if scheme.is_empty() {
        return UrlProblem::NotAUrl;
    }
    if Scheme::from_name(scheme).is_none() {
        return UrlProblem::Scheme;
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() {
        return UrlProblem::MissingHost;
    }
    if authority.contains('@') {
        return UrlProblem::UserInfo;
    }
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .and_then(|end| authority.get(..=end))
            .unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    match analyse(host, 0) {
        Err(refusal) => UrlProblem::Host(refusal),
        Ok(_) => UrlProblem::Malformed,
    }
}

/// The port after the host in the authority: empty or `:` and plain digits.
fn parse_port(rest: &str, scheme: Scheme) -> Result<u16, UrlProblem> {
    if rest.is_empty() {
        return Ok(scheme.default_port());
    }
    let digits = rest.strip_prefix(':').ok_or(UrlProblem::Malformed)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlProblem::Port);
    }
    digits.parse::<u16>().map_err(|_| UrlProblem::Port)
}

/// Refuses non-ASCII text and dot segments; strips trailing slashes.
fn normalise_path(path: &str) -> Result<String, UrlProblem> {
    if !path.is_ascii() {
        return Err(UrlProblem::Character);
    }
    let dot_segment = |segment: &str| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    };
    if path.split('/').any(dot_segment) {
        return Err(UrlProblem::Path);
    }
    Ok(path.trim_end_matches('/').to_owned())
}

/// Classifies a host as written; `depth` bounds nested decodings.
fn analyse(host: &str, depth: u8) -> Result<(Host, Reach), Refusal> {
    if host.is_empty() || host.len() > MAX_HOST_LEN || depth > MAX_DEPTH {
        return Err(Refusal::InvalidName);
    }
    // C resolvers stop at NUL and inet_aton accepts trailing whitespace.
    if let Some(cut) = host.find(|c: char| c == '\0' || c.is_whitespace()) {
        return Err(prefix_refusal(host, cut, depth, Refusal::InvalidName));
    }
    if let Some(inner) = host.strip_prefix('[') {
        return bracketed(inner);
    }
    if let Some(cut) = host.find('%') {
        let Some(decoded) = percent_decode(host) else {
            return Err(prefix_refusal(host, cut, depth, Refusal::InvalidName));
        };
        return match analyse(&decoded, depth.saturating_add(1)) {
            Ok((decoded, _)) => Err(Refusal::NonCanonical {
                decodes_to: decoded.ip(),
            }),
            Err(refusal) => Err(refusal),
        };
    }
    if let Some(cut) = host.find(':') {
        return Err(match host.parse::<Ipv6Addr>() {
            Ok(ip) => match classify_v6(ip) {
                Verdict::Refused(refusal) => refusal,
                Verdict::Allowed(_) => Refusal::NonCanonical {
                    decodes_to: Some(IpAddr::V6(ip)),
                },
            },
            Err(_) => prefix_refusal(host, cut, depth, Refusal::InvalidName),
        });
    }
    let lower = host.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('.');
    let trailing_dots = lower.len().saturating_sub(trimmed.len());
    if is_numeric_label(trimmed.rsplit('.').next().unwrap_or_default()) {
        numeric_host(trimmed, trailing_dots)
    } else {
        name_host(trimmed, trailing_dots)
    }
}

/// The refusal of the text before `cut` if it is an address class, else `default`.
fn prefix_refusal(host: &str, cut: usize, depth: u8, default: Refusal) -> Refusal {
    match analyse(host.get(..cut).unwrap_or_default(), depth.saturating_add(1)) {
        Err(refusal) if refusal.rank() < Refusal::ZoneId.rank() => refusal,
        _ => default,
    }
}

/// A bracketed IPv6 literal; `inner` follows the `[`.
fn bracketed(inner: &str) -> Result<(Host, Reach), Refusal> {
    let inner = inner.strip_suffix(']').ok_or(Refusal::InvalidAddress)?;
    let (text, zone) = match inner.split_once('%') {
        Some((text, zone)) => (text, Some(zone)),
        None => (inner, None),
    };
    let Ok(ip) = text.parse::<Ipv6Addr>() else {
        return Err(lenient_v6(text).unwrap_or(Refusal::InvalidAddress));
    };
    match classify_v6(ip) {
        Verdict::Refused(refusal) => Err(refusal),
        Verdict::Allowed(_) if zone.is_some() => Err(Refusal::ZoneId),
        Verdict::Allowed(reach) => Ok((Host::Ip(IpAddr::V6(ip)), reach)),
    }
}

/// The best refusal of a bracketed literal whose dotted IPv4 tail only a
/// lenient parser accepts (e.g. `::ffff:169.254.169.0254`).
fn lenient_v6(text: &str) -> Option<Refusal> {
    let (head, tail) = match text.rsplit_once(':') {
        Some((head, tail)) => (Some(head), tail),
        None => (None, text),
    };
    let readings = ipv4_readings(&tail.to_ascii_lowercase());
    readings.all.into_iter().fold(None, |best, v4| {
        let verdict = match head {
            None => classify_v4(v4),
            Some(head) => match format!("{head}:{v4}").parse::<Ipv6Addr>() {
                Ok(ip) => classify_v6(ip),
                Err(_) => return best,
            },
        };
        worse(best, verdict)
    })
}

/// A host whose last label is numeric: an IPv4 literal, canonical or not.
fn numeric_host(text: &str, trailing_dots: usize) -> Result<(Host, Reach), Refusal> {
    let readings = ipv4_readings(text);
    let refused = readings
        .all
        .iter()
        .fold(None, |best, ip| worse(best, classify_v4(*ip)));
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    let ip = readings.standard.ok_or(Refusal::InvalidAddress)?;
    let canonical = trailing_dots == 0
        && text.split('.').count() == 4
        && text.split('.').all(|part| {
            part.parse::<u8>().is_ok()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'))
        });
    match classify_v4(ip) {
        Verdict::Refused(refusal) => Err(refusal),
        Verdict::Allowed(reach) if canonical => Ok((Host::Ip(IpAddr::V4(ip)), reach)),
        Verdict::Allowed(_) => Err(Refusal::NonCanonical {
            decodes_to: Some(IpAddr::V4(ip)),
        }),
    }
}

/// A DNS name (already lower-cased, trailing dots removed).
fn name_host(name: &str, trailing_dots: usize) -> Result<(Host, Reach), Refusal> {
    if METADATA_NAMES.contains(&name)
        || (name.starts_with("metadata.") && name.ends_with(".internal"))
    {
        return Err(Refusal::Metadata);
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if trailing_dots > 1 || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(Refusal::InvalidName);
    }
    let reach = if name == "localhost" || name.ends_with(".localhost") {
        Reach::Loopback
    } else {
        Reach::Public
    };
    Ok((Host::Name(name.to_owned()), reach))
}

/// Whether a label makes the host an IPv4 literal (WHATWG "ends in a number").
fn is_numeric_label(label: &str) -> bool {
    match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Every plausible reading of a lower-cased numeric host without trailing dots.
fn ipv4_readings(text: &str) -> Readings {
    let mut readings = Readings::default();
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return readings;
    }
    for mode in LeadingZero::ALL {
        let Some(values) = parts
            .iter()
            .map(|part| parse_part(part, mode))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let Some((last, init)) = values.split_last() else {
            continue;
        };
        let last_mask = match init.len() {
            0 => u32::MAX,
            1 => 0x00ff_ffff,
            2 => 0xffff,
            _ => 0xff,
        };
        let shifted = init.iter().zip([24_u32, 16, 8]);
        // Strict: every part fits its field (WHATWG, inet_aton).
        let strict = shifted.clone().try_fold(0_u32, |acc, (part, shift)| {
            part.exact.filter(|v| *v <= 0xff).map(|v| acc | v << shift)
        });
        let strict = strict
            .zip(last.exact.filter(|v| *v <= last_mask))
            .map(|(acc, v)| acc | v);
        // Masked: each part truncated to its field.
        let masked = shifted
            .clone()
            .fold(last.wrapped & last_mask, |acc, (part, shift)| {
                acc | (part.wrapped & 0xff) << shift
            });
        // Carried: parts added without range checks, modulo 2^32.
        let carried = shifted.fold(last.wrapped, |acc, (part, shift)| {
            acc.wrapping_add(part.wrapped.wrapping_shl(shift))
        });
        if mode == LeadingZero::Octal {
            readings.standard = strict.map(Ipv4Addr::from_bits);
        }
        for bits in strict.into_iter().chain([masked, carried]) {
            let ip = Ipv4Addr::from_bits(bits);
            if !readings.all.contains(&ip) {
                readings.all.push(ip);
            }
        }
    }
    readings
}

/// One part of a numeric host: decimal, `0x` hex (digits may be empty) or leading-zero.
fn parse_part(part: &str, mode: LeadingZero) -> Option<Part> {
    let octal_digits = part.strip_prefix('0').filter(|rest| !rest.is_empty());
    let (digits, radix) = match (part.strip_prefix("0x"), octal_digits) {
        (Some(hex), _) => (hex, 16),
        (None, Some(oct)) if mode == LeadingZero::Octal => (oct, 8),
        (None, Some(oct))
            if mode == LeadingZero::OctalElseDecimal
                && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) =>
        {
            (oct, 8)
        }
        _ if part.is_empty() => return None,
        _ => (part, 10),
    };
    let zero = Part {
        exact: Some(0),
        wrapped: 0,
    };
    digits.chars().try_fold(zero, |acc, c| {
        let digit = c.to_digit(radix)?;
        let exact = acc
            .exact
            .and_then(|v| v.checked_mul(radix)?.checked_add(digit));
        let wrapped = acc.wrapped.wrapping_mul(radix).wrapping_add(digit);
        Some(Part { exact, wrapped })
    })
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    let hex = |b: Option<u8>| {
        b.and_then(|b| char::from(b).to_digit(16))
            .and_then(|d| u8::try_from(d).ok())
    };
    while let Some(b) = bytes.next() {
        if b == b'%' {
            out.push(hex(bytes.next())? << 4 | hex(bytes.next())?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The more severe of a running refusal and a verdict's refusal.
fn worse(best: Option<Refusal>, verdict: Verdict) -> Option<Refusal> {
    match (best, verdict) {
        (Some(best), Verdict::Refused(new)) if new.rank() < best.rank() => Some(new),
        (None, Verdict::Refused(new)) => Some(new),
        (best, _) => best,
    }
}

fn classify_v4(ip: Ipv4Addr) -> Verdict {
    use Refusal as R;
    let refusal = match ip.octets() {
        _ if METADATA_V4.contains(&ip) => R::Metadata,
        [0, ..] => R::Unspecified,
        [127, ..] => return Verdict::Allowed(Reach::Loopback),
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] | [100, 64..=127, ..] => {
            return Verdict::Allowed(Reach::Private);
        }
        [169, 254, ..] => R::LinkLocal,
        [255, 255, 255, 255] => R::Broadcast,
        [240..=255, ..] => R::Reserved,
        [224..=239, ..] => R::Multicast,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => R::Documentation,
        [192, 0, 0, _] | [198, 18..=19, ..] => R::Reserved,
        [192, 88, 99, _] => R::Tunnel,
        _ => return Verdict::Allowed(Reach::Public),
    };
    Verdict::Refused(refusal)
}

fn classify_v6(ip: Ipv6Addr) -> Verdict {
    use Refusal as R;
    if METADATA_V6.contains(&ip) {
        return Verdict::Refused(R::Metadata);
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from_bits(u32::from(hi) << 16 | u32::from(lo));
    // Translated forms reach the embedded address, or something else entirely.
    let via = |v4: Ipv4Addr| match classify_v4(v4) {
        Verdict::Allowed(Reach::Public) => Verdict::Allowed(Reach::Public),
        Verdict::Allowed(_) => Verdict::Refused(R::Tunnel),
        refused @ Verdict::Refused(_) => refused,
    };
    let refusal = match ip.segments() {
        [0, 0, 0, 0, 0, 0, 0, 0] => R::Unspecified,
        [0, 0, 0, 0, 0, 0, 0, 1] => return Verdict::Allowed(Reach::Loopback),
        // IPv4-compatible (deprecated): never trusted.
        [0, 0, 0, 0, 0, 0, hi, lo] => match classify_v4(embedded(hi, lo)) {
            Verdict::Refused(refusal) => refusal,
            Verdict::Allowed(_) => R::Tunnel,
        },
        [0, 0, 0, 0, 0xffff, 0, hi, lo]
        | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo]
        | [0x64, 0xff9b, 1, .., hi, lo] => {
            return via(embedded(hi, lo));
        }
        [0x2002, hi, lo, ..] => return via(embedded(hi, lo)),
        [0x2001, 0, ..] => R::Tunnel,
        [0x100, 0, 0, 0, ..] | [0x2001, 0x10..=0x2f, ..] | [0x2001, 2, 0, ..] => R::Reserved,
        [0x2001, 0xdb8, ..] | [0x3fff, 0..=0xfff, ..] => R::Documentation,
        [0xfc00..=0xfdff, ..] => return Verdict::Allowed(Reach::Private),
        [0xfe80..=0xfebf, ..] => R::LinkLocal,
        [0xfec0..=0xfeff, ..] => R::Reserved,
        [0xff00..=0xffff, ..] => R::Multicast,
        [0x2000..=0x3fff, ..] => return Verdict::Allowed(Reach::Public),
        _ => R::Reserved,
    };
    Verdict::Refused(refusal)
}

// === impl LeadingZero ===

impl LeadingZero {
    const ALL: [Self; 3] = [Self::Octal, Self::Decimal, Self::OctalElseDecimal];
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
        write!(f, "{}://{}", self.scheme, self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path)
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
