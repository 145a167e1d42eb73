//! One client connection as the listener watches it: [`Watch`] holds what the connection is
//! doing (requests in flight, when it went idle, when a new request head began, since when a
//! write has been waiting on the client), [`Watched`] is the socket that keeps it up to date
//! as bytes are read and written, and [`Active`] counts one request from the call of the
//! service to the end of its response body.
//!
//! From these the listener derives one deadline at a time ([`Watch::arm`]): the header
//! read time for a fresh connection's first request and for a head once its first byte
//! arrived, the idle time between requests, and the response write time while the client
//! accepts nothing. The socket also keeps the raw bytes of each HTTP/1.x request head that
//! arrives while no request is in flight, for [`RawHead`].
//!
//! hyper answers a request head it cannot parse itself, before krouter sees a request, with
//! a bare `400`, `414` or `431` that has no body and none of krouter's headers. The socket
//! recognises that answer as it is written and writes krouter's own in its place
//! ([`Refusal`]): the same status, the error object, a request id, `nosniff`, `no-store` and
//! `Connection: close`. It looks only while no request is in flight on an HTTP/1.x
//! connection, and not after a response body whose last bytes end in an empty line (which
//! hyper's answer could not be told from).
//!
//! The listener's timer is lazy: a change that moves the deadline later wakes nobody (the
//! timer fires early, finds nothing expired and is set again), and a change that moves it
//! earlier wakes the listener only when the new deadline comes before the armed one. On a
//! busy keep-alive connection this is one timer turn per header read time, not a wake-up
//! and a timer reset per request.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use krouter_policy::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ctx::RequestId;
use crate::dialect::{Dialect, ErrorKind};
use crate::logging::IpText;
use crate::pipeline::accept::RawHead;

use super::socket::Socket;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// "Not set" for the millisecond marks.
const UNSET: u64 = u64::MAX;
/// A deadline far enough away to mean none; the watch is woken when one appears.
const FAR: Duration = Duration::from_secs(3600);
/// The answers hyper writes itself to a head it cannot parse.
const BARE: [BareStatus; 3] = [
    BareStatus {
        line: b" 400 Bad Request\r\n",
        status: 400,
        kind: ErrorKind::InvalidRequest,
        message: "The request head is not valid HTTP/1.1 (or krouter refuses its framing).",
    },
    BareStatus {
        line: b" 414 URI Too Long\r\n",
        status: 414,
        kind: ErrorKind::TooLarge,
        message: "The request target is too long.",
    },
    BareStatus {
        line: b" 431 Request Header Fields Too Large\r\n",
        status: 431,
        kind: ErrorKind::TooLarge,
        message: "The request head is too large or has too many header fields.",
    },
];
/// hyper's `content-length` line on a bodiless answer.
const ZERO_LENGTH: &[u8] = b"content-length: 0\r\n";
/// The line hyper adds to its answer on HTTP/1.1 (it closes the connection after any
/// unparseable head); on HTTP/1.0 it closes without saying so.
const CLOSE: &[u8] = b"connection: close\r\n";
/// Bytes in hyper's `date` line: `date: `, an IMF-fixdate (29 bytes), CRLF.
const DATE_LINE: usize = 6 + 29 + 2;

/// What the connection speaks, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Protocol {
    /// Not known yet: fewer bytes than the HTTP/2 preface have arrived, all matching it.
    Unknown = 0,
    /// HTTP/1.x.
    Http1 = 1,
    /// HTTP/2 with prior knowledge.
    Http2 = 2,
}

/// Why a connection is closed by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request head did not arrive in time.
    Head,
    /// No request for the keep-alive idle time.
    Idle,
    /// The client accepted no response bytes for the response write time.
    Write,
}

/// What one connection is doing, shared by its socket, its service and its watcher.
#[derive(Debug)]
pub(crate) struct Watch {
    start: Instant,
    protocol: AtomicU8,
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// Milliseconds from `start`.
    idle_since: AtomicU64,
    head_since: AtomicU64,
    write_blocked_since: AtomicU64,
    /// Counts the times the connection went idle; a captured head belongs to one of them.
    epoch: AtomicU64,
    /// Counts hyper's reads of the socket, for the hang-up watch (`socket::Hangup`).
    reads: AtomicU64,
    /// When the listener's timer fires, in milliseconds from `start`; `UNSET` while the
    /// listener is setting it, so that every change in the meantime wakes it.
    armed: AtomicU64,
    /// The limits in milliseconds: header read time, keep-alive idle, response write time.
    head_ms: u64,
    idle_ms: u64,
    write_ms: u64,
    head: Mutex<Option<(u64, RawHead)>>,
    wake: Notify,
    /// The last response body bytes sent ended in an empty line (CRLF CRLF): a write that
    /// ends like hyper's bare answer may be them, so none is replaced until the next request.
    ends_blank: AtomicBool,
}

/// The socket of one connection, keeping its [`Watch`] up to date (generic only so that
/// tests can drive it with a socket of their own).
#[derive(Debug)]
pub(crate) struct Watched<S = Socket> {
    inner: S,
    watch: Arc<Watch>,
    capture: Capture,
    /// How many bytes of the HTTP/2 preface have been seen so far.
    preface: usize,
    /// The client's address, for the log line of a [`Refusal`].
    peer: IpAddr,
    /// krouter's answer being written in place of hyper's bare one.
    refusal: Option<Refusal>,
}

/// krouter's answer to a head hyper could not parse, written in place of hyper's: hyper is
/// told its own bytes were written once all of this is.
#[derive(Debug)]
struct Refusal {
    bytes: Vec<u8>,
    sent: usize,
    /// hyper's bytes it stands for; a write offered again after `Pending` must start with
    /// them.
    replaces: Vec<u8>,
}

/// One status hyper answers an unparseable head with, and krouter's words for it.
#[derive(Debug, PartialEq, Eq)]
struct BareStatus {
    /// The status line after the version, with its CRLF.
    line: &'static [u8],
    status: u16,
    kind: ErrorKind,
    message: &'static str,
}

/// hyper's bare answer at the end of a write: where it starts, and its parts.
#[derive(Debug, PartialEq, Eq)]
struct Bare<'a> {
    at: usize,
    /// `HTTP/1.x`.
    version: &'a [u8],
    what: &'static BareStatus,
    /// hyper's `date` line.
    date: &'a [u8],
}

/// The raw bytes of the request head being read, while no request is in flight.
#[derive(Debug)]
struct Capture {
    bytes: Vec<u8>,
    epoch: u64,
    done: bool,
    max: usize,
}

/// One request, counted from the service call until its response body is dropped.
#[derive(Debug)]
pub(crate) struct Active {
    watch: Arc<Watch>,
    total: Arc<AtomicUsize>,
}

// === impl Watch ===

impl Watch {
    /// A fresh connection's watch, under `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self::with_times(
            limits.header_read_timeout(),
            limits.keep_alive_idle(),
            limits.response_write_timeout(),
        )
    }

    /// A fresh connection's watch with these header read, keep-alive idle and response
    /// write times.
    fn with_times(head: Duration, idle: Duration, write: Duration) -> Self {
        let ms = |time: Duration| u64::try_from(time.as_millis()).unwrap_or(UNSET - 1);
        Self {
            start: Instant::now(),
            protocol: AtomicU8::new(Protocol::Unknown as u8),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(UNSET),
            write_blocked_since: AtomicU64::new(UNSET),
            epoch: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            armed: AtomicU64::new(UNSET),
            head_ms: ms(head),
            idle_ms: ms(idle),
            write_ms: ms(write),
            head: Mutex::new(None),
            wake: Notify::new(),
            ends_blank: AtomicBool::new(false),
        }
    }

    /// The deadline for the listener's timer, noted as armed: the next deadline
    /// ([`Watch::next`]), or `keep` when that is earlier (a timer that fires early finds
    /// nothing expired and is set again).
    pub(crate) fn arm(&self, limits: &Limits, keep: Option<Instant>) -> (Instant, Expiry) {
        // A swap, not a store: it reads what the last `moved` wrote, so the state that
        // `moved` announced is seen below.
        self.armed.swap(UNSET, Ordering::SeqCst);
        let mut next = self.next(limits);
        if let Some(keep) = keep
            && keep < next.0
        {
            next.0 = keep;
        }
        let ms = u64::try_from(next.0.saturating_duration_since(self.start).as_millis())
            .unwrap_or(UNSET - 1);
        // A change since the store above lowered the mark and woke the listener, which
        // arms again; the mark stays as low as that change needs.
        let _ = self
            .armed
            .compare_exchange(UNSET, ms, Ordering::SeqCst, Ordering::SeqCst);
        next
    }

    /// Notes a deadline at `at` (milliseconds from `start`) and wakes the listener if its
    /// timer is armed later than that.
    fn moved(&self, at: u64) {
        if self.armed.fetch_min(at, Ordering::SeqCst) > at {
            self.wake.notify_one();
        }
    }

    /// Completes when something that moves the deadline happened.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await;
    }

    /// The next deadline and what expires then. While a request is in flight only the
    /// response write time applies (the request's own body and upstream times bound it);
    /// otherwise a connection that never had a request, or whose next head has begun, has the
    /// header read time, and an idle one the keep-alive time. On HTTP/2 a head is not told
    /// apart from other frames (pings, settings), so only the idle time applies after the
    /// first request.
    fn next(&self, limits: &Limits) -> (Instant, Expiry) {
        let at = |ms: u64| self.start + Duration::from_millis(ms);
        let mut next = (Instant::now() + FAR, Expiry::Idle);
        let mut earlier = |when: Instant, why: Expiry| {
            if when < next.0 {
                next = (when, why);
            }
        };
        let blocked = self.write_blocked_since.load(Ordering::Acquire);
        if blocked != UNSET {
            earlier(at(blocked) + limits.response_write_timeout(), Expiry::Write);
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let head = self.head_since.load(Ordering::Acquire);
            let http2 = self.protocol() == Protocol::Http2;
            if !self.served.load(Ordering::Acquire) {
                earlier(self.start + limits.header_read_timeout(), Expiry::Head);
            } else if head != UNSET && !http2 {
                earlier(at(head) + limits.header_read_timeout(), Expiry::Head);
            } else {
                let idle = self.idle_since.load(Ordering::Acquire);
                earlier(at(idle) + limits.keep_alive_idle(), Expiry::Idle);
            }
        }
        next
    }

    /// hyper's read count while an HTTP/1.x request is in flight, when the listener
    /// watches for the client hanging up (hyper does not: it is told to allow half-closed
    /// connections, see `socket`); `None` otherwise.
    pub(crate) fn hangup_reads(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Acquire) != 0 && self.protocol() == Protocol::Http1)
            .then(|| self.reads.load(Ordering::Acquire))
    }

    /// Whether a request has been dispatched on the connection.
    pub(crate) fn has_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// How long the connection has had no request in flight (since it was accepted, if it
    /// never had one); `None` while one is.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Whether the connection speaks HTTP/2.
    pub(crate) fn is_http2(&self) -> bool {
        self.protocol() == Protocol::Http2
    }

    /// The raw head of the request just dispatched, if it was captured whole since the
    /// connection last went idle.
    pub(crate) fn take_head(&self) -> Option<RawHead> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let taken = self
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        taken
            .filter(|(captured, _)| *captured == epoch)
            .map(|(_, head)| head)
    }

    fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Acquire) {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Unknown,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }
}

// === impl Watched ===

impl<S> Watched<S> {
    /// `stream`, reporting to `watch`; request heads are captured up to `max_head` bytes.
    pub(crate) fn new(stream: S, peer: IpAddr, watch: Arc<Watch>, max_head: usize) -> Self {
        Self {
            inner: stream,
            watch,
            capture: Capture {
                bytes: Vec::new(),
                epoch: 0,
                done: false,
                max: max_head,
            },
            preface: 0,
            peer,
            refusal: None,
        }
    }

    /// Whether hyper may be writing its own answer to an unparseable head: on HTTP/1.x,
    /// when no request is in flight and the last body sent did not end in an empty line.
    /// Nearly always false while a response is written; true for the last write of each
    /// (its body has ended), where the check is a few compares.
    fn may_refuse(&self) -> bool {
        let watch = &self.watch;
        watch.in_flight.load(Ordering::Acquire) == 0
            && watch.protocol() != Protocol::Http2
            && !watch.ends_blank.load(Ordering::Acquire)
    }

    /// Notes bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        let watch = &self.watch;
        if watch.protocol() == Protocol::Unknown {
            let rest = PREFACE.get(self.preface..).unwrap_or_default();
            let n = rest.len().min(bytes.len());
            if rest.get(..n) != bytes.get(..n) {
                watch
                    .protocol
                    .store(Protocol::Http1 as u8, Ordering::Release);
            } else {
                self.preface += n;
                if self.preface == PREFACE.len() {
                    watch
                        .protocol
                        .store(Protocol::Http2 as u8, Ordering::Release);
                    self.capture.bytes = Vec::new();
                    self.capture.done = true;
                }
            }
        }
        if watch.in_flight.load(Ordering::Acquire) != 0 {
            return;
        }
        if watch.head_since.load(Ordering::Acquire) == UNSET {
            let now = watch.now_ms();
            watch.head_since.store(now, Ordering::SeqCst);
            watch.moved(now.saturating_add(watch.head_ms));
        }
        if watch.protocol() != Protocol::Http2 {
            let epoch = watch.epoch.load(Ordering::Acquire);
            if let Some(head) = self.capture.push(bytes, epoch) {
                *watch.head.lock().unwrap_or_else(PoisonError::into_inner) = Some((epoch, head));
            }
        }
    }

    /// Notes whether a write is waiting on the client.
    fn wrote<T>(&self, poll: &Poll<io::Result<T>>) {
        let watch = &self.watch;
        let blocked = watch.write_blocked_since.load(Ordering::Acquire);
        match (poll.is_pending(), blocked == UNSET) {
            (true, true) => {
                let now = watch.now_ms();
                watch.write_blocked_since.store(now, Ordering::SeqCst);
                watch.moved(now.saturating_add(watch.write_ms));
            }
            (false, false) => watch.write_blocked_since.store(UNSET, Ordering::Release),
            _ => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes `buf`, with krouter's answer in place of hyper's bare one at its end.
    fn write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.refusal.is_none()
            && self.may_refuse()
            && let Some(bare) = Bare::find(buf)
        {
            if bare.at > 0 {
                // What comes before it first (the tail of an earlier response).
                let before = buf.get(..bare.at).unwrap_or_default();
                return Pin::new(&mut self.inner).poll_write(cx, before);
            }
            self.refusal = Some(Refusal::new(&bare, buf, self.peer));
        }
        let Some(refusal) = self.refusal.as_mut() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let poll = refusal.poll_send(Pin::new(&mut self.inner), cx, buf);
        if poll.is_ready() {
            self.refusal = None;
        }
        poll
    }

    /// Writes `bufs` as one write, unless hyper's bare answer is at their end: then what
    /// comes before it, or krouter's answer in its place ([`Watched::write`]).
    fn write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = |buf: &io::IoSlice<'_>| !buf.is_empty();
        if self.refusal.is_some() {
            // hyper offers its answer again after a write that was not finished.
            let first = bufs
                .iter()
                .find(|buf| written(buf))
                .map_or(&[][..], |buf| &**buf);
            return self.write(cx, first);
        }
        if self.may_refuse()
            && let Some(last) = bufs.iter().rposition(&written)
            && let Some(slice) = bufs.get(last)
            && Bare::find(slice).is_some()
        {
            let before = bufs.get(..last).unwrap_or_default();
            if before.iter().any(written) {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, before);
            }
            return self.write(cx, slice);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if poll.is_ready() {
            // Only this socket writes the count: no read-modify-write needed.
            let reads = &this.watch.reads;
            reads.store(
                reads.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Release,
            );
        }
        if let Poll::Ready(Ok(())) = poll
            && let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            this.saw(new);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.write(cx, buf);
        this.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = this.write_vectored(cx, bufs);
        this.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// === impl Refusal ===

impl Refusal {
    /// krouter's answer in place of `bare`, hyper's write `replaces`, to a client at `peer`;
    /// logged with the request id the answer carries.
    fn new(bare: &Bare<'_>, replaces: &[u8], peer: IpAddr) -> Self {
        let id = RequestId::generate();
        tracing::info!(
            request_id = id.as_str(),
            client = IpText::new(peer).as_str(),
            status = bare.what.status,
            "request head refused before parsing"
        );
        let body = Dialect::OpenAi.error_body(bare.what.kind, bare.what.message);
        let mut bytes = Vec::with_capacity(256 + body.len());
        for part in [
            bare.version,
            bare.what.line,
            b"content-type: application/json\r\ncontent-length: ",
            itoa::Buffer::new().format(body.len()).as_bytes(),
            b"\r\nconnection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nx-request-id: ",
            id.as_str().as_bytes(),
            b"\r\n",
            bare.date,
            b"\r\n",
            &body,
        ] {
            bytes.extend_from_slice(part);
        }
        Self {
            bytes,
            sent: 0,
            replaces: replaces.to_vec(),
        }
    }

    /// Writes the rest of the answer to `socket`; once it is all out, reports hyper's bytes
    /// as written. `offered` is what hyper offers now, which must begin with the bytes the
    /// answer replaces (hyper offers them again after `Pending`).
    fn poll_send<S: AsyncWrite>(
        &mut self,
        mut socket: Pin<&mut S>,
        cx: &mut Context<'_>,
        offered: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !offered.starts_with(&self.replaces) {
            return Poll::Ready(Err(io::Error::other(
                "the write changed while krouter's answer to an unparseable head was sent",
            )));
        }
        while let Some(rest) = self.bytes.get(self.sent..).filter(|r| !r.is_empty()) {
            match socket.as_mut().poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => self.sent += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(self.replaces.len()))
    }
}

// === impl Bare ===

impl<'a> Bare<'a> {
    /// hyper's bare answer if `write` ends with exactly one: a status line of [`BARE`],
    /// `connection: close` on HTTP/1.1 (none on HTTP/1.0), `content-length: 0`, a `date`
    /// line and the empty line, as hyper 1.x writes it (lowercase names, the date header
    /// on: see the builder in `serve.rs`). krouter's own responses never end so (they carry
    /// `nosniff` and their own headers between the status line and hyper's), nor does a
    /// chunked body (it ends `0` CRLF CRLF), a JSON one, or a body ending in an empty line
    /// ([`Watch`] turns the check off after one).
    fn find(write: &'a [u8]) -> Option<Self> {
        let rest = write.strip_suffix(b"\r\n")?;
        let (rest, date) = rest.split_at_checked(rest.len().checked_sub(DATE_LINE)?)?;
        if !is_date_line(date) {
            return None;
        }
        let rest = rest.strip_suffix(ZERO_LENGTH)?;
        let (rest, closes) = match rest.strip_suffix(CLOSE) {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        BARE.iter().find_map(|what| {
            let before = rest.strip_suffix(what.line)?;
            let at = before.len().checked_sub(8)?;
            let version = before.get(at..)?;
            let exact = (version == b"HTTP/1.1" && closes) || (version == b"HTTP/1.0" && !closes);
            exact.then_some(Self {
                at,
                version,
                what,
                date,
            })
        })
    }
}

/// Whether `line` is a `date` header line as hyper writes it: the name, 29 printable ASCII
/// bytes, CRLF. Its bytes go into krouter's answer, so nothing else may pass.
fn is_date_line(line: &[u8]) -> bool {
    line.len() == DATE_LINE
        && line.starts_with(b"date: ")
        && line.ends_with(b"\r\n")
        && line
            .get(6..DATE_LINE - 2)
            .is_some_and(|value| value.iter().all(|b| matches!(b, b' '..=b'~')))
}

// === impl Capture ===

impl Capture {
    /// Adds `bytes` read while idle in `epoch`; returns the head once it is complete and has
    /// something to check ([`RawHead::scan`]). A new
    /// epoch starts a new capture; empty lines before a request line are skipped (as the
    /// parser skips them); a head over `max` is given up (the parser refuses it too).
    fn push(&mut self, mut bytes: &[u8], epoch: u64) -> Option<RawHead> {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.done = false;
            self.bytes.clear();
        }
        if self.done {
            return None;
        }
        if self.bytes.is_empty() {
            let skip = bytes
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            bytes = bytes.get(skip..).unwrap_or_default();
            // The usual case, a whole head in one read, is scanned where it lies.
            if let Some(end) = RawHead::end(bytes, 0).filter(|end| *end <= self.max) {
                self.done = true;
                return bytes.get(..end).and_then(RawHead::scan);
            }
        }
        let from = self.bytes.len();
        let room = self.max.saturating_sub(from);
        self.bytes
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        let end = RawHead::end(&self.bytes, from);
        let head = end
            .and_then(|end| self.bytes.get(..end))
            .and_then(RawHead::scan);
        if end.is_some() || self.bytes.len() >= self.max {
            self.done = true;
            self.bytes.clear();
            self.bytes.shrink_to(1024);
        }
        head
    }
}

// === impl Active ===

impl Active {
    /// Counts a request on `watch` and in `total`.
    pub(crate) fn enter(watch: &Arc<Watch>, total: &Arc<AtomicUsize>) -> Self {
        total.fetch_add(1, Ordering::AcqRel);
        if watch.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            // No wake: a request in flight only moves deadlines later, and a timer that
            // fires early finds nothing expired and is set again.
            watch.served.store(true, Ordering::Release);
            watch.head_since.store(UNSET, Ordering::Release);
            watch.ends_blank.store(false, Ordering::Release);
        }
        Self {
            watch: Arc::clone(watch),
            total: Arc::clone(total),
        }
    }

    /// Notes response body bytes about to be sent: whether they end in an empty line.
    pub(crate) fn sent(&self, data: &[u8]) {
        self.watch
            .ends_blank
            .store(data.ends_with(b"\r\n\r\n"), Ordering::Release);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let watch = &self.watch;
        if watch.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Bytes read from now on start a new head, in a new epoch. On HTTP/1.1 this runs
            // on the connection's own task, so no read can come between the count and the
            // epoch; on HTTP/2 heads are not captured.
            let now = watch.now_ms();
            watch.idle_since.store(now, Ordering::SeqCst);
            watch.head_since.store(UNSET, Ordering::SeqCst);
            watch.epoch.fetch_add(1, Ordering::AcqRel);
            watch.moved(now.saturating_add(watch.idle_ms));
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_captured_across_reads_and_only_once_per_epoch() {
        let mut capture = Capture {
            bytes: Vec::new(),
            epoch: 0,
            done: false,
            max: 64,
        };
        assert_eq!(capture.push(b"\r\nPOST / HTTP/1.1\r\nHo", 0), None);
        let head = capture
            .push(b"st: a\r\nTransfer-Encoding: chunked\r\n\r\nx", 0)
            .unwrap();
        assert_eq!(
            Some(head),
            RawHead::scan(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        );
        // The rest of the epoch (body bytes, a drained body) is not a head.
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(capture.push(chunked, 0), None);
        assert!(capture.push(chunked, 1).is_some());
        // A head without Transfer-Encoding ends the capture and keeps nothing.
        assert_eq!(capture.push(b"GET / HTTP/1.1\r\n\r\n", 2), None);
        assert!(capture.done && capture.bytes.is_empty());
    }

    const DATE: &[u8] = b"date: Tue, 24 Nov 2026 10:00:00 GMT\r\n";

    /// hyper's bare answer: `status_line` (with its CRLF), then the lines it writes.
    fn bare(status_line: &str, close: bool, length: bool, date: bool) -> Vec<u8> {
        let mut bytes = status_line.as_bytes().to_vec();
        for (on, line) in [(close, CLOSE), (length, ZERO_LENGTH), (date, DATE)] {
            if on {
                bytes.extend_from_slice(line);
            }
        }
        bytes.extend_from_slice(b"\r\n");
        bytes
    }

    #[test]
    fn hypers_bare_answers_are_found_at_the_end_of_a_write_and_nothing_else_is() {
        assert!(is_date_line(DATE));
        // A line break inside the value would put a header of its own into the answer.
        assert!(!is_date_line(b"date: Tue, 24 Nov 2026 1\r\nx: yyyyyy\r\n"));
        for (line, status) in [
            ("HTTP/1.1 400 Bad Request\r\n", 400),
            ("HTTP/1.1 414 URI Too Long\r\n", 414),
            ("HTTP/1.1 431 Request Header Fields Too Large\r\n", 431),
            ("HTTP/1.0 400 Bad Request\r\n", 400),
        ] {
            // HTTP/1.1 answers say they close; HTTP/1.0 ones close without saying so.
            let http10 = line.starts_with("HTTP/1.0");
            let write = bare(line, !http10, true, true);
            let found = Bare::find(&write).unwrap();
            assert_eq!((found.at, found.what.status, found.date), (0, status, DATE));
            // After the tail of an earlier response, it is found where it starts.
            let mut after = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
            let tail = after.len();
            after.extend_from_slice(&write);
            assert_eq!(Bare::find(&after).map(|b| b.at), Some(tail));
            // Any other shape is not hyper's.
            for (close, length, date) in [
                (http10, true, true),
                (!http10, false, true),
                (!http10, true, false),
            ] {
                let write = bare(line, close, length, date);
                assert_eq!(Bare::find(&write), None, "{line} {close} {length} {date}");
            }
        }
        let not = [
            // krouter's own error: its headers stand between the status line and hyper's.
            &b"HTTP/1.1 400 Bad Request\r\nx-content-type-options: nosniff\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 10:00:00 GMT\r\n\r\n"[..],
            // A chunked body's end, a body, other statuses, a head with a body after it.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"{\"error\":{}}",
            b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 10:00:00 GMT\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/2.0 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 10:00:00 GMT\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"",
        ];
        for write in not {
            assert_eq!(
                Bare::find(write),
                None,
                "{}",
                String::from_utf8_lossy(write)
            );
        }
    }

    /// A socket whose writes take what the script says, one step per write: `Some(n)` at
    /// most `n` bytes, `None` not now (`Pending`); all of it once the script has run out.
    struct Script {
        out: Vec<u8>,
        steps: std::collections::VecDeque<Option<usize>>,
    }

    impl AsyncWrite for Script {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            match this.steps.pop_front().unwrap_or(Some(usize::MAX)) {
                None => Poll::Pending,
                Some(n) => {
                    let n = n.min(buf.len());
                    this.out.extend_from_slice(&buf[..n]);
                    Poll::Ready(Ok(n))
                }
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn watched(steps: &[Option<usize>]) -> (Watched<Script>, Arc<Watch>) {
        let second = Duration::from_secs(1);
        let watch = Arc::new(Watch::with_times(second, second, second));
        let script = Script {
            out: Vec::new(),
            steps: steps.iter().copied().collect(),
        };
        let socket = Watched::new(script, IpAddr::from([127, 0, 0, 1]), Arc::clone(&watch), 64);
        (socket, watch)
    }

    /// Writes `parts` as hyper does: offers what is left (as one slice, or as the parts
    /// still unwritten when `vectored`) until all of it is reported written, offering the
    /// same bytes again after `Pending`.
    fn write_all(socket: &mut Watched<Script>, parts: &[&[u8]], vectored: bool) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let whole = parts.concat();
        let mut done = 0;
        let mut turns = 0;
        while done < whole.len() {
            turns += 1;
            assert!(turns < 1000, "no progress");
            let poll = if vectored {
                // The parts from the first one not yet written whole, the first cut short.
                let mut start = 0;
                let mut slices = Vec::new();
                for part in parts {
                    let end = start + part.len();
                    if end > done {
                        slices.push(io::IoSlice::new(&part[done.saturating_sub(start)..]));
                    }
                    start = end;
                }
                Pin::new(&mut *socket).poll_write_vectored(&mut cx, &slices)
            } else {
                Pin::new(&mut *socket).poll_write(&mut cx, &whole[done..])
            };
            match poll {
                Poll::Ready(Ok(n)) => {
                    assert!(n > 0 && done + n <= whole.len(), "reported {n} at {done}");
                    done += n;
                }
                Poll::Ready(Err(error)) => panic!("{error}"),
                Poll::Pending => {}
            }
        }
    }

    #[test]
    fn a_bare_answer_is_replaced_whole_through_short_writes_and_pending() {
        let tail = &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"[..];
        let answer = bare("HTTP/1.1 400 Bad Request\r\n", true, true, true);
        let steps = [Some(10), None, Some(30), Some(20), None, Some(7), None];
        for vectored in [false, true] {
            let (mut socket, _watch) = watched(&steps);
            write_all(&mut socket, &[tail, &answer], vectored);
            let out = String::from_utf8(std::mem::take(&mut socket.inner.out)).unwrap();
            // The earlier response's tail as it was, then krouter's answer whole.
            let rest = out
                .strip_prefix(std::str::from_utf8(tail).unwrap())
                .unwrap();
            let (head, body) = rest.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
            assert!(
                head.contains("\r\nx-content-type-options: nosniff\r\n"),
                "{head}"
            );
            assert!(head.contains("\r\ncontent-length: "), "{head}");
            let error: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(error["error"]["type"], "invalid_request_error");
            assert!(socket.refusal.is_none());
        }
    }

    #[test]
    fn a_write_changed_after_pending_fails_instead_of_being_misreported() {
        let answer = bare("HTTP/1.1 400 Bad Request\r\n", true, true, true);
        let (mut socket, _watch) = watched(&[Some(5), None]);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let first = Pin::new(&mut socket).poll_write(&mut cx, &answer);
        assert!(first.is_pending());
        let second = Pin::new(&mut socket).poll_write(&mut cx, b"something else");
        assert!(matches!(second, Poll::Ready(Err(_))), "{second:?}");
    }

    #[test]
    fn nothing_is_replaced_while_a_request_is_in_flight_or_after_a_body_ending_in_a_blank_line() {
        let answer = bare("HTTP/1.1 400 Bad Request\r\n", true, true, true);
        let total = Arc::new(AtomicUsize::new(0));
        // In flight: the bytes are a response's, not hyper's answer.
        let (mut socket, watch) = watched(&[]);
        let active = Active::enter(&watch, &total);
        write_all(&mut socket, &[&answer], false);
        assert_eq!(socket.inner.out, answer);
        // Its body ended in an empty line: the next write may be its last bytes.
        active.sent(b"a body that ends so\r\n\r\n");
        drop(active);
        socket.inner.out.clear();
        write_all(&mut socket, &[&answer], true);
        assert_eq!(socket.inner.out, answer);
        // The next request clears that; after its body, hyper's answer is replaced again.
        let active = Active::enter(&watch, &total);
        active.sent(b"{}");
        drop(active);
        socket.inner.out.clear();
        write_all(&mut socket, &[&answer], false);
        assert!(socket.inner.out.windows(7).any(|w| w == b"nosniff"));
    }

    #[test]
    fn a_refusal_carries_krouters_headers_the_error_object_and_hypers_date() {
        let write = bare(
            "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            true,
            true,
            true,
        );
        let found = Bare::find(&write).unwrap();
        let refusal = Refusal::new(&found, &write, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(refusal.replaces, write);
        let text = String::from_utf8(refusal.bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        assert_eq!(
            lines.next(),
            Some("HTTP/1.1 431 Request Header Fields Too Large")
        );
        let headers: Vec<(&str, &str)> = lines.map(|l| l.split_once(": ").unwrap()).collect();
        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(header("x-content-type-options"), Some("nosniff"));
        assert_eq!(header("cache-control"), Some("no-store"));
        assert_eq!(header("connection"), Some("close"));
        assert_eq!(header("date"), Some("Tue, 24 Nov 2026 10:00:00 GMT"));
        assert!(header("x-request-id").unwrap().starts_with("req_"));
        assert_eq!(
            header("content-length"),
            Some(body.len().to_string().as_str())
        );
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["code"], "request_too_large");
    }

    #[test]
    fn a_head_over_the_limit_is_given_up() {
        let mut capture = Capture {
            bytes: Vec::new(),
            epoch: 0,
            done: false,
            max: 16,
        };
        assert_eq!(capture.push(b"GET /0123456789abcdef HTTP/1.1\r\n", 0), None);
        assert_eq!(capture.push(b"\r\n", 0), None);
        assert!(capture.bytes.capacity() <= 1024);
    }
}
