//! `ByteStream`: a connection as `AsyncRead + AsyncWrite`, under tokio-util's `Framed` and
//! with large transfers checked byte for byte.

mod util;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_pvm::{ByteStream, Connection};
use tokio_util::codec::{Framed, LinesCodec};

const LIMIT: Duration = Duration::from_secs(20);

child_entry!();

/// A connected pair: `Connection::pair()`, or (`tcp`) two ends over the TCP carrier on
/// loopback, plain.
async fn pair(tcp: bool) -> (Connection, Connection) {
    #[cfg(feature = "tcp")]
    if tcp {
        let config = tokio_pvm::Config::new().danger_plain_tcp_on_loopback();
        let listener = tokio_pvm::Listener::bind_with("tcp://127.0.0.1:0", config.clone()).unwrap();
        let addr = listener.local_addrs().remove(0);
        let (a, b) = tokio::join!(listener.accept(), Connection::connect_with(&addr, config));
        return (a.unwrap(), b.unwrap());
    }
    assert!(!tcp, "this build has no TCP carrier");
    Connection::pair().await.unwrap()
}

/// Runs a scenario over `Connection::pair()` and over the TCP carrier.
macro_rules! on_both_carriers {
    ($($name:ident => $scenario:ident),* $(,)?) => {
        mod unix {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$scenario(false).await;
                }
            )*
        }
        #[cfg(feature = "tcp")]
        mod tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$scenario(true).await;
                }
            )*
        }
    };
}

on_both_carriers!(
    lines_codec_runs_over_a_byte_stream_both_ways => lines_codec_runs_over_a_byte_stream_both_ways_on,
    eight_mebibytes_arrive_intact_then_eof => eight_mebibytes_arrive_intact_then_eof_on,
    a_read_takes_every_byte_that_has_arrived => a_read_takes_every_byte_that_has_arrived_on,
    every_flushed_write_arrives_when_the_task_budget_runs_out => every_flushed_write_arrives_when_the_task_budget_runs_out_on,
    request_and_reply_rounds_on_either_carrier => request_and_reply_rounds_on,
);

/// Reads `stream` to its end in a task of its own.
fn read_all(mut stream: ByteStream) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    })
}

async fn lines_codec_runs_over_a_byte_stream_both_ways_on(tcp: bool) {
    let (a, b) = pair(tcp).await;
    let mut a = Framed::new(ByteStream::new(a), LinesCodec::new());
    let mut b = Framed::new(ByteStream::with_gather(b, 100), LinesCodec::new());
    let echo = tokio::spawn(async move {
        while let Some(line) = b.next().await {
            let line = line.unwrap();
            b.send(format!("echo {line}")).await.unwrap();
        }
    });
    timeout(LIMIT, async {
        for i in 0..500 {
            a.send(format!("line {i} {}", "x".repeat(i % 300)))
                .await
                .unwrap();
            let back = a.next().await.unwrap().unwrap();
            assert_eq!(back, format!("echo line {i} {}", "x".repeat(i % 300)));
        }
        SinkExt::<String>::close(&mut a).await.unwrap();
    })
    .await
    .expect("no hang");
    timeout(LIMIT, echo).await.unwrap().unwrap();
}

async fn eight_mebibytes_arrive_intact_then_eof_on(tcp: bool) {
    let (a, b) = pair(tcp).await;
    let (mut a, b) = (ByteStream::new(a), ByteStream::new(b));
    let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let expect = data.clone();
    let reader = read_all(b);
    timeout(LIMIT, async {
        // Odd-sized writes: some are gathered, some go through as messages of their own.
        for chunk in data.chunks(100_003) {
            a.write_all(chunk).await.unwrap();
        }
        a.shutdown().await.unwrap();
    })
    .await
    .expect("no hang");
    let got = timeout(LIMIT, reader).await.unwrap().unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "the bytes arrive in order, unchanged");
}

/// A read takes every byte that has arrived, across the messages the peer's flushes made, as
/// a socket read does (not one message per read).
async fn a_read_takes_every_byte_that_has_arrived_on(tcp: bool) {
    let (a, b) = pair(tcp).await;
    let (mut a, mut b) = (ByteStream::new(a), ByteStream::new(b));
    timeout(LIMIT, async {
        for part in [&b"one "[..], b"two ", b"three"] {
            a.write_all(part).await.unwrap();
            a.flush().await.unwrap();
        }
        // Returns once b's transport has received all three messages.
        a.shutdown().await.unwrap();
        let mut buf = [0u8; 64];
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one two three");
        assert_eq!(b.read(&mut buf).await.unwrap(), 0, "then end of file");
    })
    .await
    .expect("no hang");
}

/// Bytes a `ByteStream` writes travel inline through the socket, as a socket's bytes do, in
/// messages of up to 2 KiB; larger messages are pulled. A frame header and its payload handed
/// over in one vectored write become one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_bytes_travel_inline_up_to_2_kib() {
    use std::io::IoSlice;
    use util::raw::{T_ACK, T_BATCH, T_DATA, T_INLINE};
    let dir = util::temp_dir("bytestream-inline");
    let path = dir.join("s");
    let listener = tokio_pvm::Listener::bind(&path).unwrap();
    let p = path.clone();
    let peer = tokio::task::spawn_blocking(move || util::raw::RawPeer::handshake(&p));
    let conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let mut peer = peer.await.unwrap();
    let mut stream = ByteStream::new(conn);
    // The body length of an inline frame carrying `len` bytes.
    let inline_body = |ty: u8, len: usize| 8 + 4 * usize::from(ty == T_BATCH) + len;

    // A header and a payload of 2 KiB in all: one inline message.
    let header = [9u8; 9];
    let payload = [1u8; 2048 - 9];
    let n = stream
        .write_vectored(&[IoSlice::new(&header), IoSlice::new(&payload)])
        .await
        .unwrap();
    assert_eq!(n, 2048, "both buffers were taken");
    stream.flush().await.unwrap();
    let (ty, body) = peer.recv().unwrap();
    assert!(
        ty == T_BATCH || ty == T_INLINE,
        "2 KiB went as frame type {ty}"
    );
    assert_eq!(body.len(), inline_body(ty, 2048));
    assert!(body.ends_with(&payload) && body[body.len() - 2048..].starts_with(&header));
    peer.send(T_ACK, &1u64.to_le_bytes());

    // One byte more: pulled.
    stream.write_all(&[2; 2049]).await.unwrap();
    stream.flush().await.unwrap();
    let (ty, _) = peer.recv().unwrap();
    assert_eq!(ty, T_DATA, "2 KiB + 1 is pulled");
}

/// No write makes a message larger than the peer accepts or than 4 MiB: a long write is taken
/// in part, as a socket takes what fits its buffer, and the bytes arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_cut_to_what_the_peer_accepts() {
    // The peer accepts messages of at most 1,000 bytes.
    let (a, b) = Connection::pair_with(tokio_pvm::Config::new().max_message_size(1000))
        .await
        .unwrap();
    let (mut a, mut b) = (ByteStream::new(a), ByteStream::new(b));
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    timeout(LIMIT, async {
        let n = a.write(&data).await.unwrap();
        assert!((1..=1000).contains(&n), "one write took {n} bytes");
        a.write_all(&data[n..]).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "the bytes arrive whole and in order");
    })
    .await
    .expect("no hang");

    let (a, b) = Connection::pair().await.unwrap();
    let (mut a, b) = (ByteStream::new(a), ByteStream::new(b));
    let data: Vec<u8> = (0..9u32 << 20).map(|i| (i % 253) as u8).collect();
    let expect = data.clone();
    let reader = read_all(b);
    timeout(LIMIT, async {
        let n = a.write(&data).await.unwrap();
        assert_eq!(n, 4 << 20, "a 9 MiB write takes 4 MiB");
        a.write_all(&data[n..]).await.unwrap();
        a.shutdown().await.unwrap();
    })
    .await
    .expect("no hang");
    let got = timeout(LIMIT, reader).await.unwrap().unwrap();
    assert!(got == expect, "9 MiB arrive whole and in order");
}

/// Thousands of small writes, each flushed, from a task that does nothing else: the task's
/// cooperative budget runs out many times on the way (one unit per flush), and no write is
/// lost, duplicated or reordered when it does.
async fn every_flushed_write_arrives_when_the_task_budget_runs_out_on(tcp: bool) {
    let (a, b) = pair(tcp).await;
    let (mut a, mut b) = (ByteStream::new(a), ByteStream::new(b));
    const WRITES: u32 = 5000;
    let writer = tokio::spawn(async move {
        for i in 0..WRITES {
            a.write_all(&i.to_le_bytes().repeat(25)).await.unwrap();
            a.flush().await.unwrap();
        }
        a.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    timeout(LIMIT, b.read_to_end(&mut got))
        .await
        .expect("no hang")
        .unwrap();
    timeout(LIMIT, writer).await.unwrap().unwrap();
    assert_eq!(got.len(), WRITES as usize * 100);
    for (i, write) in got.chunks(100).enumerate() {
        assert!(
            write == (i as u32).to_le_bytes().repeat(25),
            "write {i} arrived damaged or out of place"
        );
    }
}

/// Rounds of a few small flushed writes and a reply, the writer then waiting on its read:
/// flushes that found the peer's earlier bytes unread are written together (by the driver, or
/// by the read's own poll), and no round waits for a write that nobody makes.
async fn request_and_reply_rounds() {
    request_and_reply_rounds_on(false).await;
}

async fn request_and_reply_rounds_on(tcp: bool) {
    let (a, b) = pair(tcp).await;
    let (mut a, mut b) = (ByteStream::new(a), ByteStream::new(b));
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 300];
        loop {
            b.read_exact(&mut buf).await.unwrap();
            if buf[0] == 0xff {
                break;
            }
            b.write_all(&buf[..1]).await.unwrap();
            b.flush().await.unwrap();
        }
    });
    for round in 0..2000u32 {
        let tag = (round % 255) as u8;
        for _ in 0..3 {
            a.write_all(&[tag; 100]).await.unwrap();
            a.flush().await.unwrap();
        }
        let mut reply = [0u8; 1];
        timeout(LIMIT, a.read_exact(&mut reply))
            .await
            .unwrap_or_else(|_| panic!("round {round} waited"))
            .unwrap();
        assert_eq!(reply[0], tag);
    }
    a.write_all(&[0xff; 300]).await.unwrap();
    a.flush().await.unwrap();
    timeout(LIMIT, echo).await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn request_and_reply_rounds_on_a_current_thread_runtime() {
    request_and_reply_rounds().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_reply_rounds_in_block_on() {
    request_and_reply_rounds().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_reply_rounds_in_a_spawned_task() {
    tokio::spawn(request_and_reply_rounds()).await.unwrap();
}
