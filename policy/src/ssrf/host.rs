//! Host-text analysis for the SSRF guard: every plausible reading of a host as written
//! (numeric readings, percent-decoding, bracketed IPv6) and the rules for host names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ssrf::address::{classify_v4, classify_v6};
use crate::ssrf::{Host, Reach, Refusal, Verdict};

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

/// Classifies a host as written; `depth` bounds nested decodings.
pub(super) fn analyse(host: &str, depth: u8) -> Result<(Host, Reach), Refusal> {
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

// === impl LeadingZero ===

impl LeadingZero {
    const ALL: [Self; 3] = [Self::Octal, Self::Decimal, Self::OctalElseDecimal];
}
