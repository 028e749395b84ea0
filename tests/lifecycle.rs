//! The life of a connection, compared with a Unix socket at every stage: progress while the
//! application does not read, shutdown, drop with and without flushing, the peer closing its
//! reading side, linger.
//!
//! Each byte-stream scenario runs on `UnixStream::pair()` first (what a socket does is the
//! expected outcome) and then on `ByteStream` over `Connection::pair()`, on a current-thread
//! and on a multi-thread runtime, and over the TCP carrier. Connections between two processes are covered by
//! `tests/stacks.rs` (real protocol stacks) and `tests/transport.rs`.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_pvm::{ByteStream, Config, Connection, ErrorKind};

mod util;

/// Every scenario finishes within this, or fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: hangs"))
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn unix_pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

async fn pvm_pair() -> (ByteStream, ByteStream) {
    let (a, b) = Connection::pair().await.unwrap();
    (ByteStream::new(a), ByteStream::new(b))
}

/// A `ByteStream` pair over the TCP carrier (plain, on loopback).
#[cfg(feature = "tcp")]
async fn tcp_pair() -> (ByteStream, ByteStream) {
    let config = Config::new().danger_plain_tcp_on_loopback();
    tcp_pair_with(config.clone(), config).await
}

/// A `ByteStream` pair over the TCP carrier inside mutual TLS: its end of stream is TLS's
/// `close_notify`, and a cut connection reads as an end without it.
#[cfg(feature = "tcp")]
async fn tls_pair() -> (ByteStream, ByteStream) {
    let pki = util::pki::Pki::new("lifecycle CA");
    let server = Config::new().tls(pki.tls("server", &pki));
    let client = Config::new().tls(pki.tls("client", &pki));
    tcp_pair_with(server, client).await
}

#[cfg(feature = "tcp")]
async fn tcp_pair_with(server: Config, client: Config) -> (ByteStream, ByteStream) {
    let listener = tokio_pvm::Listener::bind_with("tcp://127.0.0.1:0", server).unwrap();
    let addr = listener.local_addrs().pop().unwrap();
    let (a, b) = tokio::join!(listener.accept(), Connection::connect_with(&addr, client));
    (ByteStream::new(a.unwrap()), ByteStream::new(b.unwrap()))
}

// ----- the scenarios -----------------------------------------------------------------------

/// Both sides write, then shut down at the same time; nobody reads meanwhile. Then each reads
/// what the other wrote.
async fn both_shut_down_at_once<S: Io>(a: S, b: S) {
    const LEN: usize = 100_000;
    let (mut a, mut b) = (a, b);
    let ((), ()) = within("both shutting down", async {
        tokio::join!(
            async {
                a.write_all(&data(LEN, 1)).await.unwrap();
                a.shutdown().await.unwrap();
            },
            async {
                b.write_all(&data(LEN, 2)).await.unwrap();
                b.shutdown().await.unwrap();
            }
        )
    })
    .await;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    within("reading", a.read_to_end(&mut got_a)).await.unwrap();
    within("reading", b.read_to_end(&mut got_b)).await.unwrap();
    assert_eq!(got_a, data(LEN, 2));
    assert_eq!(got_b, data(LEN, 1));
}

/// `write_all` + `flush` + drop: the peer reads every byte, then end of file.
async fn flush_then_drop<S: Io>(a: S, b: S) {
    const LEN: usize = 150_000;
    let (mut a, mut b) = (a, b);
    within("writing", async {
        a.write_all(&data(LEN, 3)).await.unwrap();
        a.flush().await.unwrap();
    })
    .await;
    drop(a);
    let mut got = Vec::new();
    within("reading", b.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got.len(), LEN);
    assert_eq!(got, data(LEN, 3));
}

/// `write_all` without flush, then drop: nothing is lost.
async fn write_then_drop<S: Io>(a: S, b: S) {
    let (mut a, mut b) = (a, b);
    within("writing", a.write_all(b"no flush before the drop"))
        .await
        .unwrap();
    drop(a);
    let mut got = Vec::new();
    within("reading", b.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"no flush before the drop");
}

/// The peer shuts down and drops without reading what we flushed: our shutdown still
/// succeeds (it is local on a socket).
async fn peer_leaves_without_reading<S: Io>(a: S, b: S) {
    let (mut a, mut b) = (a, b);
    within("writing", async {
        a.write_all(&data(10_000, 4)).await.unwrap();
        a.flush().await.unwrap();
    })
    .await;
    within("peer shutting down", b.shutdown()).await.unwrap();
    drop(b);
    within("shutting down", a.shutdown()).await.unwrap();
}

/// Request and reply with half-close, all in one task.
async fn half_close_in_one_task<S: Io>(a: S, b: S) {
    let (mut a, mut b) = (a, b);
    within("request/reply", async {
        a.write_all(b"request").await.unwrap();
        a.shutdown().await.unwrap();
        let mut req = Vec::new();
        b.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"request");
        b.write_all(b"reply").await.unwrap();
        b.shutdown().await.unwrap();
        let mut reply = Vec::new();
        a.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
    })
    .await;
}

/// The peer drops its whole stream: writing to it fails with a broken pipe, as on a socket.
async fn writing_to_a_closed_peer_is_a_broken_pipe<S: Io>(a: S, b: S) {
    let (mut a, b) = (a, b);
    drop(b);
    let err = within("writing", async {
        // (The first writes may be accepted before the peer's close is seen.)
        for _ in 0..100 {
            if let Err(e) = async {
                a.write_all(b"anyone there?").await?;
                a.flush().await
            }
            .await
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("writes to a closed peer keep succeeding")
    })
    .await;
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
}

/// Runs `scenario` on a Unix socket pair and on a `ByteStream` pair, in a runtime of each
/// flavor.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod unix_socket {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    let (a, b) = super::unix_pair().await;
                    super::$name(a, b).await;
                }
            )*
        }
        mod byte_stream_current_thread {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    let (a, b) = super::pvm_pair().await;
                    super::$name(a, b).await;
                }
            )*
        }
        mod byte_stream_multi_thread {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (a, b) = super::pvm_pair().await;
                    super::$name(a, b).await;
                }
            )*
        }
        #[cfg(feature = "tcp")]
        mod byte_stream_over_tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (a, b) = super::tcp_pair().await;
                    super::$name(a, b).await;
                }
            )*
        }
        #[cfg(feature = "tcp")]
        mod byte_stream_over_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (a, b) = super::tls_pair().await;
                    super::$name(a, b).await;
                }
            )*
        }
    };
}

on_both!(
    both_shut_down_at_once,
    flush_then_drop,
    write_then_drop,
    peer_leaves_without_reading,
    half_close_in_one_task,
    writing_to_a_closed_peer_is_a_broken_pipe,
);

// ----- messages: Connection, Sender, Receiver ----------------------------------------------

fn msg(seq: u32, len: usize) -> Bytes {
    let mut v = data(len, seq as u8);
    if len >= 4 {
        v[..4].copy_from_slice(&seq.to_le_bytes());
    }
    v.into()
}

/// A receiver that the application never polls still takes the peer's messages into its
/// window: the peer's flush completes. Beyond the receive buffer and one more window the
/// peer's sends wait (backpressure), and everything arrives in order once the application
/// reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_never_polled_still_receives_until_its_window_is_full() {
    let config = Config::default().window(8, 1 << 20);
    let (a, b) = Connection::pair_with(config).await.unwrap();
    let (mut tx, _arx) = a.split();
    // Half the window, pulled (4 KiB) and inline (16 B): flush returns without b reading.
    for seq in 0..4 {
        let len = if seq % 2 == 0 { 4096 } else { 16 };
        within("sending", tx.feed(msg(seq, len))).await.unwrap();
    }
    within("flush with room in the window", tx.flush())
        .await
        .unwrap();
    assert_eq!(tx.in_flight().0, 0, "acknowledged without the application");
    // Fill the receive buffer (8 messages) and the window beyond it (8 more): then sending
    // waits. (A send that waits for its acknowledgement would wait from the ninth on.)
    let mut sent = 4;
    loop {
        let next = async {
            tx.feed(msg(sent, 4096)).await?;
            // Write the frames out (a full window writes them anyway).
            let _ = tokio::time::timeout(Duration::from_millis(50), tx.flush()).await;
            Ok::<_, tokio_pvm::Error>(())
        };
        match tokio::time::timeout(Duration::from_millis(300), next).await {
            Ok(r) => {
                r.unwrap();
                sent += 1;
                assert!(sent <= 17, "no backpressure: {sent} messages sent");
            }
            Err(_) => break,
        }
    }
    assert_eq!(sent, 16, "messages sent before backpressure");
    assert_eq!(tx.in_flight().0, 8, "the window");
    // The application reads now: everything, in order (including the one whose send was
    // cancelled by the timeout after it had been queued, if it had).
    let mut b = b;
    let closing = tokio::spawn(async move { tx.close().await });
    let mut seq = 0;
    while let Some(m) = within("reading", b.next()).await {
        let m = m.unwrap();
        if m.len() >= 4 {
            assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), seq);
        }
        seq += 1;
    }
    assert!(seq >= sent, "{seq} of {sent} arrived");
    closing.await.unwrap().unwrap();
}

/// A `Connection` dropped right after `feed` (nothing flushed, nothing acknowledged): the
/// peer still gets every message, then the end of the stream.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_connection_delivers_what_it_had_queued() {
    let (mut a, mut b) = Connection::pair().await.unwrap();
    let sizes = [0, 16, 300, 4096, 70_000, 3 << 20];
    for (i, len) in sizes.iter().enumerate() {
        a.feed(msg(i as u32, *len)).await.unwrap();
    }
    drop(a);
    for (i, len) in sizes.iter().enumerate() {
        let m = within("reading", b.next()).await.unwrap().unwrap();
        assert_eq!(m, msg(i as u32, *len));
    }
    assert!(within("the end", b.next()).await.is_none());
}

/// The peer drops its receiving half: what we had in flight is acknowledged (flush
/// returns), and our next send fails as writing to a closed socket does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_stops_the_peer() {
    let (a, b) = Connection::pair().await.unwrap();
    let (mut tx, _rx) = a.split();
    let (_btx, brx) = b.split();
    for seq in 0..5 {
        tx.feed(msg(seq, 10_000)).await.unwrap();
    }
    drop(brx);
    within("flush", tx.flush()).await.unwrap();
    let err = within("send", async {
        loop {
            if let Err(e) = tx.send(msg(9, 100)).await {
                return e;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
    assert!(
        err.to_string().contains("closed its receiving side"),
        "{err}"
    );
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::BrokenPipe);
}

/// Linger: a sender dropped while the peer's receive buffer is full keeps its messages for
/// the linger time, then gives up; the peer then reads what it had, and an error instead of
/// a clean end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_expires_and_the_peer_learns_that_messages_were_lost() {
    let config = Config::default()
        .window(2, 1 << 20)
        .linger(Duration::from_millis(200));
    let (a, mut b) = Connection::pair_with(config).await.unwrap();
    let (mut tx, rx) = a.split();
    // 2 messages fill b's buffer, 2 more its window: they wait for room.
    for seq in 0..4 {
        within("sending", tx.feed(msg(seq, 4096))).await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tx.flush())
            .await
            .is_err(),
        "the peer's buffer is full"
    );
    drop(tx);
    drop(rx);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = 0;
    let end = loop {
        match within("reading", b.next()).await {
            Some(Ok(m)) => {
                assert_eq!(m, msg(got, 4096));
                got += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("a clean end of stream after {got} messages, but messages were lost"),
        }
    };
    assert!(got >= 2, "{got} messages before the error");
    assert!(end.is_peer_gone(), "{end}");
    assert!(end.to_string().contains("linger"), "{end}");
}

/// Within the linger time, a dropped sender waits for a slow reader: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sender_waits_for_a_slow_reader() {
    let config = Config::default().window(2, 1 << 20);
    let (a, mut b) = Connection::pair_with(config).await.unwrap();
    let (mut tx, rx) = a.split();
    let writer = tokio::spawn(async move {
        for seq in 0..20 {
            tx.feed(msg(seq, 8192)).await.unwrap();
        }
        // Dropped with most of them unacknowledged (and some unflushed).
    });
    drop(rx);
    let mut got = 0;
    while let Some(m) = within("reading", b.next()).await {
        assert_eq!(m.unwrap(), msg(got, 8192));
        got += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got, 20);
    writer.await.unwrap();
}

/// A `Fanout` dropped right after publishing: every subscriber still gets every message, then
/// the end of its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_fanout_still_delivers_to_every_subscriber() {
    let mut fanout = tokio_pvm::Fanout::new(&Config::default());
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let (a, b) = Connection::pair().await.unwrap();
        fanout.subscribe(a);
        subscribers.push(b);
    }
    for seq in 0..10 {
        within("publishing", fanout.feed(msg(seq, 5000)))
            .await
            .unwrap();
    }
    drop(fanout);
    for mut b in subscribers {
        for seq in 0..10 {
            let m = within("reading", b.next()).await.unwrap().unwrap();
            assert_eq!(m, msg(seq, 5000));
        }
        assert!(within("the end", b.next()).await.is_none());
    }
}

/// An application that reads a little and then stops: the room its reads made is filled
/// (and acknowledged) without it, as a socket's receive buffer refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_made_by_reads_is_refilled_after_the_application_stops_reading() {
    let config = Config::default().window(4, 1 << 20);
    let (a, mut b) = Connection::pair_with(config).await.unwrap();
    let (mut tx, _arx) = a.split();
    for seq in 0..8 {
        within("sending", tx.feed(msg(seq, 20_000))).await.unwrap();
    }
    // Write the frames out; 4 fill b's buffer, 4 wait in the window.
    let _ = tokio::time::timeout(Duration::from_millis(100), tx.flush()).await;
    assert_eq!(tx.in_flight().0, 4);
    for seq in 0..2 {
        assert_eq!(
            within("reading", b.next()).await.unwrap().unwrap(),
            msg(seq, 20_000)
        );
    }
    // b stops reading; its transport takes two more.
    within("refilling", async {
        while tx.in_flight().0 != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for seq in 2..8 {
        assert_eq!(
            within("reading", b.next()).await.unwrap().unwrap(),
            msg(seq, 20_000)
        );
    }
}

/// A `ByteStream` split in two: the writer is dropped with bytes that wait for room in the
/// window, while the reader waits on the socket. The acknowledgements that make room arrive
/// while only the reader is polled; the bytes still go out, and the peer reads the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_writer_sends_its_rest_while_the_reader_waits() {
    let config = Config::default().window(2, 1 << 20);
    let (a, b) = Connection::pair_with(config).await.unwrap();
    let (mut reader, mut writer) = ByteStream::with_gather(a, 1000).into_split();
    let mut b = ByteStream::new(b);
    // 2 messages fill b's buffer and 2 more the window; the fifth waits in the writer.
    let data = data(4 * 1000 + 500, 7);
    within("writing", writer.write_all(&data)).await.unwrap();
    drop(writer);
    let reading = tokio::spawn(async move {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.map(|_| rest)
    });
    tokio::time::sleep(Duration::from_millis(100)).await; // the reader is parked
    let mut got = Vec::new();
    within("reading to the end", b.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, data);
    b.shutdown().await.unwrap();
    assert!(
        within("the reader's end", reading)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}

/// A `next()` cancelled while it waited (a `select!` branch that lost), and never polled
/// again: the driver still receives for it, so the peer's flush completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_read_does_not_stop_the_connection() {
    let (a, b) = Connection::pair().await.unwrap();
    let (mut tx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), brx.next())
            .await
            .is_err()
    );
    for seq in 0..3 {
        tx.feed(msg(seq, 10_000)).await.unwrap();
    }
    within("flush while the receiver is not polled", tx.flush())
        .await
        .unwrap();
    for seq in 0..3 {
        assert_eq!(
            within("reading", brx.next()).await.unwrap().unwrap(),
            msg(seq, 10_000)
        );
    }
}
