//! The listening socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use nix::sys::socket::Shutdown;
use tokio::io::unix::AsyncFd;
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Encoder;
use tracing::{debug, warn};

use crate::codec::{ErrorCode, FrameCodec, Limits, OutFrame};
use crate::config::Config;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::handshake::handshake;
use crate::sys;

/// Handshakes that may run at once (finished ones waiting for [`Listener::accept`] included).
/// While all are taken, the oldest one still waiting for its peer's HELLO is dropped for each
/// new connection; without such a one, new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 128;
/// Handshakes that peers of one uid other than this process's may have under way once half
/// of the slots are taken: a user that stalls its handshakes after the HELLO cannot take more
/// than half of them, while a burst of one user's clients on a quiet listener is not refused.
/// (Peers of this process's own uid are not limited: they could as well kill it.)
const MAX_HANDSHAKES_PER_UID: usize = MAX_HANDSHAKES / 4;
const BACKLOG: i32 = 1024;
/// Sockets accepted in a row before finished handshakes are looked at again.
const ACCEPT_BATCH: usize = 16;
/// First pause of accepting after the process ran out of descriptors or kernel memory; each
/// further failure doubles it, up to [`ACCEPT_BACKOFF_MAX`]. A successful accept resets it.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Such failures less than this apart belong to one episode, which `accept` reports once.
const EPISODE_GAP: Duration = Duration::from_secs(10);
/// Least time between two warnings about one kind of dropped or refused connection: a flood of
/// them must not turn into a flood of log lines.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Accepts connections on a Unix socket path.
///
/// Each accepted socket runs its handshake in its own task, so a client that stalls or sends
/// garbage holds up nobody: it fails on its own (logged at `warn`) and [`accept`] goes on
/// with the next one.
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
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    /// Device and inode of the socket file we created, to remove only our own file.
    file_id: Option<(u64, u64)>,
    config: Config,
    /// Handshakes under way, and finished ones waiting for [`Listener::accept`]. A finished
    /// one that is discarded drops its `Unaccepted` first, so the client reads the refusal
    /// before the connection's own hang-up.
    handshakes: JoinSet<Outcome>,
    /// Handshakes in the order they were accepted, to find the oldest one still waiting for
    /// its peer's HELLO. Entries of handshakes past that point are pruned lazily.
    arrivals: VecDeque<(Arc<HelloSlot>, AbortHandle)>,
    /// Handshakes dropped to make room that `handshakes` has not yielded yet: they no longer
    /// hold a slot.
    evicted: HashSet<Id>,
    /// Connections counted against [`Config::max_connections`].
    live: Arc<AtomicUsize>,
    /// Handshakes under way per peer uid (other than ours).
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
    backoff: Backoff,
    /// What clients are told when the listener drops them unaccepted.
    reasons: Arc<Reasons>,
    warn_evicted: Throttle,
    warn_no_hello: Throttle,
    warn_refused: Throttle,
    warn_limit: Throttle,
}

/// How a handshake task ended.
enum Outcome {
    /// Handshaken: the connection, and the listener's copy of its socket.
    Ready(Unaccepted, Connection),
    /// Failed before the peer's HELLO arrived: not a client, or a stalled one.
    NoHello(Error),
    /// Failed later.
    Failed(Error),
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
        let reasons = Reasons {
            path: path.display().to_string(),
            closed: format!(
                "the listener at {} closed before accepting this connection; connect again \
                 once a listener runs there",
                path.display()
            ),
            evicted: format!(
                "the listener at {} dropped this connection to make room: all its {MAX_HANDSHAKES} \
                 handshake slots were taken and this connection had not sent its HELLO (a \
                 tokio-pvm client sends it at once); connect again",
                path.display()
            ),
        };
        Ok(Listener {
            fd,
            path: path.to_owned(),
            file_id,
            config,
            handshakes: JoinSet::new(),
            arrivals: VecDeque::new(),
            evicted: HashSet::new(),
            live: Arc::new(AtomicUsize::new(0)),
            per_uid: Arc::default(),
            backoff: Backoff::default(),
            reasons: Arc::new(reasons),
            warn_evicted: Throttle::default(),
            warn_no_hello: Throttle::default(),
            warn_refused: Throttle::default(),
            warn_limit: Throttle::default(),
        })
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection whose handshake succeeds.
    ///
    /// Connections whose handshake fails (refused uid, a failed memory proof under
    /// [`Config::require_pull`](crate::Config::require_pull), no HELLO in time, timeout,
    /// garbage) or that are refused ([`Config::max_connections`](crate::Config::max_connections))
    /// are dropped and logged; they are not returned as errors. An error from this method is a
    /// problem of the listening socket itself; accepting may be retried after it.
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
    /// # Cancel safety
    /// Cancel safe, so it may wait in a `select!` branch: sockets accepted, handshakes under
    /// way, connections whose handshake finished and the pause after running out of file
    /// descriptors stay in the listener when the future is dropped, and later calls return
    /// the connections. A connection is handed out only by the call that returns it.
    pub async fn accept(&mut self) -> Result<Connection> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<Connection>> {
        loop {
            // Finished handshakes first, so that a stream of new connections cannot hold
            // them back. Pending here means that a waker is registered on the handshakes
            // under way, or that there are none.
            if let Poll::Ready(conn) = self.poll_finished(cx) {
                return Poll::Ready(Ok(conn));
            }
            match self.poll_take_in(cx) {
                Poll::Ready(Ok(())) => {} // took in a batch; more may be waiting
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // A waker is registered on the listening socket or the pause's timer, or all
                // slots are taken by handshakes under way, which wake us when they finish.
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next connection whose handshake succeeded; logs and discards failed ones.
    fn poll_finished(&mut self, cx: &mut Context<'_>) -> Poll<Connection> {
        loop {
            match self.handshakes.poll_join_next_with_id(cx) {
                Poll::Ready(Some(Ok((id, outcome)))) => {
                    let evicted = self.evicted.remove(&id);
                    match outcome {
                        Outcome::Ready(unaccepted, conn) => {
                            unaccepted.release();
                            debug!(peer = ?conn.peer(), "accepted");
                            return Poll::Ready(conn);
                        }
                        Outcome::NoHello(e) if evicted => {
                            debug!(error = %e, "dropped to make room");
                        }
                        Outcome::NoHello(e) => {
                            debug!(error = %e, "no HELLO; connection dropped");
                            if let Some(more) = self.warn_no_hello.check() {
                                warn!(
                                    path = %self.path.display(),
                                    error = %e,
                                    similar_since_last_warning = more,
                                    "connection dropped before its HELLO"
                                );
                            }
                        }
                        Outcome::Failed(e) => {
                            warn!(path = %self.path.display(), error = %e, "handshake failed; connection dropped");
                        }
                    }
                }
                Poll::Ready(Some(Err(join))) => {
                    // Aborted only when dropped to make room, while the listener lives.
                    if !self.evicted.remove(&join.id()) {
                        warn!(error = %join, "handshake task failed");
                    }
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Accepts up to [`ACCEPT_BATCH`] sockets and starts their handshakes. `Ready(Ok)` when
    /// it started any, for the caller to look at the handshakes again (a `JoinSet` polled
    /// while empty has registered no waker for them). `Pending` when it started none and no
    /// socket is waiting (a waker is registered on the listening socket), accepting is paused
    /// (on the timer), or no slot is free (the handshakes under way wake the task).
    fn poll_take_in(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.backoff.poll_wait(cx));
        let mut started = false;
        let stop = |started: bool| match started {
            true => Poll::Ready(Ok(())),
            false => Poll::Pending,
        };
        for _ in 0..ACCEPT_BATCH {
            if !self.has_room() {
                return stop(started);
            }
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(Error::io("polling the listener", e)));
                }
                Poll::Pending => return stop(started),
            };
            match guard.try_io(|fd| sys::accept(fd.as_fd())) {
                Ok(Ok(sock)) => {
                    self.backoff.succeeded();
                    started |= self.admit(sock);
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
                        self.evict_oldest_waiting();
                    }
                    let delay = self.backoff.failed();
                    if self.backoff.failures_in_episode == 1 {
                        return Poll::Ready(Err(Error::io(
                            &format!(
                                "accepting on {} (paused; the listener retries on its own)",
                                self.path.display()
                            ),
                            e,
                        )));
                    }
                    debug!(path = %self.path.display(), error = %e, ?delay, "accepting paused");
                    if self.backoff.poll_wait(cx).is_pending() {
                        return stop(started);
                    }
                }
                Ok(Err(e)) => {
                    return Poll::Ready(Err(Error::io(
                        &format!("accepting on {}", self.path.display()),
                        e,
                    )));
                }
                Err(_would_block) => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Screens a newly accepted socket, then starts its handshake; whether it did.
    fn admit(&mut self, sock: OwnedFd) -> bool {
        // Refuse what the configuration refuses before the connection costs a slot.
        let Ok((pid, uid, _)) = sys::peer_credentials(sock.as_fd()) else {
            debug!("no credentials for an accepted socket (the peer is gone); dropped");
            return false;
        };
        let own_uid = nix::unistd::geteuid().as_raw();
        if !self.config.accepts_uid(own_uid, uid) {
            if let Some(more) = self.warn_refused.check() {
                warn!(
                    path = %self.path.display(),
                    peer_pid = pid,
                    similar_since_last_warning = more,
                    "refused a connection: peer uid {uid} is not accepted; allow it with \
                     Config::allow_uid({uid}) or Config::allow_any_uid()"
                );
            }
            let reason = format!(
                "uid {uid} is not accepted by process {} (uid {own_uid}); that side must allow \
                 it with Config::allow_uid({uid})",
                std::process::id()
            );
            refuse(sock.as_fd(), ErrorCode::Refused, &reason);
            return false;
        }
        let permit = match self.config.max_connections {
            None => None,
            Some(max) => match ConnectionPermit::try_new(&self.live, max) {
                Some(permit) => Some(permit),
                None => {
                    if let Some(more) = self.warn_limit.check() {
                        warn!(
                            path = %self.path.display(),
                            peer_pid = pid,
                            similar_since_last_warning = more,
                            "refused a connection: {max} connections are alive, the limit set \
                             with Config::max_connections"
                        );
                    }
                    let reason = format!(
                        "the listener at {} (process {}) already has {max} connections, its \
                         limit (Config::max_connections({max})); connect again once one of them \
                         has closed, or raise the limit on the listener's side",
                        self.path.display(),
                        std::process::id()
                    );
                    refuse(sock.as_fd(), ErrorCode::Limit, &reason);
                    return false;
                }
            },
        };
        let crowded = self.slots_in_use() >= MAX_HANDSHAKES / 2;
        let uid_slot = match uid == own_uid {
            true => None,
            false => match UidSlot::try_new(&self.per_uid, uid, crowded) {
                Some(slot) => Some(slot),
                None => {
                    if let Some(more) = self.warn_limit.check() {
                        warn!(
                            path = %self.path.display(),
                            peer_pid = pid,
                            similar_since_last_warning = more,
                            "refused a connection: peers of uid {uid} already have \
                             {MAX_HANDSHAKES_PER_UID} handshakes under way"
                        );
                    }
                    let reason = format!(
                        "the listener at {} (process {}) is busy and already has at least \
                         {MAX_HANDSHAKES_PER_UID} handshakes under way with peers of uid {uid}, \
                         the most one other user may have then; finish those, then connect again",
                        self.path.display(),
                        std::process::id()
                    );
                    refuse(sock.as_fd(), ErrorCode::Limit, &reason);
                    return false;
                }
            },
        };
        if self.slots_in_use() >= MAX_HANDSHAKES {
            self.evict_oldest_waiting();
        }
        let slot = Arc::new(HelloSlot::new(&sock));
        let unaccepted = Unaccepted {
            slot: slot.clone(),
            reasons: self.reasons.clone(),
        };
        let config = self.config.clone();
        let hello_deadline = Instant::now()
            .checked_add(config.hello_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let abort = self.handshakes.spawn(async move {
            // Counts against the peer's uid until the handshake ends, or is aborted.
            let _uid_slot = uid_slot;
            // Aborted (the listener closed, or gave the slot away): `unaccepted` refuses the
            // client.
            let sock = match wait_for_hello(sock, pid, &unaccepted, hello_deadline, &config).await {
                Ok(sock) => sock,
                Err(e) => {
                    unaccepted.refuse(&e.to_string());
                    return Outcome::NoHello(e);
                }
            };
            match handshake(sock, &config).await {
                Ok(shared) => Outcome::Ready(unaccepted, Connection::accepted(shared, permit)),
                Err(e) => {
                    unaccepted.release();
                    Outcome::Failed(e)
                }
            }
        });
        self.arrivals.push_back((slot, abort));
        if self.arrivals.len() > 4 * MAX_HANDSHAKES {
            self.arrivals
                .retain(|(slot, abort)| slot.waiting() && !abort.is_finished());
        }
        true
    }

    /// Handshakes holding a slot.
    fn slots_in_use(&self) -> usize {
        self.handshakes.len().saturating_sub(self.evicted.len())
    }

    /// Whether a new connection can have a slot: a free one, or one that can be taken from a
    /// connection still waiting for its HELLO.
    fn has_room(&mut self) -> bool {
        self.slots_in_use() < MAX_HANDSHAKES || self.oldest_waiting().is_some()
    }

    /// Where in `arrivals` the oldest handshake is whose peer has not sent a whole HELLO, if
    /// there is one. Prunes the handshakes at the front that are past that point.
    fn oldest_waiting(&mut self) -> Option<usize> {
        while let Some((slot, abort)) = self.arrivals.front() {
            if slot.waiting() && !abort.is_finished() {
                break;
            }
            self.arrivals.pop_front();
        }
        // A HELLO that has arrived but that its task has not looked at yet counts as arrived.
        self.arrivals.iter().position(|(slot, abort)| {
            slot.waiting() && !abort.is_finished() && !slot.hello_buffered()
        })
    }

    /// Drops the oldest handshake whose peer has not sent a whole HELLO, if any; its client is
    /// told why.
    fn evict_oldest_waiting(&mut self) -> bool {
        while let Some(at) = self.oldest_waiting() {
            let Some((slot, abort)) = self.arrivals.remove(at) else {
                break;
            };
            // Its task may have claimed the slot meanwhile.
            if slot.evict() {
                abort.abort();
                self.evicted.insert(abort.id());
                if let Some(more) = self.warn_evicted.check() {
                    warn!(
                        path = %self.path.display(),
                        dropped_since_last_warning = more + 1,
                        "every handshake slot is taken: dropping the oldest connections that \
                         have not sent their HELLO to make room for new ones"
                    );
                }
                return true;
            }
        }
        false
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

/// Length of a HELLO frame on the wire: an 8-byte header and a 64-byte body.
const HELLO_FRAME_LEN: usize = 8 + 64;

/// A handshake's slot: where the handshake stands with respect to its peer's HELLO, shared by
/// its task and the listener, which may take the slot only while the HELLO is not in.
#[derive(Debug)]
struct HelloSlot {
    state: AtomicU8,
    /// The listener's copy of the socket, to look for the HELLO without reading it and to tell
    /// a client that is dropped unaccepted why (see [`Unaccepted`]).
    copy: Mutex<Option<OwnedFd>>,
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const EVICTED: u8 = 2;

impl HelloSlot {
    fn new(sock: &OwnedFd) -> HelloSlot {
        HelloSlot {
            state: AtomicU8::new(WAITING),
            // Without a copy (out of descriptors) the client sees only the hang-up.
            copy: Mutex::new(sock.try_clone().ok()),
        }
    }

    /// The HELLO is in: the handshake may go on, unless the slot was taken first.
    fn start(&self) -> bool {
        self.state
            .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Takes the slot if the handshake still waits for its HELLO.
    fn evict(&self) -> bool {
        self.state
            .compare_exchange(WAITING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn waiting(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    fn evicted(&self) -> bool {
        self.state.load(Ordering::Acquire) == EVICTED
    }

    fn take_copy(&self) -> Option<OwnedFd> {
        self.copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether a whole HELLO waits unread in the socket.
    fn hello_buffered(&self) -> bool {
        let copy = self.copy.lock().unwrap_or_else(PoisonError::into_inner);
        copy.as_ref().is_some_and(|fd| {
            let mut buf = [0u8; HELLO_FRAME_LEN];
            matches!(sys::peek(fd.as_fd(), &mut buf), Ok(n) if n == HELLO_FRAME_LEN)
        })
    }
}

/// Waits until the peer's whole HELLO waits unread in the socket (or the peer has stopped
/// sending), then claims the handshake's slot and hands the socket back for the handshake.
///
/// A tokio-pvm client sends its HELLO as soon as it connects, so this normally returns at once.
/// Until it returns, the connection has cost one registration and no handshake work (no cookie,
/// no HELLO of ours, no `PR_SET_PTRACER`), and the listener may give its slot to a newer
/// connection. A client never waits for the listener's HELLO before sending its own, so the
/// listener's HELLO following the client's changes nothing for it.
async fn wait_for_hello(
    sock: OwnedFd,
    pid: i32,
    unaccepted: &Unaccepted,
    deadline: Instant,
    config: &Config,
) -> Result<OwnedFd> {
    // Usually the HELLO is already there: no need to wait for readiness.
    let mut buf = [0u8; HELLO_FRAME_LEN];
    if matches!(sys::peek(sock.as_fd(), &mut buf), Ok(HELLO_FRAME_LEN)) {
        return match unaccepted.slot.start() {
            true => Ok(sock),
            false => Err(evicted(unaccepted)),
        };
    }
    let fd = sys::register(sock).map_err(|e| Error::io("registering an accepted socket", e))?;
    let arrived = async {
        loop {
            let mut guard = fd
                .readable()
                .await
                .map_err(|e| Error::io("polling an accepted socket", e))?;
            let finished = guard.ready().is_read_closed();
            let mut buf = [0u8; HELLO_FRAME_LEN];
            match guard.try_io(|fd| sys::peek(fd.as_fd(), &mut buf)) {
                Ok(Ok(0)) => {
                    return Err(Error::new(
                        ErrorKind::PeerGone,
                        format!(
                            "process {pid} closed its connection to {} before sending its HELLO",
                            unaccepted.reasons.path
                        ),
                    ));
                }
                // What a peer that stopped sending has sent (an ERROR frame, say) is for the
                // handshake to read.
                Ok(Ok(n)) if n == HELLO_FRAME_LEN || finished => return Ok(()),
                // Part of a frame. Peeking consumed nothing, so the readiness is cleared here
                // to wait for more; a readiness event newer than the guard's is kept.
                Ok(Ok(_)) => guard.clear_ready(),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(Error::io("reading an accepted socket", e)),
                Err(_would_block) => {}
            }
        }
    };
    match tokio::time::timeout_at(deadline, arrived).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the listener at {} dropped the connection from process {pid}: no complete \
                     HELLO arrived within {:?} of accepting it (a tokio-pvm client sends its \
                     HELLO at once; raise Config::hello_timeout on the listener if its clients \
                     stall between connecting and sending)",
                    unaccepted.reasons.path, config.hello_timeout
                ),
            ));
        }
    }
    match unaccepted.slot.start() {
        true => Ok(fd.into_inner()),
        false => Err(evicted(unaccepted)),
    }
}

/// The error of a handshake whose slot was given away.
fn evicted(unaccepted: &Unaccepted) -> Error {
    Error::new(ErrorKind::PeerGone, unaccepted.reasons.evicted.clone())
}

/// A place under a listener's [`Config::max_connections`], held by an accepted connection
/// from its accept until both its halves are dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    live: Arc<AtomicUsize>,
}

impl ConnectionPermit {
    /// A permit, unless `max` are out.
    fn try_new(live: &Arc<AtomicUsize>, max: usize) -> Option<ConnectionPermit> {
        live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        Some(ConnectionPermit { live: live.clone() })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One handshake under way with a peer of another uid, counted per uid until dropped.
#[derive(Debug)]
struct UidSlot {
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl UidSlot {
    /// A slot for `uid`, unless the listener is `crowded` and its peers already have
    /// [`MAX_HANDSHAKES_PER_UID`].
    fn try_new(
        per_uid: &Arc<Mutex<HashMap<u32, usize>>>,
        uid: u32,
        crowded: bool,
    ) -> Option<UidSlot> {
        let mut counts = per_uid.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(uid).or_insert(0);
        if crowded && *n >= MAX_HANDSHAKES_PER_UID {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            per_uid: per_uid.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut counts = self.per_uid.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// The pause of accepting after the process ran out of descriptors or kernel memory.
#[derive(Debug)]
struct Backoff {
    /// Set while accepting is paused.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The next pause.
    delay: Duration,
    last_failure: Option<Instant>,
    /// Failures in the current episode.
    failures_in_episode: u64,
    /// Failures since the last successful accept.
    failures_in_a_row: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            sleep: None,
            delay: ACCEPT_BACKOFF_MIN,
            last_failure: None,
            failures_in_episode: 0,
            failures_in_a_row: 0,
        }
    }
}

impl Backoff {
    /// Pauses after a failed accept; returns the pause.
    fn failed(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_none_or(|last| now.duration_since(last) >= EPISODE_GAP)
        {
            self.failures_in_episode = 0;
            self.delay = ACCEPT_BACKOFF_MIN;
        }
        self.last_failure = Some(now);
        self.failures_in_episode += 1;
        self.failures_in_a_row += 1;
        let delay = self.delay;
        self.delay = (delay * 2).min(ACCEPT_BACKOFF_MAX);
        self.sleep = Some(Box::pin(tokio::time::sleep_until(now + delay)));
        delay
    }

    fn succeeded(&mut self) {
        if self.failures_in_a_row > 0 {
            debug!(
                failures = self.failures_in_a_row,
                "accepting again after running out of resources"
            );
            self.failures_in_a_row = 0;
            self.delay = ACCEPT_BACKOFF_MIN;
        }
    }

    /// Ready when accepting is not paused; registers the timer's waker otherwise.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(sleep) = &mut self.sleep {
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        Poll::Ready(())
    }
}

/// At most one warning per [`WARN_INTERVAL`] for one kind of event.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(events not warned about since the last warning)` if a warning may go out now.
    fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What clients dropped unaccepted are told.
#[derive(Debug)]
struct Reasons {
    /// The listener's path, as shown.
    path: String,
    /// The listener closed.
    closed: String,
    /// Its slot went to a newer connection.
    evicted: String,
}

/// The listener's own copy of an accepted socket (kept in its [`HelloSlot`]), held until
/// [`Listener::accept`] hands the connection out. Dropped before that (the listener closed or
/// gave the handshake's slot away, so its handshake task was aborted or its finished connection
/// discarded), it tells the client why, so that the client fails at once with a clear error
/// instead of seeing a bare hang-up.
struct Unaccepted {
    slot: Arc<HelloSlot>,
    reasons: Arc<Reasons>,
}

impl Unaccepted {
    /// The connection was handed out, or its handshake failed (and the client was told
    /// why, or is gone): close the copy without a word.
    fn release(self) {
        drop(self.slot.take_copy());
    }

    /// The client has not been told why it is dropped: tell it `reason` (or that its slot was
    /// given away, if it was).
    fn refuse(self, reason: &str) {
        if let Some(fd) = self.slot.take_copy() {
            let reason = match self.slot.evicted() {
                true => &self.reasons.evicted,
                false => reason,
            };
            refuse(fd.as_fd(), ErrorCode::Other, reason);
        }
    }
}

impl Drop for Unaccepted {
    fn drop(&mut self) {
        if let Some(fd) = self.slot.take_copy() {
            let reason = match self.slot.evicted() {
                true => &self.reasons.evicted,
                false => &self.reasons.closed,
            };
            refuse(fd.as_fd(), ErrorCode::Other, reason);
        }
    }
}

/// Sends the client an ERROR frame with `code` and `reason` and shuts the socket down; best
/// effort and without blocking (a frame this small always fits in the socket buffer of a new
/// connection). The client fails with the code's error kind ([`ErrorKind::PeerGone`] for
/// [`ErrorCode::Other`]) and the reason, whether it is in its handshake (it reads frames
/// first, the hang-up after) or already connected.
fn refuse(sock: BorrowedFd<'_>, code: ErrorCode, reason: &str) {
    let mut frame = BytesMut::new();
    let limits = Limits {
        max_message_size: 0,
        max_ranges: 0,
        max_inline: 0,
    };
    let error = OutFrame::Error { code, reason };
    if FrameCodec::new(limits).encode(error, &mut frame).is_ok() {
        let _ = sys::send(sock, &frame);
    }
    // Take what the client sent and nobody read (a partial HELLO, say), a little of it at
    // most: a Unix socket closed with unread data resets the peer (ECONNRESET), which could
    // then lose our ERROR frame instead of reading it and the end of the stream.
    let mut sink = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    for _ in 0..16 {
        if !matches!(sys::recv(sock, &mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = sys::shutdown(sock, Shutdown::Both);
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
                    refuse(sock.as_fd(), ErrorCode::Other, &self.reasons.closed);
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
            .field("handshakes", &self.slots_in_use())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_counted_per_uid() {
        let per_uid = Arc::default();
        let slots: Vec<UidSlot> = (0..MAX_HANDSHAKES_PER_UID)
            .map(|_| UidSlot::try_new(&per_uid, 65534, true).expect("room"))
            .collect();
        assert!(
            UidSlot::try_new(&per_uid, 65534, true).is_none(),
            "that uid is full"
        );
        let burst = UidSlot::try_new(&per_uid, 65534, false).expect("not while quiet");
        let other = UidSlot::try_new(&per_uid, 1000, true).expect("another uid has its own");
        drop((slots, burst));
        assert!(
            UidSlot::try_new(&per_uid, 65534, true).is_some(),
            "given back"
        );
        drop(other);
        assert!(
            per_uid.lock().unwrap().is_empty(),
            "counts of zero are removed"
        );
    }

    use crate::codec::{COOKIE_LEN, Hello, VERSION};

    #[test]
    fn hello_frame_len_is_what_the_codec_writes() {
        let hello = Hello {
            version: VERSION,
            cookie_addr: 0,
            cookie: [0; COOKIE_LEN],
            max_message_size: 1,
            window_messages: 1,
            window_bytes: 1,
            max_inline: 1,
            max_ranges: 1,
        };
        let limits = Limits {
            max_message_size: 0,
            max_ranges: 0,
            max_inline: 0,
        };
        let mut frame = BytesMut::new();
        FrameCodec::new(limits)
            .encode(OutFrame::Hello(&hello), &mut frame)
            .unwrap();
        assert_eq!(frame.len(), HELLO_FRAME_LEN);
    }

    #[tokio::test]
    async fn accept_pauses_double_up_to_a_second_and_reset_after_a_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..9).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // One episode: reported once.
        assert_eq!(backoff.failures_in_episode, 9);
        backoff.succeeded();
        assert_eq!(backoff.failed(), ACCEPT_BACKOFF_MIN);
        assert_eq!(
            backoff.failures_in_episode, 10,
            "a success does not end the episode"
        );
    }

    #[test]
    fn warnings_are_throttled_and_count_what_they_skipped() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.check(), Some(0));
        assert_eq!(throttle.check(), None);
        assert_eq!(throttle.check(), None);
        throttle.last = Some(Instant::now() - WARN_INTERVAL);
        assert_eq!(throttle.check(), Some(2));
    }

    #[test]
    fn a_slot_goes_to_the_handshake_or_to_eviction_not_both() {
        let (a, _b) = sys::stream_pair().unwrap();
        let slot = HelloSlot::new(&a);
        assert!(slot.waiting() && !slot.hello_buffered());
        assert!(slot.evict());
        assert!(!slot.start() && slot.evicted());
        let slot = HelloSlot::new(&a);
        assert!(slot.start());
        assert!(!slot.evict() && !slot.waiting());
    }

    #[test]
    fn a_whole_hello_in_the_socket_counts_as_arrived() {
        let (a, b) = sys::stream_pair().unwrap();
        let slot = HelloSlot::new(&a);
        sys::send(b.as_fd(), &[1; HELLO_FRAME_LEN - 1]).unwrap();
        assert!(!slot.hello_buffered());
        sys::send(b.as_fd(), &[1]).unwrap();
        assert!(slot.hello_buffered());
    }
}
