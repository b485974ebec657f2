//! The socket and its two buffers: framed reading and writing only.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// Most bytes taken from the socket in one read.
const READ_CHUNK: usize = 8 * 1024;
/// How long to try to flush a final packet before closing.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closed connection keeps reading (and discarding) after its
/// last packet, so the client reads that packet rather than a reset.
const LINGER: Duration = Duration::from_secs(1);

/// The socket and its buffers. Both buffers are empty, without memory,
/// while the connection is idle.
pub(super) struct Io<S> {
    stream: S,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    /// Written since the last flush (TLS and WebSocket streams buffer).
    unflushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    pub(super) fn new(stream: S) -> Io<S> {
        Io {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            unflushed: false,
        }
    }

    /// Reads what the socket has and appends it to the read buffer;
    /// Ready(Ok(0)) at the end of the stream.
    ///
    /// The bytes land on the stack first and are copied into the read
    /// buffer: a connection waiting for data then holds no read buffer.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
        self.rbuf.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// Writes what the socket takes of the write buffer now, without
    /// waiting; the rest goes out with the connection's next writes (as
    /// does an error). Returns the bytes written.
    pub(super) fn write_now(&mut self) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.poll_write_out(&mut cx).unwrap_or(0)
    }

    /// Reads more bytes; Ok(false) on end of stream.
    pub(super) async fn fill(&mut self) -> io::Result<bool> {
        Ok(std::future::poll_fn(|cx| self.poll_fill(cx)).await? > 0)
    }

    /// Writes as much of the write buffer as the socket takes without
    /// waiting, then flushes once it is empty. Returns the bytes written.
    pub(super) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> io::Result<usize> {
        let mut written = 0;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    written += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(written),
            }
        }
        if self.unflushed {
            if let Poll::Ready(result) = Pin::new(&mut self.stream).poll_flush(cx) {
                result?;
                self.unflushed = false;
            }
        }
        Ok(written)
    }

    /// Flushes what is buffered and closes the write side, bounded in
    /// time. For a connection whose peer already left, or that has nothing
    /// more to say.
    pub(super) async fn finish(&mut self) {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.flush_and_shutdown()).await;
    }

    /// Like [`Io::finish`], after a last packet that tells the client why
    /// (a DISCONNECT or a refusing CONNACK): the write side is closed, then
    /// whatever the client still sends is read and discarded for up to
    /// [`LINGER`], until it closes its side. Closing with unread bytes in
    /// the socket would send a reset, and the client's TCP stack would
    /// throw away the last packet before the client read it.
    pub(super) async fn finish_lingering(&mut self) {
        let deadline = Instant::now() + CLOSE_FLUSH_TIMEOUT;
        if tokio::time::timeout_at(deadline, self.flush_and_shutdown())
            .await
            .is_err()
        {
            return;
        }
        let linger_until = Instant::now() + LINGER;
        let mut discard = [0u8; READ_CHUNK];
        while let Ok(Ok(n)) =
            tokio::time::timeout_at(linger_until, self.stream.read(&mut discard)).await
        {
            if n == 0 {
                break;
            }
        }
    }

    async fn flush_and_shutdown(&mut self) {
        while !self.wbuf.is_empty() {
            if self.stream.write_buf(&mut self.wbuf).await.unwrap_or(0) == 0 {
                break;
            }
        }
        let _ = self.stream.shutdown().await;
    }

    /// Gives back buffer memory once a buffer is empty, so idle
    /// connections stay small. An empty read buffer may have no capacity
    /// left and still hold on to the allocation that decoded packets were
    /// split from, so it is replaced whatever its capacity.
    pub(super) fn shrink(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
    }
}
