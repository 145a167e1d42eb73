//! Small writes in several pieces sent as one: hyper hands over most messages as a head and
//! a body (an SSE event as a size line, the data and its end), and on Linux a `writev` of
//! a few hundred bytes in two pieces costs measurably more than a `send` of the same bytes
//! in one buffer (about 0.3 µs per write here; see docs/benchmarks.md). Pieces of up to
//! [`JOIN_UP_TO`] bytes in all are copied into one buffer per thread; larger writes stay
//! vectored, where the copy would cost more than it saves. No connection keeps a buffer of
//! its own, so one that once wrote a large body holds no large buffer afterwards (hyper's
//! own flattening, `writev(false)`, would keep its buffer at the largest size it wrote).
//! Both sides use it: the client's socket (`serve::socket`) and upstream connections
//! ([`Joined`]).

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

/// The most bytes copied to join pieces; a larger write goes out vectored.
pub const JOIN_UP_TO: usize = 4096;

thread_local! {
    /// The buffer pieces are joined in, one per thread and reused: a join touches only the
    /// bytes it copies (a fresh array on the stack would be zeroed whole for every write).
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How a vectored write goes out.
pub enum Pieces<'a> {
    /// One piece with bytes (the others empty), as it is; or several, joined.
    One(&'a [u8]),
    /// Nothing to write, or more than [`JOIN_UP_TO`] bytes: written vectored.
    Vectored,
}

/// Runs `write` with `bufs` as one piece when they are (joined, if several are small enough
/// together), or as [`Pieces::Vectored`].
pub fn join<R>(bufs: &[IoSlice<'_>], mut write: impl FnMut(Pieces<'_>) -> R) -> R {
    let mut full = bufs.iter().filter(|buf| !buf.is_empty());
    let (Some(first), second) = (full.next(), full.next()) else {
        return write(Pieces::Vectored);
    };
    if second.is_none() {
        return write(Pieces::One(first));
    }
    let len = bufs.iter().map(|buf| buf.len()).sum::<usize>();
    if len > JOIN_UP_TO {
        return write(Pieces::Vectored);
    }
    // The buffer is taken only here and `write` never joins again, so it is always free;
    // were it not (or the thread ending), the pieces would go out vectored.
    let joined = JOINED.try_with(|joined| {
        let mut joined = joined.try_borrow_mut().ok()?;
        joined.clear();
        for buf in bufs {
            joined.extend_from_slice(buf);
        }
        Some(write(Pieces::One(&joined)))
    });
    match joined {
        Ok(Some(done)) => done,
        Ok(None) | Err(_) => write(Pieces::Vectored),
    }
}

/// An upstream connection's stream, its small vectored writes joined ([`join`]).
#[derive(Debug)]
pub struct Joined<T>(pub T);

impl<T: Read + Unpin> Read for Joined<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Joined<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut inner = Pin::new(&mut self.get_mut().0);
        join(bufs, |pieces| match pieces {
            Pieces::One(one) => inner.as_mut().poll_write(cx, one),
            Pieces::Vectored => inner.as_mut().poll_write_vectored(cx, bufs),
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort(pieces: &[&[u8]]) -> (String, Vec<u8>) {
        let bufs: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        join(&bufs, |pieces| match pieces {
            Pieces::One(one) => ("one".into(), one.to_vec()),
            Pieces::Vectored => ("vectored".into(), Vec::new()),
        })
    }

    #[test]
    fn small_pieces_are_joined_in_order() {
        assert_eq!(
            sort(&[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"{\"a\":1}"]),
            ("one".into(), b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}".to_vec())
        );
        assert_eq!(
            sort(&[b"1a\r\n", b"data: x\n\n", b"\r\n"]),
            ("one".into(), b"1a\r\ndata: x\n\n\r\n".to_vec())
        );
    }

    #[test]
    fn one_piece_goes_out_as_it_is_and_nothing_stays_vectored() {
        assert_eq!(sort(&[b"", b"head", b""]), ("one".into(), b"head".to_vec()));
        assert_eq!(
            sort(&[b"two", b"", b"pieces"]),
            ("one".into(), b"twopieces".to_vec())
        );
        assert_eq!(sort(&[]).0, "vectored");
        assert_eq!(sort(&[b"", b""]).0, "vectored");
    }

    #[test]
    fn pieces_over_the_limit_stay_vectored_and_the_limit_itself_is_joined() {
        let half = vec![b'x'; JOIN_UP_TO / 2];
        assert_eq!(sort(&[&half, &half]).1.len(), JOIN_UP_TO);
        assert_eq!(sort(&[&half, &half, b"!"]).0, "vectored");
    }
}
