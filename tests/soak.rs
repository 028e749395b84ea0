//! Soak: concurrent connections from producer processes, random sizes from 0 B to 4 MiB,
//! producers killed at random. Invariants: every message a receiver yields is intact and in
//! order, and every message whose flush completed in the producer was delivered exactly once.
//!
//! The short version runs in CI; `cargo test --test soak -- --ignored` runs the long one.

mod util;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::time::timeout;
use tokio_pvm::Listener;
use util::{ChildProc, check, soak_size, temp_dir};

child_entry!();

/// What one receiving task saw of one producer.
#[derive(Debug)]
struct Seen {
    received: u64,
    ended_with_error: bool,
}

async fn soak(producers: u64, messages: u64, kills: usize, duration: Duration) {
    let dir = temp_dir(&format!("soak-{producers}-{messages}"));
    let path = dir.join("s");
    let listener = Listener::bind(&path).unwrap();
    let mut children: Vec<(u64, ChildProc)> = (0..producers)
        .map(|seed| {
            let args = [
                path.to_str().unwrap(),
                &seed.to_string(),
                &messages.to_string(),
            ];
            (seed, ChildProc::spawn("soak_send", &args))
        })
        .collect();
    let seeds: HashMap<i32, u64> = children.iter().map(|(s, c)| (c.pid(), *s)).collect();

    // One receiving task per connection, checking every byte and the order.
    let mut receivers = Vec::new();
    for _ in 0..producers {
        let mut conn = timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let seed = seeds[&conn.peer().pid().unwrap()];
        receivers.push(tokio::spawn(async move {
            let mut received = 0u64;
            loop {
                match timeout(Duration::from_secs(20), conn.next())
                    .await
                    .expect("no hang")
                {
                    Some(Ok(m)) => {
                        let n = soak_size(seed, received);
                        assert!(
                            check(seed ^ received, n, &m),
                            "producer {seed}: message {received} corrupt or out of order"
                        );
                        received += 1;
                    }
                    Some(Err(e)) => {
                        assert!(e.is_peer_gone(), "producer {seed}: {e}");
                        assert!(conn.next().await.is_none());
                        return (
                            seed,
                            Seen {
                                received,
                                ended_with_error: true,
                            },
                        );
                    }
                    None => {
                        return (
                            seed,
                            Seen {
                                received,
                                ended_with_error: false,
                            },
                        );
                    }
                }
            }
        }));
    }

    // Kill some producers at random moments.
    let started = Instant::now();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut killed = Vec::new();
    for _ in 0..kills {
        let wait = next() % (duration.as_millis() as u64 / kills as u64 + 1);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let alive: Vec<usize> = (0..children.len())
            .filter(|i| !killed.contains(i))
            .collect();
        let victim = alive[next() as usize % alive.len()];
        children[victim].1.kill();
        killed.push(victim);
    }

    let mut seen = HashMap::new();
    for r in receivers {
        let (seed, s) = r.await.expect("a receiver panicked");
        seen.insert(seed, s);
    }
    // What each producer saw flushed: the last FLUSHED line it printed.
    for (seed, mut child) in children {
        let _ = child.child.wait();
        let out = child.child.stdout.take().unwrap();
        let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
        let flushed = lines
            .iter()
            .filter_map(|l| l.strip_prefix("FLUSHED "))
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let done = lines.iter().any(|l| l == "RESULT DONE");
        let s = &seen[&seed];
        assert!(
            s.received >= flushed,
            "producer {seed}: {flushed} messages flushed but only {} delivered",
            s.received
        );
        if done {
            assert_eq!(s.received, messages, "producer {seed} finished");
            assert!(!s.ended_with_error);
        } else {
            assert!(
                s.ended_with_error,
                "producer {seed} was killed: its stream ends with an error"
            );
        }
    }
    let cut = seen.values().filter(|s| s.ended_with_error).count();
    assert!(
        cut >= 1,
        "no producer was killed mid-stream; the soak tested nothing"
    );
    eprintln!(
        "soak: {producers} producers, {} killed, {} messages delivered in {:?}",
        killed.len(),
        seen.values().map(|s| s.received).sum::<u64>(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    soak(8, 400, 4, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak: cargo test --test soak -- --ignored"]
async fn soak_long() {
    for _ in 0..10 {
        soak(8, 2000, 6, Duration::from_secs(20)).await;
    }
}
