//! One publisher, several subscriber processes: what a `Fanout` costs the publisher.
//!
//! ```text
//! cargo run --release --example fanout [-- [--subscribers N] [--size BYTES] [--count M]
//!                                          [--slow drop|wait]]
//! cargo run --release --example fanout -- --compare [--size BYTES] [--count M] [--slow drop|wait]
//! ```
//!
//! This process is the publisher. It binds a listener at a temporary socket path, starts N
//! subscriber processes (default 4: this same binary, re-executed with a hidden `--subscriber`
//! argument), adds their connections to a `tokio_pvm::Fanout` and publishes M messages
//! (default 1000) of BYTES bytes each (default 1048576, at least 8), then flushes and closes
//! it. The content follows the scheme in `common/pattern.rs` (the first 8 bytes are the
//! message's index, the rest a pattern derived from it); each subscriber checks every byte of
//! every message and their order, and prints one line: messages, bytes, seconds from its first
//! message, and its own CPU time. `--slow` sets `Config::slow_subscriber`: `wait` (the
//! default) lets the slowest subscriber set the pace, `drop` drops a subscriber that falls a
//! whole window (16 MiB by default) behind, which then fails its run. This publisher does not
//! pace itself, so it gets a window ahead of a subscriber as soon as it outruns its pulls:
//! with `drop`, expect every subscriber to be dropped within the first few dozen messages
//! (and exit code 1); the option is there to show the policy and what each side is told.
//!
//! The publisher first measures, for scale, what one copy of the payload costs it (CPU seconds
//! per GB of `Bytes::copy_from_slice`). After the run it prints the subscribers, the message
//! size and count, the bytes delivered (N x M x BYTES), the wall time from the first message
//! until `close` returned (every subscriber has pulled everything), the aggregate delivered
//! GB/s (10^9 bytes per second), its own CPU seconds (user + system, `getrusage`) over that
//! time, per GB published and per GB delivered, next to the least a publisher that copied
//! each message once per subscriber would pay, and each subscriber's line. `--compare` runs
//! N = 1, 2 and 4 in turn with the same messages and ends with a table of those numbers.
//!
//! What to look at: the publisher's CPU per GB *published* against the copying column. A
//! fanout announces each message to every subscriber (a small frame per subscriber) and every
//! subscriber pulls the payload out of the publisher's memory itself with `process_vm_readv`,
//! on its own CPU: the publisher copies no payload, however many subscribers there are. Its
//! CPU is not independent of N, though: every subscriber costs it frames, acknowledgements
//! and wake-ups, so it grows with N (its CPU per GB *delivered* stays of the same order), but
//! each subscriber adds a fraction of what a copy would. The copying shows up in the lines
//! of the subscribers instead: each spends its own CPU pulling (system time) and checking
//! (user time) its copy. Delivered GB/s is limited by the cores the subscribers get: with
//! more subscribers than cores it stops growing with N, and the timings vary from run to run.
//! Messages up to the inline threshold (256 B) travel inside the frame and *are* copied per
//! subscriber; use larger messages here.
//!
//! Exits with 0 only if every subscriber received and verified every message, 1 otherwise
//! (the reason is printed), 2 on bad usage. The subscriber processes are killed if the
//! publisher fails.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/fmt.rs"]
mod fmt;
#[path = "common/pattern.rs"]
mod pattern;

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use nix::libc;
use tokio::process::{Child, Command};
use tokio_pvm::{Config, Connection, DEFAULT_MAX_MESSAGE_SIZE, Fanout, Listener, SlowSubscriber};

use pattern::{Checker, Pool};

const USAGE: &str = "\
usage: fanout [--subscribers N] [--size BYTES] [--count M] [--slow drop|wait]
       fanout --compare [--size BYTES] [--count M] [--slow drop|wait]

Publishes M messages (default 1000) of BYTES bytes each (default 1048576, at least 8) through
a tokio_pvm::Fanout to N subscriber processes (default 4), each of which checks every byte,
and prints what that cost the publisher's CPU. --slow sets Config::slow_subscriber (default
wait). --compare runs N = 1, 2 and 4 in turn and prints a table.";

/// The argument that makes this binary a subscriber: `--subscriber PATH SIZE COUNT`.
const CHILD_FLAG: &str = "--subscriber";

/// How long anyone waits for a connection, a message, room to publish, or an exit.
const STALL: Duration = Duration::from_secs(30);

/// The subscriber counts `--compare` runs.
const COMPARE: [usize; 3] = [1, 2, 4];

struct Args {
    /// One run per entry: its number of subscribers.
    runs: Vec<usize>,
    size: usize,
    count: u64,
    slow: SlowSubscriber,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut subscribers, mut compare) = (None, false);
    let (mut size, mut count, mut slow) = (1usize << 20, 1000u64, SlowSubscriber::Wait);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--subscribers" => subscribers = Some(cli::number::<usize>(&arg, args.next())?),
            "--size" => size = cli::number(&arg, args.next())?,
            "--count" => count = cli::number(&arg, args.next())?,
            "--slow" => {
                slow = match args.next().as_deref() {
                    Some("wait") => SlowSubscriber::Wait,
                    Some("drop") => SlowSubscriber::Drop,
                    Some(other) => {
                        return Err(format!("--slow takes drop or wait, not {other:?}"));
                    }
                    None => return Err("--slow needs a value (drop or wait)".to_string()),
                }
            }
            "--compare" => compare = true,
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    let runs = match (compare, subscribers) {
        (true, Some(_)) => {
            return Err(
                "--compare runs N = 1, 2 and 4 itself; leave out --subscribers".to_string(),
            );
        }
        (true, None) => COMPARE.to_vec(),
        (false, Some(0)) => return Err("--subscribers must be at least 1".to_string()),
        (false, n) => vec![n.unwrap_or(4)],
    };
    if size < pattern::HEADER {
        return Err(format!(
            "--size must be at least {} (the message index)",
            pattern::HEADER
        ));
    }
    if count == 0 {
        return Err("--count must be at least 1".to_string());
    }
    let most = runs.iter().copied().max().unwrap_or(1) as u64;
    if count
        .checked_mul(size as u64)
        .and_then(|b| b.checked_mul(most))
        .is_none()
    {
        return Err("--subscribers x --count x --size does not fit in 64 bits".to_string());
    }
    Ok(Args {
        runs,
        size,
        count,
        slow,
    })
}

/// CPU time this process (all its threads) has used so far.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: f64,
    system: f64,
}

impl Cpu {
    /// `getrusage(RUSAGE_SELF)`: every thread of this process, including finished ones, to
    /// the microsecond. (`/proc/self/stat` would do without `unsafe`, but counts in ticks of
    /// 10 ms, too coarse for a publisher that spends a few tens of milliseconds per run.)
    fn now() -> Result<Cpu, String> {
        let mut usage = MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `usage` points to writable memory of the size and alignment of a `rusage`,
        // which `getrusage` fills on success. A zeroed `rusage` (integers only) is a valid
        // value, so `assume_init` is sound whether or not the call wrote to it.
        let (rc, usage) = unsafe {
            let rc = libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
            (rc, usage.assume_init())
        };
        if rc != 0 {
            return Err(format!(
                "getrusage(RUSAGE_SELF): {}",
                std::io::Error::last_os_error()
            ));
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Cpu {
            user: secs(usage.ru_utime),
            system: secs(usage.ru_stime),
        })
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }

    fn total(self) -> f64 {
        self.user + self.system
    }
}

/// Child mode: `--subscriber PATH SIZE COUNT`. Connects, receives and checks every message,
/// and returns its one-line report.
async fn subscriber(args: &[String]) -> Result<String, String> {
    let [path, size, count] = args else {
        return Err(format!(
            "{CHILD_FLAG} takes SOCKET_PATH SIZE COUNT, got {args:?}"
        ));
    };
    let size: usize = size.parse().map_err(|_| format!("bad size {size:?}"))?;
    let count: u64 = count.parse().map_err(|_| format!("bad count {count:?}"))?;
    let config = Config::new().max_message_size((size as u64).max(DEFAULT_MAX_MESSAGE_SIZE));
    let mut conn = Connection::connect_with(path, config)
        .await
        .map_err(|e| format!("connecting to {path}: {e}"))?;
    let mut checker = Checker::new(Some(size));
    checker.receive_all(&mut conn, Some(STALL)).await?;
    let s = checker.finish(Some(count))?;
    let cpu = Cpu::now()?;
    let gb = s.bytes as f64 / 1e9;
    Ok(format!(
        "pid {}: {} messages, {} bytes verified in {:.3} s ({:.2} GB/s); CPU {:.2} s \
         (user {:.2}, sys {:.2}), {:.3} s per GB received",
        std::process::id(),
        fmt::grouped(s.messages),
        fmt::grouped(s.bytes),
        s.seconds,
        s.gb_per_sec(),
        cpu.total(),
        cpu.user,
        cpu.system,
        cpu.total() / gb,
    ))
}

/// What one run measured.
struct Outcome {
    subscribers: usize,
    /// Messages published (M, unless every subscriber went away first).
    messages: u64,
    /// M x BYTES.
    published: u64,
    /// N x M x BYTES.
    delivered: u64,
    /// From the first message until `close` returned.
    seconds: f64,
    cpu: Cpu,
    /// Messages whose pooled buffer was still held, so a fresh one was generated (publisher CPU
    /// that is not the fanout's).
    regenerated: u64,
    /// Each subscriber's report line, or what went wrong with it.
    lines: Vec<String>,
    /// How many subscribers did not verify everything.
    failed: usize,
}

impl Outcome {
    fn delivered_gb_per_sec(&self) -> f64 {
        per(self.delivered as f64 / 1e9, self.seconds)
    }

    fn cpu_per_gb_published(&self) -> f64 {
        per(self.cpu.total(), self.published as f64 / 1e9)
    }

    fn cpu_per_gb_delivered(&self) -> f64 {
        per(self.cpu.total(), self.delivered as f64 / 1e9)
    }
}

fn per(amount: f64, unit: f64) -> f64 {
    if unit > 0.0 { amount / unit } else { 0.0 }
}

/// Starts `n` subscriber processes. They are killed when dropped, so every early return
/// from here on takes them down.
fn spawn_subscribers(
    exe: &Path,
    socket: &Path,
    n: usize,
    size: usize,
    count: u64,
) -> Result<Vec<Child>, String> {
    (0..n)
        .map(|_| {
            Command::new(exe)
                .arg(CHILD_FLAG)
                .arg(socket)
                .arg(size.to_string())
                .arg(count.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting a subscriber ({}): {e}", exe.display()))
        })
        .collect()
}

/// Accepts a connection from each of `children` into `fanout`.
async fn accept_all(
    listener: &mut Listener,
    fanout: &mut Fanout,
    children: &mut [Child],
) -> Result<(), String> {
    let mut pids: Vec<u32> = children.iter().filter_map(Child::id).collect();
    while !pids.is_empty() {
        let exited = futures::future::select_all(children.iter_mut().map(|c| Box::pin(c.wait())));
        let conn = tokio::select! {
            conn = listener.accept() => conn.map_err(|e| format!("accepting a subscriber: {e}"))?,
            (status, i, _) = exited => {
                return Err(match status {
                    Ok(status) => format!("subscriber {i} exited ({status}) before connecting"),
                    Err(e) => format!("waiting for subscriber {i}: {e}"),
                });
            }
            () = tokio::time::sleep(STALL) => {
                let missing = pids.len();
                return Err(format!("{missing} subscriber(s) did not connect within {STALL:?}"));
            }
        };
        let pid = conn.peer().pid().unwrap_or(0) as u32;
        let Some(i) = pids.iter().position(|&p| p == pid) else {
            return Err(format!(
                "a connection from process {pid}, which is not one of the subscribers started"
            ));
        };
        pids.swap_remove(i);
        fanout.subscribe(conn);
    }
    Ok(())
}

/// Publishes `count` messages of `size` bytes to `n` subscriber processes.
async fn run_once(
    listener: &mut Listener,
    exe: &Path,
    config: &Config,
    n: usize,
    size: usize,
    count: u64,
) -> Result<Outcome, String> {
    let mut children = spawn_subscribers(
        exe,
        listener.path().expect("a Unix listener"),
        n,
        size,
        count,
    )?;
    let mut fanout = Fanout::new(config);
    accept_all(listener, &mut fanout, &mut children).await?;

    // Generated before the clock starts: afterwards only each message's index is rewritten.
    let mut pool = Pool::new(size);
    let cpu_before = Cpu::now()?;
    let started = Instant::now();
    let mut messages = 0;
    for seq in 0..count {
        if fanout.is_empty() {
            break; // every subscriber has been dropped or has gone
        }
        messages += 1;
        tokio::time::timeout(STALL, fanout.feed(pool.message(seq)))
            .await
            .map_err(|_| format!("no room to publish message {seq} for {STALL:?}"))?
            .map_err(|e| format!("publishing message {seq}: {e}"))?;
    }
    tokio::time::timeout(STALL, async {
        fanout.flush().await?;
        fanout.close().await
    })
    .await
    .map_err(|_| format!("the subscribers did not pull everything within {STALL:?}"))?
    .map_err(|e| format!("closing the fanout: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = Cpu::now()?.since(cpu_before);

    let mut lines = Vec::new();
    for (id, why) in fanout.take_departed() {
        lines.push(format!("publisher: {id} left: {why}"));
    }
    drop(fanout);

    let mut failed = 0;
    for child in children {
        let pid = child.id().unwrap_or(0);
        // Dropping this future on a timeout drops the child, which kills it.
        let output = tokio::time::timeout(STALL, child.wait_with_output())
            .await
            .map_err(|_| format!("subscriber {pid} did not exit within {STALL:?}"))?
            .map_err(|e| format!("waiting for subscriber {pid}: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            lines.push(stdout.trim_end().to_string());
        } else {
            failed += 1;
            let why = match stderr.trim_end() {
                "" => "(it printed nothing)",
                why => why,
            };
            lines.push(format!("pid {pid} FAILED ({}): {why}", output.status));
        }
    }
    let published = messages * size as u64;
    Ok(Outcome {
        subscribers: n,
        messages,
        published,
        delivered: published * n as u64,
        seconds,
        cpu,
        regenerated: pool.regenerated(),
        lines,
        failed,
    })
}

fn print_outcome(o: &Outcome, size: usize, copy: f64) {
    println!("subscribers            {}", o.subscribers);
    println!("message size           {} bytes", fmt::grouped(size));
    println!("messages               {}", fmt::grouped(o.messages));
    if o.failed > 0 {
        // Rates over deliveries that did not all happen would mislead: none are shown.
        println!(
            "delivered              not measured: {} of {} subscribers did not receive and \
             verify every message (their reports below say why)",
            o.failed, o.subscribers
        );
    } else {
        println!(
            "delivered              {} bytes = {} x {} x {}, {:.3} GB",
            fmt::grouped(o.delivered),
            o.subscribers,
            o.messages,
            size,
            o.delivered as f64 / 1e9
        );
        println!("wall time              {:.3} s", o.seconds);
        println!(
            "delivered rate         {:.2} GB/s, all subscribers together",
            o.delivered_gb_per_sec()
        );
    }
    println!(
        "publisher CPU          {:.3} s (user {:.3}, sys {:.3})",
        o.cpu.total(),
        o.cpu.user,
        o.cpu.system
    );
    if o.failed == 0 {
        println!(
            "publisher CPU per GB   {:.4} s per GB published, {:.4} s per GB delivered",
            o.cpu_per_gb_published(),
            o.cpu_per_gb_delivered()
        );
        println!(
            "copying instead        at least {:.4} s per GB published ({} x {copy:.4} s/GB, one \
             copy each)",
            o.subscribers as f64 * copy,
            o.subscribers
        );
    }
    if o.regenerated > 0 {
        println!(
            "note                   {} message buffers were generated afresh (the pooled one \
             was still held), which the publisher CPU above includes",
            o.regenerated
        );
    }
    println!("subscribers' reports:");
    for line in &o.lines {
        println!("  {line}");
    }
}

/// What copying the payload once costs this process, in CPU seconds per GB: a
/// `Bytes::copy_from_slice` of each message (up to 256 MiB of them), the least a publisher
/// that copied per subscriber would pay per subscriber.
fn copy_cost(size: usize, count: u64) -> Result<f64, String> {
    let mut pool = Pool::new(size);
    let n = count.min(((256u64 << 20) / size as u64).max(1));
    let before = Cpu::now()?;
    for seq in 0..n {
        std::hint::black_box(Bytes::copy_from_slice(&pool.message(seq)));
    }
    let cpu = Cpu::now()?.since(before).total();
    Ok(per(cpu, (n * size as u64) as f64 / 1e9))
}

async fn run(args: Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let socket: PathBuf =
        std::env::temp_dir().join(format!("tokio-pvm-fanout-{}.sock", std::process::id()));
    let config = Config::new()
        .max_message_size((args.size as u64).max(DEFAULT_MAX_MESSAGE_SIZE))
        .slow_subscriber(args.slow);
    let mut listener = Listener::bind_with(&socket, config.clone())
        .map_err(|e| format!("listening at {}: {e}", socket.display()))?;
    let slow = match args.slow {
        SlowSubscriber::Drop => "drop",
        _ => "wait",
    };
    println!(
        "tokio-pvm fanout: publisher pid {}, socket {}, slow subscribers: {slow}",
        std::process::id(),
        socket.display()
    );
    let copy = copy_cost(args.size, args.count)?;
    println!(
        "for scale: one copy of the payload (Bytes::copy_from_slice) costs this process {copy:.4} \
         s of CPU per GB, which a publisher that copied would pay once per subscriber"
    );

    let mut outcomes = Vec::new();
    for &n in &args.runs {
        println!();
        let o = run_once(&mut listener, &exe, &config, n, args.size, args.count)
            .await
            .map_err(|e| format!("run with {n} subscriber(s): {e}"))?;
        print_outcome(&o, args.size, copy);
        outcomes.push(o);
    }

    if outcomes.len() > 1 {
        println!();
        println!(
            "{:>11}  {:>14}  {:>13}  {:>18}  {:>18}  {:>18}",
            "subscribers",
            "delivered GB/s",
            "publisher CPU",
            "CPU s/GB published",
            "CPU s/GB delivered",
            "if copying s/GB"
        );
        for o in &outcomes {
            println!(
                "{:>11}  {:>14.2}  {:>11.3} s  {:>18.4}  {:>18.4}  {:>18.4}",
                o.subscribers,
                o.delivered_gb_per_sec(),
                o.cpu.total(),
                o.cpu_per_gb_published(),
                o.cpu_per_gb_delivered(),
                o.subscribers as f64 * copy
            );
        }
        println!(
            "(if copying: the least a publisher that copied each message once per subscriber \
             would pay per GB published, from the copy cost measured above)"
        );
    }

    let failed: usize = outcomes.iter().map(|o| o.failed).sum();
    let total: usize = outcomes.iter().map(|o| o.subscribers).sum();
    println!();
    if failed > 0 {
        return Err(format!(
            "{failed} of {total} subscriber(s) did not receive and verify every message"
        ));
    }
    println!(
        "ok: every subscriber received and verified all {} messages",
        args.count
    );
    Ok(())
}

// One thread each: the publisher's CPU is then the fanout's work, not a work-stealing
// scheduler's hand-offs between threads (large pulls still go to the blocking pool).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        return match subscriber(&args[1..]).await {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fanout subscriber (pid {}): {e}", std::process::id());
                ExitCode::FAILURE
            }
        };
    }
    cli::main("fanout", USAGE, parse_args, run).await
}
