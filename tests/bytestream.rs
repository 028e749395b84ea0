//! `ByteStream`: a connection as `AsyncRead + AsyncWrite`, under tokio-util's `Framed` and
//! with large transfers checked byte for byte.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_pvm::{ByteStream, Connection};
use tokio_util::codec::{Framed, LinesCodec};

const LIMIT: Duration = Duration::from_secs(20);

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
