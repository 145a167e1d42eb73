//! Stage 4, inspect: read the body (bounded by the endpoint's `[limits.max_body_bytes]`,
//! within `[limits] body_read_timeout_ms`, and no slower than `body_min_bytes_per_sec` once
//! the grace period is over) and take only what routing needs: the `model` and whether a
//! stream is wanted. The body must be a JSON
//! object with no repeated top-level key, so krouter and the upstream cannot read two
//! different models out of one request. Guardrails (PII, prompt injection) join this stage
//! later.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use krouter_policy::{BodyLimits, Limits};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::ctx::RequestCtx;
use crate::dialect::Endpoint;
use crate::error::Reject;

/// Longest model name accepted.
pub const MAX_MODEL: usize = 256;
/// Most top-level fields accepted (real requests have a dozen or two).
pub const MAX_FIELDS: usize = 1000;
/// Bodies larger than this are parsed on the blocking pool, off the async workers.
const PARSE_INLINE: usize = 256 * 1024;
/// Objects with up to this many keys have them compared pairwise for repeats; larger ones
/// use a set.
const COMPARED_IN_PLACE: usize = 16;
/// Fields krouter routes on: their exact spelling is required.
const ROUTING_FIELDS: &[&str] = &["model", "stream"];

/// A request to be forwarded: its endpoint and its top-level fields, untouched. Its `Debug`
/// shows the routing fields only, never the prompt.
pub struct Inference {
    /// The endpoint called.
    pub endpoint: Endpoint,
    /// The client's model name (shared with the request's context).
    pub model: Arc<str>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether `stream_options.include_usage` is added upstream ([`Inference::count_usage`]).
    pub usage_added: bool,
    /// The body as received; the fields below are ranges into it, so a large prompt is
    /// held once, not copied per field.
    body: Bytes,
    fields: Vec<(Key, Range<usize>)>,
}

/// A top-level key of the body: where it lies in the body when it has no escape (nearly
/// always, and then it costs no copy), else its decoded text.
#[derive(Debug)]
enum Key {
    At(Range<usize>),
    Decoded(String),
}

impl fmt::Debug for Inference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inference")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("stream", &self.stream)
            .field("fields", &self.fields.len())
            .finish()
    }
}

/// A key under Unicode case folding (upper then lower, which also folds `ſ` and `K`).
fn fold(key: &str) -> String {
    if key.is_ascii() {
        // The same result for ASCII, with one allocation instead of two.
        key.to_ascii_lowercase()
    } else {
        key.to_uppercase().to_lowercase()
    }
}

/// Whether two keys are equal under case folding ([`fold`]), without a copy when both are
/// ASCII.
fn same_folded(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        fold(a) == fold(b)
    }
}

/// A JSON object's top-level fields in order, refusing repeated keys; the values, and the
/// keys without an escape, borrow from the parsed bytes.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A JSON string as the parser gives it: borrowed from the input unless it had an escape.
struct Text<'a>(Cow<'a, str>);

/// Reads and inspects the body.
pub async fn body(
    body: Incoming,
    endpoint: Endpoint,
    ctx: &mut RequestCtx,
) -> Result<Inference, Reject> {
    let limits = *ctx.snapshot.policy().limits();
    let max = max_body(endpoint, limits.max_body_bytes());
    let bytes = read(body, max, &limits).await?;
    let inference = if bytes.len() <= PARSE_INLINE {
        parse(bytes, endpoint)?
    } else {
        tokio::task::spawn_blocking(move || parse(bytes, endpoint))
            .await
            .map_err(|_| Reject::Internal {
                what: "the body parser stopped",
            })??
    };
    ctx.model = Some(Arc::clone(&inference.model));
    ctx.stream = inference.stream;
    Ok(inference)
}

/// The largest body `endpoint` takes.
pub fn max_body(endpoint: Endpoint, limits: &BodyLimits) -> u64 {
    u64::from(match endpoint {
        Endpoint::ChatCompletions => limits.chat_completions(),
        Endpoint::Responses => limits.responses(),
        Endpoint::Embeddings => limits.embeddings(),
        Endpoint::Messages => limits.messages(),
        Endpoint::CountTokens => limits.count_tokens(),
        // Answered by krouter before this stage; its body is never read.
        Endpoint::Models => 0,
    })
}

/// Reads a whole body of at most `max` bytes: refused at once when its declared length is
/// larger, as soon as more has arrived otherwise; within the body read timeout; and, once
/// the grace period is over, at an average of at least the minimum rate since the body
/// began (checked whenever the body waits for more, so a stalled client is dropped at the
/// moment its average falls below the minimum).
async fn read(mut body: Incoming, max: u64, limits: &Limits) -> Result<Bytes, Reject> {
    if body.size_hint().lower() > max {
        return Err(Reject::BodyTooLarge);
    }
    let started = Instant::now();
    let deadline = started + limits.body_read_timeout();
    let rate = u64::from(limits.body_min_bytes_per_sec());
    let grace = limits.body_min_rate_grace();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received: u64 = 0;
    loop {
        // When the average would fall under the minimum if nothing more arrived (no rate
        // check when the minimum is 0).
        let wake = match received.saturating_mul(1000).checked_div(rate) {
            None => deadline,
            Some(earned) => deadline.min(started + grace.max(Duration::from_millis(earned))),
        };
        match tokio::time::timeout_at(wake, body.frame()).await {
            Err(_) if Instant::now() >= deadline => return Err(Reject::BodyTimeout),
            Err(_) => return Err(Reject::BodyTooSlow),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(Reject::Framing {
                    what: "The request body could not be read: its framing is invalid or the connection broke.",
                });
            }
            Ok(Some(Ok(frame))) => {
                // Trailers are read and ignored.
                if let Ok(data) = frame.into_data() {
                    received = received.saturating_add(data.len() as u64);
                    if received > max {
                        return Err(Reject::BodyTooLarge);
                    }
                    chunks.push(data);
                }
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut joined = Vec::with_capacity(usize::try_from(received).unwrap_or(0));
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            Bytes::from(joined)
        }
    })
}

/// Parses a request body for `endpoint`.
pub fn parse(body: Bytes, endpoint: Endpoint) -> Result<Inference, Reject> {
    let Fields(fields) = serde_json::from_slice(&body).map_err(|_| Reject::BadBody {
        what: "The request body must be a JSON object with no repeated keys.",
    })?;
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.get());
    let model: Arc<str> = match field("model").map(serde_json::from_str::<Text<'_>>) {
        Some(Ok(Text(model))) => model.into(),
        Some(Err(_)) => {
            return Err(Reject::BadBody {
                what: "'model' must be a string.",
            });
        }
        None => {
            return Err(Reject::BadBody {
                what: "'model' is required.",
            });
        }
    };
    if model.is_empty() || model.len() > MAX_MODEL {
        return Err(Reject::BadBody {
            what: "'model' must be 1 to 256 bytes long.",
        });
    }
    let stream = match field("stream").map(serde_json::from_str::<Option<bool>>) {
        None | Some(Ok(None)) => false,
        Some(Ok(Some(stream))) => stream,
        Some(Err(_)) => {
            return Err(Reject::BadBody {
                what: "'stream' must be true or false.",
            });
        }
    };
    // Each raw value, and each borrowed key, is a sub-slice of `body`: keep its position,
    // not a copy.
    let base = body.as_ptr() as usize;
    let within = |text: &str| {
        let start = (text.as_ptr() as usize).wrapping_sub(base);
        let range = start..start.saturating_add(text.len());
        match body.get(range.clone()) {
            Some(_) => Ok(range),
            None => Err(Reject::Internal {
                what: "a parsed field lies outside the body",
            }),
        }
    };
    let mut ranges = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        let key = match key {
            Cow::Borrowed(text) => Key::At(within(text)?),
            Cow::Owned(text) => Key::Decoded(text),
        };
        ranges.push((key, within(value.get())?));
    }
    Ok(Inference {
        endpoint,
        model,
        stream,
        usage_added: false,
        body,
        fields: ranges,
    })
}

// === impl Inference ===

impl Inference {
    /// The text of `key` as it appears in the body: without escapes for a borrowed key (it
    /// had none), the decoded text otherwise.
    fn key_bytes<'a>(&'a self, key: &'a Key) -> &'a [u8] {
        match key {
            Key::At(range) => self.body.get(range.clone()).unwrap_or_default(),
            Key::Decoded(text) => text.as_bytes(),
        }
    }

    /// Whether the body has the top-level field `name`, and where its value lies.
    fn field(&self, name: &str) -> Option<&Range<usize>> {
        self.fields
            .iter()
            .find(|(key, _)| self.key_bytes(key) == name.as_bytes())
            .map(|(_, value)| value)
    }

    /// Asks the upstream for the stream's usage, so that a token budget can be charged: an
    /// OpenAI chat completion stream reports usage only with `stream_options.include_usage`.
    /// Added to a streaming chat completion whose `stream_options` are absent or an object
    /// without `include_usage: true` (other options kept); returns whether it was added, in
    /// which case the relay hides the extra usage chunk from the client.
    pub fn count_usage(&mut self) -> bool {
        let options = self
            .field("stream_options")
            .and_then(|range| self.body.get(range.clone()));
        let asks = match options {
            None => true,
            Some(raw) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw)
                .is_ok_and(|map| map.get("include_usage") != Some(&serde_json::Value::Bool(true))),
        };
        self.usage_added = self.endpoint == Endpoint::ChatCompletions && self.stream && asks;
        self.usage_added
    }

    /// The body to send upstream: the client's fields in their order and exact bytes, with
    /// `model` replaced by `upstream_model` (and `stream_options` added when
    /// [`Inference::count_usage`] said so).
    pub fn body_for(&self, upstream_model: &str) -> Bytes {
        let size: usize = self
            .fields
            .iter()
            .map(|(k, v)| self.key_bytes(k).len() + v.len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + upstream_model.len() + 2);
        out.push(b'{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match key {
                // A key without escapes in the body is valid JSON string content as it is.
                Key::At(_) => {
                    out.push(b'"');
                    out.extend_from_slice(self.key_bytes(key));
                    out.push(b'"');
                }
                // Serializing a &str into a Vec cannot fail.
                Key::Decoded(text) => {
                    let _ = serde_json::to_writer(&mut out, text);
                }
            }
            out.push(b':');
            let key = self.key_bytes(key);
            if key == b"model" {
                let _ = serde_json::to_writer(&mut out, upstream_model);
            } else if key == b"stream_options"
                && self.usage_added
                && let Some(mut options) = self.body.get(value.clone()).and_then(|raw| {
                    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw).ok()
                })
            {
                options.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
                let _ = serde_json::to_writer(&mut out, &options);
            } else if let Some(raw) = self.body.get(value.clone()) {
                out.extend_from_slice(raw);
            }
        }
        if self.usage_added && self.field("stream_options").is_none() {
            out.extend_from_slice(b",\"stream_options\":{\"include_usage\":true}");
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

// === impl Fields ===

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                // Folded keys, kept only once an object has more than a few: a short
                // object's keys are compared in place, without a copy or a hash each.
                let mut seen: Option<HashSet<String>> = None;
                while let Some((Text(key), value)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    if fields.len() >= MAX_FIELDS {
                        return Err(de::Error::custom("too many fields"));
                    }
                    // Some upstreams (Go's encoding/json) match keys without regard to case,
                    // so keys equal under case folding count as repeated, and a folded
                    // spelling of a routing field must be the exact one.
                    let routing = ROUTING_FIELDS.iter().any(|name| same_folded(name, &key));
                    if routing && !ROUTING_FIELDS.contains(&&*key) {
                        return Err(de::Error::custom("repeated key"));
                    }
                    let repeated = match &mut seen {
                        Some(seen) => !seen.insert(fold(&key)),
                        None if fields.len() < COMPARED_IN_PLACE => {
                            fields.iter().any(|(earlier, _)| same_folded(earlier, &key))
                        }
                        None => {
                            let mut folded: HashSet<String> =
                                fields.iter().map(|(earlier, _)| fold(earlier)).collect();
                            let repeated = !folded.insert(fold(&key));
                            seen = Some(folded);
                            repeated
                        }
                    };
                    if repeated {
                        return Err(de::Error::custom("repeated key"));
                    }
                    fields.push((key, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: Endpoint = Endpoint::ChatCompletions;

    #[test]
    fn model_is_replaced_and_everything_else_kept_byte_for_byte() {
        let body = br#"{"model":"alias","messages":[{"role":"user","content":"h\u00e9 \"q\""}],"temperature":0.50,"stream":true}"#;
        let inference = parse(Bytes::from_static(body), CHAT).unwrap();
        assert_eq!(&*inference.model, "alias");
        assert!(inference.stream);
        assert_eq!(
            inference.body_for("real-model"),
            Bytes::from_static(br#"{"model":"real-model","messages":[{"role":"user","content":"h\u00e9 \"q\""}],"temperature":0.50,"stream":true}"#)
        );
    }

    #[test]
    fn keys_with_escapes_are_decoded_and_the_rest_kept_as_written() {
        let body = br#"{"mod\u0065l":"alias","a\"b":1,"\u00e9t\u00e9":2,"plain":3,"n\u00e9":"x"}"#;
        let inference = parse(Bytes::from_static(body), CHAT).unwrap();
        assert_eq!(&*inference.model, "alias");
        let sent = inference.body_for("real");
        assert_eq!(
            sent,
            Bytes::from_static(
                r#"{"model":"real","a\"b":1,"été":2,"plain":3,"né":"x"}"#.as_bytes()
            )
        );
        let back: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(back["a\"b"], 1);
        // A key spelled with escapes is the same key: a repeat is refused.
        assert!(
            parse(
                Bytes::from_static(br#"{"model":"a","x":1,"\u0078":2}"#),
                CHAT
            )
            .is_err()
        );
        // A model name with escapes is decoded.
        let inference = parse(Bytes::from_static(br#"{"model":"al\u0069as"}"#), CHAT).unwrap();
        assert_eq!(&*inference.model, "alias");
        // Non-ASCII keys without escapes go through byte for byte.
        let raw = r#"{"model":"a","été":1}"#;
        let inference = parse(Bytes::from(raw), CHAT).unwrap();
        assert_eq!(inference.body_for("a"), Bytes::from(raw));
    }

    #[test]
    fn usage_is_asked_for_only_where_a_stream_would_not_report_it() {
        let with = |body: &'static [u8], endpoint| {
            let mut inference = parse(Bytes::from_static(body), endpoint).unwrap();
            let added = inference.count_usage();
            (
                added,
                String::from_utf8(inference.body_for("up").to_vec()).unwrap(),
            )
        };
        assert_eq!(
            with(br#"{"model":"m","stream":true}"#, CHAT),
            (
                true,
                r#"{"model":"up","stream":true,"stream_options":{"include_usage":true}}"#
                    .to_owned()
            )
        );
        assert_eq!(
            with(
                br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#,
                CHAT
            ),
            (
                true,
                r#"{"model":"up","stream":true,"stream_options":{"include_usage":true,"x":1}}"#
                    .to_owned()
            )
        );
        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(!with(asked, CHAT).0);
        assert!(!with(br#"{"model":"m"}"#, CHAT).0);
        assert!(!with(br#"{"model":"m","stream":true}"#, Endpoint::Responses).0);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        for (body, what) in [
            (&b"[]"[..], "JSON object"),
            (b"{", "JSON object"),
            (br#"{"model":"a","model":"b"}"#, "repeated"),
            (br#"{"messages":[]}"#, "required"),
            (br#"{"model":7}"#, "string"),
            (br#"{"model":""}"#, "1 to 256"),
            (br#"{"model":"a","stream":"yes"}"#, "true or false"),
            (br#"{"model":"a","Model":"b"}"#, "repeated"),
            (br#"{"model":"a","MODEL":"b"}"#, "repeated"),
            (br#"{"model":"a","\u017ftream":true}"#, "repeated"),
            (br#"{"Model":"a"}"#, "repeated"),
            (br#"{"model":"a","x":1,"X":2}"#, "repeated"),
        ] {
            match parse(Bytes::from_static(body), CHAT) {
                Err(Reject::BadBody { what: got }) => assert!(got.contains(what), "{got}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        // Repeats under case folding, in objects small enough to compare keys in place and
        // large enough to need the set (the repeat before, at and after the switch).
        for keys in [
            3,
            COMPARED_IN_PLACE - 1,
            COMPARED_IN_PLACE,
            COMPARED_IN_PLACE + 5,
        ] {
            let filler: String = (0..keys).map(|i| format!(r#","f{i}":0"#)).collect();
            for (first, again) in [("k", "K"), ("k", "\\u212a"), ("\\u212a", "K"), ("ß", "ss")] {
                let body = format!(r#"{{"model":"a","{first}":1{filler},"{again}":2}}"#);
                match parse(Bytes::from(body.clone()), CHAT) {
                    Err(Reject::BadBody { what }) => assert!(what.contains("repeated"), "{what}"),
                    other => panic!("{body}: {other:?}"),
                }
            }
            let body = format!(r#"{{"model":"a","k":1{filler},"kk":2,"ß":3,"s":4}}"#);
            assert!(parse(Bytes::from(body), CHAT).is_ok(), "{keys}");
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!(r#","f{i}":0"#)).collect();
        let many = format!(r#"{{"model":"a"{many}}}"#);
        assert!(matches!(
            parse(Bytes::from(many), CHAT),
            Err(Reject::BadBody { .. })
        ));
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL + 1));
        assert!(parse(Bytes::from(long), CHAT).is_err());
        assert!(
            !parse(Bytes::from_static(br#"{"model":"a","stream":null}"#), CHAT)
                .unwrap()
                .stream
        );
    }
}
