//! The upstream client: hyper over rustls (ring), pooled keep-alive, HTTP/2 where the
//! provider offers it by ALPN, public roots plus an optional extra CA, `TCP_NODELAY`, and a
//! resolver that refuses any host whose addresses the SSRF guard refuses ([`connect`]).
//! Redirects are never followed: hyper's client does not follow them, and the forward stage
//! treats a 3xx as the final answer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

pub mod connect;

use crate::error::UpstreamFailure;
use connect::SsrfResolver;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

type HyperClient = Client<HttpsConnector<HttpConnector<SsrfResolver>>, Full<Bytes>>;

/// The shared upstream client: one connection pool per connect timeout in use.
pub struct Upstream {
    tls: Arc<ClientConfig>,
    clients: Mutex<HashMap<Duration, HyperClient>>,
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
            tls: Arc::new(tls),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `request`, waiting at most `connect` to connect and `first_byte` after that
    /// for the response head.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        connect: Duration,
        first_byte: Duration,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        let client = self.client(connect);
        match tokio::time::timeout(connect + first_byte, client.request(request)).await {
            Err(_elapsed) => Err(UpstreamFailure::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error)),
        }
    }

    fn client(&self, connect: Duration) -> HyperClient {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(connect)
            .or_insert_with(|| build(Arc::clone(&self.tls), connect))
            .clone()
    }
}

fn build(tls: Arc<ClientConfig>, connect: Duration) -> HyperClient {
    let mut http = HttpConnector::new_with_resolver(SsrfResolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect));
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
fn classify(error: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<connect::Refused>().is_some() {
            return UpstreamFailure::AddressRefused;
        }
        source = cause.source();
    }
    if error.is_connect() {
        UpstreamFailure::Connect
    } else {
        // The connection broke before a response head: as good as unreachable.
        UpstreamFailure::Connect
    }
}
