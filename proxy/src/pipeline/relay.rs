//! Stage 7, relay: send the answer back as it arrives. Each upstream frame is passed on as
//! soon as it is read (no buffering, so server-sent events reach the client one by one),
//! token usage is read from the bytes on the way, and the provider's idle and total time
//! limits end a stalled stream. Nothing can fall back from here: once the head has been
//! sent, a failure can only cut the stream. When the body ends, however it ends, the
//! `on_end` hook given by the pipeline records the request.

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::forward::{Answer, response_headers};
use crate::body::{Body, BodyError};
use crate::ctx::RequestCtx;
use crate::dialect::UsageScanner;
use crate::respond;

/// What runs when the response has ended.
pub type OnEnd = Box<dyn FnOnce(&RequestCtx) + Send + Sync>;

/// A relayed upstream body.
pub struct RelayBody {
    inner: Incoming,
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
            idle,
            deadline,
        } => {
            let (parts, inner) = response.into_parts();
            ctx.status = parts.status.as_u16();
            let headers = response_headers(&parts.headers);
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let scanner = UsageScanner::new(content_type);
            let body = RelayBody {
                inner,
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

    fn cut(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.end(Some(why));
        Poll::Ready(Some(Err(Box::new(Cut(why)))))
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
        // Checked first, so an upstream that never pauses still ends at its time limit.
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.cut("the provider's total time limit passed");
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.ctx.first_byte.is_none() && !data.is_empty() {
                        this.ctx.first_byte = Some(this.ctx.started.elapsed());
                    }
                    this.scanner.feed(data);
                }
                // The idle timer is moved only when it fires (below), not per frame.
                this.last_frame = tokio::time::Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.cut("the upstream stream broke"),
            Poll::Ready(None) => {
                this.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
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
    }
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
