//! `Fanout` across real processes: every subscriber gets every message intact and in order,
//! a killed or slow subscriber neither blocks the others nor keeps buffers alive.
//!
//! Subscribers are child processes: this test binary re-executes itself to run only
//! `fanout_child`, with its role in the environment.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_pvm::{Config, Connection, ErrorKind, Fanout, Listener, SlowSubscriber};

const ROLE: &str = "TOKIO_PVM_FANOUT_ROLE";
const PATH: &str = "TOKIO_PVM_FANOUT_PATH";
const LIMIT: Duration = Duration::from_secs(30);
/// A small window, so that a stalled subscriber is a whole window behind quickly.
const WINDOW: u32 = 8;

fn config() -> Config {
    Config::new().window(WINDOW, 64 << 20)
}

/// Message `i`: a size from a fixed mix (0 B to 1 MiB), content derived from `i`.
fn message(i: u64) -> Bytes {
    const SIZES: [usize; 7] = [0, 1, 200, 4096, 65_536, 300_001, 1 << 20];
    let len = SIZES[(i % SIZES.len() as u64) as usize];
    (0..len)
        .map(|j| ((i as usize * 7 + j) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

// ----- children ----------------------------------------------------------------------------

/// The child side: runs the role named in the environment and prints `RESULT ...`.
#[test]
fn fanout_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var(PATH).expect("socket path"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let line = rt.block_on(async move {
        let config = match role.as_str() {
            "read_wide" => Config::new().window(1024, 64 << 20),
            "readme" => Config::new(),
            _ => config(),
        };
        if role == "readme" {
            // Started before the publisher binds (its code is the README's, which binds).
            for _ in 0..1000 {
                if path.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut conn = Connection::connect_with(&path, config).await.unwrap();
        if role == "readme" {
            // The README's publisher sends 1 MiB messages of 7s.
            let mut seen = 0u64;
            while let Some(msg) = conn.next().await {
                match msg {
                    Ok(m) if m.len() == 1 << 20 && m.iter().all(|&b| b == 7) => seen += 1,
                    Ok(m) => return format!("RESULT bad message {seen} ({} bytes)", m.len()),
                    Err(e) => return format!("RESULT error {:?} {seen} {e}", e.kind()),
                }
            }
            return format!("RESULT ok {seen}");
        }
        if role == "stall" {
            // Hold the connection without reading; the parent kills us or we read late.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let mut seen = 0u64;
        loop {
            match conn.next().await {
                None => return format!("RESULT ok {seen}"),
                Some(Ok(msg)) => {
                    if msg != message(seen) {
                        return format!("RESULT bad message {seen} ({} bytes)", msg.len());
                    }
                    seen += 1;
                }
                Some(Err(e)) => return format!("RESULT error {:?} {seen} {e}", e.kind()),
            }
        }
    });
    println!("{line}");
}

struct Sub {
    child: Child,
}

impl Sub {
    fn spawn(role: &str, path: &Path) -> Sub {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fanout_child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(PATH, path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Sub { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the child (at most `LIMIT`) and returns its `RESULT` line.
    fn result(mut self) -> String {
        let out = self.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let line = BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                // The harness may print "test fanout_child ... " on the same line first.
                .find_map(|l| l.find("RESULT ").map(|at| l[at..].to_owned()));
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(LIMIT).ok().flatten();
        self.kill();
        let _ = self.child.wait();
        line.unwrap_or_else(|| "RESULT none".into())
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.kill();
        let _ = self.child.wait();
    }
}

/// A socket path in a fresh directory, removed (with the socket) when dropped.
struct SocketPath {
    dir: PathBuf,
    path: PathBuf,
}

impl std::ops::Deref for SocketPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for SocketPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn socket_path(name: &str) -> SocketPath {
    let dir = std::env::temp_dir().join(format!("tokio-pvm-fanout-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    SocketPath {
        path: dir.join("s"),
        dir,
    }
}

async fn accept(listener: &mut Listener, fanout: &mut Fanout, n: usize) {
    for _ in 0..n {
        let conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        fanout.subscribe(conn);
    }
}

// ----- tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_subscriber_processes_get_every_message_in_order() {
    let path = socket_path("four");
    let mut listener = Listener::bind_with(path.as_ref(), config()).unwrap();
    let subs: Vec<Sub> = (0..4).map(|_| Sub::spawn("read", &path)).collect();
    let mut fanout = Fanout::new(&config());
    accept(&mut listener, &mut fanout, 4).await;
    assert_eq!(fanout.len(), 4);

    let sent: Vec<Bytes> = (0..200).map(message).collect();
    timeout(LIMIT, async {
        for msg in &sent {
            fanout.feed(msg.clone()).await.unwrap();
        }
        fanout.flush().await.unwrap();
    })
    .await
    .expect("no hang");
    // Every subscriber pulled every message: no reference is left anywhere.
    assert_eq!(fanout.in_flight(), (0, 0));
    assert!(sent.iter().all(|m| m.is_empty() || m.is_unique()));
    timeout(LIMIT, fanout.close()).await.unwrap().unwrap();

    for sub in subs {
        assert_eq!(sub.result(), "RESULT ok 200");
    }
    assert!(fanout.take_departed().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_neither_blocks_the_others_nor_keeps_buffers() {
    let path = socket_path("killed");
    let mut listener = Listener::bind_with(path.as_ref(), config()).unwrap();
    let mut subs: Vec<Sub> = (0..3).map(|_| Sub::spawn("read", &path)).collect();
    let mut fanout = Fanout::new(&config()); // SlowSubscriber::Wait
    accept(&mut listener, &mut fanout, 3).await;
    let mut stalled = Sub::spawn("stall", &path);
    accept(&mut listener, &mut fanout, 1).await;

    let sent: Vec<Bytes> = (0..100).map(message).collect();
    let killer = {
        let pid = stalled.pid();
        tokio::spawn(async move {
            // The stalled subscriber holds the publisher at its window until it dies.
            tokio::time::sleep(Duration::from_millis(300)).await;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        })
    };
    timeout(LIMIT, async {
        for msg in &sent {
            fanout.feed(msg.clone()).await.unwrap();
        }
        fanout.flush().await.unwrap();
    })
    .await
    .expect("the killed subscriber does not block the others");
    killer.await.unwrap();
    stalled.kill();

    let departed = fanout.take_departed();
    assert_eq!(departed.len(), 1, "{departed:?}");
    assert_eq!(
        departed[0].1.kind(),
        ErrorKind::PeerGone,
        "{}",
        departed[0].1
    );
    assert_eq!(fanout.len(), 3);
    // Nothing the dead subscriber had not pulled is still held.
    assert!(sent.iter().all(|m| m.is_empty() || m.is_unique()));
    timeout(LIMIT, fanout.close()).await.unwrap().unwrap();
    for sub in subs.drain(..) {
        assert_eq!(sub.result(), "RESULT ok 100");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policy_removes_a_slow_subscriber_with_an_error() {
    let path = socket_path("slow");
    // The publisher allows a wide window; the fast subscriber takes it, the stalled one asks
    // for 8 messages, so only the stalled one can fall a whole window behind.
    let config = Config::new()
        .window(1024, 64 << 20)
        .slow_subscriber(SlowSubscriber::Drop);
    let mut listener = Listener::bind_with(path.as_ref(), config.clone()).unwrap();
    let fast = Sub::spawn("read_wide", &path);
    let mut fanout = Fanout::new(&config);
    accept(&mut listener, &mut fanout, 1).await;
    let slow = Sub::spawn("stall", &path);
    accept(&mut listener, &mut fanout, 1).await;

    timeout(LIMIT, async {
        for i in 0..60 {
            fanout.feed(message(i)).await.unwrap();
        }
        fanout.close().await.unwrap();
    })
    .await
    .expect("no hang");

    let departed = fanout.take_departed();
    assert_eq!(departed.len(), 1, "{departed:?}");
    assert_eq!(departed[0].1.kind(), ErrorKind::LimitExceeded);
    assert!(
        departed[0].1.to_string().contains("window"),
        "{}",
        departed[0].1
    );
    assert_eq!(fast.result(), "RESULT ok 60");
    let slow = slow.result();
    assert!(
        slow.starts_with("RESULT error LimitExceeded") && slow.contains("dropped"),
        "the slow subscriber is told why: {slow}"
    );
}

/// The README's `Fanout` example, as written there (only the socket path differs), with four
/// subscriber processes that read as fast as they can: none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_drop_policy_example_delivers_everything_to_readers() {
    let path = socket_path("readme");
    let subs: Vec<Sub> = (0..4).map(|_| Sub::spawn("readme", &path)).collect();
    let departed = timeout(LIMIT, readme_publish(&path))
        .await
        .expect("no hang");
    assert!(departed.is_empty(), "nobody dropped: {departed:?}");
    for sub in subs {
        assert_eq!(sub.result(), "RESULT ok 100");
    }
}

async fn readme_publish(path: &Path) -> Vec<String> {
    let mut departed = Vec::new();
    // From README.md, "One message, many receivers".
    let config = Config::new().slow_subscriber(SlowSubscriber::Drop);
    let listener = Listener::bind_with(path, config.clone()).unwrap();
    let mut fanout = Fanout::new(&config);
    for _ in 0..4 {
        fanout.subscribe(listener.accept().await.unwrap());
    }
    for _ in 0..100 {
        fanout.feed(Bytes::from(vec![7u8; 1 << 20])).await.unwrap(); // 4 pulls, no copy here
    }
    fanout.close().await.unwrap(); // every remaining subscriber has everything; then CLOSE to each
    for (id, why) in fanout.take_departed() {
        departed.push(format!("{id} left: {why}"));
    }
    departed
}

/// `send` (feed, then flush) with the drop policy: a subscriber that stops reading stalls the
/// flush, and is dropped after the grace time instead of hanging the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_while_the_publisher_flushes() {
    let config = Config::new()
        .window(WINDOW, 64 << 20)
        .slow_subscriber(SlowSubscriber::Drop)
        .slow_subscriber_grace(Duration::from_millis(200));
    let (stalled_pub, _stalled) = Connection::pair_with(config.clone()).await.unwrap();
    let (reader_pub, reader) = Connection::pair_with(config.clone()).await.unwrap();
    let reading = tokio::spawn(read_all(reader));
    let mut fanout = Fanout::new(&config);
    fanout.subscribe(stalled_pub);
    fanout.subscribe(reader_pub);
    timeout(LIMIT, async {
        for i in 0..40 {
            fanout.send(message(i)).await.unwrap();
        }
        fanout.close().await.unwrap();
    })
    .await
    .expect("the publisher does not hang on a subscriber that stopped reading");
    let departed = fanout.take_departed();
    assert_eq!(departed.len(), 1, "{departed:?}");
    assert_eq!(departed[0].1.kind(), ErrorKind::LimitExceeded);
    let got = timeout(LIMIT, reading).await.unwrap().unwrap();
    assert_eq!(got.len(), 40);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(*m, message(i as u64));
    }
}

async fn read_all(mut conn: Connection) -> Vec<Bytes> {
    let mut got = Vec::new();
    while let Some(msg) = conn.next().await {
        got.push(msg.unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_join_and_leave_while_it_runs() {
    let mut fanout = Fanout::default();
    let (a_pub, a) = Connection::pair().await.unwrap();
    let (b_pub, b) = Connection::pair().await.unwrap();
    let a_id = fanout.subscribe(a_pub);
    let a_task = tokio::spawn(read_all(a));
    let b_task = tokio::spawn(read_all(b));
    let mut b_pub = Some(b_pub);
    timeout(LIMIT, async {
        for i in 0..30u64 {
            if i == 10 {
                fanout.subscribe(b_pub.take().unwrap());
            }
            if i == 20 {
                let mut sender = fanout.unsubscribe(a_id).unwrap();
                sender.close().await.unwrap();
            }
            fanout.send(message(i)).await.unwrap();
        }
        fanout.close().await.unwrap();
    })
    .await
    .expect("no hang");
    assert_eq!(
        a_task.await.unwrap(),
        (0..20).map(message).collect::<Vec<_>>()
    );
    assert_eq!(
        b_task.await.unwrap(),
        (10..30).map(message).collect::<Vec<_>>()
    );
    assert_eq!(fanout.len(), 1);
}
