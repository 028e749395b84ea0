//! The pull transport between real processes: a child re-executes this test binary.

mod util;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_pvm::{Config, Connection, ErrorKind, Listener};
use util::{ChildProc, check, pattern, temp_dir};

child_entry!();

const SIZES: &str = "0,1,64,4095,4096,65536,262144,1048579,16777216";

async fn accept(listener: &mut Listener) -> Connection {
    timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("accept timed out")
        .expect("accept failed")
}

async fn every_size_from_a_child(tcp: bool) {
    let (mut listener, addr) = listen("sizes", tcp);
    let child = ChildProc::spawn("send", &[&addr, SIZES, "2"]);
    let mut conn = accept(&mut listener).await;
    if !tcp {
        assert_eq!(conn.peer().pid().unwrap(), child.pid());
        assert_eq!(conn.peer().uid().unwrap(), nix::unistd::getuid().as_raw());
    }
    let sizes: Vec<usize> = SIZES.split(',').map(|s| s.parse().unwrap()).collect();
    let mut seq = 0u64;
    while let Some(m) = timeout(Duration::from_secs(20), conn.next()).await.unwrap() {
        let m = m.unwrap();
        let n = sizes[seq as usize % sizes.len()];
        assert!(check(seq, n, &m), "message {seq} ({n} bytes) corrupted");
        seq += 1;
    }
    assert_eq!(
        seq,
        2 * sizes.len() as u64,
        "clean close ends the stream after every message"
    );
    assert!(conn.next().await.is_none(), "the stream stays ended");
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok);
    assert_eq!(out, [seq.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_from_a_child_arrives_intact() {
    every_size_from_a_child(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_from_a_child_over_tcp_arrives_intact() {
    every_size_from_a_child(true).await;
}

async fn every_size_to_a_child(tcp: bool) {
    let (mut listener, addr) = listen("sizes-out", tcp);
    let child = ChildProc::spawn("recv", &[&addr, SIZES]);
    let mut conn = accept(&mut listener).await;
    let sizes: Vec<usize> = SIZES.split(',').map(|s| s.parse().unwrap()).collect();
    for (seq, &n) in sizes.iter().enumerate() {
        conn.feed(pattern(seq as u64, n)).await.unwrap();
    }
    timeout(Duration::from_secs(20), conn.close())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.in_flight(), (0, 0), "flush released every buffer");
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok, "the child found every byte intact");
    assert_eq!(out, [sizes.len().to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_to_a_child_arrives_intact() {
    every_size_to_a_child(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_to_a_child_over_tcp_arrives_intact() {
    every_size_to_a_child(true).await;
}

async fn thousands_of_messages_in_order(tcp: bool) {
    let (mut listener, addr) = listen("order", tcp);
    let child = ChildProc::spawn("send", &[&addr, "10,100,3000,70000", "2500"]);
    let mut conn = accept(&mut listener).await;
    let sizes = [10usize, 100, 3000, 70000];
    let mut seq = 0u64;
    while let Some(m) = timeout(Duration::from_secs(20), conn.next()).await.unwrap() {
        let m = m.unwrap();
        assert!(
            check(seq, sizes[seq as usize % 4], &m),
            "message {seq} out of order or corrupt"
        );
        seq += 1;
    }
    assert_eq!(seq, 10_000);
    assert!(child.finish(Duration::from_secs(10)).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_messages_stay_in_order() {
    thousands_of_messages_in_order(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_messages_over_tcp_stay_in_order() {
    thousands_of_messages_in_order(true).await;
}

/// A task reading a peer that never stops sending lets the runtime's other tasks run, as a
/// task reading a socket does: the transport's reads of its control socket take Tokio's
/// cooperative budget, and a task whose budget ran out yields.
async fn a_task_reading_a_flood(tcp: bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const MESSAGES: u64 = 200_000;
    let (mut listener, addr) = listen("coop", tcp);
    let child = ChildProc::spawn("send", &[&addr, "10", &MESSAGES.to_string()]);
    let mut conn = accept(&mut listener).await;
    let other_ran = Arc::new(AtomicBool::new(false));
    let flag = other_ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    let mut read_before_it_ran = None;
    let mut seq = 0u64;
    while let Some(m) = timeout(Duration::from_secs(20), conn.next()).await.unwrap() {
        assert!(check(seq, 10, &m.unwrap()));
        seq += 1;
        if read_before_it_ran.is_none() && other_ran.load(Ordering::SeqCst) {
            read_before_it_ran = Some(seq);
        }
    }
    assert_eq!(seq, MESSAGES);
    let n = read_before_it_ran.expect("the other task ran");
    assert!(
        n < MESSAGES,
        "the other task ran only after the last message"
    );
    let finished = tokio::task::spawn_blocking(move || child.finish(Duration::from_secs(10)));
    assert!(finished.await.unwrap().0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_reading_a_flood_lets_other_tasks_run() {
    a_task_reading_a_flood(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "current_thread")]
async fn a_task_reading_a_flood_over_tcp_lets_other_tasks_run() {
    a_task_reading_a_flood(true).await;
}

async fn both_directions(tcp: bool) {
    let (mut listener, addr) = listen_with("echo", tcp, Config::new().window(16, 8 << 20));
    let child = ChildProc::spawn("echo", &[&addr]);
    let conn = accept(&mut listener).await;
    let (mut tx, mut rx) = conn.split();
    const N: u64 = 3000;
    let size = |i: u64| (i as usize * 7919) % 300_000;
    let sending = tokio::spawn(async move {
        for i in 0..N {
            tx.feed(pattern(i, size(i))).await.unwrap();
        }
        tx.close().await.unwrap();
    });
    let mut seq = 0;
    while let Some(m) = timeout(Duration::from_secs(20), rx.next()).await.unwrap() {
        assert!(check(seq, size(seq), &m.unwrap()), "echo {seq} corrupted");
        seq += 1;
    }
    assert_eq!(seq, N);
    sending.await.unwrap();
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok);
    assert_eq!(out, [N.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_at_once() {
    both_directions(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_at_once_over_tcp() {
    both_directions(true).await;
}

async fn slow_receiver_holds_the_sender(tcp: bool) {
    let (win_msgs, win_bytes) = (4u32, 1u64 << 20);
    let size = 300_000usize;
    let config = Config::new().window(win_msgs, win_bytes);
    let (mut listener, addr) = listen_with("window", tcp, config);
    let child = ChildProc::spawn("slow_recv", &[&addr, "20"]);
    let mut conn = accept(&mut listener).await;
    let mut max_seen = (0usize, 0u64);
    let mut blocked = 0;
    let started = std::time::Instant::now();
    // The child's receive buffer (its own window, 16 MiB by default) takes the first ~56
    // messages whatever the child reads; from then on its slow reads set the pace.
    for i in 0..90u64 {
        // Ready only when the window has room; count how often the sender had to wait.
        let ready = futures::poll!(futures::future::poll_fn(|cx| {
            futures::Sink::poll_ready(std::pin::Pin::new(&mut conn), cx)
        }));
        if ready.is_pending() {
            blocked += 1;
        }
        conn.feed(pattern(i, size)).await.unwrap();
        let (n, b) = conn.in_flight();
        max_seen = (max_seen.0.max(n), max_seen.1.max(b));
        assert!(
            n <= win_msgs as usize,
            "{n} messages in flight, window {win_msgs}"
        );
        assert!(b <= win_bytes + size as u64, "{b} bytes in flight");
    }
    assert!(
        blocked >= 5,
        "the sender waited at the window only {blocked} times"
    );
    assert_eq!(max_seen.0, win_msgs as usize);
    timeout(Duration::from_secs(20), conn.close())
        .await
        .unwrap()
        .unwrap();
    // The receiver takes 20 ms a message; its buffer holds 56 of them and the window 4 more:
    // the sender cannot finish before the receiver has consumed the other 30.
    let paced = Duration::from_millis(20 * (90 - 56 - win_msgs as u64));
    assert!(
        started.elapsed() >= paced,
        "sender finished in {:?}",
        started.elapsed()
    );
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok);
    assert_eq!(out, ["90"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_holds_the_sender_at_the_window() {
    slow_receiver_holds_the_sender(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_over_tcp_holds_the_sender_at_the_window() {
    slow_receiver_holds_the_sender(true).await;
}

/// Where a test listens: a Unix socket (`name` in a temporary directory), or TCP on
/// loopback (plain); and the address a child connects to.
fn listen(name: &str, tcp: bool) -> (Listener, String) {
    listen_with(name, tcp, Config::new())
}

/// [`listen`] with `config` (plain TCP allowed on loopback for the TCP carrier).
fn listen_with(name: &str, tcp: bool, config: Config) -> (Listener, String) {
    #[cfg(feature = "tcp")]
    if tcp {
        let config = config.danger_plain_tcp_on_loopback();
        let listener = Listener::bind_with("tcp://127.0.0.1:0", config).unwrap();
        let addr = listener.local_addrs().remove(0).to_string();
        return (listener, addr);
    }
    assert!(!tcp, "this build has no TCP carrier");
    let path = temp_dir(name).join("s");
    let listener = Listener::bind_with(&path, config).unwrap();
    (listener, path.to_str().unwrap().to_owned())
}

async fn sender_killed_mid_stream(tcp: bool) {
    let (mut listener, addr) = listen("kill-sender", tcp);
    let mut child = ChildProc::spawn("flood", &[&addr, "1048576"]);
    let mut conn = accept(&mut listener).await;
    for _ in 0..20 {
        let m = conn.next().await.unwrap().unwrap();
        assert!(check(0, 1 << 20, &m));
    }
    child.kill();
    let end = timeout(Duration::from_secs(5), async {
        loop {
            match conn.next().await {
                Some(Ok(m)) => assert!(
                    check(0, 1 << 20, &m),
                    "a message received before the kill is intact"
                ),
                Some(Err(e)) => break e,
                None => panic!("stream ended without an error after the peer was killed"),
            }
        }
    })
    .await
    .expect("no error within 5 s of the peer's death");
    assert!(end.is_peer_gone(), "{end}");
    let who = match tcp {
        true => "127.0.0.1".to_owned(),
        false => child.pid().to_string(),
    };
    assert!(end.to_string().contains(&who), "{end}");
    assert!(conn.next().await.is_none(), "one error, then None");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_stream_ends_the_stream_with_an_error() {
    sender_killed_mid_stream(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_stream_over_tcp_ends_the_stream_with_an_error() {
    sender_killed_mid_stream(true).await;
}

async fn byte_stream_reading_from_a_killed_peer(tcp: bool) {
    use tokio::io::AsyncReadExt;
    let (mut listener, addr) = listen("kill-sender-bytes", tcp);
    let mut child = ChildProc::spawn("flood", &[&addr, "1048576"]);
    let mut reader = tokio_pvm::ByteStream::new(accept(&mut listener).await);
    let mut buf = vec![0u8; 1 << 20];
    reader.read_exact(&mut buf).await.unwrap();
    child.kill();
    let err = timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = reader.read(&mut buf).await {
                break e;
            }
        }
    })
    .await
    .expect("no error within 5 s of the peer's death");
    // What a socket's read reports when the peer is gone with data unsent (a write would say
    // BrokenPipe).
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_stream_reading_from_a_killed_peer_sees_a_reset_not_a_broken_pipe() {
    byte_stream_reading_from_a_killed_peer(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_stream_reading_from_a_killed_peer_over_tcp_sees_a_reset() {
    byte_stream_reading_from_a_killed_peer(true).await;
}

async fn receiver_killed_mid_stream(tcp: bool) {
    let (mut listener, addr) = listen("kill-receiver", tcp);
    let mut child = ChildProc::spawn("sink", &[&addr]);
    let mut conn = accept(&mut listener).await;
    let msg = pattern(1, 1 << 20);
    for _ in 0..50 {
        conn.send(msg.clone()).await.unwrap();
    }
    child.kill();
    let err = timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = conn.send(msg.clone()).await {
                break e;
            }
        }
    })
    .await
    .expect("no error within 5 s of the peer's death");
    assert!(err.is_peer_gone(), "{err}");
    assert_eq!(conn.in_flight(), (0, 0), "held buffers released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_mid_stream_fails_the_sender_and_releases_buffers() {
    receiver_killed_mid_stream(false).await;
}

#[cfg(feature = "tcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_mid_stream_over_tcp_fails_the_sender_and_releases_buffers() {
    receiver_killed_mid_stream(true).await;
}

/// Runs `child` to completion while `listener` accepts; returns the child's outcome and what
/// accept produced within the child's lifetime plus `grace`.
async fn run_against(
    listener: &mut Listener,
    child: ChildProc,
    grace: Duration,
) -> ((bool, Vec<String>), Option<Connection>) {
    let finished = tokio::task::spawn_blocking(move || child.finish(Duration::from_secs(10)));
    tokio::pin!(finished);
    let mut accepted = None;
    let outcome = loop {
        tokio::select! {
            out = &mut finished => break out.unwrap(),
            conn = listener.accept(), if accepted.is_none() => accepted = Some(conn.unwrap()),
        }
    };
    if accepted.is_none() {
        accepted = timeout(grace, listener.accept())
            .await
            .ok()
            .map(Result::unwrap);
    }
    (outcome, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_uid_is_refused_by_default_on_both_sides() {
    if !ChildProc::can_switch_uid() {
        eprintln!("SKIPPED: needs root to run a child as uid 65534");
        return;
    }
    let dir = temp_dir("uid");
    let path = dir.join("s");
    let mut listener = Listener::bind(&path).unwrap();
    util::open_to_all(&path);
    let p = path.to_str().unwrap();
    // nobody (allowing us) connects to our listener: we refuse it, and it learns why.
    let child = ChildProc::spawn_with("connect_allow", &[p, "0"], Some(65534));
    let ((ok, out), accepted) = run_against(&mut listener, child, Duration::from_millis(200)).await;
    assert!(ok);
    assert!(out[0].starts_with("PermissionDenied"), "{out:?}");
    assert!(
        out[0].contains("allow_uid(65534)"),
        "names the fix: {out:?}"
    );
    assert!(
        accepted.is_none(),
        "a refused peer never comes out of accept"
    );
    // With its own default config, nobody refuses us as well, and says how to allow us.
    let child = ChildProc::spawn_with("connect_expect", &[p], Some(65534));
    let ((_, out), accepted) = run_against(&mut listener, child, Duration::from_millis(200)).await;
    assert!(out[0].starts_with("PermissionDenied"), "{out:?}");
    assert!(out[0].contains("allow_uid(0)"), "{out:?}");
    assert!(accepted.is_none());
    // A good client still gets in.
    let good = ChildProc::spawn("send", &[p, "5", "1"]);
    let mut conn = accept(&mut listener).await;
    assert_eq!(conn.peer().pid().unwrap(), good.pid());
    assert!(check(0, 5, &conn.next().await.unwrap().unwrap()));

    // We connect to nobody's listener: we refuse it.
    let path2 = dir.join("n");
    let nobody = ChildProc::spawn_with("listen_once", &[path2.to_str().unwrap()], Some(65534));
    util::wait_for(&path2).await;
    let err = Connection::connect(&path2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("uid 65534"), "{err}");
    let (_, out) = nobody.finish(Duration::from_secs(10));
    assert_eq!(out, ["nothing accepted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_pull_fails_when_pulls_are_required() {
    if !ChildProc::can_switch_uid() {
        eprintln!("SKIPPED: needs root to run a child as uid 65534");
        return;
    }
    let dir = temp_dir("uid-strict");
    let path = dir.join("s");
    let mut listener = Listener::bind_with(&path, Config::new().allow_uid(65534)).unwrap();
    util::open_to_all(&path);
    let child = ChildProc::spawn_with(
        "connect_strict",
        &[path.to_str().unwrap(), "0"],
        Some(65534),
    );
    let ((ok, out), accepted) = run_against(&mut listener, child, Duration::from_millis(300)).await;
    assert!(ok);
    // nobody may not pull from another user's process (nor could it: the kernel would
    // refuse), so it refuses, and says why and what to do.
    assert!(out[0].starts_with("PermissionDenied"), "{out:?}");
    assert!(out[0].contains("runs as uid 0"), "names the cause: {out:?}");
    assert!(out[0].contains("same user"), "names the fix: {out:?}");
    assert!(
        accepted.is_none(),
        "the failed handshake is not returned by accept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_pull_falls_back_to_inline_and_gets_every_byte() {
    if !ChildProc::can_switch_uid() {
        eprintln!("SKIPPED: needs root to run a child as uid 65534");
        return;
    }
    let dir = temp_dir("uid-inline");
    let path = dir.join("s");
    let mut listener = Listener::bind_with(&path, Config::new().allow_uid(65534)).unwrap();
    util::open_to_all(&path);
    let child = ChildProc::spawn_with("echo_allow", &[path.to_str().unwrap(), "0"], Some(65534));
    let conn = accept(&mut listener).await;
    // We (root) could read nobody, but never pull from another user (nobody could exec a
    // setuid program and have us read it): we receive inline. Nobody cannot read us: it
    // receives inline too.
    match conn.mode() {
        tokio_pvm::Mode::Inline(why) => assert!(why.contains("another user"), "{why}"),
        other => panic!("expected inline receiving, got {other:?}"),
    }
    match conn.send_mode() {
        tokio_pvm::Mode::Inline(why) => assert!(why.contains("cannot read"), "{why}"),
        other => panic!("expected inline sending, got {other:?}"),
    }
    let sizes = [0usize, 1, 100, 5000, 300_000, 1 << 20, 5 << 20];
    let (mut tx, mut rx) = conn.split();
    let sending = tokio::spawn(async move {
        for (seq, &n) in sizes.iter().enumerate() {
            tx.feed(pattern(seq as u64, n)).await.unwrap();
        }
        tx.close().await.unwrap();
    });
    // The echo comes back through the socket.
    let mut seq = 0;
    while let Some(m) = timeout(Duration::from_secs(20), rx.next()).await.unwrap() {
        assert!(
            check(seq as u64, sizes[seq], &m.unwrap()),
            "echo {seq} corrupted"
        );
        seq += 1;
    }
    assert_eq!(seq, sizes.len());
    sending.await.unwrap();
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok);
    assert!(
        out[0].starts_with("recv Inline(") && out[0].contains("send Inline("),
        "{out:?}"
    );
    assert!(
        out[0].contains("same user"),
        "the reason names the fix: {out:?}"
    );
}

#[tokio::test]
async fn a_handshake_that_stalls_times_out() {
    let dir = temp_dir("stall");
    let path = dir.join("s");
    // A plain socket that accepts and never speaks.
    let raw = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let cfg = Config::new().handshake_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = Connection::connect_with(&path, cfg).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(raw);
}

/// Over TCP: a plain socket that accepts and never speaks holds neither TLS nor the
/// protocol's handshake longer than the configured times.
#[cfg(feature = "tcp")]
#[tokio::test]
async fn a_tcp_handshake_that_stalls_times_out() {
    let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", raw.local_addr().unwrap());
    let plain = Config::new()
        .danger_plain_tcp_on_loopback()
        .handshake_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = Connection::connect_with(addr.as_str(), plain)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(raw);
}

#[tokio::test]
async fn listener_replaces_stale_socket_but_never_a_live_one() {
    let dir = temp_dir("stale");
    let path = dir.join("s");
    // A stale file: bound, then its owner went away.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let live = Listener::bind(&path).expect("a stale socket file does not block a restart");
    let err = Listener::bind(&path).unwrap_err();
    assert!(
        err.to_string().contains("another listener is live"),
        "{err}"
    );
    assert!(path.exists(), "the live listener's file is untouched");
    drop(live);
    assert!(!path.exists(), "the listener removes its file when dropped");
    // Never remove something that is not a socket.
    std::fs::write(&path, b"data").unwrap();
    let err = Listener::bind(&path).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
    // Connecting where nothing listens names the cause.
    let err = Connection::connect(dir.join("missing")).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    // ... and to a regular file says what it is, not that a socket is stale.
    let err = Connection::connect(&path).await.unwrap_err();
    assert!(err.to_string().contains("is not a socket"), "{err}");
    // Binding into a directory that does not exist names the directory and the fix.
    let nowhere = dir.join("no-such-dir").join("s");
    let err = Listener::bind(&nowhere).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&dir.join("no-such-dir").display().to_string())
            && text.contains("does not exist")
            && text.contains("create it"),
        "{text}"
    );
}

#[tokio::test]
async fn a_listener_full_of_stalled_handshakes_still_accepts() {
    let dir = temp_dir("stalled");
    let path = dir.join("s");
    let cfg = Config::new().handshake_timeout(Duration::from_millis(300));
    let listener = Listener::bind_with(&path, cfg).unwrap();
    // More clients than the listener runs handshakes for at once; none of them speaks.
    let stalled: Vec<_> = (0..200)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
        .collect();
    let good = ChildProc::spawn("send", &[path.to_str().unwrap(), "7", "1"]);
    let mut conn = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("accept kept going after the stalled handshakes timed out")
        .unwrap();
    assert_eq!(conn.peer().pid().unwrap(), good.pid());
    assert!(check(0, 7, &conn.next().await.unwrap().unwrap()));
    drop(stalled);
}
