//! The upstream client: hyper over rustls (ring), pooled keep-alive, HTTP/2 where the
//! provider offers it by ALPN, public roots plus an optional extra CA, `TCP_NODELAY`, and a
//! resolver that refuses any host whose addresses the SSRF guard refuses ([`connect`]).
//! Redirects are never followed: hyper's client does not follow them, and the forward stage
//! treats a 3xx as the final answer.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::sync::oneshot;

pub mod connect;

use crate::error::UpstreamFailure;
use connect::SsrfResolver;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The longest connect any policy may ask for (`connect_timeout_ms` is at most 120 s).
const MAX_CONNECT: Duration = Duration::from_secs(120);

type HyperClient = Client<HttpsConnector<HttpConnector<SsrfResolver>>, SignalBody>;

/// The shared upstream client: one connection pool for every provider.
pub struct Upstream {
    client: HyperClient,
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
            client: build(Arc::new(tls)),
        })
    }

    /// Sends `request`. The connect phase (pool checkout, TCP, TLS) may take `connect`;
    /// once hyper starts writing the request, the response head must arrive within
    /// `first_byte`.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        connect: Duration,
        first_byte: Duration,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        let (started, connected) = oneshot::channel();
        let request = request.map(|inner| SignalBody {
            inner,
            started: Some(started),
        });
        let response = self.client.request(request);
        let clock = async {
            if tokio::time::timeout(connect, connected).await.is_err() {
                return UpstreamFailure::Timeout;
            }
            tokio::time::sleep(first_byte).await;
            UpstreamFailure::Timeout
        };
        tokio::select! {
            biased;
            result = response => result.map_err(|error| classify(&error)),
            failure = clock => Err(failure),
        }
    }
}

/// The request body, telling [`Upstream::send`] when hyper first polls it: the moment a
/// connection is ready and the request is being written.
struct SignalBody {
    inner: Full<Bytes>,
    started: Option<oneshot::Sender<()>>,
}

impl http_body::Body for SignalBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(started) = self.started.take() {
            let _ = started.send(());
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn build(tls: Arc<ClientConfig>) -> HyperClient {
    let mut http = HttpConnector::new_with_resolver(SsrfResolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    // Each request's own connect timeout is enforced by `send`; this only bounds a connect
    // that outlives its request (hyper finishes it to pool the connection).
    http.set_connect_timeout(Some(MAX_CONNECT));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

/// What a client error means for the attempt.
/// A connect error (nothing was sent) may fall back; any other error may have come after
/// the request reached the upstream, so it is final ([`UpstreamFailure::Broken`]). hyper
/// itself re-sends a request that a pooled connection closed before taking it.
fn classify(error: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
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
    if error.is_connect() {
        UpstreamFailure::Connect
    } else {
        UpstreamFailure::Broken
    }
}
