//! A scripted mock upstream that speaks the OpenAI and Anthropic API shapes, for end-to-end
//! tests, the quickstart (`krouter-demo-upstream`) and benchmarks.
//!
//! One listener serves HTTP/1.1 and HTTP/2 (and, with a [`TestCa`], both over TLS with ALPN).
//! [`MockUpstream`] runs on its own thread with its own tokio runtime, so synchronous tests can
//! use it; it records every request it sees. [`serve`] is the same server as a future, for the
//! demo binary: it records nothing.
//!
//! # Routes
//!
//! | Route | Answer |
//! |---|---|
//! | `POST /v1/chat/completions` | `chat.completion`, or SSE `chat.completion.chunk`s and `[DONE]` |
//! | `POST /v1/embeddings` | one 3-float embedding per input |
//! | `POST /v1/responses` | a Responses API `response`, or its SSE event sequence |
//! | `POST /v1/messages` | an Anthropic `message`, or its SSE event sequence |
//! | `POST /v1/messages/count_tokens` | `{"input_tokens": 11}` |
//! | `GET /v1/models` | an OpenAI model list |
//! | anything else | 404 with a JSON error |
//!
//! The text is always `Hello from the krouter demo upstream (model MODEL).` and the usage is
//! always 11 input and 7 output tokens. `"stream": true` in the request body asks for SSE.
//!
//! # Behaviours, picked by the request's `model`
//!
//! On every model route (`chat/completions`, `embeddings`, `responses`, `messages`,
//! `messages/count_tokens`), streaming or not, unless the row says otherwise. `<n>`, `<ms>`,
//! `<secs>` and `<status>` are decimal digits (at most 20); any other model answers normally.
//! SSE answers are 200 with `content-type: text/event-stream`, each event a frame of its own;
//! a request that does not stream gets a normal answer from the rows that begin with "SSE:".
//!
//! | Model | Behaviour |
//! |---|---|
//! | `fail-500` | 500; the error message contains `UPSTREAM-INTERNAL-DETAIL` |
//! | `fail-<status>` | `<status>` (501 to 599) with an error body (Anthropic 529: `overloaded_error`) |
//! | `fail-429` | 429 with `retry-after: 1` |
//! | `fail-429-<secs>` | 429 with `retry-after: <secs>` |
//! | `fail-429-none` | 429 without `retry-after` |
//! | `fail-400` | 400 with an `invalid_request_error` |
//! | `slow-<ms>` | waits `<ms>` before the response head, then answers normally |
//! | `hang` | never answers; the connection stays open |
//! | `drop` | closes the connection (HTTP/2: resets the stream) without a response |
//! | `flaky-<n>` | the first `<n>` requests with this exact model (per server) as `drop`, then normally |
//! | `flaky500-<n>` | the same, but 503 with an error body instead of `drop` |
//! | `big-error` | 500 with a 2 MiB body |
//! | `redirect` | 307 to `http://127.0.0.1:9/elsewhere` |
//! | `stream-gap-<ms>` | streams with `<ms>` before every event; the head goes out at once |
//! | `stream-cut` | sends the head and two events (or half the JSON), then aborts the body |
//! | `empty-stream` | SSE: the head, then the end, without a byte of body |
//! | `no-content-stream` | SSE: lifecycle events without content (below) |
//! | `error-event` | SSE: the head, the dialect's error event (below), the end |
//! | `stall` | the head (JSON when not streaming), then nothing until the client goes away |
//! | `stall-after-content` | the head, the first content event (or half the JSON), then nothing |
//! | `error-after-content` | SSE: the head, the first content event, the error event, the end |
//!
//! The first content event is the first one with text, sent alone (no lifecycle event before
//! it): the chat chunk whose delta is `{"content":"Hello"}`, the Responses
//! `response.output_text.delta` or the Anthropic `content_block_delta` of `Hello`.
//! `stall-after-content` then sends nothing until the client goes away.
//! `no-content-stream` sends, on chat completions, one chunk whose delta is
//! `{"role":"assistant","content":""}` and `data: [DONE]`; on Responses, `response.created` and
//! `response.completed` (output `[]`); on messages, `message_start`, `message_delta`
//! (`end_turn`, usage) and `message_stop`. The error events, byte for byte:
//!
//! ```text
//! data: {"error":{"message":"upstream overloaded","type":"server_error","code":"overloaded"}}\n\n
//! event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n
//! ```
//!
//! (OpenAI routes, then `/v1/messages`.) A server counts `flaky` requests for at most 1,024
//! distinct models; a further model is not counted and answers normally. A request refused
//! before its model is read (credential, size, route) counts for no `flaky` model.
//!
//! # Cancellation
//!
//! An answer is cancelled when its client goes away before the mock has sent all of it: while
//! the mock reads the request or waits before the head (`hang`, `slow-<ms>`), or while a task
//! still writes the body (a stream, `stall*`, `stream-gap-<ms>`). The task notices at once
//! (not at its next write) and stops. [`MockUpstream::cancelled`] counts them; an answer sent
//! whole at once (JSON, an error) never counts.
//!
//! A request body over 8 MiB gets 413. With a credential set, every `/v1` request must carry
//! it (`x-api-key` on `/v1/messages*`, `Authorization: Bearer` elsewhere) or gets 401. Errors
//! use the shape of the dialect of the path: Anthropic on `/v1/messages*`, OpenAI elsewhere.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCa;

/// The most distinct `flaky` models one server counts requests for.
const MAX_FLAKY_MODELS: usize = 1024;
/// How often [`MockUpstream::wait_cancelled`] looks at the count.
const POLL: Duration = Duration::from_millis(2);

mod anthropic;
mod behaviour;
mod handler;
mod openai;
mod stream;
#[cfg(test)]
mod tests;

/// A running mock upstream. Dropping it stops the server and closes every connection.
pub struct MockUpstream {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Options for a [`MockUpstream`]: plain HTTP on `127.0.0.1:0` without a credential unless
/// told otherwise.
#[derive(Debug)]
pub struct Builder {
    credential: Option<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    listen: SocketAddr,
}

/// One request as the mock upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The method, such as `POST`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Every header in arrival order, names in lowercase; values that are not UTF-8 are
    /// decoded lossily.
    pub headers: Vec<(String, String)>,
    /// The body (empty when it was over the size limit).
    pub body: Vec<u8>,
    /// The HTTP version it came over.
    pub version: hyper::Version,
    /// Which connection it came over: connections are numbered from 1 as they are accepted.
    pub connection: u64,
}

/// State shared by every connection of one server.
#[derive(Debug)]
struct Shared {
    credential: Option<String>,
    /// False for the demo binary, which must not grow without bound.
    record: bool,
    seen: Mutex<Vec<Seen>>,
    next_id: AtomicU64,
    /// The number of the last connection accepted.
    connections: AtomicU64,
    /// Answers whose client went away before the mock had sent them whole.
    cancelled: AtomicU64,
    /// Requests seen per `flaky` model, for at most [`MAX_FLAKY_MODELS`] models.
    flaky: Mutex<HashMap<String, u64>>,
}

/// Serves the mock on `listener` (plain HTTP, no credential, recording nothing; the `flaky`
/// counts are capped, see the module doc) until `shutdown` completes. Connections still open
/// then, stalled streams among them, are left to the runtime.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(Shared::new(None, false));
    run(listener, None, shared, shutdown).await;
}

// === impl MockUpstream ===

impl MockUpstream {
    /// Starts a plain-HTTP mock on `127.0.0.1:0` without a credential.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Starts a TLS mock on `127.0.0.1:0` with a certificate from `ca` for `localhost` and
    /// `127.0.0.1`.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::builder().tls(ca).start()
    }

    /// Options for a mock, to be started with [`Builder::start`].
    pub fn builder() -> Builder {
        Builder {
            credential: None,
            tls: None,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the mock listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The API base URL, such as `http://127.0.0.1:40123/v1` (`https` with TLS).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/v1", self.addr)
    }

    /// Every request seen so far, oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen().to_vec()
    }

    /// Forgets the requests seen so far (not the `flaky` counts nor the cancelled count).
    pub fn clear(&self) {
        self.shared.seen().clear();
    }

    /// How many of the requests seen so far (since [`clear`](Self::clear)) have a JSON body
    /// whose `model` is `model`.
    pub fn count_model(&self, model: &str) -> usize {
        self.shared
            .seen()
            .iter()
            .filter(|seen| seen.model().as_deref() == Some(model))
            .count()
    }

    /// How many answers were cancelled so far: their client went away before the mock had
    /// sent them whole (see the module doc).
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` answers were cancelled, for at most `timeout`; whether
    /// they were. Blocks the thread: call it outside the runtime that runs the client, or
    /// the client's sockets may stay open while it waits.
    pub fn wait_cancelled(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.cancelled() >= count {
                return true;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

// === impl Builder ===

impl Builder {
    /// Requires this credential on every `/v1` request (`None`: accept anything).
    pub fn credential(mut self, credential: Option<String>) -> Self {
        self.credential = credential;
        self
    }

    /// Serves TLS with a certificate from `ca` for `localhost` and `127.0.0.1`.
    pub fn tls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.server_config(&["localhost", "127.0.0.1"]));
        self
    }

    /// Listens on `addr` instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Binds the listener and starts the server on its own thread.
    pub fn start(self) -> MockUpstream {
        let listener = std::net::TcpListener::bind(self.listen).unwrap_or_else(|error| {
            panic!("binding the mock upstream to {}: {error}", self.listen)
        });
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        listener
            .set_nonblocking(true)
            .expect("the listener can be made non-blocking");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the mock upstream");
        let shared = Arc::new(Shared::new(self.credential, true));
        let tls = self.tls.map(TlsAcceptor::from);
        let is_tls = tls.is_some();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("mock-upstream-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).expect("tokio adopts the listener");
                    run(listener, tls, server, async {
                        let _ = stop.await;
                    })
                    .await;
                });
                // Dropping the runtime here cancels every connection still open.
            })
            .expect("a thread for the mock upstream");
        MockUpstream {
            addr,
            tls: is_tls,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

// === impl Seen ===

impl Seen {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(seen, _)| seen.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body's JSON `model`, if it has one that is a string.
    pub fn model(&self) -> Option<String> {
        match self.json()?.get_mut("model")?.take() {
            serde_json::Value::String(model) => Some(model),
            _ => None,
        }
    }
}

// === impl Shared ===

impl Shared {
    fn new(credential: Option<String>, record: bool) -> Self {
        Self {
            credential,
            record,
            seen: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            flaky: Mutex::new(HashMap::new()),
        }
    }

    /// The recorded requests (always empty when this server records nothing).
    fn seen(&self) -> MutexGuard<'_, Vec<Seen>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, seen: impl FnOnce() -> Seen) {
        if self.record {
            let seen = seen();
            self.seen().push(seen);
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one more request with the `flaky` model `model` and returns its number (1 for
    /// the first); `None` when [`MAX_FLAKY_MODELS`] other models are counted already.
    fn attempt(&self, model: &str) -> Option<u64> {
        let mut counts = self.flaky.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(model) {
            *count = count.saturating_add(1);
            return Some(*count);
        }
        if counts.len() >= MAX_FLAKY_MODELS {
            return None;
        }
        counts.insert(model.to_owned(), 1);
        Some(1)
    }

    /// Counts one cancelled answer.
    fn cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` completes, each served on its own task.
async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, shared).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(stream, shared).await;
                    }
                }
            }
        });
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2 as the client's preface says.
async fn serve_connection<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let service =
        service_fn(move |request| handler::handle(request, Arc::clone(&shared), connection));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}
