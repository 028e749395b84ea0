//! Protocol state of an established connection: the send window, acknowledgements, pulls and
//! in-order delivery.
//!
//! Both halves of a connection ([`Sender`](crate::Sender) and [`Receiver`](crate::Receiver))
//! share one [`Shared`]. Whichever half is polled reads frames from the control socket and
//! files them where they belong: acknowledgements release the sender's buffers, descriptors
//! queue up for the receiver. There is no background task: the halves do the work when polled.
//!
//! Readiness of the socket is registered with a waker that wakes *both* halves (an `AsyncFd`
//! only keeps the waker of the last task that polled it), so that halves living in different
//! tasks never miss a frame meant for them.
//!
//! ## Why the receiver checks for hang-up (and the peer's pidfd) after a pull
//! A sender releases a buffer when it is acknowledged, or when the connection ends; in the
//! second case it shuts the socket down *before* releasing anything. The receiver checks that
//! the socket has not been shut down *after* each batch of pulls and before acknowledging or
//! delivering them. If it has not, the buffers were alive for the whole pull; if it has, the
//! pulled bytes are discarded and the stream reports that the peer went away. The same `poll`
//! call looks at the peer's pidfd: a process that died (and whose pid may be reused) never has
//! its last reads delivered, even if a forked child still holds the socket.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use bytes::Bytes;
use futures::task::AtomicWaker;
use futures::{Sink, Stream};
use nix::sys::socket::Shutdown;
use tokio_util::codec::Framed;
use tracing::{debug, trace};

use crate::codec::{self, Descriptor, ErrorCode, Frame, FrameCodec, OutFrame};
use crate::error::{Error, ErrorKind, Result};
use crate::pool::BufferPool;
use crate::pull::{BlockingPull, pull_messages};
use crate::socket::ControlSocket;
use crate::sys::RemoteRange;
use crate::{Mode, PeerInfo};

/// Queued frames are written out once the write buffer holds this much.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Which half is polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Send = 0,
    Recv = 1,
}

/// Wakers of the two halves. Registered with the socket's readiness so that one readiness
/// event wakes both. Lock-free: registering the same waker again costs a few atomic operations.
#[derive(Debug, Default)]
struct HalfWakers {
    slots: [AtomicWaker; 2],
}

impl HalfWakers {
    fn register(&self, role: Role, waker: &Waker) {
        self.slots[role as usize].register(waker);
    }

    fn wake_half(&self, role: Role) {
        self.slots[role as usize].wake();
    }

    fn clear(&self, role: Role) {
        drop(self.slots[role as usize].take());
    }
}

impl Wake for HalfWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.slots.iter().for_each(AtomicWaker::wake);
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
    pub(crate) pull_timeout: std::time::Duration,
}

/// How each direction of a connection moves payloads.
#[derive(Debug, Clone)]
pub(crate) struct Modes {
    /// How this side receives.
    pub(crate) recv: Mode,
    /// How this side's messages reach the peer.
    pub(crate) send: Mode,
}

/// State shared by the two halves of one connection.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    wakers: Arc<HalfWakers>,
    io_waker: Waker,
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
}

#[derive(Debug)]
struct State {
    io: Framed<ControlSocket, FrameCodec>,
    peer_pid: i32,
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
    send: SendState,
    recv: RecvState,
}

#[derive(Debug, Default)]
struct SendState {
    /// Sequence number of the next message.
    next_seq: u64,
    /// Messages sent but not acknowledged, oldest first; the first has sequence number
    /// `next_seq - in_flight.len()`. Inline messages hold an empty `Bytes`.
    in_flight: VecDeque<(u64, Bytes)>,
    in_flight_bytes: u64,
    /// Messages queued in the write buffer since it was last written out.
    unflushed: usize,
    /// The BATCH frame at the end of the write buffer that more inline messages may join:
    /// where it starts and its body length so far.
    open_batch: Option<(usize, usize)>,
    /// CLOSE has been queued.
    closed: bool,
    /// Our write side has been shut down.
    shut: bool,
    dropped: bool,
}

#[derive(Debug, Default)]
struct RecvState {
    /// Sequence number the next DATA or INLINE frame must carry.
    next_seq: u64,
    /// Messages acknowledged so far (counted when they become ready).
    acked: u64,
    /// The count carried by the last ACK queued.
    ack_sent: u64,
    /// Bytes of the messages acknowledged since the last ACK was queued.
    ack_due_bytes: u64,
    /// Bytes announced by the peer whose acknowledgement has not been queued.
    unacked_bytes: u64,
    /// Announced messages whose pull has not started.
    queue: VecDeque<Incoming>,
    /// Started pulls, in sequence order.
    pulls: VecDeque<Pull>,
    /// Blocking-pool pulls among `pulls`.
    running: usize,
    /// Pulled, verified and acknowledged messages waiting to be yielded.
    ready: VecDeque<Bytes>,
    ready_bytes: u64,
    /// The peer's CLOSE arrived.
    peer_closed: bool,
    /// The stream has ended (returned its error or `None`).
    done: bool,
    dropped: bool,
}

#[derive(Debug)]
enum Incoming {
    Pull(Descriptor),
    Inline(Bytes),
}

#[derive(Debug)]
enum Pull {
    /// Copied; `check` says whether it was pulled and still needs the hang-up check.
    Done {
        data: Bytes,
        check: bool,
    },
    Running(BlockingPull),
}

impl Shared {
    pub(crate) fn new(
        io: Framed<ControlSocket, FrameCodec>,
        peer: PeerInfo,
        pidfd: Option<OwnedFd>,
        limits: Negotiated,
        modes: Modes,
        span: tracing::Span,
    ) -> Arc<Shared> {
        let wakers = Arc::new(HalfWakers::default());
        let socket_fd = io.get_ref().as_fd().as_raw_fd();
        Arc::new(Shared {
            state: Mutex::new(State {
                io,
                peer_pid: peer.pid(),
                pidfd,
                limits,
                pool: BufferPool::new(limits.pool_bytes),
                fatal: None,
                eof: false,
                send: SendState::default(),
                recv: RecvState::default(),
            }),
            io_waker: Waker::from(wakers.clone()),
            wakers,
            peer,
            modes,
            span,
            socket_fd,
            send_ready: AtomicBool::new(false),
        })
    }

    /// The control socket, open for as long as `self` lives.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        // SAFETY: `socket_fd` is the descriptor of the `ControlSocket` inside `state`, which
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
        Guard {
            _span: self.span.enter(),
            state: self.lock(),
            shared: self,
            role,
        }
    }

    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // What the locked fast path below would find; a stale `true` is harmless, because
        // `start_send` checks again under the lock.
        if self.send_ready.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        self.enter(Role::Send).poll_ready(cx)
    }

    pub(crate) fn start_send(&self, item: Bytes) -> Result<()> {
        self.enter(Role::Send).start_send(item)
    }

    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.enter(Role::Send).poll_flush(cx)
    }

    pub(crate) fn poll_close(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.enter(Role::Send).poll_close(cx)
    }

    /// Writes the frames queued so far into the socket, without waiting for the peer.
    pub(crate) fn poll_write_out(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut g = self.enter(Role::Send);
        g.register(cx);
        g.check_fatal()?;
        g.flush_writes()
    }

    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        self.enter(Role::Recv).poll_next(cx)
    }

    /// Called when a half is dropped.
    pub(crate) fn drop_half(&self, role: Role) {
        self.wakers.clear(role);
        let mut g = self.enter(role);
        match role {
            Role::Send => {
                g.state.send.dropped = true;
                g.close_if_dropped();
            }
            Role::Recv => {
                g.state.recv.dropped = true;
                g.check_receiver_dropped();
                g.maybe_shutdown_write();
            }
        }
    }

    /// Ends the connection with `err`, telling the peer why. In-flight buffers are released
    /// after the socket is shut down.
    pub(crate) fn abort(&self, err: Error) {
        self.enter(Role::Send).fail(err, true);
    }

    /// Number of messages sent and not yet acknowledged, and their bytes.
    pub(crate) fn in_flight(&self) -> (usize, u64) {
        let st = self.lock();
        (st.send.in_flight.len(), st.send.in_flight_bytes)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Shut the socket down before the in-flight buffers are released (they are dropped
        // after this body): a peer still pulling from them will see the hang-up when it
        // checks after its pull, and discard what it read.
        let _ = self.io.get_ref().shutdown(Shutdown::Both);
    }
}

/// The locked state, with who is polling.
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

    /// Wakes the other half if `role` is not the one polling.
    fn notify(&self, role: Role) {
        if role != self.role {
            self.shared.wakers.wake_half(role);
        }
    }

    // ----- reading and dispatching frames ---------------------------------------------------

    /// Reads and dispatches every frame available now. Returns whether anything happened.
    fn drive_read(&mut self) -> bool {
        let mut progressed = false;
        while self.state.fatal.is_none() && !self.state.eof {
            let shared = self.shared;
            let mut cx = Context::from_waker(&shared.io_waker);
            match Pin::new(&mut self.state.io).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    progressed = true;
                    if let Err(e) = self.dispatch(frame) {
                        self.fail(e, true);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    progressed = true;
                    let tell_peer = !e.is_peer_gone() && e.kind() != ErrorKind::Io;
                    let e = self.peer_gone_if_reset(e);
                    self.fail(e, tell_peer);
                }
                Poll::Ready(None) => {
                    progressed = true;
                    self.on_eof();
                }
                Poll::Pending => break,
            }
        }
        if progressed {
            self.send_ack();
        }
        progressed
    }

    fn dispatch(&mut self, frame: Frame) -> Result<()> {
        match frame {
            Frame::Ack { count } => self.on_ack(count),
            Frame::Data(desc) => {
                if let Mode::Inline(_) = self.shared.modes.recv {
                    return Err(Error::protocol(
                        "DATA descriptor received, but this side asked for inline messages",
                    ));
                }
                let len = desc.len;
                self.on_message(desc.seq, len, Incoming::Pull(desc))
            }
            Frame::Inline { seq, payload } => {
                let len = payload.len() as u64;
                self.on_message(seq, len, Incoming::Inline(payload))
            }
            Frame::Batch(mut batch) => {
                let mut seq = batch.seq;
                while let Some(payload) = batch.next_message() {
                    let len = payload.len() as u64;
                    self.on_message(seq, len, Incoming::Inline(payload))?;
                    seq = seq.wrapping_add(1);
                }
                Ok(())
            }
            Frame::Close { sent } => {
                let recv = &mut self.state.recv;
                if recv.peer_closed {
                    return Err(Error::protocol("CLOSE received twice"));
                }
                if sent != recv.next_seq {
                    return Err(Error::protocol(format!(
                        "the peer closed saying it sent {sent} messages, but {} arrived",
                        recv.next_seq
                    )));
                }
                recv.peer_closed = true;
                debug!(sent, "peer closed its sending side");
                self.notify(Role::Recv);
                Ok(())
            }
            Frame::Error { code, reason } => {
                let kind = code.kind();
                let pid = self.state.peer_pid;
                self.fail(
                    Error::new(
                        kind,
                        format!("peer process {pid} ended the connection: {reason}"),
                    ),
                    false,
                );
                Ok(())
            }
            Frame::Hello(_) | Frame::Ready { .. } => Err(Error::protocol(
                "handshake frame received after the handshake",
            )),
        }
    }

    fn on_ack(&mut self, count: u64) -> Result<()> {
        let send = &mut self.state.send;
        let acked = send.next_seq - send.in_flight.len() as u64;
        if count <= acked || count > send.next_seq {
            return Err(Error::protocol(format!(
                "ACK for {count} messages, but {acked} were already acknowledged and {} sent",
                send.next_seq
            )));
        }
        for _ in acked..count {
            if let Some((len, _buf)) = send.in_flight.pop_front() {
                send.in_flight_bytes -= len;
            }
        }
        trace!(count, in_flight = send.in_flight.len(), "ack received");
        self.close_if_dropped();
        self.notify(Role::Send);
        Ok(())
    }

    fn on_message(&mut self, seq: u64, len: u64, msg: Incoming) -> Result<()> {
        let limits = self.state.limits;
        let receiving = self.role == Role::Recv;
        let recv = &mut self.state.recv;
        if recv.peer_closed {
            return Err(Error::protocol("message received after CLOSE"));
        }
        if seq != recv.next_seq {
            return Err(Error::protocol(format!(
                "message with sequence number {seq}, expected {}",
                recv.next_seq
            )));
        }
        // The window as the peer sees it: what the ACKs queued so far released.
        let unacked = recv.next_seq - recv.ack_sent;
        if unacked >= u64::from(limits.recv_window_messages)
            || recv.unacked_bytes >= limits.recv_window_bytes
        {
            return Err(Error::protocol(format!(
                "the peer overran the window: {unacked} messages and {} bytes unacknowledged, \
                 window {} messages and {} bytes",
                recv.unacked_bytes, limits.recv_window_messages, limits.recv_window_bytes
            )));
        }
        if recv.dropped {
            return Err(Error::new(
                ErrorKind::PeerGone,
                "the receiving half of the connection was dropped; the peer's messages cannot be \
                 delivered",
            ));
        }
        recv.next_seq += 1;
        recv.unacked_bytes += len;
        match msg {
            // An inline message behind nothing else, with room in the window, read while the
            // application polls its stream, is ready now: it needs no pull and no check, and
            // its acknowledgement goes out with the others gathered by this read. (Read while
            // only the sending half is polled, it waits in the queue like any message: nothing
            // is acknowledged that the application is not reading.)
            Incoming::Inline(data)
                if receiving
                    && recv.queue.is_empty()
                    && recv.pulls.is_empty()
                    && recv.ready.len() < limits.recv_window_messages as usize
                    && recv.ready_bytes < limits.recv_window_bytes =>
            {
                recv.acked += 1;
                recv.ack_due_bytes += len;
                recv.ready_bytes += len;
                recv.ready.push_back(data);
            }
            msg => recv.queue.push_back(msg),
        }
        trace!(seq, len, "message announced");
        self.notify(Role::Recv);
        Ok(())
    }

    /// Queues one cumulative ACK for the messages that became ready since the last one, and
    /// writes what the socket takes now.
    fn send_ack(&mut self) {
        let recv = &self.state.recv;
        if recv.acked == recv.ack_sent || self.state.fatal.is_some() {
            return;
        }
        let count = recv.acked;
        trace!(count, "acknowledging");
        if let Err(e) = self.queue_frame(OutFrame::Ack { count }) {
            self.fail(e, false);
        } else {
            let recv = &mut self.state.recv;
            recv.ack_sent = count;
            recv.unacked_bytes -= recv.ack_due_bytes;
            recv.ack_due_bytes = 0;
            let _ = self.flush_writes();
        }
    }

    fn on_eof(&mut self) {
        self.shared.send_ready.store(false, Ordering::Release);
        self.state.eof = true;
        let pid = self.state.peer_pid;
        let recv = &self.state.recv;
        // Messages whose ACK was not queued are discarded by `fail`: they count as lost.
        let lost = recv.next_seq - recv.ack_sent;
        let ours = self.state.send.in_flight.len();
        if !recv.peer_closed && !recv.done {
            self.fail(
                Error::new(
                    ErrorKind::PeerGone,
                    format!(
                        "peer process {pid} closed the connection without closing its sending \
                         side ({lost} of its messages and {ours} of ours in flight were not \
                         received): it exited, was killed, or dropped the connection without \
                         close()"
                    ),
                ),
                false,
            );
        } else if !self.state.send.in_flight.is_empty() {
            let n = self.state.send.in_flight.len();
            self.fail(
                Error::new(
                    ErrorKind::PeerGone,
                    format!(
                        "peer process {pid} closed the connection with {n} of our messages not \
                         yet received"
                    ),
                ),
                false,
            );
        } else {
            self.notify(Role::Send);
            self.notify(Role::Recv);
        }
    }

    /// Ends the connection with `err`. With `tell_peer`, an ERROR frame carries the reason to
    /// the peer first. Messages whose acknowledgement was queued are still delivered before
    /// the error; the rest are discarded.
    fn fail(&mut self, err: Error, tell_peer: bool) {
        self.shared.send_ready.store(false, Ordering::Release);
        if self.state.fatal.is_some() {
            return;
        }
        debug!(error = %err, "connection failed");
        if tell_peer {
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
        let _ = self.state.io.get_ref().shutdown(Shutdown::Both);
        self.state.fatal = Some(err);
        let st = &mut *self.state;
        st.send.open_batch = None;
        st.send.in_flight.clear();
        st.send.in_flight_bytes = 0;
        st.recv.queue.clear();
        st.recv.pulls.clear();
        // Messages made ready whose ACK was never queued are not delivered either: delivery
        // and acknowledgement go together.
        let recv = &mut st.recv;
        let unsent = usize::try_from(recv.acked - recv.ack_sent).unwrap_or(usize::MAX);
        let keep = recv.ready.len().saturating_sub(unsent);
        recv.ready.truncate(keep);
        recv.ready_bytes = recv.ready.iter().map(|b| b.len() as u64).sum();
        st.recv.running = 0;
        self.notify(Role::Send);
        self.notify(Role::Recv);
    }

    // ----- writing -------------------------------------------------------------------------

    fn queue_frame(&mut self, frame: OutFrame<'_>) -> Result<()> {
        self.state.send.open_batch = None;
        Pin::new(&mut self.state.io).start_send(frame)
    }

    /// Writes buffered frames. `Ready(Ok)` once the buffer is empty.
    fn flush_writes(&mut self) -> Poll<Result<()>> {
        if self.state.io.write_buffer().is_empty() {
            self.state.send.unflushed = 0;
            return Poll::Ready(Ok(()));
        }
        // Writing may consume part of the buffer: nothing more joins the open batch.
        self.state.send.open_batch = None;
        let shared = self.shared;
        let mut cx = Context::from_waker(&shared.io_waker);
        match Pin::new(&mut self.state.io).poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => {
                self.state.send.unflushed = 0;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                let err = self.peer_gone_if_reset(e);
                self.fail(err.clone(), false);
                Poll::Ready(Err(err))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// A reset or broken connection means the peer went away; say so.
    fn peer_gone_if_reset(&self, e: Error) -> Error {
        match e.source_kind() {
            Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => {
                Error::new(
                    ErrorKind::PeerGone,
                    format!(
                        "peer process {} closed the connection abruptly ({} of its messages and \
                         {} of ours in flight were not received)",
                        self.state.peer_pid,
                        self.state.recv.next_seq - self.state.recv.ack_sent,
                        self.state.send.in_flight.len()
                    ),
                )
            }
            _ => e,
        }
    }

    fn check_fatal(&self) -> Result<()> {
        match &self.state.fatal {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Whether a new message may be sent: no fatal error, not closed, peer still there.
    fn check_can_send(&self) -> Result<()> {
        self.check_fatal()?;
        if self.state.send.closed {
            return Err(Error::new(
                ErrorKind::Closed,
                "the sending side was already closed",
            ));
        }
        if self.state.eof {
            return Err(Error::new(
                ErrorKind::PeerGone,
                format!(
                    "peer process {} closed the connection; nothing more can be sent",
                    self.state.peer_pid
                ),
            ));
        }
        Ok(())
    }

    // ----- sending -------------------------------------------------------------------------

    fn window_open(&self) -> bool {
        let s = &self.state.send;
        let l = &self.state.limits;
        s.in_flight.len() < l.send_window_messages as usize
            && s.in_flight_bytes < l.send_window_bytes
    }

    /// Whether `poll_ready` can return `Ready` without writing or waiting: room in the window,
    /// no batch due to be written, and nothing that stops sending.
    fn ready_at_once(&self) -> bool {
        let batch = (self.state.limits.send_window_messages as usize).div_ceil(4);
        self.window_open()
            && self.state.send.unflushed < batch
            && self.state.io.write_buffer().len() < WRITE_BATCH_BYTES
            && self.check_can_send().is_ok()
    }

    fn poll_ready(mut self, cx: &Context<'_>) -> Poll<Result<()>> {
        let batch = (self.state.limits.send_window_messages as usize).div_ceil(4);
        // Fast path: room in the window and nothing to write yet. Returning Ready needs no
        // registered waker.
        if self.ready_at_once() {
            return Poll::Ready(Ok(()));
        }
        self.register(cx);
        loop {
            self.check_can_send()?;
            // Write queued frames out in batches: when a quarter of the window is queued, when
            // the buffer is large, or when the window is full. The peer pulls one batch while
            // the next one fills, and small messages cost a fraction of a write each.
            if (self.state.send.unflushed >= batch
                || self.state.io.write_buffer().len() >= WRITE_BATCH_BYTES
                || !self.window_open())
                && let Poll::Ready(Err(e)) = self.flush_writes()
            {
                return Poll::Ready(Err(e));
            }
            if self.window_open() {
                return Poll::Ready(Ok(()));
            }
            if !self.drive_read() {
                return Poll::Pending;
            }
        }
    }

    fn start_send(mut self, item: Bytes) -> Result<()> {
        self.check_can_send()?;
        let limits = self.state.limits;
        let len = item.len() as u64;
        if len > limits.send_max_message {
            return Err(Error::limit(format!(
                "a {len}-byte message is larger than the peer accepts ({} bytes); the message \
                 was not sent, raise Config::max_message_size on the receiving side",
                limits.send_max_message
            )));
        }
        let seq = self.state.send.next_seq;
        let held = if len <= u64::from(limits.inline_threshold) {
            self.queue_inline(seq, &item)?;
            Bytes::new()
        } else {
            let range = [RemoteRange {
                addr: item.as_ptr() as usize as u64,
                len,
            }];
            let ranges = if len == 0 { &range[..0] } else { &range[..] };
            self.queue_frame(OutFrame::Data { seq, ranges })?;
            item
        };
        let send = &mut self.state.send;
        send.next_seq += 1;
        send.unflushed += 1;
        send.in_flight.push_back((len, held));
        send.in_flight_bytes += len;
        trace!(seq, len, "message queued");
        let ready = self.ready_at_once();
        self.shared.send_ready.store(ready, Ordering::Release);
        Ok(())
    }

    /// Queues an inline message: it joins the BATCH frame at the end of the write buffer if
    /// there is one with room, starts one if it fits into a batch, and travels in an INLINE
    /// frame of its own otherwise.
    fn queue_inline(&mut self, seq: u64, payload: &[u8]) -> Result<()> {
        let max = self.state.limits.batch_body_max;
        let st = &mut *self.state;
        match st.send.open_batch {
            Some((at, body)) if body + codec::batch_entry_len(payload.len()) <= max => {
                codec::append_to_batch(st.io.write_buffer_mut(), at, payload);
                st.send.open_batch = Some((at, body + codec::batch_entry_len(payload.len())));
            }
            _ if codec::batch_body_len(payload.len()) <= max => {
                let at = codec::start_batch(st.io.write_buffer_mut(), seq, payload);
                st.send.open_batch = Some((at, codec::batch_body_len(payload.len())));
            }
            _ => self.queue_frame(OutFrame::Inline { seq, payload })?,
        }
        Ok(())
    }

    fn poll_flush(mut self, cx: &Context<'_>) -> Poll<Result<()>> {
        self.register(cx);
        loop {
            self.check_fatal()?;
            if let Poll::Ready(Err(e)) = self.flush_writes() {
                return Poll::Ready(Err(e));
            }
            if self.state.send.in_flight.is_empty() && self.state.io.write_buffer().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !self.drive_read() {
                return Poll::Pending;
            }
        }
    }

    fn poll_close(mut self, cx: &Context<'_>) -> Poll<Result<()>> {
        self.register(cx);
        if !self.state.send.closed {
            // Flush first: every message must be acknowledged before CLOSE.
            loop {
                self.check_fatal()?;
                if let Poll::Ready(Err(e)) = self.flush_writes() {
                    return Poll::Ready(Err(e));
                }
                if self.state.send.in_flight.is_empty() {
                    break;
                }
                if !self.drive_read() {
                    return Poll::Pending;
                }
            }
            let sent = self.state.send.next_seq;
            self.shared.send_ready.store(false, Ordering::Release);
            self.state.send.closed = true;
            if self.state.eof {
                // The peer has left the socket and everything was acknowledged: there is
                // nobody left to tell.
                return Poll::Ready(Ok(()));
            }
            self.queue_frame(OutFrame::Close { sent })?;
            debug!(sent, "closing sending side");
        }
        self.check_fatal()?;
        match self.flush_writes() {
            Poll::Ready(r) => r?,
            Poll::Pending => return Poll::Pending,
        }
        self.maybe_shutdown_write();
        Poll::Ready(Ok(()))
    }

    /// A dropped sender closes its direction once everything it sent is acknowledged, so that
    /// the peer's stream ends with `None`.
    fn close_if_dropped(&mut self) {
        let send = &self.state.send;
        if send.dropped && !send.closed && send.in_flight.is_empty() && self.state.fatal.is_none() {
            let sent = send.next_seq;
            self.shared.send_ready.store(false, Ordering::Release);
            self.state.send.closed = true;
            if !self.state.eof && self.queue_frame(OutFrame::Close { sent }).is_ok() {
                let _ = self.flush_writes();
            }
            self.maybe_shutdown_write();
        }
    }

    /// Shuts down our write side once nothing more will be written: CLOSE was sent and the
    /// receiving direction no longer needs to send acknowledgements.
    fn maybe_shutdown_write(&mut self) {
        let st = &mut *self.state;
        let recv_finished = st.recv.done || st.recv.dropped || st.fatal.is_some();
        if st.send.closed && !st.send.shut && recv_finished && st.io.write_buffer().is_empty() {
            st.send.shut = true;
            let _ = st.io.get_ref().shutdown(Shutdown::Write);
        }
    }

    // ----- receiving -----------------------------------------------------------------------

    fn check_receiver_dropped(&mut self) {
        let recv = &self.state.recv;
        if recv.dropped && (!recv.queue.is_empty() || !recv.pulls.is_empty()) {
            let n = recv.queue.len() + recv.pulls.len();
            self.fail(
                Error::new(
                    ErrorKind::PeerGone,
                    format!(
                        "the receiving half was dropped with {n} messages from the peer not yet \
                         received"
                    ),
                ),
                true,
            );
        }
    }

    /// Starts pulls for queued messages while there is room. Returns whether any started.
    ///
    /// Large messages are pulled on the blocking pool, one task each. A run of smaller
    /// messages is pulled in place with as few `process_vm_readv` calls as their ranges allow
    /// (up to `IOV_MAX` ranges a call) into one buffer that is then split into the messages.
    fn start_pulls(&mut self) -> bool {
        let limits = self.state.limits;
        let pid = self.state.peer_pid;
        let mut started = false;
        // Bytes pulled in place by this call: bounded, so that one poll does not copy a whole
        // window on the runtime thread before the first message is handed over.
        let mut in_place = 0u64;
        loop {
            let st = &mut *self.state;
            let recv = &mut st.recv;
            let room = (limits.recv_window_messages as usize)
                .saturating_sub(recv.ready.len() + recv.pulls.len());
            if room == 0 || recv.ready_bytes >= limits.recv_window_bytes {
                break;
            }
            match recv.queue.front() {
                None => break,
                Some(Incoming::Inline(_)) => {
                    if let Some(Incoming::Inline(data)) = recv.queue.pop_front() {
                        recv.pulls.push_back(Pull::Done { data, check: false });
                    }
                }
                Some(Incoming::Pull(d)) if d.len >= limits.blocking_threshold => {
                    if recv.running >= limits.max_pulls_in_flight {
                        break;
                    }
                    let Some(Incoming::Pull(desc)) = recv.queue.pop_front() else {
                        unreachable!("front was checked")
                    };
                    let ranges: Vec<RemoteRange> = desc.ranges().collect();
                    let pool = st.pool.clone();
                    match BlockingPull::start(pid, desc.len, ranges, pool, limits.pull_timeout) {
                        Ok(pull) => {
                            recv.running += 1;
                            recv.pulls.push_back(Pull::Running(pull));
                        }
                        Err(e) => {
                            self.fail(e, true);
                            return true;
                        }
                    }
                }
                Some(Incoming::Pull(_)) if in_place >= limits.blocking_threshold => break,
                Some(Incoming::Pull(_)) => match self.pull_in_place(room, in_place) {
                    Ok(bytes) => in_place += bytes.max(1),
                    Err(e) => {
                        self.fail(Error::pull(pid, e), true);
                        return true;
                    }
                },
            }
            started = true;
        }
        started
    }

    /// Pulls the run of small messages at the front of the queue (at most `room` of them, and
    /// at most `blocking_threshold` bytes in all), each into its own buffer, in as few system
    /// calls as their ranges allow.
    fn pull_in_place(&mut self, room: usize, budget_used: u64) -> std::io::Result<u64> {
        let limits = self.state.limits;
        let pid = self.state.peer_pid;
        let st = &mut *self.state;
        let recv = &mut st.recv;
        let mut lens = Vec::new();
        let mut ranges = Vec::new();
        let mut total = 0u64;
        while let Some(Incoming::Pull(d)) = recv.queue.front() {
            let fits = lens.len() < room
                && d.len < limits.blocking_threshold
                && (lens.is_empty() || budget_used + total + d.len <= limits.blocking_threshold);
            if !fits {
                break;
            }
            total += d.len;
            lens.push(d.len as usize);
            ranges.extend(d.ranges());
            recv.queue.pop_front();
        }
        let started = Instant::now();
        let msgs = pull_messages(pid, &lens, &ranges, &st.pool)?;
        trace!(messages = lens.len(), bytes = total, elapsed = ?started.elapsed(), "pulled in place");
        for data in msgs {
            recv.pulls.push_back(Pull::Done { data, check: true });
        }
        Ok(total)
    }

    /// Moves finished pulls at the front into `ready`: one hang-up check for the batch, then
    /// one cumulative acknowledgement. Returns whether anything moved.
    fn collect_pulls(&mut self, cx: &mut Context<'_>) -> bool {
        let pid = self.state.peer_pid;
        // The finished pulls at the front: `n` of them, `bytes` in all.
        let mut n = 0;
        let mut bytes = 0u64;
        let mut needs_check = false;
        loop {
            let recv = &mut self.state.recv;
            let Some(front) = recv.pulls.get_mut(n) else {
                break;
            };
            if let Pull::Running(pull) = front {
                let result = match pull.poll_result(cx) {
                    Poll::Pending => break,
                    Poll::Ready(result) => result,
                };
                match result {
                    Ok(data) => {
                        debug!(len = pull.len(), elapsed = ?pull.started().elapsed(), "pulled on the blocking pool");
                        *front = Pull::Done { data, check: true };
                        recv.running -= 1;
                    }
                    Err(e) => {
                        self.fail(e, true);
                        return true;
                    }
                }
            }
            if let Pull::Done { data, check } = front {
                needs_check |= *check;
                bytes += data.len() as u64;
            }
            n += 1;
        }
        if n == 0 {
            return false;
        }
        if needs_check {
            let pidfd = self.state.pidfd.as_ref().map(AsFd::as_fd);
            match self.state.io.get_ref().check_peer(pidfd) {
                Ok(peer) if !peer.hung_up && !peer.exited => {}
                Ok(peer) => {
                    let what = if peer.exited {
                        "exited"
                    } else {
                        "closed the connection"
                    };
                    self.fail(
                        Error::new(
                            ErrorKind::PeerGone,
                            format!(
                                "peer process {pid} {what} while {n} pulled messages were \
                                 unacknowledged; they were discarded because the peer may have \
                                 released their buffers"
                            ),
                        ),
                        false,
                    );
                    return true;
                }
                Err(e) => {
                    self.fail(Error::io("checking the control socket", e), false);
                    return true;
                }
            }
        }
        let recv = &mut self.state.recv;
        recv.acked += n as u64;
        recv.ack_due_bytes += bytes;
        recv.ready_bytes += bytes;
        for pull in recv.pulls.drain(..n) {
            if let Pull::Done { data, .. } = pull {
                recv.ready.push_back(data);
            }
        }
        self.send_ack();
        true
    }

    fn poll_next(mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        if self.state.recv.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(data) = self.state.recv.ready.pop_front() {
                self.state.recv.ready_bytes -= data.len() as u64;
                // When the last ready message goes, start the next pulls before handing it
                // over, so that they overlap with the application's work on it.
                if self.state.recv.ready.is_empty() && self.state.fatal.is_none() {
                    self.drive_read();
                    self.start_pulls();
                }
                return Poll::Ready(Some(Ok(data)));
            }
            if let Some(err) = self.state.fatal.clone() {
                self.state.recv.done = true;
                self.maybe_shutdown_write();
                return Poll::Ready(Some(Err(err)));
            }
            self.register(cx);
            let mut progressed = self.drive_read();
            progressed |= self.start_pulls();
            progressed |= self.collect_pulls(cx);
            if !progressed && self.state.recv.ready.is_empty() && self.state.fatal.is_none() {
                let recv = &self.state.recv;
                let idle = recv.queue.is_empty() && recv.pulls.is_empty();
                if idle && recv.peer_closed {
                    debug!(received = recv.acked, "peer closed; stream ends");
                    self.state.recv.done = true;
                    self.maybe_shutdown_write();
                    return Poll::Ready(None);
                }
                // Acknowledgements that did not fit into the socket yet.
                if let Poll::Ready(Err(e)) = self.flush_writes() {
                    self.state.recv.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Pending;
            }
        }
    }
}
