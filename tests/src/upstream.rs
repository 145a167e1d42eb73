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
//! | Model | Behaviour |
//! |---|---|
//! | `fail-500` | 500; the error message contains `UPSTREAM-INTERNAL-DETAIL` |
//! | `fail-429` | 429 with `retry-after: 1` |
//! | `fail-400` | 400 with an `invalid_request_error` |
//! | `slow-<ms>` | waits `<ms>` before the response head, then answers normally |
//! | `hang` | never answers; the connection stays open |
//! | `drop` | closes the connection (HTTP/2: resets the stream) without a response |
//! | `big-error` | 500 with a 2 MiB body |
//! | `redirect` | 307 to `http://127.0.0.1:9/elsewhere` |
//! | `stream-gap-<ms>` | streams with `<ms>` before every event; the head goes out at once |
//! | `stream-cut` | sends the head and two events (or half the JSON), then aborts the body |
//!
//! A request body over 8 MiB gets 413. With a credential set, every `/v1` request must carry
//! it (`x-api-key` on `/v1/messages*`, `Authorization: Bearer` elsewhere) or gets 401. Errors
//! use the shape of the dialect of the path: Anthropic on `/v1/messages*`, OpenAI elsewhere.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCa;

mod anthropic;
mod handler;
mod openai;
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
}

/// State shared by every connection of one server.
#[derive(Debug)]
struct Shared {
    credential: Option<String>,
    /// False for the demo binary, which must not grow without bound.
    record: bool,
    seen: Mutex<Vec<Seen>>,
    next_id: AtomicU64,
}

/// Serves the mock on `listener` (plain HTTP, no credential, recording nothing) until
/// `shutdown` completes. Connections still open then are left to the runtime.
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

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.shared.seen().clear();
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
}

// === impl Shared ===

impl Shared {
    fn new(credential: Option<String>, record: bool) -> Self {
        Self {
            credential,
            record,
            seen: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
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
    let service = service_fn(move |request| handler::handle(request, Arc::clone(&shared)));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}
