//! The upstream client: hyper over rustls (ring), HTTP/2 where the provider offers it by
//! ALPN, public roots plus an optional extra CA, `TCP_NODELAY`, and a resolver that refuses
//! any host whose addresses the SSRF guard refuses ([`connect`]). Redirects are never
//! followed: nothing here follows them, and the forward stage treats a 3xx as the final
//! answer.
//!
//! Connections are pooled here rather than by hyper-util's client, which spawned a task
//! and hashed its pool key byte by byte for every request. An HTTP/1.1 connection goes back
//! to its pool when its response body ends or is dropped ([`UpstreamBody`]), and is handed
//! out again only once hyper says it is ready for a new request: its last response read
//! whole (hyper drains a short leftover or closes the connection). An HTTP/2 connection is
//! shared by every request to its host and pinged while in use. Idle connections are
//! closed after 60 to 90 seconds.

use foldhash::HashMap;
use std::future::poll_fn;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Parts, Scheme};
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tower_service::Service as _;

pub mod connect;

use crate::error::UpstreamFailure;
use crate::joined::Joined;
use connect::SsrfResolver;

/// How often idle connections are looked over; one idle for [`IDLE_SWEEPS`] sweeps is
/// closed, so an idle connection lives 60 to 90 seconds.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Sweeps an idle connection survives.
const IDLE_SWEEPS: u64 = 3;
/// Idle HTTP/1.1 connections kept per host, at most; more are closed as they come back.
const MAX_IDLE_PER_HOST: usize = 1024;
/// How often an HTTP/2 connection with requests open is pinged.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
/// How long a ping's answer may take before its connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Times a request is sent again because a pooled connection closed before taking it (an
/// upstream's keep-alive timeout racing the request); after that a new connection is made.
const REUSE_RETRIES: usize = 3;

type Connector = HttpsConnector<HttpConnector<SsrfResolver>>;

/// A connection's answer to one request: the response head, or the error (with the request
/// handed back if it was never sent).
type Sent = Result<Response<Incoming>, TrySendError<Request<Full<Bytes>>>>;

/// The shared upstream client: one connection pool per host.
pub struct Upstream {
    connector: Connector,
    pools: Arc<Pools>,
    /// Whether the idle sweeper runs (started with the first connection, inside the runtime).
    sweeping: AtomicBool,
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("could not use the upstream CA file {path}: {what}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("could not configure TLS for upstreams")]
    Rustls(#[source] rustls::Error),
}

/// The response body of an upstream answer. Its end (or its drop) gives its HTTP/1.1
/// connection back to the pool; a body that broke takes its connection with it.
pub struct UpstreamBody {
    inner: Incoming,
    /// Boxed: the pipeline moves this body around by value.
    back: Option<Box<GiveBack>>,
}

/// An HTTP/1.1 connection to return to `pool` once its response has been read.
struct GiveBack {
    pool: Arc<Pool>,
    sender: http1::SendRequest<Full<Bytes>>,
}

/// Every host's pool, by scheme and authority (`host:port` as the provider's URL has it).
#[derive(Default)]
struct Pools {
    hosts: Mutex<HashMap<Box<str>, Arc<Pool>>>,
    tls_hosts: Mutex<HashMap<Box<str>, Arc<Pool>>>,
    /// Sweeps done so far: an idle connection remembers the count when it came back.
    sweeps: Arc<AtomicU64>,
}

/// One host's connections.
struct Pool {
    tls: bool,
    /// `host:port` as the provider's URL has it.
    authority: Box<str>,
    /// The `Host` header of its HTTP/1.1 requests, made once: the authority without user
    /// information (which the policy refuses in a URL anyway); `None` if that is not a
    /// valid header value, which fails every request as a connect error.
    host: Option<HeaderValue>,
    idle: Mutex<Idle>,
    /// [`Pools::sweeps`].
    sweeps: Arc<AtomicU64>,
}

#[derive(Default)]
struct Idle {
    /// Idle HTTP/1.1 connections and the sweep count when each came back; the newest last.
    h1: Vec<(http1::SendRequest<Full<Bytes>>, u64)>,
    /// The shared HTTP/2 connection and the sweep count when it was last used.
    h2: Option<(http2::SendRequest<Full<Bytes>>, u64)>,
}

/// A connection ready for one request.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

// === impl Upstream ===

impl Upstream {
    /// A client trusting the public roots and, if given, the CAs in `extra_ca` (PEM).
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, TlsSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let problem = |what: String| TlsSetupError::CaFile {
                path: path.display().to_string(),
                what,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| problem(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| problem(e.to_string()))?;
            if certs.is_empty() {
                return Err(problem("it holds no PEM certificate".to_owned()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| problem(format!("a certificate is not usable: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Rustls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: connector(tls),
            pools: Arc::default(),
            sweeping: AtomicBool::new(false),
        })
    }

    /// Sends `request` (its URI absolute). Taking a pooled connection or making one (TCP,
    /// TLS, handshake) may take `connect`; once the request is handed to a connection, the
    /// response head must arrive within `first_byte`.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
        connect: Duration,
        first_byte: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        let uri = request.uri();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UpstreamFailure::Connect),
        };
        let authority = uri.authority().ok_or(UpstreamFailure::Connect)?.as_str();
        let pool = self.pools.pool(tls, authority);
        let mut reused_tries = 0;
        loop {
            let pooled = if reused_tries < REUSE_RETRIES {
                pool.take()
            } else {
                None
            };
            let (sender, reused) = match pooled {
                Some(sender) => (sender, true),
                // Boxed: a connect's future is large, and the pipeline's future, which
                // hyper moves per request, would otherwise hold it inline.
                _ => match tokio::time::timeout(connect, Box::pin(self.open(&pool))).await {
                    Ok(opened) => (opened?, false),
                    Err(_) => return Err(UpstreamFailure::Timeout),
                },
            };
            let (sent, back) = match sender {
                Sender::H1(mut sender) => {
                    pool.http1_form(&mut request)?;
                    let sent = head(first_byte, sender.try_send_request(request)).await?;
                    (sent, Some(sender))
                }
                Sender::H2(mut sender) => {
                    pool.http2_form(&mut request)?;
                    (
                        head(first_byte, sender.try_send_request(request)).await?,
                        None,
                    )
                }
            };
            let mut unsent = match sent {
                Ok(response) => {
                    let back = back.map(|sender| Box::new(GiveBack { pool, sender }));
                    return Ok(response.map(|inner| UpstreamBody { inner, back }));
                }
                Err(error) => error,
            };
            // A request handed back was not sent at all: when the connection was a pooled
            // one that closed first, it is sent again; on a new one, nothing was sent, so
            // it is a connect failure. Anything else may have reached the upstream.
            request = match unsent.take_message() {
                Some(again) if reused => again,
                Some(_) => return Err(UpstreamFailure::Connect),
                None => return Err(UpstreamFailure::Broken),
            };
            reused_tries += 1;
        }
    }

    /// A new connection to `pool`'s host: HTTP/2 if TLS negotiated it, else HTTP/1.1. An
    /// HTTP/2 connection goes into the pool at once, for every request to share.
    async fn open(&self, pool: &Arc<Pool>) -> Result<Sender, UpstreamFailure> {
        self.start_sweeping();
        let uri = pool.root()?;
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|error| classify(&*error))?;
        let io = connector
            .call(uri)
            .await
            .map_err(|error| classify(&*error))?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // A connection that dies silently (no reset) is found out while requests
                // use it, rather than after the kernel's retransmissions give up.
                .keep_alive_interval(H2_PING_EVERY)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .handshake(io)
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            pool.share_h2(sender.clone());
            Ok(Sender::H2(sender))
        } else {
            // A request's head and a small body go out in one `send` (`joined`).
            let (sender, connection) = http1::handshake(Joined(io))
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    /// Starts the task that closes connections idle too long, once.
    fn start_sweeping(&self) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pools = Arc::downgrade(&self.pools);
        tokio::spawn(sweep(pools));
    }
}

/// What a connection answered, if its head came within `first_byte`.
async fn head(
    first_byte: Duration,
    answer: impl Future<Output = Sent>,
) -> Result<Sent, UpstreamFailure> {
    tokio::time::timeout(first_byte, answer)
        .await
        .map_err(|_| UpstreamFailure::Timeout)
}

/// Sweeps the pools every [`SWEEP_EVERY`] ([`Pools::sweep`]) until the client is gone.
async fn sweep(pools: Weak<Pools>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pools) = pools.upgrade() else { return };
        pools.sweep();
    }
}

fn connector(tls: ClientConfig) -> Connector {
    let mut http = HttpConnector::new_with_resolver(SsrfResolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// What a connect error means: the SSRF guard's refusal, or any other failure to connect
/// (refused, reset, TLS, DNS), which may fall back since nothing was sent.
fn classify(error: &(dyn std::error::Error + 'static)) -> UpstreamFailure {
    let mut source = Some(error);
    while let Some(cause) = source {
        let refused = cause.is::<connect::Refused>()
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<connect::Refused>());
        if refused {
            return UpstreamFailure::AddressRefused;
        }
        source = cause.source();
    }
    UpstreamFailure::Connect
}

// === impl Pools ===

impl Pools {
    /// One sweep: closes the connections idle for [`IDLE_SWEEPS`] sweeps or closed by their
    /// upstream, and forgets hosts with nothing pooled that no request is using (a provider
    /// a new policy no longer names).
    fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let fresh = |since: u64| now.saturating_sub(since) < IDLE_SWEEPS;
        for hosts in [&self.hosts, &self.tls_hosts] {
            let mut hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
            hosts.retain(|_, pool| {
                let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.h1
                    .retain(|(sender, since)| !sender.is_closed() && fresh(*since));
                if idle
                    .h2
                    .as_ref()
                    .is_some_and(|(sender, since)| sender.is_closed() || !fresh(*since))
                {
                    idle.h2 = None;
                }
                !idle.h1.is_empty() || idle.h2.is_some() || Arc::strong_count(pool) > 1
            });
        }
    }

    /// The pool for `authority` over TLS or not, made on first use.
    fn pool(self: &Arc<Self>, tls: bool, authority: &str) -> Arc<Pool> {
        let hosts = if tls { &self.tls_hosts } else { &self.hosts };
        let mut hosts = hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = hosts.get(authority) {
            return Arc::clone(pool);
        }
        let pool = Arc::new(Pool::new(tls, authority, Arc::clone(&self.sweeps)));
        hosts.insert(authority.into(), Arc::clone(&pool));
        pool
    }
}

// === impl Pool ===

impl Pool {
    fn new(tls: bool, authority: &str, sweeps: Arc<AtomicU64>) -> Self {
        let host = authority.rsplit('@').next().unwrap_or(authority);
        Self {
            tls,
            authority: authority.into(),
            host: HeaderValue::from_str(host).ok(),
            idle: Mutex::default(),
            sweeps,
        }
    }

    /// `scheme://authority/`: what the connector is asked to connect to.
    fn root(&self) -> Result<Uri, UpstreamFailure> {
        Uri::builder()
            .scheme(self.scheme())
            .authority(&*self.authority)
            .path_and_query("/")
            .build()
            .map_err(|_| UpstreamFailure::Connect)
    }

    fn scheme(&self) -> Scheme {
        if self.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    /// Makes `request` what HTTP/1.1 sends: the path alone, and a `Host` header. (A request
    /// sent again already is.)
    fn http1_form(&self, request: &mut Request<Full<Bytes>>) -> Result<(), UpstreamFailure> {
        if request.uri().scheme().is_none() {
            return Ok(());
        }
        let host = self.host.clone().ok_or(UpstreamFailure::Connect)?;
        let mut parts = Parts::default();
        parts.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() = Uri::from_parts(parts).map_err(|_| UpstreamFailure::Connect)?;
        request.headers_mut().insert(header::HOST, host);
        Ok(())
    }

    /// Makes `request` what HTTP/2 sends: the absolute URI (its `:scheme`, `:authority`
    /// and `:path`) and no `Host` header. (Only a request first tried over HTTP/1.1 needs
    /// the change.)
    fn http2_form(&self, request: &mut Request<Full<Bytes>>) -> Result<(), UpstreamFailure> {
        if request.uri().scheme().is_some() {
            return Ok(());
        }
        let mut parts = Parts::default();
        parts.scheme = Some(self.scheme());
        parts.authority = Some(
            http::uri::Authority::try_from(&*self.authority)
                .map_err(|_| UpstreamFailure::Connect)?,
        );
        parts.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() = Uri::from_parts(parts).map_err(|_| UpstreamFailure::Connect)?;
        request.headers_mut().remove(header::HOST);
        Ok(())
    }

    /// A pooled connection ready for a request: the shared HTTP/2 one, or the newest idle
    /// HTTP/1.1 one. Closed ones are dropped; one still finishing its last response stays.
    fn take(&self) -> Option<Sender> {
        let now = self.sweeps.load(Ordering::Relaxed);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((sender, used)) = &mut idle.h2 {
            if sender.is_ready() {
                *used = now;
                return Some(Sender::H2(sender.clone()));
            }
            idle.h2 = None;
        }
        // Newest first. A removal swaps in the last entry, which was already looked at.
        for at in (0..idle.h1.len()).rev() {
            let Some((sender, _)) = idle.h1.get(at) else {
                continue;
            };
            if sender.is_ready() {
                return Some(Sender::H1(idle.h1.swap_remove(at).0));
            }
            if sender.is_closed() {
                idle.h1.swap_remove(at);
            }
        }
        None
    }

    /// Shares a new HTTP/2 connection (replacing a previous one, which closes once its
    /// requests end).
    fn share_h2(&self, sender: http2::SendRequest<Full<Bytes>>) {
        let now = self.sweeps.load(Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).h2 = Some((sender, now));
    }

    /// Takes back an HTTP/1.1 connection whose response has been read.
    fn put(&self, sender: http1::SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let now = self.sweeps.load(Ordering::Relaxed);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.h1.len() < MAX_IDLE_PER_HOST {
            idle.h1.push((sender, now));
        }
    }
}

// === impl UpstreamBody ===

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(back) = self.back.take() {
            back.pool.put(back.sender);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.give_back(),
            // A broken body leaves a connection that cannot be used again.
            Some(Err(_)) => self.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    /// Gives the connection back even if its answer was not read to the end (an error
    /// answer krouter does not relay): hyper then drains what is left of the body if it has
    /// already arrived, or closes the connection. [`Pool::take`] only hands out a
    /// connection hyper says is ready for a new request, which it is only once the last
    /// response has been read off it whole; until then it waits in the pool.
    fn drop(&mut self) {
        self.give_back();
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 sender over an in-memory pipe, its connection running, ready; and the
    /// upstream's end of the pipe, which closes the connection when dropped.
    async fn sender() -> (http1::SendRequest<Full<Bytes>>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut sender, connection) = http1::handshake(hyper_util::rt::TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender.ready().await.unwrap();
        (sender, theirs)
    }

    fn idle_count(pools: &Pools, authority: &str) -> Option<usize> {
        let hosts = pools.hosts.lock().unwrap();
        let pool = hosts.get(authority)?;
        Some(pool.idle.lock().unwrap().h1.len())
    }

    #[tokio::test]
    async fn a_connection_put_back_is_taken_again_and_swept_when_idle_too_long() {
        let pools = Arc::new(Pools::default());
        let pool = pools.pool(false, "upstream.test:80");
        assert!(pool.take().is_none(), "an empty pool");
        let (first, _first_upstream) = sender().await;
        pool.put(first);
        assert!(
            matches!(pool.take(), Some(Sender::H1(_))),
            "the connection put back"
        );
        assert!(pool.take().is_none(), "taken once");

        let (second, _second_upstream) = sender().await;
        pool.put(second);
        for _ in 1..IDLE_SWEEPS {
            pools.sweep();
        }
        assert_eq!(
            idle_count(&pools, "upstream.test:80"),
            Some(1),
            "idle, not yet too long"
        );
        pools.sweep();
        assert_eq!(
            idle_count(&pools, "upstream.test:80"),
            Some(0),
            "idle too long: closed"
        );

        drop(pool);
        pools.sweep();
        assert_eq!(
            idle_count(&pools, "upstream.test:80"),
            None,
            "an unused host is forgotten"
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_never_handed_out() {
        let pools = Arc::new(Pools::default());
        let pool = pools.pool(false, "upstream.test:80");
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut closing, connection) = http1::handshake(hyper_util::rt::TokioIo::new(ours))
            .await
            .unwrap();
        // Awaited below: the connection ends when the upstream hangs up.
        let task = tokio::spawn(connection);
        closing.ready().await.unwrap();
        pool.put(closing);
        // The upstream hangs up: the connection task ends and the sender reports closed.
        drop(theirs);
        let _ = task.await;
        assert!(pool.take().is_none());
        assert_eq!(idle_count(&pools, "upstream.test:80"), Some(0));
    }

    #[tokio::test]
    async fn a_request_a_pooled_connection_closed_before_taking_is_sent_on_another() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let upstream = Upstream::new(None).unwrap();
        let pool = upstream.pools.pool(false, "upstream.test:80");
        // The older connection answers; the newer one, taken first, has been closed by its
        // upstream (a keep-alive timeout) just before the request comes.
        let (alive, mut server) = sender().await;
        pool.put(alive);
        let (closed, hung_up) = sender().await;
        pool.put(closed);
        drop(hung_up);
        let answer = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request never came");
                head.extend_from_slice(&buf[..n]);
            }
            server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = "http://upstream.test:80/v1/models".parse().unwrap();
        let response = upstream
            .send(request, Duration::from_secs(5), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let head = answer.await.unwrap();
        assert!(head.starts_with("GET /v1/models HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("host: upstream.test:80\r\n"), "{head}");
    }

    #[test]
    fn requests_take_the_form_each_protocol_sends() {
        let pool = Pool::new(true, "api.example.test:8443", Arc::default());
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = "https://api.example.test:8443/v1/chat?beta=true"
            .parse()
            .unwrap();
        pool.http1_form(&mut request).unwrap();
        assert_eq!(request.uri(), "/v1/chat?beta=true");
        assert_eq!(request.headers()[header::HOST], "api.example.test:8443");
        // Handed back unsent and retried over HTTP/2: absolute again, without `Host`.
        pool.http2_form(&mut request).unwrap();
        assert_eq!(
            request.uri(),
            "https://api.example.test:8443/v1/chat?beta=true"
        );
        assert!(request.headers().get(header::HOST).is_none());
        assert_eq!(pool.root().unwrap(), "https://api.example.test:8443/");
    }
}
