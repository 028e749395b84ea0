//! Moves at least 1 GiB between two processes over `tokio-pvm` and checks every byte.
//!
//! ```text
//! cargo run --release --example demo [-- --size BYTES --total BYTES]
//! ```
//!
//! This process is the consumer: it binds a listener at a temporary socket path and, for each
//! run, starts a producer in a separate process (this same binary, re-executed with a hidden
//! `--producer-child` argument), accepts its connection, receives and checks every message
//! against the scheme in `common/pattern.rs`, and waits for the producer to exit successfully.
//!
//! By default there are three runs: 1,000,000 messages of 64 B, then 1 GiB in 64 KiB and in
//! 4 MiB messages. `--size` and `--total` make one run of that message size and total
//! (defaults 4 MiB and 1 GiB). Prints a table of messages, bytes, seconds, msg/s and GB/s
//! (10^9 bytes per second, timed from each run's first message); exits non-zero if any check
//! fails.

#[path = "common/fmt.rs"]
mod fmt;
#[path = "common/pattern.rs"]
mod pattern;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio_pvm::{Config, Connection, DEFAULT_MAX_MESSAGE_SIZE, Listener};

use fmt::grouped;
use pattern::{Checker, Pool, Summary};

const USAGE: &str = "\
usage: demo [--size BYTES] [--total BYTES]

Moves data from a child process to this one over tokio-pvm and checks every byte. Without
options: three runs of 64 B (1,000,000 messages), 64 KiB (1 GiB) and 4 MiB (1 GiB) messages.
--size and --total make a single run of messages of BYTES bytes (default 4194304, at least
8) adding up to --total bytes (default 1073741824, rounded down to whole messages).";

/// The argument that makes this binary the producer.
const CHILD_FLAG: &str = "--producer-child";

const GIB: u64 = 1 << 30;

/// Messages in the default 64-byte run; 1 GiB of them would be 16.8 million.
const SMALL_COUNT: u64 = 1_000_000;

/// How long the consumer waits for a connection, a message, or the producer's exit.
const STALL: Duration = Duration::from_secs(30);

/// One transfer: `count` messages of `size` bytes.
#[derive(Debug, Clone, Copy)]
struct Run {
    size: usize,
    count: u64,
}

fn parse_args(args: &[String]) -> Result<Vec<Run>, String> {
    let (mut size, mut total) = (None, None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size" => size = Some(number::<usize>(arg, args.next())?),
            "--total" => total = Some(number::<u64>(arg, args.next())?),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    if size.is_none() && total.is_none() {
        return Ok(vec![
            Run {
                size: 64,
                count: SMALL_COUNT,
            },
            Run {
                size: 64 << 10,
                count: GIB / (64 << 10),
            },
            Run {
                size: 4 << 20,
                count: GIB / (4 << 20),
            },
        ]);
    }
    let size = size.unwrap_or(4 << 20);
    let total = total.unwrap_or(GIB);
    if size < pattern::HEADER {
        return Err(format!(
            "--size must be at least {} (the sequence number)",
            pattern::HEADER
        ));
    }
    if total < size as u64 {
        return Err(format!(
            "--total ({total}) must be at least one message of --size ({size}) bytes"
        ));
    }
    Ok(vec![Run {
        size,
        count: total / size as u64,
    }])
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<&String>) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a valid number"))
}

/// Child mode: `--producer-child SOCKET_PATH COUNT SIZE`. Connects and sends.
async fn producer_child(args: &[String]) -> Result<(), String> {
    let [path, count, size] = args else {
        return Err(format!(
            "{CHILD_FLAG} takes SOCKET_PATH COUNT SIZE, got {args:?}"
        ));
    };
    let count: u64 = count.parse().map_err(|_| format!("bad count {count:?}"))?;
    let size: usize = size.parse().map_err(|_| format!("bad size {size:?}"))?;
    if size < pattern::HEADER {
        return Err(format!("bad size {size}"));
    }
    let mut pool = Pool::new(size);
    let mut conn = Connection::connect(path).await.map_err(|e| e.to_string())?;
    pattern::send_all(&mut conn, &mut pool, count)
        .await
        .map_err(|e| e.to_string())
}

/// Starts a producer process for `run` and receives and checks what it sends.
async fn consume(listener: &mut Listener, exe: &Path, run: Run) -> Result<Summary, String> {
    let mut command = std::process::Command::new(exe);
    command
        .arg(CHILD_FLAG)
        .arg(listener.path().expect("a Unix listener"))
        .arg(run.count.to_string())
        .arg(run.size.to_string())
        .stdin(Stdio::null());
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the producer {}: {e}", exe.display()))?;
    let pid = child.id().unwrap_or(0);

    let mut conn = tokio::select! {
        conn = listener.accept() => conn.map_err(|e| format!("accepting the producer: {e}"))?,
        status = child.wait() => {
            return Err(match status {
                Ok(status) => format!("producer {pid} exited ({status}) before connecting"),
                Err(e) => format!("waiting for producer {pid}: {e}"),
            });
        }
        () = tokio::time::sleep(STALL) => {
            return Err(format!("producer {pid} did not connect within {STALL:?}"));
        }
    };
    if conn.peer().pid() != Some(pid as i32) {
        return Err(format!(
            "expected a connection from producer {pid}, got one from {}",
            conn.peer()
        ));
    }

    let mut checker = Checker::new(Some(run.size));
    checker.receive_all(&mut conn, Some(STALL)).await?;
    let summary = checker.finish(Some(run.count))?;

    let status = tokio::time::timeout(STALL, child.wait())
        .await
        .map_err(|_| format!("producer {pid} did not exit within {STALL:?} after closing"))?
        .map_err(|e| format!("waiting for producer {pid}: {e}"))?;
    if !status.success() {
        return Err(format!("producer {pid} failed ({status})"));
    }
    Ok(summary)
}

/// `65536` as `64 KiB`; sizes that are not whole KiB or MiB stay in bytes.
fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s.is_multiple_of(1 << 20) => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s.is_multiple_of(1 << 10) => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

async fn demo(runs: &[Run]) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let path: PathBuf =
        std::env::temp_dir().join(format!("tokio-pvm-demo-{}.sock", std::process::id()));
    let largest = runs.iter().map(|r| r.size as u64).max().unwrap_or(0);
    let config = Config::new().max_message_size(largest.max(DEFAULT_MAX_MESSAGE_SIZE));
    let mut listener = Listener::bind_with(&path, config)
        .map_err(|e| format!("listening at {}: {e}", path.display()))?;

    println!(
        "tokio-pvm demo: a producer process per run sends to this process (pid {}) over {}",
        std::process::id(),
        path.display()
    );
    println!("every byte of every message is checked; each run is timed from its first message");
    println!();
    println!(
        "{:>12}  {:>10}  {:>15}  {:>8}  {:>11}  {:>7}",
        "message size", "messages", "total bytes", "seconds", "msg/s", "GB/s"
    );
    let mut moved = 0;
    for &run in runs {
        let s = consume(&mut listener, &exe, run)
            .await
            .map_err(|e| format!("{} run: {e}", size_label(run.size)))?;
        moved += s.bytes;
        println!(
            "{:>12}  {:>10}  {:>15}  {:>8.3}  {:>11}  {:>7.3}",
            size_label(s.size),
            grouped(s.messages),
            grouped(s.bytes),
            s.seconds,
            grouped(s.msg_per_sec().round() as u64),
            s.gb_per_sec()
        );
    }
    println!();
    if runs.iter().any(|r| r.size == 64 && r.count == SMALL_COUNT) {
        println!(
            "the 64 B run moves {} messages rather than 1 GiB: at that size the cost per \
             message dominates, and 1 GiB would be {} messages",
            grouped(SMALL_COUNT),
            grouped(GIB / 64)
        );
    }
    println!(
        "ok: {} bytes in {} run(s) moved between two processes and verified",
        grouped(moved),
        runs.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        return match producer_child(&args[1..]).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo producer (pid {}): {e}", std::process::id());
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runs = match parse_args(&args) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match demo(&runs).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}
