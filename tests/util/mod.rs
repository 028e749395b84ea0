//! Helpers for tests that run real child processes.
//!
//! A test binary re-executes itself to play a child role: the child runs only the test named
//! `child_entry` (defined in each test file with [`child_entry!`]), which reads its role from
//! the environment. No `fork()` happens inside the multi-threaded test harness.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_pvm::{Config, Connection, Listener};

pub mod attack;
#[cfg(feature = "tcp")]
pub mod pki;
pub mod raw;

pub mod setuid;

const ROLE_VAR: &str = "TOKIO_PVM_TEST_ROLE";

/// Defines the `child_entry` test that child processes run. `child_entry!(roles::run)` gives
/// a test file roles of its own: `roles::run(role, args)` runs the role and returns its exit
/// code, or returns `None` for a role it does not know (then the shared roles below run).
#[macro_export]
macro_rules! child_entry {
    () => {
        #[test]
        fn child_entry() {
            util::run_child_role();
        }
    };
    ($roles:path) => {
        #[test]
        fn child_entry() {
            util::run_child_role_with($roles);
        }
    };
}

/// Deterministic content for message `seq` of `len` bytes.
pub fn pattern(seq: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    fill(seq, &mut v);
    v.into()
}

fn fill(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ buf.len() as u64 | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Size of soak message `seq` from the producer with `seed`: mostly small, sometimes up to
/// 4 MiB.
pub fn soak_size(seed: u64, seq: u64) -> usize {
    let mut x = (seed << 32 ^ seq).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    x ^= x >> 29;
    let r = x as usize;
    match r % 10 {
        0 => r % ((4 << 20) + 1),
        1..=3 => r % 65_537,
        _ => r % 2_049,
    }
}

/// Sizes mix inline (up to 256 B) and pulled messages.
pub fn size_of(seq: u64) -> usize {
    match seq % 7 {
        0 => 0,
        1 | 2 => 100,
        3 => 4096,
        4 => 70_000,
        _ => (seq as usize * 131) % 20_000,
    }
}

/// Whether `msg` is exactly message `seq` of `len` bytes.
pub fn check(seq: u64, len: usize, msg: &[u8]) -> bool {
    msg.len() == len && msg == &pattern(seq, len)[..]
}

/// A fresh directory for sockets, writable by every user (children may run as `nobody`):
/// `$TMPDIR/tokio-pvm-tests/<pid>-<name>`. Directories of test processes that are no longer
/// running are removed first, so runs do not pile up.
pub fn temp_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join("tokio-pvm-tests");
    if std::fs::create_dir(&root).is_ok() {
        // Like /tmp: anyone may create entries, only their owner may remove them.
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
    }
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next()?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Lets every user connect to the socket at `path`.
pub fn open_to_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// A copy of this test binary that any user can execute, even when the build directory is
/// private to its owner.
fn world_executable_copy() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = temp_dir("exe");
        let copy = dir.join("child");
        std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

/// A command that runs this test binary (as it is: a child playing a role may start its own
/// children) playing `role` with `args`.
pub fn role_command(role: &str, args: &[&str]) -> Command {
    role_command_in(std::env::current_exe().unwrap(), role, args)
}

fn role_command_in(exe: PathBuf, role: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_entry",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE_VAR, format!("{role}\x1f{}", args.join("\x1f")));
    cmd
}

/// A child process playing `role` with `args`.
pub struct ChildProc {
    pub child: Child,
}

impl ChildProc {
    pub fn spawn(role: &str, args: &[&str]) -> ChildProc {
        ChildProc::spawn_with(role, args, None)
    }

    /// Spawns the child, optionally as another uid (and that uid as gid).
    pub fn spawn_with(role: &str, args: &[&str], uid: Option<u32>) -> ChildProc {
        ChildProc::spawn_as(role, args, uid.map(|uid| (uid, uid)))
    }

    /// Spawns the child, optionally as another `(uid, gid)`.
    pub fn spawn_as(role: &str, args: &[&str], ids: Option<(u32, u32)>) -> ChildProc {
        let uid = ids.map(|(uid, _)| uid);
        let exe = match uid {
            None => std::env::current_exe().unwrap(),
            Some(_) => world_executable_copy(),
        };
        let mut cmd = role_command_in(exe, role, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((uid, gid)) = ids {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        ChildProc {
            child: cmd.spawn().expect("spawn child"),
        }
    }

    /// Whether this process may start children as another user.
    pub fn can_switch_uid() -> bool {
        nix::unistd::geteuid().is_root()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child and returns (success, stdout lines beginning with `RESULT `).
    pub fn finish(mut self, timeout: Duration) -> (bool, Vec<String>) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                let lines = out
                    .lines()
                    .filter_map(|l| l.strip_prefix("RESULT "))
                    .map(str::to_owned)
                    .collect();
                return (status.success(), lines);
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                panic!("child did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` exists (a child's listener is up).
pub async fn wait_for(path: &Path) {
    for _ in 0..1000 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} never appeared", path.display());
}

/// Entry point of a child process: runs the role named in the environment, if any.
pub fn run_child_role() {
    run_child_role_with(|_, _| None);
}

/// Entry point of a child process of a test file with roles of its own: `roles` runs the role
/// named in the environment and returns its exit code, or returns `None` for a role it does
/// not know, which then runs as in [`run_child_role`].
pub fn run_child_role_with(roles: impl FnOnce(&str, &[String]) -> Option<i32>) {
    let Ok(spec) = std::env::var(ROLE_VAR) else {
        return;
    };
    let mut parts = spec.split('\x1f');
    let role = parts.next().unwrap().to_owned();
    let args: Vec<String> = parts.map(str::to_owned).collect();
    if let Some(code) = roles(&role, &args) {
        std::process::exit(code);
    }
    #[cfg(feature = "probe")]
    if let Some(code) = probe_roles::run(&role, &args) {
        std::process::exit(code);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(child_main(&role, &args));
    std::process::exit(code);
}

/// Connects to `addr` as the child roles do: a Unix socket path with the default `Config`,
/// or `tcp://…` on loopback, plain.
pub async fn connect(addr: &str) -> tokio_pvm::Result<Connection> {
    #[cfg(feature = "tcp")]
    if addr.starts_with("tcp://") {
        let config = tokio_pvm::Config::new().danger_plain_tcp_on_loopback();
        return Connection::connect_with(addr, config).await;
    }
    Connection::connect(addr).await
}

fn result(line: impl std::fmt::Display) {
    println!("RESULT {line}");
}

async fn child_main(role: &str, args: &[String]) -> i32 {
    if let Some(code) = http_roles::run(role, args).await {
        return code;
    }
    if let Some(code) = attack::run(role, args).await {
        return code;
    }
    let path = PathBuf::from(&args[0]);
    let num = |i: usize| -> u64 { args[i].parse().unwrap() };
    match role {
        // send_until_closed PATH EXTRA: connect and send messages (paced) until this side's
        // stream ends (the server closed its side: the cue to finish), then EXTRA more, then
        // close. Reports how many were sent, how the stream ended and how close went.
        "send_until_closed" => {
            let extra: u64 = num(1);
            let conn = Connection::connect(&path).await.unwrap();
            let (mut tx, mut rx) = conn.split();
            let (ended_tx, ended) = tokio::sync::watch::channel(false);
            let reader = tokio::spawn(async move {
                let end = match rx.next().await {
                    None => "none".to_owned(),
                    Some(Ok(m)) => format!("unexpected message of {} bytes", m.len()),
                    Some(Err(e)) => format!("error: {e}"),
                };
                let _ = ended_tx.send(true);
                end
            });
            let mut seq = 0u64;
            let mut after_end = 0;
            while after_end < extra && seq < 20_000 {
                if let Err(e) = tx.feed(pattern(seq, size_of(seq))).await {
                    result(format!("feed error: {e}"));
                    return 1;
                }
                seq += 1;
                if *ended.borrow() {
                    after_end += 1;
                }
                if seq.is_multiple_of(8) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            result(format!("sent {seq}"));
            result(format!("end {}", reader.await.unwrap()));
            match tx.close().await {
                Ok(()) => result("close ok"),
                Err(e) => result(format!("close error: {e}")),
            }
            0
        }
        // send PATH SIZES(comma separated) REPEAT: connect, send every size REPEAT times, close.
        "send" => {
            let sizes: Vec<usize> = args[1].split(',').map(|s| s.parse().unwrap()).collect();
            let repeat = num(2);
            let mut conn = connect(&args[0]).await.unwrap();
            let mut seq = 0;
            for _ in 0..repeat {
                for &n in &sizes {
                    conn.feed(pattern(seq, n)).await.unwrap();
                    seq += 1;
                }
            }
            conn.close().await.unwrap();
            result(seq);
            0
        }
        // recv PATH: connect, receive until the end, check content (sizes follow the sender's
        // list given as SIZES), print the count.
        "recv" => {
            let sizes: Vec<usize> = args[1].split(',').map(|s| s.parse().unwrap()).collect();
            let mut conn = connect(&args[0]).await.unwrap();
            let mut seq = 0u64;
            while let Some(m) = conn.next().await {
                let m = m.unwrap();
                let n = sizes[seq as usize % sizes.len()];
                if !check(seq, n, &m) {
                    eprintln!("message {seq} corrupted");
                    return 3;
                }
                seq += 1;
            }
            result(seq);
            0
        }
        // slow_recv PATH DELAY_MS: connect, receive slowly, print the count at the end.
        "slow_recv" => {
            let delay = Duration::from_millis(num(1));
            let mut conn = connect(&args[0]).await.unwrap();
            let mut seq = 0u64;
            while let Some(m) = conn.next().await {
                let m = m.unwrap();
                assert!(check(seq, m.len(), &m));
                seq += 1;
                tokio::time::sleep(delay).await;
            }
            result(seq);
            0
        }
        // echo PATH: connect, send back every message received, close when the peer closes.
        "echo" => {
            let conn = connect(&args[0]).await.unwrap();
            let (mut tx, mut rx) = conn.split();
            let mut n = 0u64;
            while let Some(m) = rx.next().await {
                tx.feed(m.unwrap()).await.unwrap();
                n += 1;
            }
            tx.close().await.unwrap();
            result(n);
            0
        }
        // flood PATH SIZE: connect and send SIZE-byte messages until killed.
        "flood" => {
            let size = num(1) as usize;
            let mut conn = connect(&args[0]).await.unwrap();
            let msg = pattern(0, size);
            loop {
                if conn.feed(msg.clone()).await.is_err() {
                    return 4;
                }
            }
        }
        // sink PATH: connect and receive until killed.
        "sink" => {
            let mut conn = connect(&args[0]).await.unwrap();
            while let Some(m) = conn.next().await {
                m.unwrap();
            }
            0
        }
        // connect_expect PATH: connect with the default config; print the error kind.
        "connect_expect" => match Connection::connect(&path).await {
            Ok(_) => {
                result("connected");
                0
            }
            Err(e) => {
                result(format!("{:?}: {e}", e.kind()));
                0
            }
        },
        // echo_allow PATH UID: connect accepting UID, print both modes, echo until closed.
        "echo_allow" => {
            let cfg = Config::new().allow_uid(num(1) as u32);
            let conn = Connection::connect_with(&path, cfg).await.unwrap();
            result(format!(
                "recv {:?} send {:?}",
                conn.mode(),
                conn.send_mode()
            ));
            let (mut tx, mut rx) = conn.split();
            while let Some(m) = rx.next().await {
                tx.feed(m.unwrap()).await.unwrap();
            }
            tx.close().await.unwrap();
            0
        }
        // connect_strict PATH UID: connect accepting UID but requiring pulls; print the outcome.
        "connect_strict" => {
            let cfg = Config::new().allow_uid(num(1) as u32).require_pull(true);
            match Connection::connect_with(&path, cfg).await {
                Ok(_) => result("connected"),
                Err(e) => result(format!("{:?}: {e}", e.kind())),
            }
            0
        }
        // connect_allow PATH UID: connect accepting UID; print the outcome.
        "connect_allow" => {
            let cfg = Config::new().allow_uid(num(1) as u32);
            match Connection::connect_with(&path, cfg).await {
                Ok(_) => result("connected"),
                Err(e) => result(format!("{:?}: {e}", e.kind())),
            }
            0
        }
        // listen_once PATH: bind, accept one connection (any outcome), print it.
        "listen_once" => {
            let listener = Listener::bind(&path).unwrap();
            open_to_all(&path);
            match tokio::time::timeout(Duration::from_secs(3), listener.accept()).await {
                Ok(Ok(_)) => result("accepted"),
                Ok(Err(e)) => result(format!("{:?}: {e}", e.kind())),
                Err(_) => result("nothing accepted"),
            }
            0
        }
        // soak_send PATH SEED COUNT: connect, send COUNT messages of soak sizes, flush every
        // few and report the flushed count, then close and report DONE.
        "soak_send" => {
            use std::io::Write;
            let seed = num(1);
            let count = num(2);
            let mut conn = Connection::connect(&path).await.unwrap();
            for seq in 0..count {
                conn.feed(pattern(seed ^ seq, soak_size(seed, seq)))
                    .await
                    .unwrap();
                if seq % 4 == 3 {
                    conn.flush().await.unwrap();
                    println!("FLUSHED {}", seq + 1);
                    std::io::stdout().flush().unwrap();
                }
            }
            conn.close().await.unwrap();
            println!("FLUSHED {count}");
            result("DONE");
            0
        }
        other => {
            eprintln!("unknown child role {other}");
            2
        }
    }
}

/// Child roles for the probe tests (`tests/probe.rs`). They are plain blocking code: each one
/// publishes blocks, writes or reads them, or probes another child, and reports on stdout with
/// `RESULT ` lines. Every role that waits for the parent gives up after [`probe_roles::LIFETIME`]
/// so that no child outlives a test run that died.
#[cfg(feature = "probe")]
pub mod probe_roles {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use tokio_pvm::probe::{BlockBuilder, Probe, Publication, Value};

    use super::result;

    /// Longest a probe child lives.
    pub const LIFETIME: Duration = Duration::from_secs(60);

    /// The 64-byte string setter `ch` writes.
    pub fn fill_string(ch: char) -> String {
        std::iter::repeat_n(ch, 64).collect()
    }

    /// Whether `s` is a value the concurrent setters can leave behind: empty (never written) or
    /// 64 copies of one character.
    pub fn whole_string(s: &str) -> Option<char> {
        let first = s.chars().next()?;
        (s.len() == 64 && s.chars().all(|c| c == first)).then_some(first)
    }

    fn sleep_until(deadline: Instant) {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn describe(e: &tokio_pvm::Error) -> String {
        format!("{:?}: {e}", e.kind())
    }

    /// Runs `role` if it is a probe role; returns the exit code.
    pub fn run(role: &str, args: &[String]) -> Option<i32> {
        let dir = args.first().map(PathBuf::from);
        let num = |i: usize| -> u64 { args[i].parse().unwrap() };
        Some(match role {
            // probe_target DIR LIFETIME_MS: publish a plain block "stats" (n = 7, delta = -3,
            // ratio = 0.5, on, label = "target"), a block "other" of the same size and
            // another layout (m = 9), and a tunable block "knobs" (level = 3); unpublish and
            // exit after LIFETIME_MS.
            "probe_target" => target(&dir?, Duration::from_millis(num(1))),
            // probe_torn DIR GAP_NS: publish "torn" and update it from a thread, every field
            // encoding the same counter, until killed; between updates the thread spins for a
            // random 0 to GAP_NS nanoseconds (0: back to back, at full speed).
            "probe_torn" => torn(&dir?, num(1)),
            // probe_tunable DIR: publish tunable "tune" (s: str[64], stop: bool) and read it
            // in-process until `stop` is set; report what the snapshots held.
            "probe_tunable" => tunable(&dir?),
            // probe_setter DIR PID CHAR COUNT: once DIR/go exists, write 64 CHARs into
            // tune.s of PID, COUNT times; report the old values seen.
            "probe_setter" => setter(&dir?, num(1) as i32, &args[2], num(3)),
            // probe_poke DIR: publish tunable "tune" (limit = 5, mode = "slow", quit) and plain
            // "ack"; report each change of "tune" and echo it into "ack"; exit on quit.
            "probe_poke" => poke(&dir?),
            // probe_try DIR PID BLOCK: discover, attach to PID, read BLOCK; report each outcome.
            "probe_try" => try_probe(&dir?, num(1) as i32, &args[2]),
            _ => return None,
        })
    }

    fn target(dir: &Path, lifetime: Duration) -> i32 {
        let deadline = Instant::now() + lifetime.min(LIFETIME);
        let mut b = BlockBuilder::new("stats");
        let n = b.u64("n");
        let delta = b.i64("delta");
        let ratio = b.f64("ratio");
        let on = b.bool("on");
        let label = b.string("label", 16);
        let mut stats = b.build().unwrap();
        let mut b = BlockBuilder::new("other");
        let m = b.u64("m");
        b.i64("delta");
        b.f64("ratio");
        b.bool("on");
        b.string("label", 16);
        let mut other = b.build().unwrap();
        stats.update(|w| {
            w.set(n, 7);
            w.set(delta, -3);
            w.set(ratio, 0.5);
            w.set(on, true);
            w.set_str(label, "target");
        });
        other.set(m, 9);
        let mut b = BlockBuilder::new("knobs").tunable();
        let level = b.u64("level");
        let mut knobs = b.build().unwrap();
        knobs.set(level, 3);
        let publication = Publication::publish_in(dir, &[&stats, &other, &knobs]).unwrap();
        result("published");
        sleep_until(deadline);
        drop(publication);
        // Exit with the blocks still allocated, as a process that ends does: freeing them first
        // would let a watching probe catch a freed block before the process is gone.
        std::process::exit(0)
    }

    fn torn(dir: &Path, gap_ns: u64) -> i32 {
        let mut b = BlockBuilder::new("torn");
        let words = [b.u64("a"), b.u64("b"), b.u64("c"), b.u64("d")];
        let f = b.f64("f");
        let s = b.string("s", 24);
        let mut block = b.build().unwrap();
        block.update(|w| {
            for field in words {
                w.set(field, 0);
            }
            w.set(f, 0.0);
            w.set_str(s, "0");
        });
        let _publication = Publication::publish_in(dir, &[&block]).unwrap();
        std::thread::spawn(move || {
            let mut counter = 0u64;
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            loop {
                if gap_ns > 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let gap = Duration::from_nanos(x % (gap_ns + 1));
                    let from = Instant::now();
                    while from.elapsed() < gap {
                        std::hint::spin_loop();
                    }
                }
                counter += 1;
                let text = counter.to_string();
                block.update(|w| {
                    for field in words {
                        w.set(field, counter);
                    }
                    w.set(f, counter as f64);
                    w.set_str(s, &text);
                });
            }
        });
        sleep_until(Instant::now() + LIFETIME);
        0
    }

    fn tunable(dir: &Path) -> i32 {
        let deadline = Instant::now() + LIFETIME;
        let mut b = BlockBuilder::new("tune").tunable();
        let s = b.string("s", 64);
        let stop = b.bool("stop");
        let block = b.build().unwrap();
        let _publication = Publication::publish_in(dir, &[&block]).unwrap();
        let (mut snapshots, mut empty, mut a, mut b_seen, mut other, mut torn) =
            (0u64, 0, 0, 0, 0, 0);
        let (mut inconsistent, mut transitions) = (0u64, 0u64);
        let mut last = None;
        while Instant::now() < deadline {
            let snap = match block.read() {
                Ok(snap) => snap,
                Err(_) => {
                    inconsistent += 1;
                    continue;
                }
            };
            snapshots += 1;
            let text = snap.get(s);
            match whole_string(&text) {
                None if text.is_empty() => empty += 1,
                None => {
                    torn += 1;
                    eprintln!("torn string seen: {text:?}");
                }
                Some('A') => a += 1,
                Some('B') => b_seen += 1,
                Some(_) => other += 1,
            }
            let now = text.chars().next();
            if now != last {
                transitions += 1;
                last = now;
            }
            if snap.get(stop) {
                break;
            }
        }
        result(format!(
            "snapshots={snapshots} empty={empty} a={a} b={b_seen} other={other} torn={torn} \
             inconsistent={inconsistent} transitions={transitions}"
        ));
        0
    }

    fn setter(dir: &Path, pid: i32, ch: &str, count: u64) -> i32 {
        let ch: char = ch.parse().unwrap();
        let probe = Probe::attach_in(&[dir.to_owned()], pid).unwrap();
        let value = fill_string(ch);
        std::fs::write(dir.join(format!("ready-{ch}")), b"").unwrap();
        let deadline = Instant::now() + LIFETIME;
        while !dir.join("go").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (mut own, mut others, mut empty, mut bad, mut errors) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for _ in 0..count {
            match probe.set("tune", "s", Value::Str(value.clone())) {
                Ok(change) => match change.old {
                    Value::Str(old) if old.is_empty() => empty += 1,
                    Value::Str(old) => match whole_string(&old) {
                        Some(c) if c == ch => own += 1,
                        Some(_) => others += 1,
                        None => {
                            bad += 1;
                            eprintln!("setter {ch}: torn old value {old:?}");
                        }
                    },
                    old => {
                        bad += 1;
                        eprintln!("setter {ch}: old value of another type {old:?}");
                    }
                },
                Err(e) => {
                    errors += 1;
                    eprintln!("setter {ch}: {}", describe(&e));
                }
            }
        }
        result(format!(
            "sets={count} own={own} others={others} empty={empty} bad={bad} errors={errors}"
        ));
        0
    }

    fn poke(dir: &Path) -> i32 {
        let deadline = Instant::now() + LIFETIME;
        let mut b = BlockBuilder::new("tune").tunable();
        let limit = b.u64("limit");
        let mode = b.string("mode", 16);
        let quit = b.bool("quit");
        let mut tune = b.build().unwrap();
        tune.update(|w| {
            w.set(limit, 5);
            w.set_str(mode, "slow");
        });
        let mut b = BlockBuilder::new("ack");
        let ack_limit = b.u64("limit");
        let ack_mode = b.string("mode", 16);
        let ack_changes = b.u64("changes");
        let mut ack = b.build().unwrap();
        let _publication = Publication::publish_in(dir, &[&tune, &ack]).unwrap();
        let mut last = tune.read().unwrap();
        let mut changes = 0u64;
        while Instant::now() < deadline {
            if tune.changed_since(&last) {
                last = tune.read().unwrap();
                changes += 1;
                let (l, m) = (last.get(limit), last.get(mode));
                result(format!("limit={l} mode={m} quit={}", last.get(quit)));
                ack.update(|w| {
                    w.set(ack_limit, l);
                    w.set_str(ack_mode, &m);
                    w.set(ack_changes, changes);
                });
                if last.get(quit) {
                    return 0;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        1
    }

    fn try_probe(dir: &Path, pid: i32, block: &str) -> i32 {
        let dirs = [dir.to_owned()];
        let found = Probe::discover_in(&dirs);
        result(format!(
            "discover processes={} skipped={}",
            found.processes.len(),
            found.skipped.len()
        ));
        for (path, e) in &found.skipped {
            result(format!("skipped {}: {}", path.display(), describe(e)));
        }
        let probe = match Probe::attach_in(&dirs, pid) {
            Ok(probe) => {
                result("attach ok");
                probe
            }
            Err(e) => {
                result(format!("attach {}", describe(&e)));
                return 0;
            }
        };
        match probe.read(block) {
            Ok(snap) => result(format!("read ok {:?}", snap.value("n"))),
            Err(e) => result(format!("read {}", describe(&e))),
        }
        0
    }
}

/// Child roles for the byte-stream protocol tests (`tests/http.rs`): a hyper HTTP/1.1 server
/// and a line echo over [`tokio_pvm::ByteStream`]. Each role gives up after
/// [`http_roles::LIFETIME`] so that no child outlives a test run that died.
pub mod http_roles {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use futures::{SinkExt, StreamExt};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::header::HeaderValue;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio_pvm::{ByteStream, Connection, Listener};
    use tokio_util::codec::{Framed, LinesCodec};

    use super::result;

    /// Longest an HTTP-test child lives.
    pub const LIFETIME: Duration = Duration::from_secs(30);
    /// Response header with the request body's length.
    pub const LEN_HEADER: &str = "x-body-len";
    /// Response header with [`checksum`] of the request body.
    pub const SUM_HEADER: &str = "x-body-sum";

    /// A simple order-sensitive checksum.
    pub fn checksum(data: &[u8]) -> u64 {
        data.iter()
            .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)))
    }

    /// Runs `role` if it is one of these roles; returns the exit code.
    pub async fn run(role: &str, args: &[String]) -> Option<i32> {
        let path = args.first().map(Path::new);
        let work = async {
            match role {
                // http_server PATH: bind a listener at PATH, accept one connection and serve
                // HTTP/1.1 on it: POST /echo answers with the request body and the headers
                // LEN_HEADER and SUM_HEADER; anything else is 404. Reports
                // "requests N" once the client has closed the connection.
                "http_server" => Some(http_server(path?).await),
                // lines_upper PATH: connect, answer every line with it upper-cased, close on
                // end of file; reports "lines N".
                "lines_upper" => Some(lines_upper(path?).await),
                _ => None,
            }
        };
        match tokio::time::timeout(LIFETIME, work).await {
            Ok(code) => code,
            Err(_) => {
                eprintln!("child role {role} timed out after {LIFETIME:?}");
                Some(9)
            }
        }
    }

    async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
        if req.method() != Method::POST || req.uri().path() != "/echo" {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            return Ok(resp);
        }
        let body = req.into_body().collect().await?.to_bytes();
        let (len, sum) = (body.len() as u64, checksum(&body));
        let mut resp = Response::new(Full::new(body));
        resp.headers_mut()
            .insert(LEN_HEADER, HeaderValue::from(len));
        resp.headers_mut()
            .insert(SUM_HEADER, HeaderValue::from(sum));
        Ok(resp)
    }

    async fn http_server(path: &Path) -> i32 {
        let listener = match Listener::bind(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("http_server: binding {}: {e}", path.display());
                return 3;
            }
        };
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("http_server: accepting: {e}");
                return 3;
            }
        };
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let service = hyper::service::service_fn(move |req| {
            counter.fetch_add(1, Ordering::Relaxed);
            echo(req)
        });
        let served = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(ByteStream::new(conn)), service)
            .await;
        match served {
            Ok(()) => {
                result(format!("requests {}", requests.load(Ordering::Relaxed)));
                0
            }
            Err(e) => {
                eprintln!("http_server: serving: {e}");
                4
            }
        }
    }

    async fn lines_upper(path: &Path) -> i32 {
        let conn = match Connection::connect(path).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("lines_upper: connecting to {}: {e}", path.display());
                return 3;
            }
        };
        let mut framed = Framed::new(ByteStream::new(conn), LinesCodec::new());
        let mut n = 0u64;
        while let Some(line) = framed.next().await {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("lines_upper: reading line {n}: {e}");
                    return 4;
                }
            };
            if let Err(e) = framed.send(line.to_uppercase()).await {
                eprintln!("lines_upper: answering line {n}: {e}");
                return 4;
            }
            n += 1;
        }
        if let Err(e) = SinkExt::<String>::close(&mut framed).await {
            eprintln!("lines_upper: closing: {e}");
            return 4;
        }
        result(format!("lines {n}"));
        0
    }
}
