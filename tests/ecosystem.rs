//! tokio-pvm inside the Tokio ecosystem: graceful shutdown of a `Listener` and its
//! connections, `accept()` and `next()` in `select!` loops, `futures` combinators,
//! `tokio-stream` wrappers, and `Connection::pair()` in tests.
//!
//! The graceful-shutdown test runs its client in another process, with the child roles of
//! `tests/util` (role `send_until_closed`).

mod util;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio::task::JoinSet;
use tokio_pvm::{Connection, ErrorKind, Listener};
use tokio_util::sync::CancellationToken;
use util::{pattern, size_of};

/// Every test finishes within this, or fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test did not finish in time")
}

/// A fresh directory for one test's socket, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tokio-pvm-ecosystem-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("s.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

child_entry!();

/// Runs this test binary as a child playing `role` (see `tests/util`); returns its `RESULT`
/// lines once it has exited successfully.
async fn run_child(role: &str, args: &[&str]) -> Vec<String> {
    let child = util::ChildProc::spawn(role, args);
    let role = role.to_owned();
    let (ok, lines) = tokio::task::spawn_blocking(move || child.finish(LIMIT))
        .await
        .unwrap();
    assert!(ok, "child {role} failed: {lines:?}");
    lines
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

/// The server of the `Listener` documentation's shutdown example, counting and checking what
/// each connection delivers. `first` hears of the first message.
async fn serve(
    listener: Listener,
    shutdown: CancellationToken,
    first: tokio::sync::mpsc::Sender<()>,
) -> Vec<Result<u64, tokio_pvm::Error>> {
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok(conn) => {
                    handlers.spawn(handle(conn, shutdown.clone(), first.clone()));
                }
                Err(e) => panic!("accept: {e}"),
            },
            _ = shutdown.cancelled() => break,
        }
    }
    listener.close();
    let mut results = Vec::new();
    while let Some(done) = handlers.join_next().await {
        results.push(done.unwrap());
    }
    results
}

async fn handle(
    conn: Connection,
    shutdown: CancellationToken,
    first: tokio::sync::mpsc::Sender<()>,
) -> Result<u64, tokio_pvm::Error> {
    let (mut tx, mut rx) = conn.split();
    let mut seq = 0u64;
    let mut process = |msg: Bytes| {
        assert!(
            msg == pattern(seq, size_of(seq)),
            "message {seq} corrupted or out of order"
        );
        if seq == 0 {
            let _ = first.try_send(());
        }
        seq += 1;
    };
    loop {
        let msg = tokio::select! {
            msg = rx.next() => msg,
            _ = shutdown.cancelled() => break,
        };
        match msg {
            Some(msg) => process(msg?),
            None => break,
        }
    }
    let finish = async {
        let drain = async {
            while let Some(msg) = rx.next().await {
                process(msg?);
            }
            Ok(())
        };
        let (closed, drained) = tokio::join!(tx.close(), drain);
        closed.and(drained)
    };
    tokio::time::timeout(Duration::from_secs(5), finish)
        .await
        .expect("the client finished within the grace period")?;
    Ok(seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_delivers_what_a_client_in_another_process_still_sends() {
    within(async {
        let dir = TempDir::new("graceful");
        let path = dir.sock();
        let listener = Listener::bind(&path).unwrap();
        let shutdown = CancellationToken::new();
        let (first_tx, mut first_rx) = tokio::sync::mpsc::channel(1);
        let server = tokio::spawn(serve(listener, shutdown.clone(), first_tx));

        let p = path.to_str().unwrap().to_owned();
        let client =
            tokio::spawn(async move { run_child("send_until_closed", &[&p, "800"]).await });

        // Shut down while the client is in the middle of sending.
        first_rx.recv().await.expect("the first message arrived");
        shutdown.cancel();

        // Stopping accepting is immediate: the socket file goes, and a new client is told
        // that nobody listens, while the old connection is still finishing.
        while path.exists() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let err = Connection::connect(&path).await.unwrap_err();
        assert!(
            !server.is_finished(),
            "the old connection is still finishing"
        );
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("no listener at"), "{err}");
        assert_eq!(
            std::io::Error::from(err).kind(),
            std::io::ErrorKind::NotFound
        );

        let results = server.await.unwrap();
        let lines = client.await.unwrap();
        let sent: u64 = lines
            .iter()
            .find_map(|l| l.strip_prefix("sent "))
            .expect("the child reports what it sent")
            .parse()
            .unwrap();
        assert!(sent > 800, "{lines:?}");
        assert_eq!(results.len(), 1);
        let got = results[0].as_ref().expect("the handler finished cleanly");
        assert_eq!(*got, sent, "every message sent was delivered, in order");
        assert!(lines.contains(&"end none".to_owned()), "{lines:?}");
        assert!(lines.contains(&"close ok".to_owned()), "{lines:?}");
    })
    .await;
}

/// Handshakes the listener holds, under way or finished (its `Debug` output shows them).
fn held(listener: &Listener) -> usize {
    let debug = format!("{listener:?}");
    let n = debug.split("handshakes: ").nth(1).unwrap();
    n.split(',').next().unwrap().parse().unwrap()
}

/// Polls `accept` once at a time, dropping each future while it is pending, until it has taken
/// in one more socket and started its handshake. Returns a connection instead if a handshake
/// finished within that one poll (possible only if the thread was preempted in between).
async fn start_handshake(listener: &mut Listener) -> Option<Connection> {
    let before = held(listener);
    loop {
        if let Some(conn) = futures::FutureExt::now_or_never(listener.accept()) {
            return Some(conn.unwrap());
        }
        if held(listener) > before {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A client whose handshake has finished, and whose connection the listener holds for the
/// next `accept`: the accept future that took it in was dropped.
async fn handshaken_not_accepted(listener: &mut Listener, path: &std::path::Path) -> Connection {
    loop {
        let client = tokio::spawn({
            let path = path.to_owned();
            async move { Connection::connect(&path).await }
        });
        if start_handshake(listener).await.is_none() {
            let client = client.await.unwrap().expect("its handshake completes");
            // The server's side finishes a moment after the client's.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return client;
        }
        // Handed out at once: try again.
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_listener_refuses_what_it_has_not_handed_out() {
    within(async {
        let dir = TempDir::new("refuse");
        let path = dir.sock();
        let mut listener = Listener::bind(&path).unwrap();

        // Accepted before the close: keeps working afterwards.
        let (kept, mut kept_client) = tokio::join!(listener.accept(), Connection::connect(&path));
        let mut kept = kept.unwrap();
        let kept_client = kept_client.as_mut().unwrap();

        // In the handshake: a client that never sends its HELLO.
        let mut raw = tokio::net::UnixStream::connect(&path).await.unwrap();
        assert!(start_handshake(&mut listener).await.is_none());

        // Handshaken, but not yet returned by accept.
        let mut handshaken = handshaken_not_accepted(&mut listener, &path).await;

        // In the backlog: nobody calls accept for it.
        let backlog = tokio::spawn({
            let path = path.clone();
            async move { Connection::connect(&path).await }
        });
        // Long enough for it to connect and send its HELLO.
        tokio::time::sleep(Duration::from_millis(50)).await;

        listener.close();

        let err = backlog.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
        assert!(err.to_string().contains("closed before accepting"), "{err}");

        let err = handshaken.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
        assert!(err.to_string().contains("closed before accepting"), "{err}");
        assert!(handshaken.send(Bytes::from_static(b"x")).await.is_err());

        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut bytes)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("closed before accepting"), "{text:?}");

        let err = Connection::connect(&path).await.unwrap_err();
        assert_eq!(
            std::io::Error::from(err).kind(),
            std::io::ErrorKind::NotFound
        );

        // The accepted connection does not depend on the listener.
        for i in 0..10u64 {
            let (sent, got) = tokio::join!(kept_client.send(pattern(i, 70_000)), kept.next());
            sent.unwrap();
            assert_eq!(got.unwrap().unwrap(), pattern(i, 70_000));
        }
        let (a, b) = tokio::join!(kept.close(), kept_client.next());
        a.unwrap();
        assert!(b.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_in_select_with_a_1ms_timer_loses_no_connection() {
    within(async {
        let dir = TempDir::new("select-accept");
        let path = dir.sock();
        let listener = Listener::bind(&path).unwrap();
        const CLIENTS: u64 = 20;
        let mut clients = JoinSet::new();
        for id in 0..CLIENTS {
            let path = path.clone();
            clients.spawn(async move {
                tokio::time::sleep(Duration::from_micros(id * 500)).await;
                let mut conn = Connection::connect(&path).await.unwrap();
                conn.send(Bytes::copy_from_slice(&id.to_le_bytes()))
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            });
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        let mut ticks = 0u32;
        // Times an accept future was dropped while the listener held handshakes under way or
        // finished (its Debug output shows how many).
        let mut dropped_busy = 0u32;
        let mut handlers = JoinSet::new();
        let mut accepted = 0;
        while accepted < CLIENTS {
            let busy = held(&listener) > 0;
            tokio::select! {
                conn = listener.accept() => {
                    let mut conn = conn.unwrap();
                    accepted += 1;
                    handlers.spawn(async move {
                        let id = conn.next().await.unwrap().unwrap();
                        assert!(conn.next().await.is_none());
                        u64::from_le_bytes(id[..].try_into().unwrap())
                    });
                }
                _ = ticker.tick() => {
                    ticks += 1;
                    dropped_busy += u32::from(busy);
                }
                _ = tokio::task::yield_now() => dropped_busy += u32::from(busy),
            }
        }
        assert!(
            dropped_busy > 0,
            "accept was cancelled with handshakes held"
        );
        let ids: BTreeSet<u64> = handlers.join_all().await.into_iter().collect();
        assert_eq!(ids, (0..CLIENTS).collect());
        clients.join_all().await;
        assert!(ticks > 1, "the timer branch won sometimes ({ticks} ticks)");
        // Nothing is left over.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), listener.accept())
                .await
                .is_err()
        );
    })
    .await;
}

#[tokio::test]
async fn a_finished_handshake_waits_for_the_next_accept() {
    within(async {
        let dir = TempDir::new("queued");
        let path = dir.sock();
        let mut listener = Listener::bind(&path).unwrap();
        let mut client = handshaken_not_accepted(&mut listener, &path).await;
        assert_eq!(held(&listener), 1);
        // The connection the listener holds already receives, as one in a socket's backlog
        // does: the client's send (which waits for the acknowledgement) completes before
        // anything accepts it.
        client.send(Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(held(&listener), 1);
        let mut server = listener.accept().await.unwrap();
        assert_eq!(
            server.next().await.unwrap().unwrap(),
            Bytes::from_static(b"hi")
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// futures combinators

#[tokio::test]
async fn send_all_and_receiver_map_take_collect() {
    within(async {
        let (a, b) = Connection::pair().await.unwrap();
        let (mut tx, _a_rx) = a.split();
        let (_b_tx, mut rx) = b.split();
        let sending = async {
            let mut msgs = futures::stream::iter((0..500u64).map(|i| Ok(pattern(i, size_of(i)))));
            tx.send_all(&mut msgs).await.unwrap();
            tx.close().await.unwrap();
        };
        let receiving = async {
            let first: Vec<usize> = rx
                .by_ref()
                .map(|m| m.unwrap().len())
                .take(100)
                .collect()
                .await;
            let rest: Vec<Bytes> = rx.by_ref().try_collect().await.unwrap();
            (first, rest)
        };
        let ((), (first, rest)) = tokio::join!(sending, receiving);
        assert_eq!(first, (0..100).map(size_of).collect::<Vec<_>>());
        assert_eq!(rest.len(), 400);
        for (i, m) in (100..).zip(&rest) {
            assert_eq!(m, &pattern(i, size_of(i)));
        }
        assert!(rx.next().await.is_none(), "the stream stays ended");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_relays_one_connection_into_another() {
    within(async {
        // source -> [relay_in  =forward=>  relay_out] -> sink
        let (source, relay_in) = Connection::pair().await.unwrap();
        let (relay_out, sink) = Connection::pair().await.unwrap();
        let (mut source_tx, _source_rx) = source.split();
        let (_in_tx, in_rx) = relay_in.split();
        let (out_tx, _out_rx) = relay_out.split();
        // Receiver yields Result<Bytes, Error>, Sender is Sink<Bytes, Error = Error>.
        let relay = tokio::spawn(in_rx.forward(out_tx));
        let producer = tokio::spawn(async move {
            let msgs = futures::stream::iter((0..300u64).map(|i| pattern(i, size_of(i))));
            msgs.map(Ok).forward(&mut source_tx).await.unwrap();
            source_tx
        });
        let got: Vec<Bytes> = sink.try_collect().await.unwrap();
        assert_eq!(got.len(), 300);
        for (i, m) in (0..).zip(&got) {
            assert_eq!(m, &pattern(i, size_of(i)));
        }
        relay.await.unwrap().unwrap();
        drop(producer.await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn sink_with_maps_items_into_bytes() {
    within(async {
        let (a, b) = Connection::pair().await.unwrap();
        let (tx, _rx) = a.split();
        let mut lines =
            tx.with(|s: String| futures::future::ok::<_, tokio_pvm::Error>(Bytes::from(s)));
        let sending = async {
            for i in 0..50 {
                lines.feed(format!("line {i}")).await.unwrap();
            }
            lines.close().await.unwrap();
        };
        let receiving = b
            .map(|m| String::from_utf8(m.unwrap().to_vec()).unwrap())
            .collect::<Vec<_>>();
        let ((), got) = tokio::join!(sending, receiving);
        assert_eq!(
            got,
            (0..50).map(|i| format!("line {i}")).collect::<Vec<_>>()
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// select! and next()

/// Mostly small messages, every hundredth a pulled one.
fn select_len(seq: u64) -> usize {
    if seq.is_multiple_of(100) {
        70_000
    } else {
        8 + (seq as usize % 600)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_in_select_with_timers_loses_and_duplicates_nothing() {
    within(async {
        const N: u64 = 10_000;
        let (a, b) = Connection::pair().await.unwrap();
        let (mut tx, _a_rx) = a.split();
        let (_b_tx, mut rx) = b.split();
        let producer = tokio::spawn(async move {
            for i in 0..N {
                tx.feed(pattern(i, select_len(i))).await.unwrap();
            }
            tx.close().await.unwrap();
        });
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        let (mut seq, mut ticks, mut yields) = (0u64, 0u32, 0u32);
        loop {
            let msg = tokio::select! {
                msg = rx.next() => msg,
                _ = ticker.tick() => {
                    ticks += 1;
                    continue;
                }
                _ = tokio::task::yield_now() => {
                    yields += 1;
                    continue;
                }
            };
            let Some(m) = msg else { break };
            assert!(
                m.unwrap() == pattern(seq, select_len(seq)),
                "message {seq} lost, duplicated or corrupted"
            );
            seq += 1;
        }
        producer.await.unwrap();
        assert_eq!(seq, N);
        assert!(
            ticks + yields > 100,
            "next() was cancelled often ({ticks} ticks, {yields} yields)"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// tokio-stream

#[tokio::test]
async fn tokio_stream_timeout_over_a_receiver() {
    within(async {
        let (mut a, b) = Connection::pair().await.unwrap();
        let (_b_tx, rx) = b.split();
        let sending = async {
            for i in 0..3 {
                a.feed(pattern(i, 1000)).await.unwrap();
            }
            a.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            for i in 3..5 {
                a.feed(pattern(i, 1000)).await.unwrap();
            }
            a.close().await.unwrap();
        };
        let receiving = async {
            let items = tokio_stream::StreamExt::timeout(rx, Duration::from_millis(50));
            tokio::pin!(items);
            let mut got = Vec::new();
            let mut elapsed = 0;
            while let Some(item) = tokio_stream::StreamExt::next(&mut items).await {
                match item {
                    Ok(msg) => got.push(msg.unwrap()),
                    Err(_elapsed) => elapsed += 1,
                }
            }
            (got, elapsed)
        };
        let ((), (got, elapsed)) = tokio::join!(sending, receiving);
        assert_eq!(got, (0..5).map(|i| pattern(i, 1000)).collect::<Vec<_>>());
        assert!(elapsed >= 1, "the pause was reported as a timeout");
    })
    .await;
}

#[tokio::test]
async fn tokio_stream_chunks_timeout_over_a_receiver() {
    within(async {
        let (mut a, b) = Connection::pair().await.unwrap();
        let (_b_tx, rx) = b.split();
        let sending = async {
            for i in 0..10 {
                a.feed(pattern(i, 300)).await.unwrap();
            }
            a.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            for i in 10..13 {
                a.feed(pattern(i, 300)).await.unwrap();
            }
            a.close().await.unwrap();
        };
        let receiving = async {
            let chunks = tokio_stream::StreamExt::chunks_timeout(rx, 4, Duration::from_millis(50));
            tokio::pin!(chunks);
            let mut all = Vec::new();
            while let Some(chunk) = tokio_stream::StreamExt::next(&mut chunks).await {
                all.push(chunk);
            }
            all
        };
        let ((), chunks) = tokio::join!(sending, receiving);
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 4));
        let last = chunks.len() - 1;
        assert!(
            chunks[..last].iter().any(|c| c.len() < 4),
            "a partial chunk came out at the timeout: {:?}",
            chunks.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let flat: Vec<Bytes> = chunks.into_iter().flatten().map(Result::unwrap).collect();
        assert_eq!(flat, (0..13).map(|i| pattern(i, 300)).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mpsc_receiver_stream_feeds_a_sender() {
    within(async {
        let (a, b) = Connection::pair().await.unwrap();
        let (tx, _a_rx) = a.split();
        let (mpsc_tx, mpsc_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        // Several producers share the channel; the connection carries their messages in the
        // channel's order, and closes once every producer is gone.
        let mut producers = JoinSet::new();
        for p in 0..4u64 {
            let mpsc_tx = mpsc_tx.clone();
            producers.spawn(async move {
                for i in 0..100u64 {
                    let mut v = (p * 1000 + i).to_le_bytes().to_vec();
                    v.resize(8 + (i as usize * 997) % 30_000, p as u8);
                    mpsc_tx.send(Bytes::from(v)).await.unwrap();
                }
            });
        }
        drop(mpsc_tx);
        let forwarder = tokio::spawn(
            tokio_stream::wrappers::ReceiverStream::new(mpsc_rx)
                .map(Ok)
                .forward(tx),
        );
        let got: Vec<Bytes> = b.try_collect().await.unwrap();
        forwarder.await.unwrap().unwrap();
        producers.join_all().await;
        assert_eq!(got.len(), 400);
        let mut next = [0u64; 4];
        for m in &got {
            let id = u64::from_le_bytes(m[..8].try_into().unwrap());
            let (p, i) = (id / 1000, id % 1000);
            assert_eq!(i, next[p as usize], "producer {p}'s messages in order");
            next[p as usize] += 1;
            assert_eq!(m.len(), 8 + (i as usize * 997) % 30_000);
            assert!(m[8..].iter().all(|&x| x == p as u8));
        }
    })
    .await;
}

#[tokio::test]
async fn an_mpsc_receiver_stream_with_send_all() {
    within(async {
        let (mut a, b) = Connection::pair().await.unwrap();
        let (mpsc_tx, mpsc_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let producer = tokio::spawn(async move {
            for i in 0..200u64 {
                mpsc_tx.send(pattern(i, size_of(i))).await.unwrap();
            }
        });
        let sending = async {
            let mut msgs = tokio_stream::wrappers::ReceiverStream::new(mpsc_rx).map(Ok);
            a.send_all(&mut msgs).await.unwrap();
            a.close().await.unwrap();
        };
        let ((), got) = tokio::join!(sending, b.try_collect::<Vec<Bytes>>());
        producer.await.unwrap();
        let got = got.unwrap();
        assert_eq!(got.len(), 200);
        for (i, m) in (0..).zip(&got) {
            assert_eq!(m, &pattern(i, size_of(i)));
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Connection::pair() in Tokio tests

#[tokio::test]
async fn pair_halves_in_spawned_tasks_like_a_test_fixture() {
    within(async {
        // A fixture: an echo "server" task on one end, the test drives the other.
        let (client, server) = Connection::pair().await.unwrap();
        let echo = tokio::spawn(async move {
            let (mut tx, mut rx) = server.split();
            while let Some(m) = rx.next().await {
                tx.send(m?).await?;
            }
            tx.close().await
        });
        let (mut tx, mut rx) = client.split();
        for i in 0..20 {
            let msg = pattern(i, size_of(i));
            tx.feed(msg.clone()).await.unwrap();
            assert_eq!(rx.next().await.unwrap().unwrap(), msg);
        }
        tx.close().await.unwrap();
        assert!(rx.next().await.is_none());
        echo.await.unwrap().unwrap();
    })
    .await;
}
