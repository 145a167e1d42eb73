//! A client's TCP socket, shared by hyper, which reads and writes it through [`Socket`], and
//! by the listener, which looks through [`Hangup`] for a client that hangs up while its
//! HTTP/1.1 request is in flight.
//!
//! hyper finds such a client itself by reading the socket while the request is served, but
//! that read reserves a fresh 8 KiB buffer for every request: the request's head still
//! shares the old one. So hyper is told not to look (`half_close`), and the listener peeks
//! at the socket instead, reading nothing, so that hyper's next read, once the response is
//! written, reuses its buffer. A client that hangs up still drops its upstream request at
//! once.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::conn::Watch;
use crate::joined::{Pieces, join};

/// hyper's side of a client socket: reads and writes as tokio's own `TcpStream` does them,
/// on a shared stream, except that small writes in pieces go out joined ([`join`]).
#[derive(Debug)]
pub(crate) struct Socket {
    stream: Arc<TcpStream>,
}

/// The listener's side of a client socket: completes when the client hangs up while an
/// HTTP/1.1 request is in flight.
#[derive(Debug)]
pub(crate) struct Hangup {
    stream: Arc<TcpStream>,
    watch: Arc<Watch>,
    /// hyper's read count when bytes were last found waiting for it: the next request of a
    /// pipelining client, or the rest of a request body. Peeking again before hyper has read
    /// would find the same bytes at once, so the look waits for hyper's next read.
    waiting: Option<u64>,
}

/// `stream` for hyper, and its hang-up watch on `watch`.
pub(crate) fn share(stream: TcpStream, watch: &Arc<Watch>) -> (Socket, Hangup) {
    let stream = Arc::new(stream);
    let hangup = Hangup {
        stream: Arc::clone(&stream),
        watch: Arc::clone(watch),
        waiting: None,
    };
    (Socket { stream }, hangup)
}

// === impl Socket ===

impl Socket {
    /// Runs `io` once the socket is ready for `interest`, again while it finds it was not.
    /// `io` returns how many bytes it moved of the `len` offered. A transfer short of `len`
    /// means the socket's buffer is drained (read) or full (write): its readiness is then
    /// cleared, as tokio's own `TcpStream` does, so that the next look (the hang-up watch's,
    /// or hyper's next read or write) waits for the socket rather than making a system call
    /// that finds nothing. The clearing uses the readiness seen before `io` ran, so an event
    /// that arrived meanwhile, on another thread of a multi-thread runtime, is kept.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        len: usize,
        mut io: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let stream = &*self.stream;
        loop {
            let ready = if interest.is_readable() {
                stream.poll_read_ready(cx)
            } else {
                stream.poll_write_ready(cx)
            };
            ready!(ready)?;
            let mut short = None;
            let result = stream.try_io(interest, || {
                let n = io(stream)?;
                if 0 < n && n < len {
                    // `try_io` clears the readiness it saw before `io` on `WouldBlock`.
                    short = Some(n);
                    return Err(io::Error::from(io::ErrorKind::WouldBlock));
                }
                Ok(n)
            });
            match (result, short) {
                (_, Some(n)) => return Poll::Ready(Ok(n)),
                // The readiness was stale; it is cleared.
                (Err(error), None) if error.kind() == io::ErrorKind::WouldBlock => {}
                (result, None) => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let len = buf.remaining();
        self.poll_io(cx, Interest::READABLE, len, |stream| {
            stream.try_read_buf(buf)
        })
        .map_ok(|_| ())
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Interest::WRITABLE, buf.len(), |stream| {
            stream.try_write(buf)
        })
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        join(bufs, |pieces| match pieces {
            Pieces::One(one) => self.as_mut().poll_write(cx, one),
            Pieces::Vectored => {
                let len = bufs.iter().map(|buf| buf.len()).sum();
                self.poll_io(cx, Interest::WRITABLE, len, |stream| {
                    stream.try_write_vectored(bufs)
                })
            }
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&*self.stream).shutdown(Shutdown::Write))
    }
}

// === impl Hangup ===

impl Hangup {
    /// Ready when the client has closed its side of the connection (or reset it) while an
    /// HTTP/1.1 request is in flight; pending otherwise. It must be polled in the same task
    /// as hyper's connection and after it on every turn: it registers for a wake-up only
    /// while it waits on an empty socket, and relies on that order to see a request as
    /// soon as hyper has dispatched it (none is registered while no request is in flight)
    /// and to look again after hyper has read bytes it found waiting.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(reads) = self.watch.hangup_reads() else {
            return Poll::Pending;
        };
        if self.waiting == Some(reads) {
            return Poll::Pending;
        }
        self.waiting = None;
        let mut byte = [0u8; 1];
        let mut peeked = ReadBuf::new(&mut byte);
        match self.stream.poll_peek(cx, &mut peeked) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
            Poll::Ready(Ok(_)) => {
                // Bytes for hyper: it reads them, and any end after them, itself.
                self.waiting = Some(reads);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::joined::JOIN_UP_TO;

    /// What the peer reads after `pieces` are written vectored through a [`Socket`].
    async fn through_socket(pieces: &[Vec<u8>]) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, peer) = tokio::join!(listener.accept(), peer);
        let mut socket = Socket {
            stream: Arc::new(accepted.unwrap().0),
        };
        let mut peer = peer.unwrap();
        let total: usize = pieces.iter().map(Vec::len).sum();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; total];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        let whole: Vec<u8> = pieces.concat();
        let mut sent = 0;
        while sent < total {
            // Re-slice what is left into the same pieces, as hyper does after a short write.
            let mut slices = Vec::new();
            let mut at = 0;
            for piece in pieces {
                let (start, end) = (at.max(sent), at + piece.len());
                if start < end {
                    slices.push(IoSlice::new(&whole[start..end]));
                }
                at = end;
            }
            sent += socket.write_vectored(&slices).await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), whole);
    }

    #[tokio::test]
    async fn small_and_large_vectored_writes_arrive_whole_and_in_order() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n".to_vec();
        through_socket(&[head.clone(), Vec::new(), b"{\"a\":1}".to_vec()]).await;
        through_socket(&[
            b"1a\r\n".to_vec(),
            b"data: x\n\n".to_vec(),
            b"\r\n".to_vec(),
        ])
        .await;
        let large: Vec<u8> = (0..=255u8).cycle().take(4 * JOIN_UP_TO + 3).collect();
        through_socket(&[head, large.clone(), b"\r\n".to_vec()]).await;
        through_socket(&[large]).await;
    }
}
