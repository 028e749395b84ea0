//! One publisher, many subscribers: each message announced to every subscriber, never copied
//! per subscriber.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use bytes::Bytes;
use futures_sink::Sink;

use crate::config::{Config, SlowSubscriber};
use crate::connection::{Connection, Sender};
use crate::error::{Error, ErrorKind, Result};

/// Identifies a subscriber of a [`Fanout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(u64);

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscriber {}", self.0)
    }
}

#[derive(Debug)]
struct Subscriber {
    id: SubscriberId,
    sender: Sender,
    /// `poll_ready` returned `Ready` for it since the last `start_send`.
    ready: bool,
    /// Since when it has kept the publisher waiting (its window full, or, while the publisher
    /// flushes or closes, acknowledging nothing), under [`SlowSubscriber::Drop`].
    stalled_since: Option<Instant>,
}

/// A [`Sink`] of [`Bytes`] that delivers every message to every subscriber connection.
///
/// A message is taken once and announced to each subscriber; each subscriber pulls it out of
/// this process's memory itself, so the payload is not copied per subscriber in this process,
/// and the buffer is released when the last subscriber has pulled it. (As on any connection,
/// messages up to the inline threshold, 256 B by default, and every message to a subscriber
/// in [`Mode::Inline`](crate::Mode::Inline) travel inside the frame instead: those are
/// copied into each subscriber's socket.) (each connection holds a
/// reference until its subscriber acknowledges). Subscribers only receive: add a
/// [`Connection`] with [`Fanout::subscribe`] (its receiving half is dropped, so a message a
/// subscriber sends ends its subscription) or a [`Sender`] with [`Fanout::subscribe_sender`].
///
/// - **Flow control** follows [`Config::slow_subscriber`]: with [`SlowSubscriber::Wait`]
///   `poll_ready` waits until every subscriber has room in its window; with
///   [`SlowSubscriber::Drop`] it waits for a subscriber without room (or, in `flush` and
///   `close`, one that acknowledges nothing) for at most [`Config::slow_subscriber_grace`]
///   (1 s), then drops that subscriber with an error, and the others go on.
/// - **Joining and leaving** happen between messages: [`Fanout::subscribe`] and
///   [`Fanout::unsubscribe`] take `&mut self`. A subscriber receives the messages published
///   after it joined. A subscriber that goes away (exits, is killed, closes its connection) is
///   removed at the next operation that notices, its buffers are released, and the reason is
///   kept for [`Fanout::take_departed`]; it never blocks the others.
/// - **`flush`** completes once every current subscriber has pulled every message;
///   **`close`** closes every subscriber connection. A message published while there is no
///   subscriber is dropped.
///
/// Progress on a subscriber's connection (its acknowledgements) happens while the fanout is
/// polled; a publisher that goes idle for long should `flush` so buffers are released
/// promptly. Cancel safety is that of [`Connection`]'s sink methods.
///
/// ```no_run
/// use bytes::Bytes;
/// use futures_util::SinkExt;
/// use tokio_pvm::{Config, Fanout, Listener, SlowSubscriber};
///
/// # async fn run() -> tokio_pvm::Result<()> {
/// let listener = Listener::bind("/tmp/prices.sock")?;
/// let mut fanout = Fanout::new(&Config::new().slow_subscriber(SlowSubscriber::Drop));
/// for _ in 0..4 {
///     fanout.subscribe(listener.accept().await?);
/// }
/// let tick = Bytes::from(vec![0u8; 1 << 20]);
/// fanout.send(tick).await?; // announced 4 times, pulled 4 times, copied 0 times here
/// for (id, why) in fanout.take_departed() {
///     eprintln!("{id} left: {why}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Fanout {
    subs: Vec<Subscriber>,
    policy: SlowSubscriber,
    grace: Duration,
    /// Wakes the publisher's task when the earliest grace time of a stalled subscriber ends.
    grace_timer: Option<Pin<Box<Sleep>>>,
    next_id: u64,
    departed: Vec<(SubscriberId, Error)>,
}

impl Default for Fanout {
    fn default() -> Fanout {
        Fanout::new(&Config::default())
    }
}

impl Fanout {
    /// An empty fanout, with the slow-subscriber policy of `config`.
    pub fn new(config: &Config) -> Fanout {
        Fanout {
            subs: Vec::new(),
            policy: config.slow_subscriber,
            grace: config.slow_subscriber_grace,
            grace_timer: None,
            next_id: 0,
            departed: Vec::new(),
        }
    }

    /// Adds `conn` as a subscriber; its receiving half is dropped.
    pub fn subscribe(&mut self, conn: Connection) -> SubscriberId {
        let (sender, receiver) = conn.split();
        drop(receiver);
        self.subscribe_sender(sender)
    }

    /// Adds the sending half of a connection as a subscriber.
    pub fn subscribe_sender(&mut self, sender: Sender) -> SubscriberId {
        let id = SubscriberId(self.next_id);
        self.next_id += 1;
        self.subs.push(Subscriber {
            id,
            sender,
            ready: false,
            stalled_since: None,
        });
        id
    }

    /// Removes a subscriber and hands its sender back (to `close().await` it, for example).
    /// Messages already announced to it stay in flight on that connection.
    pub fn unsubscribe(&mut self, id: SubscriberId) -> Option<Sender> {
        let i = self.subs.iter().position(|s| s.id == id)?;
        Some(self.subs.remove(i).sender)
    }

    /// The current subscribers.
    pub fn subscribers(&self) -> impl Iterator<Item = SubscriberId> + '_ {
        self.subs.iter().map(|s| s.id)
    }

    /// The number of current subscribers.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether there is no subscriber.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// The subscribers removed since the last call, with the reason: the connection failed or
    /// was closed by the subscriber, or the slow-subscriber policy dropped it.
    pub fn take_departed(&mut self) -> Vec<(SubscriberId, Error)> {
        std::mem::take(&mut self.departed)
    }

    /// Messages announced and not yet acknowledged, summed over the subscribers, and their
    /// bytes (a message in flight to three subscribers counts three times; its buffer exists
    /// once).
    pub fn in_flight(&self) -> (usize, u64) {
        self.subs.iter().fold((0, 0), |(n, b), s| {
            let (sn, sb) = s.sender.in_flight();
            (n + sn, b + sb)
        })
    }

    /// Removes subscriber `i`, dropping its connection (buffers are released after its socket
    /// is shut down), and records why.
    fn depart(&mut self, i: usize, why: Error) {
        let sub = self.subs.swap_remove(i);
        tracing::debug!(subscriber = sub.id.0, error = %why, "subscriber removed");
        self.departed.push((sub.id, why));
    }

    /// Drops subscriber `i`, which kept the publisher waiting for the whole grace time.
    fn drop_slow(&mut self, i: usize) {
        let sub = &self.subs[i];
        let (n, bytes) = sub.sender.in_flight();
        let why = Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "{} was dropped by the publisher: its window stayed full (or, while the \
                 publisher flushed, it acknowledged nothing) for {:?} ({n} messages, {bytes} \
                 bytes not yet pulled); pull faster, or have the publisher \
                 use SlowSubscriber::Wait, a longer Config::slow_subscriber_grace or a larger \
                 window",
                sub.id, self.grace
            ),
        );
        tracing::warn!(subscriber = sub.id.0, "{why}");
        sub.sender.abort(why.clone());
        self.depart(i, why);
    }

    /// Polls `op` on every subscriber: `Ready` once it is `Ready` for all of them (those that
    /// fail are removed). Under [`SlowSubscriber::Drop`], one that stays pending for the grace
    /// time is dropped, and a timer wakes the task when the earliest grace time ends.
    fn poll_subscribers(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&mut Subscriber, &mut Context<'_>) -> Poll<Result<()>>,
    ) -> Poll<()> {
        loop {
            let mut pending = false;
            // The earliest moment a stalled subscriber's grace time ends.
            let mut wake_at: Option<Instant> = None;
            let mut i = 0;
            while i < self.subs.len() {
                match op(&mut self.subs[i], cx) {
                    Poll::Ready(Ok(())) => {
                        self.subs[i].stalled_since = None;
                        i += 1;
                    }
                    Poll::Ready(Err(e)) => self.depart(i, e),
                    Poll::Pending if self.policy == SlowSubscriber::Drop => {
                        let now = Instant::now();
                        let since = *self.subs[i].stalled_since.get_or_insert(now);
                        // A grace too long to add up (Duration::MAX: "never") never ends.
                        match since.checked_add(self.grace) {
                            Some(ends) if now >= ends => self.drop_slow(i),
                            ends => {
                                pending = true;
                                if let Some(ends) = ends {
                                    wake_at = Some(wake_at.map_or(ends, |w| w.min(ends)));
                                }
                                i += 1;
                            }
                        }
                    }
                    Poll::Pending => {
                        pending = true;
                        i += 1;
                    }
                }
            }
            if !pending {
                self.grace_timer = None;
                return Poll::Ready(());
            }
            let Some(at) = wake_at else {
                return Poll::Pending;
            };
            let timer = self
                .grace_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // A grace time ended while we looked: look again.
        }
    }
}

impl Sink<Bytes> for Fanout {
    type Error = Error;

    /// Ready once every subscriber has room (or, with [`SlowSubscriber::Drop`], once those
    /// that stayed without room for the grace time are dropped). Never fails: subscribers
    /// that fail are removed.
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_subscribers(cx, |sub, cx| {
            if sub.ready {
                return Poll::Ready(Ok(()));
            }
            let r = Pin::new(&mut sub.sender).poll_ready(cx);
            sub.ready = matches!(r, Poll::Ready(Ok(())));
            r
        })
        .map(Ok)
    }

    /// Announces `item` to every subscriber (a reference each, no copy). Subscribers that fail
    /// are removed; this never fails.
    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<()> {
        let this = &mut *self;
        let mut i = 0;
        while i < this.subs.len() {
            let sub = &mut this.subs[i];
            // A subscriber that joined after `poll_ready` has not been polled for room.
            if !std::mem::take(&mut sub.ready) {
                i += 1;
                continue;
            }
            match Pin::new(&mut sub.sender).start_send(item.clone()) {
                Ok(()) => i += 1,
                Err(e) => this.depart(i, e),
            }
        }
        Ok(())
    }

    /// Ready once every subscriber has pulled every message announced to it.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_subscribers(cx, |sub, cx| Pin::new(&mut sub.sender).poll_flush(cx))
            .map(Ok)
    }

    /// Closes every subscriber connection (each after its messages are pulled).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.poll_subscribers(cx, |sub, cx| Pin::new(&mut sub.sender).poll_close(cx))
            .map(Ok)
    }
}
