//! Log output: `tracing` to standard error, one JSON object per line (default) or
//! human-readable lines, at INFO. Only metadata is ever logged; secrets have no `Display`
//! and redacted `Debug`, so they cannot reach a line by accident.
//!
//! Lines gather in memory and a writer thread sends them to standard error every
//! [`FLUSH_EVERY`] (sooner when [`BUFFER_LIMIT`] fills), so a busy proxy makes one `write`
//! per batch instead of one per request. [`LogGuard`] writes what is left when dropped.
//!
//! The per-request line ([`request`]) is the one line every request writes. In the JSON
//! format it is written straight into that buffer, the same bytes `tracing`'s path writes
//! for it, without a field visitor's dynamic call per field; in the pretty format (and
//! before [`init`]) it goes through `tracing` like every other line.

use std::io::{self, IsTerminal as _, Write as _};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use krouter_config::settings::LogFormat;
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

mod json;

/// Longest a line waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer early.
pub const BUFFER_LIMIT: usize = 64 * 1024;
/// Buffered bytes past which lines are dropped rather than memory grown (a stuck stderr).
const DROP_ABOVE: usize = 16 * 1024 * 1024;

/// Flushes the remaining lines and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Batch>,
    thread: Option<JoinHandle<()>>,
}

/// The buffer shared by every thread that logs and the writer thread.
#[derive(Default)]
struct Batch {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    closed: bool,
}

/// Where [`request`] writes JSON lines itself; set by [`init`] when the JSON format is
/// installed.
static DIRECT: OnceLock<Direct> = OnceLock::new();

/// The sink the installed JSON subscriber writes to.
enum Direct {
    /// The writer thread's buffer.
    Batch(Arc<Batch>),
    /// Standard error, when the writer thread could not start.
    Stderr,
}

/// The fields of the per-request line, in the order the line has them. Every field is
/// metadata; no body or key material has a place here.
pub struct RequestLine<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The client's address.
    pub client: IpAddr,
    /// The endpoint's name, or `-`.
    pub endpoint: &'a str,
    /// The API key's id.
    pub key_id: Option<&'a str>,
    /// The key's group.
    pub group: Option<&'a str>,
    /// The model the client named.
    pub model: Option<&'a str>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The provider that answered (or was tried last).
    pub provider: Option<&'a str>,
    /// The provider's name for the model.
    pub upstream_model: Option<&'a str>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The status the client got.
    pub status: u16,
    /// Time from request to the response's end.
    pub latency_ms: u64,
    /// Time to the response's first byte.
    pub ttfb_ms: Option<u64>,
    /// Input tokens.
    pub tokens_in: Option<u64>,
    /// Output tokens.
    pub tokens_out: Option<u64>,
    /// Why the request was refused, as the client was told.
    pub rejected: Option<&'a str>,
    /// Whose fault a refusal was.
    pub origin: Option<&'static str>,
    /// Why a response ended early.
    pub cut_short: Option<&'static str>,
}

/// Logs the per-request line at INFO (see the module's doc).
pub fn request(line: &RequestLine<'_>) {
    match DIRECT.get() {
        Some(direct) => {
            let mut text = String::with_capacity(LINE_CAPACITY);
            json::request_line(&mut text, line);
            let bytes = text.as_bytes();
            // Nowhere to report a failed write to standard error.
            let _ = match direct {
                Direct::Batch(batch) => Append(batch).write_all(bytes),
                Direct::Stderr => io::stderr().lock().write_all(bytes),
            };
        }
        None => tracing::info!(
            request_id = line.request_id,
            client = IpText::new(line.client).as_str(),
            endpoint = line.endpoint,
            key_id = line.key_id,
            group = line.group,
            model = line.model,
            stream = line.stream,
            provider = line.provider,
            upstream_model = line.upstream_model,
            attempts = line.attempts,
            status = line.status,
            latency_ms = line.latency_ms,
            ttfb_ms = line.ttfb_ms,
            tokens_in = line.tokens_in,
            tokens_out = line.tokens_out,
            rejected = line.rejected,
            origin = line.origin,
            cut_short = line.cut_short,
            "request"
        ),
    }
}

/// Room reserved for a request line: most fit without growing.
const LINE_CAPACITY: usize = 512;

/// The `MakeWriter` handed to `tracing_subscriber`.
#[derive(Clone)]
struct Batched(Arc<Batch>);

/// One event's writer: appends to the shared buffer.
struct Append<'a>(&'a Batch);

/// Installs the global subscriber (a second call installs nothing). Keep the guard until
/// the end: dropping it writes the remaining lines.
pub fn init(format: LogFormat) -> LogGuard {
    let shared = Arc::new(Batch::default());
    let thread = std::thread::Builder::new()
        .name("krouter-log".to_owned())
        .spawn({
            let shared = Arc::clone(&shared);
            move || write_loop(&shared)
        })
        .ok();
    // Without the writer thread, lines go straight to standard error.
    let writer = thread.as_ref().map(|_| Batched(Arc::clone(&shared)));
    let builder = tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .with_target(false);
    let _installed = match (format, writer) {
        (LogFormat::Json, Some(writer)) => builder
            .with_writer(writer)
            .event_format(json::JsonLine)
            .try_init()
            .map(|()| {
                let _first = DIRECT.set(Direct::Batch(Arc::clone(&shared)));
            }),
        (LogFormat::Json, None) => builder
            .with_writer(io::stderr)
            .event_format(json::JsonLine)
            .try_init()
            .map(|()| {
                let _first = DIRECT.set(Direct::Stderr);
            }),
        (LogFormat::Pretty, Some(writer)) => builder
            .with_writer(writer)
            .with_ansi(io::stderr().is_terminal())
            .try_init(),
        (LogFormat::Pretty, None) => builder
            .with_writer(io::stderr)
            .with_ansi(io::stderr().is_terminal())
            .try_init(),
    };
    LogGuard { shared, thread }
}

fn write_loop(shared: &Batch) {
    let mut taken = Vec::new();
    loop {
        let closed = {
            let state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut state, _timeout) = shared
                .wake
                .wait_timeout_while(state, FLUSH_EVERY, |s| {
                    !s.closed && s.lines.len() < BUFFER_LIMIT
                })
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut taken, &mut state.lines);
            state.closed
        };
        if !taken.is_empty() {
            let mut stderr = io::stderr().lock();
            // Nowhere to report a failed write to standard error.
            let _ = stderr.write_all(&taken);
            let _ = stderr.flush();
            taken.clear();
            // A burst must not leave a large buffer behind for the life of the process.
            taken.shrink_to(BUFFER_LIMIT);
        }
        if closed {
            return;
        }
    }
}

/// An IP address as log text, written without `fmt`'s padding machinery: an IPv4
/// address's `Display` costs more than the rest of a request line's numbers together.
pub struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    /// The text of `ip`, as its `Display` writes it.
    pub fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 46],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b".");
                    }
                    text.push(itoa::Buffer::new().format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                let mut rest = &mut text.buf[..];
                // At most 45 bytes ("ffff:…:255.255.255.255"); the buffer holds 46.
                if write!(rest, "{v6}").is_ok() {
                    text.len = 46 - rest.len();
                }
            }
        }
        text
    }

    fn push(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or("-")
    }
}

// === impl LogGuard ===

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// === impl Batched ===

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Append<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Append(&self.0)
    }
}

impl io::Write for Append<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            drop(state);
            return io::stderr().lock().write(bytes);
        }
        if state.lines.len() + bytes.len() <= DROP_ABOVE {
            state.lines.extend_from_slice(bytes);
        }
        if state.lines.len() >= BUFFER_LIMIT {
            self.0.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::IpText;
    use std::net::IpAddr;

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.3.40",
            "::1",
            "::",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }
}
