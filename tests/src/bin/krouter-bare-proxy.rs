//! `krouter-bare-proxy`: the proxy benchmark's floor. It forwards every request to the first
//! provider of the policy in `$KROUTER_HOME/policy/policy.toml` on the same HTTP stack as
//! krouter (tokio on one thread, hyper's HTTP/1.1 server, hyper-util's pooled client, no
//! Nagle), and does nothing else: no key check, no JSON, no limits, no log line, no metadata
//! row. Run as the benchmark's `--baseline`, it says how much of krouter's CPU per request
//! is the stack and how much is krouter's own work. A measuring tool, never a product: it
//! checks nothing, so it listens on loopback only.
//!
//! Started like krouter by `tests/bench/proxy.sh --baseline=DIR` (`DIR/krouter` a link to
//! this binary): `KROUTER_LISTEN` is the address to listen on; it prints krouter's JSON
//! `listening` line with the bound address to standard error.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[expect(
    clippy::disallowed_methods,
    reason = "a measuring tool outside the product: it reads the two variables the benchmark sets for krouter"
)]
fn main() -> Result<(), Failure> {
    let home = std::env::var("KROUTER_HOME").map_err(|_| "KROUTER_HOME is not set")?;
    let policy = std::fs::read_to_string(format!("{home}/policy/policy.toml"))?;
    let authority = upstream_authority(&policy).ok_or("no http:// base_url in the policy")?;
    let listen: SocketAddr = std::env::var("KROUTER_LISTEN")
        .map_err(|_| "KROUTER_LISTEN is not set")?
        .parse()?;
    if !listen.ip().is_loopback() {
        return Err(format!("{listen} is not a loopback address; this tool checks nothing").into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen, authority))
}

/// `host:port` of the first `base_url = "http://host:port/..."` in the policy text.
fn upstream_authority(policy: &str) -> Option<String> {
    let line = policy
        .lines()
        .find(|line| line.trim_start().starts_with("base_url"))?;
    let rest = line.split_once("\"http://")?.1;
    let end = rest.find(['/', '"'])?;
    Some(rest.get(..end)?.to_owned())
}

async fn serve(listen: SocketAddr, authority: String) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "{{\"message\":\"listening\",\"addr\":\"{}\"}}",
        listener.local_addr()?
    );
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let authority: std::sync::Arc<str> = authority.into();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let client = client.clone();
        let authority = std::sync::Arc::clone(&authority);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                forward(client.clone(), std::sync::Arc::clone(&authority), request)
            });
            // A connection's errors end that connection only.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The request, sent on to the upstream with its method, path, query, body and content
/// type; the answer comes back as it is.
async fn forward(
    client: Client<HttpConnector, Incoming>,
    authority: std::sync::Arc<str>,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, Failure> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(format!("http://{authority}{path}"));
    if let Some(kind) = parts.headers.get(hyper::header::CONTENT_TYPE) {
        upstream = upstream.header(hyper::header::CONTENT_TYPE, kind);
    }
    Ok(client.request(upstream.body(body)?).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_is_the_first_http_base_url() {
        let policy = "serial = 2\n[[providers]]\nname = \"a\"\n  base_url = \"http://127.0.0.1:4000/v1\"\n[[providers]]\nbase_url = \"http://127.0.0.1:5000/v1\"\n";
        assert_eq!(
            upstream_authority(policy).as_deref(),
            Some("127.0.0.1:4000")
        );
        assert_eq!(upstream_authority("base_url = \"https://x/v1\""), None);
        assert_eq!(upstream_authority("serial = 1"), None);
    }
}
