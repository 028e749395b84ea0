//! The sending direction: the window, acknowledgements, close, and what a dropped sender
//! leaves behind.
//!
//! [`SendState`] is the bookkeeping alone (no I/O), driven by the property tests in `model`;
//! the `Guard` methods below put frames into the socket's write buffer around it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;

use bytes::Bytes;
use tracing::{debug, trace};

use super::{Guard, Negotiated};
use crate::codec::{self, OutFrame, Releases};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::RemoteRange;

/// Queued frames are written out once the write buffer holds this much.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// A message to send: owned (held until the peer acknowledges it, if it is pulled), or bytes
/// the caller keeps (copied: into the write buffer if the message travels inline, into a
/// buffer of its own otherwise).
#[derive(Debug)]
pub(crate) enum Outgoing<'a> {
    Owned(Bytes),
    Borrowed(&'a [u8]),
}

impl Outgoing<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Outgoing::Owned(b) => b,
            Outgoing::Borrowed(s) => s,
        }
    }
}

/// What this side has sent and the peer has not acknowledged yet.
#[derive(Debug, Default)]
pub(super) struct SendState {
    /// Sequence number of the next message.
    next_seq: u64,
    /// Messages sent but not acknowledged, oldest first, with their lengths; the first has
    /// sequence number `next_seq - in_flight.len()`. Inline messages hold an empty `Bytes`.
    in_flight: VecDeque<(u64, Bytes)>,
    in_flight_bytes: u64,
    /// Messages queued in the write buffer since it was last written out.
    unflushed: usize,
    /// How many messages the last SYNC asked the peer to acknowledge.
    sync_asked: u64,
    /// The BATCH frame at the end of the write buffer that more inline messages may join:
    /// where it starts and its body length so far.
    open_batch: Option<(usize, usize)>,
    /// CLOSE has been queued (or there is nobody left to tell).
    closed: bool,
    /// Our write side has been shut down.
    shut: bool,
    /// The application dropped the sending half.
    dropped: bool,
    /// The peer closed its receiving side (STOP): it acknowledges and discards.
    stopped: bool,
    /// Bytes a dropped [`ByteStream`](crate::ByteStream) had not flushed, sent as the window
    /// opens; and messages handed over while another was still being written in parts.
    pub(super) backlog: VecDeque<Bytes>,
    /// An inline message being written in PART frames (see [`Guard::pump_parts`]).
    parts: Option<Parts>,
    /// A SYNC was wanted while a message was being written in parts: it follows the last.
    sync_after_parts: bool,
    /// When a dropped sender stops waiting for the peer to pull what it left.
    pub(super) linger_until: Option<Instant>,
}

/// What is left to write of a message sent in PART frames.
#[derive(Debug)]
struct Parts {
    seq: u64,
    data: Bytes,
    /// Bytes of `data` queued so far.
    at: usize,
}

impl SendState {
    /// Whether a message is being written in parts: nothing else may be sent until it is.
    pub(super) fn in_parts(&self) -> bool {
        self.parts.is_some()
    }

    /// Whether a new message must wait: one is being written in parts, or messages that
    /// waited behind one are still to go (they keep their order).
    fn held_back(&self) -> bool {
        self.parts.is_some() || !self.backlog.is_empty()
    }

    /// Messages in flight and their bytes.
    pub(super) fn in_flight(&self) -> (usize, u64) {
        (self.in_flight.len(), self.in_flight_bytes)
    }

    /// Messages sent so far.
    pub(super) fn sent(&self) -> u64 {
        self.next_seq
    }

    /// Whether another message fits into the window.
    pub(super) fn window_open(&self, l: &Negotiated) -> bool {
        self.in_flight.len() < l.send_window_messages as usize
            && self.in_flight_bytes < l.send_window_bytes
    }

    /// Records a message of `len` bytes (holding `held` until it is acknowledged); returns
    /// its sequence number.
    pub(super) fn push(&mut self, len: u64, held: Bytes) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unflushed += 1;
        self.in_flight.push_back((len, held));
        self.in_flight_bytes += len;
        seq
    }

    /// Applies a cumulative acknowledgement of the first `count` messages.
    pub(super) fn on_ack(&mut self, count: u64) -> Result<()> {
        let acked = self.next_seq - self.in_flight.len() as u64;
        if count <= acked || count > self.next_seq {
            return Err(Error::protocol(format!(
                "ACK for {count} messages, but {acked} were already acknowledged and {} sent",
                self.next_seq
            )));
        }
        for _ in acked..count {
            if let Some((len, _buf)) = self.in_flight.pop_front() {
                self.in_flight_bytes -= len;
            }
        }
        trace!(count, in_flight = self.in_flight.len(), "ack received");
        Ok(())
    }

    /// The peer closed its receiving side.
    pub(super) fn on_stop(&mut self) -> Result<()> {
        if self.stopped {
            return Err(Error::protocol("STOP received twice"));
        }
        self.stopped = true;
        self.backlog.clear();
        Ok(())
    }

    pub(super) fn stopped(&self) -> bool {
        self.stopped
    }

    /// Forgets what is in flight: the peer will never pull it.
    pub(super) fn discard_in_flight(&mut self) {
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        self.backlog.clear();
    }

    /// Nothing more joins the BATCH frame at the end of the write buffer.
    pub(super) fn end_batch(&mut self) {
        self.open_batch = None;
    }

    /// The write buffer was written out.
    pub(super) fn written(&mut self) {
        self.unflushed = 0;
    }

    /// Whether the peer should be asked to acknowledge what was sent (a SYNC for the
    /// messages so far): something is unacknowledged and no SYNC asked for it yet.
    pub(super) fn sync_needed(&self) -> bool {
        !self.in_flight.is_empty() && self.sync_asked < self.next_seq && !self.closed
    }

    /// A SYNC for every message sent so far is queued; returns the count it carries.
    pub(super) fn sync_queued(&mut self) -> u64 {
        self.sync_asked = self.next_seq;
        self.next_seq
    }

    /// Whether everything sent (and left behind by a dropped sender) was acknowledged.
    pub(super) fn all_acknowledged(&self) -> bool {
        self.in_flight.is_empty() && self.backlog.is_empty()
    }

    /// Whether the sending direction has nothing more to do: closed and shut down, or ended.
    pub(super) fn finished(&self) -> bool {
        self.shut
    }

    pub(super) fn dropped(&self) -> bool {
        self.dropped
    }

    /// The connection failed: everything in flight is released.
    pub(super) fn on_fail(&mut self) {
        self.open_batch = None;
        self.parts = None;
        self.discard_in_flight();
        self.linger_until = None;
    }
}

impl Guard<'_> {
    /// Whether a new message may be sent: no fatal error, not closed, peer still there and
    /// still receiving.
    fn check_can_send(&self) -> Result<()> {
        self.check_fatal()?;
        // Borrowed: this runs for every message, and only an error formats it.
        let peer = &self.state.peer_name;
        if self.state.send.closed {
            return Err(Error::new(
                ErrorKind::Closed,
                "the sending side was already closed",
            ));
        }
        if self.state.send.stopped {
            return Err(Error::new(
                ErrorKind::PeerGone,
                format!(
                    "peer {peer} closed its receiving side (dropped its Receiver or \
                     ByteStream): nothing more can be sent, as a socket whose peer closed \
                     reports a broken pipe"
                ),
            ));
        }
        if self.state.eof || self.state.write_closed {
            return Err(Error::new(
                ErrorKind::PeerGone,
                format!("peer {peer} closed the connection; nothing more can be sent"),
            ));
        }
        Ok(())
    }

    /// Whether `poll_ready` can return `Ready` without writing or waiting: room in the window,
    /// no batch due to be written, and nothing that stops sending.
    fn ready_at_once(&self) -> bool {
        let batch = (self.state.limits.send_window_messages as usize).div_ceil(4);
        self.state.send.window_open(&self.state.limits)
            && !self.state.send.held_back()
            && self.state.send.unflushed < batch
            && self.state.io.write_buffer().len() < WRITE_BATCH_BYTES
            && self.check_can_send().is_ok()
    }

    pub(super) fn poll_ready(mut self, cx: &Context<'_>) -> Poll<Result<()>> {
        let batch = (self.state.limits.send_window_messages as usize).div_ceil(4);
        // Fast path: room in the window and nothing to write yet. Returning Ready needs no
        // registered waker.
        if self.ready_at_once() {
            return Poll::Ready(Ok(()));
        }
        self.register(cx);
        loop {
            self.check_can_send()?;
            // Messages that waited behind one written in parts go first.
            self.send_backlog();
            let window_open = self.state.send.window_open(&self.state.limits);
            if !window_open {
                self.request_ack()?;
            }
            // Write queued frames out in batches: when a quarter of the window is queued, when
            // the buffer is large, or when the window is full. The peer pulls one batch while
            // the next one fills, and small messages cost a fraction of a write each. A
            // message in parts is written out before anything else is sent.
            if (self.state.send.unflushed >= batch
                || self.state.io.write_buffer().len() >= WRITE_BATCH_BYTES
                || !window_open
                || self.state.send.held_back())
                && let Poll::Ready(Err(e)) = self.flush_writes()
            {
                return Poll::Ready(Err(e));
            }
            if self.state.send.window_open(&self.state.limits) && !self.state.send.held_back() {
                self.check_can_send()?;
                return Poll::Ready(Ok(()));
            }
            if !self.drive_read() {
                return Poll::Pending;
            }
        }
    }

    /// Sends `item` (inline up to the inline threshold, as a descriptor to pull otherwise)
    /// and, given a `cx` (a byte stream's flush), writes the frames queued so far into the
    /// socket under the same lock. `Ok(Pending)` only means the socket is full: the message
    /// was taken all the same.
    pub(super) fn start_send(
        mut self,
        item: Outgoing<'_>,
        write_out: Option<&Context<'_>>,
    ) -> Result<Poll<()>> {
        if let Some(cx) = write_out {
            self.register(cx);
        }
        self.check_can_send()?;
        if self.state.send.held_back() {
            // Sent without waiting for `poll_ready`: it goes after the message in parts
            // (refused now if it is too large: later it would end the connection).
            self.check_size(item.as_slice().len() as u64)?;
            let item = match item {
                Outgoing::Owned(item) => item,
                Outgoing::Borrowed(bytes) => Bytes::copy_from_slice(bytes),
            };
            self.state.send.backlog.push_back(item);
        } else {
            self.send_message(item)?;
        }
        let written = match write_out {
            Some(_) => self.write_out_coalesced(),
            None => Poll::Ready(Ok(())),
        };
        let ready = self.ready_at_once();
        self.shared.send_ready.store(ready, Ordering::Release);
        match written {
            Poll::Ready(r) => r.map(Poll::Ready),
            Poll::Pending => Ok(Poll::Pending),
        }
    }

    /// Raises the inline threshold to `bytes`, as far as the peer accepts inline messages
    /// that large (a [`ByteStream`](crate::ByteStream)'s messages: see its docs).
    pub(super) fn raise_inline_threshold(mut self, bytes: u32) {
        let limits = &mut self.state.limits;
        let peer = u32::try_from(limits.peer_inline_max()).unwrap_or(u32::MAX);
        limits.inline_threshold = limits.inline_threshold.max(bytes.min(peer));
    }

    /// Queues one message: inline into the write buffer, or as a descriptor of `item`, which
    /// is then held until the peer acknowledges it.
    fn send_message(&mut self, item: Outgoing<'_>) -> Result<()> {
        let limits = self.state.limits;
        let len = item.as_slice().len() as u64;
        self.check_size(len)?;
        let seq = self.state.send.sent();
        let inline = len <= u64::from(limits.inline_threshold);
        let lent_at = match (&self.shared.lend, &item) {
            (Some(region), Outgoing::Owned(item)) if !inline => region.offset_of(item),
            _ => None,
        };
        let held = if inline && len > codec::PART_SIZE as u64 {
            // Too large for one frame's worth of buffers: written in parts as the socket
            // takes them.
            let data = match item {
                Outgoing::Owned(ref item) => item.clone(),
                Outgoing::Borrowed(bytes) => Bytes::copy_from_slice(bytes),
            };
            self.state.send.parts = Some(Parts { seq, data, at: 0 });
            self.pump_parts()?;
            Bytes::new()
        } else if inline {
            self.queue_inline(seq, item.as_slice())?;
            Bytes::new()
        } else if let (Some(offset), Outgoing::Owned(item)) = (lent_at, &item) {
            // A loan the peer maps: it reads the message in place and releases it when its
            // application drops it; until then the loan stays lent.
            self.queue_frame(OutFrame::Shared { seq, offset, len })?;
            self.state.lent.entry(offset).or_insert((item.clone(), 0)).1 += 1;
            Bytes::new()
        } else {
            let item = match item {
                Outgoing::Owned(item) => item,
                Outgoing::Borrowed(bytes) => Bytes::copy_from_slice(bytes),
            };
            let range = [RemoteRange {
                addr: item.as_ptr() as usize as u64,
                len,
            }];
            let ranges = if len == 0 { &range[..0] } else { &range[..] };
            self.queue_frame(OutFrame::Data { seq, ranges })?;
            item
        };
        self.state.send.push(len, held);
        trace!(seq, len, "message queued");
        Ok(())
    }

    /// Whether the peer accepts a message of `len` bytes.
    fn check_size(&self, len: u64) -> Result<()> {
        let max = self.state.limits.send_max_message;
        if len > max {
            return Err(Error::limit(format!(
                "a {len}-byte message is larger than the peer accepts ({max} bytes); the \
                 message was not sent, raise Config::max_message_size on the receiving side"
            )));
        }
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

    /// Queues the next PART frame of the message being written in parts, if the write
    /// buffer has room for it (it holds less than a part): the buffer never holds more than
    /// about one part of a large message, however large. After the last part, a SYNC that
    /// was wanted meanwhile. Returns whether a part was queued.
    pub(super) fn pump_parts(&mut self) -> Result<bool> {
        let st = &mut *self.state;
        let Some(parts) = st.send.parts.as_mut() else {
            return Ok(false);
        };
        if st.io.write_buffer().len() >= codec::PART_SIZE {
            return Ok(false);
        }
        let end = (parts.at + codec::PART_SIZE).min(parts.data.len());
        let (seq, total) = (parts.seq, parts.data.len() as u64);
        let payload = parts.data.slice(parts.at..end);
        parts.at = end;
        let last = end == parts.data.len();
        if last {
            st.send.parts = None;
        }
        self.queue_frame(OutFrame::Part {
            seq,
            total,
            payload: &payload,
        })?;
        if last && std::mem::take(&mut self.state.send.sync_after_parts) {
            self.request_ack()?;
        }
        Ok(true)
    }

    /// The peer's application dropped loaned messages: their loans may be lent again once
    /// this side's application has dropped its copies too.
    pub(super) fn on_release(&mut self, mut releases: Releases) -> Result<()> {
        while let Some(offset) = releases.next_offset() {
            match self.state.lent.get_mut(&offset) {
                Some((_, sent)) if *sent > 1 => *sent -= 1,
                Some(_) => {
                    self.state.lent.remove(&offset);
                }
                None => {
                    return Err(Error::protocol(format!(
                        "the peer released a loaned message at offset {offset} that it does \
                         not hold"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sends what a dropped sender left unsent, as far as the window allows. Returns whether
    /// anything was sent.
    pub(super) fn send_backlog(&mut self) -> bool {
        let mut sent = false;
        while !self.state.send.backlog.is_empty()
            && !self.state.send.in_parts()
            && self.state.send.window_open(&self.state.limits)
            && self.check_can_send().is_ok()
        {
            let Some(item) = self.state.send.backlog.pop_front() else {
                break;
            };
            if let Err(e) = self.send_message(Outgoing::Owned(item)) {
                self.fail(e, true);
                return true;
            }
            sent = true;
        }
        sent
    }

    pub(super) fn poll_flush(mut self, cx: &Context<'_>) -> Poll<Result<()>> {
        self.register(cx);
        loop {
            self.check_fatal()?;
            self.request_ack()?;
            if let Poll::Ready(Err(e)) = self.flush_writes() {
                return Poll::Ready(Err(e));
            }
            if self.state.send.all_acknowledged() && self.state.io.write_buffer().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !self.drive_read() {
                return Poll::Pending;
            }
        }
    }

    pub(super) fn poll_close(mut self, cx: &Context<'_>) -> Poll<Result<()>> {
        self.register(cx);
        if !self.state.send.closed {
            // Every message must have been pulled by the peer's transport before CLOSE (its
            // application need not have read them).
            loop {
                self.check_fatal()?;
                self.request_ack()?;
                if let Poll::Ready(Err(e)) = self.flush_writes() {
                    return Poll::Ready(Err(e));
                }
                if self.state.send.all_acknowledged() {
                    break;
                }
                if !self.drive_read() {
                    return Poll::Pending;
                }
            }
            self.queue_close()?;
        }
        self.check_fatal()?;
        match self.flush_writes() {
            Poll::Ready(r) => r?,
            Poll::Pending => return Poll::Pending,
        }
        self.maybe_shutdown_write();
        Poll::Ready(Ok(()))
    }

    /// Before this side waits for acknowledgements: asks the peer to acknowledge everything
    /// sent so far at once (SYNC). Without it, the peer acknowledges inline messages only
    /// with its own writes or once a quarter of the window is unacknowledged (see
    /// `RecvState::ack_urgent`). The caller writes the frame out.
    fn request_ack(&mut self) -> Result<()> {
        let st = &mut *self.state;
        if !st.send.sync_needed() || st.eof || st.write_closed || st.fatal.is_some() {
            return Ok(());
        }
        if st.send.in_parts() {
            // A SYNC counts whole messages: it follows the last part.
            st.send.sync_after_parts = true;
            return Ok(());
        }
        let sent = st.send.sync_queued();
        trace!(sent, "asking for an acknowledgement");
        self.queue_frame(OutFrame::Sync { sent })
    }

    /// Marks the sending direction closed and queues CLOSE, unless nobody is left to tell.
    fn queue_close(&mut self) -> Result<()> {
        let sent = self.state.send.sent();
        self.shared.send_ready.store(false, Ordering::Release);
        self.state.send.closed = true;
        if self.state.eof || self.state.write_closed {
            return Ok(());
        }
        debug!(sent, "closing sending side");
        self.queue_frame(OutFrame::Close { sent })
    }

    /// The application dropped the sending half: what it sent (and, from a `ByteStream`,
    /// what it wrote) is still delivered, then the direction is closed, within the linger
    /// time.
    pub(super) fn sender_dropped(&mut self) {
        self.state.send.dropped = true;
        self.shared.send_ready.store(false, Ordering::Release);
        if !self.state.send.shut && self.state.fatal.is_none() {
            self.state.send.linger_until = Some(Instant::now() + self.state.limits.linger);
        }
        self.send_backlog();
        self.close_if_dropped();
        if self.state.fatal.is_none() {
            let _ = self.flush_writes();
        }
    }

    /// A dropped sender closes its direction once everything it sent is acknowledged, so that
    /// the peer's stream ends with `None`.
    pub(super) fn close_if_dropped(&mut self) {
        let send = &self.state.send;
        if send.dropped && !send.closed && !send.all_acknowledged() && send.sync_needed() {
            // Waiting for the peer: ask it not to wait with its acknowledgements.
            if let Err(e) = self.request_ack() {
                self.fail(e, false);
                return;
            }
            let _ = self.flush_writes();
        }
        let send = &self.state.send;
        if send.dropped && !send.closed && send.all_acknowledged() && self.state.fatal.is_none() {
            if let Err(e) = self.queue_close() {
                self.fail(e, false);
                return;
            }
            let _ = self.flush_writes();
            self.maybe_shutdown_write();
        }
    }

    /// The linger time of a dropped sender ran out before the peer had pulled everything
    /// and read the end of the stream.
    pub(super) fn linger_expired(&mut self) {
        let (n, bytes) = self.state.send.in_flight();
        let left = self.state.send.backlog.len();
        let linger = self.state.limits.linger;
        self.fail(
            Error::new(
                ErrorKind::PeerGone,
                format!(
                    "the sending side was dropped and the peer did not receive its last {} \
                     messages ({bytes} bytes) and the end of the stream within the linger time \
                     of {linger:?}; they were discarded (raise Config::linger, or close() \
                     before dropping to wait for the peer)",
                    n + left
                ),
            ),
            true,
        );
    }

    /// Shuts down our write side once nothing more will be written: CLOSE was sent and the
    /// receiving direction no longer needs to send acknowledgements.
    pub(super) fn maybe_shutdown_write(&mut self) {
        let st = &mut *self.state;
        let recv_finished = st.recv.finished() || st.fatal.is_some();
        if st.send.closed && !st.send.shut && recv_finished && st.io.write_buffer().is_empty() {
            // At once on a Unix socket; over TLS the close_notify alert goes first, and a
            // full socket makes this wait for the next round.
            let shared = self.shared;
            let mut cx = Context::from_waker(&shared.io_waker);
            if Pin::new(st.io.get_mut()).poll_shutdown(&mut cx).is_ready() {
                st.send.shut = true;
                st.send.linger_until = None;
            }
        }
    }
}
