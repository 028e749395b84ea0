//! Third-party protocol stacks over `ByteStream` between two real processes, each checked the
//! same way over `tokio::net::UnixStream` for comparison:
//!
//! - hyper's HTTP/2 client and server: 100 concurrent streams with bodies of 0 B to 4 MiB,
//!   then the two ways an HTTP/2 connection ends (the client drops its `SendRequest`; the
//!   server calls `graceful_shutdown`), on 20 fresh connections each;
//! - tonic gRPC (messages, service and client written by hand over `tonic::server::Grpc` and
//!   `tonic::client::Grpc`, no code generation): a unary call, 1,000 streamed messages, one
//!   16 MiB message each way, then `serve_with_incoming_shutdown` with a call in flight, on 10
//!   fresh servers;
//! - tokio-tungstenite WebSockets: 10,000 messages each way with pings both ways, then the
//!   close handshake, started by the client or by the server.
//!
//! The child process is this test binary, re-executed with a role (see `util`); the roles are
//! in `mod roles` at the end. Each test fails instead of hanging after [`LIMIT`].
//!
//! HTTP/2 and gRPC connections here close the way careful servers close sockets (see
//! [`Lingering`]); without that, h2's own races at the close end some connections with an
//! error over any socket.

mod util;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_pvm::{ByteStream, Connection, Listener};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tonic::{Status, Streaming};
use util::{ChildProc, pattern, temp_dir, wait_for};

child_entry!(roles::run);

/// Longest a whole test may take before it counts as hung.
const LIMIT: Duration = Duration::from_secs(60);
/// Longest a child process lives, so that none outlives a test run that died.
const LIFETIME: Duration = Duration::from_secs(90);
/// How long one side may take to see a connection end once the other side has ended it (or
/// the last stream of a closing connection is done): far more than it takes.
const ENDING: Duration = Duration::from_secs(5);
const ENDING_LABEL: &str = "5 s";

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"))
}

/// An error and its sources, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Transports

/// The byte stream a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// `tokio_pvm::ByteStream` over a `Connection`.
    Pvm,
    /// `tokio::net::UnixStream`, for comparison.
    Unix,
    /// `tokio_pvm::ByteStream` over the TCP carrier (plain, on loopback). The listener writes
    /// the address it bound into the file at the run's path, where the client reads it.
    #[cfg(feature = "tcp")]
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Pvm => "bytestream",
            Transport::Unix => "unix",
            #[cfg(feature = "tcp")]
            Transport::Tcp => "tcp",
        }
    }

    fn parse(name: &str) -> Transport {
        match name {
            "bytestream" => Transport::Pvm,
            "unix" => Transport::Unix,
            #[cfg(feature = "tcp")]
            "tcp" => Transport::Tcp,
            other => panic!("unknown transport {other}"),
        }
    }
}

/// A byte stream of either transport.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Duplex for T {}
type Io = Box<dyn Duplex>;

/// The listening side of either transport.
enum Acceptor {
    Pvm(Box<Listener>),
    Unix(UnixListener),
}

impl Acceptor {
    fn bind(transport: Transport, path: &Path) -> io::Result<Acceptor> {
        Ok(match transport {
            Transport::Pvm => Acceptor::Pvm(Box::new(Listener::bind(path)?)),
            Transport::Unix => Acceptor::Unix(UnixListener::bind(path)?),
            #[cfg(feature = "tcp")]
            Transport::Tcp => {
                let listener = Listener::bind_with("tcp://127.0.0.1:0", tcp_config())?;
                let addr = listener.local_addrs().remove(0).to_string();
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, addr)?;
                std::fs::rename(&tmp, path)?;
                Acceptor::Pvm(Box::new(listener))
            }
        })
    }

    /// The next connection and its peer's pid.
    async fn accept(&mut self) -> io::Result<(Io, i32)> {
        match self {
            Acceptor::Pvm(listener) => {
                let conn = listener.accept().await?;
                // Over TCP the peer has no pid: 0.
                let pid = conn.peer().pid().unwrap_or(0);
                Ok((Box::new(ByteStream::new(conn)), pid))
            }
            Acceptor::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                let pid = stream.peer_cred()?.pid().unwrap_or(0);
                Ok((Box::new(stream), pid))
            }
        }
    }
}

/// Connects to the listener at `path` once it exists (retrying while it is between `bind` and
/// `listen`); returns the stream and the peer's pid.
async fn connect(transport: Transport, path: &Path) -> io::Result<(Io, i32)> {
    wait_for(path).await;
    let mut tries = 0;
    loop {
        let attempt = match transport {
            Transport::Pvm => Connection::connect(path)
                .await
                .map(|conn| {
                    let pid = conn.peer().pid().unwrap();
                    (Box::new(ByteStream::new(conn)) as Io, pid)
                })
                .map_err(io::Error::from),
            Transport::Unix => match UnixStream::connect(path).await {
                Ok(stream) => stream
                    .peer_cred()
                    .map(|cred| (Box::new(stream) as Io, cred.pid().unwrap_or(0))),
                Err(e) => Err(e),
            },
            #[cfg(feature = "tcp")]
            Transport::Tcp => {
                let addr = std::fs::read_to_string(path)?;
                Connection::connect_with(addr.as_str(), tcp_config())
                    .await
                    .map(|conn| (Box::new(ByteStream::new(conn)) as Io, 0))
                    .map_err(io::Error::from)
            }
        };
        match attempt {
            Ok(connected) => return Ok(connected),
            Err(_) if tries < 200 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The configuration of both ends over the TCP carrier.
#[cfg(feature = "tcp")]
fn tcp_config() -> tokio_pvm::Config {
    tokio_pvm::Config::new().danger_plain_tcp_on_loopback()
}

/// The pid a peer of `transport` is seen with: over TCP there is none (0).
fn expected_pid(transport: Transport, pid: i32) -> i32 {
    match transport {
        #[cfg(feature = "tcp")]
        Transport::Tcp => 0,
        _ => pid,
    }
}

/// Longest a closed connection lingers (see [`Lingering`]).
const LINGER: Duration = Duration::from_secs(10);

/// A byte stream that closes the way careful servers close sockets (a "lingering close"),
/// and tells how it ended.
///
/// h2 writes after it has seen the other side's GOAWAY: its own GOAWAY in reply, window
/// updates, a PING acknowledgement. A write to a Unix socket (or TCP) whose peer has closed
/// fails with EPIPE, and a peer that closes with such frames unread makes this side's next
/// read fail with ECONNRESET; h2 reports either as a connection error. Over bare `UnixStream`s
/// that ended a few HTTP/2 and gRPC connections in a hundred with an error, on one side or
/// the other, whichever side ended it. So every HTTP/2 and gRPC connection in these tests is
/// wrapped in this: dropped (after h2 has shut down its writing side), it keeps reading and
/// discarding until the peer's end of stream (at most [`LINGER`]) before it closes, and
/// neither outcome depends on which side runs first, over either transport. (The WebSocket
/// tests drop their streams bare: tungstenite writes nothing once its close handshake is
/// over.)
struct Lingering {
    io: Option<Io>,
    /// Pid of the peer, handed to tonic's server as [`PeerPid`].
    peer: i32,
    /// The first end seen: "eof", or an error on reading or writing.
    ended: Option<watch::Sender<Option<String>>>,
}

impl Lingering {
    fn new(io: Io, peer: i32) -> (Lingering, watch::Receiver<Option<String>>) {
        let (ended, seen) = watch::channel(None);
        let io = Lingering {
            io: Some(io),
            peer,
            ended: Some(ended),
        };
        (io, seen)
    }

    fn io(&mut self) -> Pin<&mut Io> {
        Pin::new(self.io.as_mut().expect("not yet dropped"))
    }

    fn note(&self, how: impl FnOnce() -> String) {
        if let Some(ended) = &self.ended {
            note_end(ended, how);
        }
    }
}

fn note_end(ended: &watch::Sender<Option<String>>, how: impl FnOnce() -> String) {
    ended.send_if_modified(|ended| {
        let first = ended.is_none();
        if first {
            *ended = Some(how());
        }
        first
    });
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut io), Some(ended)) = (self.io.take(), self.ended.take()) else {
            return;
        };
        if ended.borrow().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 64 << 10];
            let drained = timeout(LINGER, async {
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) => break "eof".to_owned(),
                        Ok(_) => {}
                        Err(e) => break format!("read error: {e}"),
                    }
                }
            })
            .await;
            note_end(&ended, || {
                drained.unwrap_or_else(|_| format!("no end of stream within {LINGER:?}"))
            });
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.io().poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.note(|| "eof".to_owned());
            }
            Poll::Ready(Err(e)) => self.note(|| format!("read error: {e}")),
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = self.io().poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &polled {
            self.note(|| format!("write error: {e}"));
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = self.io().poll_write_vectored(cx, bufs);
        if let Poll::Ready(Err(e)) = &polled {
            self.note(|| format!("write error: {e}"));
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = self.io().poll_flush(cx);
        if let Poll::Ready(Err(e)) = &polled {
            self.note(|| format!("flush error: {e}"));
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = self.io().poll_shutdown(cx);
        if let Poll::Ready(Err(e)) = &polled {
            self.note(|| format!("shutdown error: {e}"));
        }
        polled
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process playing a role, whose `RESULT` lines arrive as it prints them.
struct Child {
    proc: ChildProc,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Child {
    fn spawn(role: &str, args: &[&str]) -> Child {
        use std::io::BufRead;
        let mut proc = ChildProc::spawn(role, args);
        let stdout = proc
            .child
            .stdout
            .take()
            .expect("the child's stdout is piped");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(line) = line.strip_prefix("RESULT ") {
                    let _ = tx.send(line.to_owned());
                }
            }
        });
        Child { proc, lines }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// The child's next report, or why there is none within `wait`.
    async fn next(&mut self, wait: Duration) -> Result<String, String> {
        match timeout(wait, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err("the child exited without reporting".to_owned()),
            Err(_) => Err(format!("no report within {wait:?}")),
        }
    }

    /// Waits for the child to exit; returns whether it succeeded and the reports it had not
    /// yet handed out.
    async fn exit(mut self, wait: Duration) -> (bool, Vec<String>) {
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(status) = self.proc.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.proc.kill();
                panic!("the child did not exit within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let mut rest = Vec::new();
        while let Some(line) = self.lines.recv().await {
            rest.push(line);
        }
        (status.success(), rest)
    }
}

/// Prints a report line for the parent.
fn report(line: impl std::fmt::Display) {
    println!("RESULT {line}");
}

// ---------------------------------------------------------------------------------------------
// hyper HTTP/2

/// Streams opened at once on each connection.
const H2_STREAMS: usize = 100;
/// Connections for each way of ending one.
const H2_RUNS: usize = 20;
/// Request header with the run number, which picks the body sizes and contents.
const RUN_HEADER: &str = "x-run";
/// Request header with the stream's number within the run.
const SEQ_HEADER: &str = "x-seq";
/// Request header asking the server to call `graceful_shutdown` once it has the heads of this
/// many requests, and to answer none of them before.
const SHUTDOWN_HEADER: &str = "x-shutdown-after";
/// Flow-control windows on both sides: big enough that a 4 MiB body does not crawl.
const H2_STREAM_WINDOW: u32 = 2 << 20;
const H2_CONN_WINDOW: u32 = 8 << 20;

/// How an HTTP/2 connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum H2Ending {
    /// The client drops its `SendRequest` as soon as every request is sent; the connection
    /// closes once the last response is in.
    ClientDrops,
    /// The server calls `graceful_shutdown` while every response is still to come.
    ServerShutsDown,
}

/// Body length of stream `seq` in `run` (the request's, or the response's). Every fifth run
/// is heavy: 2 bodies of 4 MiB and 8 of 256 KiB each way among mostly small ones (about
/// 10 MiB each way); the others stay under 100 KB a body (about 2 MiB each way), so that the
/// 40 runs take seconds, not minutes, in a debug build.
fn h2_len(run: usize, seq: usize, response: bool) -> usize {
    let i = if response { seq + 3 } else { seq };
    let heavy = run.is_multiple_of(5);
    match i % 10 {
        0 => 0,
        1 => 1,
        2 => 100,
        3 => 1000 + i * 37 % 3000,
        4 => 16_384,
        5 => 65_537,
        6 if heavy && i % 50 == 6 => 4 << 20,
        6 if heavy => 256 << 10,
        6 => 100_000,
        _ => (i * 131 + run * 7) % 20_000,
    }
}

/// Content key of a body (see `util::pattern`).
fn h2_key(run: usize, seq: usize, response: bool) -> u64 {
    (run as u64) << 32 | (seq as u64) << 1 | u64::from(response)
}

/// One connection: 100 streams at once, each checking its response, then `ending`; checks
/// that the client's connection future and (from the child's report) the server's
/// `serve_connection` both end with `Ok`.
async fn h2_run(
    transport: Transport,
    path: &Path,
    child: &mut Child,
    run: usize,
    ending: H2Ending,
) -> Result<(), String> {
    let (io, pid) = connect(transport, path)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    assert_eq!(
        pid,
        expected_pid(transport, child.pid()),
        "the server runs in the child"
    );
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .handshake::<_, Full<Bytes>>(TokioIo::new(Lingering::new(io, pid).0))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {}", chain(&e)))?;
    let conn = tokio::spawn(conn);

    let mut streams = JoinSet::new();
    for seq in 0..H2_STREAMS {
        let mut sender = sender.clone();
        let mut req = Request::post("/")
            .header(RUN_HEADER, run)
            .header(SEQ_HEADER, seq);
        if ending == H2Ending::ServerShutsDown {
            req = req.header(SHUTDOWN_HEADER, H2_STREAMS);
        }
        let body = pattern(h2_key(run, seq, false), h2_len(run, seq, false));
        let req = req.body(Full::new(body)).unwrap();
        streams.spawn(async move {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("stream {seq}: {}", chain(&e)))?;
            drop(sender);
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("stream {seq}: response body: {}", chain(&e)))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(format!(
                    "stream {seq}: {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let want = h2_len(run, seq, true);
            if body != pattern(h2_key(run, seq, true), want) {
                return Err(format!(
                    "stream {seq}: the response body ({} B) differs from the {want} B expected",
                    body.len()
                ));
            }
            Ok(())
        });
    }
    // Dropped with every stream in flight, or kept until the server has ended the connection.
    let sender = match ending {
        H2Ending::ClientDrops => {
            drop(sender);
            None
        }
        H2Ending::ServerShutsDown => Some(sender),
    };

    let mut problems = Vec::new();
    let finished = timeout(Duration::from_secs(30), async {
        while let Some(stream) = streams.join_next().await {
            if let Err(e) = stream.expect("stream task") {
                problems.push(e);
            }
        }
    })
    .await;
    if finished.is_err() {
        problems.push(format!("{} streams unfinished after 30 s", streams.len()));
    }
    let client_end = match timeout(ENDING, conn).await {
        Ok(Ok(Ok(()))) => "ok".to_owned(),
        Ok(Ok(Err(e))) => format!("error: {}", chain(&e)),
        Ok(Err(panic)) => format!("panicked: {panic}"),
        Err(_) => format!("still running {ENDING_LABEL} after the last stream"),
    };
    drop(sender);
    let server_end = match child.next(ENDING).await {
        Ok(line) => line,
        Err(e) => format!("conn {run} unknown: {e} (still serving {ENDING_LABEL} later)"),
    };
    if problems.is_empty() && client_end == "ok" && server_end == format!("conn {run} ok") {
        return Ok(());
    }
    Err(format!(
        "streams: {problems:?}; client connection: {client_end}; server: {server_end}"
    ))
}

async fn h2_in_two_processes(transport: Transport) {
    let dir = temp_dir(&format!("stacks-h2-{}", transport.name()));
    let path = dir.join("s");
    let conns = (2 * H2_RUNS).to_string();
    let mut child = Child::spawn(
        "h2_server",
        &[transport.name(), path.to_str().unwrap(), &conns],
    );
    within(async {
        let mut run = 0;
        for ending in [H2Ending::ClientDrops, H2Ending::ServerShutsDown] {
            for _ in 0..H2_RUNS {
                if let Err(e) = h2_run(transport, &path, &mut child, run, ending).await {
                    panic!("run {run} ({ending:?}): {e}");
                }
                run += 1;
            }
        }
        let (ok, rest) = child.exit(ENDING).await;
        assert!(ok && rest.is_empty(), "the server child exits 0: {rest:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_http2_over_bytestream_in_two_processes() {
    h2_in_two_processes(Transport::Pvm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_http2_over_unix_stream_in_two_processes() {
    h2_in_two_processes(Transport::Unix).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_http2_over_the_tcp_carrier_in_two_processes() {
    h2_in_two_processes(Transport::Tcp).await;
}

// ---------------------------------------------------------------------------------------------
// tonic gRPC, written by hand: what tonic-build would generate from
//
//     package stacks;
//     message Blob { uint64 seq = 1; bytes data = 2; }
//     message Count { uint32 messages = 1; uint32 pause_ms = 2; }
//     service Echo {
//       rpc Unary(Blob) returns (Blob);          // answers `answer(request)`
//       rpc Numbers(Count) returns (stream Blob); // `numbered(0..messages)`
//       rpc Slow(Count) returns (stream Blob);    // the same, pausing; starts the shutdown
//     }

/// A message with a sequence number and a payload.
#[derive(Clone, PartialEq, prost::Message)]
struct Blob {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(bytes = "bytes", tag = "2")]
    data: Bytes,
}

/// How many messages a streaming call answers with, and the pause before each.
#[derive(Clone, PartialEq, prost::Message)]
struct Count {
    #[prost(uint32, tag = "1")]
    messages: u32,
    #[prost(uint32, tag = "2")]
    pause_ms: u32,
}

/// Largest gRPC message either side sends or accepts (tonic's default decoding limit is
/// 4 MiB).
const GRPC_MAX_MESSAGE: usize = 32 << 20;
/// Size of the one big message, each way.
const GRPC_BIG: usize = 16 << 20;
const GRPC_STREAMED: u32 = 1000;
/// Messages of the call in flight during the shutdown, and the pause before each.
const GRPC_SLOW: u32 = 20;
const GRPC_SLOW_PAUSE_MS: u32 = 10;
const GRPC_ROUNDS: usize = 10;
const UNARY: &str = "/stacks.Echo/Unary";
const NUMBERS: &str = "/stacks.Echo/Numbers";
const SLOW: &str = "/stacks.Echo/Slow";

/// The server's answer to `Blob` request `req`: the same length, other content.
fn answer(req: &Blob) -> Blob {
    Blob {
        seq: req.seq,
        data: pattern(req.seq ^ 1 << 62, req.data.len()),
    }
}

/// Message `seq` of a streaming answer: sizes from 0 B to about 8 KiB.
fn numbered(seq: u64) -> Blob {
    let len = match seq % 5 {
        0 => 0,
        1 => 10,
        2 => 300,
        3 => 4096,
        _ => (seq as usize * 97) % 8192,
    };
    Blob {
        seq,
        data: pattern(seq | 1 << 61, len),
    }
}

/// tonic's prost codec, for any two prost messages: tonic-prost's `ProstCodec`, written out
/// here to spare a dependency.
struct Prost<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for Prost<E, D> {
    fn default() -> Self {
        Prost(PhantomData)
    }
}

impl<E, D> Codec for Prost<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> ProstEncoder<E> {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder(PhantomData)
    }
}

struct ProstEncoder<E>(PhantomData<fn(E)>);

impl<E: prost::Message> Encoder for ProstEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding: {e}")))
    }
}

struct ProstDecoder<D>(PhantomData<fn() -> D>);

impl<D: prost::Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding: {e}")))
    }
}

/// Pid of the process at the other end of a connection, in every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerPid(i32);

impl Connected for Lingering {
    type ConnectInfo = PeerPid;

    fn connect_info(&self) -> PeerPid {
        PeerPid(self.peer)
    }
}

/// The `stacks.Echo` service (tonic-build's `EchoServer`, reduced to what is used).
#[derive(Clone)]
struct EchoServer {
    /// The only process allowed to call.
    client: PeerPid,
    /// Set once a `Slow` call has started: the cue to shut the server down.
    slow_started: Arc<watch::Sender<bool>>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "stacks.Echo";
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<Blob, Status>> + Send>>;

impl EchoServer {
    fn check_peer<T>(&self, req: &tonic::Request<T>) -> Result<(), Status> {
        match req.extensions().get::<PeerPid>() {
            Some(&pid) if pid == self.client => Ok(()),
            other => Err(Status::permission_denied(format!(
                "a call from {other:?}, not from the client {:?}",
                self.client
            ))),
        }
    }

    async fn unary(self, req: tonic::Request<Blob>) -> Result<tonic::Response<Blob>, Status> {
        self.check_peer(&req)?;
        let blob = req.into_inner();
        if blob.data != pattern(blob.seq, blob.data.len()) {
            return Err(Status::invalid_argument(format!(
                "request {} ({} B) arrived corrupted",
                blob.seq,
                blob.data.len()
            )));
        }
        Ok(tonic::Response::new(answer(&blob)))
    }

    async fn numbers(
        self,
        req: tonic::Request<Count>,
        slow: bool,
    ) -> Result<tonic::Response<BlobStream>, Status> {
        self.check_peer(&req)?;
        let count = req.into_inner();
        if slow {
            self.slow_started.send_replace(true);
        }
        let pause = Duration::from_millis(count.pause_ms.into());
        let stream =
            futures::stream::iter(0..u64::from(count.messages)).then(move |seq| async move {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                Ok(numbered(seq))
            });
        Ok(tonic::Response::new(Box::pin(stream) as BlobStream))
    }
}

impl tower::Service<hyper::http::Request<tonic::body::Body>> for EchoServer {
    type Response = hyper::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            Ok(match path.as_str() {
                UNARY => {
                    let method = tower::service_fn(move |r| this.clone().unary(r));
                    tonic::server::Grpc::new(Prost::<Blob, Blob>::default())
                        .max_decoding_message_size(GRPC_MAX_MESSAGE)
                        .max_encoding_message_size(GRPC_MAX_MESSAGE)
                        .unary(method, req)
                        .await
                }
                NUMBERS | SLOW => {
                    let slow = path == SLOW;
                    let method = tower::service_fn(move |r| this.clone().numbers(r, slow));
                    tonic::server::Grpc::new(Prost::<Blob, Count>::default())
                        .max_decoding_message_size(GRPC_MAX_MESSAGE)
                        .max_encoding_message_size(GRPC_MAX_MESSAGE)
                        .server_streaming(method, req)
                        .await
                }
                _ => Status::unimplemented(format!("no method {path}")).into_http(),
            })
        })
    }
}

/// One round: a server in this process, the client in a child (role `grpc_client`), the
/// shutdown once the client's `Slow` call has started.
async fn grpc_round(transport: Transport, path: &Path) -> Result<(), String> {
    let acceptor = Acceptor::bind(transport, path).map_err(|e| format!("binding: {e}"))?;
    let child = Child::spawn("grpc_client", &[transport.name(), path.to_str().unwrap()]);
    let (slow_started, mut started) = watch::channel(false);
    let service = EchoServer {
        client: PeerPid(expected_pid(transport, child.pid())),
        slow_started: Arc::new(slow_started),
    };
    let incoming = futures::stream::unfold(acceptor, |mut acceptor| async move {
        let accepted = acceptor
            .accept()
            .await
            .map(|(io, peer)| Lingering::new(io, peer).0);
        Some((accepted, acceptor))
    });
    let mut signal = started.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            service,
            incoming,
            async move {
                let _ = signal.wait_for(|&started| started).await;
            },
        ),
    );
    let triggered = timeout(Duration::from_secs(30), started.wait_for(|&s| s))
        .await
        .is_ok_and(|r| r.is_ok());
    let server_end = if !triggered {
        "never shut down: the Slow call did not start within 30 s".to_owned()
    } else {
        match timeout(ENDING, server).await {
            Ok(Ok(Ok(()))) => "ok".to_owned(),
            Ok(Ok(Err(e))) => format!("error: {}", chain(&e)),
            Ok(Err(panic)) => format!("panicked: {panic}"),
            Err(_) => format!("still running {ENDING_LABEL} after the shutdown signal"),
        }
    };
    let (ok, lines) = child.exit(ENDING + Duration::from_secs(5)).await;
    let client_saw = ["calls ok", "connection eof"];
    if server_end == "ok" && ok && lines == client_saw {
        return Ok(());
    }
    Err(format!(
        "server: {server_end}; client (exit {}): {lines:?}",
        if ok { "ok" } else { "failed" }
    ))
}

async fn grpc_in_two_processes(transport: Transport) {
    let dir = temp_dir(&format!("stacks-grpc-{}", transport.name()));
    within(async {
        for round in 0..GRPC_ROUNDS {
            let path = dir.join(format!("s{round}"));
            if let Err(e) = grpc_round(transport, &path).await {
                panic!("round {round}: {e}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_grpc_over_bytestream_in_two_processes() {
    grpc_in_two_processes(Transport::Pvm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_grpc_over_unix_stream_in_two_processes() {
    grpc_in_two_processes(Transport::Unix).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_grpc_over_the_tcp_carrier_in_two_processes() {
    grpc_in_two_processes(Transport::Tcp).await;
}

// ---------------------------------------------------------------------------------------------
// tokio-tungstenite WebSockets

/// Messages each way on each connection.
const WS_MESSAGES: usize = 10_000;
/// The client pings after every message `i` with `i % 100 == 50`, the server after every
/// message `i` with `i % 500 == 249`: every ping goes out before the last message, so every
/// pong comes back before the close handshake.
const WS_CLIENT_PINGS: usize = WS_MESSAGES / 100;
const WS_SERVER_PINGS: usize = WS_MESSAGES / 500;

/// Message `i` from the client (`from_server` false) or the server: mostly under 5 KB, one in
/// ten 10 KB, one in a hundred 64 KiB, five of 1 MiB; one in 13 is text.
fn ws_message(from_server: bool, i: usize) -> Message {
    let len = match i % 10 {
        0 => 0,
        1..=5 => i % 200,
        6 | 7 => 1000 + i % 3000,
        8 => 4096 + i % 1000,
        _ if i % 2000 == 9 => 1 << 20,
        _ if i % 100 == 9 => 65_536,
        _ => 10_000 + i % 100,
    };
    let data = pattern(i as u64 | u64::from(from_server) << 40 | 7 << 48, len);
    if i.is_multiple_of(13) {
        let text: String = data.iter().map(|b| char::from(b'a' + b % 26)).collect();
        Message::text(text)
    } else {
        Message::Binary(data)
    }
}

fn ping_payload(i: usize) -> Bytes {
    Bytes::copy_from_slice(&(i as u64).to_be_bytes())
}

/// How a close frame reads in the reports.
fn describe_close(frame: &Option<CloseFrame>) -> String {
    match frame {
        Some(f) => format!("{} {:?}", u16::from(f.code), f.reason.as_str()),
        None => "without a frame".to_owned(),
    }
}

/// One connection: 10,000 messages each way, then the close handshake, started by the client
/// (`mode` "client-close") or by the server ("server-close"); checks what this side saw and
/// what the server child reports.
async fn ws_run(
    transport: Transport,
    path: &Path,
    child: &mut Child,
    mode: &str,
) -> Result<(), String> {
    let (io, pid) = connect(transport, path)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    assert_eq!(
        pid,
        expected_pid(transport, child.pid()),
        "the server runs in the child"
    );
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://localhost/{mode}"), io)
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..WS_MESSAGES {
            sink.feed(ws_message(false, i)).await?;
            if i % 100 == 50 {
                sink.feed(Message::Ping(ping_payload(i))).await?;
            }
        }
        sink.flush().await?;
        Ok::<_, tokio_tungstenite::tungstenite::Error>(sink)
    });
    let (mut echoed, mut pongs, mut pings) = (0, 0, 0);
    while echoed < WS_MESSAGES {
        let msg = match stream.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(format!("after {echoed} echoes: {e}")),
            None => return Err(format!("the stream ended after {echoed} echoes")),
        };
        match msg {
            Message::Binary(_) | Message::Text(_) => {
                if msg != ws_message(true, echoed) {
                    return Err(format!("echo {echoed} differs"));
                }
                echoed += 1;
            }
            Message::Pong(payload) => {
                if payload != ping_payload(pongs * 100 + 50) {
                    return Err(format!("pong {pongs} answers another ping: {payload:?}"));
                }
                pongs += 1;
            }
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => {
                return Err(format!(
                    "the server closed after {echoed} echoes: {}",
                    describe_close(&frame)
                ));
            }
            Message::Frame(_) => unreachable!("raw frames are not read"),
        }
    }
    let sink = writer
        .await
        .expect("writer task")
        .map_err(|e| format!("sending: {e}"))?;
    if (pongs, pings) != (WS_CLIENT_PINGS, WS_SERVER_PINGS) {
        return Err(format!(
            "{pongs} pongs of {WS_CLIENT_PINGS}, {pings} server pings of {WS_SERVER_PINGS}"
        ));
    }
    let mut ws = sink.reunite(stream).expect("halves of one stream");

    // The close handshake: this side's close and the server's reply, or the other way round;
    // then the stream ends (the server drops the connection, as servers do).
    let reason = if mode == "client-close" {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client done".into(),
        };
        match timeout(ENDING, ws.close(Some(frame))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("sending the close: {e}")),
            Err(_) => return Err(format!("sending the close took over {ENDING_LABEL}")),
        }
        "client done"
    } else {
        "server done"
    };
    let mut seen = Vec::new();
    let end = loop {
        match timeout(ENDING, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => seen.push(describe_close(&frame)),
            Ok(Some(Ok(other))) => seen.push(format!("unexpected {other:?}")),
            Ok(Some(Err(e))) => break format!("error: {e}"),
            Ok(None) => break "none".to_owned(),
            Err(_) => break format!("nothing for {ENDING_LABEL}"),
        }
    };
    drop(ws);
    let server = child.next(ENDING).await.unwrap_or_else(|e| e);
    let want_close = format!("{} {reason:?}", u16::from(CloseCode::Normal));
    let want_server = format!(
        "{mode}: messages {WS_MESSAGES} pongs {WS_SERVER_PINGS} close {want_close} end none"
    );
    if seen == [want_close.clone()] && end == "none" && server == want_server {
        return Ok(());
    }
    Err(format!(
        "client saw close frames {seen:?} (want [{want_close:?}]), then the stream's end: \
         {end}; server: {server}"
    ))
}

/// One WebSocket connection to a server child, closed as `mode` says. The child lives on
/// after dropping the connection (it is killed at the end), as a server does: written data
/// that a process had not handed over when it exits is the one documented difference from a
/// socket, and not what this tests.
async fn ws_in_two_processes(transport: Transport, mode: &str) {
    let dir = temp_dir(&format!("stacks-ws-{mode}-{}", transport.name()));
    let path = dir.join("s");
    let mut child = Child::spawn("ws_server", &[transport.name(), path.to_str().unwrap()]);
    within(async {
        if let Err(e) = ws_run(transport, &path, &mut child, mode).await {
            panic!("{mode}: {e}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_client_close_over_bytestream_in_two_processes() {
    ws_in_two_processes(Transport::Pvm, "client-close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_client_close_over_unix_stream_in_two_processes() {
    ws_in_two_processes(Transport::Unix, "client-close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_server_close_over_bytestream_in_two_processes() {
    ws_in_two_processes(Transport::Pvm, "server-close").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_server_close_over_unix_stream_in_two_processes() {
    ws_in_two_processes(Transport::Unix, "server-close").await;
}

// ---------------------------------------------------------------------------------------------
// The child's side

mod roles {
    use super::*;

    /// Runs `role` if it is one of this file's; returns the exit code.
    pub(crate) fn run(role: &str, args: &[String]) -> Option<i32> {
        if !["h2_server", "grpc_client", "ws_server"].contains(&role) {
            return None;
        }
        let transport = Transport::parse(&args[0]);
        let path = Path::new(&args[1]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let work = async {
            match role {
                // h2_server TRANSPORT PATH CONNS: bind at PATH, serve HTTP/2 on CONNS
                // connections (`h2_handle`), report "conn N ok" or "conn N error: ..." as
                // each connection's `serve_connection` ends, exit once all have.
                "h2_server" => Some(h2_server(transport, path, args[2].parse().unwrap()).await),
                // grpc_client TRANSPORT PATH: connect a tonic channel to PATH, make the calls,
                // report "calls ok", wait until the server ends the connection, report
                // "connection eof" (or the error that ended it).
                "grpc_client" => Some(grpc_client(transport, path).await),
                // ws_server TRANSPORT PATH: bind at PATH, then accept WebSocket connections
                // one at a time, echo on each (`ws_serve`), report how it ended and drop it,
                // until killed.
                "ws_server" => Some(ws_server(transport, path).await),
                _ => None,
            }
        };
        let code = rt.block_on(async {
            match timeout(LIFETIME, work).await {
                Ok(code) => code,
                Err(_) => {
                    eprintln!("child role {role} timed out after {LIFETIME:?}");
                    Some(9)
                }
            }
        });
        // Tasks still running (a connection that never ended) must not hold the exit.
        rt.shutdown_background();
        code
    }

    // --- HTTP/2 ---

    /// One connection's shared state.
    struct H2Conn {
        /// Requests whose heads have arrived.
        received: AtomicUsize,
        /// Told once the shutdown point is reached.
        shutdown: Notify,
        /// Set once `graceful_shutdown` has been called: the held answers may go.
        answer: watch::Sender<bool>,
    }

    fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = status;
        resp
    }

    /// Checks the request body, answers with the body for the same run and stream; with
    /// `SHUTDOWN_HEADER`, the request that reaches the count starts the shutdown and every
    /// answer waits until `graceful_shutdown` has been called.
    async fn h2_handle(
        conn: Arc<H2Conn>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let header =
            |name: &str| -> Option<usize> { req.headers().get(name)?.to_str().ok()?.parse().ok() };
        let (Some(run), Some(seq)) = (header(RUN_HEADER), header(SEQ_HEADER)) else {
            return Ok(plain(StatusCode::BAD_REQUEST, "no run or seq".into()));
        };
        let shutdown_after = header(SHUTDOWN_HEADER);
        let n = conn.received.fetch_add(1, Ordering::SeqCst) + 1;
        if shutdown_after == Some(n) {
            conn.shutdown.notify_one();
        }
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                let why = format!("reading the request body: {}", chain(&e));
                return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, why));
            }
        };
        let want = h2_len(run, seq, false);
        if body != pattern(h2_key(run, seq, false), want) {
            let why = format!(
                "the request body ({} B) differs from the {want} B expected",
                body.len()
            );
            return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, why));
        }
        if shutdown_after.is_some() {
            let _ = conn.answer.subscribe().wait_for(|&go| go).await;
        }
        let body = pattern(h2_key(run, seq, true), h2_len(run, seq, true));
        Ok(Response::new(Full::new(body)))
    }

    /// Serves one connection; returns how `serve_connection` ended.
    async fn h2_serve(io: Io) -> String {
        let (answer, _) = watch::channel(false);
        let state = Arc::new(H2Conn {
            received: AtomicUsize::new(0),
            shutdown: Notify::new(),
            answer,
        });
        let service = {
            let state = state.clone();
            hyper::service::service_fn(move |req| h2_handle(state.clone(), req))
        };
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .max_concurrent_streams(200)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW);
        let io = TokioIo::new(Lingering::new(io, 0).0);
        let mut conn = pin!(builder.serve_connection(io, service));
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            () = state.shutdown.notified() => {
                conn.as_mut().graceful_shutdown();
                state.answer.send_replace(true);
                conn.await
            }
        };
        match ended {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("error: {}", chain(&e)),
        }
    }

    async fn h2_server(transport: Transport, path: &Path, conns: usize) -> i32 {
        let mut acceptor = match Acceptor::bind(transport, path) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("h2_server: binding {}: {e}", path.display());
                return 3;
            }
        };
        let mut served = JoinSet::new();
        for n in 0..conns {
            let (io, _) = match acceptor.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("h2_server: accepting: {e}");
                    return 3;
                }
            };
            served.spawn(async move { report(format!("conn {n} {}", h2_serve(io).await)) });
        }
        while served.join_next().await.is_some() {}
        0
    }

    // --- gRPC ---

    async fn grpc_calls(
        grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    ) -> Result<(), String> {
        let ready = |e: tonic::transport::Error| format!("channel not ready: {}", chain(&e));

        // Unary, then the one big message each way.
        for (seq, len) in [(1u64, 1000usize), (2, GRPC_BIG)] {
            let req = Blob {
                seq,
                data: pattern(seq, len),
            };
            let want = answer(&req);
            grpc.ready().await.map_err(ready)?;
            let got = grpc
                .unary(
                    tonic::Request::new(req),
                    PathAndQuery::from_static(UNARY),
                    Prost::<Blob, Blob>::default(),
                )
                .await
                .map_err(|s| format!("unary call of {len} B: {s}"))?
                .into_inner();
            if got != want {
                return Err(format!("the answer to {len} B differs"));
            }
        }

        // Server streaming.
        for (path, messages, pause_ms) in [
            (NUMBERS, GRPC_STREAMED, 0),
            (SLOW, GRPC_SLOW, GRPC_SLOW_PAUSE_MS),
        ] {
            grpc.ready().await.map_err(ready)?;
            let mut stream: Streaming<Blob> = grpc
                .server_streaming(
                    tonic::Request::new(Count { messages, pause_ms }),
                    PathAndQuery::from_static(path),
                    Prost::<Count, Blob>::default(),
                )
                .await
                .map_err(|s| format!("{path}: {s}"))?
                .into_inner();
            for seq in 0..u64::from(messages) {
                match stream.message().await {
                    Ok(Some(got)) if got == numbered(seq) => {}
                    Ok(Some(_)) => return Err(format!("{path}: message {seq} differs")),
                    Ok(None) => return Err(format!("{path}: ended after {seq} messages")),
                    Err(s) => return Err(format!("{path}: message {seq}: {s}")),
                }
            }
            match stream.message().await {
                Ok(None) => {}
                Ok(Some(_)) => return Err(format!("{path}: more than {messages} messages")),
                Err(s) => return Err(format!("{path}: after the last message: {s}")),
            }
        }
        Ok(())
    }

    async fn grpc_client(transport: Transport, path: &Path) -> i32 {
        // How each connection the channel makes ends (it should make one).
        let (conns_tx, mut conns) = mpsc::unbounded_channel();
        let path = path.to_owned();
        let connector = tower::service_fn(move |_: hyper::Uri| {
            let (path, conns) = (path.clone(), conns_tx.clone());
            async move {
                let (io, peer) = connect(transport, &path).await?;
                let (io, ended) = Lingering::new(io, peer);
                let _ = conns.send(ended);
                Ok::<_, io::Error>(TokioIo::new(io))
            }
        });
        let channel = match tonic::transport::Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(connector)
            .await
        {
            Ok(channel) => channel,
            Err(e) => {
                report(format!("connecting: {}", chain(&e)));
                return 3;
            }
        };
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(GRPC_MAX_MESSAGE)
            .max_encoding_message_size(GRPC_MAX_MESSAGE);
        if let Err(e) = grpc_calls(&mut grpc).await {
            report(format!("calls failed: {e}"));
            return 4;
        }
        report("calls ok");
        let Ok(mut ended) = conns.try_recv() else {
            report("no connection");
            return 4;
        };
        if conns.try_recv().is_ok() {
            report("connected more than once");
            return 4;
        }
        // The channel stays up: the server is the one to end the connection.
        match timeout(ENDING, ended.wait_for(Option::is_some)).await {
            Ok(Ok(how)) => report(format!("connection {}", how.as_deref().unwrap_or("?"))),
            Ok(Err(_)) => report("connection dropped unseen"),
            Err(_) => report(format!("connection still open {ENDING_LABEL} later")),
        }
        drop(grpc);
        0
    }

    // --- WebSockets ---

    /// Echoes one connection (each message answered with the server's message of the same
    /// number, pings every 500), then finishes the close handshake; returns how it went.
    async fn ws_serve(io: Io) -> String {
        let mut mode = String::new();
        #[allow(clippy::result_large_err)] // the signature of tungstenite's `Callback`
        let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            mode = req.uri().path().trim_start_matches('/').to_owned();
            Ok(resp)
        };
        let mut ws = match tokio_tungstenite::accept_hdr_async(io, callback).await {
            Ok(ws) => ws,
            Err(e) => return format!("handshake: {e}"),
        };
        let server_closes = mode == "server-close";
        let (mut got, mut pongs) = (0, 0);
        let mut closes = Vec::new();
        loop {
            let msg = match ws.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return format!("{mode}: after {got} messages: {e}"),
                None => return format!("{mode}: ended after {got} messages, unclosed"),
            };
            match msg {
                Message::Binary(_) | Message::Text(_) => {
                    if msg != ws_message(false, got) {
                        return format!("{mode}: message {got} differs");
                    }
                    if let Err(e) = ws.send(ws_message(true, got)).await {
                        return format!("{mode}: echo {got}: {e}");
                    }
                    if got % 500 == 249
                        && let Err(e) = ws.send(Message::Ping(ping_payload(got))).await
                    {
                        return format!("{mode}: ping after {got}: {e}");
                    }
                    got += 1;
                    if server_closes && got == WS_MESSAGES {
                        let frame = CloseFrame {
                            code: CloseCode::Normal,
                            reason: "server done".into(),
                        };
                        if let Err(e) = ws.close(Some(frame)).await {
                            return format!("{mode}: sending the close: {e}");
                        }
                        break;
                    }
                }
                Message::Pong(_) => pongs += 1,
                Message::Ping(_) | Message::Frame(_) => {}
                Message::Close(frame) => {
                    closes.push(describe_close(&frame));
                    break;
                }
            }
        }
        // The rest of the handshake: the client's reply if this side closed; then the end
        // (tungstenite sends this side's reply, if any, on the way).
        let end = loop {
            match ws.next().await {
                None => break "none".to_owned(),
                Some(Ok(Message::Close(frame))) => closes.push(describe_close(&frame)),
                Some(Ok(Message::Pong(_))) => pongs += 1,
                Some(Ok(other)) => closes.push(format!("unexpected {other:?}")),
                Some(Err(e)) => break format!("error: {e}"),
            }
        };
        format!(
            "{mode}: messages {got} pongs {pongs} close {} end {end}",
            closes.join(", ")
        )
    }

    async fn ws_server(transport: Transport, path: &Path) -> i32 {
        let mut acceptor = match Acceptor::bind(transport, path) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("ws_server: binding {}: {e}", path.display());
                return 3;
            }
        };
        loop {
            match acceptor.accept().await {
                // Dropped as soon as its stream has ended, as servers do; the server goes on
                // (until its parent kills it), as servers do.
                Ok((io, _)) => report(ws_serve(io).await),
                Err(e) => {
                    eprintln!("ws_server: accepting: {e}");
                    return 3;
                }
            }
        }
    }
}
