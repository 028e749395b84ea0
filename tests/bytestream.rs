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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_codec_runs_over_a_byte_stream_both_ways() {
    let (a, b) = Connection::pair().await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mebibytes_arrive_intact_then_eof() {
    let (a, b) = Connection::pair().await.unwrap();
    let (mut a, mut b) = (ByteStream::new(a), ByteStream::new(b));
    let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let expect = data.clone();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        got
    });
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_takes_every_byte_that_has_arrived() {
    let (a, b) = Connection::pair().await.unwrap();
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

/// Bytes a `ByteStream` writes travel inline through the socket, as a socket's bytes do, up
/// to 64 KiB a message; larger writes are pulled. A frame header and its payload handed over
/// in one vectored write become one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_bytes_travel_inline_up_to_64_kib() {
    use std::io::IoSlice;
    let dir = util::temp_dir("bytestream-inline");
    let path = dir.join("s");
    let listener = tokio_pvm::Listener::bind(&path).unwrap();
    let p = path.clone();
    let peer = tokio::task::spawn_blocking(move || util::raw::RawPeer::handshake(&p));
    let conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let mut peer = peer.await.unwrap();
    let mut stream = ByteStream::new(conn);
    let ack = |count: u64| count.to_le_bytes();

    stream.write_all(&[1; 4096]).await.unwrap();
    stream.flush().await.unwrap();
    let (ty, body) = peer.recv().unwrap();
    assert!(
        ty == util::raw::T_BATCH || ty == util::raw::T_INLINE,
        "a 4 KiB flush went as frame type {ty}"
    );
    assert!(body[8..].ends_with(&[1; 4096]));
    peer.send(util::raw::T_ACK, &ack(1));

    let header = [9u8; 9];
    let payload = vec![2u8; 60 << 10];
    let n = stream
        .write_vectored(&[IoSlice::new(&header), IoSlice::new(&payload)])
        .await
        .unwrap();
    assert_eq!(n, header.len() + payload.len(), "both buffers were taken");
    stream.flush().await.unwrap();
    let (ty, body) = peer.recv().unwrap();
    assert!(ty == util::raw::T_BATCH || ty == util::raw::T_INLINE);
    assert_eq!(
        body.len(),
        8 + 4 * usize::from(ty == util::raw::T_BATCH) + 9 + (60 << 10)
    );
    peer.send(util::raw::T_ACK, &ack(2));

    stream.write_all(&[3; 128 << 10]).await.unwrap();
    stream.flush().await.unwrap();
    let (ty, _) = peer.recv().unwrap();
    assert_eq!(ty, util::raw::T_DATA, "a 128 KiB write is pulled");
}
