//! A small blocking HTTP/1.1 (and HTTP/2) client for the tests: one connection per request, every
//! header and body byte kept, and the arrival time of each body chunk (to see that a
//! stream is relayed as it is produced, not buffered).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;

/// What came back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8).
    pub body: String,
    /// When each body chunk arrived, from the moment the request was sent.
    pub chunk_times: Vec<Duration>,
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method url` with `headers` and `body`; panics if no response arrives in 30 s.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    within_30s(exchange(method, url, headers, body))
}

/// Runs one exchange on its own runtime; panics if no response arrives in 30 s.
fn within_30s(exchange: impl Future<Output = Reply>) -> Reply {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("a response within 30 s")
    })
}

/// `POST url` with a JSON body and a bearer key (if any).
pub fn post(url: &str, key: Option<&str>, body: &str) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = auth.as_deref() {
        headers.push(("authorization", auth));
    }
    send("POST", url, &headers, body)
}

async fn exchange(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let uri: hyper::Uri = url.parse().expect("a URL");
    let authority = uri.authority().expect("an authority").to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a request");
    let sent = Instant::now();
    let response = sender.send_request(request).await.expect("a response");
    read_reply(response, sent).await
}

/// Reads a response to the end, timing each body chunk from `sent`.
async fn read_reply(response: hyper::Response<hyper::body::Incoming>, sent: Instant) -> Reply {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let mut chunk_times = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            chunk_times.push(sent.elapsed());
            bytes.extend_from_slice(data);
        }
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        chunk_times,
    }
}

/// Like [`send`], over HTTP/2 with prior knowledge (h2c), as a client that knows the server
/// speaks HTTP/2 would.
pub fn send_h2(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    within_30s(exchange_h2(method, url, headers, body))
}

async fn exchange_h2(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let uri: hyper::Uri = url.parse().expect("a URL");
    let authority = uri.authority().expect("an authority").to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a request");
    let sent = Instant::now();
    let response = sender.send_request(request).await.expect("a response");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    read_reply(response, sent).await
}
