//! What one peer can make a receiver spend: threads stuck in a pull, and idle memory.

mod util;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::time::timeout;
use tokio_pvm::{Config, ErrorKind, Listener};
use util::{ChildProc, temp_dir};

child_entry!();

/// The process's resident memory, in bytes, after the allocator has given its free memory
/// back to the system (what remains is in use, pools included).
fn rss() -> u64 {
    // SAFETY: malloc_trim only releases free memory of the allocator's own heap.
    unsafe { nix::libc::malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb << 10
}

/// A peer announces a message in memory that never faults in (a userfaultfd nobody serves).
/// The pull runs on the blocking pool, times out, fails only that connection, and the
/// runtime, a current-thread one, goes on serving another peer meanwhile.
#[test]
fn a_pull_that_never_returns_times_out_and_the_runtime_goes_on() {
    if !ChildProc::can_switch_uid() {
        // A userfaultfd that traps the kernel's own accesses needs privilege
        // (vm.unprivileged_userfaultfd is 0 by default).
        eprintln!("skipped: needs root for a userfaultfd that traps process_vm_readv");
        return;
    }
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(stuck_pull_scenario());
        let _ = done_tx.send(());
    });
    done.recv_timeout(Duration::from_secs(60))
        .expect("the runtime stalled: a pull blocked it");
}

async fn stuck_pull_scenario() {
    let dir = temp_dir("stuck-pull");
    let path = dir.join("s.sock");
    let config = Config::new()
        .blocking_threshold(0)
        .pull_timeout(Duration::from_millis(500));
    let listener = Listener::bind_with(&path, config).unwrap();
    let p = path.to_str().unwrap();
    let mut stuck_peer = ChildProc::spawn("send_uffd_page", &[p]);
    let mut stuck = timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let waiting = tokio::spawn(async move { stuck.next().await });
    // Meanwhile another peer is served in full on the same runtime.
    let good = ChildProc::spawn("send", &[p, "1000,70000", "50"]);
    let mut conn = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("a good client is accepted while a pull is stuck")
        .unwrap();
    let mut seq = 0u64;
    while let Some(msg) = timeout(Duration::from_secs(10), conn.next()).await.unwrap() {
        assert!(util::check(
            seq,
            [1000, 70000][seq as usize % 2],
            &msg.unwrap()
        ));
        seq += 1;
    }
    assert_eq!(seq, 100);
    let outcome = timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the stuck pull times out")
        .unwrap();
    let elapsed = started.elapsed();
    match outcome {
        Some(Err(e)) => {
            assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
            assert!(e.to_string().contains("userfaultfd"), "{e}");
        }
        other => panic!("expected the pull's timeout, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let (ok, _) = good.finish(Duration::from_secs(10));
    assert!(ok);
    // The stuck peer was told why its message failed.
    stuck_peer.kill();
}

/// Many idle connections each made to fill their pool with one buffer of every size class
/// keep, all together, no more than the process-wide cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_keep_at_most_the_process_wide_pool() {
    const CONNECTIONS: usize = 12;
    let (_, cap) = tokio_pvm::process_buffer_pool();
    assert_eq!(cap, tokio_pvm::DEFAULT_PROCESS_BUFFER_POOL);
    let dir = temp_dir("pool-cap");
    let path = dir.join("s.sock");
    let listener = Listener::bind(&path).unwrap();
    let p = path.to_str().unwrap();
    // One message of each pooled size class, 64 KiB to 16 MiB: 32 MiB per connection, as
    // much as a connection's own pool keeps.
    let sizes: Vec<usize> = (16..=24).map(|s| 1usize << s).collect();
    let list = sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let before = rss();
    let mut conns = Vec::new();
    let mut children = Vec::new();
    for _ in 0..CONNECTIONS {
        children.push(ChildProc::spawn("send", &[p, &list, "1"]));
        let mut conn = timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut seq = 0u64;
        while let Some(msg) = timeout(Duration::from_secs(10), conn.next()).await.unwrap() {
            assert!(util::check(seq, sizes[seq as usize], &msg.unwrap()));
            seq += 1;
        }
        assert_eq!(seq, sizes.len() as u64);
        conns.push(conn); // idle, and alive
    }
    let (idle, cap) = tokio_pvm::process_buffer_pool();
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{CONNECTIONS} idle connections: {} MiB idle in pools (cap {} MiB), RSS grew {} MiB",
        idle >> 20,
        cap >> 20,
        grown >> 20
    );
    assert!(idle <= cap, "{idle} idle bytes over the cap {cap}");
    // Without the process-wide cap the pools alone keep 12 x 32 MiB = 384 MiB (measured:
    // RSS +399 MiB, against +144 MiB with it; the rest is the allocator's).
    assert!(
        grown < (cap as u64) + (128 << 20),
        "RSS grew by {} MiB",
        grown >> 20
    );
    for child in children {
        assert!(child.finish(Duration::from_secs(10)).0);
    }
    drop(conns);
    assert_eq!(
        tokio_pvm::process_buffer_pool().0,
        0,
        "pools are freed with their connections"
    );
}
