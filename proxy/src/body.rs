//! The response body krouter sends: a small complete body (krouter's own answers, errors,
//! bounded upstream errors) or a relayed upstream stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::pipeline::relay::RelayBody;

/// An error that ends a relayed body early (the client sees the stream cut).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// A complete body, sent in one frame.
    Full(Option<Bytes>),
    /// An upstream body, relayed as it arrives.
    Relay(Box<RelayBody>),
}

impl Body {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Relay(relay) => Pin::new(relay.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Relay(relay) => relay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Relay(relay) => relay.size_hint(),
        }
    }
}
