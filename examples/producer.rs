//! Sends numbered, verifiable messages over a `tokio-pvm` connection.
//!
//! ```text
//! producer SOCKET_PATH [--count N] [--size BYTES] [--listen]
//! ```
//!
//! Connects to a listener at `SOCKET_PATH` (waiting up to five seconds for one to appear), or
//! with `--listen` binds a listener there and accepts one connection. Sends `N` messages
//! (default 256) of `BYTES` bytes each (default 4 MiB, at least 8) with `feed`, then
//! `close()`s, which returns once the peer has every message. The content follows the scheme
//! in `common/pattern.rs`; the `consumer` example checks every byte of it.
//!
//! Prints a one-line summary to stderr, or the error (exit code 1). Bad usage exits with 2.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/connect.rs"]
mod connect;
#[path = "common/pattern.rs"]
mod pattern;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tokio_pvm::{Config, Error, Listener};

use pattern::Pool;

const USAGE: &str = "\
usage: producer SOCKET_PATH [--count N] [--size BYTES] [--listen]

Sends N messages (default 256) of BYTES bytes each (default 4194304, at least 8) to the
consumer at SOCKET_PATH. With --listen, binds a listener at SOCKET_PATH and waits for the
consumer to connect (run the consumer with --connect) instead of connecting.";

struct Args {
    path: PathBuf,
    count: u64,
    size: usize,
    listen: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let (mut count, mut size, mut listen) = (256u64, 4usize << 20, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--count" => count = cli::number(&arg, args.next())?,
            "--size" => size = cli::number(&arg, args.next())?,
            "--listen" => listen = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if path.is_none() => path = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    let path = path.ok_or("SOCKET_PATH is missing")?;
    if size < pattern::HEADER {
        return Err(format!(
            "--size must be at least {} (the sequence number)",
            pattern::HEADER
        ));
    }
    if count.checked_mul(size as u64).is_none() {
        return Err("--count times --size does not fit in 64 bits".to_string());
    }
    Ok(Args {
        path,
        count,
        size,
        listen,
    })
}

async fn run(args: Args) -> Result<(), Error> {
    let mut pool = Pool::new(args.size);
    let mut conn = if args.listen {
        let listener = Listener::bind(&args.path)?;
        listener.accept().await?
    } else {
        connect::connect(&args.path, Config::new()).await?
    };
    let started = Instant::now();
    pattern::send_all(&mut conn, &mut pool, args.count).await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut summary = format!(
        "sent {} messages of {} bytes ({} bytes) in {seconds:.3} s",
        args.count,
        args.size,
        args.count * args.size as u64
    );
    if pool.regenerated() > 0 {
        summary += &format!(
            ", {} buffers generated afresh because the transport still held them",
            pool.regenerated()
        );
    }
    eprintln!("{summary}");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::main("producer", USAGE, parse_args, run).await
}
