//! The protocol-stack rows: hyper's HTTP/2 and tokio-tungstenite's WebSocket, each over a
//! `tokio_pvm::ByteStream` and over a `tokio::net::UnixStream`, between two child processes.
//! Here are both sides: what the parent starts and reads ([`run_stack`]), and the children's
//! roles (`h2-server`, `h2-client`, `ws-server`, `ws-client`, each taking
//! `CARRIER PATH SIZE COUNT`).
//!
//! A server child binds (a [`tokio_pvm::Listener`] with the default `Config`, or a
//! `UnixListener`), prints `READY` and accepts one connection; the client child connects
//! (`Connection::connect` wrapped in `ByteStream::new`, or `UnixStream::connect`). Both run
//! their work in a task spawned on a multi-thread runtime ([`Flavor::Spawned`]).
//!
//! * HTTP/2: the client sends `COUNT` POST requests, [`H2_IN_FLIGHT`] at a time, each with a
//!   fresh body of `SIZE` bytes (see `fresh.rs`) stamped with the request's number, which
//!   also travels in a header. The server reads each body whole, checks its length and
//!   stamps, and answers with a fresh body of the same size stamped with the same number,
//!   which the client reads whole and checks. The client times from just before the first
//!   request to the last response read and checked (the handshake stays out) and prints
//!   `SOURCE` (first), then `DONE COUNT ELAPSED_NS`; the server prints `SOURCE`, then
//!   `READY`. Then the client drops its `SendRequest` and the connection ends.
//! * WebSocket: the client sends `COUNT` binary messages of fresh data (stamped) with
//!   `send` (feed + flush), one after the other; the server checks each message's length and
//!   stamps in order and times from the first message's arrival to the last's (`DONE`, as a
//!   throughput receiver does). Then it sends a text message, [`DONE_TEXT`], and the client
//!   starts the close handshake. Only the client prints `SOURCE`.
//!
//! Each side reports only once everything it checks has passed, and exits only once the
//! connection has closed both ways (see [`Lingering`]).

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinSet};
use tokio::time::timeout;
use tokio_pvm::{ByteStream, Config, Connection};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::child::{
    Clock, Flavor, count_arg, pvm_accept, report_source, size_arg, unix_accept_stream,
};
use crate::fresh::{Checker, Fresh, check_stamped};
use crate::spawn::{Group, RemoveOnDrop, socket_path};
use crate::{Reported, Row, expect_line, parse_done, parse_source, path_arg};

/// Message (body) sizes of the protocol-stack rows.
pub(crate) const STACK_SIZES: [usize; 3] = [1 << 10, 64 << 10, 4 << 20];

/// Requests per HTTP/2 measurement, at each of [`STACK_SIZES`], in a full run.
const H2_REQUESTS: [u64; 3] = [60_000, 16_000, 256];
/// Messages per WebSocket measurement, at each of [`STACK_SIZES`], in a full run.
const WS_MESSAGES: [u64; 3] = [400_000, 32_000, 512];
/// With `--quick`, counts are divided by this, down to at least [`QUICK_MIN`].
const QUICK_DIVISOR: u64 = 20;
const QUICK_MIN: u64 = 64;

/// HTTP/2 requests in flight at a time.
pub(crate) const H2_IN_FLIGHT: usize = 32;
/// HTTP/2 settings of both sides, over both carriers. hyper's defaults (a 1 MiB window each
/// on the server, 2 MiB and 5 MiB on the client, 16 KiB frames, 400 KiB of send buffer per
/// stream on the server) would make 4 MiB bodies wait for window updates.
pub(crate) const H2_STREAM_WINDOW: u32 = 4 << 20;
pub(crate) const H2_CONN_WINDOW: u32 = 32 << 20;
pub(crate) const H2_MAX_FRAME: u32 = 1 << 20;
pub(crate) const H2_SEND_BUF: usize = 4 << 20;
/// Request header with the request's number, which its body and its response's body are
/// stamped with.
const SEQ_HEADER: &str = "x-seq";

/// Largest WebSocket message and frame either side accepts (tungstenite's defaults are 64 MiB
/// and 16 MiB): room for every size of [`STACK_SIZES`].
const WS_MAX_MESSAGE: usize = 64 << 20;
/// What the WebSocket server sends once every message has arrived and passed its checks.
const DONE_TEXT: &str = "done";

/// Longest a side waits for a step of the connection's end once the measured part is over
/// (the server's `DONE_TEXT`, the close handshake, the HTTP/2 connection's end).
const ENDING: Duration = Duration::from_secs(10);
/// Longest a closed stream waits for the peer's end of stream (see [`Lingering`]).
const LINGER: Duration = Duration::from_secs(10);

// ----- the rows ----------------------------------------------------------------------------

/// The application protocol of a stack row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// hyper's HTTP/2: requests with bodies, answered with bodies of the same size.
    Http2,
    /// tokio-tungstenite: binary messages, one way.
    WebSocket,
}

impl Protocol {
    /// The protocol's name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Http2 => "HTTP/2",
            Protocol::WebSocket => "WebSocket",
        }
    }

    /// The server's and the client's child roles.
    fn roles(self) -> (&'static str, &'static str) {
        match self {
            Protocol::Http2 => ("h2-server", "h2-client"),
            Protocol::WebSocket => ("ws-server", "ws-client"),
        }
    }
}

/// The byte stream a protocol runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    /// `tokio_pvm::ByteStream` over a `Connection` with the default `Config`.
    ByteStream,
    /// `tokio::net::UnixStream`.
    UnixStream,
}

impl Carrier {
    /// The name on a child's command line.
    fn arg(self) -> &'static str {
        match self {
            Carrier::ByteStream => "pvm",
            Carrier::UnixStream => "unix",
        }
    }

    fn parse(value: &str) -> Result<Carrier, String> {
        match value {
            "pvm" => Ok(Carrier::ByteStream),
            "unix" => Ok(Carrier::UnixStream),
            other => Err(format!("bad carrier {other:?}: pvm or unix")),
        }
    }
}

/// A row of the protocol-stack table: a protocol over a carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stack {
    pub(crate) protocol: Protocol,
    pub(crate) carrier: Carrier,
}

impl Stack {
    /// The rows in table order, each `ByteStream` row before the `UnixStream` row it compares
    /// with.
    pub(crate) const ALL: [Stack; 4] = [
        Stack::new(Protocol::Http2, Carrier::ByteStream),
        Stack::new(Protocol::Http2, Carrier::UnixStream),
        Stack::new(Protocol::WebSocket, Carrier::ByteStream),
        Stack::new(Protocol::WebSocket, Carrier::UnixStream),
    ];

    const fn new(protocol: Protocol, carrier: Carrier) -> Stack {
        Stack { protocol, carrier }
    }

    /// The row's name for `--only`.
    pub(crate) fn key(self) -> &'static str {
        match (self.protocol, self.carrier) {
            (Protocol::Http2, Carrier::ByteStream) => "h2-pvm",
            (Protocol::Http2, Carrier::UnixStream) => "h2-unix",
            (Protocol::WebSocket, Carrier::ByteStream) => "ws-pvm",
            (Protocol::WebSocket, Carrier::UnixStream) => "ws-unix",
        }
    }

    /// Requests (HTTP/2) or messages (WebSocket) per measurement at message size `size`, one
    /// of [`STACK_SIZES`]; with `quick`, a twentieth, but at least 64.
    pub(crate) fn count(self, size: usize, quick: bool) -> u64 {
        let counts = match self.protocol {
            Protocol::Http2 => H2_REQUESTS,
            Protocol::WebSocket => WS_MESSAGES,
        };
        let full = STACK_SIZES
            .iter()
            .position(|&s| s == size)
            .map_or(QUICK_MIN, |i| counts[i]);
        if quick {
            (full / QUICK_DIVISOR).max(QUICK_MIN)
        } else {
            full
        }
    }
}

impl Row for Stack {
    fn label(self) -> &'static str {
        match (self.protocol, self.carrier) {
            (Protocol::Http2, Carrier::ByteStream) => "HTTP/2 over ByteStream",
            (Protocol::Http2, Carrier::UnixStream) => "HTTP/2 over UnixStream",
            (Protocol::WebSocket, Carrier::ByteStream) => "WebSocket over ByteStream",
            (Protocol::WebSocket, Carrier::UnixStream) => "WebSocket over UnixStream",
        }
    }

    /// The same protocol over a `UnixStream`.
    fn reference(self) -> Stack {
        Stack::new(self.protocol, Carrier::UnixStream)
    }

    /// The HTTP/2 client times every request; the WebSocket server, like a throughput
    /// receiver, the messages after the first.
    fn timed(self, count: u64) -> u64 {
        match self.protocol {
            Protocol::Http2 => count,
            Protocol::WebSocket => count - 1,
        }
    }

    /// A request's body and its response's.
    fn directions(self) -> u64 {
        match self.protocol {
            Protocol::Http2 => 2,
            Protocol::WebSocket => 1,
        }
    }

    fn unit(self) -> &'static str {
        match self.protocol {
            Protocol::Http2 => "req",
            Protocol::WebSocket => "msg",
        }
    }
}

// ----- the parent's side -------------------------------------------------------------------

/// The children of one protocol-stack measurement, and what they reported. The group is
/// dropped (every child reaped) before this returns.
pub(crate) fn run_stack(
    exe: &Path,
    stack: Stack,
    size: usize,
    count: u64,
    timeout: Duration,
) -> Result<Reported, String> {
    let mut group = Group::new(exe, timeout);
    let path = RemoveOnDrop(socket_path("tokio-pvm-bench"));
    let args = [
        stack.carrier.arg().to_owned(),
        path_arg(&path.0)?,
        size.to_string(),
        count.to_string(),
    ];
    let (server_role, client_role) = stack.protocol.roles();
    let server = group.spawn_role(server_role, &args)?;
    let mut setup_cpu = Duration::ZERO;
    if stack.protocol == Protocol::Http2 {
        setup_cpu += parse_source(&group.line(server)?)?;
    }
    expect_line(group.line(server)?, "READY")?;
    let client = group.spawn_role(client_role, &args)?;
    setup_cpu += parse_source(&group.line(client)?)?;
    let timer = match stack.protocol {
        Protocol::Http2 => client,
        Protocol::WebSocket => server,
    };
    let report = group.line(timer)?;
    group.wait_all()?;
    drop(group);
    Ok(Reported {
        elapsed: parse_done(&report, count)?,
        setup_cpu,
        loans: None,
    })
}

// ----- the children's side: connections ----------------------------------------------------

/// Runs stack role `role` with its arguments, `CARRIER PATH SIZE COUNT`.
pub(crate) fn run_child(role: &str, args: &[String]) -> Result<(), String> {
    let [carrier, path, size, count] = args else {
        return Err(format!(
            "{role} takes CARRIER PATH SIZE COUNT, got {args:?}"
        ));
    };
    let a = Args {
        carrier: Carrier::parse(carrier)?,
        path: path.clone(),
        size: size_arg(size)?,
        count: count_arg(count)?,
    };
    match role {
        "h2-server" => Flavor::Spawned.run(h2_server(a)),
        "h2-client" => Flavor::Spawned.run(h2_client(a)),
        "ws-server" => Flavor::Spawned.run(ws_server(a)),
        "ws-client" => Flavor::Spawned.run(ws_client(a)),
        other => Err(format!("unknown protocol-stack role {other:?}")),
    }
}

/// The arguments of every stack role.
struct Args {
    carrier: Carrier,
    path: String,
    size: usize,
    count: u64,
}

/// A connection's byte stream, of either carrier.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Duplex for T {}
type Io = Box<dyn Duplex>;

/// Binds a listener of `carrier` at `path`, says `READY`, accepts the one connection and
/// removes the socket file.
async fn accept_one(carrier: Carrier, path: &str) -> Result<Io, String> {
    Ok(match carrier {
        Carrier::ByteStream => Box::new(ByteStream::new(pvm_accept(path, Config::new()).await?)),
        Carrier::UnixStream => Box::new(unix_accept_stream(path).await?),
    })
}

/// Connects to the listener at `path` (started before this child, so there is no waiting).
async fn connect(carrier: Carrier, path: &str) -> Result<Io, String> {
    let connecting = |e: &dyn std::fmt::Display| format!("connecting to {path}: {e}");
    Ok(match carrier {
        Carrier::ByteStream => Box::new(ByteStream::new(
            Connection::connect(path)
                .await
                .map_err(|e| connecting(&e))?,
        )),
        Carrier::UnixStream => Box::new(
            UnixStream::connect(path)
                .await
                .map_err(|e| connecting(&e))?,
        ),
    })
}

/// A byte stream that, once dropped, closes the way careful servers close sockets (a
/// "lingering close"): it shuts its writing side down, then reads and discards until the
/// peer's end of stream, for at most [`LINGER`]. The [`Closed`] handed out with it tells
/// when that is over; a child waits for it before it exits.
///
/// Without it the end of a connection races. h2 writes after it has seen the other side's
/// GOAWAY (its own GOAWAY, window updates); a Unix socket closed with such bytes unread makes
/// the peer's next read fail with ECONNRESET, and a write to a peer that has closed fails
/// with EPIPE. A `ByteStream`'s written bytes live in the writing process until the peer has
/// pulled them, so a process that exits too early loses them. With both sides lingering,
/// neither exits before it has read the other's end of stream, over either carrier.
struct Lingering {
    io: Option<Io>,
    closed: Option<oneshot::Sender<Result<(), String>>>,
}

/// Tells when a dropped [`Lingering`] has closed.
struct Closed(oneshot::Receiver<Result<(), String>>);

impl Lingering {
    fn new(io: Io) -> (Lingering, Closed) {
        let (tx, rx) = oneshot::channel();
        let io = Lingering {
            io: Some(io),
            closed: Some(tx),
        };
        (io, Closed(rx))
    }

    fn io(&mut self) -> Pin<&mut Io> {
        Pin::new(self.io.as_mut().expect("only taken when dropped"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut io), Some(closed)) = (self.io.take(), self.closed.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let _ = closed.send(Err("the stream was dropped outside a runtime".to_owned()));
            return;
        };
        runtime.spawn(async move {
            let drained = timeout(LINGER, async {
                // An error here (the peer is gone, or its reading side closed) leaves nothing
                // to wait for but its end of stream.
                let _ = io.shutdown().await;
                let mut buf = vec![0u8; 64 << 10];
                // The end of stream, or an error that ends it: nothing more will arrive.
                while let Ok(1..) = io.read(&mut buf).await {}
            })
            .await;
            let _ = closed.send(
                drained.map_err(|_| format!("the peer did not end its side within {LINGER:?}")),
            );
        });
    }
}

impl Closed {
    /// Waits until the dropped stream's peer has ended its side too.
    async fn wait(self) -> Result<(), String> {
        match timeout(LINGER + Duration::from_secs(1), self.0).await {
            Ok(Ok(closed)) => closed,
            Ok(Err(_)) => Err("the closing stream's task was cancelled".to_owned()),
            Err(_) => Err(format!(
                "the connection's byte stream was not dropped within {LINGER:?}"
            )),
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
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

// ----- HTTP/2 ------------------------------------------------------------------------------

/// What the server's request handlers share.
struct Served {
    /// What response bodies are made from.
    fresh: Fresh,
    size: usize,
    /// Requests answered.
    answered: AtomicU64,
    /// The first request that failed its checks.
    problem: Mutex<Option<String>>,
}

impl Served {
    /// Checks request `req` and makes its response's body.
    async fn answer(&self, req: Request<Incoming>) -> Result<Bytes, String> {
        let seq: u64 = req
            .headers()
            .get(SEQ_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("a request without a number in {SEQ_HEADER}"))?;
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("request {seq}: reading the body: {}", chain(&e)))?
            .to_bytes();
        check_stamped(&body, self.size, seq).map_err(|e| format!("request {seq}: {e}"))?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Ok(self.fresh.numbered(seq))
    }

    /// Keeps the first problem, to fail with once the connection is over.
    fn fail(&self, why: &str) {
        let mut problem = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        problem.get_or_insert_with(|| why.to_owned());
    }
}

/// The server's handler: the response, or a 500 that says why.
async fn h2_answer(
    served: Arc<Served>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match served.answer(req).await {
        Ok(body) => Ok(Response::new(Full::new(body))),
        Err(why) => {
            served.fail(&why);
            let mut resp = Response::new(Full::new(Bytes::from(why)));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            Ok(resp)
        }
    }
}

async fn h2_server(a: Args) -> Result<(), String> {
    let fresh = report_source(|| Fresh::new(a.size))?;
    let (io, closed) = Lingering::new(accept_one(a.carrier, &a.path).await?);
    let served = Arc::new(Served {
        fresh,
        size: a.size,
        answered: AtomicU64::new(0),
        problem: Mutex::new(None),
    });
    let service = {
        let served = served.clone();
        hyper::service::service_fn(move |req| h2_answer(served.clone(), req))
    };
    let ended = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_SEND_BUF)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Some(problem) = served
        .problem
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(problem);
    }
    let answered = served.answered.load(Ordering::Relaxed);
    match ended {
        Ok(()) => {}
        // Every request has been answered: an error now is h2's race at the close, which the
        // client has seen its responses survive.
        Err(_) if answered == a.count => {}
        Err(e) => {
            return Err(format!(
                "the connection ended after {answered} of {} requests: {}",
                a.count,
                chain(&e)
            ));
        }
    }
    if answered != a.count {
        return Err(format!(
            "the client made {answered} requests, expected {}",
            a.count
        ));
    }
    closed.wait().await
}

/// One request: sends it, reads the whole response and checks it.
async fn h2_request(
    mut sender: SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    size: usize,
    seq: u64,
) -> Result<(), String> {
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request {seq}: {}", chain(&e)))?;
    drop(sender);
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("request {seq}: reading the response body: {}", chain(&e)))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "request {seq}: {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    check_stamped(&body, size, seq).map_err(|e| format!("the response to request {seq}: {e}"))
}

/// The outcome of a finished request task.
fn joined(done: Result<Result<(), String>, JoinError>) -> Result<(), String> {
    done.unwrap_or_else(|e| Err(format!("a request task failed: {e}")))
}

async fn h2_client(a: Args) -> Result<(), String> {
    let fresh = report_source(|| Fresh::new(a.size))?;
    let (io, closed) = Lingering::new(connect(a.carrier, &a.path).await?);
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_SEND_BUF)
        .handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {}", chain(&e)))?;
    let conn = tokio::spawn(conn);

    let start = Instant::now();
    let mut in_flight = JoinSet::new();
    for seq in 0..a.count {
        if in_flight.len() == H2_IN_FLIGHT
            && let Some(done) = in_flight.join_next().await
        {
            joined(done)?;
        }
        let req = Request::post("/")
            .header(SEQ_HEADER, seq)
            .body(Full::new(fresh.numbered(seq)))
            .map_err(|e| format!("building request {seq}: {e}"))?;
        in_flight.spawn(h2_request(sender.clone(), req, a.size, seq));
    }
    while let Some(done) = in_flight.join_next().await {
        joined(done)?;
    }
    let elapsed = start.elapsed();
    println!("DONE {} {}", a.count, elapsed.as_nanos());

    // The end: with no `SendRequest` left, hyper closes the connection (GOAWAY both ways).
    drop(sender);
    match timeout(ENDING, conn).await {
        // An error is h2's race at the close: every response has arrived and been checked.
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("the HTTP/2 connection task failed: {e}")),
        Err(_) => {
            return Err(format!(
                "the HTTP/2 connection was still open {ENDING:?} after the last response"
            ));
        }
    }
    closed.wait().await
}

// ----- WebSocket ---------------------------------------------------------------------------

/// Both sides' WebSocket limits.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE))
}

/// A message as an error names it (not its bytes: they can be megabytes).
fn ws_kind(msg: &Message) -> String {
    match msg {
        Message::Text(text) => format!("a text message of {} bytes", text.len()),
        Message::Binary(data) => format!("a binary message of {} bytes", data.len()),
        Message::Ping(_) => "a ping".to_owned(),
        Message::Pong(_) => "a pong".to_owned(),
        Message::Close(_) => "a close frame".to_owned(),
        Message::Frame(_) => "a raw frame".to_owned(),
    }
}

/// Reads until the connection's end, which the close handshake brings: only close frames may
/// come before it.
async fn ws_until_end<S>(ws: &mut S) -> Result<(), String>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match timeout(ENDING, ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => {}
            Ok(None) => return Ok(()),
            Ok(Some(Ok(other))) => {
                return Err(format!(
                    "closing: expected a close frame, got {}",
                    ws_kind(&other)
                ));
            }
            Ok(Some(Err(e))) => return Err(format!("closing: {e}")),
            Err(_) => return Err(format!("the close handshake took over {ENDING:?}")),
        }
    }
}

async fn ws_server(a: Args) -> Result<(), String> {
    let (io, closed) = Lingering::new(accept_one(a.carrier, &a.path).await?);
    let mut ws = tokio_tungstenite::accept_async_with_config(io, Some(ws_config()))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let mut checker = Checker::new(a.size);
    let mut clock = Clock::new(a.count);
    for i in 0..a.count {
        match ws.next().await {
            Some(Ok(Message::Binary(msg))) => checker.check(&msg)?,
            Some(Ok(other)) => {
                return Err(format!(
                    "message {i}: expected a binary message, got {}",
                    ws_kind(&other)
                ));
            }
            Some(Err(e)) => return Err(format!("receiving message {i}: {e}")),
            None => {
                return Err(format!(
                    "the connection ended after {i} of {} messages",
                    a.count
                ));
            }
        }
        clock.tick();
    }
    clock.report()?;
    ws.send(Message::text(DONE_TEXT))
        .await
        .map_err(|e| format!("sending {DONE_TEXT:?}: {e}"))?;
    // The client's close, this side's reply (tungstenite sends it), the end.
    ws_until_end(&mut ws).await?;
    drop(ws);
    closed.wait().await
}

async fn ws_client(a: Args) -> Result<(), String> {
    let mut fresh = report_source(|| Fresh::new(a.size))?;
    let (io, closed) = Lingering::new(connect(a.carrier, &a.path).await?);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config("ws://localhost/", io, Some(ws_config()))
            .await
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
    for i in 0..a.count {
        ws.send(Message::Binary(fresh.heap()))
            .await
            .map_err(|e| format!("sending message {i}: {e}"))?;
    }
    // The server's word that every message has arrived and passed its checks.
    match timeout(ENDING, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if text.as_str() == DONE_TEXT => {}
        Ok(Some(Ok(other))) => {
            return Err(format!(
                "expected {DONE_TEXT:?} from the server, got {}",
                ws_kind(&other)
            ));
        }
        Ok(Some(Err(e))) => return Err(format!("waiting for {DONE_TEXT:?}: {e}")),
        Ok(None) => return Err(format!("the server ended without {DONE_TEXT:?}")),
        Err(_) => {
            return Err(format!(
                "no {DONE_TEXT:?} from the server within {ENDING:?} of the last message"
            ));
        }
    }
    ws.close(None)
        .await
        .map_err(|e| format!("sending the close: {e}"))?;
    ws_until_end(&mut ws).await?;
    drop(ws);
    closed.wait().await
}
