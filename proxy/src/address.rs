//! Who the client is, by address. The socket peer, unless the peer is one of the policy's
//! trusted proxies: only then is `X-Forwarded-For` read, from the right, skipping trusted
//! hops, so a client cannot choose its own address by sending the header itself. Lockout
//! and rate limits count a [`ClientKey`]: the IPv4 address, or the IPv6 /64 (one host
//! usually holds a whole /64, so counting single IPv6 addresses would count nothing).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;
use krouter_policy::canonical;

/// The client address to decide on: the peer, or what trusted proxies say the peer was.
pub fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // Every hop appends; read from the nearest (rightmost) entry back, past trusted proxies.
    // A malformed entry stops the walk: the last trusted hop is then the client.
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(hop) = parse_hop(entry) else { break };
        client = canonical(hop);
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

/// What lockout and rate limits count: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 client.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 client.
    V6(u64),
}

// === impl ClientKey ===

impl ClientKey {
    /// The key of `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => Self::V6(u64::try_from(u128::from(v6) >> 64).unwrap_or(0)),
        }
    }

    /// Parses the text [`Display`](fmt::Display) writes (as stored in the state database).
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(prefix) = text.strip_suffix("/64") {
            let ip: Ipv6Addr = prefix.parse().ok()?;
            return Some(Self::of(IpAddr::V6(ip)));
        }
        match text.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) => Some(Self::V4(v4.octets())),
            IpAddr::V6(_) => None,
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(octets) => write!(f, "{}", IpAddr::from(*octets)),
            Self::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

/// Whether `ip` (IPv4-mapped addresses taken as IPv4) is one of the `trusted` proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// One `X-Forwarded-For` entry: an address, perhaps `[v6]` or with a port, as proxies write.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let cases: &[(&str, &[&str], &str)] = &[
            // An untrusted peer: the header is ignored, whatever it says.
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            // A trusted peer: the nearest untrusted hop.
            ("10.0.0.2", &["198.51.100.1"], "198.51.100.1"),
            // A client that sends its own header cannot hide behind it.
            ("10.0.0.2", &["1.2.3.4, 198.51.100.1"], "198.51.100.1"),
            // Trusted hops are skipped, across repeated headers too.
            ("10.0.0.2", &["198.51.100.1", "10.0.0.7"], "198.51.100.1"),
            // No header from a trusted proxy: the proxy itself.
            ("10.0.0.2", &[], "10.0.0.2"),
            // Garbage nearest the peer: the walk stops at the last trusted hop.
            ("10.0.0.2", &["198.51.100.1, not-an-ip"], "10.0.0.2"),
            // Ports and brackets as some proxies write them.
            ("10.0.0.2", &["[2001:db8::1]:443"], "2001:db8::1"),
            ("10.0.0.2", &["198.51.100.1:5000"], "198.51.100.1"),
            // Mapped addresses are IPv4 on both sides.
            ("::ffff:10.0.0.2", &["::ffff:198.51.100.1"], "198.51.100.1"),
        ];
        for (peer, header, want) in cases {
            assert_eq!(
                client(ip(peer), &xff(header), &trusted),
                ip(want),
                "{peer} {header:?}"
            );
        }
    }

    #[test]
    fn ipv6_clients_count_per_64_and_keys_round_trip_as_text() {
        let a = ClientKey::of(ip("2001:db8:1:2::1"));
        let b = ClientKey::of(ip("2001:db8:1:2:ffff::9"));
        let c = ClientKey::of(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.1")).to_string(),
            "192.0.2.1"
        );
        for key in [a, c, ClientKey::of(ip("192.0.2.1"))] {
            assert_eq!(ClientKey::parse(&key.to_string()), Some(key));
        }
        assert_eq!(ClientKey::parse("2001:db8::1"), None);
        assert_eq!(ClientKey::parse("nonsense"), None);
    }
}
