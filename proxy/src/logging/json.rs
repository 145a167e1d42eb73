//! krouter's JSON log line: `{"timestamp":…,"level":…,"message":…,<fields>}` and a newline,
//! written straight into the line buffer. It replaces `tracing_subscriber`'s JSON format,
//! which goes through `serde` and an `io::Write` adapter and cost about a tenth of the
//! proxy's CPU per request. Every string is escaped, control characters included, so no
//! value (a path, a header a client sent) can break a line or forge another one.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter for `log_format = "json"`.
pub(super) struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Gather::new(&mut writer);
        line.write_str("{\"timestamp\":\"")?;
        write!(
            line,
            "{}",
            humantime::format_rfc3339_micros(SystemTime::now())
        )?;
        line.write_str("\",\"level\":\"")?;
        line.write_str(event.metadata().level().as_str())?;
        line.write_char('"')?;
        let mut fields = Fields {
            out: &mut line,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        line.write_str("}\n")?;
        line.flush()
    }
}

/// Writes the per-request line (and its newline) as [`JsonLine`] writes the event
/// `tracing::info!` makes of the same fields, `None` fields left out: each field name is
/// a constant piece here, so no name needs checking or a visitor's call.
pub(super) fn request_line(out: &mut String, line: &super::RequestLine<'_>) {
    out.push_str("{\"timestamp\":\"");
    // Writing to a `String` cannot fail.
    let _ = write!(
        out,
        "{}",
        humantime::format_rfc3339_micros(SystemTime::now())
    );
    out.push_str("\",\"level\":\"INFO\",\"message\":\"request\"");
    text(out, ",\"request_id\":\"", Some(line.request_id));
    text(
        out,
        ",\"client\":\"",
        Some(super::IpText::new(line.client).as_str()),
    );
    text(out, ",\"endpoint\":\"", Some(line.endpoint));
    text(out, ",\"key_id\":\"", line.key_id);
    text(out, ",\"group\":\"", line.group);
    text(out, ",\"model\":\"", line.model);
    out.push_str(if line.stream {
        ",\"stream\":true"
    } else {
        ",\"stream\":false"
    });
    text(out, ",\"provider\":\"", line.provider);
    text(out, ",\"upstream_model\":\"", line.upstream_model);
    number(out, ",\"attempts\":", Some(u64::from(line.attempts)));
    number(out, ",\"status\":", Some(u64::from(line.status)));
    number(out, ",\"latency_ms\":", Some(line.latency_ms));
    number(out, ",\"ttfb_ms\":", line.ttfb_ms);
    number(out, ",\"tokens_in\":", line.tokens_in);
    number(out, ",\"tokens_out\":", line.tokens_out);
    text(out, ",\"rejected\":\"", line.rejected);
    text(out, ",\"origin\":\"", line.origin);
    text(out, ",\"cut_short\":\"", line.cut_short);
    out.push_str("}\n");
}

/// `piece` (`,"name":"`), `value` escaped, and the closing quote; nothing for `None`.
fn text(out: &mut String, piece: &str, value: Option<&str>) {
    if let Some(value) = value {
        out.push_str(piece);
        // Writing to a `String` cannot fail.
        let _ = Escaped(&mut *out).write_str(value);
        out.push('"');
    }
}

/// `piece` (`,"name":`) and `value`; nothing for `None`.
fn number(out: &mut String, piece: &str, value: Option<u64>) {
    if let Some(value) = value {
        out.push_str(piece);
        out.push_str(itoa::Buffer::new().format(value));
    }
}

/// Bytes gathered before they go to the line's writer.
const GATHER: usize = 512;

/// Gathers a line's many small pieces (about seventy on a request line) on the stack and
/// hands them on in a few large ones: each write to `tracing`'s writer is a dynamic call
/// and a `memcpy` of its own.
struct Gather<W> {
    out: W,
    buf: [u8; GATHER],
    len: usize,
}

impl<W: fmt::Write> Gather<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            buf: [0; GATHER],
            len: 0,
        }
    }

    /// Hands on what has gathered. The buffer only ever holds whole `&str` pieces, so it
    /// is valid UTF-8.
    fn flush(&mut self) -> fmt::Result {
        let gathered = self.buf.get(..self.len).unwrap_or_default();
        let text = std::str::from_utf8(gathered).map_err(|_| fmt::Error)?;
        self.out.write_str(text)?;
        self.len = 0;
        Ok(())
    }

    /// Copies `a`, `b` and `c` in, one after the other, if all three fit.
    fn gather_three(&mut self, a: &str, b: &str, c: &str) -> bool {
        let end = self.len + a.len() + b.len() + c.len();
        let Some(room) = self.buf.get_mut(self.len..end) else {
            return false;
        };
        let (first, rest) = room.split_at_mut(a.len());
        let (second, third) = rest.split_at_mut(b.len());
        first.copy_from_slice(a.as_bytes());
        second.copy_from_slice(b.as_bytes());
        third.copy_from_slice(c.as_bytes());
        self.len = end;
        true
    }

    /// Copies `text` in if it fits.
    fn gather(&mut self, text: &str) -> bool {
        let end = self.len + text.len();
        match self.buf.get_mut(self.len..end) {
            Some(room) => {
                room.copy_from_slice(text.as_bytes());
                self.len = end;
                true
            }
            None => false,
        }
    }
}

impl<W: fmt::Write> fmt::Write for Gather<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if self.gather(text) {
            return Ok(());
        }
        self.flush()?;
        if self.gather(text) {
            return Ok(());
        }
        self.out.write_str(text)
    }
}

/// Writes each field as `,"name":value`, remembering the first write error.
struct Fields<'a, W> {
    out: &'a mut Gather<W>,
    result: fmt::Result,
}

impl<W: fmt::Write> Fields<'_, W> {
    /// `,"name` and then `after` (`":` or `":"`): a plain name, as every field name in
    /// krouter is, goes in as one piece.
    fn name(&mut self, field: &Field, after: &str) -> fmt::Result {
        let name = field.name();
        if !has_escapes(name) && self.out.gather_three(",\"", name, after) {
            return Ok(());
        }
        self.out.write_str(",\"")?;
        Escaped(&mut *self.out).write_str(name)?;
        self.out.write_str(after)
    }

    fn string(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        self.quoted(field, |out| out.write_fmt(value));
    }

    /// A string field written straight through, without the formatting machinery
    /// (most of a request line's fields).
    fn text(&mut self, field: &Field, value: &str) {
        self.quoted(field, |out| out.write_str(value));
    }

    fn quoted(
        &mut self,
        field: &Field,
        value: impl FnOnce(&mut Escaped<'_, Gather<W>>) -> fmt::Result,
    ) {
        if self.result.is_ok() {
            self.result = self.name(field, "\":\"").and_then(|()| {
                value(&mut Escaped(&mut *self.out))?;
                self.out.write_str("\"")
            });
        }
    }

    /// A number or boolean already in its JSON form.
    fn raw(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self
                .name(field, "\":")
                .and_then(|()| self.out.write_str(value));
        }
    }

    fn number(&mut self, field: &Field, value: &dyn fmt::Display) {
        if self.result.is_ok() {
            self.result = self
                .name(field, "\":")
                .and_then(|()| write!(self.out, "{value}"));
        }
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.string(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.number(field, &value);
        } else {
            // JSON has no NaN or infinity.
            self.string(field, format_args!("{value}"));
        }
    }
}

/// A writer that JSON-escapes what goes through it: quotes, backslashes and every control
/// character (so CR and LF never reach the line raw).
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Most text needs no escape: one pass without early exit (which the compiler
        // vectorises) finds out, and the text goes through in one piece.
        if !has_escapes(text) {
            return self.0.write_str(text);
        }
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            if !needs_escape(byte) {
                continue;
            }
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                _ => "",
            };
            // Every escaped byte is ASCII, so `at` is a character boundary.
            self.0.write_str(&text[plain..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

/// Whether any byte of `text` must be escaped: one pass without early exit, which the
/// compiler vectorises.
fn has_escapes(text: &str) -> bool {
    text.bytes()
        .fold(false, |any, byte| any | needs_escape(byte))
}

/// Whether `byte` must be escaped in a JSON string on one log line: quotes, backslashes and
/// every control character.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\' || byte == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        let _ = Escaped(&mut out).write_str(text);
        out
    }

    #[test]
    fn escaping_keeps_a_value_on_one_line_and_valid_json() {
        for text in [
            "plain",
            "",
            "quote \" and backslash \\",
            "line\nbreak\r\nand\ttab",
            "nul \0 bell \x07 esc \x1b del \x7f",
            "fake\n{\"level\":\"ERROR\",\"message\":\"forged\"}",
            "ünïcødé ✓ \u{2028}",
        ] {
            let out = escaped(text);
            assert!(!out.bytes().any(|b| b < 0x20 || b == 0x7f), "{out:?}");
            let back: String = serde_json::from_str(&format!("\"{out}\"")).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn gathered_pieces_arrive_whole_and_in_order() {
        let mut out = String::new();
        let mut line = Gather::new(&mut out);
        let long = "é".repeat(GATHER);
        let mut want = String::new();
        for (i, piece) in ["a", "ü✓", &long, "b", &"x".repeat(GATHER - 3), "yz", "é"]
            .into_iter()
            .enumerate()
        {
            line.write_str(piece).unwrap();
            want.push_str(piece);
            if i == 3 {
                write!(line, "{}", 42).unwrap();
                want.push_str("42");
            }
        }
        line.flush().unwrap();
        assert_eq!(out, want);
    }

    #[test]
    fn three_pieces_go_in_together_or_not_at_all() {
        let mut out = String::new();
        let mut line = Gather::new(&mut out);
        assert!(line.gather_three(",\"", "name", "\":"));
        assert!(line.gather(&"x".repeat(GATHER - 10)));
        assert!(!line.gather_three(",\"", "name", "\":"));
        assert!(line.gather_three("a", "", "b"));
        line.flush().unwrap();
        assert_eq!(out, format!(",\"name\":{}ab", "x".repeat(GATHER - 10)));
    }

    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl tracing_subscriber::fmt::MakeWriter<'_> for Lines {
        type Writer = Self;
        fn make_writer(&self) -> Self {
            self.clone()
        }
    }

    /// The lines `emit` logs through `tracing` with the JSON format.
    fn logged(emit: impl FnOnce()) -> String {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = lines.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// `line` with its timestamp's value blanked.
    fn unstamped(line: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(humantime::parse_rfc3339(value["timestamp"].as_str().unwrap()).is_ok());
        let start = line.find("\"timestamp\":\"").unwrap() + 13;
        let end = start + line[start..].find('"').unwrap();
        format!("{}{}", &line[..start], &line[end..])
    }

    #[test]
    fn the_direct_request_line_is_the_line_tracing_writes() {
        let full = crate::logging::RequestLine {
            request_id: "req_0123",
            client: "2001:db8::1".parse().unwrap(),
            endpoint: "chat.completions",
            key_id: Some("kid_abc"),
            group: Some("team \"a\"\n"),
            model: Some("gpt-ü\u{1b}[31m"),
            stream: true,
            provider: Some("openai"),
            upstream_model: Some("gpt-4o"),
            attempts: 2,
            status: 502,
            latency_ms: u64::MAX,
            ttfb_ms: Some(0),
            tokens_in: Some(11),
            tokens_out: Some(7),
            rejected: Some("The upstream failed.\r\n{\"level\":\"ERROR\"}"),
            origin: Some("upstream"),
            cut_short: Some("client gone"),
        };
        let bare = crate::logging::RequestLine {
            client: [127, 0, 0, 1].into(),
            endpoint: "-",
            key_id: None,
            group: None,
            model: None,
            stream: false,
            provider: None,
            upstream_model: None,
            attempts: 0,
            ttfb_ms: None,
            tokens_in: None,
            tokens_out: None,
            rejected: None,
            origin: None,
            cut_short: None,
            ..full
        };
        for line in [&full, &bare] {
            // Before `init`, `request` goes through `tracing`.
            let through_tracing = logged(|| crate::logging::request(line));
            let mut direct = String::new();
            request_line(&mut direct, line);
            assert!(direct.ends_with('\n') && direct.matches('\n').count() == 1);
            assert_eq!(unstamped(&direct), unstamped(&through_tracing));
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_the_fields() {
        let text = logged(|| {
            let client: std::net::IpAddr = [127, 0, 0, 1].into();
            tracing::info!(
                request_id = "abc",
                client = %client,
                status = 200_u16,
                latency_ms = 3_u64,
                delta = -2_i64,
                ratio = 0.5_f64,
                stream = true,
                missing = None::<&str>,
                path = "/v1\r\n{\"forged\":1}",
                "request"
            );
            tracing::warn!(ratio = f64::NAN, "we\"ird" = "x", "odd");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "request");
        assert_eq!(line["request_id"], "abc");
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["status"], 200);
        assert_eq!(line["latency_ms"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["stream"], true);
        assert_eq!(line["path"], "/v1\r\n{\"forged\":1}");
        assert!(line.get("missing").is_none());
        let stamp = line["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
        let odd: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(odd["level"], "WARN");
        assert_eq!(odd["ratio"], "NaN");
        assert_eq!(odd["we\"ird"], "x");
    }
}
