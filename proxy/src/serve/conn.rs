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
//! The listener's timer is lazy: a change that moves the deadline later wakes nobody (the
//! timer fires early, finds nothing expired and is set again), and a change that moves it
//! earlier wakes the listener only when the new deadline comes before the armed one. On a
//! busy keep-alive connection this is one timer turn per header read time, not a wake-up
//! and a timer reset per request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use krouter_policy::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::pipeline::accept::RawHead;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// "Not set" for the millisecond marks.
const UNSET: u64 = u64::MAX;
/// A deadline far enough away to mean none; the watch is woken when one appears.
const FAR: Duration = Duration::from_secs(3600);

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
    /// When the listener's timer fires, in milliseconds from `start`; `UNSET` while the
    /// listener is setting it, so that every change in the meantime wakes it.
    armed: AtomicU64,
    /// The limits in milliseconds: header read time, keep-alive idle, response write time.
    head_ms: u64,
    idle_ms: u64,
    write_ms: u64,
    head: Mutex<Option<(u64, RawHead)>>,
    wake: Notify,
}

/// The socket of one connection, keeping its [`Watch`] up to date.
#[derive(Debug)]
pub(crate) struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
    capture: Capture,
    /// How many bytes of the HTTP/2 preface have been seen so far.
    preface: usize,
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
            armed: AtomicU64::new(UNSET),
            head_ms: ms(limits.header_read_timeout()),
            idle_ms: ms(limits.keep_alive_idle()),
            write_ms: ms(limits.response_write_timeout()),
            head: Mutex::new(None),
            wake: Notify::new(),
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

impl Watched {
    /// `stream`, reporting to `watch`; request heads are captured up to `max_head` bytes.
    pub(crate) fn new(stream: TcpStream, watch: Arc<Watch>, max_head: usize) -> Self {
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
        }
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

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll
            && let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            this.saw(new);
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
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
        }
        Self {
            watch: Arc::clone(watch),
            total: Arc::clone(total),
        }
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
