//! The receiving direction: sequence and window checks, pulls into the receive buffer,
//! acknowledgements, and in-order delivery.
//!
//! [`RecvState`] is the bookkeeping alone (no I/O), driven by the property tests in `model`;
//! the `Guard` methods below do the pulls and the socket work around it.
//!
//! Messages are acknowledged when they enter the receive buffer (`ready`), not when the
//! application takes them: the buffer holds at most one window, and the peer may announce at
//! most one more window beyond the acknowledged messages, whose payloads stay in its memory
//! until there is room here. So the transport keeps receiving while the application does
//! something else, and a full buffer stops the peer, as a socket's receive buffer does.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::io::ReadBuf;
use tracing::{debug, trace};

use super::{Guard, Negotiated, Role};
use crate::codec::{Descriptor, MAX_RELEASES, OutFrame};
use crate::error::{Error, ErrorKind, Result};
use crate::pull::{BlockingPull, pull_messages};
use crate::sys::RemoteRange;

/// Released loans are sent back once this many have gathered, or messages of this many bytes
/// (the sender lends the memory again, still warm in the caches), or when the connection would
/// otherwise wait, or with anything this side writes (see `Guard::flush_writes`).
const RELEASE_BATCH: (usize, usize) = (64, 256 << 10);

/// A message announced by the peer, not pulled yet.
#[derive(Debug)]
pub(super) enum Incoming {
    Pull(Descriptor),
    Inline(Bytes),
}

/// A started pull.
#[derive(Debug)]
pub(super) enum Pull {
    /// Copied; `check` says whether it was pulled and still needs the hang-up check.
    Done {
        data: Bytes,
        check: bool,
    },
    Running(BlockingPull),
}

/// What the peer has announced and this side has received, acknowledged and delivered.
#[derive(Debug, Default)]
pub(super) struct RecvState {
    /// Sequence number the next DATA or INLINE frame must carry.
    next_seq: u64,
    /// Messages acknowledged so far (counted when they become ready, or are discarded).
    acked: u64,
    /// The count carried by the last ACK queued.
    ack_sent: u64,
    /// Bytes of the messages acknowledged since the last ACK was queued.
    ack_due_bytes: u64,
    /// Bytes announced by the peer whose acknowledgement has not been queued.
    unacked_bytes: u64,
    /// The peer waits for the acknowledgement of the messages below this sequence number
    /// (its last SYNC).
    sync_until: u64,
    /// A pulled message is among those acknowledged since the last ACK was queued: the peer
    /// holds its buffer until the ACK arrives.
    pulled_unsent: bool,
    /// Announced messages whose pull has not started.
    pub(super) queue: VecDeque<Incoming>,
    /// Started pulls, in sequence order.
    pub(super) pulls: VecDeque<Pull>,
    /// Blocking-pool pulls among `pulls`.
    pub(super) running: usize,
    /// Bytes of the messages in `pulls`.
    pulling_bytes: u64,
    /// Pulled, verified and acknowledged messages waiting for the application: the receive
    /// buffer.
    ready: VecDeque<Bytes>,
    ready_bytes: u64,
    /// Messages handed to the application.
    delivered: u64,
    /// The peer's CLOSE arrived.
    peer_closed: bool,
    /// The stream has ended (returned its error or `None`).
    pub(super) done: bool,
    /// The application dropped the receiving half: everything is acknowledged and discarded.
    dropped: bool,
}

impl RecvState {
    /// Checks a message the peer announced (its sequence number and the window) and files
    /// it: straight into the receive buffer if it is inline and nothing is ahead of it,
    /// discarded if the application has dropped the receiving half, queued otherwise.
    pub(super) fn on_message(
        &mut self,
        seq: u64,
        len: u64,
        msg: Incoming,
        limits: &Negotiated,
    ) -> Result<()> {
        if self.peer_closed {
            return Err(Error::protocol("message received after CLOSE"));
        }
        if seq != self.next_seq {
            return Err(Error::protocol(format!(
                "message with sequence number {seq}, expected {}",
                self.next_seq
            )));
        }
        // The window as the peer sees it: what the ACKs queued so far released.
        let unacked = self.next_seq - self.ack_sent;
        if unacked >= u64::from(limits.recv_window_messages)
            || self.unacked_bytes >= limits.recv_window_bytes
        {
            return Err(Error::protocol(format!(
                "the peer overran the window: {unacked} messages and {} bytes unacknowledged, \
                 window {} messages and {} bytes",
                self.unacked_bytes, limits.recv_window_messages, limits.recv_window_bytes
            )));
        }
        self.next_seq += 1;
        self.unacked_bytes += len;
        match msg {
            _ if self.dropped => {
                self.acked += 1;
                self.ack_due_bytes += len;
            }
            // An inline message behind nothing else, with room in the buffer, is ready now:
            // it needs no pull and no check.
            Incoming::Inline(data)
                if self.queue.is_empty()
                    && self.pulls.is_empty()
                    && self.ready.len() < limits.recv_window_messages as usize
                    && self.ready_bytes < limits.recv_window_bytes =>
            {
                self.acked += 1;
                self.ack_due_bytes += len;
                self.ready_bytes += len;
                self.ready.push_back(data);
            }
            msg => self.queue.push_back(msg),
        }
        trace!(seq, len, "message announced");
        Ok(())
    }

    /// The peer closed its sending side after `sent` messages.
    pub(super) fn on_close(&mut self, sent: u64) -> Result<()> {
        if self.peer_closed {
            return Err(Error::protocol("CLOSE received twice"));
        }
        if sent != self.next_seq {
            return Err(Error::protocol(format!(
                "the peer closed saying it sent {sent} messages, but {} arrived",
                self.next_seq
            )));
        }
        self.peer_closed = true;
        Ok(())
    }

    /// The peer waits for the acknowledgement of everything it sent so far (SYNC).
    pub(super) fn on_sync(&mut self, sent: u64) -> Result<()> {
        if self.peer_closed {
            return Err(Error::protocol("SYNC received after CLOSE"));
        }
        if sent != self.next_seq || sent <= self.sync_until {
            return Err(Error::protocol(format!(
                "SYNC for the first {sent} messages, but {} arrived and the previous SYNC was \
                 for {}",
                self.next_seq, self.sync_until
            )));
        }
        self.sync_until = sent;
        Ok(())
    }

    /// The cumulative count an ACK should carry now, if there is anything new to acknowledge.
    pub(super) fn ack_due(&self) -> Option<u64> {
        (self.acked != self.ack_sent).then_some(self.acked)
    }

    /// Whether an ACK is due that should be written now rather than with this side's next
    /// write: the peer waits for it (SYNC), holds the buffer of a pulled message until it
    /// comes, or would soon find its window full (a quarter of it is acknowledged and
    /// unsent), or this side discards everything. Acknowledging inline messages only in
    /// these cases saves a write here and a wake-up there per message.
    pub(super) fn ack_urgent(&self, limits: &Negotiated) -> bool {
        self.ack_due().is_some()
            && (self.ack_sent < self.sync_until
                || self.pulled_unsent
                || self.dropped
                || self.acked - self.ack_sent >= u64::from(limits.recv_window_messages.div_ceil(4))
                || self.ack_due_bytes >= limits.recv_window_bytes.div_ceil(4))
    }

    /// An ACK carrying [`ack_due`](RecvState::ack_due) was queued.
    pub(super) fn ack_queued(&mut self) {
        self.ack_sent = self.acked;
        self.unacked_bytes -= self.ack_due_bytes;
        self.ack_due_bytes = 0;
        self.pulled_unsent = false;
    }

    /// Messages announced and not in the receive buffer yet (queued or being pulled).
    pub(super) fn not_received(&self) -> usize {
        self.queue.len() + self.pulls.len()
    }

    /// Messages announced whose acknowledgement was not queued.
    #[cfg(test)]
    pub(super) fn unacknowledged(&self) -> u64 {
        self.next_seq - self.ack_sent
    }

    /// Whether an end of stream now is a clean one: the peer closed its side first, or this
    /// side no longer cares.
    pub(super) fn ended_cleanly(&self) -> bool {
        self.peer_closed || self.done || self.dropped
    }

    /// Whether this direction needs nothing more from the socket: the stream ended or its
    /// half was dropped.
    pub(super) fn finished(&self) -> bool {
        self.done || self.dropped
    }

    pub(super) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// How many more pulls may start: the receive buffer and the pulls under way together
    /// stay within the window (a message that starts below its byte limit may end above it,
    /// as on the sending side).
    pub(super) fn room(&self, limits: &Negotiated) -> usize {
        if self.ready_bytes + self.pulling_bytes >= limits.recv_window_bytes || self.dropped {
            return 0;
        }
        (limits.recv_window_messages as usize).saturating_sub(self.ready.len() + self.pulls.len())
    }

    /// Records a started pull of `len` bytes.
    pub(super) fn pull_started(&mut self, pull: Pull, len: u64) {
        self.pulling_bytes += len;
        self.pulls.push_back(pull);
    }

    /// The first `n` pulls are finished and checked: they enter the receive buffer and are
    /// acknowledged.
    pub(super) fn pulls_done(&mut self, n: usize) {
        for pull in self.pulls.drain(..n) {
            if let Pull::Done { data, check } = pull {
                self.pulled_unsent |= check;
                let len = data.len() as u64;
                self.pulling_bytes -= len;
                self.acked += 1;
                self.ack_due_bytes += len;
                self.ready_bytes += len;
                self.ready.push_back(data);
            }
        }
    }

    /// Takes the next message for the application.
    pub(super) fn pop(&mut self) -> Option<Bytes> {
        let data = self.ready.pop_front()?;
        self.ready_bytes -= data.len() as u64;
        self.delivered += 1;
        Some(data)
    }

    /// Messages in the receive buffer, and the bytes in it or being pulled into it.
    #[cfg(test)]
    pub(super) fn buffered(&self) -> (usize, u64) {
        (self.ready.len(), self.ready_bytes + self.pulling_bytes)
    }

    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether nothing announced is waiting to be pulled or being pulled.
    pub(super) fn idle(&self) -> bool {
        self.queue.is_empty() && self.pulls.is_empty()
    }

    /// The application dropped the receiving half: everything announced, pulled or not, is
    /// acknowledged and discarded, and so is everything announced from now on.
    pub(super) fn drop_all(&mut self) {
        self.dropped = true;
        self.queue.clear();
        self.pulls.clear();
        self.pulling_bytes = 0;
        self.running = 0;
        self.ready.clear();
        self.ready_bytes = 0;
        self.acked = self.next_seq;
        self.ack_due_bytes = self.unacked_bytes;
    }

    /// The connection failed. Messages in the receive buffer are complete and checked, and
    /// are still delivered, as a socket's reader still reads what arrived before its peer
    /// vanished (their ACK may not have reached the peer: see the at-least-once note on
    /// [`Connection`](crate::Connection)); what was not received yet is discarded.
    pub(super) fn on_fail(&mut self) {
        self.queue.clear();
        self.pulls.clear();
        self.pulling_bytes = 0;
        self.running = 0;
    }
}

impl Guard<'_> {
    pub(super) fn on_message(&mut self, seq: u64, len: u64, msg: Incoming) -> Result<()> {
        let limits = self.state.limits;
        self.state.recv.on_message(seq, len, msg, &limits)?;
        self.notify(Role::Recv);
        Ok(())
    }

    /// Writes an ACK now if it is urgent (see [`RecvState::ack_urgent`]); otherwise it goes
    /// with the next frames this side writes.
    pub(super) fn ack_if_urgent(&mut self) {
        if self.state.recv.ack_urgent(&self.state.limits) {
            self.send_ack();
        }
    }

    /// Queues one cumulative ACK for the messages that became ready since the last one, and
    /// writes what the socket takes now.
    pub(super) fn send_ack(&mut self) {
        if self.state.fatal.is_some() || self.state.write_closed {
            return;
        }
        let Some(count) = self.state.recv.ack_due() else {
            return;
        };
        trace!(count, "acknowledging");
        // Released loans travel in the same write.
        self.send_releases(true);
        if let Err(e) = self.queue_frame(OutFrame::Ack { count }) {
            self.fail(e, false);
        } else {
            self.state.recv.ack_queued();
            let _ = self.flush_writes();
        }
    }

    /// Tells the peer which loaned messages the application dropped (RELEASE frames): all of
    /// them with `all`, else only once [`RELEASE_BATCH`] have gathered (the peer does not wait
    /// for them while its region has room, and one frame for many saves system calls on both
    /// sides). Whoever is about to wait, or writes anyway, sends them all.
    pub(super) fn send_releases(&mut self, all: bool) {
        let wakers = &self.shared.wakers;
        let Some(region) = &self.state.borrow else {
            return;
        };
        if !wakers.released.load(Ordering::Relaxed) {
            return;
        }
        let region = region.clone();
        let (count, bytes) = region.pending();
        if !all && count < RELEASE_BATCH.0 && bytes < RELEASE_BATCH.1 {
            return;
        }
        wakers.released.store(false, Ordering::SeqCst);
        let offsets = region.take_released();
        let st = &*self.state;
        if offsets.is_empty() || st.fatal.is_some() || st.write_closed || st.send.finished() {
            return;
        }
        trace!(count = offsets.len(), "releasing loaned messages");
        for chunk in offsets.chunks(MAX_RELEASES) {
            if let Err(e) = self.queue_frame(OutFrame::Release { offsets: chunk }) {
                self.fail(e, false);
                return;
            }
        }
        if !all {
            let _ = self.flush_writes();
        }
    }

    /// The application dropped the receiving half: acknowledge and discard what the peer
    /// announced, and tell it to stop (its later sends fail, as writes to a socket whose
    /// peer closed do).
    pub(super) fn receiver_dropped(&mut self) {
        self.state.recv.drop_all();
        let st = &*self.state;
        let tell = st.fatal.is_none() && !st.eof && !st.write_closed && !st.recv.peer_closed();
        self.send_ack();
        if tell {
            let delivered = self.state.recv.delivered;
            debug!(delivered, "receiving side closed");
            if let Err(e) = self.queue_frame(OutFrame::Stop { delivered }) {
                self.fail(e, false);
                return;
            }
            let _ = self.flush_writes();
        }
        self.maybe_shutdown_write();
    }

    /// Starts pulls for queued messages while there is room. Returns whether any started.
    ///
    /// Large messages are pulled on the blocking pool, one task each. A run of smaller
    /// messages is pulled in place with as few `process_vm_readv` calls as their ranges allow
    /// (up to `IOV_MAX` ranges a call) into one buffer that is then split into the messages.
    pub(super) fn start_pulls(&mut self) -> bool {
        let limits = self.state.limits;
        let pid = self.state.peer_pid;
        let mut started = false;
        // Bytes pulled in place by this call: bounded, so that one poll does not copy a whole
        // window on the runtime thread before the first message is handed over.
        let mut in_place = 0u64;
        loop {
            let st = &mut *self.state;
            let recv = &mut st.recv;
            let room = recv.room(&limits);
            if room == 0 {
                break;
            }
            match recv.queue.front() {
                None => break,
                Some(Incoming::Inline(_)) => {
                    if let Some(Incoming::Inline(data)) = recv.queue.pop_front() {
                        let len = data.len() as u64;
                        recv.pull_started(Pull::Done { data, check: false }, len);
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
                            recv.pull_started(Pull::Running(pull), desc.len);
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
                && (lens.is_empty()
                    || (budget_used + total + d.len <= limits.blocking_threshold
                        && recv.ready_bytes + recv.pulling_bytes + total
                            < limits.recv_window_bytes));
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
            let len = data.len() as u64;
            recv.pull_started(Pull::Done { data, check: true }, len);
        }
        Ok(total)
    }

    /// Moves finished pulls at the front into the receive buffer: one hang-up check for the
    /// batch, then one cumulative acknowledgement (written at once: the peer holds the
    /// buffers of pulled messages until it comes). Returns whether anything moved.
    pub(super) fn collect_pulls(&mut self, cx: &mut Context<'_>) -> bool {
        let pid = self.state.peer_pid;
        // The finished pulls at the front: `n` of them.
        let mut n = 0;
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
            if let Pull::Done { check, .. } = front {
                needs_check |= *check;
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
        self.state.recv.pulls_done(n);
        self.ack_if_urgent();
        self.notify(Role::Recv);
        true
    }

    /// Takes the next message of the receive buffer for the application, if there is one.
    fn take_ready(&mut self) -> Option<Bytes> {
        let data = self.state.recv.pop()?;
        if self.state.fatal.is_none() {
            if !self.state.recv.has_ready() {
                // The buffer is empty: start the next pulls before handing this message
                // over, so that they overlap with the application's work. Those done in
                // place are collected (checked, acknowledged) at once: the application may
                // not read again soon, and while it uses its sending half the driver leaves
                // the receiving work to it.
                self.drive_read();
                if self.start_pulls() {
                    let shared = self.shared;
                    self.collect_pulls(&mut Context::from_waker(&shared.io_waker));
                }
            } else if !self.state.recv.queue.is_empty()
                && !self.shared.wakers.watched.load(Ordering::Relaxed)
            {
                // Room opened for messages the peer announced: the driver pulls them if the
                // application stops reading (when the watchdog looks after it, it is woken
                // anyway).
                self.notify(Role::Driver);
            }
        }
        Some(data)
    }

    /// Copies the messages that have arrived into `dst`, in order, under this one lock: until
    /// `dst` is full, nothing has arrived, or a part longer than `small` was copied (as much
    /// as one socket read would return). Returns the rest of a message that did not fit (the
    /// caller keeps it for its next read). Errors and the end of the stream are left for the
    /// next [`poll_next`](Guard::poll_next).
    pub(super) fn copy_arrived(mut self, dst: &mut ReadBuf<'_>, small: usize) -> Option<Bytes> {
        self.send_releases(false);
        let mut read_socket = true;
        while dst.remaining() > 0 && !self.state.recv.done {
            if !self.state.recv.has_ready() {
                if !read_socket || self.state.fatal.is_some() {
                    return None;
                }
                // Once: what the socket holds now, as a socket read takes it.
                read_socket = false;
                self.drive_read();
            }
            let mut message = self.take_ready()?;
            let n = message.len().min(dst.remaining());
            dst.put_slice(&message[..n]);
            if n < message.len() {
                message.advance(n);
                return Some(message);
            }
            if n > small {
                return None;
            }
        }
        None
    }

    pub(super) fn poll_next(mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        self.send_releases(false);
        if self.state.recv.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(data) = self.take_ready() {
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
            let shared = self.shared;
            progressed |= self.collect_pulls(&mut Context::from_waker(&shared.io_waker));
            if !progressed && !self.state.recv.has_ready() && self.state.fatal.is_none() {
                let recv = &self.state.recv;
                if recv.idle() && recv.peer_closed() {
                    debug!(received = recv.delivered, "peer closed; stream ends");
                    self.state.recv.done = true;
                    self.maybe_shutdown_write();
                    return Poll::Ready(None);
                }
                // Releases and acknowledgements that did not fit into the socket yet.
                self.send_releases(true);
                if let Poll::Ready(Err(e)) = self.flush_writes() {
                    self.state.recv.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Pending;
            }
        }
    }
}
