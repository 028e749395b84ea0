//! Receives messages over a `tokio-pvm` connection and checks every byte.
//!
//! ```text
//! consumer SOCKET_PATH [--count N] [--size BYTES] [--connect]
//! ```
//!
//! Binds a listener at `SOCKET_PATH` and accepts one connection, or with `--connect` connects
//! to a listener there (waiting up to five seconds for one to appear). Receives until the
//! peer closes, checking every byte of every message against the scheme in
//! `common/pattern.rs` (the `producer` example sends it), that sequence numbers run 0, 1, 2,
//! ... in order, that all messages have one size (`BYTES` if given), and that `N` arrived if
//! given. Then prints one line to stdout:
//!
//! ```text
//! received N messages of S bytes (T bytes) in X s: M msg/s, G GB/s, every byte checked
//! ```
//!
//! The clock starts at the first message; GB are 10^9 bytes. Any mismatch or error is printed
//! to stderr with exit code 1. Bad usage exits with 2.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/connect.rs"]
mod connect;
#[path = "common/pattern.rs"]
mod pattern;

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_pvm::{Config, DEFAULT_MAX_MESSAGE_SIZE, Listener};

use pattern::Checker;

const USAGE: &str = "\
usage: consumer SOCKET_PATH [--count N] [--size BYTES] [--connect]

Listens at SOCKET_PATH for one producer, receives its messages until it closes, and checks
every byte. --count and --size make the number and the size of the messages part of the
check. With --connect, connects to a producer started with --listen instead of listening.";

struct Args {
    path: PathBuf,
    count: Option<u64>,
    size: Option<usize>,
    connect: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let (mut count, mut size, mut connect) = (None, None, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--count" => count = Some(cli::number(&arg, args.next())?),
            "--size" => size = Some(cli::number(&arg, args.next())?),
            "--connect" => connect = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if path.is_none() => path = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    let path = path.ok_or("SOCKET_PATH is missing")?;
    if size.is_some_and(|s| s < pattern::HEADER) {
        return Err(format!(
            "--size must be at least {} (the sequence number)",
            pattern::HEADER
        ));
    }
    Ok(Args {
        path,
        count,
        size,
        connect,
    })
}

async fn run(args: Args) -> Result<String, String> {
    // Accept messages as large as the ones announced.
    let max = args
        .size
        .map_or(0, |s| s as u64)
        .max(DEFAULT_MAX_MESSAGE_SIZE);
    let config = Config::new().max_message_size(max);
    let mut conn = if args.connect {
        connect::connect(&args.path, config).await
    } else {
        match Listener::bind_with(&args.path, config) {
            Ok(listener) => {
                eprintln!(
                    "listening on {}; waiting for a producer running as uid {} (peers of other \
                     users are refused: see Config::allow_uid)",
                    args.path.display(),
                    nix::unistd::geteuid()
                );
                listener.accept().await
            }
            Err(e) => Err(e),
        }
    }
    .map_err(|e| e.to_string())?;
    let mut checker = Checker::new(args.size);
    checker.receive_all(&mut conn, None).await?;
    let s = checker.finish(args.count)?;
    Ok(format!(
        "received {} messages of {} bytes ({} bytes) in {:.3} s: {:.0} msg/s, {:.3} GB/s, \
         every byte checked",
        s.messages,
        s.size,
        s.bytes,
        s.seconds,
        s.msg_per_sec(),
        s.gb_per_sec()
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::main("consumer", USAGE, parse_args, |args| async {
        run(args).await.map(|line| println!("{line}"))
    })
    .await
}
