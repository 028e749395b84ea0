//! A [`Connection`] as a byte stream, for code written against `AsyncRead + AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::{Connection, Receiver, Sender};
use crate::pool::BufferPool;
use crate::protocol::Outgoing;
use crate::{Mode, PeerInfo};

/// How many written bytes [`ByteStream`] gathers into one message by default.
pub const DEFAULT_GATHER: usize = 64 << 10;

/// Messages up to this size travel inline through the control socket, as the bytes of a
/// socket do, instead of being pulled (as far as the peer accepts inline messages that large:
/// [`Config::max_inline_size`](crate::Config::max_inline_size), 64 KiB by default): the
/// [`ByteStream`] raises its connection's inline threshold to it. Measured with WebSocket
/// messages between two processes (BENCHMARKS.md): inline is 1.1-1.2x a pull at 1 KiB, equal
/// at 2 KiB, 0.6x at 4-8 KiB. An inline message's bytes go through the socket's buffer and
/// the kernel; a pulled one is copied once by `process_vm_readv`, which one call does for
/// many small messages, and acknowledged at once.
const STREAM_INLINE: u32 = 2 << 10;

/// Messages of at least this size are written into the connection's recycled buffers: fresh
/// memory that large comes from `mmap` and costs a page fault per 4 KiB page, more than the
/// copy. Smaller ones come from the allocator, which reuses them without faults (and a pooled
/// buffer would be up to twice their size: the pool's classes are powers of two).
const POOLED_WRITE: usize = 1 << 20;

/// A read that has copied a message (or the rest of one) larger than this returns; after a
/// smaller one it goes on with the messages that have arrived. Measured with the bench's
/// WebSocket roles: going on after 1 KiB messages saves a lock and a wake-up per message;
/// going on after 64 KiB ones was 10% slower than returning.
const SMALL_READ: usize = STREAM_INLINE as usize;

/// Largest message one write makes. A longer write is taken in part (as a socket takes what
/// fits into its buffer), so that its pieces are pulled while the next are written, and no
/// message is larger than the peer accepts.
const MAX_WRITE: usize = 4 << 20;

/// A [`Connection`] as `tokio::io::AsyncRead + AsyncWrite + AsyncBufRead`, to run protocols
/// written for sockets (HTTP/1.1 and HTTP/2, gRPC, WebSocket, line protocols, …) over the
/// transport. It behaves as a Unix socket does at every stage of its life:
///
/// - **Writes are gathered** into one message while they fit into `gather` bytes (default
///   [`DEFAULT_GATHER`], 64 KiB); a write that does not fit goes out at once (after what was
///   gathered) as a message of its own of up to 4 MiB (a longer write is taken in part, as a
///   socket takes what fits its buffer). Messages up to 2 KiB travel inline through the
///   control socket, as a socket's bytes do; larger ones are pulled.
/// - **`flush`** sends the gathered bytes as a message even if it is short and hands it to
///   the connection: it does not wait for the peer. The message (or its descriptor) is
///   written into the control socket at once, except on a multi-thread runtime while the
///   peer has yet to read bytes written there before: then it follows them, in one write with
///   whatever else was flushed meanwhile, as soon as the socket reports room (at the latest
///   once the peer has read everything), without another call on this side (the
///   connection's driver task writes it). The peer would reach the new bytes only after the
///   unread ones anyway, and a chatty protocol's run of small flushes costs a few system
///   calls instead of one each (a flush that finds everything read costs an `ioctl` more).
///   Until then the bytes live in this process, as pulled messages always do (see dropping,
///   below). Over TCP every flush writes at once.
/// - **Reads** return the peer's messages as one continuous stream of bytes; message
///   boundaries are not visible. The peer's messages are received (pulled into this side's
///   receive buffer, bounded by the window) whether or not anything reads, as a socket's
///   receive buffer fills; when it is full, the peer's writes wait.
/// - **`shutdown`** flushes, waits until the peer's transport has pulled everything written
///   (not until its application has read it), then closes the sending direction: the peer
///   reads end of file after the last byte. If the peer has closed its reading side, it
///   completes at once, and later writes fail with `BrokenPipe`, as on a socket.
/// - **Dropping** the stream (or its [`ByteWriter`]) loses nothing written, flushed or not:
///   the connection's driver task sends what was buffered, keeps the bytes alive until the
///   peer has pulled them, then closes the direction, within
///   [`Config::linger`](crate::Config::linger). Unlike a socket's kernel buffer, those bytes
///   live in this process: exiting the process (or shutting down its Tokio runtime) before
///   the peer pulled them loses them, and the peer then reads an error, not a clean end of
///   file. Dropping the reading side tells the peer, whose writes then fail with
///   `BrokenPipe`.
///
/// [`into_split`](ByteStream::into_split) gives a reader and a writer to use from different
/// tasks, as `UnixStream::into_split` does.
///
/// # Cancel safety
/// As for a socket: `read`, `read_buf`, `fill_buf`, `write`, `flush` and `shutdown` are
/// cancel safe (a cancelled `read` consumed nothing; a cancelled `write` accepted nothing;
/// `flush` and `shutdown` may be called again). Composite operations such as `read_exact`,
/// `read_to_end` and `write_all` are not: cancelled half-way, part of the data was read or
/// written.
///
/// ```
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
/// use tokio_pvm::{ByteStream, Connection};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let (a, b) = Connection::pair().await?;
/// let (mut a, mut b) = (ByteStream::new(a), ByteStream::new(b));
/// a.write_all(b"hello\n").await?;
/// a.shutdown().await?; // completes without anyone reading: b's transport pulled the bytes
/// let mut line = String::new();
/// b.read_line(&mut line).await?;
/// assert_eq!(line, "hello\n");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ByteStream {
    reader: ByteReader,
    writer: ByteWriter,
}

/// The reading half of a [`ByteStream`], from [`ByteStream::into_split`]:
/// `AsyncRead + AsyncBufRead`. Dropping it closes the reading direction (see [`ByteStream`]).
#[derive(Debug)]
pub struct ByteReader {
    rx: Receiver,
    /// What is left of the message being read.
    chunk: Bytes,
}

/// The writing half of a [`ByteStream`], from [`ByteStream::into_split`]: `AsyncWrite`.
/// Dropping it sends what it had gathered and closes the writing direction once the peer has
/// everything (see [`ByteStream`]).
#[derive(Debug)]
pub struct ByteWriter {
    sender: Sender,
    /// Bytes written and not yet sent as a message.
    buf: BytesMut,
    gather: usize,
    /// Where messages of [`POOLED_WRITE`] bytes and more are copied: the connection's pool of
    /// large buffers, to which a buffer returns once the peer has pulled it.
    pool: BufferPool,
    /// Whether the pool keeps anything (`Config::buffer_pool(0)` turns it off: a pooled
    /// buffer, up to twice the message's size, would then be freed every time).
    pooled: bool,
}

impl ByteStream {
    /// Wraps `conn`, gathering writes into messages of up to [`DEFAULT_GATHER`] bytes.
    pub fn new(conn: Connection) -> ByteStream {
        ByteStream::with_gather(conn, DEFAULT_GATHER)
    }

    /// Wraps `conn`, gathering writes into messages of up to `gather` bytes (at least 1, at
    /// most 4 MiB and the peer's largest message).
    pub fn with_gather(conn: Connection, gather: usize) -> ByteStream {
        let (tx, rx) = conn.split();
        tx.raise_inline_threshold(STREAM_INLINE);
        let pool = tx.buffer_pool();
        let pooled = pool.enabled();
        ByteStream {
            reader: ByteReader {
                rx,
                chunk: Bytes::new(),
            },
            writer: ByteWriter {
                sender: tx,
                buf: BytesMut::new(),
                gather: gather.clamp(1, MAX_WRITE),
                pool,
                pooled,
            },
        }
    }

    /// The peer's credentials, as the kernel reported them.
    pub fn peer(&self) -> &PeerInfo {
        self.writer.sender.peer()
    }

    /// How this side receives (see [`Connection::mode`]).
    pub fn mode(&self) -> &Mode {
        self.reader.get_ref().mode()
    }

    /// How what this side writes reaches the peer (see [`Connection::send_mode`]).
    pub fn send_mode(&self) -> &Mode {
        self.writer.sender.mode()
    }

    /// The connection's two halves underneath, for what they tell (peer, modes, messages in
    /// flight, the control socket's descriptor). Reading or writing through them directly
    /// would bypass bytes buffered here.
    pub fn get_ref(&self) -> (&Sender, &Receiver) {
        (&self.writer.sender, self.reader.get_ref())
    }

    /// Splits the stream into a reader and a writer that can be used from different tasks.
    pub fn into_split(self) -> (ByteReader, ByteWriter) {
        (self.reader, self.writer)
    }
}

impl ByteReader {
    /// The receiving half underneath.
    pub fn get_ref(&self) -> &Receiver {
        &self.rx
    }

    /// Makes sure the current message has bytes left unless the stream has ended: waits for
    /// the next message when it is used up. Errors are reported as a socket's reads report
    /// them (a peer that vanished is a reset connection, not a broken pipe, which is what
    /// writes see).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.chunk.is_empty() {
            // Let the used-up message go before the next is read: its memory (the control
            // socket's read buffer, for an inline message) may then be reused at once.
            self.chunk = Bytes::new();
        }
        while self.chunk.is_empty() {
            match ready!(Pin::new(&mut self.rx).poll_next(cx)) {
                Some(Ok(message)) => self.chunk = message,
                Some(Err(e)) => return Poll::Ready(Err(e.into_read_error())),
                None => break,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The peer's credentials, as the kernel reported them.
    pub fn peer(&self) -> &PeerInfo {
        self.get_ref().peer()
    }
}

impl ByteWriter {
    /// The sending half underneath.
    pub fn get_ref(&self) -> &Sender {
        &self.sender
    }

    /// The peer's credentials, as the kernel reported them.
    pub fn peer(&self) -> &PeerInfo {
        self.sender.peer()
    }

    /// Sends the gathered bytes as one message once the window has room and, with
    /// `write_out` (a flush), writes the socket under the same lock. A message small enough
    /// to travel inline is copied straight from the gather buffer into the control socket's
    /// write buffer. Once the window has room the bytes are taken, even if the socket is full
    /// (`Pending`: the next flush writes them).
    fn poll_send_buffered(
        &mut self,
        cx: &mut Context<'_>,
        write_out: bool,
    ) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return match write_out {
                true => self.sender.poll_write_out(cx).map_err(io::Error::from),
                false => Poll::Ready(Ok(())),
            };
        }
        ready!(Pin::new(&mut self.sender).poll_ready(cx))?;
        let item = if self.buf.len() <= STREAM_INLINE as usize {
            Outgoing::Borrowed(&self.buf)
        } else {
            Outgoing::Owned(self.buf.split().freeze())
        };
        let sent = self.sender.send_message(item, write_out.then_some(cx));
        self.buf.clear();
        match sent {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// Takes the bytes of `bufs`: the leading buffers that fit into `gather` are gathered;
    /// if the first does not fit, what was gathered goes out as a message of its own (a
    /// frame header, say: small, inline), then that buffer as one message of up to
    /// [`MAX_WRITE`] bytes (a longer one is taken in part, as a socket takes what fits into
    /// its buffer). Messages so keep the sizes the application writes: a header joined to a
    /// 64 KiB payload would take a receive buffer twice as large at the peer (its pool's
    /// classes are powers of two).
    fn poll_write_bufs(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let max = usize::try_from(self.sender.max_message_size())
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_WRITE);
        let limit = self.gather.min(max);
        let mut taken = 0;
        let mut rest = bufs.iter().filter(|b| !b.is_empty()).peekable();
        while let Some(b) = rest.next_if(|b| self.buf.len() + b.len() <= limit) {
            self.buf.extend_from_slice(b);
            taken += b.len();
        }
        let Some(data) = rest.next().filter(|_| taken == 0) else {
            return Poll::Ready(Ok(taken));
        };
        ready!(self.poll_send_buffered(cx, false))?;
        ready!(Pin::new(&mut self.sender).poll_ready(cx))?;
        let take = data.len().min(max);
        let message = if take >= POOLED_WRITE && self.pooled {
            let mut pooled = self.pool.take(take);
            pooled.as_mut_slice().copy_from_slice(&data[..take]);
            pooled.into_bytes()
        } else {
            Bytes::copy_from_slice(&data[..take])
        };
        // Taken whole: nothing is written without a context.
        let _ = self.sender.send_message(Outgoing::Owned(message), None)?;
        Poll::Ready(Ok(take))
    }
}

impl Drop for ByteWriter {
    fn drop(&mut self) {
        // Written bytes are the application's data as much as flushed ones: hand them to the
        // driver, which sends them before closing (the sender's own drop, right after).
        if !self.buf.is_empty() {
            self.sender.send_on_drop(self.buf.split().freeze());
        }
    }
}

impl AsyncRead for ByteReader {
    /// Fills `buf` as a socket read does: with every byte that has arrived, up to its size,
    /// across message boundaries; waits only while nothing has.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_chunk(cx))?;
        // Empty only at the end of the stream.
        let n = this.chunk.len().min(buf.remaining());
        buf.put_slice(&this.chunk[..n]);
        this.chunk.advance(n);
        if buf.remaining() > 0 && (1..=SMALL_READ).contains(&n) {
            // Room left after a small message (a chatty protocol's frame), all of it copied:
            // copy the messages that have arrived too, without waiting, under one lock. (The
            // used-up message is let go first: its memory may then be reused at once.) After
            // a large part, as much as one socket read returns has been copied.
            this.chunk = Bytes::new();
            this.chunk = this.rx.copy_arrived(buf, SMALL_READ).unwrap_or_default();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for ByteReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.poll_chunk(cx))?;
        Poll::Ready(Ok(&this.chunk))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().chunk.advance(amt);
    }
}

impl AsyncWrite for ByteWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_bufs(cx, &[io::IoSlice::new(data)])
    }

    /// Gathers the leading buffers that fit (a frame's header and a small payload become one
    /// message); a buffer that does not fit is taken as [`poll_write`](AsyncWrite::poll_write)
    /// takes it.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send_buffered(cx, true)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffered(cx, false))?;
        Poll::Ready(ready!(Pin::new(&mut this.sender).poll_close(cx)).map_err(io::Error::from))
    }
}

impl AsyncRead for ByteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncBufRead for ByteStream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().reader).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.reader).consume(amt)
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.writer.is_write_vectored()
    }
}
