//! Protocol state of an established connection: the send window, acknowledgements, pulls and
//! in-order delivery, and the task that keeps a connection moving.
//!
//! The state machines of the two directions are in [`send`] and [`recv`]: they take frames,
//! acknowledgements and pull completions and say what to write, what to pull and what to
//! deliver, without touching the socket (the property tests in `model` drive them alone).
//! This module owns the I/O around them: the control socket (read in [`frames`]), the pulls
//! and the wakers.
//!
//! ## Who does the work
//! Both halves of a connection ([`Sender`](crate::Sender) and [`Receiver`](crate::Receiver))
//! and the connection's driver task ([`driver`]) share one [`Shared`]. Whoever holds its lock
//! reads frames from the control socket and files them where they belong: acknowledgements
//! release the sender's buffers, messages are pulled into the receive buffer (bounded by the
//! window) and acknowledged. A half that is polled does this work itself, on its own thread,
//! with no hand-off; the driver task does it whenever nobody else does, so a connection makes
//! progress while the application is busy elsewhere, never reads, or has dropped it, as a
//! socket does in the kernel.
//!
//! Readiness of the socket is registered with a waker that wakes the two halves and the driver
//! (an `AsyncFd` only keeps the waker of the last task that polled it), so that none misses a
//! frame meant for it.
//!
//! ## Why the receiver checks for hang-up (and the peer's pidfd) after a pull
//! A sender releases a buffer when it is acknowledged, or when the connection ends; in the
//! second case it shuts the socket down *before* releasing anything. The receiver checks that
//! the socket has not been shut down *after* each batch of pulls and before acknowledging or
//! delivering them. If it has not, the buffers were alive for the whole pull; if it has, the
//! pulled bytes are discarded and the stream reports that the peer went away. The same `poll`
//! call looks at the peer's pidfd: a process that died (and whose pid may be reused) never has
//! its last reads delivered, even if a forked child still holds the socket.

mod driver;
mod frames;
#[cfg(test)]
mod model;
mod recv;
mod send;
mod watchdog;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_sink::Sink;
use futures_util::task::AtomicWaker;
use tokio_util::codec::Framed;
use tracing::debug;

use crate::carrier::Carrier;
use crate::codec::{ErrorCode, FrameCodec, OutFrame};
use crate::error::{Error, ErrorKind, Result};
use crate::loan::{LendRegion, LoanBuf, PeerRegion};
use crate::pool::BufferPool;
use crate::{Mode, PeerInfo};
use frames::is_reset;

use recv::RecvState;
pub(crate) use send::Outgoing;
use send::SendState;

/// Who is working on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Send = 0,
    Recv = 1,
    Driver = 2,
}

/// Wakers of the two halves and of the driver task, registered with the socket's readiness
/// and with pulls. Lock-free: registering the same waker again costs a few atomic operations.
///
/// An event wakes both halves, and the driver unless a half is about to do the work itself: a
/// half *parked* on the socket (its last poll read until the socket had nothing more and
/// returned `Pending`) reads again when woken, and a half polled since the driver last looked
/// is in use and reads at its next poll. Such a half may never be polled again (its future
/// was dropped in a `select!`, or the application stopped reading), so the driver is left out
/// only while the process's watchdog ([`watchdog`]) looks after it: it wakes the driver once
/// the application went a whole [`watchdog::PERIOD`] without polling.
/// So a connection in use pays no wake-up of a second task per event, and one left alone is
/// served by the driver within two periods (40 ms).
#[derive(Debug, Default)]
struct Wakers {
    slots: [AtomicWaker; 3],
    /// Per half: parked on the socket, see above. Cleared by the wake.
    parked: [AtomicBool; 2],
    /// The driver relies on the application's polls, and the watchdog looks after it.
    watched: AtomicBool,
    /// Either half was polled since the watchdog last looked.
    polled: AtomicBool,
    /// The receiving half was polled since the watchdog last looked: the application reads,
    /// and its polls pull.
    recv_polled: AtomicBool,
    /// The application dropped loaned messages whose release the peer has not been told of.
    released: AtomicBool,
    /// A byte stream's flush left frames in the write buffer while the peer had yet to read
    /// earlier bytes (see [`Guard::write_out_coalesced`]). Cleared once the write buffer is
    /// written out.
    deferred: AtomicBool,
    /// The socket reported room while frames were deferred: the driver must write them,
    /// whatever the halves do. Set by the wake-up, cleared by the driver once it holds the
    /// lock; a half that leaves the lock while it is set wakes the driver (which may have
    /// found the lock taken).
    defer_fired: AtomicBool,
}

impl Wakers {
    fn register(&self, role: Role, waker: &Waker) {
        self.slots[role as usize].register(waker);
    }

    fn wake_one(&self, role: Role) {
        self.slots[role as usize].wake();
    }

    fn clear(&self, role: Role) {
        drop(self.slots[role as usize].take());
    }

    /// The watchdog's look, once per period: a driver that relied on the application's polls
    /// is woken if the application did not poll for a whole period.
    fn tick(&self) {
        self.recv_polled.store(false, Ordering::Relaxed);
        if self.released.load(Ordering::Relaxed) {
            self.wake_one(Role::Driver);
        }
        if self.watched.load(Ordering::Relaxed) && !self.polled.swap(false, Ordering::Relaxed) {
            self.watched.store(false, Ordering::Relaxed);
            self.wake_one(Role::Driver);
        }
    }
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A half polled since the driver last looked is in use: its next poll does the work.
        let mut covered = self.polled.load(Ordering::Relaxed);
        for half in [Role::Send, Role::Recv] {
            covered |= self.parked[half as usize].swap(false, Ordering::Relaxed);
            self.wake_one(half);
        }
        if !(covered && self.watched.load(Ordering::Relaxed)) {
            self.wake_one(Role::Driver);
        }
        // Deferred frames are the driver's to write, even when the event came through this
        // waker (another writer's registration replaced the deferral's).
        if self.deferred.load(Ordering::Relaxed) {
            self.defer_fired.store(true, Ordering::Relaxed);
            self.wake_one(Role::Driver);
        }
    }
}

/// Registered for the socket's write space while flushed frames wait for the peer to read
/// what it was sent before: wakes the driver, which writes them.
#[derive(Debug)]
struct DeferWake(Arc<Wakers>);

impl Wake for DeferWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.defer_fired.store(true, Ordering::Relaxed);
        self.0.wake_one(Role::Driver);
    }
}

/// Woken when the application drops a received loaned message: the release must reach the
/// peer. The receiving half sends it at its next poll if it is in use and not parked on the
/// socket; the driver does otherwise.
#[derive(Debug)]
struct ReleaseWake(Arc<Wakers>);

impl Wake for ReleaseWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let w = &self.0;
        // Called for every dropped loaned message: while a release is already pending (the
        // common case in a run of drops), a load is all it costs.
        if !w.released.load(Ordering::Relaxed) && !w.released.swap(true, Ordering::SeqCst) {
            // Pairs with the fence in `Shared::poll_next`: either it sees `released`, or this
            // sees the half parked.
            std::sync::atomic::fence(Ordering::SeqCst);
            if w.parked[Role::Recv as usize].load(Ordering::Relaxed)
                || !w.recv_polled.load(Ordering::Relaxed)
            {
                w.wake_one(Role::Driver);
            }
        }
    }
}

/// The zero-copy lane of a connection, each direction where it is open.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    /// This side's loan region, mapped by the peer.
    pub(crate) lend: Option<Arc<LendRegion>>,
    /// The peer's loan region, mapped here.
    pub(crate) borrow: Option<Arc<PeerRegion>>,
}

/// Loaned messages sent as SHARED and not released by the peer yet: offset → a clone that
/// keeps the loan, and how many times that offset was sent.
type Lent = HashMap<u64, (Bytes, u32), BuildHasherDefault<OffsetHasher>>;

/// Hashes region offsets (distinct, multiples of 64, chosen by this side, so no defence
/// against chosen keys is needed) with one multiplication instead of SipHash.
#[derive(Debug, Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}

/// Limits negotiated in the handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    /// Window for what this side sends: the smaller of both sides' windows.
    pub(crate) send_window_messages: u32,
    pub(crate) send_window_bytes: u64,
    /// Largest message the peer accepts.
    pub(crate) send_max_message: u64,
    /// Largest message this side accepts (its own `Config::max_message_size`).
    pub(crate) recv_max_message: u64,
    /// Messages up to this size are sent inline.
    pub(crate) inline_threshold: u32,
    /// Largest BATCH body the peer accepts.
    pub(crate) batch_body_max: usize,
    /// Window this side announced for what it receives.
    pub(crate) recv_window_messages: u32,
    pub(crate) recv_window_bytes: u64,
    /// Pulls of at least this size go to the blocking pool.
    pub(crate) blocking_threshold: u64,
    pub(crate) max_pulls_in_flight: usize,
    /// Idle receive buffers kept for reuse, in bytes.
    pub(crate) pool_bytes: usize,
    /// Longest a blocking-pool pull may take.
    pub(crate) pull_timeout: Duration,
    /// How long a dropped sender keeps serving the peer.
    pub(crate) linger: Duration,
}

impl Negotiated {
    /// Largest message the peer accepts inline (its decoder bounds an INLINE payload as it
    /// bounds a BATCH body's messages).
    pub(crate) fn peer_inline_max(&self) -> u64 {
        self.batch_body_max
            .saturating_sub(crate::codec::BATCH_FIXED) as u64
    }
}

/// How each direction of a connection moves payloads.
#[derive(Debug, Clone)]
pub(crate) struct Modes {
    /// How this side receives.
    pub(crate) recv: Mode,
    /// How this side's messages reach the peer.
    pub(crate) send: Mode,
}

/// State shared by the two halves of one connection and its driver task.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    wakers: Arc<Wakers>,
    io_waker: Waker,
    /// Wakes the driver for frames a flush left to it (see [`DeferWake`]).
    defer_waker: Waker,
    pub(crate) peer: PeerInfo,
    pub(crate) modes: Modes,
    pub(crate) span: tracing::Span,
    /// The control socket's descriptor number; the socket itself is in `state`, open for as
    /// long as this value lives.
    socket_fd: RawFd,
    /// Set (under the lock) when the next `poll_ready` would return `Ready` at once, so that
    /// it can, without taking the lock: the common case of a sender inside its window.
    /// Cleared by anything that may stop sending.
    send_ready: AtomicBool,
    /// This side's loan region, if the peer mapped it.
    lend: Option<Arc<LendRegion>>,
    /// Messages up to this size travel inline (a copy of a few bytes costs less than a
    /// loan's bookkeeping): loans this small come from the heap.
    inline_threshold: u32,
    /// Whether a byte stream's flushes may be left to the driver (see
    /// [`Guard::write_out_coalesced`]): only on a multi-thread runtime, whose workers run the
    /// driver even when the application's thread does something else.
    coalesce: bool,
    /// Largest message the peer accepts.
    send_max_message: u64,
}

#[derive(Debug)]
struct State {
    io: Framed<Carrier, FrameCodec>,
    /// The peer's pid, for pulls (0 over TCP, where nothing is pulled).
    peer_pid: i32,
    /// How messages name the peer: `process 1234 (uid 1000)`, or an address over TCP.
    peer_name: Arc<str>,
    /// The peer process, to confirm after each batch of pulls that it is still the process
    /// that announced the buffers.
    pidfd: Option<OwnedFd>,
    limits: Negotiated,
    /// Recycled receive buffers.
    pool: BufferPool,
    /// The error that ended the connection, handed to both halves.
    fatal: Option<Error>,
    /// The control socket reached end of stream.
    eof: bool,
    /// Writing failed because the peer closed its end: nothing more can be written.
    write_closed: bool,
    send: SendState,
    recv: RecvState,
    /// Loaned messages the peer holds.
    lent: Lent,
    /// The peer's loan region.
    borrow: Option<Arc<PeerRegion>>,
}

impl Shared {
    /// Wraps an established connection and spawns its driver task on the current runtime.
    pub(crate) fn new(
        io: Framed<Carrier, FrameCodec>,
        peer: PeerInfo,
        pidfd: Option<OwnedFd>,
        limits: Negotiated,
        modes: Modes,
        lanes: Lanes,
        span: tracing::Span,
    ) -> Arc<Shared> {
        let wakers = Arc::new(Wakers::default());
        watchdog::watch(&wakers);
        if let Some(borrow) = &lanes.borrow {
            borrow.set_waker(Waker::from(Arc::new(ReleaseWake(wakers.clone()))));
        }
        let socket_fd = io.get_ref().as_fd().as_raw_fd();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                io,
                peer_pid: peer.pid().unwrap_or(0),
                peer_name: Arc::from(peer.to_string()),
                pidfd,
                limits,
                pool: BufferPool::new(limits.pool_bytes),
                fatal: None,
                eof: false,
                write_closed: false,
                send: SendState::default(),
                recv: RecvState::default(),
                lent: Lent::default(),
                borrow: lanes.borrow,
            }),
            io_waker: Waker::from(wakers.clone()),
            defer_waker: Waker::from(Arc::new(DeferWake(wakers.clone()))),
            wakers,
            peer,
            modes,
            span,
            socket_fd,
            send_ready: AtomicBool::new(false),
            lend: lanes.lend,
            inline_threshold: limits.inline_threshold,
            send_max_message: limits.send_max_message,
            coalesce: tokio::runtime::Handle::try_current().is_ok_and(|h| {
                matches!(
                    h.runtime_flavor(),
                    tokio::runtime::RuntimeFlavor::MultiThread
                )
            }),
        });
        driver::spawn(shared.clone());
        shared
    }

    /// The control socket, open for as long as `self` lives.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        // SAFETY: `socket_fd` is the descriptor of the `Carrier` inside `state`, which
        // is dropped (and the descriptor closed) only when `self` is; shutting the socket
        // down does not close it. The borrow cannot outlive `self`.
        unsafe { BorrowedFd::borrow_raw(self.socket_fd) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the state for `role`. The caller registers its waker with [`Guard::register`]
    /// before it looks at anything that may make it return `Pending`.
    fn enter(&self, role: Role) -> Guard<'_> {
        self.guard(self.lock(), role)
    }

    fn guard<'a>(&'a self, state: MutexGuard<'a, State>, role: Role) -> Guard<'a> {
        Guard {
            _span: self.span.enter(),
            state,
            shared: self,
            role,
        }
    }

    /// Runs `f` on the locked state as `role`.
    fn with<R>(&self, role: Role, f: impl FnOnce(Guard<'_>) -> R) -> R {
        set(&self.wakers.polled, true);
        let r = f(self.enter(role));
        // The lock is free again: a driver that found it taken may write what it was woken
        // for.
        if self.wakers.defer_fired.load(Ordering::Relaxed) {
            self.wakers.wake_one(Role::Driver);
        }
        r
    }

    /// Like [`with`](Shared::with) for a poll that reads the socket until it has nothing more
    /// before it returns `Pending`: the half is then parked on the socket (see [`Wakers`]).
    fn poll_parking<T>(&self, role: Role, f: impl FnOnce(Guard<'_>) -> Poll<T>) -> Poll<T> {
        let r = self.with(role, f);
        set(&self.wakers.parked[role as usize], r.is_pending());
        r
    }

    /// Locks the state for the driver if nobody holds it. (A holder is a half doing the same
    /// work; the watchdog wakes the driver if the application then stops.)
    fn try_enter_driver(&self) -> Option<Guard<'_>> {
        let state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(self.guard(state, Role::Driver))
    }

    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // What the locked fast path below would find; a stale `true` is harmless, because
        // `start_send` checks again under the lock.
        if self.send_ready.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        self.poll_parking(Role::Send, |g| g.poll_ready(cx))
    }

    /// Sends `item`, and with a `cx` writes it out (see [`Guard::start_send`]).
    pub(crate) fn start_send(
        &self,
        item: Outgoing<'_>,
        write_out: Option<&mut Context<'_>>,
    ) -> Result<Poll<()>> {
        self.with(Role::Send, |g| g.start_send(item, write_out.map(|cx| &*cx)))
    }

    /// Raises the inline threshold (see [`Guard::raise_inline_threshold`]).
    pub(crate) fn raise_inline_threshold(&self, bytes: u32) {
        self.with(Role::Send, |g| g.raise_inline_threshold(bytes));
    }

    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_parking(Role::Send, |g| g.poll_flush(cx))
    }

    pub(crate) fn poll_close(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(Role::Send, |g| g.poll_close(cx))
    }

    /// Writes the frames queued so far into the socket, without waiting for the peer.
    pub(crate) fn poll_write_out(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.with(Role::Send, |mut g| {
            g.register(cx);
            g.check_fatal()?;
            g.write_out_coalesced()
        })
    }

    /// Copies the messages that have arrived into `dst` (see [`Guard::copy_arrived`]).
    pub(crate) fn copy_arrived(
        &self,
        dst: &mut tokio::io::ReadBuf<'_>,
        small: usize,
    ) -> Option<Bytes> {
        set(&self.wakers.recv_polled, true);
        self.with(Role::Recv, |g| g.copy_arrived(dst, small))
    }

    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        set(&self.wakers.recv_polled, true);
        let r = self.poll_parking(Role::Recv, |g| g.poll_next(cx));
        if r.is_pending() {
            // Pairs with the fence in `ReleaseWake`: a release that came in while this poll
            // was ending is sent by the driver.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.wakers.released.load(Ordering::Relaxed) {
                self.wakers.wake_one(Role::Driver);
            }
        }
        r
    }

    /// A buffer of `len` bytes for a message: in the loan region when the zero-copy lane is
    /// open and has room, on the heap otherwise.
    pub(crate) fn loan(&self, len: usize) -> LoanBuf {
        let small = len as u64 <= u64::from(self.inline_threshold);
        let Some(region) = self.lend.as_ref().filter(|_| !small) else {
            return LoanBuf::heap(len);
        };
        if let Some(buf) = region.try_loan(len) {
            return buf;
        }
        // Full: releases the peer sent may be waiting in the socket.
        self.with(Role::Send, |mut g| {
            g.drive_read();
        });
        region.try_loan(len).unwrap_or_else(|| LoanBuf::heap(len))
    }

    /// Largest message the peer accepts.
    pub(crate) fn send_max_message(&self) -> u64 {
        self.send_max_message
    }

    /// The connection's pool of large buffers (see [`BufferPool`]).
    pub(crate) fn buffer_pool(&self) -> BufferPool {
        self.lock().pool.clone()
    }

    /// Whether loaned messages travel zero-copy to the peer.
    pub(crate) fn zero_copy(&self) -> bool {
        self.lend.is_some()
    }

    /// Queues `data` to be sent after the sending half is dropped, as the window allows (what
    /// a dropped [`ByteStream`](crate::ByteStream) had not flushed).
    pub(crate) fn send_on_drop(&self, data: Bytes) {
        self.with(Role::Send, |mut g| g.state.send.backlog.push_back(data));
    }

    /// Called when a half is dropped: the driver takes over what it leaves behind.
    pub(crate) fn drop_half(&self, role: Role) {
        self.wakers.clear(role);
        self.with(role, |mut g| match role {
            Role::Send => g.sender_dropped(),
            Role::Recv => g.receiver_dropped(),
            Role::Driver => {}
        });
        self.wakers.wake_one(Role::Driver);
    }

    /// Ends the connection with `err`, telling the peer why. In-flight buffers are released
    /// after the socket is shut down.
    pub(crate) fn abort(&self, err: Error) {
        self.with(Role::Send, |mut g| g.fail(err, true));
    }

    /// Number of messages sent and not yet acknowledged, and their bytes.
    pub(crate) fn in_flight(&self) -> (usize, u64) {
        let st = self.lock();
        st.send.in_flight()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Shut the socket down before the in-flight buffers are released (they are dropped
        // after this body): a peer still pulling from them will see the hang-up when it
        // checks after its pull, and discard what it read.
        let _ = self.io.get_ref().shutdown_now();
    }
}

/// The locked state, with who is working.
struct Guard<'a> {
    state: MutexGuard<'a, State>,
    shared: &'a Shared,
    role: Role,
    _span: tracing::span::Entered<'a>,
}

impl Guard<'_> {
    /// Registers the polling task's waker, before anything that may return `Pending`.
    fn register(&self, cx: &Context<'_>) {
        self.shared.wakers.register(self.role, cx.waker());
    }

    /// Wakes `role` if it is not the one working.
    fn notify(&self, role: Role) {
        if role != self.role {
            self.shared.wakers.wake_one(role);
        }
    }

    /// Ends the connection with `err`. With `tell_peer`, an ERROR frame carries the reason to
    /// the peer first. Messages in the receive buffer are still delivered before the error;
    /// those announced and not received yet are discarded.
    fn fail(&mut self, err: Error, tell_peer: bool) {
        self.shared.send_ready.store(false, Ordering::Release);
        if self.state.fatal.is_some() {
            return;
        }
        debug!(error = %err, "connection failed");
        if tell_peer && !self.state.write_closed {
            let code = match err.kind() {
                ErrorKind::Protocol => ErrorCode::Protocol,
                ErrorKind::LimitExceeded => ErrorCode::Limit,
                ErrorKind::PermissionDenied | ErrorKind::Unsupported => ErrorCode::PullFailed,
                _ => ErrorCode::Other,
            };
            let reason = format!("the other side reports: {err}");
            let io = &mut self.state.io;
            let _ = Pin::new(&mut *io).start_send(OutFrame::Error {
                code,
                reason: &reason,
            });
            let shared = self.shared;
            let _ = Pin::new(io).poll_flush(&mut Context::from_waker(&shared.io_waker));
        }
        let _ = self.state.io.get_ref().shutdown_now();
        self.state.fatal = Some(err);
        let st = &mut *self.state;
        st.send.on_fail();
        st.recv.on_fail();
        self.notify(Role::Send);
        self.notify(Role::Recv);
        self.notify(Role::Driver);
    }

    // ----- writing -------------------------------------------------------------------------

    fn queue_frame(&mut self, frame: OutFrame<'_>) -> Result<()> {
        self.state.send.end_batch();
        Pin::new(&mut self.state.io).start_send(frame)
    }

    /// Writes buffered frames. `Ready(Ok)` once the buffer is empty.
    fn flush_writes(&mut self) -> Poll<Result<()>> {
        if !self.state.io.write_buffer().is_empty() {
            // Acknowledgements that were not urgent, and releases of loaned messages, go
            // with whatever this side writes.
            self.send_releases(true);
            if let Some(count) = self.state.recv.ack_due()
                && self.state.fatal.is_none()
                && !self.state.write_closed
            {
                if let Err(e) = self.queue_frame(OutFrame::Ack { count }) {
                    self.fail(e.clone(), false);
                    return Poll::Ready(Err(e));
                }
                self.state.recv.ack_queued();
            }
            // Writing may consume part of the buffer: nothing more joins the open batch.
            self.state.send.end_batch();
        }
        // Flushed even with nothing buffered here: over TLS, bytes an earlier write handed
        // over may still sit in the TLS session, waiting for room in the socket.
        let shared = self.shared;
        let mut cx = Context::from_waker(&shared.io_waker);
        loop {
            return match Pin::new(&mut self.state.io).poll_flush(&mut cx) {
                // A message in parts: the next part, now that the buffer is written.
                Poll::Ready(Ok(())) if self.state.send.in_parts() => match self.pump_parts() {
                    Ok(_) => continue,
                    Err(e) => {
                        self.fail(e.clone(), false);
                        Poll::Ready(Err(e))
                    }
                },
                Poll::Ready(Ok(())) => {
                    self.state.send.written();
                    set(&self.shared.wakers.deferred, false);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) if is_reset(&e) => {
                    // The peer closed its end. What it left unread says whether anything of
                    // ours was lost: read on to its end of stream.
                    self.state.write_closed = true;
                    self.state.io.write_buffer_mut().clear();
                    self.state.send.written();
                    self.shared.send_ready.store(false, Ordering::Release);
                    self.drive_read();
                    match self.check_fatal() {
                        Ok(()) => Poll::Ready(Ok(())),
                        Err(e) => Poll::Ready(Err(e)),
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.fail(e.clone(), false);
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }

    /// Writes the buffered frames out for a byte stream's flush, or, while the peer has yet
    /// to read bytes written before, leaves them to go with the next write: the driver's,
    /// woken when the socket reports room (at the latest once the peer has read everything).
    /// A socket's peer would find the new bytes only after the unread ones anyway, and a run
    /// of small flushes (a chatty protocol's frames) costs a few system calls instead of one
    /// each. Other writes (acknowledgements, a full batch, flush of the `Sink`, close) write
    /// everything at once.
    ///
    /// Only on a multi-thread runtime: on a current-thread runtime the driver runs only
    /// while the application's thread is in the runtime, and a flush must not leave bytes
    /// behind that would wait for the application to come back.
    fn write_out_coalesced(&mut self) -> Poll<Result<()>> {
        if self.shared.coalesce
            && !self.state.io.write_buffer().is_empty()
            && self.state.fatal.is_none()
            && !self.state.write_closed
        {
            // Set before the wake-up can come (the wake-up needs it to reach the driver).
            set(&self.shared.wakers.deferred, true);
            let shared = self.shared;
            let mut cx = Context::from_waker(&shared.defer_waker);
            if self.state.io.get_mut().peer_busy(&mut cx) {
                return Poll::Ready(Ok(()));
            }
            set(&self.shared.wakers.deferred, false);
        }
        self.flush_writes()
    }

    fn check_fatal(&self) -> Result<()> {
        match &self.state.fatal {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// One round of everything that needs no application: read frames, start and collect
    /// pulls (if `pull`), acknowledge, send what dropped halves left, write out. Returns
    /// whether anything happened.
    fn make_progress(&mut self, pull: bool) -> bool {
        let mut progressed = self.drive_read();
        self.send_releases(true);
        if pull && self.state.fatal.is_none() {
            progressed |= self.start_pulls();
            let shared = self.shared;
            progressed |= self.collect_pulls(&mut Context::from_waker(&shared.io_waker));
        }
        progressed |= self.send_backlog();
        self.close_if_dropped();
        if self.state.fatal.is_none() {
            let _ = self.flush_writes();
        }
        self.maybe_shutdown_write();
        progressed
    }
}

/// Stores `value` unless it is there already: these flags are written on every poll and read
/// by other threads, and a store that changes nothing would still take the cache line away
/// from them.
fn set(flag: &AtomicBool, value: bool) {
    if flag.load(Ordering::Relaxed) != value {
        flag.store(value, Ordering::Relaxed);
    }
}
