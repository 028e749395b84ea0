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
use tokio_util::codec::Encoder;
use tokio::task::JoinSet;
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
/// The socket file is removed when the listener is dropped, unless another listener has
/// replaced it in the meantime.
///
/// [`accept`]: Listener::accept
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    /// Device and inode of the socket file we created, to remove only our own file.
    file_id: Option<(u64, u64)>,
    config: Config,
    handshakes: JoinSet<Result<Connection>>,
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
        })
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection whose handshake succeeds.
    ///
    /// Connections whose handshake fails (refused uid, failed memory proof, timeout, garbage)
    /// are dropped and logged; they are not returned as errors. An error from this method is a
    /// problem of the listening socket itself, such as running out of file descriptors;
    /// accepting may be retried after it.
    ///
    /// # Cancel safety
    /// Cancel safe. Sockets accepted and handshakes under way are kept in the listener; a
    /// later call returns them.
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
                            self.handshakes.spawn(async move {
                                let shared = handshake(sock, &config).await?;
                                Ok(Connection::accepted(shared))
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
                        Poll::Ready(Some(Ok(Ok(conn)))) => {
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
