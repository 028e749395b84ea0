//! `pvmctl`: inspect and tune running processes that publish their state with
//! [`tokio_pvm::probe`].
//!
//! `pvmctl list` finds the publishing processes, `dump` and `watch` read their blocks, `set`
//! writes a tunable field, `export` writes the Prometheus text format for node_exporter's
//! textfile collector, and `clean` removes manifests left behind by processes that died.
//! `pvmctl --help` has the details, examples and exit codes.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value as Json, json};
use tokio_pvm::probe::{
    Discovery, FieldKind, Metric, Probe, ProcessInfo, Snapshot, Value, search_dirs,
};
use tokio_pvm::{Error, ErrorKind};

mod clean;
mod dump;
mod export;
mod list;
mod output;
mod serve;
mod set;
mod targets;
mod watch;

use clean::*;
use dump::*;
use export::*;
use list::*;
use output::*;
use serve::*;
use set::*;
use targets::*;
use watch::*;

/// Exit status: no such process, block or field; a read failed; an I/O error.
const EXIT_FAILURE: u8 = 1;
/// Exit status: reading or writing the process's memory was refused.
const EXIT_PERMISSION: u8 = 3;
/// Exit status: a value of the wrong type, or a write to a block that is not tunable.
const EXIT_INVALID: u8 = 4;
/// Exit status: no consistent snapshot of a block.
const EXIT_INCONSISTENT: u8 = 5;

/// The name of the file `export` writes.
const TEXTFILE_NAME: &str = "tokio_pvm.prom";
/// The longest interval `watch` and `export` accept.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Clears a terminal and moves the cursor home.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// The one-line description in `pvmctl -h`.
const ABOUT: &str = "Inspect and tune running processes that publish their state with tokio-pvm";

/// The description in `pvmctl --help`.
const LONG_ABOUT: &str = "\
Inspect and tune running processes that publish their state with tokio-pvm.

A process built with tokio_pvm::probe keeps blocks of typed fields in its own memory and
describes them in a manifest, <pid>.json, in $TOKIO_PVM_DIR, else $XDG_RUNTIME_DIR/tokio-pvm,
else /tmp/tokio-pvm-<uid>. pvmctl finds those processes, reads consistent snapshots of their
blocks straight from their memory (process_vm_readv: the process does no work for it), writes
new values into the blocks they declared tunable, and exports everything in the Prometheus
text format. pvmctl reads and writes a process only with the credentials of its manifest's
owner (as root, on a thread that becomes that user), so the kernel refuses a process that is
no longer that user's alone, such as one that executed a setuid program: run pvmctl as the
process's user, or as root. Manifest directories that are symbolic links or writable by group
or others are refused.";

/// The description in `pvmctl export --help`.
const EXPORT_ABOUT: &str = "\
Write every field in the Prometheus text format, for node_exporter's textfile collector.

Writes DIR/tokio_pvm.prom, through a temporary file in DIR and a rename so that the collector
never reads half a file: one gauge per field, named tokio_pvm_<block>_<field> and labelled
with pid and program, without timestamps. Booleans are 0 or 1; a string field becomes
tokio_pvm_<block>_<field>_info{pid=..,program=..,value=\"...\"} 1. Repeats every interval,
or writes once with --once (for cron). A process named on the command line that cannot be
read makes --once fail after writing the others.";

/// The exit codes, once, for both help texts.
macro_rules! exit_codes {
    () => {
        "\
Exit status:
  0  success
  1  failure: no such process, block or field; a read failed; an I/O error
  2  usage error: the command line is wrong
  3  permission denied: the process is not its manifest owner's alone, or pvmctl runs as
     neither that user nor root; or the manifest directory is open to others
  4  invalid value, or the block is not tunable
  5  no consistent read: the process kept the block busy"
    };
}

/// Exit codes, shown by `pvmctl -h`.
const EXIT_CODES: &str = exit_codes!();

/// Examples and exit codes, shown by `pvmctl --help`.
const LONG_AFTER_HELP: &str = concat!(
    "\
Examples:
  pvmctl list                                   every publishing process and its blocks
  pvmctl dump 4242                              every field of process 4242
  pvmctl dump 4242 --format json | jq .blocks.stats
  pvmctl watch --interval 500ms                 live view of every process
  pvmctl set 4242 tuning.max_players=10         write a tunable field
  pvmctl export --textfile /var/lib/node_exporter/textfile --once
  pvmctl --dir /run/myapp/pvm list              look in another directory

",
    exit_codes!()
);

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "pvmctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES,
    after_long_help = LONG_AFTER_HELP
)]
struct Cli {
    /// Look for manifests in DIR (repeatable).
    ///
    /// Without it: $TOKIO_PVM_DIR if set; otherwise this user's directory and every other
    /// user's that exists (/run/user/*/tokio-pvm, /tmp/tokio-pvm-*).
    #[arg(long = "dir", value_name = "DIR", global = true)]
    dirs: Vec<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// List the publishing processes and their blocks (`*` marks tunable blocks).
    ///
    /// Prints PID, PROGRAM, UPTIME and BLOCKS for every live publishing process, then one line
    /// on stderr for each manifest that was skipped (its process is gone, or it is malformed
    /// or refused) and why.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print every field of every block of one process.
    ///
    /// Each block is one consistent snapshot, read from the process's memory.
    Dump {
        /// The process.
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        pid: i32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show the blocks of every publishing process (or of the given ones), refreshed live.
    ///
    /// Without PIDs every tick looks for publishing processes again, so processes that start
    /// later appear. A process that exits is reported and dropped. On a terminal the screen is
    /// redrawn at each tick; otherwise ticks are printed one after another, separated by a
    /// blank line.
    Watch {
        /// The processes to watch; all publishing processes if none.
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        pids: Vec<i32>,
        /// Time between ticks: a whole number and a unit, ms, s, m or h.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after N ticks.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Write a field of a tunable block: prints `BLOCK.FIELD: OLD -> NEW`.
    ///
    /// VALUE is typed as the field is: 42, -7, 0.5 (finite: not NaN or inf), true or false, or
    /// any text for a string field. Only blocks the process declared tunable can be written.
    Set {
        /// The process.
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        pid: i32,
        /// The field and its new value, as in `tuning.max_players=10`.
        #[arg(value_name = "BLOCK.FIELD=VALUE", value_parser = parse_assignment)]
        assignment: Assignment,
    },
    /// Write every field in the Prometheus text format, for node_exporter's textfile collector.
    #[command(long_about = EXPORT_ABOUT)]
    Export(ExportArgs),
    /// Serve every field over HTTP for Prometheus to scrape (GET /metrics, GET /-/healthy).
    ///
    /// Each scrape looks for publishing processes again and reads them, as `export` does; a
    /// process that exits during a scrape is left out. Stops on SIGTERM or SIGINT after the
    /// scrapes under way are answered.
    Serve(ServeArgs),
    /// Remove the manifests of processes that are gone, and print their paths.
    Clean,
}

/// The options of `pvmctl export`.
#[derive(Debug, Args)]
struct ExportArgs {
    /// The collector's directory (node_exporter's --collector.textfile.directory).
    #[arg(long, value_name = "DIR")]
    textfile: PathBuf,
    /// Time between writes: a whole number and a unit, ms, s, m or h.
    #[arg(long, default_value = "15s", value_parser = parse_interval)]
    interval: Duration,
    /// Write once and exit.
    #[arg(long)]
    once: bool,
    /// The processes to export; all publishing processes if none.
    #[arg(value_parser = clap::value_parser!(i32).range(1..))]
    pids: Vec<i32>,
}

/// The options of `pvmctl serve`.
#[derive(Debug, Args)]
struct ServeArgs {
    /// The address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    listen: std::net::SocketAddr,
    /// The processes to serve; all publishing processes if none.
    #[arg(value_parser = clap::value_parser!(i32).range(1..))]
    pids: Vec<i32>,
}

/// The output formats of `dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `block.field  kind  value`, aligned.
    Table,
    /// `{"pid": .., "program": .., "blocks": {block: {field: value}}}`.
    Json,
    /// The Prometheus text format, as `export` writes it.
    Prometheus,
}

/// `BLOCK.FIELD=VALUE` from the command line; the value is typed once the field is known.
#[derive(Debug, Clone)]
struct Assignment {
    /// The block's name.
    block: String,
    /// The field's name.
    field: String,
    /// The new value, as typed.
    value: String,
}

/// Why `pvmctl` stops early, and the status it exits with.
///
/// A closed stdout (the reader of a pipe, such as `head`, went away) is a `Failure` with code
/// 0 and no message: the normal end of a pipeline.
#[derive(Debug)]
struct Failure {
    /// The exit status.
    code: u8,
    /// What went wrong; printed as `pvmctl: <message>` unless empty.
    message: String,
}

impl Failure {
    /// A failure with exit status `code`.
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(exit_code(e.kind()), e.to_string())
    }
}

/// The exit status for an error of kind `kind`.
fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::PermissionDenied => EXIT_PERMISSION,
        ErrorKind::InvalidInput => EXIT_INVALID,
        ErrorKind::Inconsistent => EXIT_INCONSISTENT,
        _ => EXIT_FAILURE,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_descriptor_limit();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                warn(&failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit: a probe keeps each process's
/// manifest open (and, as root, each other user's process's memory), and a host may run more
/// publishing processes than the usual soft limit of 1024 allows for.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs the command line.
fn run(cli: Cli) -> Result<(), Failure> {
    let dirs = if cli.dirs.is_empty() {
        search_dirs()
    } else {
        // A directory named on the command line must exist: "no publishing processes" in a
        // mistyped directory would look like an answer.
        for dir in &cli.dirs {
            if !dir.is_dir() {
                return Err(Failure::new(
                    EXIT_FAILURE,
                    format!(
                        "--dir {}: no such directory (publishing processes create it); check \
                         the path, or leave --dir out to search the default directories",
                        dir.display()
                    ),
                ));
            }
        }
        cli.dirs
    };
    match cli.command {
        Command::List { json } => list(&dirs, json),
        Command::Dump { pid, format } => dump(&dirs, pid, format),
        Command::Watch {
            pids,
            interval,
            count,
        } => watch(dirs, Targets::new(pids), interval, count),
        Command::Set { pid, assignment } => set(&dirs, pid, &assignment),
        Command::Export(args) => export(&dirs, &args),
        Command::Serve(args) => serve(dirs, &args),
        Command::Clean => clean(&dirs),
    }
}

// ---------------------------------------------------------------------------------------------
// Command-line values

/// Parses an interval such as `500ms`, `1s`, `2m` or `1h`: 1 ms to 24 h.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not an interval: expected a whole number and a unit, as in 500ms")
    })?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("{text:?} has no unit: add ms, s, m or h")),
        _ => return Err(format!("{text:?} has an unknown unit: use ms, s, m or h")),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero() && *d <= MAX_INTERVAL)
        .ok_or_else(|| format!("{text:?} is out of range: an interval is from 1ms to 24h"))
}

/// Parses `BLOCK.FIELD=VALUE`.
fn parse_assignment(text: &str) -> Result<Assignment, String> {
    let malformed = || format!("{text:?} is not BLOCK.FIELD=VALUE, as in tuning.max_players=10");
    let (target, value) = text.split_once('=').ok_or_else(malformed)?;
    let (block, field) = target
        .split_once('.')
        .filter(|(b, f)| !b.is_empty() && !f.is_empty())
        .ok_or_else(malformed)?;
    Ok(Assignment {
        block: block.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units_and_limits() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_interval("24h"), Ok(MAX_INTERVAL));
        for bad in [
            "",
            "1",
            "0s",
            "s",
            "-1s",
            "1.5s",
            "25h",
            "1x",
            "99999999999999999999h",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn assignments_need_block_field_and_equals() {
        let a = parse_assignment("tuning.name=a=b").unwrap();
        assert_eq!((&*a.block, &*a.field, &*a.value), ("tuning", "name", "a=b"));
        for bad in ["tuning.max", "max=1", ".f=1", "b.=1"] {
            assert!(parse_assignment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(192)), "3m12s");
        assert_eq!(human(Duration::from_secs(7500)), "2h05m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d04h");
        assert_eq!(interval_text(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn labels_and_numbers_follow_the_text_format() {
        assert_eq!(escape_label("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
        assert_eq!(prometheus_number(&Value::Bool(true)), Some("1".into()));
        assert_eq!(
            prometheus_number(&Value::F64(f64::NEG_INFINITY)),
            Some("-Inf".into())
        );
        assert_eq!(
            prometheus_number(&Value::U64(u64::MAX)),
            Some(u64::MAX.to_string())
        );
        assert_eq!(prometheus_number(&Value::Str("x".into())), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(printable("héllo"), "héllo");
    }

    #[test]
    fn columns_align() {
        let rows = vec![
            vec!["a".to_owned(), "bb".to_owned(), "c".to_owned()],
            vec!["aaa".to_owned(), "b".to_owned(), "c".to_owned()],
        ];
        assert_eq!(columns(&rows, "  "), "  a    bb  c\n  aaa  b   c\n");
    }

    #[test]
    fn exit_codes_follow_error_kinds() {
        assert_eq!(exit_code(ErrorKind::PermissionDenied), 3);
        assert_eq!(exit_code(ErrorKind::InvalidInput), 4);
        assert_eq!(exit_code(ErrorKind::Inconsistent), 5);
        assert_eq!(exit_code(ErrorKind::NotFound), 1);
        assert_eq!(exit_code(ErrorKind::Io), 1);
    }
}
