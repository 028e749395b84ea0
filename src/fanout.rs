//! One publisher, many subscribers: each message announced to every subscriber, never copied
//! per subscriber.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Sink;

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
///   [`SlowSubscriber::Drop`] a subscriber whose window is full when a message is published is
///   dropped with an error, and the others go on.
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
/// use futures::SinkExt;
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

    /// Polls `op` on every subscriber; removes those that fail. Returns whether any is still
    /// pending.
    fn poll_each(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(Pin<&mut Sender>, &mut Context<'_>) -> Poll<Result<()>>,
    ) -> bool {
        let mut pending = false;
        let mut i = 0;
        while i < self.subs.len() {
            match op(Pin::new(&mut self.subs[i].sender), cx) {
                Poll::Ready(Ok(())) => i += 1,
                Poll::Ready(Err(e)) => self.depart(i, e),
                Poll::Pending => {
                    pending = true;
                    i += 1;
                }
            }
        }
        pending
    }
}

impl Sink<Bytes> for Fanout {
    type Error = Error;

    /// Ready once every subscriber has room (or, with [`SlowSubscriber::Drop`], once those
    /// without room are dropped). Never fails: subscribers that fail are removed.
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        let mut pending = false;
        let mut i = 0;
        while i < this.subs.len() {
            let sub = &mut this.subs[i];
            if sub.ready {
                i += 1;
                continue;
            }
            match Pin::new(&mut sub.sender).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    sub.ready = true;
                    i += 1;
                }
                Poll::Ready(Err(e)) => this.depart(i, e),
                Poll::Pending => match this.policy {
                    SlowSubscriber::Wait => {
                        pending = true;
                        i += 1;
                    }
                    SlowSubscriber::Drop => {
                        let (n, bytes) = sub.sender.in_flight();
                        let why = Error::new(
                            ErrorKind::LimitExceeded,
                            format!(
                                "{} was dropped by the publisher: it fell a whole window behind \
                                 ({n} messages, {bytes} bytes not yet pulled); pull faster, or \
                                 have the publisher use SlowSubscriber::Wait or a larger window",
                                sub.id
                            ),
                        );
                        sub.sender.abort(why.clone());
                        this.depart(i, why);
                    }
                },
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
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
        if self.poll_each(cx, |s, cx| s.poll_flush(cx)) {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// Closes every subscriber connection (each after its messages are pulled).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.poll_each(cx, |s, cx| s.poll_close(cx)) {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}
