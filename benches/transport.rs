//! Regression benchmark: batches of messages over a `Connection::pair_with` inside one
//! process (real handshake, real `process_vm_readv` pulls, from this process's own memory).
//!
//! Each iteration sends a batch of messages of one size with `feed`, then `flush` (which
//! returns once the peer has pulled and acknowledged all of them), while the other end
//! receives the batch with `next()`, both in one `tokio::join!` on a multi-thread runtime.
//! Throughput is reported in bytes. The sender sends clones of one pre-built `Bytes`.
//!
//! ```text
//! cargo bench --bench transport
//! ```
//!
//! For numbers between two processes, next to a Unix socket, see
//! `cargo run --release --example bench`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::{SinkExt, StreamExt};
use tokio_pvm::{Config, Connection};

/// Message sizes and how many messages each iteration moves.
const CASES: [(usize, usize, &str); 3] = [
    (64, 1000, "64 B"),
    (64 << 10, 256, "64 KiB"),
    (1 << 20, 64, "1 MiB"),
];

fn pair_batches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let (mut a, mut b) = rt
        .block_on(Connection::pair_with(Config::new()))
        .expect("a connected pair");
    let mut group = c.benchmark_group("pair_batch");
    for (size, batch, label) in CASES {
        let msg = Bytes::from(vec![0x5a_u8; size]);
        group.throughput(Throughput::Bytes((size * batch) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &size, |bench, &size| {
            bench.iter(|| {
                rt.block_on(async {
                    let send = async {
                        for _ in 0..batch {
                            a.feed(msg.clone()).await?;
                        }
                        a.flush().await
                    };
                    let recv = async {
                        for _ in 0..batch {
                            let got = b.next().await.expect("the stream ended early")?;
                            assert_eq!(black_box(got.len()), size);
                        }
                        Ok::<_, tokio_pvm::Error>(())
                    };
                    let (sent, received) = tokio::join!(send, recv);
                    sent.expect("sending a batch");
                    received.expect("receiving a batch");
                })
            });
        });
    }
    group.finish();
    rt.block_on(async {
        let (closed, end) = tokio::join!(a.close(), b.next());
        closed.expect("closing the pair");
        assert!(end.is_none(), "no message after the last batch");
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = pair_batches
}
criterion_main!(benches);
