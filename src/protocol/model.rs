//! Property tests of the window and acknowledgement bookkeeping, on [`SendState`] and
//! [`RecvState`] alone: no socket, no pulls, no runtime.
//!
//! A sender and a receiver exchange frames through two queues, in an order proptest chooses:
//! sends, deliveries of frames each way, pulls started and finished in any grouping,
//! acknowledgements (urgent ones, and the lazy ones that travel with the receiver's own
//! writes), SYNCs from a sender that waits, reads by the application, close, and the
//! receiving application going away. At every step: nothing exceeds the window, the receive buffer stays bounded, the
//! application gets messages in order and intact, and a well-behaved peer never trips a
//! protocol check. At the end, with everything drained (the receiver writing nothing but the
//! acknowledgements it finds urgent, the sender asking for them before it waits): every
//! message was delivered exactly once (or, if the receiver was dropped, acknowledged all the
//! same), and the stream ended cleanly.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::Negotiated;
use super::recv::{Incoming, Pull, RecvState};
use super::send::SendState;

const WINDOW: u32 = 6;
const WINDOW_BYTES: u64 = 20_000;
const MAX_LEN: usize = 9_000;

fn limits() -> Negotiated {
    Negotiated {
        send_window_messages: WINDOW,
        send_window_bytes: WINDOW_BYTES,
        send_max_message: MAX_LEN as u64,
        recv_max_message: MAX_LEN as u64,
        inline_threshold: 256,
        batch_body_max: 1 << 16,
        recv_window_messages: WINDOW,
        recv_window_bytes: WINDOW_BYTES,
        blocking_threshold: 1 << 21,
        max_pulls_in_flight: 4,
        pool_bytes: 0,
        pull_timeout: Duration::from_secs(1),
        linger: Duration::from_secs(1),
    }
}

/// Message `seq`: its length from `len`, its first bytes its sequence number.
fn message(seq: u64, len: usize) -> Bytes {
    let mut v = vec![seq as u8; len];
    if len >= 8 {
        v[..8].copy_from_slice(&seq.to_le_bytes());
    }
    v.into()
}

#[derive(Debug, Clone)]
enum Step {
    /// The application sends a message of this length, if the window has room.
    Send(usize),
    /// The next frame from the sender reaches the receiver.
    ToReceiver,
    /// The receiver starts pulls while its buffer has room.
    StartPulls,
    /// The first `n` started pulls finish (and pass the hang-up check).
    FinishPulls(usize),
    /// The receiver queues its acknowledgement if it is urgent.
    Ack,
    /// The receiver writes something of its own, which takes any acknowledgement along.
    Piggyback,
    /// The sending application waits for acknowledgements (a flush): SYNC, if needed.
    Sync,
    /// The next frame from the receiver reaches the sender.
    ToSender,
    /// The receiving application takes a message.
    Read,
    /// The sending application closes (once everything is acknowledged, as `close` waits).
    Close,
    /// The receiving application drops its half.
    DropReceiver,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..MAX_LEN).prop_map(Step::Send),
        4 => Just(Step::ToReceiver),
        3 => Just(Step::StartPulls),
        3 => (1..4usize).prop_map(Step::FinishPulls),
        3 => Just(Step::Ack),
        1 => Just(Step::Piggyback),
        1 => Just(Step::Sync),
        4 => Just(Step::ToSender),
        3 => Just(Step::Read),
        1 => Just(Step::Close),
    ]
}

enum ToReceiver {
    Message { seq: u64, data: Bytes },
    Sync { sent: u64 },
    Close { sent: u64 },
}

enum ToSender {
    Ack(u64),
    Stop,
}

#[derive(Default)]
struct World {
    send: SendState,
    recv: RecvState,
    forward: VecDeque<ToReceiver>,
    back: VecDeque<ToSender>,
    /// Messages the receiving application got, in order.
    delivered: u64,
    closed: bool,
    receiver_dropped: bool,
    stop_sent: bool,
}

impl World {
    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let l = limits();
        match *step {
            Step::Send(len) => {
                if !self.closed && !self.send.stopped() {
                    if self.send.window_open(&l) {
                        let seq = self.send.sent();
                        let data = message(seq, len);
                        self.send.push(len as u64, data.clone());
                        self.forward.push_back(ToReceiver::Message { seq, data });
                    } else {
                        // The sender waits for room.
                        self.apply(&Step::Sync)?;
                    }
                }
            }
            Step::Sync => {
                if self.send.sync_needed() {
                    let sent = self.send.sync_queued();
                    self.forward.push_back(ToReceiver::Sync { sent });
                }
            }
            Step::ToReceiver => match self.forward.pop_front() {
                Some(ToReceiver::Message { seq, data }) => {
                    let len = data.len() as u64;
                    // Every message carries its payload: the model's pull hands it over.
                    let r = self.recv.on_message(seq, len, Incoming::Inline(data), &l);
                    prop_assert!(r.is_ok(), "a well-behaved sender was refused: {:?}", r);
                }
                Some(ToReceiver::Sync { sent }) => {
                    let r = self.recv.on_sync(sent);
                    prop_assert!(r.is_ok(), "SYNC refused: {:?}", r);
                }
                Some(ToReceiver::Close { sent }) => {
                    let r = self.recv.on_close(sent);
                    prop_assert!(r.is_ok(), "CLOSE refused: {:?}", r);
                }
                None => {}
            },
            Step::StartPulls => {
                while self.recv.room(&l) > 0 {
                    let Some(Incoming::Inline(data)) = self.recv.queue.pop_front() else {
                        break;
                    };
                    let len = data.len() as u64;
                    self.recv
                        .pull_started(Pull::Done { data, check: true }, len);
                }
            }
            Step::FinishPulls(n) => {
                let n = n.min(self.recv.pulls.len());
                self.recv.pulls_done(n);
            }
            Step::Ack => {
                if self.recv.ack_urgent(&l) {
                    self.apply(&Step::Piggyback)?;
                }
            }
            Step::Piggyback => {
                if let Some(count) = self.recv.ack_due() {
                    self.recv.ack_queued();
                    self.back.push_back(ToSender::Ack(count));
                }
            }
            Step::ToSender => match self.back.pop_front() {
                Some(ToSender::Ack(count)) => {
                    let r = self.send.on_ack(count);
                    prop_assert!(r.is_ok(), "ACK refused: {:?}", r);
                }
                Some(ToSender::Stop) => {
                    let r = self.send.on_stop();
                    prop_assert!(r.is_ok(), "STOP refused: {:?}", r);
                }
                None => {}
            },
            Step::Read => {
                if !self.receiver_dropped
                    && let Some(data) = self.recv.pop()
                {
                    let seq = self.delivered;
                    let want = message(seq, data.len());
                    prop_assert_eq!(&data, &want, "message {} out of order or damaged", seq);
                    self.delivered += 1;
                }
            }
            Step::Close => {
                // Closing waits until everything is acknowledged.
                self.apply(&Step::Sync)?;
                if !self.closed && self.send.all_acknowledged() {
                    self.closed = true;
                    self.forward.push_back(ToReceiver::Close {
                        sent: self.send.sent(),
                    });
                }
            }
            Step::DropReceiver => {
                if !self.receiver_dropped {
                    self.receiver_dropped = true;
                    self.recv.drop_all();
                    if !self.recv.peer_closed() {
                        self.stop_sent = true;
                        self.back.push_back(ToSender::Stop);
                    }
                }
            }
        }
        self.check_bounds()
    }

    fn check_bounds(&self) -> Result<(), TestCaseError> {
        let (n, bytes) = self.send.in_flight();
        prop_assert!(n <= WINDOW as usize, "{} in flight", n);
        prop_assert!(
            bytes < WINDOW_BYTES + MAX_LEN as u64,
            "{} bytes in flight",
            bytes
        );
        let (ready, ready_bytes) = self.recv.buffered();
        prop_assert!(ready <= WINDOW as usize, "{} buffered", ready);
        prop_assert!(
            ready_bytes < WINDOW_BYTES + MAX_LEN as u64,
            "{} bytes buffered",
            ready_bytes
        );
        let held = ready + self.recv.queue.len() + self.recv.pulls.len();
        prop_assert!(held <= 2 * WINDOW as usize, "{} held by the receiver", held);
        Ok(())
    }

    /// Runs every step until nothing moves: the application reads everything, then closes.
    /// The receiver writes only urgent acknowledgements: a sender that waits must have asked.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        let all = [
            Step::ToReceiver,
            Step::StartPulls,
            Step::FinishPulls(usize::MAX),
            Step::Ack,
            Step::ToSender,
            Step::Read,
        ];
        for _ in 0..10_000 {
            for s in &all {
                self.apply(s)?;
            }
            let quiet = self.forward.is_empty()
                && self.back.is_empty()
                && (self.receiver_dropped || !self.recv.has_ready())
                && self.recv.idle();
            if quiet {
                if self.closed {
                    return Ok(());
                }
                self.apply(&Step::Close)?;
            }
        }
        Err(TestCaseError::fail("the connection never settled"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_arrives_once_in_order_within_the_window(
        steps in proptest::collection::vec(step(), 0..400),
        drop_at in proptest::option::weighted(0.25, 0..400usize),
    ) {
        let mut w = World::default();
        for (i, s) in steps.iter().enumerate() {
            if drop_at == Some(i) {
                w.apply(&Step::DropReceiver)?;
            }
            w.apply(s)?;
        }
        w.drain()?;
        prop_assert!(w.send.all_acknowledged(), "{:?} still in flight", w.send.in_flight());
        prop_assert!(w.recv.ended_cleanly());
        if w.receiver_dropped {
            prop_assert!(w.delivered <= w.send.sent());
        } else {
            prop_assert_eq!(w.delivered, w.send.sent(), "every message delivered once");
            prop_assert_eq!(w.recv.unacknowledged(), 0);
        }
    }

    /// A sender that ignores the window is refused as soon as it overruns it, never later.
    #[test]
    fn an_overrun_is_caught_at_the_first_message_beyond_the_window(
        lens in proptest::collection::vec(0..MAX_LEN, 1..40)
    ) {
        let l = limits();
        let mut recv = RecvState::default();
        let (mut n, mut bytes) = (0u64, 0u64);
        for (seq, len) in lens.iter().enumerate() {
            let over = n >= u64::from(WINDOW) || bytes >= WINDOW_BYTES;
            let r = recv.on_message(seq as u64, *len as u64, Incoming::Inline(message(seq as u64, *len)), &l);
            prop_assert_eq!(r.is_err(), over, "message {} ({} in, {} bytes)", seq, n, bytes);
            if over {
                break;
            }
            n += 1;
            bytes += *len as u64;
        }
    }
}
