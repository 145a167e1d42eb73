use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use proptest::prelude::*;

use Reach::{Loopback, Private, Public};
use Refusal as R;

fn refused(host: &str) -> Refusal {
    match classify_host(host) {
        Verdict::Refused(refusal) => refusal,
        Verdict::Allowed(reach) => panic!("{host:?} allowed as {reach:?}"),
    }
}

fn v4(text: &str) -> Option<IpAddr> {
    Some(IpAddr::V4(text.parse().unwrap()))
}

// === classify_host: refused spellings ===

#[test]
fn metadata_spellings_are_refused_as_metadata() {
    let hosts = [
        "169.254.169.254",
        "0xA9FEA9FE",
        "0xa9fea9fe",
        "2852039166",
        "0251.0376.0251.0376",
        "169.254.43518",
        "169.16689662",
        "0xa9.0xfe.0xa9.0xfe",
        "0XA9.0XFE.0XA9.0XFE",
        "169.254.169.254.",
        "169.254.169.254..",
        "%31%36%39.254.169.254",
        "%2531%36%39.254.169.254",
        "169.254.169.254%00.example.com",
        "169.254.169.254 extra",
        "169.254.169.254:80",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[::FFFF:A9FE:A9FE]",
        "[0:0:0:0:0:ffff:a9fe:a9fe]",
        "[64:ff9b::a9fe:a9fe]",
        "[64:ff9b::169.254.169.254]",
        "[64:ff9b:1::a9fe:a9fe]",
        "[64:ff9b:1:a9fe:a9:fe00:808:808]",
        "[fd20:ce::254]",
        "[fd00:42::42]",
        "[2002:a9fe:a9fe::]",
        "[2002:a9fe:a9fe::1]",
        "[::169.254.169.254]",
        "[::ffff:0:a9fe:a9fe]",
        "[::ffff:169.254.169.0254]",
        "[169.254.169.254]",
        "::ffff:169.254.169.254",
        "[fd00:ec2::254]",
        "[fd00:ec2::23]",
        "[fd00:ec2::254%25eth0]",
        "7147006462",       // 2^32 + 2852039166
        "0x1a9fea9fe",      // wraps mod 2^32
        "169.254.169.510",  // 510 & 0xff == 254
        "169.254.168.510",  // carries into 169.254.169.254
        "169.254.169.0254", // octal 172, decimal 254
        "0251.254.169.254", // octal first part, decimal rest
        "169.254.0xa9.0376",
        "169.254.170.2",
        "169.254.170.23",
        "169.254.0.23",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
        "0x64.0x64.0x64.0xc8",
        "METADATA.GOOGLE.INTERNAL.",
        "metadata.google.internal",
        "metadata.google.internal..",
        "Metadata",
        "metadata.",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.azure.internal",
        "metadata.packet.net",
        "metadata.anything.internal",
        "%6detadata.google.internal",
        "metadata.google.internal%00",
    ];
    for host in hosts {
        assert_eq!(classify_host(host), Verdict::Refused(R::Metadata), "{host}");
    }
}

#[test]
fn refused_classes_in_several_spellings() {
    let table: &[(R, &[&str])] = &[
        (
            R::LinkLocal,
            &[
                "169.254.1.1",
                "0xa9fe0101",
                "2851995905",
                "0251.0376.1.1",
                "169.254.257",
                "[fe80::1]",
                "[FE80::1]",
                "[fe80::1%25eth0]",
                "[fe80::1%eth0]",
                "[febf::1]",
                "[::ffff:169.254.1.1]",
                "[2002:a9fe:101::]",
            ],
        ),
        (
            R::Unspecified,
            &[
                "0.0.0.0",
                "0",
                "0x",
                "0.0",
                "00",
                "0.1.2.3",
                "[::]",
                "[::ffff:0.0.0.0]",
                "4294967296",
            ],
        ),
        (
            R::Broadcast,
            &[
                "255.255.255.255",
                "0xffffffff",
                "4294967295",
                "0377.0377.0377.0377",
                "[::ffff:ffff:ffff]",
            ],
        ),
        (
            R::Multicast,
            &[
                "224.0.0.1",
                "239.255.255.250",
                "0xe0000001",
                "[ff02::1]",
                "[ff05::1:3]",
                "[64:ff9b::e000:1]",
            ],
        ),
        (
            R::Reserved,
            &[
                "240.0.0.1",
                "254.1.2.3",
                "192.0.0.8",
                "198.18.0.1",
                "198.19.255.254",
                "[fec0::1]",
                "[100::1]",
                "[2001:10::1]",
                "[2001:20::1]",
                "[2001:2::1]",
                "[4000::1]",
                "[1::1]",
            ],
        ),
        (
            R::Documentation,
            &[
                "192.0.2.1",
                "198.51.100.7",
                "203.0.113.9",
                "0xc0000201",
                "[2001:db8::1]",
                "[3fff::1]",
                "[3fff:fff::1]",
            ],
        ),
        (
            R::Tunnel,
            &[
                "192.88.99.1",
                "[2001::1]",
                "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
                "[2002:7f00:1::]",
                "[2002:a00:1::]",
                "[64:ff9b::127.0.0.1]",
                "[64:ff9b::10.0.0.1]",
                "[64:ff9b:1::c0a8:101]",
                "[::127.0.0.1]",
                "[::8.8.8.8]",
                "[::ffff:0:127.0.0.1]",
            ],
        ),
        (
            R::ZoneId,
            &["[fd12::1%25eth0]", "[::1%25lo]", "[2606:4700::1%eth0]"],
        ),
        (
            R::InvalidAddress,
            &[
                "1.2.3.4.5",
                "256.256.256.256.256",
                "1..2.3",
                "08.0.0.1.2",
                "0xg.1",
                "foo.1",
                "99999999999999999999",
                "[::1",
                "[::g]",
                "[v1.x]",
                "[]",
                "[::1]:80",
            ],
        ),
        (
            R::InvalidName,
            &[
                "",
                ".",
                "..",
                "a..b",
                ".a",
                "a b",
                "ex_ample!.com",
                "bücher.de",
                "host..",
                "ho%st",
                "ho%zz",
                "%ff",
                "a\\b",
                "host:80",
            ],
        ),
    ];
    for (expected, hosts) in table {
        for host in *hosts {
            assert_eq!(refused(host), *expected, "{host}");
        }
    }
}

#[test]
fn non_canonical_spellings_name_what_they_decode_to() {
    let table = [
        ("0x7f.1", v4("127.0.0.1")),
        ("2130706433", v4("127.0.0.1")),
        ("127.000.000.001", v4("127.0.0.1")),
        ("127.1", v4("127.0.0.1")),
        ("127.0.0.1.", v4("127.0.0.1")),
        ("0x0a.0.0.5", v4("10.0.0.5")),
        ("%31%30.0.0.5", v4("10.0.0.5")),
        ("0xC0A80101", v4("192.168.1.1")),
        ("010.0.0.1", v4("8.0.0.1")), // octal 8 and decimal 10 are both allowed
        ("089.0.0.1", None),          // no valid standard reading: InvalidAddress
        ("8.8.8.08", None),
        ("::1", Some(IpAddr::V6(Ipv6Addr::LOCALHOST))),
        ("%5B::1%5D", Some(IpAddr::V6(Ipv6Addr::LOCALHOST))),
        ("%61pi.openai.com", None),
    ];
    for (host, decodes_to) in table {
        let expected = if host.starts_with("089") || host.starts_with("8.8") {
            R::InvalidAddress
        } else {
            R::NonCanonical { decodes_to }
        };
        assert_eq!(refused(host), expected, "{host}");
    }
}

#[test]
fn allowed_hosts() {
    let table = [
        ("127.0.0.1", Loopback),
        ("127.5.6.7", Loopback),
        ("[::1]", Loopback),
        ("[0:0:0:0:0:0:0:1]", Loopback),
        ("[::ffff:127.0.0.1]", Loopback),
        ("localhost", Loopback),
        ("LOCALHOST.", Loopback),
        ("foo.localhost", Loopback),
        ("10.0.0.5", Private),
        ("192.168.1.10", Private),
        ("172.16.0.1", Private),
        ("172.31.255.255", Private),
        ("100.101.102.103", Private),
        ("100.64.0.1", Private),
        ("[fd12:3456::1]", Private),
        ("[fc00::1]", Private),
        ("api.openai.com", Public),
        ("API.OpenAI.com.", Public),
        ("my_host.example", Public),
        ("xn--bcher-kva.de", Public),
        ("0b101", Public),
        ("1.2.3.4x", Public),
        ("8.8.8.8", Public),
        ("0.0.0.0.nip.io", Public),
        ("172.32.0.1", Public),
        ("100.128.0.1", Public),
        ("[2606:4700:4700::1111]", Public),
        ("[64:ff9b::808:808]", Public),
        ("[2002:808:808::1]", Public),
        ("[::ffff:8.8.8.8]", Public),
    ];
    for (host, reach) in table {
        assert_eq!(classify_host(host), Verdict::Allowed(reach), "{host}");
    }
}

#[test]
fn classify_ip_table() {
    let table: [(&str, Verdict); 12] = [
        ("169.254.169.254", Verdict::Refused(R::Metadata)),
        ("100.100.100.200", Verdict::Refused(R::Metadata)),
        ("169.254.3.3", Verdict::Refused(R::LinkLocal)),
        ("0.1.2.3", Verdict::Refused(R::Unspecified)),
        ("255.255.255.255", Verdict::Refused(R::Broadcast)),
        ("255.255.255.254", Verdict::Refused(R::Reserved)),
        ("fd00:ec2::254", Verdict::Refused(R::Metadata)),
        ("::ffff:169.254.169.254", Verdict::Refused(R::Metadata)),
        ("2002:c000:201::", Verdict::Refused(R::Documentation)),
        ("2001:db8::1", Verdict::Refused(R::Documentation)),
        ("fd00::1", Verdict::Allowed(Private)),
        ("2a00:1450::1", Verdict::Allowed(Public)),
    ];
    for (ip, verdict) in table {
        assert_eq!(classify_ip(ip.parse().unwrap()), verdict, "{ip}");
    }
}

#[test]
fn name_length_limits() {
    let label63 = "a".repeat(63);
    assert_eq!(
        classify_host(&format!("{label63}.com")),
        Verdict::Allowed(Public)
    );
    assert_eq!(refused(&format!("{label63}a.com")), R::InvalidName);
    let long = vec!["abcdefghi"; 26].join(".");
    assert!(long.len() > 253);
    assert_eq!(refused(&long), R::InvalidName);
    assert_eq!(refused(&"%25".repeat(400)), R::InvalidName);
    assert_eq!(refused(&"1".repeat(5000)), R::InvalidName);
}

// === parse_base_url ===

#[test]
fn base_url_accepted() {
    let url = parse_base_url("http://127.0.0.1:11434/v1").unwrap();
    assert_eq!(url.scheme(), Scheme::Http);
    assert_eq!(url.host(), &Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(
        (url.port(), url.path(), url.reach()),
        (11434, "/v1", Loopback)
    );
    assert_eq!(url.to_string(), "http://127.0.0.1:11434/v1");

    let url = parse_base_url("https://api.openai.com/v1/").unwrap();
    assert_eq!(url.scheme(), Scheme::Https);
    assert_eq!(url.host(), &Host::Name("api.openai.com".into()));
    assert_eq!((url.port(), url.path(), url.reach()), (443, "/v1", Public));
    assert_eq!(url.to_string(), "https://api.openai.com/v1");

    let url: BaseUrl = "HTTPS://API.Example.COM.:8443".parse().unwrap();
    assert_eq!(url.host(), &Host::Name("api.example.com".into()));
    assert_eq!((url.port(), url.path()), (8443, ""));
    assert_eq!(url.to_string(), "https://api.example.com:8443");

    let url = parse_base_url("http://[fd12::1]:8080/a/b//").unwrap();
    assert_eq!(url.host().ip(), Some("fd12::1".parse().unwrap()));
    assert_eq!(
        (url.port(), url.path(), url.reach()),
        (8080, "/a/b", Private)
    );
    assert_eq!(url.to_string(), "http://[fd12::1]:8080/a/b");

    let url = parse_base_url("http://localhost:65535/").unwrap();
    assert_eq!((url.port(), url.path(), url.reach()), (65535, "", Loopback));
}

#[test]
fn base_url_refused() {
    use UrlProblem as P;
    let table = [
        ("ftp://x", P::Scheme),
        ("file:///etc/passwd", P::Scheme),
        ("gopher://127.0.0.1:6379/_", P::Scheme),
        ("http://user:pw@host/", P::UserInfo),
        ("http://@host/", P::UserInfo),
        ("http://a@b@c/", P::UserInfo),
        ("http://user:pw@/", P::UserInfo),
        ("http://host/?q=1", P::Query),
        ("http://host?", P::Query),
        ("http://host/#f", P::Fragment),
        ("http://host#", P::Fragment),
        ("http://host:0/", P::Port),
        ("http://host:99999/", P::Port),
        ("http://host:65536/", P::Port),
        ("http://host:-1/", P::Port),
        ("http://host:+80/", P::Port),
        ("http://host:080/", P::Port),
        ("http://host:/", P::Port),
        ("http://[::1]:/", P::Port),
        ("http://[::1]x/", P::Malformed),
        ("http://host:80:90/", P::Malformed),
        ("http:/host", P::NotAUrl),
        ("//host", P::NotAUrl),
        ("http:host", P::NotAUrl),
        ("host:80", P::NotAUrl),
        ("/v1", P::NotAUrl),
        ("", P::NotAUrl),
        ("http://", P::MissingHost),
        ("http:///v1", P::MissingHost),
        ("http://[fe80::1%25eth0]/", P::Host(R::LinkLocal)),
        ("http://[fd12::1%25eth0]/", P::Host(R::ZoneId)),
        ("http://169.254.169.254/latest", P::Host(R::Metadata)),
        ("http://%31%36%39.254.169.254/", P::Host(R::Metadata)),
        (
            "http://0x7f.1/",
            P::Host(R::NonCanonical {
                decodes_to: v4("127.0.0.1"),
            }),
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1",
            P::Host(R::Metadata),
        ),
        ("http://[::ffff:a9fe:a9fe]/", P::Host(R::Metadata)),
        ("http://bücher.de/", P::Host(R::InvalidName)),
        ("http://a!b/", P::Host(R::InvalidName)),
        ("http://[]/", P::Host(R::InvalidAddress)),
        ("http://host /v1", P::Character),
        ("http://host/v 1", P::Character),
        (" http://host/", P::Character),
        ("http://host/v1\n", P::Character),
        ("http://host\\@evil/", P::Character),
        ("http://host/a\\b", P::Character),
        ("http://host/\u{7f}", P::Character),
        ("http://host/ü", P::Character),
        ("http://host/a/../b", P::Path),
        ("http://host/./b", P::Path),
        ("http://host/a/%2E%2e/b", P::Path),
    ];
    for (text, problem) in table {
        assert_eq!(parse_base_url(text), Err(problem), "{text:?}");
    }
}

#[test]
fn messages_never_echo_the_url() {
    let secret = "hunter2Secret";
    for text in [
        format!("http://user:{secret}@host/"),
        format!("http://user:{secret}@/"),
        format!("http://user:{secret}@169.254.169.254/"),
        format!("ftp://user:{secret}@host/"),
        format!("http://{secret}.1/"),
    ] {
        let problem = parse_base_url(&text).unwrap_err();
        let message = problem.to_string();
        assert!(!message.contains(secret), "{message}");
        assert_eq!(message, message.to_lowercase());
    }
}

#[test]
fn display_messages() {
    assert_eq!(R::Metadata.to_string(), "cloud metadata endpoint");
    assert_eq!(
        R::NonCanonical {
            decodes_to: v4("169.254.169.254")
        }
        .to_string(),
        "address spelled in a non-canonical form (decodes to 169.254.169.254); write it as dotted decimal"
    );
    assert!(
        UrlProblem::UserInfo
            .to_string()
            .contains("krouter-admin credentials set")
    );
    assert!(
        UrlProblem::Host(R::Metadata)
            .to_string()
            .contains("cloud metadata endpoint")
    );
    assert!(Error::source(&UrlProblem::Host(R::ZoneId)).is_some());
    assert!(Error::source(&UrlProblem::Query).is_none());
    assert_eq!(
        (Scheme::Https.to_string(), Loopback.to_string()),
        ("https".into(), "loopback".into())
    );
    let all = [
        R::Metadata,
        R::LinkLocal,
        R::Unspecified,
        R::Broadcast,
        R::Multicast,
        R::Reserved,
        R::Documentation,
        R::Tunnel,
        R::ZoneId,
        R::NonCanonical { decodes_to: None },
        R::NonCanonical {
            decodes_to: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        },
        R::InvalidAddress,
        R::InvalidName,
    ];
    for refusal in all {
        let message = refusal.to_string();
        assert!(!message.is_empty() && !message.contains('\n'), "{message}");
        assert_eq!(message, message.to_lowercase());
    }
}

// === property tests ===

/// Refused IPv4 ranges as (first address, prefix length).
const REFUSED_V4: [(u32, u32); 14] = [
    (0x0000_0000, 8),  // 0/8
    (0xa9fe_0000, 16), // 169.254/16
    (0xa9fe_a9fe, 32), // 169.254.169.254
    (0xa9fe_aa02, 32), // 169.254.170.2
    (0x6464_64c8, 32), // 100.100.100.200
    (0xa83f_8110, 32), // 168.63.129.16
    (0xe000_0000, 4),  // multicast
    (0xf000_0000, 4),  // reserved + broadcast
    (0xc000_0000, 24), // 192.0.0/24
    (0xc000_0200, 24), // 192.0.2/24
    (0xc633_6400, 24), // 198.51.100/24
    (0xcb00_7100, 24), // 203.0.113/24
    (0xc612_0000, 15), // 198.18/15
    (0xc058_6300, 24), // 192.88.99/24
];

fn in_range((base, len): (u32, u32)) -> impl Strategy<Value = Ipv4Addr> {
    let size = if len == 32 { 1 } else { 1_u64 << (32 - len) };
    (0..size).prop_map(move |offset| Ipv4Addr::from_bits(base + offset as u32))
}

fn refused_v4() -> impl Strategy<Value = Ipv4Addr> {
    proptest::strategy::Union::new(REFUSED_V4.map(in_range))
}

fn allowed_v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        in_range((0x7f00_0000, 8)),
        in_range((0x0a00_0000, 8)),
        in_range((0xc0a8_0000, 16))
    ]
}

/// A small deterministic generator, so one seed drives all the choices of a spelling.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn case(&mut self, text: &str) -> String {
        text.chars()
            .map(|c| {
                if self.roll(2) == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    }
}

/// A number in decimal, octal or hex, with zero padding; `padded_decimal`
/// pads decimals (read as octal by WHATWG), so it is never mixed with octal.
fn number(value: u64, dice: &mut Dice, padded_decimal: bool) -> String {
    let zeros = "0".repeat(dice.roll(4) as usize);
    match dice.roll(3) {
        0 => dice.case(&format!("0x{zeros}{value:x}")),
        1 if padded_decimal => format!("{zeros}{value}"),
        1 => format!("0{zeros}{value:o}"),
        _ => value.to_string(),
    }
}

fn short_form(ip: Ipv4Addr, parts: usize, dice: &mut Dice) -> String {
    let [a, b, c, d] = ip.octets().map(u64::from);
    let padded = dice.roll(2) == 0;
    let values = match parts {
        1 => vec![u64::from(ip.to_bits())],
        2 => vec![a, b << 16 | c << 8 | d],
        3 => vec![a, b, c << 8 | d],
        _ => vec![a, b, c, d],
    };
    values
        .into_iter()
        .map(|v| number(v, dice, padded))
        .collect::<Vec<_>>()
        .join(".")
}

fn percent_encode_some(text: &str, dice: &mut Dice) -> String {
    let forced = dice.roll(text.len() as u64) as usize;
    text.bytes()
        .enumerate()
        .map(|(i, b)| {
            if i == forced || dice.roll(3) == 0 {
                dice.case(&format!("%{b:02x}"))
            } else {
                char::from(b).to_string()
            }
        })
        .collect()
}

const SPELLINGS: u64 = 18;

/// One spelling of `ip`; `mapped` says whether it is IPv4-mapped IPv6 (which reaches `ip` itself).
fn spell(ip: Ipv4Addr, kind: u64, seed: u64) -> (String, bool) {
    let mut dice = Dice(seed | 1);
    let bits = ip.to_bits();
    let [h0, h1] = [bits >> 16, bits & 0xffff];
    let spelling = match kind {
        0 => bits.to_string(),
        1 => dice.case(&format!("0x{bits:x}")),
        2 => format!("0{bits:o}"),
        3 => short_form(ip, 4, &mut dice),
        4 => short_form(ip, 3, &mut dice),
        5 => short_form(ip, 2, &mut dice),
        6 => short_form(ip, 1, &mut dice),
        7 => format!("{ip}."),
        8 => percent_encode_some(&ip.to_string(), &mut dice),
        9 => return (dice.case(&format!("[::ffff:{h0:x}:{h1:x}]")), true),
        10 => return (format!("[::ffff:{ip}]"), true),
        11 => dice.case(&format!("[64:ff9b::{h0:x}:{h1:x}]")),
        12 => format!("[64:ff9b:1::{ip}]"),
        13 => {
            let host = dice.roll(0x10000);
            dice.case(&format!("[2002:{h0:x}:{h1:x}::{host:x}]"))
        }
        14 => (u64::from(bits) + (1 + dice.roll(1 << 20)) * (1 << 32)).to_string(),
        15 if bits > 1 => format!("[::{ip}]"), // ::0.0.0.1 is ::1 itself
        16 => format!("[::ffff:0:{ip}]"),
        _ => {
            let form = short_form(ip, 1 + dice.roll(4) as usize, &mut dice);
            let dotted = if dice.roll(2) == 0 {
                format!("{form}.")
            } else {
                form
            };
            percent_encode_some(&dotted, &mut dice)
        }
    };
    (spelling, false)
}

fn rank_of(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Refused(refusal) => refusal.rank(),
        Verdict::Allowed(_) => u8::MAX,
    }
}

fn special_v6() -> impl Strategy<Value = Ipv6Addr> {
    let prefixes: [(u128, u32); 16] = [
        (0, 96),
        (0xffff << 32, 96),
        (0xffff << 48, 96),
        (0x64_ff9b << 96, 96),
        (0x64_ff9b_0001 << 80, 80),
        (0x2002 << 112, 16),
        (0x2001 << 112, 32),
        (0x100 << 112, 64),
        (0x2001_0010 << 96, 28),
        (0x2001_0db8 << 96, 32),
        (0x3fff << 112, 20),
        (0xfc00 << 112, 7),
        (0xfe80 << 112, 9),
        (0xff00 << 112, 8),
        (0xfd00_0ec2 << 96, 112),
        (0x2000 << 112, 3),
    ];
    (0..prefixes.len(), any::<u128>()).prop_map(move |(i, low)| {
        let (base, len) = prefixes[i];
        Ipv6Addr::from_bits(base | (low >> len))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn every_spelling_of_a_refused_address_is_refused(ip in refused_v4(), kind in 0..SPELLINGS, seed in any::<u64>()) {
        let (spelling, _) = spell(ip, kind, seed);
        let expected = rank_of(classify_ip(IpAddr::V4(ip)));
        let got = classify_host(&spelling);
        prop_assert!(matches!(got, Verdict::Refused(_)), "{spelling} of {ip}: {got:?}");
        prop_assert!(rank_of(got) <= expected, "{spelling} of {ip}: {got:?}");
    }

    #[test]
    fn allowed_addresses_only_in_canonical_form(ip in allowed_v4(), kind in 0..SPELLINGS, seed in any::<u64>()) {
        let reach = if ip.is_loopback() { Loopback } else { Private };
        prop_assert_eq!(classify_host(&ip.to_string()), Verdict::Allowed(reach));
        let (spelling, mapped) = spell(ip, kind, seed);
        let got = classify_host(&spelling);
        if mapped {
            prop_assert_eq!(got, Verdict::Allowed(reach), "{}", spelling);
        } else if spelling != ip.to_string() {
            prop_assert!(matches!(got, Verdict::Refused(_)), "{spelling} of {ip}: {got:?}");
        }
    }

    #[test]
    fn classify_host_never_panics(text in any::<String>()) {
        let _ = classify_host(&text);
        let _ = parse_base_url(&text);
        let _ = parse_base_url(&format!("http://{text}/"));
    }

    #[test]
    fn classify_host_never_panics_on_host_like_text(text in "[0-9a-fA-FxX.:%\\[\\]25]{0,40}") {
        let _ = classify_host(&text);
        let _ = parse_base_url(&format!("http://{text}/"));
    }

    #[test]
    fn classify_ip_agrees_on_canonical_v4(bits in any::<u32>()) {
        let ip = Ipv4Addr::from_bits(bits);
        prop_assert_eq!(classify_host(&ip.to_string()), classify_ip(IpAddr::V4(ip)));
    }

    #[test]
    fn classify_ip_agrees_on_canonical_v6(ip in prop_oneof![any::<u128>().prop_map(Ipv6Addr::from_bits), special_v6()]) {
        prop_assert_eq!(classify_host(&format!("[{ip}]")), classify_ip(IpAddr::V6(ip)));
    }

    #[test]
    fn passwords_never_appear_in_messages(secret in "[A-Za-z0-9]{12}", host in "[a-z0-9.%\\[\\]:]{0,12}") {
        let text = format!("http://user:{secret}@{host}/");
        let problem = parse_base_url(&text).unwrap_err();
        prop_assert!(!problem.to_string().contains(&secret));
    }
}
