//! The listening socket.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use nix::sys::socket::Shutdown;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinSet;
use tokio_util::codec::Encoder;
use tracing::{debug, warn};

use crate::codec::{ErrorCode, FrameCodec, Limits, OutFrame};
use crate::config::Config;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::handshake::handshake;
use crate::sys;

/// Handshakes that may run at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 128;
const BACKLOG: i32 = 1024;

/// Accepts connections on a Unix socket path.
///
/// Each accepted socket runs its handshake in its own task, so a client that stalls or sends
/// garbage holds up nobody: it fails on its own (logged at `warn`) and [`accept`] goes on
/// with the next one.
///
/// # Shutting down
/// [`close`](Listener::close), or dropping the listener, stops accepting at once:
/// - The socket file is removed (unless another listener has replaced it in the meantime), so
///   a new [`Connection::connect`] fails with [`ErrorKind::Io`], a message saying that there
///   is no listener at the path, and an [`io::ErrorKind::NotFound`] source.
/// - Connections not yet returned by [`accept`] (waiting in the kernel's backlog, in their
///   handshake, or handshaken and waiting for the next `accept`) are refused: the client's
///   `connect` fails, or if it had already returned, the client's connection ends, with
///   [`ErrorKind::PeerGone`] and a message saying that the listener closed before accepting
///   it. No client is left waiting.
/// - Connections that [`accept`] returned do not depend on the listener and keep working.
///   Finish each one by closing it, which returns once the peer has pulled and acknowledged
///   every message this side sent, while reading its stream to the end, which takes in the
///   messages the peer has already sent.
///
/// A graceful shutdown therefore stops the accept loop, closes the listener and lets the
/// connection handlers finish. [`accept`] is cancel safe, so it can wait in a `select!` next
/// to the shutdown signal:
///
/// ```no_run
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use futures::{SinkExt, StreamExt};
/// use tokio::task::JoinSet;
/// use tokio_pvm::{Connection, Listener};
/// use tokio_util::sync::CancellationToken;
///
/// async fn serve(mut listener: Listener, shutdown: CancellationToken) {
///     let mut handlers = JoinSet::new();
///     loop {
///         tokio::select! {
///             // Cancel safe: a connection that is ready when the other branch wins stays
///             // in the listener.
///             conn = listener.accept() => match conn {
///                 Ok(conn) => {
///                     handlers.spawn(handle(conn, shutdown.clone()));
///                 }
///                 Err(e) => eprintln!("accept: {e}"), // e.g. out of file descriptors
///             },
///             _ = shutdown.cancelled() => break,
///         }
///     }
///     // No new connections from here on: the socket file is gone, and connections not
///     // yet accepted are refused.
///     listener.close();
///     while let Some(done) = handlers.join_next().await {
///         if let Ok(Err(e)) = done {
///             eprintln!("connection: {e}");
///         }
///     }
/// }
///
/// async fn handle(conn: Connection, shutdown: CancellationToken) -> Result<(), tokio_pvm::Error> {
///     let (mut tx, mut rx) = conn.split();
///     // Work until the peer closes, or until shutdown is signalled.
///     loop {
///         let msg = tokio::select! {
///             msg = rx.next() => msg, // cancel safe: no message is lost
///             _ = shutdown.cancelled() => break,
///         };
///         match msg {
///             Some(msg) => process(msg?).await,
///             None => break, // the peer closed its side
///         }
///     }
///     // Close this side (the peer's stream ends with `None`: its cue to finish and close)
///     // and take in what the peer has already sent.
///     let finish = async {
///         let drain = async {
///             while let Some(msg) = rx.next().await {
///                 process(msg?).await;
///             }
///             Ok(())
///         };
///         let (closed, drained) = tokio::join!(tx.close(), drain);
///         closed.and(drained)
///     };
///     // A peer slower than that is cut off: what it had not had acknowledged fails there
///     // with `ErrorKind::PeerGone`.
///     tokio::time::timeout(Duration::from_secs(5), finish)
///         .await
///         .unwrap_or(Ok(()))
/// }
///
/// async fn process(msg: Bytes) {
///     println!("{} bytes", msg.len());
/// }
/// ```
///
/// [`accept`]: Listener::accept
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    /// Device and inode of the socket file we created, to remove only our own file.
    file_id: Option<(u64, u64)>,
    config: Config,
    /// Handshakes under way, and finished ones waiting for [`Listener::accept`]. A finished
    /// one that is discarded drops its `Unaccepted` first, so the client reads the refusal
    /// before the connection's own hang-up.
    handshakes: JoinSet<Result<(Unaccepted, Connection)>>,
    /// What a client whose connection is refused because the listener closed is told.
    closed_reason: Arc<str>,
}

impl Listener {
    /// Listens on `path` with the default [`Config`]. Must be called inside a Tokio runtime.
    pub fn bind(path: impl AsRef<Path>) -> Result<Listener> {
        Listener::bind_with(path, Config::default())
    }

    /// Listens on `path`; accepted connections use `config`. Must be called inside a Tokio
    /// runtime.
    ///
    /// A socket file left behind by a listener that no longer runs is replaced. If a live
    /// listener owns the path, this fails with an [`io::ErrorKind::AddrInUse`] source and the
    /// live listener is left alone. A path that exists and is not a socket is never removed.
    pub fn bind_with(path: impl AsRef<Path>, config: Config) -> Result<Listener> {
        let path = path.as_ref();
        let fd = bind_path(path)?;
        sys::listen(&fd, BACKLOG)
            .map_err(|e| Error::io(&format!("listening on {}", path.display()), e))?;
        let file_id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let fd = sys::register(fd).map_err(|e| {
            Error::io(
                "registering the listener with the Tokio runtime (is one running?)",
                e,
            )
        })?;
        debug!(path = %path.display(), "listening");
        Ok(Listener {
            fd,
            path: path.to_owned(),
            file_id,
            config,
            handshakes: JoinSet::new(),
            closed_reason: Arc::from(format!(
                "the listener at {} closed before accepting this connection; connect again \
                 once a listener runs there",
                path.display()
            )),
        })
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection whose handshake succeeds.
    ///
    /// Connections whose handshake fails (refused uid, a failed memory proof under
    /// [`Config::require_pull`](crate::Config::require_pull), timeout, garbage)
    /// are dropped and logged; they are not returned as errors. An error from this method is a
    /// problem of the listening socket itself, such as running out of file descriptors;
    /// accepting may be retried after it.
    ///
    /// # Cancel safety
    /// Cancel safe, so it may wait in a `select!` branch: sockets accepted, handshakes under
    /// way and connections whose handshake finished stay in the listener when the future is
    /// dropped, and later calls return them. A connection is handed out only by the call that
    /// returns it.
    pub async fn accept(&mut self) -> Result<Connection> {
        std::future::poll_fn(|cx| {
            loop {
                // Take in new sockets while there is room for their handshakes.
                let mut accept_pending = false;
                while self.handshakes.len() < MAX_HANDSHAKES {
                    let mut guard = match self.fd.poll_read_ready(cx) {
                        Poll::Ready(Ok(guard)) => guard,
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Err(Error::io("polling the listener", e)));
                        }
                        Poll::Pending => {
                            accept_pending = true;
                            break;
                        }
                    };
                    match guard.try_io(|fd| sys::accept(fd.as_fd())) {
                        Ok(Ok(sock)) => {
                            let config = self.config.clone();
                            let unaccepted = Unaccepted::new(&sock, &self.closed_reason);
                            self.handshakes.spawn(async move {
                                // Aborted (the listener closed): `unaccepted` refuses the client.
                                match handshake(sock, &config).await {
                                    Ok(shared) => Ok((unaccepted, Connection::accepted(shared))),
                                    Err(e) => {
                                        unaccepted.release();
                                        Err(e)
                                    }
                                }
                            });
                        }
                        Ok(Err(e)) if transient_accept_error(&e) => {}
                        Ok(Err(e)) => {
                            return Poll::Ready(Err(Error::io(
                                &format!("accepting on {}", self.path.display()),
                                e,
                            )));
                        }
                        Err(_would_block) => {}
                    }
                }
                // Collect finished handshakes. Return Pending only with a waker registered:
                // on the listening socket (accept_pending) or on a running handshake.
                loop {
                    match self.handshakes.poll_join_next(cx) {
                        Poll::Ready(Some(Ok(Ok((unaccepted, conn))))) => {
                            unaccepted.release();
                            debug!(peer = ?conn.peer(), "accepted");
                            return Poll::Ready(Ok(conn));
                        }
                        Poll::Ready(Some(Ok(Err(e)))) => {
                            warn!(path = %self.path.display(), error = %e, "handshake failed; connection dropped");
                        }
                        Poll::Ready(Some(Err(join))) => {
                            warn!(error = %join, "handshake task failed");
                        }
                        Poll::Ready(None) if !accept_pending => break,
                        Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                    }
                }
            }
        })
        .await
    }

    /// Stops accepting, at once; the same as dropping the listener, spelled out for shutdown
    /// code.
    ///
    /// The socket file is removed, connections not yet returned by [`accept`](Listener::accept)
    /// are refused with an error telling their clients that the listener closed, and
    /// connections already returned keep working. See [Shutting down](#shutting-down).
    pub fn close(self) {
        drop(self);
    }
}

/// The listener's own copy of an accepted socket, held until [`Listener::accept`] hands the
/// connection out. Dropped before that (the listener closed, so its handshake task was
/// aborted or its finished connection discarded), it tells the client why, so that the
/// client fails at once with a clear error instead of seeing a bare hang-up.
struct Unaccepted {
    fd: Option<OwnedFd>,
    reason: Arc<str>,
}

impl Unaccepted {
    fn new(sock: &OwnedFd, reason: &Arc<str>) -> Unaccepted {
        Unaccepted {
            // Without a copy (out of descriptors) the client sees only the hang-up.
            fd: sock.try_clone().ok(),
            reason: reason.clone(),
        }
    }

    /// The connection was handed out, or its handshake failed (and the client was told
    /// why, or is gone): close the copy without a word.
    fn release(mut self) {
        self.fd = None;
    }
}

impl Drop for Unaccepted {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            refuse(fd.as_fd(), &self.reason);
        }
    }
}

/// Sends the client an ERROR frame with `reason` and shuts the socket down; best effort
/// and without blocking (a frame this small always fits in the socket buffer of a new
/// connection). The client fails with [`ErrorKind::PeerGone`] and the reason, whether it is
/// in its handshake (it reads frames first, the hang-up after) or already connected.
fn refuse(sock: BorrowedFd<'_>, reason: &str) {
    let mut frame = BytesMut::new();
    let limits = Limits {
        max_message_size: 0,
        max_ranges: 0,
        max_inline: 0,
    };
    let error = OutFrame::Error {
        code: ErrorCode::Other,
        reason,
    };
    if FrameCodec::new(limits).encode(error, &mut frame).is_ok() {
        let _ = sys::send(sock, &frame);
    }
    let _ = sys::shutdown(sock, Shutdown::Both);
}

fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionReset
    )
}

/// Binds a new socket to `path`, replacing a stale socket file but never a live listener's.
fn bind_path(path: &Path) -> Result<OwnedFd> {
    let ctx = |what: &str, e: io::Error| Error::io(&format!("{what} {}", path.display()), e);
    let fd = sys::stream_socket().map_err(|e| ctx("creating a socket for", e))?;
    match sys::bind(&fd, path) {
        Ok(()) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(ctx("binding", e)),
    }
    // Something is at the path. Only a socket nobody listens on may be replaced.
    let meta = std::fs::symlink_metadata(path).map_err(|e| ctx("inspecting", e))?;
    if !meta.file_type().is_socket() {
        return Err(Error::with_source(
            ErrorKind::Io,
            format!(
                "{} exists and is not a socket; remove it or choose another path",
                path.display()
            ),
            io::Error::from(io::ErrorKind::AddrInUse),
        ));
    }
    let probe = sys::stream_socket().map_err(|e| ctx("creating a socket for", e))?;
    match sys::connect(&probe, path) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            debug!(path = %path.display(), "replacing stale socket file");
            std::fs::remove_file(path).or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(ctx("removing the stale socket", e)),
            })?;
            sys::bind(&fd, path).map_err(|e| ctx("binding", e))?;
            Ok(fd)
        }
        _ => Err(Error::with_source(
            ErrorKind::Io,
            format!(
                "another listener is live at {}; stop it or choose another path",
                path.display()
            ),
            io::Error::from(io::ErrorKind::AddrInUse),
        )),
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.file_id {
            let _ = std::fs::remove_file(&self.path);
        }
        // Refuse further connects (ECONNREFUSED, for a client that found the path before it
        // was removed), then refuse what waits in the backlog: the kernel would reset those
        // on close, which their clients would see as a bare I/O error.
        let fd = self.fd.get_ref().as_fd();
        let _ = sys::shutdown(fd, Shutdown::Both);
        let mut refused = 0usize;
        loop {
            match sys::accept(fd) {
                Ok(sock) => {
                    refuse(sock.as_fd(), &self.closed_reason);
                    refused += 1;
                }
                Err(e) if transient_accept_error(&e) => {}
                Err(_) => break, // WouldBlock: the backlog is empty
            }
        }
        debug!(
            path = %self.path.display(),
            refused,
            handshakes = self.handshakes.len(),
            "listener closed"
        );
        // Dropping `handshakes` aborts the handshakes under way and discards the finished
        // ones; their `Unaccepted` copies refuse the clients.
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("path", &self.path)
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}
