//! Address classification for the SSRF guard: which IPv4 and IPv6 addresses krouter may
//! connect to, including the cloud metadata addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ssrf::{Reach, Refusal, Verdict};

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
/// Metadata services over IPv6: AWS IMDS and EKS Pod Identity (Nitro), GCP, Scaleway.
const METADATA_V6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42),
];

// === functions ===

pub(super) fn classify_v4(ip: Ipv4Addr) -> Verdict {
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

pub(super) fn classify_v6(ip: Ipv6Addr) -> Verdict {
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
        [0, 0, 0, 0, 0xffff, 0, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            return via(embedded(hi, lo));
        }
        // Local-use NAT64 (RFC 8215): the prefix length, and so where the IPv4 address sits,
        // is the network's choice. Every RFC 6052 layout is read; the worst refusal wins, and
        // even an embedded public address is refused since it is not what it appears to be.
        [0x64, 0xff9b, 1, ..] => local_nat64(ip),
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

/// Why a local-use NAT64 address is refused. The /96 layout's embedded address is judged
/// as usual; the other RFC 6052 layouts (/48, /56, /64) only add a metadata or link-local
/// finding, since reading a layout the network does not use yields arbitrary addresses.
/// Anything else is a tunnel: it does not reach what it appears to.
fn local_nat64(ip: Ipv6Addr) -> Refusal {
    let bits = ip.to_bits();
    let take = |start: u32, len: u32| {
        let mask = (1u128 << len) - 1;
        u32::try_from((bits >> (128 - start - len)) & mask).unwrap_or(0)
    };
    let refused = |v4: u32| match classify_v4(Ipv4Addr::from_bits(v4)) {
        Verdict::Refused(refusal) => Some(refusal),
        Verdict::Allowed(_) => None,
    };
    if let Some(refusal) = refused(take(96, 32)) {
        return refusal;
    }
    // Bits 64..72 are the reserved "u" octet in every layout.
    [
        take(48, 16) << 16 | take(72, 16),
        take(56, 8) << 24 | take(72, 24),
        take(72, 32),
    ]
    .into_iter()
    .filter_map(refused)
    .find(|r| matches!(r, Refusal::Metadata | Refusal::LinkLocal))
    .unwrap_or(Refusal::Tunnel)
}
