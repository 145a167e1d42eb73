//! Stage 1, accept: refuse ambiguous framing and what is too big, before anything is read.
//!
//! hyper (with httparse) already refuses, with a 400 and a closed connection: differing or
//! listed `Content-Length`s, a signed or non-numeric one, a transfer coding list whose last
//! coding is not `chunked`, `Transfer-Encoding` in HTTP/1.0, obs-fold, whitespace before a
//! colon, control characters, a chunk size that overflows; and with a 431, heads over
//! `[limits] max_header_bytes` or `max_headers`. Size, header-count and time limits are set
//! on the listener ([`crate::serve`]).
//!
//! This stage adds what hyper lets through (RFC 9112 sections 3.2 and 6.1-6.3):
//! `Content-Length` together with `Transfer-Encoding` (hyper drops the length and reads the
//! body as chunked; krouter refuses it), a transfer coding that is anything but exactly one
//! `chunked`, a missing (HTTP/1.1), repeated or invalid `Host`; and a declared body larger
//! than any endpoint takes. Each is a [`Reject`] whose answer closes the connection.
//!
//! hyper removes the `Content-Length` it ignores before the request reaches krouter, so the
//! listener keeps what the raw head said ([`RawHead`], built by [`RawHead::scan`] from the
//! bytes as they are read, and only for heads that carry `Transfer-Encoding`, so a request
//! framed by `Content-Length` costs one pass over its head and nothing more) and this stage
//! checks it for every request that carries `Transfer-Encoding`.

use http::Version;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::uri::Authority;

use crate::ctx::RequestCtx;
use crate::error::Reject;

/// What the raw bytes of an HTTP/1.x request head said before hyper normalized them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHead {
    /// The request line, without its line ending.
    line: Vec<u8>,
    /// Whether any header line is named `Content-Length`.
    content_length: bool,
}

/// Checks the request head against the framing rules and the declared body size.
pub fn limits(parts: &Parts, ctx: &mut RequestCtx) -> Result<(), Reject> {
    framing(parts)?;
    let largest = ctx.snapshot.policy().limits().max_body_bytes().largest();
    if declared_length(parts).is_some_and(|n| n > u64::from(largest)) {
        return Err(Reject::BodyTooLarge);
    }
    Ok(())
}

/// The body length the request declares, if it declares one.
fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The framing rules hyper does not apply itself.
pub fn framing(parts: &Parts) -> Result<(), Reject> {
    let refuse = |what| Err(Reject::Framing { what });
    let http1 = parts.version == Version::HTTP_11 || parts.version == Version::HTTP_10;

    let mut hosts = parts.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return refuse("A request carries one Host header."),
        (None, _) if parts.version == Version::HTTP_11 => {
            return refuse("An HTTP/1.1 request needs a Host header.");
        }
        (Some(host), None) if Authority::try_from(host.as_bytes()).is_err() => {
            return refuse("The Host header is not a valid host.");
        }
        _ => {}
    }

    if parts
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .nth(1)
        .is_some()
    {
        return refuse("A request carries one Content-Length header.");
    }
    let mut codings = parts.headers.get_all(TRANSFER_ENCODING).iter();
    let Some(coding) = codings.next() else {
        return Ok(());
    };
    if !http1 {
        return refuse("Transfer-Encoding is not part of HTTP/2.");
    }
    if codings.next().is_some()
        || !coding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked")
    {
        return refuse("The only transfer coding accepted is a single 'chunked'.");
    }
    let raw = parts
        .extensions
        .get::<RawHead>()
        .filter(|raw| raw.is_of(parts));
    match raw {
        Some(raw) if !raw.content_length && !parts.headers.contains_key(CONTENT_LENGTH) => Ok(()),
        Some(_) => refuse("Content-Length and Transfer-Encoding cannot both be sent."),
        // A chunked request whose head was read while an earlier request was in flight
        // (pipelined): what its raw head said is not known, so it is refused.
        None => refuse("A chunked request cannot be pipelined behind another."),
    }
}

// === impl RawHead ===

impl RawHead {
    /// Where the head that starts `bytes` ends (the index after its empty line), searching
    /// from `from` on: each call needs to look only at what was added since the last one.
    /// `bytes` must not start with an empty line (the listener skips those, as the parser
    /// does). A line ends with LF, optionally after CR (as httparse reads it).
    pub fn end(bytes: &[u8], from: usize) -> Option<usize> {
        let tail = bytes.get(from..)?;
        memchr::memchr_iter(b'\n', tail)
            .map(|offset| from + offset)
            .find(|at| {
                // The line ending here is empty when it holds nothing but an optional CR.
                let before = |n: usize| at.checked_sub(n).and_then(|i| bytes.get(i));
                match before(1) {
                    Some(b'\n') => true,
                    Some(b'\r') => before(2) == Some(&b'\n'),
                    _ => false,
                }
            })
            .map(|at| at + 1)
    }

    /// The facts of a complete head (as delimited by [`RawHead::end`]), when it has a header
    /// line named `Transfer-Encoding`; `None` otherwise, since only such a head is ever
    /// checked (a request hyper reads as chunked without one is refused by [`framing`]).
    pub fn scan(head: &[u8]) -> Option<Self> {
        // Every request's head comes through here: lines and names are found with `memchr`,
        // not byte by byte.
        let mut lines = memchr::memchr_iter(b'\n', head)
            .chain(std::iter::once(head.len()))
            .scan(0, |start, end| {
                let line = head.get(*start..end).unwrap_or_default();
                *start = end + 1;
                Some(line.strip_suffix(b"\r").unwrap_or(line))
            });
        let first = lines.next().unwrap_or_default();
        let (mut content_length, mut transfer_encoding) = (false, false);
        for line in lines {
            let name =
                memchr::memchr(b':', line).map_or(line, |colon| line.get(..colon).unwrap_or(line));
            content_length |= name.eq_ignore_ascii_case(b"content-length");
            transfer_encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
        }
        transfer_encoding.then(|| Self {
            line: first.to_vec(),
            content_length,
        })
    }

    /// Whether this is the head of the request `parts`: its request line is exactly
    /// `METHOD TARGET VERSION`. A head captured part-way (its start was read with an earlier
    /// request) cannot match: its first line is a header line, which hyper would have
    /// refused as a request line.
    fn is_of(&self, parts: &Parts) -> bool {
        let expected = format!("{} {} {:?}", parts.method, parts.uri, parts.version);
        self.line == expected.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(head: &str) -> Parts {
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap().split(' ');
        let method = first.next().unwrap();
        let target = first.next().unwrap();
        let version = match first.next().unwrap() {
            "HTTP/1.0" => Version::HTTP_10,
            "HTTP/2.0" => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        let mut builder = http::Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').unwrap();
            // What hyper does: a Content-Length next to Transfer-Encoding is dropped.
            if name.eq_ignore_ascii_case("content-length")
                && head.to_ascii_lowercase().contains("transfer-encoding")
            {
                continue;
            }
            builder = builder.header(name, value.trim());
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        let bytes = head.as_bytes();
        if let Some(raw) = RawHead::end(bytes, 0).and_then(|end| RawHead::scan(&bytes[..end])) {
            parts.extensions.insert(raw);
        }
        parts
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line_however_it_arrives() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(RawHead::end(head, 0), Some(28));
        for split in 0..head.len() {
            let found = RawHead::end(&head[..split], 0).or_else(|| RawHead::end(head, split));
            assert_eq!(found, Some(28), "split at {split}");
        }
        assert_eq!(RawHead::end(b"GET / HTTP/1.1\nHost: a\n\nx", 0), Some(24));
        assert_eq!(RawHead::end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(RawHead::end(b"GET / HTTP/1.1\r\nX: \r\r\n", 0), None);
    }

    /// The scan as first written, line by line with `split`: the reference for the one
    /// that uses `memchr`.
    fn scan_by_split(head: &[u8]) -> Option<(Vec<u8>, bool)> {
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let first = lines.next().unwrap_or_default();
        let (mut content_length, mut transfer_encoding) = (false, false);
        for line in lines {
            let name = line.split(|b| *b == b':').next().unwrap_or_default();
            content_length |= name.eq_ignore_ascii_case(b"content-length");
            transfer_encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
        }
        transfer_encoding.then(|| (first.to_vec(), content_length))
    }

    #[test]
    fn the_scan_agrees_with_a_line_by_line_split() {
        let pieces: [&[u8]; 12] = [
            b"\n",
            b"\r",
            b"\r\n",
            b":",
            b" ",
            b"POST /a HTTP/1.1",
            b"Content-Length",
            b"content-LENGTH",
            b"Transfer-Encoding",
            b"tRaNsFeR-eNcOdInG",
            b"x-transfer-encoding",
            b"chunked",
        ];
        // A fixed linear congruential sequence: the same 20,000 heads every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(state >> 33).unwrap()
        };
        for _ in 0..20_000 {
            let mut head = Vec::new();
            for _ in 0..next() % 24 {
                head.extend_from_slice(pieces[next() % pieces.len()]);
            }
            let ours = RawHead::scan(&head).map(|raw| (raw.line, raw.content_length));
            assert_eq!(
                ours,
                scan_by_split(&head),
                "{:?}",
                String::from_utf8_lossy(&head)
            );
        }
    }

    #[test]
    fn the_scan_sees_a_content_length_whatever_its_case() {
        let raw = RawHead::scan(
            b"POST /a HTTP/1.1\r\nHost: x\r\ncOnTeNt-LeNgTh: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        assert!(raw.content_length);
        assert_eq!(raw.line, b"POST /a HTTP/1.1");
        let raw =
            RawHead::scan(b"POST /a HTTP/1.1\nX-Content-Length: 4\ntRaNsFeR-eNcOdInG: chunked\n\n")
                .unwrap();
        assert!(!raw.content_length);
        // A head without Transfer-Encoding is never checked, so nothing is kept of it.
        assert_eq!(
            RawHead::scan(b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\n"),
            None
        );
        assert_eq!(
            RawHead::scan(b"POST /a HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\n\r\n"),
            None
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let refused = |head: &str| matches!(framing(&parts(head)), Err(Reject::Framing { .. }));
        for head in [
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a b\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert!(refused(head), "{head:?}");
        }
        for head in [
            "POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/messages HTTP/1.1\r\nHost: a:8080\r\nTransfer-Encoding: Chunked\r\n\r\n",
            "GET /healthz HTTP/1.0\r\n\r\n",
        ] {
            assert_eq!(framing(&parts(head)), Ok(()), "{head:?}");
        }
    }

    #[test]
    fn a_chunked_request_without_its_own_raw_head_is_refused() {
        let head = "POST /v1/messages HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut p = parts(head);
        p.extensions.clear();
        assert!(framing(&p).is_err());
        // The head of another request (a pipelined one) does not vouch for this one.
        p.extensions.insert(
            RawHead::scan(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .unwrap(),
        );
        assert!(framing(&p).is_err());
        // Nor does a head captured from its middle.
        p.extensions
            .insert(RawHead::scan(b"Host: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap());
        assert!(framing(&p).is_err());
    }
}
