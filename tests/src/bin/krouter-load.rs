//! `krouter-load`: the HTTP/1.1 load generator of the proxy benchmark (`tests/bench/proxy.sh`).
//!
//! Opens `--connections N` keep-alive connections to `--url` and sends the same request on
//! each, back to back (a closed loop: a connection sends its next request when the previous
//! answer has been read to the end), for `--warmup` plus `--duration`. Only requests that start
//! after the warm-up and finish before the end count towards the latency and rate figures;
//! `total_requests` counts every request that completed, warm-up included, for dividing the
//! proxy's CPU time by.
//!
//! With `--sse` it also times the first server-sent event with content: from sending the
//! request to the first body chunk that holds a non-empty `"content":"..."` (the role-only
//! chunk an OpenAI stream opens with does not count: krouter holds a stream until its first
//! content, so that is what a client waits for either way).
//!
//! Prints one flat JSON object on stdout:
//! `{"connections":N,"duration_s":..,"requests":..,"total_requests":..,"errors":..,"rps":..,
//! "p50_us":..,"p90_us":..,"p99_us":..,"max_us":..}` and with `--sse` also `ttfe_p50_us`,
//! `ttfe_p90_us`, `ttfe_p99_us`; `first_error` when there were errors. Exit codes: 0 after a
//! run (even with errors), 1 when no request succeeded, 64 for bad arguments.
//!
//! With `--rate R` the connections share a schedule of R requests per second (each connection
//! sends one request every `connections / R` seconds, the connections evenly staggered; a
//! connection whose answer comes late sends its next request at once, and never skips one), so
//! two proxies can be compared doing the same work at the same pace, neither of them the
//! bottleneck. Latencies are then still from sending to the end of the answer. tokio's timer
//! ticks once a millisecond, so at high rates the requests due within one tick go out together.
//!
//! It runs on one thread (a current-thread runtime), so pinning it to a core pins all of it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const USAGE: &str = "\
usage: krouter-load --url http://HOST:PORT/PATH [options]
  --connections N     concurrent keep-alive HTTP/1.1 connections (default 1)
  --duration D        measured time, e.g. 10s, 500ms, 2.5 (seconds) (default 10s)
  --warmup D          time before measuring, not counted (default 1s)
  --header 'K: V'     a request header; repeatable
  --body TEXT         the request body (POST; content-type application/json unless given)
  --method M          the request method (default POST with a body, GET without)
  --sse               also time the first server-sent event with content (a non-empty \"content\")
  --timeout D         one request's limit; a request over it is an error (default 30s)
  --rate R            R requests per second over all connections, paced (default: back to back)";

/// What to send and for how long.
struct Options {
    addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    sse: bool,
    timeout: Duration,
    /// Requests per second over all connections; `None`: back to back.
    rate: Option<f64>,
}

/// What one connection saw.
#[derive(Default)]
struct Stats {
    /// Latencies of the measured requests, µs.
    latency: Vec<u32>,
    /// Times to first event of the measured requests, µs (`--sse`).
    ttfe: Vec<u32>,
    /// Every completed request, warm-up included.
    total: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Stats {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

/// How one request went.
enum Outcome {
    /// A 2xx answer read to the end; the time to the first event when asked for.
    Done(Option<Duration>),
    /// An answer that is not a success, or an SSE answer without an event; the connection
    /// is still usable.
    Bad(String),
    /// The connection failed; open a new one.
    Broken(String),
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("krouter-load: {problem}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("krouter-load: the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = Rc::new(options);
    let local = tokio::task::LocalSet::new();
    let stats = local.block_on(&runtime, run(Rc::clone(&options)));
    let (line, succeeded) = report(&options, stats);
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs every connection until the end and gathers what they saw.
async fn run(options: Rc<Options>) -> Vec<Stats> {
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let until = measure_from + options.duration;
    let tasks: Vec<_> = (0..options.connections)
        .map(|i| {
            let pace = options
                .rate
                .map(|rate| Pace::new(start, i, options.connections, rate));
            tokio::task::spawn_local(connection(Rc::clone(&options), pace, measure_from, until))
        })
        .collect();
    let mut all = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(stats) => all.push(stats),
            Err(error) => {
                let mut stats = Stats::default();
                stats.error(format!("a connection task failed: {error}"));
                all.push(stats);
            }
        }
    }
    all
}

/// One connection's share of a `--rate` schedule.
struct Pace {
    /// When this connection's next request is due.
    next: Instant,
    /// The time between two of its requests.
    period: Duration,
}

impl Pace {
    /// Connection `i` of `connections` at `rate` requests per second in all: one request
    /// every `connections / rate` seconds, starting `i / rate` seconds after `start`.
    fn new(start: Instant, i: usize, connections: usize, rate: f64) -> Self {
        #[allow(clippy::cast_precision_loss)] // connection counts are far below 2^52
        let (i, connections) = (i as f64, connections as f64);
        Self {
            next: start + Duration::from_secs_f64(i / rate),
            period: Duration::from_secs_f64(connections / rate),
        }
    }

    /// Waits until the next request is due (not at all when it is late), and books the one
    /// after it.
    async fn wait(&mut self) {
        tokio::time::sleep_until(self.next.into()).await;
        self.next += self.period;
    }
}

/// One connection's loop: connect, send requests back to back (or as `pace` says), reconnect
/// when it breaks.
async fn connection(
    options: Rc<Options>,
    mut pace: Option<Pace>,
    measure_from: Instant,
    until: Instant,
) -> Stats {
    let mut stats = Stats::default();
    'connect: while Instant::now() < until {
        let stream = match TcpStream::connect(options.addr).await {
            Ok(stream) => stream,
            Err(error) => {
                stats.error(format!("connect {}: {error}", options.addr));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(error) => {
                    stats.error(format!("handshake: {error}"));
                    continue;
                }
            };
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        loop {
            if Instant::now() >= until {
                break 'connect;
            }
            if let Err(error) = sender.ready().await {
                stats.error(format!("connection closed: {error}"));
                continue 'connect;
            }
            if let Some(pace) = pace.as_mut() {
                pace.wait().await;
                if Instant::now() >= until {
                    break 'connect;
                }
            }
            let request = build(&options);
            let sent = Instant::now();
            let outcome = match tokio::time::timeout(
                options.timeout,
                exchange(&mut sender, request, options.sse, sent),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    Outcome::Broken(format!("no complete answer within {:?}", options.timeout))
                }
            };
            let done = Instant::now();
            match outcome {
                Outcome::Done(ttfe) => {
                    stats.total += 1;
                    if sent >= measure_from && done <= until {
                        stats.latency.push(micros(done - sent));
                        if let Some(ttfe) = ttfe {
                            stats.ttfe.push(micros(ttfe));
                        }
                    }
                }
                Outcome::Bad(what) => stats.error(what),
                Outcome::Broken(what) => {
                    stats.error(what);
                    continue 'connect;
                }
            }
        }
    }
    stats
}

/// The request, built afresh each time (a request is consumed by sending it).
fn build(options: &Options) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(options.body.clone()));
    *request.method_mut() = options.method.clone();
    *request.uri_mut() = options.path.clone();
    let headers = request.headers_mut();
    headers.insert(HOST, options.host.clone());
    if !options.body.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in &options.headers {
        headers.insert(name.clone(), value.clone());
    }
    request
}

/// Sends one request and reads the answer to the end.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    sse: bool,
    sent: Instant,
) -> Outcome {
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => return Outcome::Broken(format!("request: {error}")),
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut ttfe = None;
    // The end of the previous chunk, in case the content marker straddles two chunks.
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => return Outcome::Broken(format!("body: {error}")),
        };
        if let Some(data) = frame.data_ref()
            && sse
            && ttfe.is_none()
        {
            tail.extend_from_slice(data);
            if content_begins(&tail) {
                ttfe = Some(sent.elapsed());
            } else {
                let keep = tail.len().saturating_sub(CONTENT.len());
                tail.drain(..keep);
            }
        }
    }
    if !status.is_success() {
        return Outcome::Bad(format!("status {status}"));
    }
    if sse && ttfe.is_none() {
        return Outcome::Bad("an answer without a server-sent event".to_owned());
    }
    Outcome::Done(ttfe)
}

/// What opens a content delta in an OpenAI stream chunk.
const CONTENT: &[u8] = b"\"content\":\"";

/// Whether `bytes` hold a content delta with at least one character.
fn content_begins(bytes: &[u8]) -> bool {
    bytes
        .windows(CONTENT.len() + 1)
        .any(|window| window.starts_with(CONTENT) && window.last() != Some(&b'"'))
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// The JSON line, and whether any request succeeded.
fn report(options: &Options, all: Vec<Stats>) -> (String, bool) {
    let mut latency = Vec::new();
    let mut ttfe = Vec::new();
    let mut total = 0;
    let mut errors = 0;
    let mut first_error = None;
    for stats in all {
        latency.extend(stats.latency);
        ttfe.extend(stats.ttfe);
        total += stats.total;
        errors += stats.errors;
        if first_error.is_none() {
            first_error = stats.first_error;
        }
    }
    latency.sort_unstable();
    ttfe.sort_unstable();
    let seconds = options.duration.as_secs_f64();
    let requests = latency.len();
    #[allow(clippy::cast_precision_loss)] // request counts are far below 2^52
    let rps = requests as f64 / seconds;
    let mut line = serde_json::Map::new();
    let mut put = |key: &str, value: serde_json::Value| {
        line.insert(key.to_owned(), value);
    };
    put("connections", options.connections.into());
    put("duration_s", seconds.into());
    put("requests", requests.into());
    put("total_requests", total.into());
    put("errors", errors.into());
    put("rps", ((rps * 10.0).round() / 10.0).into());
    for (name, p) in [
        ("p50_us", 50),
        ("p90_us", 90),
        ("p99_us", 99),
        ("max_us", 100),
    ] {
        put(name, percentile(&latency, p).into());
    }
    if options.sse {
        for (name, p) in [
            ("ttfe_p50_us", 50),
            ("ttfe_p90_us", 90),
            ("ttfe_p99_us", 99),
        ] {
            put(name, percentile(&ttfe, p).into());
        }
    }
    if let Some(what) = first_error {
        put("first_error", what.into());
    }
    (
        serde_json::Value::Object(line).to_string(),
        requests > 0 || total > 0,
    )
}

/// The nearest-rank `p`th percentile of sorted `values`; 0 when there are none.
fn percentile(values: &[u32], p: usize) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let rank = (values.len() * p).div_ceil(100).max(1);
    values.get(rank - 1).copied().unwrap_or(0)
}

/// The options from the arguments; `None` when help was asked for.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut url = None;
    let mut connections = 1;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::from_secs(1);
    let mut headers = Vec::new();
    let mut body = None;
    let mut method = None;
    let mut sse = false;
    let mut timeout = Duration::from_secs(30);
    let mut rate = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--sse" => sse = true,
            "--url" => url = Some(value("--url")?),
            "--connections" | "-c" => {
                let text = value("--connections")?;
                connections = text
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or_else(|| format!("--connections {text:?} is not a number from 1"))?;
            }
            "--duration" | "-d" => duration = parse_duration(&value("--duration")?)?,
            "--warmup" => warmup = parse_duration(&value("--warmup")?)?,
            "--timeout" => timeout = parse_duration(&value("--timeout")?)?,
            "--header" | "-H" => {
                let text = value("--header")?;
                let (name, val) = text
                    .split_once(':')
                    .ok_or_else(|| format!("--header {text:?} is not 'Name: value'"))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| format!("--header {text:?}: a bad name"))?;
                let val = HeaderValue::from_str(val.trim())
                    .map_err(|_| format!("--header {text:?}: a bad value"))?;
                headers.push((name, val));
            }
            "--rate" => {
                let text = value("--rate")?;
                rate = Some(
                    text.parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && (1.0..=10_000_000.0).contains(r))
                        .ok_or_else(|| {
                            format!("--rate {text:?} is not a number of requests per second from 1")
                        })?,
                );
            }
            "--body" => body = Some(value("--body")?),
            "--method" => {
                let text = value("--method")?;
                method = Some(
                    Method::from_bytes(text.as_bytes())
                        .map_err(|_| format!("--method {text:?} is not a method"))?,
                );
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    if duration.is_zero() {
        return Err("--duration must be more than zero".to_owned());
    }
    let url = url.ok_or_else(|| "--url is required".to_owned())?;
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("--url {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url {url:?}: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse()
            .map_err(|_| format!("--url {url:?}: the host must be an IP address or localhost"))?
    };
    let path: Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| format!("--url {url:?}: a bad path"))?;
    let host_header = HeaderValue::from_str(authority.as_str())
        .map_err(|_| format!("--url {url:?}: a bad host"))?;
    let body = Bytes::from(body.unwrap_or_default());
    let method = method.unwrap_or(if body.is_empty() {
        Method::GET
    } else {
        Method::POST
    });
    Ok(Some(Options {
        addr: SocketAddr::new(ip, port),
        host: host_header,
        path,
        method,
        headers,
        body,
        connections,
        duration,
        warmup,
        sse,
        timeout,
        rate,
    }))
}

/// `10s`, `500ms`, `2m` or a plain number of seconds such as `2.5`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 10s, 500ms or 2.5");
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn rate_is_parsed_and_bounded() {
        let parsed = parse(args(&["--url", "http://127.0.0.1:1/x", "--rate=2500.5"]));
        let options = parsed.ok().flatten().map(|o| o.rate);
        assert_eq!(options, Some(Some(2500.5)));
        let closed = parse(args(&["--url", "http://127.0.0.1:1/x"]));
        assert_eq!(closed.ok().flatten().map(|o| o.rate), Some(None));
        for bad in ["0", "-5", "NaN", "inf", "fast", "0.5"] {
            let error = parse(args(&["--url", "http://127.0.0.1:1/x", "--rate", bad]))
                .err()
                .unwrap_or_default();
            assert!(error.contains("--rate"), "{bad}: {error:?}");
        }
    }

    #[test]
    fn pace_staggers_connections_over_one_period() {
        let start = Instant::now();
        // 4 connections at 1,000 requests/s: each sends every 4 ms, 1 ms apart.
        let paces: Vec<_> = (0..4).map(|i| Pace::new(start, i, 4, 1000.0)).collect();
        for (i, pace) in paces.iter().enumerate() {
            assert_eq!(pace.period, Duration::from_millis(4));
            let offset = (pace.next - start).as_secs_f64() * 1000.0;
            #[allow(clippy::cast_precision_loss)]
            let want = i as f64;
            assert!((offset - want).abs() < 1e-6, "connection {i}: {offset} ms");
        }
    }

    #[tokio::test]
    async fn pace_books_the_next_request_one_period_later() {
        let start = Instant::now();
        let mut pace = Pace::new(start, 0, 2, 100.0);
        pace.wait().await;
        assert_eq!(pace.next - start, Duration::from_millis(20));
        pace.wait().await;
        assert_eq!(pace.next - start, Duration::from_millis(40));
    }
}
