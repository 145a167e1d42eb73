//! Token usage, read from response bodies as they pass through, without holding them back,
//! and, for streams, whether content has begun ([`Progress`]): the forward stage holds a
//! stream back from the client until it has.
//!
//! JSON bodies are copied (up to [`MAX_JSON`]) and parsed once at the end. Server-sent
//! events are split into events as bytes arrive; an event is parsed only when its data
//! mentions `"usage"`. Both dialects put usage in an object named `usage`: at the top level
//! (OpenAI chat and embeddings, Anthropic `message_delta`), under `message` (Anthropic
//! `message_start`) or under `response` (OpenAI Responses `response.completed`). Later
//! events override earlier ones field by field, which gives Anthropic's cumulative
//! `output_tokens` and OpenAI's single final chunk alike.

use std::sync::LazyLock;

use serde::Deserialize;

/// Largest JSON body copied for usage; larger bodies pass through uncounted.
pub const MAX_JSON: usize = 4 * 1024 * 1024;
/// Largest single SSE event examined; larger events pass through unexamined.
pub const MAX_EVENT: usize = 1024 * 1024;

/// Tokens in and out, as far as the upstream said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens, cached ones included.
    pub input: Option<u64>,
    /// Output (completion) tokens.
    pub output: Option<u64>,
}

/// Watches one response body go by.
#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    usage: Usage,
    progress: Progress,
}

/// How far a server-sent event stream has come before its first content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// No content yet: only lifecycle events (a role-only chunk, `message_start`, pings).
    Waiting,
    /// A content-bearing event arrived (text, tool-call or reasoning deltas); once there,
    /// the progress stays.
    Content,
    /// An error event came before any content.
    Error,
    /// The stream said it is done (`[DONE]`, `message_stop`, `response.completed`) before
    /// any content.
    Ended,
}

/// The fields of an event that tell its kind.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    kind: Option<String>,
    error: Option<serde_json::Value>,
    choices: Option<Vec<ProbeChoice>>,
}

#[derive(Deserialize)]
struct ProbeChoice {
    delta: Option<ProbeDelta>,
}

#[derive(Deserialize)]
struct ProbeDelta {
    content: Option<serde_json::Value>,
    refusal: Option<serde_json::Value>,
    tool_calls: Option<serde_json::Value>,
    function_call: Option<serde_json::Value>,
    reasoning_content: Option<serde_json::Value>,
    reasoning: Option<serde_json::Value>,
}

#[derive(Debug)]
enum Mode {
    Json {
        copy: Vec<u8>,
        overflowed: bool,
    },
    Sse {
        line: Vec<u8>,
        data: Vec<u8>,
        skipping: bool,
    },
    Off,
}

#[derive(Deserialize)]
struct Envelope {
    usage: Option<UsageFields>,
    message: Option<Nested>,
    response: Option<Nested>,
}

#[derive(Deserialize)]
struct Nested {
    usage: Option<UsageFields>,
}

#[derive(Deserialize)]
struct UsageFields {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

// === impl UsageScanner ===

impl UsageScanner {
    /// A scanner for a body of `content_type`; bodies that are neither JSON nor SSE are
    /// not examined.
    pub fn new(content_type: Option<&str>) -> Self {
        let essence = content_type
            .and_then(|t| t.split(';').next())
            .map(str::trim);
        let mode = match essence {
            Some(t) if t.eq_ignore_ascii_case("text/event-stream") => Mode::Sse {
                line: Vec::new(),
                data: Vec::new(),
                skipping: false,
            },
            Some(t) if t.eq_ignore_ascii_case("application/json") => Mode::Json {
                copy: Vec::new(),
                overflowed: false,
            },
            _ => Mode::Off,
        };
        Self {
            mode,
            usage: Usage::default(),
            progress: Progress::Waiting,
        }
    }

    /// Whether the body is a server-sent event stream.
    pub fn is_sse(&self) -> bool {
        matches!(self.mode, Mode::Sse { .. })
    }

    /// How far the stream has come (always [`Progress::Waiting`] for other bodies).
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Looks at the next piece of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Off => {}
            Mode::Json { copy, overflowed } => {
                if *overflowed || copy.len() + chunk.len() > MAX_JSON {
                    *overflowed = true;
                    *copy = Vec::new();
                } else {
                    copy.extend_from_slice(chunk);
                }
            }
            Mode::Sse {
                line,
                data,
                skipping,
            } => {
                let mut rest = chunk;
                while let Some(end) = memchr::memchr(b'\n', rest) {
                    let (head, tail) = rest.split_at(end);
                    rest = tail.get(1..).unwrap_or_default();
                    if line.len() + head.len() <= MAX_EVENT {
                        line.extend_from_slice(head);
                    } else {
                        *skipping = true;
                    }
                    let complete = std::mem::take(line);
                    if let Some(event) = sse_line(&complete, data, skipping) {
                        if self.progress == Progress::Waiting {
                            self.progress = classify(&event);
                        }
                        merge(&mut self.usage, &event);
                    }
                }
                if line.len() + rest.len() <= MAX_EVENT {
                    line.extend_from_slice(rest);
                } else {
                    *skipping = true;
                    line.clear();
                }
            }
        }
    }

    /// The usage seen, once the body has ended.
    pub fn finish(&mut self) -> Usage {
        if let Mode::Json { copy, overflowed } = &mut self.mode {
            if !*overflowed {
                merge(&mut self.usage, copy);
            }
            copy.clear();
        }
        self.usage
    }
}

/// Handles one SSE line; returns an event's data when a blank line ends an event.
fn sse_line(line: &[u8], data: &mut Vec<u8>, skipping: &mut bool) -> Option<Vec<u8>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        let done = std::mem::take(data);
        let skipped = std::mem::replace(skipping, false);
        return (!skipped && !done.is_empty()).then_some(done);
    }
    if *skipping {
        return None;
    }
    if let Some(value) = line.strip_prefix(b"data:") {
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if data.len() + value.len() + 1 > MAX_EVENT {
            *skipping = true;
            data.clear();
            return None;
        }
        if !data.is_empty() {
            data.push(b'\n');
        }
        data.extend_from_slice(value);
    }
    None
}

/// Merges the usage in one JSON document into `usage`, if it mentions any.
fn merge(usage: &mut Usage, json: &[u8]) {
    if !mentions_usage(json) {
        return;
    }
    // One UTF-8 check of the whole document, not one per member name as `from_slice` does
    // (invalid UTF-8 fails either way).
    let Ok(text) = std::str::from_utf8(json) else {
        return;
    };
    let Ok(envelope) = serde_json::from_str::<Envelope>(text) else {
        return;
    };
    let fields = [
        envelope.usage,
        envelope.message.and_then(|m| m.usage),
        envelope.response.and_then(|r| r.usage),
    ];
    for found in fields.into_iter().flatten() {
        let input = found.input_tokens.or(found.prompt_tokens).map(|base| {
            base.saturating_add(found.cache_creation_input_tokens.unwrap_or(0))
                .saturating_add(found.cache_read_input_tokens.unwrap_or(0))
        });
        if input.is_some() {
            usage.input = input;
        }
        if let Some(output) = found.output_tokens.or(found.completion_tokens) {
            usage.output = Some(output);
        }
    }
}

/// What one event's data says about a stream that has had no content yet.
fn classify(data: &[u8]) -> Progress {
    if data.trim_ascii() == b"[DONE]" {
        return Progress::Ended;
    }
    let Ok(probe) = serde_json::from_slice::<Probe>(data) else {
        return Progress::Waiting;
    };
    if probe.error.is_some_and(|e| !e.is_null()) {
        return Progress::Error;
    }
    match probe.kind.as_deref() {
        Some("error" | "response.failed") => return Progress::Error,
        Some("message_stop" | "response.completed" | "response.incomplete") => {
            return Progress::Ended;
        }
        // Anthropic `content_block_delta`; Responses `response.*.delta` (text, refusal,
        // function-call arguments, reasoning).
        Some(kind) if kind == "content_block_delta" || kind.ends_with(".delta") => {
            return Progress::Content;
        }
        _ => {}
    }
    let filled = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    let content = probe.choices.iter().flatten().any(|choice| {
        choice.delta.as_ref().is_some_and(|d| {
            filled(&d.content)
                || filled(&d.refusal)
                || filled(&d.tool_calls)
                || filled(&d.function_call)
                || filled(&d.reasoning_content)
                || filled(&d.reasoning)
        })
    });
    if content {
        Progress::Content
    } else {
        Progress::Waiting
    }
}

/// Whether `json` mentions `"usage"` at all; the searcher is built once, not per body
/// (building one cost about a tenth of a small body's parse).
fn mentions_usage(json: &[u8]) -> bool {
    static USAGE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    USAGE.find(json).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(content_type: &str, chunks: &[&[u8]]) -> Usage {
        let mut scanner = UsageScanner::new(Some(content_type));
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.finish()
    }

    #[test]
    fn openai_json_and_stream_usage() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
        let (a, b) = body.split_at(20);
        let want = Usage {
            input: Some(11),
            output: Some(7),
        };
        assert_eq!(scan("application/json; charset=utf-8", &[a, b]), want);
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        // Byte by byte: events split anywhere still parse.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan("text/event-stream", &bytes), want);
    }

    #[test]
    fn anthropic_stream_takes_input_from_start_and_output_from_the_last_delta() {
        let stream = b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\r\n\r\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n";
        assert_eq!(
            scan("text/event-stream", &[stream]),
            Usage {
                input: Some(15),
                output: Some(7)
            }
        );
    }

    #[test]
    fn responses_api_usage_is_under_response() {
        let stream = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":2,\"output_tokens\":3}}}\n\n";
        assert_eq!(
            scan("text/event-stream", &[stream]),
            Usage {
                input: Some(2),
                output: Some(3)
            }
        );
    }

    fn progress(chunks: &[&[u8]]) -> Progress {
        let mut scanner = UsageScanner::new(Some("text/event-stream"));
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.progress()
    }

    #[test]
    fn stream_progress_tells_content_from_lifecycle_errors_and_ends() {
        let role =
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        assert_eq!(progress(&[role]), Progress::Waiting);
        assert_eq!(progress(&[role, b"data: [DONE]\n\n"]), Progress::Ended);
        let text = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        assert_eq!(
            progress(&[role, text, b"data: [DONE]\n\n"]),
            Progress::Content
        );
        let tool = b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n";
        assert_eq!(progress(&[tool]), Progress::Content);
        let error = b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        assert_eq!(progress(&[error]), Progress::Error);
        // An error after content changes nothing: content has begun.
        assert_eq!(progress(&[text, error]), Progress::Content);
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n";
        let stop = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let delta = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        let overloaded = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        assert_eq!(progress(&[start, stop]), Progress::Ended);
        assert_eq!(progress(&[start, delta]), Progress::Content);
        assert_eq!(progress(&[start, overloaded]), Progress::Error);
        let created = b"data: {\"type\":\"response.created\"}\n\n";
        let out = b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n";
        let done = b"data: {\"type\":\"response.completed\"}\n\n";
        assert_eq!(progress(&[created, done]), Progress::Ended);
        assert_eq!(progress(&[created, out]), Progress::Content);
        assert_eq!(
            progress(&[b"data: {\"type\":\"response.failed\"}\n\n"]),
            Progress::Error
        );
        // Split anywhere, still the same.
        let joined = [&role[..], &text[..]].concat();
        let bytes: Vec<&[u8]> = joined.chunks(3).collect();
        assert_eq!(progress(&bytes), Progress::Content);
    }

    #[test]
    fn garbage_oversized_and_unknown_bodies_give_no_usage() {
        assert_eq!(scan("application/json", &[b"{not json"]), Usage::default());
        assert_eq!(
            scan("text/plain", &[br#"{"usage":{"input_tokens":1}}"#]),
            Usage::default()
        );
        let big = vec![b'a'; MAX_JSON + 1];
        assert_eq!(scan("application/json", &[&big]), Usage::default());
        // An oversized event is skipped, and the next one still counts.
        let mut stream = b"data: ".to_vec();
        stream.extend(std::iter::repeat_n(b'x', MAX_EVENT + 10));
        stream.extend_from_slice(b"\n\ndata: {\"usage\":{\"output_tokens\":5}}\n\n");
        assert_eq!(
            scan("text/event-stream", &[&stream]),
            Usage {
                input: None,
                output: Some(5)
            }
        );
        assert_eq!(UsageScanner::new(None).finish(), Usage::default());
    }

    #[test]
    fn media_types_match_in_any_case_and_a_usage_key_split_across_chunks_counts() {
        let body: &[u8] = br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let (a, b) = body.split_at(10);
        let want = Usage {
            input: Some(3),
            output: Some(4),
        };
        assert_eq!(scan(" Application/JSON ; charset=utf-8", &[a, b]), want);
        let stream = [
            b"data: {\"us".as_slice(),
            b"age\":{\"output_tokens\":2}}\n",
            b"\n",
        ];
        assert_eq!(
            scan("TEXT/Event-Stream", &stream),
            Usage {
                input: None,
                output: Some(2)
            }
        );
        // The key as a value or a prefix is not usage.
        assert_eq!(
            scan(
                "application/json",
                &[br#"{"note":"\"usage\"","usages":{"input_tokens":9}}"#]
            ),
            Usage::default()
        );
    }
}
