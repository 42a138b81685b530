//! Fewer writes for pipelined HTTP/1 requests.
//!
//! hyper writes and flushes each HTTP/1 answer on its own, so a client that pipelines its requests (as
//! Mesos's scheduler library sends its calls) costs one `writev` per answer, most of a small request's
//! cost on loopback. hyper's own `pipeline_flush` would hold answers back while more requests wait, but
//! without bound: a client that keeps sending and never reads would grow the server's memory forever.
//!
//! [`Coalesce`] sits under hyper instead and holds written bytes until one of:
//! - hyper reads again, which it does only when it has no whole request left to answer;
//! - a second flush comes with nothing written in between (each held flush wakes the connection's task,
//!   so that flush always comes, at the latest on its next poll: a streamed answer is never held longer);
//! - the bytes held reach [`HELD`], which bounds the memory a connection holds;
//! - shutdown, or the connection being dropped (hyper ends on some errors without a shutdown; what the
//!   socket takes at once is still sent).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a connection holds back, in bytes.
pub const HELD: usize = 64 << 10;

/// A buffer larger than this is released once sent, so an idle connection keeps little.
const KEPT: usize = 16 << 10;

/// An I/O stream whose writes are held back as the module says.
pub struct Coalesce<I: AsyncWrite + Unpin> {
    io: I,
    held: Vec<u8>,
    /// How much of `held` is already written.
    sent: usize,
    /// Whether bytes were written since the last flush was held back.
    fresh: bool,
    /// Whether bytes went to `io` since it was last flushed (a TLS stream may buffer them).
    unflushed: bool,
}

impl<I: AsyncWrite + Unpin> Coalesce<I> {
    pub fn new(io: I) -> Coalesce<I> {
        Coalesce { io, held: Vec::new(), sent: 0, fresh: false, unflushed: false }
    }
}

impl<I: AsyncWrite + Unpin> Coalesce<I> {
    /// Writes out what is held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.unflushed = true;
        }
        self.held.clear();
        if self.held.capacity() > KEPT {
            self.held = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Holds `data`, growing the buffer by doubling but never past [`HELD`].
    fn hold(&mut self, data: &[u8]) {
        let need = self.held.len() + data.len();
        if need > self.held.capacity() {
            let target = (self.held.capacity() * 2).max(need).min(HELD).max(need);
            self.held.reserve_exact(target - self.held.len());
        }
        self.held.extend_from_slice(data);
    }

    /// Makes room for `len` more bytes: drains first if they would not fit. `false` when they are too many
    /// to hold at all (the caller writes them through).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.held.len() + len > HELD {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len < HELD))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper reads when it has answered everything it had: the answers go out first.
        ready!(this.poll_drain(cx))?;
        if this.unflushed {
            ready!(Pin::new(&mut this.io).poll_flush(cx))?;
            this.unflushed = false;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !ready!(this.poll_room(cx, data.len()))? {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        this.hold(data);
        this.fresh = true;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.hold(b);
        }
        this.fresh = true;
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fresh && !this.held.is_empty() {
            // More answers may follow at once; if not, the next poll's flush or read sends these.
            this.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<I: AsyncWrite + Unpin> Drop for Coalesce<I> {
    fn drop(&mut self) {
        // One attempt, without waiting: what the socket takes now is not lost with the connection.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.poll_drain(&mut cx).is_ready() {
            let _ = Pin::new(&mut self.io).poll_flush(&mut cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An I/O stream that records each write it is given and reads from `input`.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        input: Vec<u8>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this.input.len().min(buf.remaining());
            buf.put_slice(&this.input[..n]);
            this.input.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.get_mut().writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn answers_written_between_reads_go_out_in_one_write() {
        let mut c = Coalesce::new(Recorder { input: b"next".to_vec(), ..Default::default() });
        for answer in [&b"one "[..], b"two ", b"three"] {
            c.write_all(answer).await.unwrap();
            c.flush().await.unwrap();
        }
        assert!(c.io.writes.is_empty(), "held while answers keep coming");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(c.io.writes, [b"one two three".to_vec()], "sent before the next read");
        assert_eq!(c.io.flushes, 1, "and flushed, for a stream that buffers (TLS)");
    }

    #[tokio::test]
    async fn a_second_flush_with_nothing_new_sends_what_is_held() {
        let mut c = Coalesce::new(Recorder::default());
        c.write_all(b"event").await.unwrap();
        c.flush().await.unwrap();
        assert!(c.io.writes.is_empty());
        c.flush().await.unwrap();
        assert_eq!(c.io.writes, [b"event".to_vec()]);
        c.write_all(b"bye").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(c.io.writes.last().unwrap(), b"bye", "shutdown sends what is held");
    }

    #[tokio::test]
    async fn what_is_held_is_bounded() {
        let mut c = Coalesce::new(Recorder::default());
        let chunk = vec![b'x'; HELD / 4 + 1];
        for _ in 0..4 {
            c.write_all(&chunk).await.unwrap();
            c.flush().await.unwrap();
        }
        assert_eq!(c.io.writes.len(), 1, "the fourth chunk would not fit: the first three went out");
        assert!(c.held.len() <= HELD);
        assert!(c.held.capacity() <= HELD, "{}", c.held.capacity());
        let big = vec![b'y'; HELD];
        c.write_all(&big).await.unwrap();
        assert_eq!(c.io.writes.last().unwrap().len(), HELD, "too big to hold: written through");
        assert!(c.held.capacity() <= KEPT, "a large buffer is released once sent");
    }

    #[test]
    fn what_is_held_is_sent_when_the_connection_is_dropped() {
        let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl AsyncWrite for Shared {
            fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
                self.0.lock().unwrap().extend_from_slice(data);
                Poll::Ready(Ok(data.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut c = Coalesce::new(Shared(writes.clone()));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut c).poll_write(&mut cx, b"answer").is_ready());
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert!(writes.lock().unwrap().is_empty());
        drop(c);
        assert_eq!(writes.lock().unwrap().as_slice(), b"answer");
    }
}
