//! tokio-pvm next to its strongest peers (a Unix socket with a length-delimited codec,
//! ipc-channel, iceoryx2), measured the same way between two real processes.
//!
//! ```text
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- \
//!     [--reps N] [--sizes 64,4K,64K,1M,16M] [--quick] [--json] [--only NAME,...] [--timeout SECS]
//! ```
//!
//! This process only orchestrates: for each measurement it starts itself again as two
//! children (`--child PEER ROLE ...`, see [`peers`]), reads their one-line reports, and reads
//! `getrusage(RUSAGE_CHILDREN)` before and after. Every producer writes fresh data into every
//! message and every consumer checks each one ([`payload`]). README.md has the methodology.

mod bench;
mod flavor;
#[path = "../../../examples/common/fmt.rs"]
mod fmt;
#[path = "../../../examples/common/machine.rs"]
mod machine;
mod payload;
mod peers;
mod report;
#[path = "../../../examples/common/spawn.rs"]
mod spawn;
#[path = "../../../examples/common/stats.rs"]
mod stats;

use std::process::ExitCode;
use std::time::Duration;

use peers::Peer;

const USAGE: &str = "\
usage: peers [--reps N] [--sizes LIST] [--quick] [--json] [--only NAME,...] [--timeout SECS]

tokio-pvm next to a Unix socket + LengthDelimitedCodec, ipc-channel and iceoryx2: throughput
(fresh data in every message, every message checked) and ping-pong latency, each measurement
between two child processes.

  --reps N        repetitions of every measurement, interleaved (default 5; 1 with --quick)
  --sizes LIST    message sizes, comma-separated, in bytes or with K/KiB, M/MiB, G/GiB
                  (default 64,4K,64K,1M,16M; at least 16 bytes)
  --quick         a much smaller run, as a smoke test
  --json          print every repetition as JSON instead of tables
  --only NAMES    only these rows, comma-separated: tokio-pvm, unix, ipc-channel, iceoryx2,
                  or a row's full id (tokio-pvm-current_thread, iceoryx2-spin, ...)
  --timeout SECS  give up on a measurement after SECS seconds (default 120)";

const DEFAULT_SIZES: [usize; 5] = [64, 4 << 10, 64 << 10, 1 << 20, 16 << 20];

/// Message sizes of the latency table: those of them that `--sizes` lists.
pub(crate) const LATENCY_SIZES: [usize; 3] = [64, 4 << 10, 1 << 20];

/// How much each measurement moves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    /// Bytes per throughput measurement, before the limits below.
    pub(crate) target_bytes: u64,
    /// Fewest and most messages per throughput measurement.
    pub(crate) min_messages: u64,
    pub(crate) max_messages: u64,
    /// Untimed and timed round trips per latency measurement, up to 64 KiB and above.
    pub(crate) small_round_trips: (u64, u64),
    pub(crate) large_round_trips: (u64, u64),
}

const FULL: Scale = Scale {
    target_bytes: 4 << 30,
    min_messages: 64,
    max_messages: 1_000_000,
    small_round_trips: (200, 2000),
    large_round_trips: (50, 500),
};

const QUICK: Scale = Scale {
    target_bytes: 64 << 20,
    min_messages: 8,
    max_messages: 20_000,
    small_round_trips: (20, 200),
    large_round_trips: (5, 30),
};

impl Scale {
    pub(crate) fn messages(&self, size: usize) -> u64 {
        (self.target_bytes / size as u64)
            .clamp(self.min_messages, self.max_messages)
            .max(2)
    }

    pub(crate) fn round_trips(&self, size: usize) -> (u64, u64) {
        if size <= 64 << 10 {
            self.small_round_trips
        } else {
            self.large_round_trips
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) json: bool,
    pub(crate) reps: usize,
    pub(crate) sizes: Vec<usize>,
    pub(crate) scale: Scale,
    pub(crate) quick: bool,
    pub(crate) only: Vec<String>,
    pub(crate) timeout: Duration,
}

impl Options {
    /// Whether `--only` (if given) selects `peer`.
    pub(crate) fn selects(&self, peer: Peer) -> bool {
        self.only.is_empty() || self.only.iter().any(|name| peer.matches(name))
    }
}

fn parse_size(text: &str) -> Result<usize, String> {
    let why = format!(
        "messages need at least {} bytes (two 8-byte stamps)",
        payload::MIN_SIZE
    );
    stats::parse_size(text, payload::MIN_SIZE, &why)
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let (mut json, mut quick, mut reps, mut sizes, mut only, mut timeout) = (
        false,
        false,
        None,
        None,
        Vec::new(),
        Duration::from_secs(120),
    );
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--json" => json = true,
            "--quick" => quick = true,
            "--reps" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--reps: {v:?} is not a number"))?;
                if n == 0 {
                    return Err("--reps must be at least 1".to_owned());
                }
                reps = Some(n);
            }
            "--sizes" => {
                let parsed = value()?
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(parse_size)
                    .collect::<Result<Vec<_>, _>>()?;
                if parsed.is_empty() {
                    return Err("--sizes needs at least one size".to_owned());
                }
                sizes = Some(parsed);
            }
            "--only" => {
                let all = Peer::all();
                for name in value()?.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !all.iter().any(|p| p.matches(name)) {
                        let ids: Vec<String> = all.iter().map(|p| p.id()).collect();
                        return Err(format!(
                            "--only: no row is called {name:?}; rows: {}",
                            ids.join(", ")
                        ));
                    }
                    only.push(name.to_owned());
                }
            }
            "--timeout" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--timeout: {v:?} is not a positive number"))?;
                timeout = Duration::from_secs_f64(secs);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Options {
        json,
        reps: reps.unwrap_or(if quick { 1 } else { 5 }),
        sizes: sizes.unwrap_or_else(|| DEFAULT_SIZES.to_vec()),
        scale: if quick { QUICK } else { FULL },
        quick,
        only,
        timeout,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(spawn::CHILD_FLAG) {
        let rest = args.get(1..).unwrap_or_default();
        return match peers::run_child(rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "peers child {} (pid {}): {e}",
                    rest.get(..2).unwrap_or_default().join(" "),
                    std::process::id()
                );
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse_args(&args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("peers: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut command = "cargo run --release --manifest-path benches/peers/Cargo.toml".to_owned();
    if !args.is_empty() {
        command = format!("{command} -- {}", args.join(" "));
    }
    match bench::run(&opts, command) {
        Ok(results) => {
            if opts.json {
                println!("{}", report::json(&results));
            } else {
                print!("{}", report::markdown(&results));
            }
            if results.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("peers: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("8").is_err());
        assert_eq!(FULL.messages(64), 1_000_000);
        assert_eq!(FULL.messages(16 << 20), 256);
        assert_eq!(QUICK.messages(64), 20_000);
    }

    #[test]
    fn only_is_checked() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert!(parse_args(&args("--only iceoryx2,unix")).is_ok());
        assert!(parse_args(&args("--only zmq")).is_err());
    }
}
