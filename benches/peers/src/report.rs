//! The machine description, and the results as markdown tables or as JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::bench::{Cell, LatencyCell, Results};
use crate::peers::{FLAVOR_SIZE, Peer, Wake, iceoryx};

pub(crate) use crate::fmt::grouped;
pub(crate) use crate::machine::Machine;

/// The version a `Cargo.toml` gives `name` (`name = "=X.Y.Z"`, or `version = ...` under
/// `[package]` for `package`).
fn version_in(manifest: &str, name: &str) -> String {
    manifest
        .lines()
        .map(str::trim)
        .find_map(|l| {
            let rest = l.strip_prefix(name)?.trim_start().strip_prefix('=')?;
            let quoted = rest.trim().strip_prefix('"')?;
            Some(quoted.split('"').next()?.trim_start_matches('=').to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// The versions measured: the pinned peers and this checkout's tokio-pvm.
pub(crate) fn versions() -> [(&'static str, String); 3] {
    let ours = include_str!("../Cargo.toml");
    let root = include_str!("../../../Cargo.toml");
    [
        ("tokio-pvm", version_in(root, "version")),
        ("iceoryx2", version_in(ours, "iceoryx2")),
        ("ipc-channel", version_in(ours, "ipc-channel")),
    ]
}

pub(crate) use crate::stats::median;

/// Medians and extremes of one throughput cell.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    msg_per_s: Option<f64>,
    gb_per_s: Option<f64>,
    gb_per_s_min: Option<f64>,
    gb_per_s_max: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    vs_unix: Option<f64>,
}

/// GB/s of each repetition (N - 1 messages timed), msg/s, CPU s/GB (N messages moved).
fn rates(cell: &Cell) -> Vec<(f64, f64, f64)> {
    let timed = (cell.messages - 1) as f64;
    let moved_gb = cell.messages as f64 * cell.size as f64 / 1e9;
    cell.samples
        .iter()
        .filter(|s| !s.elapsed.is_zero())
        .map(|s| {
            let secs = s.elapsed.as_secs_f64();
            (
                timed * cell.size as f64 / 1e9 / secs,
                timed / secs,
                s.cpu.as_secs_f64() / moved_gb,
            )
        })
        .collect()
}

fn summarize(cell: &Cell, reference_gb_per_s: Option<f64>) -> Summary {
    let r = rates(cell);
    let gb_per_s = median(r.iter().map(|x| x.0));
    Summary {
        msg_per_s: median(r.iter().map(|x| x.1)),
        gb_per_s,
        gb_per_s_min: r.iter().map(|x| x.0).reduce(f64::min),
        gb_per_s_max: r.iter().map(|x| x.0).reduce(f64::max),
        cpu_s_per_gb: median(r.iter().map(|x| x.2)),
        vs_unix: match (gb_per_s, reference_gb_per_s) {
            (Some(g), Some(u)) if u > 0.0 => Some(g / u),
            _ => None,
        },
    }
}

/// Median GB/s of `cell`'s reference row (the Unix socket in its runtime flavor).
fn reference(results: &Results, cell: &Cell) -> Option<f64> {
    let want = cell.peer.reference();
    results
        .cells
        .iter()
        .find(|c| c.size == cell.size && c.peer == want)
        .and_then(|c| summarize(c, None).gb_per_s)
}

/// `65536` as `64 KiB`; other sizes in bytes.
pub(crate) fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 30 && s.is_multiple_of(1 << 30) => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 && s.is_multiple_of(1 << 20) => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s.is_multiple_of(1 << 10) => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// Three significant digits or so: 0.0123, 0.123, 1.23, 12.3, 123.
fn num(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) if v.abs() >= 0.1 => format!("{v:.3}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// A short version of an error for a table cell (the full text is listed below the tables).
fn short(error: &str) -> String {
    let one_line = error.replace('|', "/").replace('\n', " ");
    if one_line.chars().count() > 90 {
        format!("{}…", one_line.chars().take(90).collect::<String>())
    } else {
        one_line
    }
}

/// The markdown report.
pub(crate) fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(out, "# tokio-pvm and its peers\n");
    let _ = writeln!(
        out,
        "- machine: {} CPUs, {}, Linux {}",
        m.nproc, m.cpu, m.kernel
    );
    let _ = writeln!(out, "- command: `{}`", results.command);
    let versions: Vec<String> = versions()
        .iter()
        .map(|(name, v)| format!("{name} {v}"))
        .collect();
    let _ = writeln!(out, "- versions: {}", versions.join(", "));
    let _ = writeln!(
        out,
        "- {} repetition(s){}, interleaved (each repetition: each size, each transport, then \
         the latency rows); medians, with min–max over the repetitions",
        results.reps,
        if results.quick {
            " of the --quick run"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "- wall time: {:.0} s", results.wall.as_secs_f64());

    let mut notes = Vec::new();
    let _ = writeln!(out, "\n## Throughput\n");
    for &size in &results.sizes {
        let cells: Vec<&Cell> = results.cells.iter().filter(|c| c.size == size).collect();
        let Some(first) = cells.first() else { continue };
        let _ = writeln!(
            out,
            "### {} × {} messages\n",
            size_label(size),
            grouped(first.messages)
        );
        let _ = writeln!(
            out,
            "| transport | msg/s | GB/s | min–max GB/s | CPU s/GB | vs unix |"
        );
        let _ = writeln!(out, "|:--|--:|--:|--:|--:|--:|");
        for cell in cells {
            let label = cell.peer.label();
            for (rep, e) in &cell.errors {
                notes.push(format!(
                    "{} {label}, repetition {rep}: {e}",
                    size_label(size)
                ));
            }
            if cell.samples.is_empty() {
                let why = cell.errors.first().map_or("no result", |(_, e)| e.as_str());
                let _ = writeln!(out, "| {label} | failed: {} | | | | |", short(why));
                continue;
            }
            let s = summarize(cell, reference(results, cell));
            let failed = if cell.errors.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} of {} failed)",
                    cell.errors.len(),
                    cell.errors.len() + cell.samples.len()
                )
            };
            let _ = writeln!(
                out,
                "| {label}{failed} | {} | {} | {}–{} | {} | {} |",
                s.msg_per_s
                    .map_or_else(|| "-".to_owned(), |v| grouped(v.round() as u64)),
                num(s.gb_per_s),
                num(s.gb_per_s_min),
                num(s.gb_per_s_max),
                num(s.cpu_s_per_gb),
                s.vs_unix
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
            );
        }
        let _ = writeln!(out);
    }
    let sizes_of_iceoryx2: Vec<String> = results
        .sizes
        .iter()
        .map(|&s| format!("{} {}", size_label(s), iceoryx::buffer_size(s)))
        .collect();
    let _ = writeln!(
        out,
        "GB = 10^9 bytes. Every message carries fresh data: the producer copies it from a \
         prepared pseudo-random source at a rotating offset and stamps its sequence number \
         into its first and last 8 bytes; the consumer checks length, both stamps and order \
         of every message. Rates count the N - 1 messages after the first, timed in the \
         receiving process from the first message's arrival to the last one's. CPU s/GB: user \
         + system time of both processes over their whole lives (start-up, source fill, \
         connection set-up included; getrusage(RUSAGE_CHILDREN)) per GB moved; two processes \
         working at once can exceed 1 / (GB/s). vs unix: median GB/s over that of \
         unix+LengthDelimitedCodec of the same size and runtime flavor."
    );
    if results.sizes.contains(&FLAVOR_SIZE) {
        let _ = writeln!(
            out,
            "\nRuntime flavors (both processes alike): no suffix = the work in a task spawned \
             on a multi-thread runtime; (current_thread) = a current_thread runtime; \
             (block_on) = directly in a multi-thread runtime's block_on, as a plain \
             #[tokio::main] loop. ipc-channel is blocking (plain threads); iceoryx2 is \
             synchronous."
        );
    }
    let _ = writeln!(
        out,
        "\niceoryx2: zero-copy loan (the producer writes into the loaned sample), safe \
         overflow off, RetryUntilDelivered (a publisher with a full subscriber buffer waits), \
         history 0, subscriber buffer in samples: {}. (event): an event notification per \
         sample wakes the subscriber in a WaitSet. (busy poll): the subscriber spins on \
         receive(): one core is busy the whole time, and its CPU figure shows it.",
        sizes_of_iceoryx2.join(", ")
    );

    if !results.latency.is_empty() {
        let _ = writeln!(
            out,
            "\n## Latency\n\nOne way = half a round trip of a ping-pong, after warm-up; each \
             side sends a fresh message (copied from its source and stamped, inside the timed \
             round trip) and checks the one it receives.\n"
        );
        let _ = writeln!(
            out,
            "| size | transport | round trips | p50 µs | p99 µs | min–max p50 µs |"
        );
        let _ = writeln!(out, "|--:|:--|--:|--:|--:|--:|");
        for cell in &results.latency {
            let label = cell.peer.latency_label();
            for (rep, e) in &cell.errors {
                notes.push(format!(
                    "latency {} {label}, repetition {rep}: {e}",
                    size_label(cell.size)
                ));
            }
            if cell.samples.is_empty() {
                let why = cell.errors.first().map_or("no result", |(_, e)| e.as_str());
                let _ = writeln!(
                    out,
                    "| {} | {label} | failed: {} | | | |",
                    size_label(cell.size),
                    short(why)
                );
                continue;
            }
            let p50 = || cell.samples.iter().map(|s| s.p50_us);
            let _ = writeln!(
                out,
                "| {} | {label} | {} | {} | {} | {}–{} |",
                size_label(cell.size),
                grouped(cell.rounds),
                num(median(p50())),
                num(median(cell.samples.iter().map(|s| s.p99_us))),
                num(p50().reduce(f64::min)),
                num(p50().reduce(f64::max)),
            );
        }
        let _ = writeln!(
            out,
            "\np50 and p99 are medians over the repetitions of each repetition's percentile. \
             tokio-pvm: send() = feed + flush, and flush returns once the peer has pulled and \
             acknowledged the message; unix: send() returns once the frame is in the socket; \
             ipc-channel: send() returns once the message is in the socket; iceoryx2: send() \
             hands the sample over, then (event) notifies."
        );
        if results
            .latency
            .iter()
            .any(|c| c.peer == Peer::Iceoryx2(Wake::Spin))
        {
            let _ = writeln!(
                out,
                "iceoryx2 (busy poll): both processes spin while they wait, so both cores are \
                 busy."
            );
        }
    }
    if !results.cleanup_notes.is_empty() {
        let _ = writeln!(out, "\n## iceoryx2 clean-up\n");
        for note in &results.cleanup_notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Failed repetitions\n");
        for note in notes {
            let _ = writeln!(out, "- {}", note.replace('\n', " "));
        }
    }
    out
}

/// Every repetition and the summaries, as one JSON object.
pub(crate) fn json(results: &Results) -> String {
    let m = &results.machine;
    let throughput: Vec<Value> = results
        .cells
        .iter()
        .map(|cell| {
            let s = summarize(cell, reference(results, cell));
            let reps: Vec<Value> = cell
                .samples
                .iter()
                .zip(rates(cell))
                .map(|(sample, (gb, msg, cpu))| {
                    json!({
                        "rep": sample.rep,
                        "elapsed_ns": sample.elapsed.as_nanos() as u64,
                        "cpu_ns": sample.cpu.as_nanos() as u64,
                        "gb_per_s": gb,
                        "msg_per_s": msg,
                        "cpu_s_per_gb": cpu,
                    })
                })
                .collect();
            json!({
                "size": cell.size,
                "transport": cell.peer.id(),
                "label": cell.peer.label(),
                "messages": cell.messages,
                "reps": reps,
                "errors": errors(&cell.errors),
                "median": {
                    "msg_per_s": s.msg_per_s,
                    "gb_per_s": s.gb_per_s,
                    "gb_per_s_min": s.gb_per_s_min,
                    "gb_per_s_max": s.gb_per_s_max,
                    "cpu_s_per_gb": s.cpu_s_per_gb,
                    "vs_unix": s.vs_unix,
                },
            })
        })
        .collect();
    let latency: Vec<Value> = results
        .latency
        .iter()
        .map(|cell: &LatencyCell| {
            let reps: Vec<Value> = cell
                .samples
                .iter()
                .map(|s| json!({"rep": s.rep, "p50_us": s.p50_us, "p99_us": s.p99_us}))
                .collect();
            json!({
                "size": cell.size,
                "transport": cell.peer.id(),
                "label": cell.peer.latency_label(),
                "warmup": cell.warmup,
                "round_trips": cell.rounds,
                "reps": reps,
                "errors": errors(&cell.errors),
                "median": {
                    "p50_us": median(cell.samples.iter().map(|s| s.p50_us)),
                    "p99_us": median(cell.samples.iter().map(|s| s.p99_us)),
                },
            })
        })
        .collect();
    let versions: serde_json::Map<String, Value> = versions()
        .into_iter()
        .map(|(name, v)| (name.to_owned(), Value::from(v)))
        .collect();
    let doc = json!({
        "machine": {"nproc": m.nproc, "cpu": m.cpu, "kernel": m.kernel},
        "command": results.command,
        "versions": versions,
        "reps": results.reps,
        "quick": results.quick,
        "sizes": results.sizes,
        "gb": 1e9,
        "throughput": throughput,
        "latency": latency,
        "iceoryx2_cleanup": results.cleanup_notes,
        "wall_s": results.wall.as_secs_f64(),
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serializes")
}

fn errors(errors: &[(usize, String)]) -> Vec<Value> {
    errors
        .iter()
        .map(|(rep, e)| json!({"rep": rep, "error": e}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(16 << 20), "16 MiB");
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(num(Some(0.0123)), "0.0123");
        assert_eq!(num(Some(12.34)), "12.3");
    }

    #[test]
    fn versions_are_found() {
        for (name, v) in versions() {
            assert!(
                v.chars().next().is_some_and(|c| c.is_ascii_digit()),
                "{name} {v}"
            );
        }
    }
}
