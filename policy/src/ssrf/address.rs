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
/// AWS IMDS and its DNS over IPv6 (Nitro).
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
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
