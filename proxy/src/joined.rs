//! Small writes in several pieces sent as one: hyper hands over most messages as a head and
//! a body (an SSE event as a size line, the data and its end), and on Linux a `writev` of
//! a few hundred bytes in two pieces costs measurably more than a `send` of the same bytes
//! in one buffer (about 0.3 µs per write here; see docs/benchmarks.md). Pieces of up to
//! [`JOIN_UP_TO`] bytes in all are copied into a buffer on the stack; larger writes stay
//! vectored, where the copy would cost more than it saves. Nothing is kept between writes,
//! so a connection that once wrote a large body holds no large buffer afterwards (hyper's
//! own flattening, `writev(false)`, would keep its buffer at the largest size it wrote).
//! Both sides use it: the client's socket (`serve::socket`) and upstream connections
//! ([`Joined`]).

use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

/// The most bytes copied to join pieces; a larger write goes out vectored.
pub const JOIN_UP_TO: usize = 4096;

/// How a vectored write goes out.
pub enum Pieces<'a> {
    /// One piece with bytes (the others empty): written as it is.
    One(&'a [u8]),
    /// Several pieces, this many bytes copied into the caller's buffer.
    Joined(usize),
    /// Nothing to write, or more than [`JOIN_UP_TO`] bytes: written vectored.
    Vectored,
}

/// Sorts `bufs`, copying them into `joined` when several pieces are small enough together.
pub fn join<'a>(bufs: &'a [IoSlice<'_>], joined: &mut [u8; JOIN_UP_TO]) -> Pieces<'a> {
    let mut full = bufs.iter().filter(|buf| !buf.is_empty());
    let (Some(_), Some(_)) = (full.next(), full.next()) else {
        return bufs
            .iter()
            .find(|buf| !buf.is_empty())
            .map_or(Pieces::Vectored, |only| Pieces::One(only));
    };
    let len = bufs.iter().map(|buf| buf.len()).sum::<usize>();
    if len > JOIN_UP_TO {
        return Pieces::Vectored;
    }
    let mut free = &mut joined[..];
    for buf in bufs {
        // Cannot fail: the pieces fit, counted above.
        if free.write_all(buf).is_err() {
            return Pieces::Vectored;
        }
    }
    Pieces::Joined(len)
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
        let inner = Pin::new(&mut self.get_mut().0);
        let mut joined = [0u8; JOIN_UP_TO];
        match join(bufs, &mut joined) {
            Pieces::One(only) => inner.poll_write(cx, only),
            Pieces::Joined(len) => inner.poll_write(cx, joined.get(..len).unwrap_or_default()),
            Pieces::Vectored => inner.poll_write_vectored(cx, bufs),
        }
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
        let mut joined = [0u8; JOIN_UP_TO];
        match join(&bufs, &mut joined) {
            Pieces::One(only) => ("one".into(), only.to_vec()),
            Pieces::Joined(len) => ("joined".into(), joined[..len].to_vec()),
            Pieces::Vectored => ("vectored".into(), Vec::new()),
        }
    }

    #[test]
    fn small_pieces_are_joined_in_order() {
        assert_eq!(
            sort(&[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"{\"a\":1}"]),
            (
                "joined".into(),
                b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}".to_vec()
            )
        );
        assert_eq!(
            sort(&[b"1a\r\n", b"data: x\n\n", b"\r\n"]),
            ("joined".into(), b"1a\r\ndata: x\n\n\r\n".to_vec())
        );
    }

    #[test]
    fn one_piece_goes_out_as_it_is_and_nothing_stays_vectored() {
        assert_eq!(sort(&[b"", b"head", b""]), ("one".into(), b"head".to_vec()));
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
