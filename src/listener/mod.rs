//! The listening socket and its accept loop.
//!
//! `admission` decides which accepted sockets get a handshake and keeps the handshakes until
//! they are handed out, `hello` holds a handshake until its peer's HELLO is in and tells the
//! clients dropped before they are accepted why, `backoff` pauses accepting when the process
//! is out of descriptors, and `waiters` wakes every task waiting in `accept`.

mod admission;
mod backoff;
mod hello;
#[cfg(feature = "tcp")]
mod tcp;
mod waiters;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use nix::sys::socket::Shutdown;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use self::admission::Admission;
pub(crate) use self::admission::ConnectionPermit;
use self::backoff::Backoff;
use self::hello::refuse;
use self::waiters::Waiters;
use crate::address::Address;
use crate::codec::ErrorCode;
use crate::config::Config;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

const BACKLOG: i32 = 1024;
/// Sockets accepted in a row before finished handshakes are looked at again.
const ACCEPT_BATCH: usize = 16;

/// Accepts connections on a Unix socket path, on TCP addresses, or on both (see
/// [`bind_all`](Listener::bind_all)).
///
/// Each accepted socket runs its handshake in its own task, so a client that stalls or sends
/// garbage holds up nobody: it fails on its own (logged at `warn`) and [`accept`] goes on
/// with the next one.
///
/// [`accept`] and its poll form [`poll_accept`](Listener::poll_accept) take `&self`: one
/// listener may be shared (in an [`Arc`]) by several tasks accepting at once, each connection
/// going to exactly one of them, and `poll_accept` makes a [`Stream`](futures_core::Stream) of
/// connections (see its example).
///
/// # Overload
/// Connections that do not behave as clients cannot keep clients out:
/// - A peer whose uid the [`Config`] does not accept is refused as soon as it is accepted,
///   from its kernel credentials (`SO_PEERCRED`), before it takes a handshake slot; its
///   `connect` fails with [`ErrorKind::PermissionDenied`] and the uid to allow.
/// - At most 128 handshakes run at once. A client sends its HELLO as soon as it connects, so
///   the listener does no handshake work for a connection until its whole HELLO is in; one
///   that has not sent it within [`Config::hello_timeout`](crate::Config::hello_timeout) (2 s
///   by default) is dropped, and while all 128 slots are taken, each new connection takes the
///   slot of the oldest one still without a whole HELLO at once. Idle or trickling
///   connections, by the thousand, therefore delay a client by milliseconds, not by the
///   handshake timeout. Those dropped are told why (such a client fails with
///   [`ErrorKind::PeerGone`]), and logged at `warn` at most once a second.
/// - With [`Config::max_connections`](crate::Config::max_connections), a connection beyond the
///   limit is refused with [`ErrorKind::LimitExceeded`] and a message naming the limit.
/// - On TCP, at most 128 TLS handshakes run at once per address; a connection that has not
///   finished TLS within [`Config::hello_timeout`](crate::Config::hello_timeout) is dropped,
///   so silent connections hold a slot for no longer than that, and a connection beyond
///   [`Config::max_connections`](crate::Config::max_connections) is refused after TLS with
///   the limit named.
/// - When the process runs out of file descriptors or kernel memory, [`accept`] says so once
///   and pauses accepting (see there) instead of spinning; new connections wait in the backlog.
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
/// use futures_util::{SinkExt, StreamExt};
/// use tokio::task::JoinSet;
/// use tokio_pvm::{Connection, Listener};
/// use tokio_util::sync::CancellationToken;
///
/// async fn serve(listener: Listener, shutdown: CancellationToken) {
///     let mut handlers = JoinSet::new();
///     loop {
///         tokio::select! {
///             // Cancel safe: a connection that is ready when the other branch wins stays
///             // in the listener.
///             conn = listener.accept() => match conn {
///                 Ok(conn) => {
///                     handlers.spawn(handle(conn, shutdown.clone()));
///                 }
///                 // E.g. out of file descriptors: reported once, then accept() pauses and
///                 // retries on its own, so this loop does not spin.
///                 Err(e) => eprintln!("accept: {e}"),
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
    /// The Unix socket, if the listener has one.
    unix: Option<UnixSide>,
    /// What accepting changes. Locked only while polling, never across an await.
    state: Mutex<State>,
    /// The callers waiting for a connection.
    waiters: Arc<Waiters>,
    /// The waker the socket, the handshakes and the pause are polled with: it wakes every
    /// caller in `waiters`.
    wake_waiters: Waker,
}

/// The listening Unix socket.
struct UnixSide {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    /// Device and inode of the socket file we created, to remove only our own file.
    file_id: Option<(u64, u64)>,
}

/// What accepting changes.
struct State {
    admission: Admission,
    backoff: Backoff,
    /// The TCP sockets, if any.
    #[cfg(feature = "tcp")]
    tcp: Vec<tcp::TcpSide>,
}

impl Listener {
    /// Listens on `addr` with the default [`Config`]: a Unix socket path, or
    /// `tcp://host:port` (see [`Address`]). Must be called inside a Tokio runtime.
    pub fn bind(addr: impl Into<Address>) -> Result<Listener> {
        Listener::bind_with(addr, Config::default())
    }

    /// Listens on `addr`; accepted connections use `config`. Must be called inside a Tokio
    /// runtime.
    ///
    /// A socket file left behind by a listener that no longer runs is replaced. If a live
    /// listener owns the path, this fails with an [`io::ErrorKind::AddrInUse`] source and the
    /// live listener is left alone. A path that exists and is not a socket is never removed.
    ///
    /// On TCP, `config` must have [`Config::tls`] (or, on a loopback address only,
    /// [`Config::danger_plain_tcp_on_loopback`](crate::Config::danger_plain_tcp_on_loopback)):
    /// binding fails otherwise, naming both. Port 0 picks a free port
    /// ([`local_addrs`](Listener::local_addrs) tells which).
    pub fn bind_with(addr: impl Into<Address>, config: Config) -> Result<Listener> {
        Listener::bind_all([addr.into()], config)
    }

    /// Listens on several addresses at once, at most one of them a Unix socket: a process
    /// that serves its neighbours over a Unix socket and other hosts over TCP accepts both
    /// through one listener. Connections come out of [`accept`](Listener::accept) in the
    /// order their handshakes finish, whatever the address.
    ///
    /// ```no_run
    /// use tokio_pvm::{Config, Listener, Tls};
    ///
    /// # async fn demo(tls: Tls) -> tokio_pvm::Result<()> {
    /// let listener = Listener::bind_all(
    ///     ["/run/app.sock", "tcp://0.0.0.0:7000"],
    ///     Config::new().tls(tls),
    /// )?;
    /// let conn = listener.accept().await?;
    /// println!("{} ({})", conn.peer(), if conn.peer().is_local() { "local" } else { "remote" });
    /// # Ok(()) }
    /// ```
    pub fn bind_all(
        addrs: impl IntoIterator<Item = impl Into<Address>>,
        config: Config,
    ) -> Result<Listener> {
        let mut unix = None;
        #[cfg(feature = "tcp")]
        let mut tcp = Vec::new();
        for addr in addrs {
            match addr.into() {
                Address::Unix(path) if unix.is_none() => unix = Some(path),
                Address::Unix(path) => {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "a listener has at most one Unix socket, and {} is a second one",
                            path.display()
                        ),
                    ));
                }
                #[cfg(feature = "tcp")]
                Address::Tcp(host_port) => tcp.push(host_port),
                #[cfg(not(feature = "tcp"))]
                Address::Tcp(host_port) => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "tcp://{host_port}: this build of tokio-pvm has no TCP carrier; \
                             enable its `tcp` feature"
                        ),
                    ));
                }
            }
        }
        #[cfg(feature = "tcp")]
        let none = unix.is_none() && tcp.is_empty();
        #[cfg(not(feature = "tcp"))]
        let none = unix.is_none();
        if none {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "Listener::bind_all: no address to listen on",
            ));
        }
        let name = unix.clone().unwrap_or_else(|| PathBuf::from("(TCP)"));
        let admission = Admission::new(&name, config.clone());
        #[cfg(feature = "tcp")]
        let tcp = tcp
            .iter()
            .map(|host_port| tcp::TcpSide::bind(host_port, config.clone(), admission.live()))
            .collect::<Result<Vec<_>>>()?;
        // The socket file last: a TCP address that cannot be bound leaves no file behind.
        let unix = unix.map(|path| UnixSide::bind(&path)).transpose()?;
        let waiters = Arc::new(Waiters::default());
        Ok(Listener {
            unix,
            state: Mutex::new(State {
                admission,
                backoff: Backoff::default(),
                #[cfg(feature = "tcp")]
                tcp,
            }),
            wake_waiters: Waker::from(waiters.clone()),
            waiters,
        })
    }

    /// The path of the listener's Unix socket, if it has one.
    pub fn path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|u| u.path.as_path())
    }

    /// Every address the listener listens on: its Unix socket, and its TCP sockets with the
    /// ports bound (`tcp://127.0.0.1:41234` after binding port 0).
    pub fn local_addrs(&self) -> Vec<Address> {
        let unix = self.unix.iter().map(|u| Address::Unix(u.path.clone()));
        #[cfg(feature = "tcp")]
        let tcp: Vec<Address> = self
            .lock()
            .tcp
            .iter()
            .map(|t| Address::Tcp(t.addr().to_string()))
            .collect();
        #[cfg(not(feature = "tcp"))]
        let tcp: Vec<Address> = Vec::new();
        unix.chain(tcp).collect()
    }

    /// Waits for the next connection whose handshake succeeds.
    ///
    /// Connections whose handshake fails (refused uid, a failed memory proof under
    /// [`Config::require_pull`](crate::Config::require_pull), no HELLO in time, timeout,
    /// garbage) or that are refused ([`Config::max_connections`](crate::Config::max_connections))
    /// are dropped and logged; they are not returned as errors. An error from this method is a
    /// problem of the listening socket itself; accepting may be retried after it.
    ///
    /// Handshakes progress in the background, in tasks of their own, whether or not a call is
    /// waiting; this method hands out the connections whose handshake has finished, and takes
    /// in new sockets while it waits.
    ///
    /// # Out of file descriptors
    /// When accepting fails because the process (`EMFILE`) or the system (`ENFILE`) is out of
    /// file descriptors, or the kernel is out of memory (`ENOBUFS`, `ENOMEM`), this method
    /// returns that error once, with a message naming the cause and the fix ("this process is
    /// out of file descriptors (EMFILE): raise `ulimit -n` or close connections"). Later calls
    /// do not return it again for the same episode (until accepting has gone 10 s without such
    /// a failure): they pause accepting, 10 ms after the first failure, doubling up to 1 s,
    /// and retry, while still returning connections whose handshakes finish. Meanwhile new
    /// clients wait in the kernel's backlog (their `connect` times out after
    /// [`Config::handshake_timeout`](crate::Config::handshake_timeout) if it lasts). Out of
    /// descriptors, the listener also drops the oldest connection still waiting for its HELLO,
    /// if there is one, to free its descriptors. A loop that logs errors and calls `accept`
    /// again therefore logs one line per episode and does not spin.
    ///
    /// # Several tasks
    /// This takes `&self`, so one listener may be shared, in an [`Arc`] for instance, by tasks
    /// that accept at the same time. Each connection is returned by exactly one call. Every
    /// waiting call is woken when a connection may be ready (a socket to accept, a handshake
    /// finished, the pause over); the calls that find nothing for them wait again, so none is
    /// left waiting while a connection is ready. The first out-of-descriptors error of an
    /// episode goes to one of them. With a single task accepting, nothing changes.
    ///
    /// # Cancel safety
    /// Cancel safe, so it may wait in a `select!` branch: sockets accepted, handshakes under
    /// way, connections whose handshake finished and the pause after running out of file
    /// descriptors stay in the listener when the future is dropped, and later calls (of this
    /// task or of another) return the connections. A connection is handed out only by the call
    /// that returns it. A dropped future leaves no waker behind.
    pub async fn accept(&self) -> Result<Connection> {
        let waiter = self.waiters.waiter();
        std::future::poll_fn(|cx| self.poll_accept_as(Some(waiter.key()), cx)).await
    }

    /// Polls for the next connection whose handshake succeeds: [`accept`](Listener::accept)
    /// as a poll function, for a hand-written [`Future`](std::future::Future) or
    /// [`Stream`](futures_core::Stream).
    ///
    /// `Ready` carries what `accept` would return, with the same guarantees (failed
    /// handshakes are dropped and logged, an out-of-descriptors episode is reported once and
    /// then waited out). `Pending` means no connection is ready yet, and the waker of `cx`
    /// is woken when one may be.
    ///
    /// # Several tasks
    /// Tokio's `UnixListener::poll_accept` wakes only the task that polled it last. This one
    /// keeps the waker of every task whose poll returned `Pending`, and wakes them all when a
    /// connection may be ready, so that several tasks may poll one shared listener (each with
    /// its own stream, say) and none is left waiting while a connection is ready. Each
    /// connection is returned by exactly one poll. A waker is kept until that wake-up: a task
    /// that stops polling is woken once for nothing, and a poll that returns a connection
    /// wakes the other waiting tasks (and its own) to look again. [`accept`](Listener::accept)
    /// forgets its waker when it is dropped; prefer it where a future will do.
    ///
    /// # Cancel safety
    /// Nothing is lost when the caller stops polling: what a `Pending` poll took in (sockets,
    /// handshakes, connections whose handshake finished) stays in the listener for the next
    /// poll or `accept`, of this task or another.
    ///
    /// # Example
    /// A stream of connections, for servers that take one (tonic's `serve_with_incoming`,
    /// say, after mapping each connection to the I/O type it wants):
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tokio_pvm::{Connection, Listener};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tokio_pvm::Error> {
    /// # let dir = std::env::temp_dir().join(format!("tokio-pvm-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let path = dir.join("incoming.sock");
    /// let listener = Listener::bind(&path)?;
    /// let mut incoming = futures_util::stream::poll_fn(|cx| listener.poll_accept(cx).map(Some));
    /// # let client = tokio::spawn(Connection::connect(path.clone()));
    /// // Never ends: `None` never comes.
    /// let conn = incoming.next().await.expect("a connection or an error")?;
    /// println!("peer {}", conn.peer());
    /// # client.await.unwrap()?;
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<Connection>> {
        self.poll_accept_as(None, cx)
    }

    /// Polls for a connection on behalf of the `accept` future with `key`, or of a
    /// `poll_accept` caller.
    fn poll_accept_as(&self, key: Option<u64>, cx: &mut Context<'_>) -> Poll<Result<Connection>> {
        // Kept before looking, so that news arriving meanwhile (on another thread) wakes the
        // caller.
        self.waiters.register(key, cx.waker());
        let polled = {
            let mut state = self.lock();
            self.poll_state(&mut state, &mut Context::from_waker(&self.wake_waiters))
        };
        if polled.is_ready() {
            if let Some(key) = key {
                self.waiters.remove(key);
            }
            // The others look again: what this call took may be what woke them, and a ready
            // socket or handshake it left behind has registered no waker.
            self.waiters.wake_all();
        }
        polled
    }

    /// The accept loop. Polls the socket, the handshakes and the pause with `cx`, whose waker
    /// is `wake_waiters`.
    fn poll_state(&self, state: &mut State, cx: &mut Context<'_>) -> Poll<Result<Connection>> {
        loop {
            // Finished handshakes first, so that a stream of new connections cannot hold
            // them back. Pending here means that a waker is registered on the handshakes
            // under way, or that there are none.
            if let Poll::Ready(conn) = state.admission.poll_finished(cx) {
                return Poll::Ready(Ok(conn));
            }
            #[cfg(feature = "tcp")]
            for side in &mut state.tcp {
                if let Poll::Ready(accepted) = side.poll_accept(cx) {
                    return Poll::Ready(accepted);
                }
            }
            match self.poll_take_in(state, cx) {
                Poll::Ready(Ok(())) => {} // took in a batch; more may be waiting
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // A waker is registered on the listening socket or the pause's timer, or all
                // slots are taken by handshakes under way, which wake us when they finish.
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Accepts up to [`ACCEPT_BATCH`] sockets and starts their handshakes. `Ready(Ok)` when
    /// it started any, for the caller to look at the handshakes again (a `JoinSet` polled
    /// while empty has registered no waker for them). `Pending` when it started none and no
    /// socket is waiting (a waker is registered on the listening socket), accepting is paused
    /// (on the timer), or no slot is free (the handshakes under way wake the task).
    fn poll_take_in(&self, state: &mut State, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Some(unix) = &self.unix else {
            return Poll::Pending;
        };
        ready!(state.backoff.poll_wait(cx));
        let mut started = false;
        let stop = |started: bool| match started {
            true => Poll::Ready(Ok(())),
            false => Poll::Pending,
        };
        for _ in 0..ACCEPT_BATCH {
            if !state.admission.has_room() {
                return stop(started);
            }
            let mut guard = match unix.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(Error::io("polling the listener", e)));
                }
                Poll::Pending => return stop(started),
            };
            match guard.try_io(|fd| sys::accept(fd.as_fd())) {
                Ok(Ok(sock)) => {
                    state.backoff.succeeded();
                    started |= state.admission.admit(sock);
                }
                Ok(Err(e)) if transient_accept_error(&e) => {}
                Ok(Err(e)) if out_of_resources(&e) => {
                    // The listening socket stays readable: without the pause, every poll
                    // would fail again at once. A connection still waiting for its HELLO
                    // gives its descriptors back.
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EMFILE | nix::libc::ENFILE)
                    ) {
                        state.admission.evict_oldest_waiting();
                    }
                    let what = unix.path.display().to_string();
                    if let Some(err) = state.backoff.paused(&what, e) {
                        return Poll::Ready(Err(err));
                    }
                    if state.backoff.poll_wait(cx).is_pending() {
                        return stop(started);
                    }
                }
                Ok(Err(e)) => {
                    return Poll::Ready(Err(Error::io(
                        &format!("accepting on {}", unix.path.display()),
                        e,
                    )));
                }
                Err(_would_block) => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops accepting, at once; the same as dropping the listener, spelled out for shutdown
    /// code.
    ///
    /// The socket file is removed, connections not yet returned by [`accept`](Listener::accept)
    /// are refused with an error telling their clients that the listener closed, and
    /// connections already returned keep working. See [Shutting down](#shutting-down).
    ///
    /// A listener shared in an [`Arc`] closes when its last clone is dropped: stop the tasks
    /// that accept, then `Arc::into_inner(listener).map(Listener::close)`, say.
    pub fn close(self) {
        drop(self);
    }
}

/// Accept failures that mean the process or the kernel is out of something: retrying at once
/// fails again.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionReset
    )
}

impl UnixSide {
    /// Binds and listens on `path`, registered with the runtime.
    fn bind(path: &Path) -> Result<UnixSide> {
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
        Ok(UnixSide {
            fd,
            path: path.to_owned(),
            file_id,
        })
    }
}

/// Binds a new socket to `path`, replacing a stale socket file but never a live listener's.
fn bind_path(path: &Path) -> Result<OwnedFd> {
    let ctx = |what: &str, e: io::Error| Error::io(&format!("{what} {}", path.display()), e);
    let fd = sys::stream_socket().map_err(|e| ctx("creating a socket for", e))?;
    match sys::bind(&fd, path) {
        Ok(()) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
                _ => ".".to_owned(),
            };
            return Err(Error::with_source(
                ErrorKind::Io,
                format!(
                    "cannot bind {}: the directory {dir} does not exist; create it first \
                     (for example with std::fs::create_dir_all) or choose another path",
                    path.display()
                ),
                e,
            ));
        }
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
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        #[cfg(feature = "tcp")]
        {
            // Handshakes under way are aborted with their tasks; the kernel resets what
            // waits in the TCP backlog when the socket closes.
            let tcp = state
                .tcp
                .iter()
                .map(tcp::TcpSide::handshakes)
                .sum::<usize>();
            if tcp > 0 {
                debug!(handshakes = tcp, "TCP listener closed");
            }
        }
        let Some(unix) = &self.unix else {
            return;
        };
        let ours = std::fs::symlink_metadata(&unix.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == unix.file_id {
            let _ = std::fs::remove_file(&unix.path);
        }
        // Refuse further connects (ECONNREFUSED, for a client that found the path before it
        // was removed), then refuse what waits in the backlog: the kernel would reset those
        // on close, which their clients would see as a bare I/O error.
        let fd = unix.fd.get_ref().as_fd();
        let _ = sys::shutdown(fd, Shutdown::Both);
        let mut refused = 0usize;
        loop {
            match sys::accept(fd) {
                Ok(sock) => {
                    refuse(
                        sock.as_fd(),
                        ErrorCode::Other,
                        &state.admission.reasons().closed,
                    );
                    refused += 1;
                }
                Err(e) if transient_accept_error(&e) => {}
                Err(_) => break, // WouldBlock: the backlog is empty
            }
        }
        debug!(
            path = %unix.path.display(),
            refused,
            handshakes = state.admission.handshakes(),
            "listener closed"
        );
        // Dropping the handshakes (in `state`, after the listening socket) aborts the ones
        // under way and discards the finished ones; their `Unaccepted` copies refuse the
        // clients.
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Listener");
        d.field("path", &self.path());
        // Not while this thread may be polling it.
        if let Ok(state) = self.state.try_lock() {
            d.field("handshakes", &state.admission.slots_in_use());
        }
        d.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync>() {}
        shared::<Listener>();
    }
}
