//! The client listener: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on one socket,
//! `TCP_NODELAY` on every accepted connection, the policy's `[limits]` on every connection,
//! and graceful shutdown: stop accepting, let requests in flight finish up to
//! [`SHUTDOWN_GRACE`], then close what is left (a request cut there is still recorded).
//!
//! Each accepted connection is served with the limits of the policy in force when it was
//! accepted: hyper's header buffer and header count (HTTP/1.1), header list size, stream
//! count and reset limits (HTTP/2); and krouter's own watch ([`conn`]) for the header read
//! time, the keep-alive idle time and the response write time. Beyond `max_connections`, or
//! beyond `max_connections_per_address` from one address (not counting trusted proxies), a
//! new connection gets a bare `503` (best effort: one non-blocking write) and is closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use krouter_policy::{Limits, Policy, PolicyDigest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::address::ClientKey;
use crate::body::{Body, BodyError};
use crate::pipeline::{self, Shared};
use crate::respond;

mod conn;
mod per_address;
mod socket;

use conn::{Active, Expiry, Watch, Watched};
use per_address::PerAddress;

/// How long requests in flight may take to finish after a shutdown signal.
/// Below Kubernetes' default 30 s termination grace, leaving time to write metadata.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// HTTP/2: streams a client may reset before krouter has accepted them, at once, before the
/// connection is closed with `GOAWAY` (rapid reset, CVE-2023-44487; h2's own default).
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2: streams krouter may reset for a client's protocol errors before it closes the
/// connection with `GOAWAY` (h2 allows 1,024).
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 64;
/// HTTP/2: response bytes buffered per stream for a client that grants no flow-control
/// window (hyper's default is 400 KiB).
pub const H2_MAX_SEND_BUFFER: usize = 64 * 1024;
/// HTTP/2: how often an idle connection is pinged, and how long the answer may take.
pub const H2_KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));
/// How long a connection closed for a limit has to finish a `GOAWAY` before it is dropped;
/// and at shutdown, how long a connection has to begin its first request, or an HTTP/2 one
/// with no stream in flight to close by itself.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Connections refused at the cap are logged at most this often, with a count.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// The whole answer to a connection over the cap.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\r\n";
/// The whole answer to a connection from an address the policy's lists refuse (a peer that
/// is not a trusted proxy): written as it connects, before anything is read, and closed.
const DENIED: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: 119\r\nconnection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\r\n{\"error\":{\"message\":\"Requests from this address are not allowed.\",\"type\":\"permission_error\",\"param\":null,\"code\":null}}\n";

/// The connection builders for the policy in force, rebuilt when the policy changes.
struct Builders {
    digest: Option<PolicyDigest>,
    protocols: Arc<Protocols>,
}

/// One builder per protocol, and one that tells them apart. A connection's protocol is
/// nearly always known from its first bytes ([`sniff`], which leaves them unread) before
/// hyper reads anything, so hyper reads the socket itself: hyper-util's own detection reads
/// the first bytes and replays them, which left 24 bytes in hyper's fresh 8 KiB read buffer
/// and made it grow to 16 KiB on every HTTP/1.1 connection. Only a connection whose first
/// packet held part of the HTTP/2 preface and nothing else goes through that detection.
struct Protocols {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    either: auto::Builder<TokioExecutor>,
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Http1,
    Http2,
    /// Part of the HTTP/2 preface so far: hyper-util reads on until it knows.
    Unsure,
}

/// Connections refused at a cap since the last log line.
#[derive(Default)]
struct Refusals {
    count: u64,
    logged: Option<Instant>,
    /// The address refused last, for the per-address cap's line.
    last: Option<ClientKey>,
}

/// Which cap refused a connection.
#[derive(Clone, Copy)]
enum Cap {
    /// `max_connections`.
    Total(u32),
    /// `max_connections_per_address`.
    PerAddress(u32),
}

/// Counts one open connection while it lives.
struct Open(Arc<AtomicUsize>);

/// A response body that keeps its request counted as in flight until it is dropped.
struct Tracked {
    body: Body,
    active: Active,
}

/// Serves `listener` until `shutdown` completes, then drains.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let open = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (stop, stopping) = watch::channel(false);
    let mut builders = {
        let snapshot = shared.live.load();
        Builders {
            digest: Some(snapshot.policy().digest()),
            protocols: Arc::new(Protocols::for_limits(snapshot.policy().limits())),
        }
    };
    let mut refusals = Refusals::default();
    let mut address_refusals = Refusals::default();
    let per_address = PerAddress::default();
    // The open connections' tasks, so that what is left after the drain is cut here.
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let snapshot = shared.live.load();
        let policy = snapshot.policy();
        // The address lists come before anything else: a peer that is the client (not a
        // trusted proxy) and is refused takes no connection slot and sends nothing that is
        // read. Behind a trusted proxy the forwarded client is judged per request.
        let access = policy.access();
        let trusted = crate::address::is_trusted(peer.ip(), access.trusted_proxies());
        if !trusted && !access.ip_admitted(peer.ip()) {
            tracing::debug!(client = %peer.ip(), "connection from a denied address refused");
            shared.metrics.connection_refused("address_denied");
            let _ = stream.try_write(DENIED);
            continue;
        }
        let limits = *policy.limits();
        let cap = usize::try_from(limits.max_connections()).unwrap_or(usize::MAX);
        if open.load(Ordering::Acquire) >= cap {
            refusals.refused(Cap::Total(limits.max_connections()), None);
            shared.metrics.connection_refused("max_connections");
            refuse(&stream);
            continue;
        }
        refusals.flush(Cap::Total(limits.max_connections()));
        // A trusted proxy's connections carry many clients: only the total cap holds them.
        let per_address_cap = Cap::PerAddress(limits.max_connections_per_address());
        let address_slot = if trusted {
            None
        } else {
            let key = ClientKey::of(peer.ip());
            match per_address.admit(key, limits.max_connections_per_address()) {
                Some(slot) => Some(slot),
                None => {
                    address_refusals.refused(per_address_cap, Some(key));
                    shared
                        .metrics
                        .connection_refused("max_connections_per_address");
                    refuse(&stream);
                    continue;
                }
            }
        };
        address_refusals.flush(per_address_cap);
        let slot = Open::count(&open);
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let protocols = builders.for_policy(policy);
        let connection = serve_connection(
            stream,
            peer,
            protocols,
            limits,
            Arc::clone(&shared),
            Arc::clone(&in_flight),
            stopping.clone(),
        );
        connections.spawn(async move {
            connection.await;
            drop(address_slot);
            drop(slot);
        });
        // Ended connections leave the set as new ones come, so it holds about the open ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    let _ = stop.send(true);
    // The drain waits for connections, not only for requests: a response body ends when
    // its last bytes are handed to hyper, before they are written. Each connection closes
    // once it has written what it owes (`serve_connection`): an HTTP/1.1 one between
    // requests at once, and one that never had a request, or an HTTP/2 one with no stream
    // in flight, within `CLOSE_GRACE`.
    let closed = async {
        while open.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = closed => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            let requests = in_flight.load(Ordering::Acquire);
            let connections = open.load(Ordering::Acquire);
            if requests > 0 {
                tracing::warn!(
                    requests,
                    connections,
                    "requests still in flight after the grace period were cut"
                );
            } else {
                tracing::warn!(
                    connections,
                    "connections still writing answers after the grace period were cut"
                );
            }
        }
    }
    // Cut what is left now, not when the runtime ends: a request cut here is logged and
    // recorded (as 499) while the metadata writer still runs.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it ends, a limit closes it, or shutdown has drained it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    protocols: Arc<Protocols>,
    limits: Limits,
    shared: Arc<Shared>,
    in_flight: Arc<AtomicUsize>,
    mut stopping: watch::Receiver<bool>,
) {
    // The watch starts now, so the first request head is due within the header read time
    // of the accept, the wait for the first packet included.
    let watch = Arc::new(Watch::new(&limits));
    let sniffed = {
        let mut first = pin!(tokio::time::timeout(
            limits.header_read_timeout(),
            sniff(&stream)
        ));
        let before_stop = tokio::select! {
            sniffed = first.as_mut() => Some(sniffed),
            true = async { stopping.wait_for(|stop| *stop).await.is_ok() } => None,
        };
        // Shutdown: a connection that has sent nothing yet gets a moment to begin.
        match before_stop {
            Some(sniffed) => sniffed,
            None => tokio::time::timeout(CLOSE_GRACE, first)
                .await
                .unwrap_or_else(Err),
        }
    };
    let sniffed = match sniffed {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection failed before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!(reason = ?Expiry::Head, "closing a connection at its limit");
            return;
        }
    };
    let builder = match sniffed {
        Sniffed::Http1 => &protocols.http1,
        Sniffed::Http2 => &protocols.http2,
        Sniffed::Unsure => &protocols.either,
    };
    let max_head = usize::try_from(limits.max_header_bytes()).unwrap_or(usize::MAX);
    let (socket, mut hangup) = socket::share(stream, &watch);
    let io = TokioIo::new(Watched::new(
        socket,
        peer.ip(),
        Arc::clone(&watch),
        max_head,
    ));
    let service = {
        let watch = Arc::clone(&watch);
        service_fn(move |mut request| {
            let shared = Arc::clone(&shared);
            let active = Active::enter(&watch, &in_flight);
            if let Some(head) = watch.take_head() {
                request.extensions_mut().insert(head);
            }
            async move {
                let mut response = pipeline::handle(request, peer.ip(), &shared).await;
                respond::secure(&mut response);
                Ok::<_, Infallible>(response.map(|body| Tracked { body, active }))
            }
        })
    };
    let mut connection = pin!(builder.serve_connection(io, service));
    // One timer, moved only when the next deadline comes earlier: a deadline that moved
    // later is noticed when the timer fires and finds nothing expired.
    let mut timer = pin!(tokio::time::sleep_until(watch.arm(&limits, None).0));
    // The two wake-ups live across loop turns: made anew each turn, they would register
    // with (and leave) their notifiers on every turn, and the shutdown one is shared by
    // every connection.
    let mut changed = pin!(watch.changed());
    let mut stopped = pin!(async { stopping.wait_for(|stop| *stop).await.is_ok() });
    let mut closing = false;
    let mut draining = false;
    // Once shutdown has begun: when to look again for a connection that owes nothing.
    let mut drain_check: Option<Instant> = None;
    loop {
        tokio::select! {
            // The connection first: its work is what the task is woken for nearly always.
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            // After the connection, always: the watch relies on this order (Hangup::poll).
            () = std::future::poll_fn(|cx| hangup.poll(cx)) => {
                tracing::debug!("the client closed the connection with a request in flight");
                return;
            }
            () = changed.as_mut(), if !closing => {
                changed.set(watch.changed());
                let (deadline, _) = watch.arm(&limits, Some(timer.deadline()));
                if deadline < timer.deadline() {
                    timer.as_mut().reset(deadline);
                }
            }
            () = timer.as_mut() => {
                if closing {
                    return;
                }
                if let Some(due) = drain_check
                    && due <= Instant::now()
                {
                    if owes_nothing(&watch) {
                        tracing::debug!("closing a connection that owes nothing at shutdown");
                        return;
                    }
                    // HTTP/2 streams may start and end until the client has seen the GOAWAY.
                    drain_check = watch.is_http2().then(|| Instant::now() + CLOSE_GRACE);
                }
                let (mut deadline, expiry) = watch.arm(&limits, None);
                if let Some(due) = drain_check {
                    deadline = deadline.min(due);
                }
                if deadline > Instant::now() {
                    timer.as_mut().reset(deadline);
                    continue;
                }
                tracing::debug!(reason = ?expiry, "closing a connection at its limit");
                match expiry {
                    // No request in flight: a GOAWAY tells an HTTP/2 client why.
                    Expiry::Idle if watch.is_http2() => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
                    }
                    // A head that is late or an idle HTTP/1.1 connection loses nothing; a
                    // client that reads nothing cannot be sent anything more.
                    Expiry::Head | Expiry::Idle | Expiry::Write => return,
                }
            }
            stop = stopped.as_mut(), if !draining => {
                draining = true;
                if stop {
                    // hyper closes an HTTP/1.1 connection at once between requests and
                    // after the answer it owes otherwise, but waits for a first request, and
                    // an HTTP/2 one once its client has acknowledged the GOAWAY: those get a
                    // moment (the timer above, `owes_nothing`), not the header read or idle
                    // time.
                    connection.as_mut().graceful_shutdown();
                    let due = Instant::now() + CLOSE_GRACE;
                    drain_check = Some(due);
                    if due < timer.deadline() {
                        timer.as_mut().reset(due);
                    }
                }
            }
        }
    }
}

/// Whether a draining connection can be dropped without losing anything: it never had a
/// request (its first head did not come within `CLOSE_GRACE` of the shutdown), or it speaks
/// HTTP/2 and has had no stream in flight for `CLOSE_GRACE` (time for the last one's frames
/// to be written).
fn owes_nothing(watch: &Watch) -> bool {
    !watch.has_served() || (watch.is_http2() && watch.idle_for() >= Some(CLOSE_GRACE))
}

/// The connection builder for `limits`.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let header_bytes = limits.max_header_bytes();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The watch closes a slow head at the header read time and an idle connection at
        // the idle time. hyper's own header timer (30 s unless told otherwise) would be reset
        // twice per request, about 2 % of a request's instructions, and would start when the
        // connection goes idle, so it could not tell an idle connection from a slow head.
        .header_read_timeout(None)
        // hyper refuses a buffer under 8 KiB; the policy's bounds keep the value above.
        .max_buf_size(usize::try_from(header_bytes).unwrap_or(usize::MAX))
        .max_headers(usize::try_from(limits.max_headers()).unwrap_or(usize::MAX))
        // Lowercase header names and the date header (hyper's defaults) are what the socket
        // recognises hyper's bare answers by (conn.rs, `Bare::find`): keep both.
        .title_case_headers(false)
        // The listener looks for a client that hangs up mid-request itself (`socket`):
        // hyper's look costs a fresh read buffer per request.
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Also bounds a header block spread over CONTINUATION frames (h2 >= 0.4.4 counts them).
        .max_header_list_size(header_bytes)
        .max_concurrent_streams(limits.h2_max_concurrent_streams())
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .keep_alive_interval(H2_KEEP_ALIVE.0)
        .keep_alive_timeout(H2_KEEP_ALIVE.1);
    builder
}

/// What a fresh connection speaks, from the bytes of its first packet (waited for, left
/// unread): HTTP/2 (prior knowledge) when they are the whole HTTP/2 preface, HTTP/1.x as
/// soon as a byte differs from it or when the connection ends without one (the HTTP/1.1
/// side then closes it). One look only: waiting here for the rest of a preface would mean
/// polling, which a client could keep busy with a partial preface.
async fn sniff(stream: &TcpStream) -> std::io::Result<Sniffed> {
    let mut first = [0u8; conn::PREFACE.len()];
    let n = stream.peek(&mut first).await?;
    let seen = first.get(..n).unwrap_or_default();
    Ok(if n == 0 || !conn::PREFACE.starts_with(seen) {
        Sniffed::Http1
    } else if n == conn::PREFACE.len() {
        Sniffed::Http2
    } else {
        Sniffed::Unsure
    })
}

/// Answers a connection over the cap and closes it, without waiting for anything.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(BUSY);
}

// === impl Builders ===

impl Builders {
    /// The builders for `policy`'s limits.
    fn for_policy(&mut self, policy: &Policy) -> Arc<Protocols> {
        if self.digest != Some(policy.digest()) {
            self.protocols = Arc::new(Protocols::for_limits(policy.limits()));
            self.digest = Some(policy.digest());
        }
        Arc::clone(&self.protocols)
    }
}

// === impl Protocols ===

impl Protocols {
    fn for_limits(limits: &Limits) -> Self {
        let either = builder(limits);
        Self {
            http1: either.clone().http1_only(),
            http2: either.clone().http2_only(),
            either,
        }
    }
}

// === impl Refusals ===

impl Refusals {
    /// Counts a refused connection (from `client`, at the per-address cap); logs at once if
    /// nothing was logged recently.
    fn refused(&mut self, cap: Cap, client: Option<ClientKey>) {
        self.count += 1;
        self.last = client;
        self.flush(cap);
    }

    /// Logs the refusals counted, if any and if the last line is old enough.
    fn flush(&mut self, cap: Cap) {
        if self.count > 0
            && self
                .logged
                .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY)
        {
            match cap {
                Cap::Total(cap) => tracing::warn!(
                    refused = self.count,
                    max_connections = cap,
                    "connection limit reached: new connections refused with 503"
                ),
                Cap::PerAddress(cap) => tracing::warn!(
                    refused = self.count,
                    max_connections_per_address = cap,
                    last_client = %self.last.map_or_else(String::new, |c| c.to_string()),
                    "per-address connection cap reached: new connections from an address \
                     that holds its share refused with 503"
                ),
            }
            self.count = 0;
            self.logged = Some(Instant::now());
        }
    }
}

// === impl Open ===

impl Open {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(open))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Tracked ===

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BodyError>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            self.active.sent(data);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            tracing::warn!("could not listen for signals; stop krouter with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// What [`sniff`] decides for a client that writes `parts`, pausing between them, and
    /// how many bytes are still there to read afterwards.
    fn sniffed(parts: &'static [&'static [u8]]) -> (Sniffed, usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                for part in parts {
                    stream.write_all(part).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            });
            let (stream, _) = listener.accept().await.unwrap();
            let sniffed = sniff(&stream).await.unwrap();
            client.await.unwrap();
            let mut all = [0u8; 64];
            let unread = stream.peek(&mut all).await.unwrap();
            (sniffed, unread)
        })
    }

    #[test]
    fn the_denied_answer_is_one_whole_response_with_its_body_length() {
        let text = std::str::from_utf8(DENIED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["type"], "permission_error");
    }

    #[test]
    fn the_preface_means_http2_and_part_of_it_is_left_to_hyper_util() {
        assert_eq!(sniffed(&[conn::PREFACE]), (Sniffed::Http2, 24));
        // Decided at the first packet, without waiting (or polling) for the rest.
        assert_eq!(
            sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]),
            (Sniffed::Unsure, 24)
        );
    }

    #[test]
    fn anything_else_is_http1_as_soon_as_it_differs_and_nothing_is_consumed() {
        assert_eq!(sniffed(&[b"GET / HTTP/1.0\r\n\r\n"]), (Sniffed::Http1, 18));
        assert_eq!(sniffed(&[b"PRIX", b" more"]).0, Sniffed::Http1);
        // A client that closes without a byte: left to the HTTP/1.1 side.
        assert_eq!(sniffed(&[]), (Sniffed::Http1, 0));
    }
}
