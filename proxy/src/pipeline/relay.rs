//! Stage 7, relay: send the answer back as it arrives. Each upstream frame is passed on as
//! soon as it is read (no buffering, so server-sent events reach the client one by one),
//! token usage is read from the bytes on the way, and the provider's idle and total time
//! limits end a stalled stream. Nothing can fall back from here: once the head has been
//! sent, a failure can only end the stream. A server-sent event stream is passed on whole
//! events at a time (a partial event waits for its end, which an upstream sends in the same
//! write nearly always), so that a failure can end it with the dialect's error event, which
//! the SDKs raise, rather than a cut the client might take for the end. Other bodies are cut.
//! When the body ends, however it ends, the `on_end` hook given by the pipeline records the
//! request.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::Sleep;

use super::forward::{Answer, response_headers};
use crate::body::{Body, BodyError};
use crate::ctx::RequestCtx;
use crate::dialect::{ErrorKind, UsageScanner};
use crate::respond;
use crate::upstream::UpstreamBody;

/// What runs when the response has ended.
pub type OnEnd = Box<dyn FnOnce(&RequestCtx) + Send + Sync>;

/// A partial server-sent event is passed on anyway past this size (an upstream that ends
/// lines with CR alone, or one huge event).
const MAX_PARTIAL: usize = 64 * 1024;

/// A relayed upstream body.
pub struct RelayBody {
    inner: UpstreamBody,
    /// Bytes read before the head went out (a stream held until its first content).
    held: VecDeque<Bytes>,
    /// For a server-sent event stream: the end of the last event read, waiting for its
    /// blank line.
    partial: Option<Vec<u8>>,
    scanner: UsageScanner,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    last_frame: tokio::time::Instant,
    deadline: Pin<Box<Sleep>>,
    ctx: RequestCtx,
    on_end: Option<OnEnd>,
}

/// Why a relayed stream was cut.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Cut(&'static str);

/// The client response for `answer`.
pub fn response(answer: Answer, mut ctx: RequestCtx, on_end: OnEnd) -> Response<Body> {
    match answer {
        Answer::Whole {
            status,
            headers,
            body,
        } => {
            ctx.status = status.as_u16();
            ctx.first_byte = Some(ctx.started.elapsed());
            let mut response = Response::new(Body::full(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            respond::stamp(&mut response, &ctx);
            on_end(&ctx);
            response
        }
        Answer::Stream {
            response,
            held,
            scanner,
            idle,
            deadline,
        } => {
            let (parts, inner) = response.into_parts();
            ctx.status = parts.status.as_u16();
            let headers = response_headers(&parts.headers);
            let body = RelayBody {
                inner,
                held: held.into(),
                partial: scanner.is_sse().then(Vec::new),
                scanner,
                idle,
                idle_timer: Box::pin(tokio::time::sleep(idle)),
                last_frame: tokio::time::Instant::now(),
                deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
                ctx,
                on_end: Some(on_end),
            };
            let mut response = Response::new(());
            *response.status_mut() = parts.status;
            *response.headers_mut() = headers;
            respond::stamp(&mut response, &body.ctx);
            response.map(|()| Body::Relay(Box::new(body)))
        }
    }
}

// === impl RelayBody ===

impl RelayBody {
    fn end(&mut self, cut: Option<&'static str>) {
        if let Some(on_end) = self.on_end.take() {
            self.ctx.cut_short = cut;
            self.ctx.usage = self.scanner.finish();
            on_end(&self.ctx);
        }
    }

    /// Ends the body early: a server-sent event stream with the dialect's error event (the
    /// partial event before it is dropped), anything else with an error that cuts it.
    fn cut(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.end(Some(why));
        if self.partial.take().is_some() {
            let event = self.ctx.dialect.error_event(
                ErrorKind::Upstream,
                "The upstream provider's stream failed part-way; the answer is incomplete.",
            );
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        Poll::Ready(Some(Err(Box::new(Cut(why)))))
    }

    /// The part of `data` that ends on an event boundary, for a server-sent event stream;
    /// the rest waits in `partial`. Other bodies pass whole.
    fn whole_events(&mut self, data: Bytes) -> Option<Bytes> {
        match &mut self.partial {
            Some(partial) => whole_events(partial, data),
            None => Some(data),
        }
    }

    /// `data` as the client should see it: without the usage-only chunk krouter asked the
    /// upstream for (see [`RequestCtx::hide_usage_chunk`]); `None` when nothing is left.
    fn visible(&self, data: Bytes) -> Option<Bytes> {
        if !self.ctx.hide_usage_chunk || memchr::memmem::find(&data, b"\"usage\"").is_none() {
            return Some(data);
        }
        let kept = without_usage_chunks(&data);
        (!kept.is_empty()).then(|| Bytes::from(kept))
    }

    /// Notes a frame going to the client.
    fn sent(&mut self, data: &Bytes) {
        if self.ctx.first_byte.is_none() && !data.is_empty() {
            self.ctx.first_byte = Some(self.ctx.started.elapsed());
        }
    }

    /// Whether the body has ended.
    pub fn is_end_stream(&self) -> bool {
        self.on_end.is_none() || self.inner.is_end_stream()
    }

    /// The upstream's size hint.
    pub fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }

    /// Polls the next frame.
    pub fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.on_end.is_none() {
            return Poll::Ready(None);
        }
        // What was read before the head went out (the scanner has seen it).
        while let Some(data) = this.held.pop_front() {
            if let Some(out) = this.whole_events(data).and_then(|d| this.visible(d)) {
                this.sent(&out);
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
        // Checked first, so an upstream that never pauses still ends at its time limit.
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.cut("the provider's total time limit passed");
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // The idle timer is moved only when it fires (below), not per frame.
                    this.last_frame = tokio::time::Instant::now();
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            this.scanner.feed(&data);
                            match this.whole_events(data).and_then(|d| this.visible(d)) {
                                Some(out) => {
                                    this.sent(&out);
                                    Frame::data(out)
                                }
                                // Only part of an event: read on.
                                None => continue,
                            }
                        }
                        Err(trailers) => trailers,
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(_))) => return this.cut("the upstream stream broke"),
                Poll::Ready(None) => {
                    // A last partial event goes out as it is: the upstream ended it so.
                    let rest = this
                        .partial
                        .as_mut()
                        .map(std::mem::take)
                        .unwrap_or_default();
                    if !rest.is_empty() {
                        let out = Bytes::from(rest);
                        this.sent(&out);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    this.end(None);
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        while this.idle_timer.as_mut().poll(cx).is_ready() {
            let quiet_until = this.last_frame + this.idle;
            if tokio::time::Instant::now() >= quiet_until {
                return this.cut("the upstream stream went idle");
            }
            this.idle_timer.as_mut().reset(quiet_until);
        }
        Poll::Pending
    }
}

/// `bytes` (whole server-sent events) without the events whose data is a chunk with no
/// choices and a usage object: the last chunk of an OpenAI stream with `include_usage`.
fn without_usage_chunks(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let (mut start, mut at) = (0, 0);
    while at < bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        let end = memchr::memchr(b'\n', rest).map_or(bytes.len(), |i| at + i + 1);
        let line = bytes.get(at..end).unwrap_or_default();
        at = end;
        if line.trim_ascii().is_empty() {
            let event = bytes.get(start..at).unwrap_or_default();
            if !is_usage_chunk(event) {
                out.extend_from_slice(event);
            }
            start = at;
        }
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out
}

/// Whether one event is a usage-only chat completion chunk.
fn is_usage_chunk(event: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Chunk {
        choices: Vec<serde::de::IgnoredAny>,
        usage: Option<serde::de::IgnoredAny>,
    }
    let data: Vec<u8> = event
        .split(|b| *b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .flat_map(|value| value.strip_prefix(b" ").unwrap_or(value).iter().copied())
        .collect();
    serde_json::from_slice::<Chunk>(data.trim_ascii())
        .is_ok_and(|chunk| chunk.choices.is_empty() && chunk.usage.is_some())
}

/// The part of `partial` and then `data` that ends on an event boundary; the rest stays in
/// `partial` (past [`MAX_PARTIAL`] bytes without a boundary, everything goes). Only the new
/// bytes are searched for a boundary (`partial` has none), so an upstream that sends an
/// event a byte at a time costs linear time, not quadratic.
fn whole_events(partial: &mut Vec<u8>, data: Bytes) -> Option<Bytes> {
    if partial.is_empty() {
        let end = events_end(&data, 0);
        if end == data.len() {
            return Some(data);
        }
        partial.extend_from_slice(data.get(end..).unwrap_or_default());
        return (end > 0).then(|| data.slice(..end));
    }
    let searched = partial.len();
    partial.extend_from_slice(&data);
    let end = if partial.len() > MAX_PARTIAL {
        partial.len()
    } else {
        events_end(partial, searched)
    };
    if end == 0 {
        return None;
    }
    let rest = partial.split_off(end);
    Some(Bytes::from(std::mem::replace(partial, rest)))
}

/// Where the last complete server-sent event in `bytes` ends (just after its blank line), or
/// 0; only ends past `after` are looked for (the bytes up to it are known to hold none).
/// Lines end with LF, CRLF or CR.
fn events_end(bytes: &[u8], after: usize) -> usize {
    let mut at = bytes.len();
    while at >= 2 && at > after {
        let before = bytes.get(..at).unwrap_or_default();
        if before.ends_with(b"\n\n") || before.ends_with(b"\r\r") || before.ends_with(b"\r\n\r\n") {
            return at;
        }
        at -= 1;
    }
    0
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        // hyper stops polling once a body of known length is complete; anything else means
        // the client went away (or the connection closed) before the end.
        if self.inner.is_end_stream() {
            self.end(None);
        } else {
            self.end(Some("the client closed the connection"));
        }
    }
}

impl fmt::Debug for RelayBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBody")
            .field("request_id", &self.ctx.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_after_the_last_blank_line() {
        assert_eq!(events_end(b"data: a\n\n", 0), 9);
        assert_eq!(events_end(b"data: a\n\ndata: b", 0), 9);
        assert_eq!(events_end(b"data: a\r\n\r\ndata: b\r\n", 0), 11);
        assert_eq!(events_end(b"data: a\r\rdata", 0), 9);
        assert_eq!(events_end(b"data: a\n", 0), 0);
        assert_eq!(events_end(b"", 0), 0);
        assert_eq!(events_end(b"\n", 0), 0);
        // Only ends past `after`: a boundary whose last byte is new counts.
        assert_eq!(events_end(b"data: a\n\ndata: b\n", 9), 0);
        assert_eq!(events_end(b"data: a\n\ndata: b\n\n", 17), 18);
        assert_eq!(events_end(b"data: a\r\n\r\n", 10), 11);
    }

    #[test]
    fn a_stream_sent_a_byte_at_a_time_comes_out_whole_events_in_order() {
        let stream: &[u8] =
            b"data: {\"a\":1}\n\nevent: x\r\ndata: b\r\n\r\n: comment\r\rdata: [DONE]\n\ntail";
        let mut partial = Vec::new();
        let mut out: Vec<Bytes> = Vec::new();
        for byte in stream {
            out.extend(whole_events(&mut partial, Bytes::copy_from_slice(&[*byte])));
        }
        let events: Vec<&[u8]> = out.iter().map(|b| &b[..]).collect();
        assert_eq!(
            events,
            [
                &b"data: {\"a\":1}\n\n"[..],
                b"event: x\r\ndata: b\r\n\r\n",
                b": comment\r\r",
                b"data: [DONE]\n\n",
            ]
        );
        assert_eq!(partial, b"tail");
        // Chunks that hold several events and parts of others.
        let mut partial = Vec::new();
        let mut joined = Vec::new();
        for chunk in stream.chunks(7) {
            if let Some(out) = whole_events(&mut partial, Bytes::copy_from_slice(chunk)) {
                assert!(
                    events_end(&out, 0) == out.len(),
                    "{out:?} ends on a boundary"
                );
                joined.extend_from_slice(&out);
            }
        }
        joined.extend_from_slice(&partial);
        assert_eq!(joined, stream);
    }

    #[test]
    fn only_the_usage_only_chunk_is_hidden() {
        let text = b"data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}],\"usage\":null}\n\n";
        let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n";
        let done = b"data: [DONE]\n\n";
        let all = [&text[..], &usage[..], &done[..]].concat();
        assert_eq!(without_usage_chunks(&all), [&text[..], &done[..]].concat());
        assert_eq!(without_usage_chunks(text), text.to_vec());
        assert!(without_usage_chunks(usage).is_empty());
    }
}
