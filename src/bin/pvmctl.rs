//! `pvmctl`: inspect and tune running processes that publish their state with
//! [`tokio_pvm::probe`].
//!
//! `pvmctl list` finds the publishing processes, `dump` and `watch` read their blocks, `set`
//! writes a tunable field, `export` writes the Prometheus text format for node_exporter's
//! textfile collector, and `clean` removes manifests left behind by processes that died.
//! `pvmctl --help` has the details, examples and exit codes.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value as Json, json};
use tokio_pvm::probe::{Discovery, FieldKind, Probe, ProcessInfo, Snapshot, Value, search_dirs};
use tokio_pvm::{Error, ErrorKind};

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

// ---------------------------------------------------------------------------------------------
// Output

/// Writes `text` to stdout and flushes it.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => Failure::new(0, ""),
            _ => Failure::new(EXIT_FAILURE, format!("writing to stdout: {e}")),
        })
}

/// Prints `pvmctl: <message>` on stderr.
fn warn(message: &str) {
    note(&format!("pvmctl: {message}"));
}

/// Prints a line on stderr, its control characters escaped; a closed stderr is ignored.
fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{}", printable(line));
}

/// `text` with control characters escaped: manifests and the targets' memory are untrusted,
/// and must not drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A value as the tables show it: strings quoted and escaped.
fn shown(value: &Value) -> String {
    match value {
        Value::Str(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A duration in the largest two units: `42s`, `3m12s`, `2h05m`, `3d04h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// An interval as typed: milliseconds unless it is whole seconds.
fn interval_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        human(d)
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Lays out `rows` in columns two spaces apart, each line starting with `indent`.
fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One row per field: `block.field`, its kind, its value.
fn field_rows(snapshots: &[Snapshot]) -> Vec<Vec<String>> {
    snapshots
        .iter()
        .flat_map(|snap| {
            snap.layout()
                .fields()
                .iter()
                .zip(snap.values())
                .map(|(info, (name, value))| {
                    vec![
                        format!("{}.{name}", snap.block()),
                        info.kind().to_string(),
                        printable(&shown(&value)),
                    ]
                })
        })
        .collect()
}

/// A field's value as JSON (a float that is not finite becomes `null`).
fn json_value(value: &Value) -> Json {
    match value {
        Value::U64(v) => json!(v),
        Value::I64(v) => json!(v),
        Value::F64(v) => json!(v),
        Value::Bool(v) => json!(v),
        Value::Str(s) => json!(s),
        _ => Json::Null,
    }
}

/// How long the process has run, as the tables show it.
fn uptime_text(info: &ProcessInfo) -> String {
    info.uptime().map_or_else(|| "-".to_owned(), human)
}

// ---------------------------------------------------------------------------------------------
// list

/// `pvmctl list`.
fn list(dirs: &[PathBuf], json: bool) -> Result<(), Failure> {
    let found = Probe::discover_in(dirs);
    let text = if json {
        format!("{:#}\n", list_json(&found))
    } else {
        list_table(&found.processes)
    };
    emit(&text)?;
    if found.processes.is_empty() && !json {
        note(&format!("no publishing processes in {}", dir_list(dirs)));
    }
    for (path, e) in &found.skipped {
        note(&format!("skipped {}: {e}", path.display()));
    }
    Ok(())
}

/// The directories, for messages.
fn dir_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `list` table; empty if there are no processes.
fn list_table(processes: &[ProcessInfo]) -> String {
    if processes.is_empty() {
        return String::new();
    }
    let header = ["PID", "PROGRAM", "UPTIME", "BLOCKS"].map(str::to_owned);
    let rows: Vec<Vec<String>> = std::iter::once(header.to_vec())
        .chain(processes.iter().map(|p| {
            vec![
                p.pid().to_string(),
                printable(p.program()),
                uptime_text(p),
                block_names(p),
            ]
        }))
        .collect();
    columns(&rows, "")
}

/// The process's block names, tunable ones marked with `*`.
fn block_names(info: &ProcessInfo) -> String {
    info.blocks()
        .iter()
        .map(|b| format!("{}{}", b.name(), if b.is_tunable() { "*" } else { "" }))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `list --json` document: `{"processes": [...], "skipped": [...]}`.
fn list_json(found: &Discovery) -> Json {
    let processes: Vec<Json> = found.processes.iter().map(process_json).collect();
    let skipped: Vec<Json> = found
        .skipped
        .iter()
        .map(|(path, e)| json!({"path": path.to_string_lossy(), "reason": e.to_string()}))
        .collect();
    json!({"processes": processes, "skipped": skipped})
}

/// One process of `list --json`.
fn process_json(info: &ProcessInfo) -> Json {
    let blocks: Vec<Json> = info
        .blocks()
        .iter()
        .map(|b| {
            let fields: Vec<Json> = b
                .layout()
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "kind": f.kind().to_string()}))
                .collect();
            json!({"name": b.name(), "tunable": b.is_tunable(), "fields": fields})
        })
        .collect();
    json!({
        "pid": info.pid(),
        "program": info.program(),
        "uid": info.uid(),
        "uptime_seconds": info.uptime().map(|d| d.as_secs_f64()),
        "manifest": info.manifest().to_string_lossy(),
        "blocks": blocks,
    })
}

// ---------------------------------------------------------------------------------------------
// dump

/// `pvmctl dump`.
fn dump(dirs: &[PathBuf], pid: i32, format: Format) -> Result<(), Failure> {
    let probe = Probe::attach_in(dirs, pid)?;
    let snapshots = probe.read_all()?;
    let text = match format {
        Format::Table => dump_table(&snapshots),
        Format::Json => format!("{:#}\n", dump_json(probe.info(), &snapshots)),
        Format::Prometheus => {
            let mut metrics = Metrics::default();
            metrics.add(probe.info(), &snapshots);
            metrics.render()
        }
    };
    emit(&text)
}

/// The `dump` table, with a header.
fn dump_table(snapshots: &[Snapshot]) -> String {
    let header = ["FIELD", "KIND", "VALUE"].map(str::to_owned).to_vec();
    let rows: Vec<Vec<String>> = std::iter::once(header)
        .chain(field_rows(snapshots))
        .collect();
    columns(&rows, "")
}

/// The `dump --format json` document.
fn dump_json(info: &ProcessInfo, snapshots: &[Snapshot]) -> Json {
    let blocks: Map<String, Json> = snapshots
        .iter()
        .map(|snap| {
            let fields: Map<String, Json> = snap
                .values()
                .map(|(name, value)| (name.to_owned(), json_value(&value)))
                .collect();
            (snap.block().to_owned(), Json::Object(fields))
        })
        .collect();
    json!({"pid": info.pid(), "program": info.program(), "blocks": blocks})
}

// ---------------------------------------------------------------------------------------------
// set

/// `pvmctl set`.
fn set(dirs: &[PathBuf], pid: i32, a: &Assignment) -> Result<(), Failure> {
    let probe = Probe::attach_in(dirs, pid)?;
    let kind = tunable_field(probe.info(), &a.block, &a.field)?;
    let value = kind.parse(&a.value)?;
    let change = probe.set(&a.block, &a.field, value)?;
    emit(&format!(
        "{}.{}: {} -> {}\n",
        a.block,
        a.field,
        printable(&shown(&change.old)),
        printable(&shown(&change.new))
    ))
}

/// The kind of field `field` of block `block`, checking that the block is tunable.
fn tunable_field(info: &ProcessInfo, block: &str, field: &str) -> Result<FieldKind, Failure> {
    let names = |items: Vec<&str>| items.join(", ");
    let b = info.block(block).ok_or_else(|| {
        let has = names(info.blocks().iter().map(|b| b.name()).collect());
        let message = format!(
            "process {} publishes no block {block:?} (it has: {has})",
            info.pid()
        );
        Failure::new(EXIT_FAILURE, message)
    })?;
    if !b.is_tunable() {
        let tunable: Vec<&str> = info
            .blocks()
            .iter()
            .filter(|b| b.is_tunable())
            .map(|b| b.name())
            .collect();
        let message = format!(
            "block {block:?} of process {} is not tunable: only blocks the process declared \
             tunable can be written (here: {})",
            info.pid(),
            if tunable.is_empty() {
                "none".to_owned()
            } else {
                names(tunable)
            }
        );
        return Err(Failure::new(EXIT_INVALID, message));
    }
    let layout = b.layout();
    layout.field(field).map(|f| f.kind()).ok_or_else(|| {
        let has = names(layout.fields().iter().map(|f| f.name()).collect());
        let message = format!("block {block:?} has no field {field:?} (it has: {has})");
        Failure::new(EXIT_FAILURE, message)
    })
}

// ---------------------------------------------------------------------------------------------
// Reading many processes (watch, export)

/// The processes a repeating command reads.
#[derive(Debug)]
enum Targets {
    /// Every publishing process, discovered again at each tick.
    All,
    /// The named processes.
    Pids(Vec<i32>),
}

impl Targets {
    /// Every process if `pids` is empty, else those (each once).
    fn new(mut pids: Vec<i32>) -> Targets {
        if pids.is_empty() {
            return Targets::All;
        }
        pids.sort_unstable();
        pids.dedup();
        Targets::Pids(pids)
    }

    /// Whether the operator named the processes.
    fn named(&self) -> bool {
        matches!(self, Targets::Pids(_))
    }

    /// Reads every target: its manifest (again) and all of its blocks.
    fn read(&self, dirs: &[PathBuf]) -> Vec<Reading> {
        match self {
            Targets::All => Probe::discover_in(dirs)
                .processes
                .into_iter()
                .map(|info| Reading::of(Probe::from_info(info)))
                .collect(),
            Targets::Pids(pids) => pids
                .iter()
                .map(|&pid| match Probe::attach_in(dirs, pid) {
                    Ok(probe) => Reading::of(probe),
                    Err(e) => Reading::Missing(pid, e),
                })
                .collect(),
        }
    }

    /// Forgets the named processes that are gone; false when none is left.
    fn drop_gone(&mut self, readings: &[Reading]) -> bool {
        match self {
            Targets::All => true,
            Targets::Pids(pids) => {
                pids.retain(|pid| !readings.iter().any(|r| r.pid() == *pid && r.gone()));
                !pids.is_empty()
            }
        }
    }
}

/// One process at one tick.
#[derive(Debug)]
enum Reading {
    /// Every block was read.
    Read(Probe, Vec<Snapshot>),
    /// The manifest was loaded, the blocks could not be read.
    Unreadable(Probe, Error),
    /// No manifest could be loaded for the process.
    Missing(i32, Error),
}

impl Reading {
    /// Reads every block of `probe`'s process.
    fn of(probe: Probe) -> Reading {
        match probe.read_all() {
            Ok(snapshots) => Reading::Read(probe, snapshots),
            Err(e) => Reading::Unreadable(probe, e),
        }
    }

    /// The process id.
    fn pid(&self) -> i32 {
        match self {
            Reading::Read(probe, _) | Reading::Unreadable(probe, _) => probe.pid(),
            Reading::Missing(pid, _) => *pid,
        }
    }

    /// The process as its manifest describes it, if it could be loaded.
    fn info(&self) -> Option<&ProcessInfo> {
        match self {
            Reading::Read(probe, _) | Reading::Unreadable(probe, _) => Some(probe.info()),
            Reading::Missing(..) => None,
        }
    }

    /// Why the blocks could not be read, if they could not.
    fn error(&self) -> Option<&Error> {
        match self {
            Reading::Read(..) => None,
            Reading::Unreadable(_, e) | Reading::Missing(_, e) => Some(e),
        }
    }

    /// Whether the process is gone (exited, or stopped publishing).
    fn gone(&self) -> bool {
        self.error()
            .is_some_and(|e| e.kind() == ErrorKind::NotFound)
    }
}

/// Starts the single-threaded runtime that times `watch` and `export`.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("starting the timer runtime: {e}")))
}

/// A timer that ticks at once and then every `interval`, skipping missed ticks.
fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(interval);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    t
}

// ---------------------------------------------------------------------------------------------
// watch

/// `pvmctl watch`.
fn watch(
    dirs: Vec<PathBuf>,
    targets: Targets,
    interval: Duration,
    count: Option<u64>,
) -> Result<(), Failure> {
    if let Targets::Pids(pids) = &targets {
        // A process that is not there at the start is an error, as for `dump`.
        for &pid in pids {
            Probe::attach_in(&dirs, pid)?;
        }
    }
    let mut watcher = Watcher {
        dirs,
        targets,
        interval,
        seen: BTreeMap::new(),
        tty: io::stdout().is_terminal(),
    };
    runtime()?.block_on(watcher.run(count))
}

/// The state of `pvmctl watch` between ticks.
#[derive(Debug)]
struct Watcher {
    /// Where the manifests are.
    dirs: Vec<PathBuf>,
    /// What is watched.
    targets: Targets,
    /// Time between ticks.
    interval: Duration,
    /// The processes read at the last tick, with their program names, to report exits.
    seen: BTreeMap<i32, Option<String>>,
    /// Whether stdout is a terminal (redraw) or not (append).
    tty: bool,
}

impl Watcher {
    /// Prints a tick every interval, `count` times or until every named process is gone.
    async fn run(&mut self, count: Option<u64>) -> Result<(), Failure> {
        let mut ticker = ticker(self.interval);
        let mut tick = 0u64;
        while count.is_none_or(|n| tick < n) {
            ticker.tick().await;
            tick += 1;
            let readings = self.targets.read(&self.dirs);
            let separator = match (self.tty, tick) {
                (true, _) => CLEAR_SCREEN,
                (false, 1) => "",
                (false, _) => "\n",
            };
            emit(&format!("{separator}{}", self.render(tick, &readings)))?;
            if !self.targets.drop_gone(&readings) {
                note("pvmctl: every watched process has exited");
                break;
            }
        }
        Ok(())
    }

    /// One tick's text; remembers which processes it saw.
    fn render(&mut self, tick: u64, readings: &[Reading]) -> String {
        let live: Vec<&Reading> = readings.iter().filter(|r| !r.gone()).collect();
        let mut out = format!(
            "pvmctl watch: tick {tick}, every {}, {} process{}\n",
            interval_text(self.interval),
            live.len(),
            if live.len() == 1 { "" } else { "es" }
        );
        if live.is_empty() && !self.targets.named() {
            let _ = writeln!(out, "no publishing processes in {}", dir_list(&self.dirs));
        }
        for r in &live {
            out.push_str(&process_section(r));
        }
        for line in self.exits(readings) {
            out.push_str(&line);
            out.push('\n');
        }
        self.seen = live
            .iter()
            .map(|r| (r.pid(), r.info().map(|i| i.program().to_owned())))
            .collect();
        out
    }

    /// A line for each process seen at the last tick that is gone now, or that could not be
    /// found at all.
    fn exits(&self, readings: &[Reading]) -> Vec<String> {
        let mut lines = Vec::new();
        for (pid, program) in &self.seen {
            let now = readings.iter().find(|r| r.pid() == *pid);
            if now.is_none_or(Reading::gone) {
                let program = printable(program.as_deref().unwrap_or("?"));
                lines.push(format!("process {pid} ({program}) exited"));
            }
        }
        for r in readings
            .iter()
            .filter(|r| !self.seen.contains_key(&r.pid()))
        {
            if let (true, Some(e)) = (r.gone(), r.error()) {
                let error = printable(&e.to_string());
                lines.push(format!("process {}: {error}", r.pid()));
            }
        }
        lines
    }
}

/// A process's part of a tick: a heading, then its fields (or why they could not be read).
fn process_section(r: &Reading) -> String {
    let mut out = match r.info() {
        Some(info) => format!(
            "{}  {}  up {}\n",
            r.pid(),
            printable(info.program()),
            uptime_text(info)
        ),
        None => format!("{}\n", r.pid()),
    };
    match r {
        Reading::Read(_, snapshots) => out.push_str(&columns(&field_rows(snapshots), "  ")),
        Reading::Unreadable(_, e) | Reading::Missing(_, e) => {
            let _ = writeln!(out, "  error: {}", printable(&e.to_string()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// export

/// `pvmctl export`.
fn export(dirs: &[PathBuf], args: &ExportArgs) -> Result<(), Failure> {
    let targets = Targets::new(args.pids.clone());
    if args.once {
        return export_once(dirs, &targets, &args.textfile);
    }
    runtime()?.block_on(async {
        let mut ticker = ticker(args.interval);
        loop {
            ticker.tick().await;
            if let Err(f) = export_once(dirs, &targets, &args.textfile) {
                warn(&f.message);
            }
        }
    })
}

/// Reads the targets and writes the textfile once. Fails if the file cannot be written, or
/// (after writing it) if a named process could not be read.
fn export_once(dirs: &[PathBuf], targets: &Targets, textfile: &Path) -> Result<(), Failure> {
    let mut metrics = Metrics::default();
    let mut first_problem = None;
    for r in targets.read(dirs) {
        match &r {
            Reading::Read(probe, snapshots) => metrics.add(probe.info(), snapshots),
            // A discovered process that exited since: nothing to report.
            _ if r.gone() && !targets.named() => {}
            Reading::Unreadable(_, e) | Reading::Missing(_, e) => {
                warn(&format!("process {}: {e}", r.pid()));
                if targets.named() {
                    first_problem.get_or_insert_with(|| Failure::from(e.clone()));
                }
            }
        }
    }
    if metrics.families.is_empty() {
        note(&format!(
            "no publishing processes in {}: the textfile has no metrics",
            dir_list(dirs)
        ));
    }
    write_textfile(textfile, &metrics.render())?;
    first_problem.map_or(Ok(()), Err)
}

/// Writes `text` to `dir/tokio_pvm.prom` through a temporary file in `dir` and a rename.
fn write_textfile(dir: &Path, text: &str) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(Failure::new(
            EXIT_FAILURE,
            format!(
                "--textfile {}: no such directory; create it (mkdir -p {0}) and point \
                 node_exporter's --collector.textfile.directory at it",
                dir.display()
            ),
        ));
    }
    let path = dir.join(TEXTFILE_NAME);
    // Not ending in .prom, so that the collector never reads it.
    let tmp = dir.join(format!(".{TEXTFILE_NAME}.{}.tmp", std::process::id()));
    let written = write_new(&tmp, text).and_then(|()| fs::rename(&tmp, &path));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Failure::new(EXIT_FAILURE, format!("writing {}: {e}", path.display()))
    })
}

/// Creates `path` afresh (never through a symbolic link left there), writes and syncs it.
fn write_new(path: &Path, text: &str) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Metrics in the Prometheus text format, grouped by name.
#[derive(Debug, Default)]
struct Metrics {
    /// Metric families by name (sorted, so the output is stable).
    families: BTreeMap<String, Family>,
}

/// One metric name: its help text and samples.
#[derive(Debug)]
struct Family {
    /// The `# HELP` text.
    help: String,
    /// The `block.field` of the first sample, to name collisions.
    source: String,
    /// The samples, each the label set and value that follow the name.
    samples: Vec<String>,
    /// The processes that have a sample, so that none has two.
    pids: HashSet<i32>,
}

impl Metrics {
    /// Adds every field of one process's blocks.
    fn add(&mut self, info: &ProcessInfo, snapshots: &[Snapshot]) {
        let labels = format!(
            "pid=\"{}\",program=\"{}\"",
            info.pid(),
            escape_label(info.program())
        );
        for snap in snapshots {
            for (field, (_, value)) in snap.layout().fields().iter().zip(snap.values()) {
                let name = format!("tokio_pvm_{}_{}", snap.block(), field.name());
                let help = format!(
                    "Field {} ({}) of block {} of a tokio-pvm process{}",
                    field.name(),
                    field.kind(),
                    snap.block(),
                    if snap.is_tunable() { " (tunable)" } else { "" }
                );
                let source = format!("{}.{}", snap.block(), field.name());
                self.add_sample(info.pid(), &labels, (name, help, &source), &value);
            }
        }
    }

    /// Adds one field's sample; a string becomes an `_info` metric with a `value` label.
    /// `name` is the metric, with its `help` text, from field `source` (`block.field`).
    fn add_sample(
        &mut self,
        pid: i32,
        labels: &str,
        (name, help, source): (String, String, &str),
        value: &Value,
    ) {
        let (name, sample) = match value {
            Value::Str(s) => (
                format!("{name}_info"),
                format!("{{{labels},value=\"{}\"}} 1", escape_label(s)),
            ),
            other => match prometheus_number(other) {
                Some(number) => (name, format!("{{{labels}}} {number}")),
                None => return,
            },
        };
        let family = self.families.entry(name.clone()).or_insert_with(|| Family {
            help,
            source: source.to_owned(),
            samples: Vec::new(),
            pids: HashSet::new(),
        });
        if family.pids.insert(pid) {
            family.samples.push(sample);
        } else {
            // `a_b.c` and `a.b_c` (or `x.y_info` and string field `x.y`) make the same name.
            warn(&format!(
                "process {pid}: {source} and {} both become metric {name}; {source} is left out",
                family.source
            ));
        }
    }

    /// The text format: `# HELP`, `# TYPE` and the samples of each metric; no timestamps.
    fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} gauge");
            for sample in &family.samples {
                let _ = writeln!(out, "{name}{sample}");
            }
        }
        out
    }
}

/// A numeric value in the text format: integers exactly, booleans as 0 or 1.
fn prometheus_number(value: &Value) -> Option<String> {
    Some(match value {
        Value::U64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::F64(v) if v.is_nan() => "NaN".to_owned(),
        Value::F64(v) if v.is_infinite() => if *v > 0.0 { "+Inf" } else { "-Inf" }.to_owned(),
        Value::F64(v) => v.to_string(),
        Value::Bool(v) => u8::from(*v).to_string(),
        _ => return None,
    })
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Escapes help text: backslash and newline.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

// ---------------------------------------------------------------------------------------------
// clean

/// `pvmctl clean`.
fn clean(dirs: &[PathBuf]) -> Result<(), Failure> {
    let removed = Probe::clean_stale_in(dirs);
    if removed.is_empty() {
        note("no stale manifests");
        return Ok(());
    }
    let text: String = removed
        .iter()
        .map(|p| format!("removed {}\n", printable(&p.display().to_string())))
        .collect();
    emit(&text)
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
