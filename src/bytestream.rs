//! A [`Connection`] as a byte stream, for code written against `AsyncRead + AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Sink;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use crate::connection::{Connection, Receiver, Sender};
use crate::error::Error;
use crate::{Mode, PeerInfo};

/// How many written bytes [`ByteStream`] gathers into one message by default.
pub const DEFAULT_GATHER: usize = 64 << 10;

/// A [`Connection`] as `tokio::io::AsyncRead + AsyncWrite + AsyncBufRead`, to run protocols
/// written for sockets (HTTP, line protocols, …) over the transport.
///
/// Built from tokio-util's [`StreamReader`] and [`SinkWriter`], with a `BufWriter` in front:
///
/// - **Writes are gathered** into one message until `gather` bytes (default
///   [`DEFAULT_GATHER`], 64 KiB) are waiting; a single write at least that large becomes a
///   message of its own (copied once, since the caller keeps its buffer).
/// - **`flush`** sends the gathered bytes as a message even if it is short and writes its
///   descriptor into the socket, as flushing a socket hands bytes to the kernel: it does not
///   wait for the peer to pull them. (Waiting there would make protocols that flush a
///   response and then watch for the peer's end of file, such as HTTP/1.1 servers, see the
///   peer's close in the middle of their own flush.)
/// - **`shutdown`** flushes, waits until the peer has received everything written, then closes
///   the sending direction: the peer reads end of file. This is where delivery is confirmed.
///   Unlike a socket's, flushed bytes still live in this process until the peer pulls them:
///   dropping the stream (or exiting) before `shutdown` completes loses them, and the peer
///   gets an error.
/// - **Reads** return the peer's messages as one continuous stream of bytes; message
///   boundaries are not visible.
///
/// Reading and writing need the same `&mut self`; progress in one direction (acknowledgements,
/// pulls) happens while either is polled, as for [`Connection`].
///
/// ```
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
/// use tokio_pvm::{ByteStream, Connection};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let (a, b) = Connection::pair().await?;
/// let (mut a, mut b) = (ByteStream::new(a), ByteStream::new(b));
/// let reader = tokio::spawn(async move {
///     let mut line = String::new();
///     b.read_line(&mut line).await?;
///     Ok::<_, std::io::Error>(line)
/// });
/// a.write_all(b"hello\n").await?;
/// a.shutdown().await?;
/// assert_eq!(reader.await.unwrap()?, "hello\n");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ByteStream {
    reader: StreamReader<Receiver, Bytes>,
    writer: BufWriter<SinkWriter<CopyToBytes<WriteOut>>>,
}

/// A [`Sender`] whose flush only writes the descriptors out (see [`ByteStream`]).
#[derive(Debug)]
struct WriteOut(Sender);

impl Sink<Bytes> for WriteOut {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<(), Error> {
        Pin::new(&mut self.0).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_write_out(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

impl ByteStream {
    /// The peer's credentials, as the kernel reported them.
    pub fn peer(&self) -> &PeerInfo {
        self.reader.get_ref().peer()
    }

    /// How this side receives (see [`Connection::mode`]).
    pub fn mode(&self) -> &Mode {
        self.reader.get_ref().mode()
    }

    /// How what this side writes reaches the peer (see [`Connection::send_mode`]).
    pub fn send_mode(&self) -> &Mode {
        self.writer.get_ref().get_ref().get_ref().0.mode()
    }

    /// Wraps `conn`, gathering writes into messages of up to [`DEFAULT_GATHER`] bytes.
    pub fn new(conn: Connection) -> ByteStream {
        ByteStream::with_gather(conn, DEFAULT_GATHER)
    }

    /// Wraps `conn`, gathering writes into messages of up to `gather` bytes (at least 1).
    pub fn with_gather(conn: Connection, gather: usize) -> ByteStream {
        let (tx, rx) = conn.split();
        ByteStream {
            reader: StreamReader::new(rx),
            writer: BufWriter::with_capacity(
                gather.max(1),
                SinkWriter::new(CopyToBytes::new(WriteOut(tx))),
            ),
        }
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
}
