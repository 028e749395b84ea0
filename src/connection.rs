//! Connections and their two halves.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;

use crate::address::Address;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::handshake::{handshake, handshake_until};
use crate::listener::ConnectionPermit;
use crate::loan::LoanBuf;
use crate::protocol::{Outgoing, Role, Shared};
use crate::sys;

/// Who is at the other end of a connection. Never taken from anything the peer sent: for a
/// process of this host, the kernel's record of the socket's peer (`SO_PEERCRED`); over TCP,
/// the peer's address and the certificate its TLS handshake proved it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    kind: PeerKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PeerKind {
    Local {
        pid: i32,
        uid: u32,
        gid: u32,
    },
    #[cfg(feature = "tcp")]
    Remote {
        addr: std::net::SocketAddr,
        /// The end-entity certificate (DER) and its subject, under TLS.
        certificate: Option<(Arc<[u8]>, Arc<str>)>,
    },
}

impl PeerInfo {
    pub(crate) fn local(pid: i32, uid: u32, gid: u32) -> PeerInfo {
        PeerInfo {
            kind: PeerKind::Local { pid, uid, gid },
        }
    }

    #[cfg(feature = "tcp")]
    pub(crate) fn remote(
        addr: std::net::SocketAddr,
        certificate: Option<(Arc<[u8]>, Arc<str>)>,
    ) -> PeerInfo {
        PeerInfo {
            kind: PeerKind::Remote { addr, certificate },
        }
    }

    /// The peer's process id, in this process's pid namespace; `None` for a peer over TCP.
    pub fn pid(&self) -> Option<i32> {
        match self.kind {
            PeerKind::Local { pid, .. } => Some(pid),
            #[cfg(feature = "tcp")]
            PeerKind::Remote { .. } => None,
        }
    }

    /// The peer's effective user id; `None` for a peer over TCP (its certificate is its
    /// identity: see [`certificate_subject`](PeerInfo::certificate_subject)).
    pub fn uid(&self) -> Option<u32> {
        match self.kind {
            PeerKind::Local { uid, .. } => Some(uid),
            #[cfg(feature = "tcp")]
            PeerKind::Remote { .. } => None,
        }
    }

    /// The peer's effective group id; `None` for a peer over TCP.
    pub fn gid(&self) -> Option<u32> {
        match self.kind {
            PeerKind::Local { gid, .. } => Some(gid),
            #[cfg(feature = "tcp")]
            PeerKind::Remote { .. } => None,
        }
    }

    /// Whether the peer is a process of this host, connected over a Unix socket.
    pub fn is_local(&self) -> bool {
        matches!(self.kind, PeerKind::Local { .. })
    }

    /// The peer's address, for a peer over TCP.
    #[cfg(feature = "tcp")]
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        match self.kind {
            PeerKind::Remote { addr, .. } => Some(addr),
            PeerKind::Local { .. } => None,
        }
    }

    /// The subject of the certificate the peer presented in the TLS handshake (verified
    /// against [`Tls`](crate::Tls)'s certificate authorities), as `CN=name, O=org` in
    /// certificate order, values escaped as RFC 4514 asks (`\,`, `\+`, control characters in
    /// hex), so that one attribute cannot read as two: the peer's identity over TCP. `None`
    /// for a local peer and over plain TCP. An authority may leave the subject empty and
    /// name the peer in the subject alternative names: then read those from
    /// [`certificate`](PeerInfo::certificate).
    #[cfg(feature = "tcp")]
    pub fn certificate_subject(&self) -> Option<&str> {
        match &self.kind {
            PeerKind::Remote {
                certificate: Some((_, subject)),
                ..
            } => Some(subject),
            _ => None,
        }
    }

    /// The certificate the peer presented in the TLS handshake, DER-encoded, for checks
    /// beyond its subject (its subject alternative names, say, with an X.509 parser).
    #[cfg(feature = "tcp")]
    pub fn certificate(&self) -> Option<&[u8]> {
        match &self.kind {
            PeerKind::Remote {
                certificate: Some((der, _)),
                ..
            } => Some(der),
            _ => None,
        }
    }
}

/// `process 1234 (uid 1000)`, or `192.0.2.7:40312 (CN=ingest-1)` for a peer over TCP: how
/// error messages name the peer.
impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PeerKind::Local { pid, uid, .. } => write!(f, "process {pid} (uid {uid})"),
            #[cfg(feature = "tcp")]
            PeerKind::Remote { addr, certificate } => match certificate {
                Some((_, subject)) => write!(f, "{addr} ({subject})"),
                None => write!(f, "{addr} (plain TCP)"),
            },
        }
    }
}

/// How the payloads of one direction of a connection travel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// The receiver copies each payload straight out of the sender's memory with
    /// `process_vm_readv`: one copy.
    Pull,
    /// The receiver cannot read the sender's memory (the reason is attached), so payloads
    /// travel inside frames over the control socket: two copies, same API and guarantees.
    Inline(Arc<str>),
}

impl Mode {
    /// Whether payloads are pulled.
    pub fn is_pull(&self) -> bool {
        matches!(self, Mode::Pull)
    }
}

/// A connection to another process: a [`Sink`] of [`Bytes`] and a [`Stream`] of `Bytes`.
///
/// Sending hands the peer a small descriptor of the message; the peer copies the payload
/// straight out of this process's memory with `process_vm_readv` and acknowledges it, and only
/// then is the `Bytes` released. Receiving does the same the other way round. Messages arrive
/// whole and in order.
///
/// # Sending
/// [`Sink::poll_ready`] waits while the window (see [`Config::window`]) is full.
/// [`Sink::poll_flush`] completes once every message sent so far has been copied by the peer's
/// transport into its receive buffer and acknowledged (its application need not have read
/// them): after `flush().await` the data may be dropped, or the process may exit, and nothing
/// is lost. [`Sink::poll_close`] flushes, tells the peer that nothing more will come, and
/// shuts the socket's write side down once this side's receiving is finished too. If the
/// peer has dropped its receiving side, both complete at once and later sends fail with
/// [`PeerGone`](ErrorKind::PeerGone), as writes to a closed socket fail.
///
/// # Receiving
/// The stream yields each message, then `None` after the peer closed its sending side. If the
/// peer goes away without closing, or a pull fails, it yields one error naming the cause, then
/// `None`. Messages that had reached this side's receive buffer before the failure are still
/// yielded first; the acknowledgement of the last ones may not have reached the peer (the
/// transport writes it with its next write unless the peer waits for it), so a sender that
/// resends what it saw unacknowledged after a failure gets at-least-once delivery.
///
/// # Progress without polling
/// Like a socket's kernel, the connection's driver task (spawned on the runtime that made the
/// connection) pulls the peer's messages into a receive buffer of one window
/// ([`Config::window`]) and acknowledges them whether or not the stream is polled; when the
/// buffer is full the peer stops one window later, so memory stays bounded. A half that is
/// polled does the same work itself, so there is no hand-off while the application keeps up;
/// when the application stops polling, the driver takes over within about 40 ms.
///
/// # Traits
/// Besides `Sink` and `Stream` (so `futures::SinkExt`/`StreamExt`, `tokio_stream` wrappers and
/// `tokio::select!` work as with any stream), a connection and its halves are `Debug`,
/// `Send`, `Sync` and `Unpin`, and `AsFd`/`AsRawFd` give the control socket, for diagnostics
/// or socket options only (reading or writing it breaks the connection). For code written
/// against `AsyncRead + AsyncWrite`, wrap it in a [`ByteStream`](crate::ByteStream); to send
/// one message to many connections, see [`Fanout`](crate::Fanout).
///
/// # Cancel safety
/// All state lives in the connection. `next()` is cancel safe: a message pulled but not yet
/// yielded is yielded by the next call. `flush()` and `close()` are cancel safe: calling them
/// again resumes. `feed(item)` and `send(item)` own their item until `poll_ready` lets it in:
/// if such a future is cancelled while it waits for room in the window, the item is dropped
/// and not sent; once `start_send` took it, it is in flight and the next `flush()` covers it.
///
/// # Dropping
/// Dropping the sending side (the [`Sender`] or the whole connection) loses nothing sent: the
/// driver task keeps the messages in flight alive and writes out what was not flushed until
/// the peer has pulled them, then closes the direction as `close()` would, and the peer's
/// stream ends with `None`. If the peer has not taken everything within
/// [`Config::linger`](crate::Config::linger) (default 30 s), the buffers are released and the
/// peer's stream ends with a [`PeerGone`](ErrorKind::PeerGone) error instead. Exiting the
/// process (or shutting down its runtime) before then loses them: call `close()` first to
/// know they arrived. Dropping the receiving side acknowledges and discards what the peer
/// sends from then on, and tells the peer, whose later sends fail.
///
/// # Example
/// ```
/// use bytes::Bytes;
/// use futures_util::{SinkExt, StreamExt};
/// use tokio_pvm::Connection;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokio_pvm::Error> {
/// let (mut a, mut b) = Connection::pair().await?;
/// // `send` returns once the peer's transport has pulled the message (no read needed).
/// a.send(Bytes::from(vec![7u8; 1 << 20])).await?;
/// a.close().await?;
/// assert_eq!(b.next().await.unwrap()?.len(), 1 << 20);
/// assert!(b.next().await.is_none());
/// # Ok(())
/// # }
/// ```
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
}

/// The halves given to [`Connection::reunite`], handed back because they belong to different
/// connections.
#[derive(Debug)]
pub struct ReuniteError(pub Sender, pub Receiver);

impl std::fmt::Display for ReuniteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the sending half (peer {}) and the receiving half (peer {}) are not from the \
             same connection",
            self.0.peer(),
            self.1.peer()
        )
    }
}

impl std::error::Error for ReuniteError {}

/// The sending half of a [`Connection`], from [`Connection::split`]. A [`Sink`] of [`Bytes`].
///
/// See [`Connection`] for the meaning of `poll_ready`, `poll_flush` and `poll_close`, and
/// for cancel safety.
pub struct Sender {
    shared: Arc<Shared>,
    /// Held for the listener's connection limit by both halves, given back with the last.
    _permit: Option<Arc<ConnectionPermit>>,
}

/// The receiving half of a [`Connection`], from [`Connection::split`]. A [`Stream`] of
/// [`Bytes`].
///
/// See [`Connection`] for how the stream ends, and for cancel safety. Dropping the receiver
/// closes the receiving direction: what the peer sends from then on is acknowledged and
/// discarded, and the peer's later sends fail, as writes to a socket whose reader closed do.
pub struct Receiver {
    shared: Arc<Shared>,
    /// See [`Sender`]'s.
    _permit: Option<Arc<ConnectionPermit>>,
}

impl Connection {
    fn from_shared(shared: Arc<Shared>) -> Connection {
        Connection::with_permit(shared, None)
    }

    fn with_permit(shared: Arc<Shared>, permit: Option<ConnectionPermit>) -> Connection {
        let permit = permit.map(Arc::new);
        Connection {
            sender: Sender {
                shared: shared.clone(),
                _permit: permit.clone(),
            },
            receiver: Receiver {
                shared,
                _permit: permit,
            },
        }
    }

    /// Connects to a [`Listener`](crate::Listener) at `addr` with the default [`Config`]: a
    /// Unix socket path (`/run/app.sock`, `unix:/run/app.sock`, a [`Path`]) or
    /// `tcp://host:port` (see [`Address`]).
    ///
    /// # Cancel safety
    /// Cancelling leaves nothing behind: the half-made connection is dropped and the
    /// listener sees it go away. Connecting again starts afresh.
    pub async fn connect(addr: impl Into<Address>) -> Result<Connection> {
        Connection::connect_with(addr, Config::default()).await
    }

    /// Connects to a [`Listener`](crate::Listener) at `addr` (see [`Address`]).
    ///
    /// Fails with [`ErrorKind::PermissionDenied`] if either side refuses the other's uid
    /// (Unix) or certificate (TCP), and with [`ErrorKind::Timeout`] if the whole attempt
    /// takes longer than [`Config::handshake_timeout`] (plus
    /// [`Config::connect_timeout`] for the TCP connect). Over a Unix socket, a side that
    /// cannot read the other's memory receives inline instead ([`Mode::Inline`]), unless
    /// [`Config::require_pull`] is set on it: then connecting fails (see there for the error
    /// kinds). Over TCP every message travels inline, inside TLS ([`Config::tls`]; both
    /// sides need it).
    ///
    /// # Cancel safety
    /// As [`connect`](Connection::connect): cancelling drops the half-made connection.
    pub async fn connect_with(addr: impl Into<Address>, config: Config) -> Result<Connection> {
        match addr.into() {
            Address::Unix(path) => Connection::connect_unix(&path, config).await,
            Address::Tcp(host_port) => Connection::connect_tcp(&host_port, config).await,
        }
    }

    async fn connect_unix(path: &Path, config: Config) -> Result<Connection> {
        let deadline = tokio::time::Instant::now() + config.handshake_timeout;
        let fd = tokio::time::timeout_at(deadline, connect_socket(path))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "connecting to {} did not finish within {:?}: the listener's backlog \
                         stayed full",
                        path.display(),
                        config.handshake_timeout
                    ),
                )
            })??;
        let shared = handshake_until(fd, &config, deadline).await?;
        Ok(Connection::from_shared(shared))
    }

    #[cfg(feature = "tcp")]
    async fn connect_tcp(host_port: &str, config: Config) -> Result<Connection> {
        let tls_deadline = config.connect_timeout + config.handshake_timeout;
        let (carrier, peer) =
            tokio::time::timeout(tls_deadline, crate::tcp::connect(host_port, &config))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "connecting to tcp://{host_port} (TCP, then TLS if configured) \
                             did not finish within {tls_deadline:?} (Config::connect_timeout \
                             plus Config::handshake_timeout): the peer is unreachable, not a \
                             tokio-pvm endpoint, stuck, or overloaded"
                        ),
                    )
                })??;
        let deadline = tokio::time::Instant::now() + config.handshake_timeout;
        let shared = crate::handshake::handshake_remote(carrier, peer, &config, deadline).await?;
        Ok(Connection::from_shared(shared))
    }

    #[cfg(not(feature = "tcp"))]
    async fn connect_tcp(host_port: &str, _config: Config) -> Result<Connection> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "tcp://{host_port}: this build of tokio-pvm has no TCP carrier; enable its \
                 `tcp` feature"
            ),
        ))
    }

    /// A connected pair inside this process, over a `socketpair`, with the default
    /// [`Config`]. The way to use the transport in tests: both ends run the real handshake and
    /// real pulls (from this process's own memory), so code under test meets the same
    /// behaviour as between two processes.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use futures_util::{SinkExt, StreamExt};
    /// use tokio_pvm::Connection;
    ///
    /// /// The code under test: answers every message with its length.
    /// async fn serve(mut conn: Connection) -> tokio_pvm::Result<()> {
    ///     while let Some(msg) = conn.next().await {
    ///         let len = msg?.len().to_string();
    ///         conn.send(Bytes::from(len)).await?;
    ///     }
    ///     conn.close().await
    /// }
    ///
    /// // The body of a `#[tokio::test]`:
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tokio_pvm::Result<()> {
    /// let (client, server) = Connection::pair().await?;
    /// let server = tokio::spawn(serve(server));
    /// let (mut tx, mut rx) = client.split();
    /// // `send` returns once the server has pulled the message, which needs the server task
    /// // polling its stream: it runs in a task of its own, so this does not wait on itself.
    /// tx.send(Bytes::from_static(b"hello")).await?;
    /// assert_eq!(rx.next().await.transpose()?, Some(Bytes::from_static(b"5")));
    /// tx.close().await?;
    /// assert!(rx.next().await.is_none());
    /// server.await.expect("no panic")?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Cancelling drops both ends.
    pub async fn pair() -> Result<(Connection, Connection)> {
        Connection::pair_with(Config::default()).await
    }

    /// A connected pair inside this process, both ends using `config`.
    ///
    /// # Cancel safety
    /// Cancelling drops both ends.
    pub async fn pair_with(config: Config) -> Result<(Connection, Connection)> {
        let (a, b) = sys::stream_pair().map_err(|e| Error::io("creating a socket pair", e))?;
        let (a, b) = tokio::try_join!(handshake(a, &config), handshake(b, &config))?;
        Ok((Connection::from_shared(a), Connection::from_shared(b)))
    }

    /// A connection a listener accepted; `permit` counts it against the listener's
    /// [`Config::max_connections`] until both halves are dropped.
    pub(crate) fn accepted(shared: Arc<Shared>, permit: Option<ConnectionPermit>) -> Connection {
        Connection::with_permit(shared, permit)
    }

    /// The peer's credentials, as the kernel reported them.
    pub fn peer(&self) -> &PeerInfo {
        &self.sender.shared.peer
    }

    /// How this side receives: [`Mode::Pull`], or [`Mode::Inline`] with the reason pulling
    /// from the peer was not possible. Each direction decides for itself.
    pub fn mode(&self) -> &Mode {
        &self.sender.shared.modes.recv
    }

    /// How the messages this side sends reach the peer (the peer's receiving mode).
    pub fn send_mode(&self) -> &Mode {
        &self.sender.shared.modes.send
    }

    /// Splits the connection into halves that can be used from different tasks.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// Splits the connection into owned halves, as [`split`](Connection::split) does (the
    /// name tokio's sockets use); [`Connection::reunite`] puts them back together.
    pub fn into_split(self) -> (Sender, Receiver) {
        self.split()
    }

    /// Puts the two halves of one connection back together. Fails, handing both back, if
    /// they come from different connections.
    pub fn reunite(
        sender: Sender,
        receiver: Receiver,
    ) -> std::result::Result<Connection, ReuniteError> {
        if Arc::ptr_eq(&sender.shared, &receiver.shared) {
            Ok(Connection { sender, receiver })
        } else {
            Err(ReuniteError(sender, receiver))
        }
    }

    /// Messages sent and not yet acknowledged by the peer, and their total size in bytes.
    /// The peer acknowledges pulled messages at once, but inline and loaned ones only with
    /// its own writes or once a quarter of the window is unacknowledged: `flush` (or `close`)
    /// asks it to acknowledge everything, so wait on that, not on this count reaching 0.
    pub fn in_flight(&self) -> (usize, u64) {
        self.sender.in_flight()
    }

    /// A buffer of `len` bytes to write a message into and send on this connection: see
    /// [`Sender::loan`].
    pub fn loan(&self, len: usize) -> LoanBuf {
        self.sender.loan(len)
    }

    /// Whether this side's loaned messages reach the peer zero-copy: both sides set
    /// [`Config::loan_region`](crate::Config::loan_region) and the peer mapped this side's
    /// region.
    pub fn zero_copy(&self) -> bool {
        self.sender.zero_copy()
    }
}

impl Sender {
    /// The peer's credentials, as the kernel reported them.
    pub fn peer(&self) -> &PeerInfo {
        &self.shared.peer
    }

    /// Messages sent and not yet acknowledged by the peer, and their total size in bytes.
    /// The peer acknowledges pulled messages at once, but inline and loaned ones only with
    /// its own writes or once a quarter of the window is unacknowledged: `flush` (or `close`)
    /// asks it to acknowledge everything, so wait on that, not on this count reaching 0.
    pub fn in_flight(&self) -> (usize, u64) {
        self.shared.in_flight()
    }

    /// How the messages this side sends reach the peer (see [`Connection::send_mode`]).
    pub fn mode(&self) -> &Mode {
        &self.shared.modes.send
    }

    /// A buffer of `len` bytes to write a message into; [`LoanBuf::freeze`] it and send the
    /// `Bytes` on this connection.
    ///
    /// With the [zero-copy lane](Connection::zero_copy) open, the buffer is in this side's
    /// loan region, which the peer maps: the peer reads the message in place, and the write
    /// into the buffer is the message's only copy. Otherwise, or when the region has no room
    /// left (the peer's application still holds earlier loaned messages), it comes from the
    /// heap ([`LoanBuf::is_shared`] tells) and the message travels as any other. So do
    /// messages small enough to travel inline (256 bytes by default,
    /// [`Config::inline_threshold`](crate::Config::inline_threshold)): copying them into the
    /// control socket costs less than a loan's bookkeeping. Never waits.
    ///
    /// ```
    /// use futures_util::SinkExt;
    /// use tokio_pvm::{Config, Connection};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tokio_pvm::Error> {
    /// let (a, mut b) = Connection::pair_with(Config::new().loan_region(32 << 20)).await?;
    /// let (mut tx, _rx) = a.split();
    /// let mut buf = tx.loan(4096);
    /// buf.fill(7); // write the message in place
    /// tx.send(buf.freeze()).await?;
    /// # use futures_util::StreamExt;
    /// assert_eq!(b.next().await.unwrap()?[..], [7; 4096]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn loan(&self, len: usize) -> LoanBuf {
        self.shared.loan(len)
    }

    /// Whether loaned messages reach the peer zero-copy (see [`Connection::zero_copy`]).
    pub fn zero_copy(&self) -> bool {
        self.shared.zero_copy()
    }
}

impl Receiver {
    /// The peer's credentials, as the kernel reported them.
    pub fn peer(&self) -> &PeerInfo {
        &self.shared.peer
    }

    /// How this side receives (see [`Connection::mode`]).
    pub fn mode(&self) -> &Mode {
        &self.shared.modes.recv
    }
}

/// Connects a new socket, retrying while the listener's backlog is full.
async fn connect_socket(path: &Path) -> Result<OwnedFd> {
    let fd = sys::stream_socket().map_err(|e| Error::io("creating a socket", e))?;
    let mut backoff = Duration::from_micros(500);
    loop {
        match sys::connect(&fd, path) {
            Ok(()) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(connect_error(path, e)),
        }
    }
}

fn connect_error(path: &Path, e: io::Error) -> Error {
    let p = path.display();
    match e.kind() {
        io::ErrorKind::NotFound => Error::with_source(
            ErrorKind::Io,
            format!("no listener at {p}: the socket file does not exist; start the listener first"),
            e,
        ),
        io::ErrorKind::ConnectionRefused
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) =>
        {
            Error::with_source(
                ErrorKind::Io,
                format!("no listener at {p}: it is not a socket; check the path"),
                e,
            )
        }
        io::ErrorKind::ConnectionRefused => Error::with_source(
            ErrorKind::Io,
            format!("no listener at {p}: the socket file is stale (its listener has exited)"),
            e,
        ),
        io::ErrorKind::PermissionDenied => Error::with_source(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied connecting to {p}: this user needs write access to the socket file"
            ),
            e,
        ),
        _ => Error::io(&format!("connecting to {p}"), e),
    }
}

impl Sender {
    /// Ends the connection with `err`, telling the peer why.
    pub(crate) fn abort(&self, err: Error) {
        self.shared.abort(err);
    }

    /// Writes the descriptors of the messages sent so far into the socket, without waiting
    /// for the peer to pull them (what [`Sink::poll_flush`] does).
    pub(crate) fn poll_write_out(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.poll_write_out(cx)
    }

    /// Sends `item` (after `poll_ready`, as [`Sink::start_send`]) and, given a `cx`, writes
    /// the socket as [`poll_write_out`](Sender::poll_write_out) does, under one lock.
    /// `Ok(Pending)` only means the socket is full: the message was taken all the same.
    pub(crate) fn send_message(
        &mut self,
        item: Outgoing<'_>,
        write_out: Option<&mut Context<'_>>,
    ) -> Result<Poll<()>> {
        self.shared.start_send(item, write_out)
    }

    /// Messages up to `bytes` travel inline from now on, as far as the peer accepts them.
    pub(crate) fn raise_inline_threshold(&self, bytes: u32) {
        self.shared.raise_inline_threshold(bytes);
    }

    /// Largest message the peer accepts.
    pub(crate) fn max_message_size(&self) -> u64 {
        self.shared.send_max_message()
    }

    /// The connection's pool of large buffers, shared with the receiving half.
    pub(crate) fn buffer_pool(&self) -> crate::pool::BufferPool {
        self.shared.buffer_pool()
    }

    /// Hands `data` to the connection to be sent after this half is dropped, as the window
    /// allows, within the linger time (what a dropped `ByteStream` had not flushed).
    pub(crate) fn send_on_drop(&self, data: Bytes) {
        self.shared.send_on_drop(data);
    }
}

impl Sink<Bytes> for Sender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        // Without a context nothing is written: the result is never `Pending`.
        self.shared
            .start_send(Outgoing::Owned(item), None)
            .map(drop)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.poll_close(cx)
    }
}

impl Receiver {
    /// Copies the messages that have arrived into `dst`, under one lock, without waiting:
    /// until it is full, nothing more has arrived, or a part longer than `small` was copied.
    /// Returns the rest of a message that did not fit.
    pub(crate) fn copy_arrived(
        &self,
        dst: &mut tokio::io::ReadBuf<'_>,
        small: usize,
    ) -> Option<Bytes> {
        self.shared.copy_arrived(dst, small)
    }
}

impl Stream for Receiver {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        self.shared.poll_next(cx)
    }
}

impl Sink<Bytes> for Connection {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.sender).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        Pin::new(&mut self.sender).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.sender).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.sender).poll_close(cx)
    }
}

impl Stream for Connection {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shared.drop_half(Role::Send);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.drop_half(Role::Recv);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", self.peer())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("peer", self.peer())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("peer", self.peer())
            .finish_non_exhaustive()
    }
}

/// The control socket of the connection, for diagnostics (`ss`, `/proc/PID/fdinfo`) or
/// socket options. Reading from or writing to it breaks the connection; the crate owns it and
/// closes it when the last half is dropped.
macro_rules! control_socket_fd {
    ($($t:ty => |$s:ident| $shared:expr),*) => {$(
        impl AsFd for $t {
            fn as_fd(&self) -> BorrowedFd<'_> {
                let $s = self;
                $shared.socket()
            }
        }

        impl AsRawFd for $t {
            fn as_raw_fd(&self) -> RawFd {
                self.as_fd().as_raw_fd()
            }
        }
    )*};
}

control_socket_fd!(
    Connection => |c| c.sender.shared,
    Sender => |s| s.shared,
    Receiver => |r| r.shared
);
