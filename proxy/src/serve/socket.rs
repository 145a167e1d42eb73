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
use tokio::runtime::{Handle, RuntimeFlavor};

use super::conn::Watch;

/// hyper's side of a client socket: tokio's own reads and writes, on a shared stream.
#[derive(Debug)]
pub(crate) struct Socket {
    stream: Arc<TcpStream>,
    /// Whether a short read may clear the socket's readiness ([`Socket::poll_read`]): only on
    /// a current-thread runtime (krouter's), where the I/O driver cannot run in between.
    clear_short: bool,
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
    let clear_short = Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::CurrentThread);
    (
        Socket {
            stream,
            clear_short,
        },
        hangup,
    )
}

// === impl Socket ===

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &*self.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            let room = buf.remaining();
            match stream.try_read_buf(buf) {
                Ok(n) => {
                    if self.clear_short && 0 < n && n < room {
                        // A read that did not fill the buffer emptied the socket, as tokio's
                        // own read assumes: without this the hang-up watch's next look would
                        // be a system call that finds nothing. On a current-thread runtime
                        // the I/O driver cannot note new bytes between the read above and
                        // this, so no readiness is lost.
                        let _ = stream.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                        });
                    }
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale; `try_read_buf` has cleared it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl Socket {
    /// Runs `write` once the socket is writable, again while it finds it was not.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match write(&self.stream) {
                // The readiness was stale; the failed write has cleared it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |stream| stream.try_write_vectored(bufs))
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
    /// HTTP/1.1 request is in flight; pending otherwise, woken by the socket when bytes or
    /// its end arrive. Polled after hyper's connection in the same task, so it sees a
    /// request as soon as hyper has dispatched it.
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
