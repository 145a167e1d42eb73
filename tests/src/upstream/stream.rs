//! Bodies a task writes as it goes (SSE events, a cut or stalled JSON document): the task
//! notices at once when the client goes away, stops, and counts the answer as cancelled.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use super::Shared;
use super::handler::BoxError;

/// How many chunks wait for the connection before the task waits with them.
const BUFFER: usize = 8;
/// How long an aborting task waits after its last chunk, so the chunks are flushed before
/// the connection goes.
const ABORT_PAUSE: Duration = Duration::from_millis(20);

/// What a body task does after its last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Ends the body cleanly.
    Finish,
    /// Aborts the body: HTTP/1.1 closes the connection, HTTP/2 resets the stream.
    Abort,
    /// Sends nothing more and keeps the body open until the client goes away.
    Stall,
}

/// A body whose chunks a task sends through a channel; dropping it (the client went away)
/// closes the channel, which the task sees.
#[derive(Debug)]
pub(super) struct Streamed {
    chunks: mpsc::Receiver<Result<Bytes, BoxError>>,
}

/// Starts a task that sends `chunks`, each as its own frame (after `gap` if given), then ends
/// the body as `end` says. If the client goes away first, the task stops at once and counts
/// one cancelled answer in `shared`.
pub(super) fn spawn(
    chunks: Vec<Bytes>,
    gap: Option<Duration>,
    end: End,
    shared: Arc<Shared>,
) -> Streamed {
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        if !feed(&sender, chunks, gap, end).await {
            shared.cancel();
        }
    });
    Streamed { chunks: receiver }
}

/// Sends everything `spawn` was given; false when the client went away before the end.
async fn feed(
    sender: &mpsc::Sender<Result<Bytes, BoxError>>,
    chunks: Vec<Bytes>,
    gap: Option<Duration>,
    end: End,
) -> bool {
    for chunk in chunks {
        if let Some(gap) = gap
            && !pause(sender, gap).await
        {
            return false;
        }
        if sender.send(Ok(chunk)).await.is_err() {
            return false;
        }
    }
    match end {
        End::Finish => true,
        End::Abort => {
            pause(sender, ABORT_PAUSE).await
                && sender
                    .send(Err("the mock upstream cuts this body".into()))
                    .await
                    .is_ok()
        }
        End::Stall => {
            sender.closed().await;
            false
        }
    }
}

/// Waits `duration`; false if the client went away meanwhile.
async fn pause(sender: &mpsc::Sender<Result<Bytes, BoxError>>, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = sender.closed() => false,
    }
}

// === impl Streamed ===

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}
