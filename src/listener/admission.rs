//! Admission control: which accepted sockets get a handshake, and which are turned away.
//!
//! A socket the listener accepts is screened before it costs a handshake slot: a peer uid the
//! configuration refuses, a connection beyond `Config::max_connections`, and (once the listener
//! is busy) a user with too many handshakes under way are refused with an ERROR frame naming
//! the limit. The others get one of [`MAX_HANDSHAKES`] slots and a handshake task; while all
//! slots are taken, the oldest handshake still waiting for its peer's HELLO gives its slot up.
//! Finished handshakes wait here until `accept` hands them out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::hello::{HelloSlot, Reasons, Unaccepted, refuse, wait_for_hello};
use crate::codec::ErrorCode;
use crate::config::Config;
use crate::connection::Connection;
use crate::error::Error;
use crate::handshake::handshake;
use crate::sys;

/// Handshakes that may run at once (finished ones waiting for [`Listener::accept`] included).
/// While all are taken, the oldest one still waiting for its peer's HELLO is dropped for each
/// new connection; without such a one, new connections wait in the kernel's backlog.
///
/// [`Listener::accept`]: super::Listener::accept
pub(super) const MAX_HANDSHAKES: usize = 128;
/// Handshakes that peers of one uid other than this process's may have under way once half
/// of the slots are taken: a user that stalls its handshakes after the HELLO cannot take more
/// than half of them, while a burst of one user's clients on a quiet listener is not refused.
/// (Peers of this process's own uid are not limited: they could as well kill it.)
const MAX_HANDSHAKES_PER_UID: usize = MAX_HANDSHAKES / 4;
/// Least time between two warnings about one kind of dropped or refused connection: a flood of
/// them must not turn into a flood of log lines.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// The handshakes of a listener, and what decides which sockets get one.
pub(super) struct Admission {
    config: Config,
    /// Handshakes under way, and finished ones waiting for [`Listener::accept`]. A finished
    /// one that is discarded drops its `Unaccepted` first, so the client reads the refusal
    /// before the connection's own hang-up.
    ///
    /// [`Listener::accept`]: super::Listener::accept
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
    /// What clients are told when the listener drops them unaccepted.
    reasons: Arc<Reasons>,
    warn_evicted: Throttle,
    warn_no_hello: Throttle,
    /// Warnings of connections refused for their uid ([`ErrorCode::Refused`]).
    warn_refused: Throttle,
    /// Warnings of connections refused for a limit ([`ErrorCode::Limit`]).
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

impl Admission {
    /// Admission for the listener at `path`, whose connections use `config`.
    pub(super) fn new(path: &Path, config: Config) -> Admission {
        Admission {
            config,
            handshakes: JoinSet::new(),
            arrivals: VecDeque::new(),
            evicted: HashSet::new(),
            live: Arc::new(AtomicUsize::new(0)),
            per_uid: Arc::default(),
            reasons: Arc::new(Reasons::new(path)),
            warn_evicted: Throttle::default(),
            warn_no_hello: Throttle::default(),
            warn_refused: Throttle::default(),
            warn_limit: Throttle::default(),
        }
    }

    /// What clients are told when the listener drops them unaccepted.
    /// The count of live connections, which TCP connections share.
    #[cfg(feature = "tcp")]
    pub(super) fn live(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }

    pub(super) fn reasons(&self) -> &Reasons {
        &self.reasons
    }

    /// Handshakes under way or finished and not handed out, those dropped to make room and not
    /// yet reaped included.
    pub(super) fn handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// The next connection whose handshake succeeded; logs and discards failed ones.
    pub(super) fn poll_finished(&mut self, cx: &mut Context<'_>) -> Poll<Connection> {
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
                                    path = %self.reasons.path,
                                    error = %e,
                                    similar_since_last_warning = more,
                                    "connection dropped before its HELLO"
                                );
                            }
                        }
                        Outcome::Failed(e) => {
                            warn!(path = %self.reasons.path, error = %e, "handshake failed; connection dropped");
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

    /// Screens a newly accepted socket, then starts its handshake; whether it did.
    pub(super) fn admit(&mut self, sock: OwnedFd) -> bool {
        // Refuse what the configuration refuses before the connection costs a slot.
        let Ok((pid, uid, _)) = sys::peer_credentials(sock.as_fd()) else {
            debug!("no credentials for an accepted socket (the peer is gone); dropped");
            return false;
        };
        let own_uid = nix::unistd::geteuid().as_raw();
        if !self.config.accepts_uid(own_uid, uid) {
            self.turn_away(
                &sock,
                pid,
                ErrorCode::Refused,
                format_args!(
                    "peer uid {uid} is not accepted; allow it with Config::allow_uid({uid}) or \
                     Config::allow_any_uid()"
                ),
                &format!(
                    "uid {uid} is not accepted by process {} (uid {own_uid}); that side must \
                     allow it with Config::allow_uid({uid})",
                    std::process::id()
                ),
            );
            return false;
        }
        let permit = match self.config.max_connections {
            None => None,
            Some(max) => match ConnectionPermit::try_new(&self.live, max) {
                Some(permit) => Some(permit),
                None => {
                    self.turn_away(
                        &sock,
                        pid,
                        ErrorCode::Limit,
                        format_args!(
                            "{max} connections are alive, the limit set with \
                             Config::max_connections"
                        ),
                        &format!(
                            "the listener at {} (process {}) already has {max} connections, its \
                             limit (Config::max_connections({max})); connect again once one of \
                             them has closed, or raise the limit on the listener's side",
                            self.reasons.path,
                            std::process::id()
                        ),
                    );
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
                    self.turn_away(
                        &sock,
                        pid,
                        ErrorCode::Limit,
                        format_args!(
                            "peers of uid {uid} already have {MAX_HANDSHAKES_PER_UID} handshakes \
                             under way"
                        ),
                        &format!(
                            "the listener at {} (process {}) is busy and already has at least \
                             {MAX_HANDSHAKES_PER_UID} handshakes under way with peers of uid \
                             {uid}, the most one other user may have then; finish those, then \
                             connect again",
                            self.reasons.path,
                            std::process::id()
                        ),
                    );
                    return false;
                }
            },
        };
        if self.slots_in_use() >= MAX_HANDSHAKES {
            self.evict_oldest_waiting();
        }
        let slot = Arc::new(HelloSlot::new(&sock));
        let unaccepted = Unaccepted::new(slot.clone(), self.reasons.clone());
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

    /// Refuses a connection before its handshake: logs "refused a connection: `why`" at
    /// `warn` (at most once a second for each `code`, counting the ones not logged), and sends
    /// the client an ERROR frame with `code` and `reason`.
    fn turn_away(
        &mut self,
        sock: &OwnedFd,
        pid: i32,
        code: ErrorCode,
        why: fmt::Arguments<'_>,
        reason: &str,
    ) {
        let throttle = match code {
            ErrorCode::Refused => &mut self.warn_refused,
            _ => &mut self.warn_limit,
        };
        if let Some(more) = throttle.check() {
            warn!(
                path = %self.reasons.path,
                peer_pid = pid,
                similar_since_last_warning = more,
                "refused a connection: {why}"
            );
        }
        refuse(sock.as_fd(), code, reason);
    }

    /// Handshakes holding a slot.
    pub(super) fn slots_in_use(&self) -> usize {
        self.handshakes.len().saturating_sub(self.evicted.len())
    }

    /// Whether a new connection can have a slot: a free one, or one that can be taken from a
    /// connection still waiting for its HELLO.
    pub(super) fn has_room(&mut self) -> bool {
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
    pub(super) fn evict_oldest_waiting(&mut self) -> bool {
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
                        path = %self.reasons.path,
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
}

/// A place under a listener's [`Config::max_connections`], held by an accepted connection
/// from its accept until both its halves are dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    live: Arc<AtomicUsize>,
}

impl ConnectionPermit {
    /// A permit, unless `max` are out.
    pub(super) fn try_new(live: &Arc<AtomicUsize>, max: usize) -> Option<ConnectionPermit> {
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

    #[test]
    fn warnings_are_throttled_and_count_what_they_skipped() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.check(), Some(0));
        assert_eq!(throttle.check(), None);
        assert_eq!(throttle.check(), None);
        throttle.last = Some(Instant::now() - WARN_INTERVAL);
        assert_eq!(throttle.check(), Some(2));
    }
}
