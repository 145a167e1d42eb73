//! Raw sockets for the attack suite: bytes written exactly as given (no client library
//! between the test and the wire to fix them up), and what came back: a response head, or
//! a connection closed without one, or silence, each within a deadline. [`h2`] encodes the
//! few HTTP/2 frames the flood cases need by hand.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a read ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response head (and its body, when it declared a length).
    Response(Response),
    /// The connection was closed (or reset) before a whole response head arrived.
    Closed,
    /// Nothing more arrived before the deadline; the connection is still open.
    Silent,
}

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body, as far as `content-length` says.
    pub body: Vec<u8>,
}

/// A client connection that writes raw bytes.
#[derive(Debug)]
pub struct Raw {
    stream: TcpStream,
    /// Bytes read but not yet consumed.
    pending: Vec<u8>,
}

// === impl Raw ===

impl Raw {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to krouter");
        let _ = stream.set_nodelay(true);
        // A write the server never takes fails the test instead of hanging it.
        let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes `bytes`; false when the server had closed the connection (or, after a minute,
    /// still takes nothing).
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Writes `bytes` one small piece at a time, `pause` apart, for at most `limit`; false
    /// when the server closed the connection on the way.
    pub fn trickle(
        &mut self,
        bytes: &[u8],
        piece: usize,
        pause: Duration,
        limit: Duration,
    ) -> bool {
        let started = Instant::now();
        for chunk in bytes.chunks(piece.max(1)) {
            if !self.send(chunk) {
                return false;
            }
            if started.elapsed() > limit {
                break;
            }
            std::thread::sleep(pause);
        }
        true
    }

    /// Reads one response within `limit`.
    pub fn response(&mut self, limit: Duration) -> Outcome {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status = lines
                    .next()
                    .and_then(|line| line.split(' ').nth(1))
                    .and_then(|code| code.parse().ok())
                    .unwrap_or_else(|| panic!("not a status line: {head:?}"));
                let headers: Vec<(String, String)> = lines
                    .filter_map(|line| line.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let start = end + 4;
                while self.pending.len() < start + length {
                    if !self.fill(deadline) {
                        break;
                    }
                }
                let stop = (start + length).min(self.pending.len());
                let body = self.pending[start..stop].to_vec();
                self.pending.drain(..stop);
                return Outcome::Response(Response {
                    status,
                    headers,
                    body,
                });
            }
            match self.read_some(deadline) {
                Some(true) => {}
                Some(false) => return Outcome::Closed,
                None => return Outcome::Silent,
            }
        }
    }

    /// Reads and discards until the server closes the connection; false when it is still
    /// open at the end of `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.pending.clear();
            match self.read_some(deadline) {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
    }

    /// Every byte until the server closes the connection (or `limit` passes).
    pub fn read_to_close(&mut self, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        while self.read_some(deadline) == Some(true) {}
        std::mem::take(&mut self.pending)
    }

    /// Reads exactly `n` bytes, or `None` on close or at the deadline.
    pub fn read_exact(&mut self, n: usize, deadline: Instant) -> Option<Vec<u8>> {
        while self.pending.len() < n {
            if self.read_some(deadline) != Some(true) {
                return None;
            }
        }
        Some(self.pending.drain(..n).collect())
    }

    /// Reads what is there: `Some(true)` for bytes, `Some(false)` for a close or reset,
    /// `None` at the deadline.
    fn read_some(&mut self, deadline: Instant) -> Option<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Some(false),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Some(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) if e.kind() == ErrorKind::Interrupted => Some(true),
            Err(_) => Some(false),
        }
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        self.read_some(deadline) == Some(true)
    }
}

// === impl Response ===

impl Response {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The status of `GET path` on a fresh connection, if a response came within `limit`.
pub fn status_of(addr: SocketAddr, path: &str, limit: Duration) -> Option<u16> {
    let mut raw = Raw::connect(addr);
    raw.send(
        format!("GET {path} HTTP/1.1\r\nHost: krouter\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    match raw.response(limit) {
        Outcome::Response(response) => Some(response.status),
        Outcome::Closed | Outcome::Silent => None,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// HTTP/2 frames, encoded by hand (RFC 9113 section 4; HPACK literals of RFC 7541 section
/// 6.2.2, never indexed, no Huffman coding).
pub mod h2 {
    use std::time::{Duration, Instant};

    use super::Raw;

    /// The client connection preface.
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// A DATA frame.
    pub const DATA: u8 = 0x0;
    /// A HEADERS frame.
    pub const HEADERS: u8 = 0x1;
    /// An RST_STREAM frame.
    pub const RST_STREAM: u8 = 0x3;
    /// A SETTINGS frame.
    pub const SETTINGS: u8 = 0x4;
    /// A GOAWAY frame.
    pub const GOAWAY: u8 = 0x7;
    /// A CONTINUATION frame.
    pub const CONTINUATION: u8 = 0x9;
    /// The last frame of a stream.
    pub const END_STREAM: u8 = 0x1;
    /// The last frame of a header block.
    pub const END_HEADERS: u8 = 0x4;
    /// RST_STREAM's CANCEL.
    pub const CANCEL: u32 = 0x8;

    /// How an HTTP/2 connection ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum End {
        /// The server sent GOAWAY with this error code.
        GoAway(u32),
        /// The server closed the connection without GOAWAY.
        Closed,
        /// The connection is still open at the deadline.
        Open,
    }

    /// One frame.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).expect("a frame under 16 MiB");
        let mut out = length.to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The preface and an empty SETTINGS frame.
    pub fn hello() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out
    }

    /// The preface, an empty SETTINGS frame and a GET of `path` on stream 1 (headers only).
    pub fn hello_get(path: &str) -> Vec<u8> {
        let mut out = hello();
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get(path)));
        out
    }

    /// A header block of literal fields without indexing.
    pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            string(&mut out, name.as_bytes());
            string(&mut out, value.as_bytes());
        }
        out
    }

    /// A GET request's header block.
    pub fn get(path: &str) -> Vec<u8> {
        block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "krouter"),
            (":path", path),
        ])
    }

    /// A request's header block: the pseudo-headers, then `fields`.
    pub fn request(method: &str, path: &str, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut all = vec![
            (":method", method),
            (":scheme", "http"),
            (":authority", "krouter"),
            (":path", path),
        ];
        all.extend_from_slice(fields);
        block(&all)
    }

    /// One frame the server sent.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Frame {
        /// Its type.
        pub kind: u8,
        /// Its flags.
        pub flags: u8,
        /// Its stream (0 for the connection).
        pub stream: u32,
        /// Its payload.
        pub payload: Vec<u8>,
    }

    /// How the server answered a stream.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Answer {
        /// A response head with this status (`None` when its encoding is not one this
        /// reader knows: see [`status`]).
        Headers(Option<u16>),
        /// RST_STREAM with this error code.
        Reset(u32),
        /// GOAWAY with this error code, before any answer on the stream.
        GoAway(u32),
    }

    /// RST_STREAM's PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 0x1;
    /// RST_STREAM's REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 0x7;
    /// GOAWAY's ENHANCE_YOUR_CALM.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    /// The SETTINGS parameter SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;

    /// The next frame, or `None` on a close or at `deadline`.
    pub fn read(raw: &mut Raw, deadline: Instant) -> Option<Frame> {
        let head = raw.read_exact(9, deadline)?;
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let payload = raw.read_exact(length, deadline)?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// The server's first HEADERS or RST_STREAM on `stream` or its GOAWAY, or `None` on a
    /// close or at the end of `limit`.
    pub fn reply(raw: &mut Raw, stream: u32, limit: Duration) -> Option<Answer> {
        replies(raw, &[stream], limit)[0]
    }

    /// [`reply`] for each of `streams`, in whatever order the server answers them; a
    /// GOAWAY answers every stream not answered yet.
    pub fn replies(raw: &mut Raw, streams: &[u32], limit: Duration) -> Vec<Option<Answer>> {
        let deadline = Instant::now() + limit;
        let mut answers = vec![None; streams.len()];
        while answers.contains(&None) {
            let Some(frame) = read(raw, deadline) else {
                break;
            };
            let answer = match frame.kind {
                HEADERS => Answer::Headers(status(&frame.payload)),
                RST_STREAM => Answer::Reset(frame.payload.get(..4).map_or(0, code)),
                GOAWAY => {
                    let goaway = Answer::GoAway(frame.payload.get(4..8).map_or(0, code));
                    for answer in answers.iter_mut().filter(|a| a.is_none()) {
                        *answer = Some(goaway);
                    }
                    break;
                }
                _ => continue,
            };
            if let Some(i) = streams.iter().position(|&s| s == frame.stream) {
                answers[i].get_or_insert(answer);
            }
        }
        answers
    }

    /// The parameters of a SETTINGS frame's payload, in order.
    pub fn settings(payload: &[u8]) -> Vec<(u16, u32)> {
        payload
            .chunks_exact(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect()
    }

    /// The `:status` a response header block starts with, when it is one of HPACK's static
    /// table entries (200, 204, 206, 304, 400, 404, 500), or a literal with the `:status`
    /// name indexed and a three-digit value, plain or Huffman-coded. A server's encoder puts
    /// `:status` first and, on a fresh connection, nothing else is needed to read it.
    pub fn status(block: &[u8]) -> Option<u16> {
        const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
        let first = *block.first()?;
        if first & 0x80 != 0 {
            let index = usize::from(first & 0x7f);
            return (8..=14).contains(&index).then(|| STATIC[index - 8]);
        }
        // Literal with incremental indexing (6-bit index), or without / never indexed
        // (4-bit index): the name must be one of the `:status` entries (8 to 14).
        let index = if first & 0x40 != 0 {
            first & 0x3f
        } else {
            first & 0x0f
        };
        if !(8..=14).contains(&index) {
            return None;
        }
        let length = *block.get(1)?;
        let value = block.get(2..2 + usize::from(length & 0x7f))?;
        let digits = if length & 0x80 == 0 {
            value.to_vec()
        } else {
            huffman_digits(value)?
        };
        match digits.as_slice() {
            [a, b, c] => std::str::from_utf8(&[*a, *b, *c]).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// Decodes a Huffman-coded string of decimal digits (RFC 7541 appendix B: `0`-`2` are
    /// the 5-bit codes `00000`-`00010`, `3`-`9` the 6-bit codes `011001`-`011111`), or
    /// `None` when it holds anything else.
    fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
        let bits: Vec<u8> = bytes
            .iter()
            .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
            .collect();
        let value = |from: usize, n: usize| -> Option<u8> {
            bits.get(from..from + n)
                .map(|b| b.iter().fold(0, |v, bit| v << 1 | bit))
        };
        let mut digits = Vec::new();
        let mut at = 0;
        // Whatever is left at the end is padding: fewer than 8 bits, all ones.
        while bits.len() - at >= 5 && bits[at..].contains(&0) {
            match value(at, 5)? {
                code @ 0..=2 => {
                    digits.push(b'0' + code);
                    at += 5;
                }
                _ => match value(at, 6)? {
                    code @ 0b01_1001..=0b01_1111 => {
                        digits.push(b'3' + (code - 0b01_1001));
                        at += 6;
                    }
                    _ => return None,
                },
            }
        }
        (bits.len() - at < 8 && bits[at..].iter().all(|&bit| bit == 1)).then_some(digits)
    }

    /// RST_STREAM with `code`.
    pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// Reads frames until the server's GOAWAY, a close, or `limit`.
    pub fn end(raw: &mut Raw, limit: Duration) -> End {
        let deadline = Instant::now() + limit;
        loop {
            let Some(frame) = read(raw, deadline) else {
                return if Instant::now() >= deadline {
                    End::Open
                } else {
                    End::Closed
                };
            };
            if let (GOAWAY, Some(bytes)) = (frame.kind, frame.payload.get(4..8)) {
                return End::GoAway(code(bytes));
            }
        }
    }

    /// An error code: four bytes, big-endian.
    fn code(bytes: &[u8]) -> u32 {
        bytes.iter().fold(0, |code, &b| code << 8 | u32::from(b))
    }

    /// An HPACK string literal, not Huffman-coded.
    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        integer(out, bytes.len(), 7, 0x00);
        out.extend_from_slice(bytes);
    }

    /// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1).
    fn integer(out: &mut Vec<u8>, mut value: usize, n: u32, flags: u8) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128 + 128) as u8);
            value /= 128;
        }
        out.push(value as u8);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_status_is_read_indexed_plain_or_huffman_coded() {
            assert_eq!(status(&[0x88]), Some(200));
            assert_eq!(status(&[0x8c]), Some(400));
            assert_eq!(status(&[0x48, 3, b'4', b'3', b'1']), Some(431));
            assert_eq!(status(&[0x08, 3, b'5', b'0', b'3']), Some(503));
            // "431": 011010 011001 00001, then seven bits of padding.
            assert_eq!(status(&[0x48, 0x83, 0x69, 0x90, 0xff]), Some(431));
            // "200": 00010 00000 00000, then one bit of padding.
            assert_eq!(status(&[0x48, 0x82, 0x10, 0x01]), Some(200));
            // Not a status, not digits, or padding that is not all ones.
            assert_eq!(status(&[0x81]), None);
            assert_eq!(status(&[0x48, 0x81, 0xff]), None);
            assert_eq!(status(&[0x48, 0x83, 0x69, 0x90, 0x00]), None);
        }
    }
}
