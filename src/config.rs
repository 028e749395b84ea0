//! Limits and tuning for a connection.

use std::time::Duration;

use crate::sys::IOV_MAX;

/// Which peer users a connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UidPolicy {
    /// Only peers running as the same uid as this process (the default).
    SameUid,
    /// The same uid, plus the listed uids.
    Listed(Vec<u32>),
    /// Any uid.
    Any,
}

/// Limits and tuning for connections, listeners and pairs.
///
/// Every limit is enforced on what the peer sends before anything is allocated for it. Both
/// sides announce their receive limits in the handshake, and a sender never sends more than
/// the smaller of its own and the peer's limits allow.
///
/// ```
/// use std::time::Duration;
/// use tokio_pvm::Config;
///
/// let config = Config::new()
///     .max_message_size(256 << 20)
///     .window(128, 512 << 20)
///     .handshake_timeout(Duration::from_secs(2));
/// assert_eq!(config.get_max_message_size(), 256 << 20);
/// ```
///
/// The setters take the configuration by value and return the changed one, so a call whose
/// result is not used changes nothing; they are `#[must_use]`, and the compiler says so:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let config = tokio_pvm::Config::new();
/// config.window(1, 2); // error: unused `Config` that must be used
/// ```
///
/// (The getters are named `get_*`: on a by-value builder the plain names are the setters.)
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) max_message_size: u64,
    pub(crate) window_messages: u32,
    pub(crate) window_bytes: u64,
    pub(crate) handshake_timeout: Duration,
    pub(crate) hello_timeout: Duration,
    pub(crate) max_connections: Option<usize>,
    pub(crate) inline_threshold: u32,
    pub(crate) max_inline_size: u32,
    pub(crate) blocking_threshold: u64,
    pub(crate) max_pulls_in_flight: usize,
    pub(crate) pull_timeout: Duration,
    pub(crate) linger: Duration,
    pub(crate) max_ranges: u32,
    pub(crate) pool_bytes: usize,
    pub(crate) require_pull: bool,
    pub(crate) any_ptracer: bool,
    pub(crate) loan_region: usize,
    uid_policy: UidPolicy,
    pub(crate) slow_subscriber: SlowSubscriber,
    pub(crate) slow_subscriber_grace: Duration,
    /// TLS for the TCP carrier.
    #[cfg(feature = "tcp")]
    pub(crate) tls: Option<crate::tcp::Tls>,
    /// Plain TCP between loopback addresses allowed (no TLS).
    #[cfg(feature = "tcp")]
    pub(crate) plain_tcp_on_loopback: bool,
    pub(crate) tcp_nodelay: bool,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) connect_timeout: Duration,
}

/// What a [`Fanout`](crate::Fanout) does with a subscriber whose window is full when a message
/// is published: one that has not pulled the window's worth of earlier messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowSubscriber {
    /// Wait for it: the publisher's `poll_ready` stays pending until every subscriber has room,
    /// so the slowest subscriber sets the pace (backpressure). The default.
    #[default]
    Wait,
    /// Drop it if it stays without room: the publisher waits for a subscriber whose window is
    /// full for at most [`Config::slow_subscriber_grace`] (1 s by default); one that has made
    /// no room by then is dropped, its connection ends with an error of kind
    /// [`LimitExceeded`](crate::ErrorKind::LimitExceeded) on both sides, and the others go on
    /// ([`Fanout::take_departed`](crate::Fanout::take_departed) and a `warn!` event report
    /// it). A subscriber that keeps pulling is never dropped for being slower than the
    /// publisher's bursts: it slows the publisher down, as with `Wait`, by at most the grace
    /// time per message.
    Drop,
}

/// Largest inline payload either side may configure: frames stay far below 4 GiB.
const MAX_INLINE: u32 = 16 << 20;

/// Default largest message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 64 << 20;
/// Default window: 1024 messages in flight.
pub const DEFAULT_WINDOW_MESSAGES: u32 = 1024;
/// Default window: 16 MiB in flight.
pub const DEFAULT_WINDOW_BYTES: u64 = 16 << 20;
/// Default limit on one blocking-pool pull: 10 seconds.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`Config::linger`]: how long a dropped sending side keeps serving the peer.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(30);
/// Default for [`Config::slow_subscriber_grace`]: 1 second.
pub const DEFAULT_SLOW_SUBSCRIBER_GRACE: Duration = Duration::from_secs(1);
/// Default handshake timeout: 10 seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a listener gives a new connection to send its HELLO: 2 seconds.
pub(crate) const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Default [`Config::connect_timeout`]: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default [`Config::tcp_keepalive`]: 60 s idle.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            window_messages: DEFAULT_WINDOW_MESSAGES,
            window_bytes: DEFAULT_WINDOW_BYTES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            max_connections: None,
            inline_threshold: 256,
            max_inline_size: 64 << 10,
            blocking_threshold: 2 << 20,
            max_pulls_in_flight: 4,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            linger: DEFAULT_LINGER,
            max_ranges: IOV_MAX as u32,
            pool_bytes: 32 << 20,
            require_pull: false,
            any_ptracer: false,
            loan_region: 0,
            uid_policy: UidPolicy::SameUid,
            slow_subscriber: SlowSubscriber::Wait,
            slow_subscriber_grace: DEFAULT_SLOW_SUBSCRIBER_GRACE,
            #[cfg(feature = "tcp")]
            tls: None,
            #[cfg(feature = "tcp")]
            plain_tcp_on_loopback: false,
            tcp_nodelay: true,
            tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl Config {
    /// The defaults: 64 MiB messages, a window of 1024 messages and 16 MiB, a 10 s handshake
    /// timeout, peers of the same uid only.
    pub fn new() -> Config {
        Config::default()
    }

    /// Largest message this side accepts, in bytes (default 64 MiB). A larger message from the
    /// peer ends the connection with [`ErrorKind::LimitExceeded`](crate::ErrorKind); sending a
    /// larger message than the peer accepts fails that send with the same kind.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn max_message_size(mut self, bytes: u64) -> Config {
        self.max_message_size = bytes;
        self
    }

    /// How many messages and how many bytes may be in flight (sent but not yet acknowledged),
    /// in each direction (default 1024 messages, 16 MiB; each at least 1).
    ///
    /// The sender waits in `poll_ready` while either is reached; one message may take the byte
    /// count past the limit, so the memory a sender holds is bounded by `bytes` plus one
    /// message. The receiver announces its window in the handshake and treats a peer that
    /// overruns it as a protocol violation.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn window(mut self, messages: u32, bytes: u64) -> Config {
        self.window_messages = messages.max(1);
        self.window_bytes = bytes.max(1);
        self
    }

    /// How long connecting, accepting and pairing may take, handshake included (default 10 s).
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Config {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a [`Listener`](crate::Listener) waits for a newly accepted connection's HELLO,
    /// its first frame (default 2 s). The handshake starts once the whole HELLO is in, and
    /// [`handshake_timeout`](Config::handshake_timeout) bounds it from there.
    ///
    /// A tokio-pvm client sends its HELLO as soon as its `connect` returns, before it reads
    /// anything, so the HELLO has usually arrived by the time the listener accepts the
    /// connection. A connection that sends nothing, or only part of a HELLO, is not a working
    /// client: after this time the listener drops it, and tells it why, so that such
    /// connections cannot hold the listener's handshake slots. While every slot is taken, the
    /// listener drops the oldest connection still without a whole HELLO at once to make room
    /// for the next one, without waiting for this timeout. Raise it only for clients that
    /// stall between connecting and sending, such as a client stopped in a debugger.
    ///
    /// On TCP the same time bounds the TLS handshake of an accepted connection (a client
    /// starts it as soon as it is connected), so that connections that send nothing hold
    /// one of the listener's 128 TCP handshake slots for no longer than this.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn hello_timeout(mut self, timeout: Duration) -> Config {
        self.hello_timeout = timeout;
        self
    }

    /// Most connections a [`Listener`](crate::Listener) keeps at once (default: no limit
    /// other than the process's file descriptors; at least 1).
    ///
    /// Counted are the connections it has accepted that are still alive: those in their
    /// handshake, those waiting for [`Listener::accept`](crate::Listener::accept), and those
    /// `accept` returned until the application drops them (the [`Connection`](crate::Connection)
    /// or, after [`split`](crate::Connection::split), both its halves; a
    /// [`ByteStream`](crate::ByteStream) counts as its connection). While the limit is
    /// reached, a new connection is refused at once: the listener sends it an ERROR naming the
    /// limit, and the client's `connect` fails with
    /// [`ErrorKind::LimitExceeded`](crate::ErrorKind). Each connection costs two file
    /// descriptors (the socket and, when this side pulls, a pidfd) and up to its
    /// [`buffer_pool`](Config::buffer_pool) in recycled buffers, so the limit bounds what
    /// clients can make the listener's process hold. Ignored by `connect` and `pair`.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn max_connections(mut self, connections: usize) -> Config {
        self.max_connections = Some(connections.max(1));
        self
    }

    /// Messages up to this size travel inside the frame over the control socket instead of
    /// being pulled (default 256 bytes: below that a pull costs more than the copy it saves;
    /// at most 16 MiB). Capped by the peer's
    /// [`max_inline_size`](Config::max_inline_size).
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn inline_threshold(mut self, bytes: u32) -> Config {
        self.inline_threshold = bytes.min(MAX_INLINE);
        self
    }

    /// Largest inline payload this side accepts from the peer (default 64 KiB, at most 16 MiB).
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn max_inline_size(mut self, bytes: u32) -> Config {
        self.max_inline_size = bytes.min(MAX_INLINE);
        self
    }

    /// Pulls of at least this many bytes run on Tokio's blocking pool (`spawn_blocking`);
    /// smaller ones run in place, where the copy costs less than the hand-off (default 2 MiB:
    /// a 1 MiB pull takes about 50 µs here, while a hand-off to the pool and back costs a
    /// wake-up of tens of microseconds). One poll pulls about this many bytes in place at most
    /// (the first message of a run always fits). With 0 every pull goes to the blocking pool.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn blocking_threshold(mut self, bytes: u64) -> Config {
        self.blocking_threshold = bytes;
        self
    }

    /// How many blocking-pool pulls may run at once for one connection (default 4, at least 1).
    /// Messages are still delivered in order.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn max_pulls_in_flight(mut self, pulls: usize) -> Config {
        self.max_pulls_in_flight = pulls.max(1);
        self
    }

    /// Longest a pull on the blocking pool may take before the connection fails with
    /// [`ErrorKind::Timeout`](crate::ErrorKind) (default 10 s; a 64 MiB pull takes about
    /// 20 ms here).
    ///
    /// A pull sleeps in the kernel for as long as the peer's memory takes to answer: pages
    /// backed by a `userfaultfd` that never resolves the fault, or by a hung FUSE or NFS
    /// file, hold it forever, and nothing can interrupt it. After the timeout the connection
    /// fails and the pull is abandoned; its thread comes back when the peer's memory answers
    /// or the peer exits. At most 64 abandoned pulls may hold threads in a process; while
    /// that many do, new blocking-pool pulls are refused (the connection fails with
    /// [`ErrorKind::LimitExceeded`](crate::ErrorKind)).
    ///
    /// Pulls below [`blocking_threshold`](Config::blocking_threshold) run in place on the
    /// runtime thread and have no timeout: a peer of the same user (the only kind this side
    /// pulls from, see the README's security model) can stall that thread, as it could kill
    /// or trace this process. Set `blocking_threshold(0)` to move every pull off the runtime.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn pull_timeout(mut self, timeout: Duration) -> Config {
        self.pull_timeout = timeout;
        self
    }

    /// How long a sending side dropped with messages the peer has not pulled yet keeps them
    /// alive for the peer (default [`DEFAULT_LINGER`], 30 s).
    ///
    /// Dropping a [`Connection`](crate::Connection), [`Sender`](crate::Sender) or
    /// [`ByteStream`](crate::ByteStream) does not lose what was written: the connection's
    /// driver task keeps the buffers, writes out what was not flushed, serves the peer's pulls
    /// and then closes the sending direction, so the peer reads every message and then the end
    /// of the stream, as after dropping a socket. It stops early if the peer goes away or
    /// closes its receiving side. If the peer has not pulled everything within `linger`, the
    /// connection ends with an error on the peer's side (it does not see a clean end of
    /// stream over lost messages) and the buffers are released. `Duration::ZERO` releases
    /// them at once. Only the end of the process (or of its Tokio runtime, which owns the
    /// driver task) loses them sooner.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn linger(mut self, linger: Duration) -> Config {
        self.linger = linger;
        self
    }

    /// Receive buffers of 64 KiB and more are recycled: when the application drops a received
    /// message, its buffer returns to the connection's pool with its pages still mapped, which
    /// spares the next pull the page faults of fresh memory. A [`ByteStream`](crate::ByteStream)
    /// takes the buffers of the messages of 1 MiB and more it writes from the same pool (they
    /// return once the peer has pulled them). This caps the idle bytes the pool keeps (default
    /// 32 MiB; 0 turns recycling off). All connections of the process together
    /// keep at most [`set_process_buffer_pool`](crate::set_process_buffer_pool) idle bytes
    /// (64 MiB by default).
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn buffer_pool(mut self, bytes: usize) -> Config {
        self.pool_bytes = bytes;
        self
    }

    /// Refuse to connect when this side cannot read the peer's memory (default: allowed, and
    /// the peer then sends every message inline over the socket; see
    /// [`Mode::Inline`](crate::Mode::Inline)). With `true`, the handshake fails instead, with a
    /// message naming the cause and the fix: [`ErrorKind::PermissionDenied`](crate::ErrorKind)
    /// when the kernel refuses the read, `Protocol` when the cookie read back does not match
    /// (another pid namespace, a forwarder), `Unsupported` without cross memory attach.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn require_pull(mut self, require: bool) -> Config {
        self.require_pull = require;
        self
    }

    /// Under Yama `ptrace_scope` 1, let *any* process of the same user read this one
    /// (`prctl(PR_SET_PTRACER_ANY)`), so that every peer can pull. **This weakens isolation**:
    /// any same-uid process, not only peers, may then attach to or read this process.
    ///
    /// Without it (the default), a process declares its first peer as its one permitted reader
    /// (`PR_SET_PTRACER` takes a single pid); later peers cannot pull from it and receive its
    /// messages inline (see [`Mode::Inline`](crate::Mode::Inline)).
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn allow_any_ptracer(mut self, allow: bool) -> Config {
        self.any_ptracer = allow;
        self
    }

    /// Opens the zero-copy lane with a loan region of `bytes` (rounded up to whole pages;
    /// default 0: off). Both sides must set it.
    ///
    /// Each side then creates a shared-memory file of this size (`memfd`, sealed so that it
    /// cannot shrink) at the handshake and passes it to the peer, which maps it read-only.
    /// [`Sender::loan`](crate::Sender::loan) hands out buffers in it; a message written into
    /// one and sent is read by the peer in place, without a second copy, and its memory is
    /// lent again once the receiving application drops it. Other messages travel as before.
    /// Size it to hold what is in flight and what the receiving application keeps: twice the
    /// [window](Config::window)'s bytes is a good start; a loan that does not fit comes from
    /// the heap instead.
    ///
    /// **The trade-off**: a received loaned message stays in the sender's memory, so a
    /// hostile sender can change it after delivery, even while the receiving code reads it
    /// (copy it before validating it if the sender is not trusted; a pulled message is a
    /// private copy). Open the lane only to peers you trust with that. The receiver is protected against
    /// everything else: the file must be sealed and of the announced size, no larger than this
    /// side's own region (a peer's region costs address space, and pages the peer never wrote
    /// are allocated here when read), and every offset is checked. Where `memfd_create`, `mmap` or descriptor passing are refused, the connection
    /// falls back to the other lanes and says so in a `warn!` event.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn loan_region(mut self, bytes: usize) -> Config {
        self.loan_region = bytes;
        self
    }

    /// Most address ranges one descriptor may carry (default and maximum 1024, `IOV_MAX`).
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn max_ranges(mut self, ranges: u32) -> Config {
        self.max_ranges = ranges.clamp(1, IOV_MAX as u32);
        self
    }

    /// Also accept peers running as `uid` (by default only the same uid as this process).
    ///
    /// Reading another user's memory still needs the kernel's permission (CAP_SYS_PTRACE or
    /// matching credentials); this only stops the connection from being refused up front.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn allow_uid(mut self, uid: u32) -> Config {
        match &mut self.uid_policy {
            UidPolicy::SameUid => self.uid_policy = UidPolicy::Listed(vec![uid]),
            UidPolicy::Listed(list) => list.push(uid),
            UidPolicy::Any => {}
        }
        self
    }

    /// Accept peers of any uid. Any local user who can reach the socket path can then connect;
    /// protect the path with file permissions.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn allow_any_uid(mut self) -> Config {
        self.uid_policy = UidPolicy::Any;
        self
    }

    /// What a [`Fanout`](crate::Fanout) built from this configuration does with a subscriber
    /// whose window is full (default [`SlowSubscriber::Wait`]).
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn slow_subscriber(mut self, policy: SlowSubscriber) -> Config {
        self.slow_subscriber = policy;
        self
    }

    /// With [`SlowSubscriber::Drop`], how long a subscriber may stay without room in its
    /// window (or, while the publisher flushes or closes, acknowledge nothing) before it is
    /// dropped (default [`DEFAULT_SLOW_SUBSCRIBER_GRACE`], 1 s). Until then the publisher
    /// waits for it. `Duration::MAX` never drops.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn slow_subscriber_grace(mut self, grace: Duration) -> Config {
        self.slow_subscriber_grace = grace;
        self
    }

    /// TLS for the TCP carrier (`tcp://` addresses): this side's certificate and the
    /// authorities it trusts (see [`Tls`](crate::Tls)). Required on both sides of a TCP
    /// connection unless both opted into
    /// [`danger_plain_tcp_on_loopback`](Config::danger_plain_tcp_on_loopback); a Unix
    /// connection ignores it.
    #[cfg(feature = "tcp")]
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn tls(mut self, tls: crate::tcp::Tls) -> Config {
        self.tls = Some(tls);
        self
    }

    /// Allows TCP connections without TLS, between two loopback addresses only: no
    /// encryption, and no identity (any local process that can open a TCP socket can
    /// connect, whatever its user; a Unix socket checks the user). For tests and benchmarks;
    /// a non-loopback peer or address is refused with an error naming [`Config::tls`].
    /// Ignored when [`tls`](Config::tls) is set.
    #[cfg(feature = "tcp")]
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn danger_plain_tcp_on_loopback(mut self) -> Config {
        self.plain_tcp_on_loopback = true;
        self
    }

    /// Whether TCP connections set `TCP_NODELAY` (default `true`): frames are written when
    /// the protocol writes them (it already batches small messages), not held back by
    /// Nagle's algorithm for up to 40 ms waiting for an acknowledgement.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Config {
        self.tcp_nodelay = nodelay;
        self
    }

    /// TCP keep-alive: after `idle` without traffic the kernel probes the peer every tenth
    /// of that (at least 1 s) and declares the connection dead after 3 unanswered probes, and
    /// data unacknowledged for as long (`TCP_USER_TIMEOUT`) ends it too, so a peer whose host
    /// vanished is reported (`PeerGone`) instead of waited for forever, idle or not. Default
    /// [`DEFAULT_TCP_KEEPALIVE`] (60 s idle: dead after about 78 s); `None` turns both off.
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Config {
        self.tcp_keepalive = idle;
        self
    }

    /// How long a TCP `connect` may take before it fails with [`ErrorKind::Timeout`]
    /// (default [`DEFAULT_CONNECT_TIMEOUT`], 5 s); the TLS and protocol handshakes that
    /// follow have [`handshake_timeout`](Config::handshake_timeout).
    ///
    /// [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout
    #[must_use = "a Config setter returns the changed configuration and leaves the original as it was"]
    pub fn connect_timeout(mut self, timeout: Duration) -> Config {
        self.connect_timeout = timeout;
        self
    }

    /// The largest message this side accepts.
    pub fn get_max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// The window as `(messages, bytes)`.
    pub fn get_window(&self) -> (u32, u64) {
        (self.window_messages, self.window_bytes)
    }

    /// The handshake timeout.
    pub fn get_handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// How long a listener waits for a new connection's HELLO (see
    /// [`hello_timeout`](Config::hello_timeout)).
    pub fn get_hello_timeout(&self) -> Duration {
        self.hello_timeout
    }

    /// The most connections a listener keeps at once, if limited (see
    /// [`max_connections`](Config::max_connections)).
    pub fn get_max_connections(&self) -> Option<usize> {
        self.max_connections
    }

    /// The size of the loan region (0: the zero-copy lane is off; see
    /// [`loan_region`](Config::loan_region)).
    pub fn get_loan_region(&self) -> usize {
        self.loan_region
    }

    /// Whether a peer running as `peer_uid` is accepted by a process running as `own_uid`.
    pub(crate) fn accepts_uid(&self, own_uid: u32, peer_uid: u32) -> bool {
        match &self.uid_policy {
            UidPolicy::Any => true,
            UidPolicy::SameUid => peer_uid == own_uid,
            UidPolicy::Listed(list) => peer_uid == own_uid || list.contains(&peer_uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_policy() {
        let c = Config::new();
        assert!(c.accepts_uid(1000, 1000));
        assert!(!c.accepts_uid(1000, 0));
        let c = Config::new().allow_uid(65534);
        assert!(c.accepts_uid(0, 65534) && c.accepts_uid(0, 0) && !c.accepts_uid(0, 1));
        let c = Config::new().allow_any_uid().allow_uid(3);
        assert!(c.accepts_uid(0, 12345));
    }

    #[test]
    fn limits_are_clamped() {
        let c = Config::new()
            .window(0, 0)
            .max_ranges(5000)
            .max_pulls_in_flight(0);
        assert_eq!(c.get_window(), (1, 1));
        assert_eq!(c.max_ranges, 1024);
        assert_eq!(c.max_pulls_in_flight, 1);
    }
}
