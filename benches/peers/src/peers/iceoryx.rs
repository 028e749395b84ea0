//! iceoryx2: publish-subscribe of `[u8]` slices in shared memory, with its zero-copy loan: the
//! publisher loans a sample (`loan_slice_uninit`), writes the fresh message straight into it
//! and sends it; the subscriber reads the sample in place and releases it.
//!
//! Lossless configuration (the one iceoryx2 documents for "no sample may be lost"): safe
//! overflow off and `BackpressureStrategy::RetryUntilDelivered`, so a publisher whose
//! subscriber's buffer is full waits (iceoryx2's adaptive wait: it yields, then sleeps
//! 100 µs to 10 ms) instead of overwriting or dropping. History 0 (nothing is sent before
//! the subscriber is there), one publisher, one subscriber, two nodes. The subscriber's buffer
//! holds as many samples as tokio-pvm's default window holds messages (16 MiB, at most 1024,
//! at least 2; see [`buffer_size`]); the publisher's maximum slice length is the message size
//! of the measurement, with the static allocation strategy, so its shared-memory segment is
//! allocated once.
//!
//! Start-up: the receiver creates the services and its ports and prints `READY NAME`; the
//! sender opens them and creates its ports, a listener on the event service `NAME/attached`
//! first. The receiver waits until it sees the publisher, connects its subscriber to it
//! (`update_connections`) and notifies `NAME/attached`; the publisher sends nothing before
//! that notification. Every `send` must then reach one subscriber, or the run fails: nothing
//! is dropped for want of a subscriber.
//!
//! Waking the subscriber ([`Wake`]):
//! * `Event`: an iceoryx2 event service of the same name. The publisher's notifier notifies
//!   after every sample, as iceoryx2's event-based-communication example does; the subscriber
//!   waits in a `WaitSet` attached to its listener, then drains the listener and every sample
//!   that has arrived.
//! * `Spin`: the subscriber calls `receive()` in a loop and never sleeps: one core spins.
//!
//! Latency uses two such services, one each way (`NAME/ping`, `NAME/pong`).
//!
//! Clean-up: every run uses service names no other run uses, and a node whose process was
//! killed is removed by iceoryx2's dead-node clean-up (on by default whenever a node is
//! created, and run explicitly by the orchestrator through the `cleanup` role).

use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::service::port_factory::event::PortFactory as EventFactory;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSubFactory;
use iceoryx2::waitset::WaitSetRunResult;

use super::{Job, Role, linger, ready};
use crate::payload::{Checker, Latencies, Source, check, stamp};

/// How the subscriber learns that samples have arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// An iceoryx2 event per sample, waited for in a `WaitSet`.
    Event,
    /// Busy polling.
    Spin,
}

type Ipc = ipc::Service;
type Pub = Publisher<Ipc, [u8], ()>;
type Sub = Subscriber<Ipc, [u8], ()>;
type Msg = Sample<Ipc, [u8], ()>;

/// How long a sender waits for its peer's ports to appear.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// An iceoryx2 error as text (not every error type implements `Display`).
fn ctx<E: std::fmt::Debug>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e:?}")
}

/// Like [`ctx`], with the context made only on error (see `super::ctx_with`).
fn ctx_with<E: std::fmt::Debug, D: std::fmt::Display>(
    what: impl FnOnce() -> D,
) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e:?}", what())
}

/// Samples a subscriber's buffer holds: tokio-pvm's default window in messages of `size`
/// (16 MiB, at most 1024), at least 2.
pub(crate) fn buffer_size(size: usize) -> usize {
    (tokio_pvm::DEFAULT_WINDOW_BYTES as usize / size)
        .min(tokio_pvm::DEFAULT_WINDOW_MESSAGES as usize)
        .max(2)
}

pub(crate) fn run(role: Role, wake: Wake, job: &Job) -> Result<(), String> {
    set_log_level(LogLevel::Warn);
    match role {
        Role::Recv => recv(wake, job),
        Role::Send => send(wake, job),
        Role::Echo => echo(wake, job),
        Role::Ping => ping(wake, job),
        Role::Cleanup => cleanup(),
    }
}

fn node() -> Result<Node<Ipc>, String> {
    NodeBuilder::new()
        .create::<Ipc>()
        .map_err(ctx("creating an iceoryx2 node"))
}

fn service_name(name: &str) -> Result<ServiceName, String> {
    ServiceName::new(name).map_err(ctx_with(|| format!("service name {name:?}")))
}

/// The publish-subscribe service `name`, created by the receiving side and opened by the
/// sending side with the same settings.
fn pubsub(
    node: &Node<Ipc>,
    name: &str,
    size: usize,
    create: bool,
) -> Result<PubSubFactory<Ipc, [u8], ()>, String> {
    let builder = node
        .service_builder(&service_name(name)?)
        .publish_subscribe::<[u8]>()
        .enable_safe_overflow(false)
        .history_size(0)
        .subscriber_max_buffer_size(buffer_size(size))
        .subscriber_max_borrowed_samples(1)
        .max_publishers(1)
        .max_subscribers(1)
        .max_nodes(2);
    if create {
        builder
            .create()
            .map_err(ctx_with(|| format!("creating service {name}")))
    } else {
        builder
            .open()
            .map_err(ctx_with(|| format!("opening service {name}")))
    }
}

/// The event service that tells the publisher of service `name` its subscriber is connected.
fn attach_name(name: &str) -> String {
    format!("{name}/attached")
}

/// The event service `name` (same name as the publish-subscribe service, another pattern).
fn events(node: &Node<Ipc>, name: &str, create: bool) -> Result<EventFactory<Ipc>, String> {
    let builder = node
        .service_builder(&service_name(name)?)
        .event()
        .max_notifiers(1)
        .max_listeners(1)
        .max_nodes(2);
    if create {
        builder
            .create()
            .map_err(ctx_with(|| format!("creating event service {name}")))
    } else {
        builder
            .open()
            .map_err(ctx_with(|| format!("opening event service {name}")))
    }
}

/// The receiving end of one direction: a subscriber, with events a listener, and the
/// notifier that tells the publisher the subscriber is connected.
struct Inbox {
    service: PubSubFactory<Ipc, [u8], ()>,
    _events: Option<EventFactory<Ipc>>,
    attach_events: EventFactory<Ipc>,
    subscriber: Sub,
    listener: Option<Listener<Ipc>>,
    attached: Notifier<Ipc>,
}

impl Inbox {
    /// Creates the receiving ports on services `name`, created (`create`) or opened.
    fn new(
        node: &Node<Ipc>,
        name: &str,
        size: usize,
        wake: Wake,
        create: bool,
    ) -> Result<Inbox, String> {
        let service = pubsub(node, name, size, create)?;
        let events = match wake {
            Wake::Event => Some(events(node, name, create)?),
            Wake::Spin => None,
        };
        let listener = match &events {
            Some(e) => Some(
                e.listener_builder()
                    .create()
                    .map_err(ctx("creating the listener"))?,
            ),
            None => None,
        };
        let attach_events = self::events(node, &attach_name(name), create)?;
        let attached = attach_events
            .notifier_builder()
            .create()
            .map_err(ctx("creating the attach notifier"))?;
        let subscriber = service
            .subscriber_builder()
            .buffer_size(buffer_size(size))
            .create()
            .map_err(ctx("creating the subscriber"))?;
        Ok(Inbox {
            service,
            _events: events,
            attach_events,
            subscriber,
            listener,
            attached,
        })
    }

    /// The subscriber's half of the start-up handshake: once the peer's publisher and its
    /// attach listener exist, connects the subscriber to the publisher and notifies it.
    /// (Without this, a publisher may fill the subscriber's buffer before the subscriber has
    /// connected, and iceoryx2 then discards the sample rather than wait for a receiver that
    /// may never come.)
    fn attach(&self) -> Result<(), String> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            let publishers = self.service.dynamic_config().number_of_publishers();
            let listeners = self.attach_events.dynamic_config().number_of_listeners();
            if publishers >= 1 && listeners >= 1 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no publisher after {ATTACH_TIMEOUT:?}: {publishers} publisher(s), \
                     {listeners} attach listener(s)"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.subscriber
            .update_connections()
            .map_err(ctx("connecting the subscriber to the publisher"))?;
        let told = self
            .attached
            .notify()
            .map_err(ctx("notifying the publisher"))?;
        if told != 1 {
            return Err(format!(
                "the attach notification reached {told} listeners, expected 1"
            ));
        }
        Ok(())
    }

    /// The next sample, if one has arrived.
    fn try_receive(&self) -> Result<Option<Msg>, String> {
        self.subscriber.receive().map_err(ctx("receiving"))
    }
}

/// Waits for samples: spinning, or in a `WaitSet` attached to the inbox's listener.
struct Waiter<'a> {
    event: Option<(&'a WaitSet<Ipc>, &'a Listener<Ipc>)>,
}

impl Waiter<'_> {
    /// Runs `work` with a waiter for `inbox` (attached to a `WaitSet` once, for all of it).
    fn with<R>(
        inbox: &Inbox,
        work: impl FnOnce(&Waiter<'_>) -> Result<R, String>,
    ) -> Result<R, String> {
        match &inbox.listener {
            None => work(&Waiter { event: None }),
            Some(listener) => {
                let waitset = WaitSetBuilder::new()
                    .create::<Ipc>()
                    .map_err(ctx("creating the WaitSet"))?;
                let _guard = waitset
                    .attach_notification(listener)
                    .map_err(ctx("attaching the listener to the WaitSet"))?;
                work(&Waiter {
                    event: Some((&waitset, listener)),
                })
            }
        }
    }

    /// Returns the next sample, waiting for it as this waiter does.
    fn next(&self, inbox: &Inbox) -> Result<Msg, String> {
        loop {
            if let Some(sample) = inbox.try_receive()? {
                return Ok(sample);
            }
            match self.event {
                None => std::hint::spin_loop(),
                Some((waitset, listener)) => {
                    let woke = waitset
                        .wait_and_process_once(|_| CallbackProgression::Continue)
                        .map_err(ctx("waiting in the WaitSet"))?;
                    if matches!(
                        woke,
                        WaitSetRunResult::TerminationRequest | WaitSetRunResult::Interrupt
                    ) {
                        return Err(format!("stopped by a signal ({woke:?})"));
                    }
                    // Consume the notifications, so that the next wait sleeps until a new one.
                    listener
                        .try_wait(|_| {})
                        .map_err(ctx("reading the listener"))?;
                }
            }
        }
    }
}

/// The sending end of one direction: a publisher, with events a notifier, and the listener
/// that hears when the subscriber is connected.
struct Outbox {
    _service: PubSubFactory<Ipc, [u8], ()>,
    _events: Option<EventFactory<Ipc>>,
    _attach_events: EventFactory<Ipc>,
    attached: Listener<Ipc>,
    publisher: Pub,
    notifier: Option<Notifier<Ipc>>,
    src: Source,
}

impl Outbox {
    /// Creates the sending ports on services `name`, opened (`create` false) or created.
    fn new(
        node: &Node<Ipc>,
        name: &str,
        size: usize,
        wake: Wake,
        create: bool,
    ) -> Result<Outbox, String> {
        let service = pubsub(node, name, size, create)?;
        let events = match wake {
            Wake::Event => Some(events(node, name, create)?),
            Wake::Spin => None,
        };
        let attach_events = self::events(node, &attach_name(name), create)?;
        let attached = attach_events
            .listener_builder()
            .create()
            .map_err(ctx("creating the attach listener"))?;
        let publisher = service
            .publisher_builder()
            .initial_max_slice_len(size)
            .allocation_strategy(AllocationStrategy::Static)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .max_loaned_samples(1)
            .create()
            .map_err(ctx("creating the publisher"))?;
        let notifier = match &events {
            Some(e) => Some(
                e.notifier_builder()
                    .create()
                    .map_err(ctx("creating the notifier"))?,
            ),
            None => None,
        };
        Ok(Outbox {
            _service: service,
            _events: events,
            _attach_events: attach_events,
            attached,
            publisher,
            notifier,
            src: Source::new(size),
        })
    }

    /// The publisher's half of the start-up handshake: waits until the subscriber says it is
    /// connected.
    fn wait_for_peer(&self) -> Result<(), String> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut attached = false;
        while !attached {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no subscriber connected within {ATTACH_TIMEOUT:?}"));
            }
            self.attached
                .timed_wait(|_| attached = true, left)
                .map_err(ctx("waiting for the subscriber"))?;
        }
        Ok(())
    }

    /// Loans a sample, writes message `seq` into it, sends it (to exactly one subscriber)
    /// and notifies.
    fn send(&self, seq: u64) -> Result<(), String> {
        let size = self.src.size();
        let sample = self
            .publisher
            .loan_slice_uninit(size)
            .map_err(ctx_with(|| format!("loaning a sample for message {seq}")))?;
        let mut sample = sample.write_from_slice(self.src.chunk(seq));
        stamp(sample.payload_mut(), seq);
        let reached = sample
            .send()
            .map_err(ctx_with(|| format!("sending message {seq}")))?;
        if reached != 1 {
            return Err(format!(
                "message {seq} reached {reached} subscribers, expected 1"
            ));
        }
        if let Some(notifier) = &self.notifier {
            notifier
                .notify()
                .map_err(ctx_with(|| format!("notifying message {seq}")))?;
        }
        Ok(())
    }
}

fn recv(wake: Wake, job: &Job) -> Result<(), String> {
    let node = node()?;
    let inbox = Inbox::new(&node, &job.addr, job.size, wake, true)?;
    ready(&job.addr);
    inbox.attach()?;
    let mut checker = Checker::new(job.size, job.count);
    Waiter::with(&inbox, |waiter| {
        while !checker.done() {
            let sample = waiter.next(&inbox)?;
            checker.take(sample.payload())?;
        }
        Ok(())
    })?;
    checker.report()
}

fn send(wake: Wake, job: &Job) -> Result<(), String> {
    let node = node()?;
    let outbox = Outbox::new(&node, &job.addr, job.size, wake, false)?;
    outbox.wait_for_peer()?;
    for seq in 0..job.count {
        outbox.send(seq)?;
    }
    // The samples live in this process's data segment: stay until the receiver has them.
    linger()
}

fn echo(wake: Wake, job: &Job) -> Result<(), String> {
    let node = node()?;
    let inbox = Inbox::new(&node, &format!("{}/ping", job.addr), job.size, wake, true)?;
    let outbox = Outbox::new(&node, &format!("{}/pong", job.addr), job.size, wake, true)?;
    ready(&job.addr);
    inbox.attach()?;
    outbox.wait_for_peer()?;
    Waiter::with(&inbox, |waiter| {
        for seq in 0..job.count {
            let sample = waiter.next(&inbox)?;
            check(sample.payload(), job.size, seq)?;
            drop(sample);
            outbox.send(seq)?;
        }
        Ok(())
    })?;
    // The last answer lives in this process's data segment: stay until the pinger has it.
    linger()
}

fn ping(wake: Wake, job: &Job) -> Result<(), String> {
    let node = node()?;
    let outbox = Outbox::new(&node, &format!("{}/ping", job.addr), job.size, wake, false)?;
    let inbox = Inbox::new(&node, &format!("{}/pong", job.addr), job.size, wake, false)?;
    inbox.attach()?;
    outbox.wait_for_peer()?;
    let mut lat = Latencies::new(job.warmup, job.count);
    Waiter::with(&inbox, |waiter| {
        for i in 0..job.warmup + job.count {
            let started = Instant::now();
            outbox.send(i)?;
            let answer = waiter.next(&inbox)?;
            check(answer.payload(), job.size, i)?;
            drop(answer);
            lat.record(i, started);
        }
        Ok(())
    })?;
    lat.report()
}

/// Removes the resources of nodes whose process died (a killed child), and says how many.
fn cleanup() -> Result<(), String> {
    let mut cleaned = 0;
    let mut failed = Vec::new();
    Node::<Ipc>::list(Config::global_config(), |state| {
        if let NodeState::Dead(view) = state {
            match view.try_remove_stale_resources() {
                Ok(()) => cleaned += 1,
                Err(e) => failed.push(format!("{e:?}")),
            }
        }
        CallbackProgression::Continue
    })
    .map_err(ctx("listing iceoryx2 nodes"))?;
    if !failed.is_empty() {
        return Err(format!(
            "removed {cleaned} dead node(s), failed on {}: {}",
            failed.len(),
            failed.join(", ")
        ));
    }
    println!("CLEANED {cleaned}");
    Ok(())
}
