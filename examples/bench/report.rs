//! The machine description, and the results as aligned text tables or as JSON.

pub(crate) use crate::fmt::grouped;
use std::fmt::Write as _;

use crate::child::Loans;
use crate::{Cell, LatencyCell, Results, Transport};

pub(crate) use crate::machine::Machine;

pub(crate) use crate::stats::median;

/// Medians and spread of one throughput cell.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    msg_per_s: Option<f64>,
    gb_per_s: Option<f64>,
    gb_per_s_min: Option<f64>,
    gb_per_s_max: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    ratio_vs_unix: Option<f64>,
}

fn summarize(cell: &Cell, unix_gb_per_s: Option<f64>) -> Summary {
    let timed = (cell.messages - 1) as f64;
    let moved_gb = cell.messages as f64 * cell.size as f64 / 1e9;
    let secs: Vec<f64> = cell
        .samples
        .iter()
        .map(|s| s.elapsed.as_secs_f64())
        .filter(|&s| s > 0.0)
        .collect();
    let gb: Vec<f64> = secs
        .iter()
        .map(|s| timed * cell.size as f64 / 1e9 / s)
        .collect();
    let gb_per_s = median(gb.iter().copied());
    Summary {
        msg_per_s: median(secs.iter().map(|s| timed / s)),
        gb_per_s,
        gb_per_s_min: gb.iter().copied().reduce(f64::min),
        gb_per_s_max: gb.iter().copied().reduce(f64::max),
        cpu_s_per_gb: median(cell.samples.iter().map(|s| s.cpu.as_secs_f64() / moved_gb)),
        ratio_vs_unix: match (gb_per_s, unix_gb_per_s) {
            (Some(g), Some(u)) if u > 0.0 => Some(g / u),
            _ => None,
        },
    }
}

/// Median GB/s of the Unix-socket row that `transport`'s row of `size` compares with (see
/// [`Transport::reference`]).
fn unix_reference(results: &Results, size: usize, transport: Transport) -> Option<f64> {
    let reference = transport.reference();
    results
        .cells
        .iter()
        .find(|c| c.size == size && c.transport == reference)
        .and_then(|c| summarize(c, None).gb_per_s)
}

/// `65536` as `64 KiB`; sizes that are not a whole number of KiB or MiB in bytes.
pub(crate) fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 30 && s.is_multiple_of(1 << 30) => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 && s.is_multiple_of(1 << 20) => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s.is_multiple_of(1 << 10) => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// For a row whose loans did not all come from the loan region: a short mark for the row, and
/// a note with every repetition's count.
fn heap_loans(loans: &[Loans]) -> Option<(String, String)> {
    let heap = |l: &Loans| l.total - l.shared.min(l.total);
    let worst = loans.iter().max_by_key(|l| heap(l))?;
    let closed = loans.iter().filter(|l| !l.zero_copy).count();
    if heap(worst) == 0 && closed == 0 {
        return None;
    }
    let mark = format!(
        "heap loans: {} of {}{}",
        grouped(heap(worst)),
        grouped(worst.total),
        if loans.len() > 1 { " (worst rep)" } else { "" }
    );
    let per_rep: Vec<String> = loans
        .iter()
        .map(|l| format!("{} of {}", grouped(heap(l)), grouped(l.total)))
        .collect();
    let mut note = format!(
        "loans from the heap, per repetition: {}",
        per_rep.join(", ")
    );
    if closed > 0 {
        let _ = write!(
            note,
            "; the zero-copy lane was not open in {closed} of {} repetition(s)",
            loans.len()
        );
    }
    Some((mark, note))
}

/// The loan counts of the samples that have them.
fn cell_loans(cell: &Cell) -> Vec<Loans> {
    cell.samples.iter().filter_map(|s| s.loans).collect()
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Where the notes under the tables collect.
#[derive(Default)]
struct Notes {
    /// Failed repetitions.
    failed: Vec<String>,
    /// Rows whose loans did not all come from the loan region.
    heap_loans: Vec<String>,
}

/// The row mark and note for `loans`, if not all were shared.
fn loan_mark(notes: &mut Notes, what: String, loans: &[Loans]) -> String {
    match heap_loans(loans) {
        Some((short, note)) => {
            notes.heap_loans.push(format!("{what}: {note}"));
            format!("  {short}")
        }
        None => String::new(),
    }
}

/// The row mark for failed repetitions, and their notes.
fn error_mark(notes: &mut Notes, what: &str, errors: &[String]) -> &'static str {
    if errors.is_empty() {
        return "";
    }
    notes
        .failed
        .extend(errors.iter().map(|e| format!("{what}: {e}")));
    " *"
}

/// The aligned text report.
pub(crate) fn text(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(out, "tokio-pvm transport benchmark");
    let _ = writeln!(
        out,
        "machine: {} CPUs, {}, Linux {}",
        m.nproc, m.cpu, m.kernel
    );
    let _ = writeln!(out, "command: {}", results.command);
    let _ = writeln!(
        out,
        "{} repetition(s), interleaved (each repetition: each size, each row, then the \
         latency rows); medians shown",
        results.reps
    );
    let mut notes = Notes::default();
    if !results.cells.is_empty() {
        throughput_table(&mut out, results, &mut notes);
    }
    if !results.latency.is_empty() {
        latency_table(&mut out, results, &mut notes);
    }
    if !notes.heap_loans.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "heap loans: a loan comes from the heap, and its message travels as an ordinary \
             one, when it is small enough to travel inline (up to 256 B by default), when the \
             loan region is full, or when the zero-copy lane is not open:"
        );
        for note in &notes.heap_loans {
            let _ = writeln!(out, "  {note}");
        }
    }
    if !notes.failed.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "* failed repetitions:");
        for note in &notes.failed {
            let _ = writeln!(out, "  {note}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "wall time: {:.1} s", results.wall.as_secs_f64());
    out
}

fn throughput_table(out: &mut String, results: &Results, notes: &mut Notes) {
    let mut counts = Vec::new();
    for size in &results.sizes {
        if let Some(c) = results.cells.iter().find(|c| c.size == *size) {
            counts.push(format!("{} x {}", size_label(*size), grouped(c.messages)));
        }
    }
    let _ = writeln!(out, "messages per measurement: {}", counts.join(", "));
    let _ = writeln!(out);
    let _ = writeln!(out, "throughput");
    let header = format!(
        "{:>8}  {:<26}  {:>12}  {:>8}  {:>9}  {:>8}  {:>7}",
        "size", "transport", "msg/s", "GB/s", "CPU s/GB", "vs unix", "spread"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    let mut last_size = None;
    for cell in &results.cells {
        if last_size.is_some_and(|s| s != cell.size) {
            let _ = writeln!(out);
        }
        last_size = Some(cell.size);
        let what = format!("{} {}", size_label(cell.size), cell.transport.label());
        let mark = error_mark(notes, &what, &cell.errors);
        if cell.samples.is_empty() {
            let _ = writeln!(
                out,
                "{:>8}  {:<26}  ERROR: all {} repetition(s) failed, see below",
                size_label(cell.size),
                cell.transport.label(),
                cell.errors.len()
            );
            continue;
        }
        let s = summarize(cell, unix_reference(results, cell.size, cell.transport));
        let spread = match (s.gb_per_s_min, s.gb_per_s_max, s.gb_per_s) {
            (Some(lo), Some(hi), Some(mid)) if mid > 0.0 => {
                format!("{:.0}%", (hi - lo) / mid * 100.0)
            }
            _ => "-".to_owned(),
        };
        let loans = loan_mark(notes, what, &cell_loans(cell));
        let _ = writeln!(
            out,
            "{:>8}  {:<26}  {:>12}  {:>8}  {:>9}  {:>8}  {:>7}{mark}{loans}",
            size_label(cell.size),
            cell.transport.label(),
            s.msg_per_s
                .map_or_else(|| "-".to_owned(), |v| grouped(v.round() as u64)),
            num(s.gb_per_s, 3),
            num(s.cpu_s_per_gb, 3),
            s.ratio_vs_unix
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
            spread,
        );
    }
    let _ = writeln!(out);
    for line in [
        "GB = 10^9 bytes. Rates count the messages after the first, timed in the receiving \
         process from the first message's arrival to the last one's.",
        "Data: every tokio-pvm and unix row sends fresh messages (each copied from a rotating \
         offset of a 64 MiB pseudo-random source into a new buffer, stamped with its sequence \
         number in its first and last 8 bytes, which the receiver checks), except the \
         (resent buffer) rows: one pre-built message sent again and again, hot in the caches; \
         their receiver checks its first and last byte.",
        "tokio-pvm (loan): the fresh messages written straight into Connection::loan buffers, \
         both sides with Config::loan_region(max(64 MiB, 4 x size)); the receiver reads them \
         in place.",
        "Runtime: both children run their work in a task spawned on a multi-thread runtime, \
         except [current_thread] (a current_thread runtime) and [block_on] (directly in a \
         multi-thread runtime's block_on, as a plain #[tokio::main] loop does); those rows \
         run up to 4 KiB only.",
        "CPU s/GB: user + system time of all processes of the measurement (both children; \
         memcpy: its one child), whole lifetimes less the sender's building of its message \
         source, per GB moved; getrusage(RUSAGE_CHILDREN).",
        "vs unix: GB/s over the Unix row of the same size, data and runtime: unix \
         [current_thread] or unix [block_on] for the rows of that flavor, unix (resent \
         buffer) for the resent rows, unix+LengthDelimitedCodec for the others. spread: \
         (max - min) / median of GB/s over the repetitions.",
        "raw: one reused destination buffer; rotated: the same loop into as many buffers as \
         the default window holds (16 MiB, at most 1024), used in turn, as a transport's \
         receive buffers are.",
    ] {
        let _ = writeln!(out, "{line}");
    }
}

fn latency_table(out: &mut String, results: &Results, notes: &mut Notes) {
    let _ = writeln!(out);
    let _ = writeln!(out, "one-way latency (round trip / 2, ping-pong)");
    let header = format!(
        "{:>8}  {:<26}  {:>11}  {:>9}  {:>9}",
        "size", "transport", "round trips", "p50 us", "p99 us"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    for cell in &results.latency {
        let what = format!(
            "latency {} {}",
            size_label(cell.size),
            cell.transport.label()
        );
        let mark = error_mark(notes, &what, &cell.errors);
        if cell.p50_us.is_empty() {
            let _ = writeln!(
                out,
                "{:>8}  {:<26}  ERROR: all {} repetition(s) failed, see below",
                size_label(cell.size),
                cell.transport.label(),
                cell.errors.len()
            );
            continue;
        }
        let loans = loan_mark(notes, what, &cell.loans);
        let _ = writeln!(
            out,
            "{:>8}  {:<26}  {:>11}  {:>9}  {:>9}{mark}{loans}",
            size_label(cell.size),
            cell.transport.label(),
            grouped(cell.rounds),
            num(median(cell.p50_us.iter().copied()), 1),
            num(median(cell.p99_us.iter().copied()), 1),
        );
    }
    let _ = writeln!(out);
    for line in [
        "Round trips per repetition after a warm-up; p50 and p99 are medians over the \
         repetitions.",
        "Each round trip: the pinger makes a fresh message (as for throughput; in a loan for \
         the loan row), sends it and waits for the echo. The tokio-pvm and unix echoes send \
         back the message they received; the loan echo copies it into a loan of its own, as \
         an application that loans would (a received loaned message lies in the pinger's \
         region).",
        "tokio-pvm: both sides use send() = feed + flush, and flush returns only once the \
         peer has taken and acknowledged the message, so every round trip includes two \
         acknowledgements (the transport's delivery guarantee).",
        "unix: send() = feed + flush, which returns once the frame is written into the \
         socket.",
    ] {
        let _ = writeln!(out, "{line}");
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number, or `null` for none (or a value JSON cannot hold).
fn json_num(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".to_owned(),
    }
}

fn json_errors(errors: &[String]) -> String {
    let items: Vec<String> = errors.iter().map(|e| json_str(e)).collect();
    format!("[{}]", items.join(", "))
}

/// `"loans_shared": [..], "loans_total": [..], "zero_copy": [..]`, one entry per successful
/// repetition, or `null`s for a row that does not loan.
fn json_loans(loans: &[Loans]) -> String {
    if loans.is_empty() {
        return "\"loans_shared\": null, \"loans_total\": null, \"zero_copy\": null".to_owned();
    }
    let list = |f: &dyn Fn(&Loans) -> String| {
        let items: Vec<String> = loans.iter().map(f).collect();
        format!("[{}]", items.join(", "))
    };
    format!(
        "\"loans_shared\": {}, \"loans_total\": {}, \"zero_copy\": {}",
        list(&|l| l.shared.to_string()),
        list(&|l| l.total.to_string()),
        list(&|l| l.zero_copy.to_string()),
    )
}

/// The machine-readable report: one object, with flat arrays of flat objects.
pub(crate) fn json(results: &Results) -> String {
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(out, "{{");
    let _ = writeln!(
        out,
        "  \"machine\": {{\"nproc\": {}, \"cpu\": {}, \"kernel\": {}}},",
        m.nproc,
        json_str(&m.cpu),
        json_str(&m.kernel)
    );
    let _ = writeln!(out, "  \"command\": {},", json_str(&results.command));
    let _ = writeln!(out, "  \"reps\": {},", results.reps);
    let _ = writeln!(out, "  \"quick\": {},", results.quick);
    let _ = writeln!(out, "  \"gb\": 1e9,");
    let _ = writeln!(out, "  \"throughput\": [");
    let rows: Vec<String> = results
        .cells
        .iter()
        .map(|cell| {
            let s = summarize(cell, unix_reference(results, cell.size, cell.transport));
            format!(
                "    {{\"size\": {}, \"transport\": {}, \"messages\": {}, \"ok_reps\": {}, \
                 \"msg_per_s\": {}, \"gb_per_s\": {}, \"gb_per_s_min\": {}, \
                 \"gb_per_s_max\": {}, \"cpu_s_per_gb\": {}, \"ratio_vs_unix\": {}, \
                 \"ratio_reference\": {}, {}, \"errors\": {}}}",
                cell.size,
                json_str(cell.transport.label()),
                cell.messages,
                cell.samples.len(),
                json_num(s.msg_per_s),
                json_num(s.gb_per_s),
                json_num(s.gb_per_s_min),
                json_num(s.gb_per_s_max),
                json_num(s.cpu_s_per_gb),
                json_num(s.ratio_vs_unix),
                json_str(cell.transport.reference().label()),
                json_loans(&cell_loans(cell)),
                json_errors(&cell.errors),
            )
        })
        .collect();
    let _ = writeln!(out, "{}", rows.join(",\n"));
    let _ = writeln!(out, "  ],");
    let _ = writeln!(out, "  \"latency\": [");
    let rows: Vec<String> = results
        .latency
        .iter()
        .map(|cell: &LatencyCell| {
            format!(
                "    {{\"size\": {}, \"transport\": {}, \"round_trips\": {}, \"ok_reps\": {}, \
                 \"p50_us\": {}, \"p99_us\": {}, {}, \"errors\": {}}}",
                cell.size,
                json_str(cell.transport.label()),
                cell.rounds,
                cell.p50_us.len(),
                json_num(median(cell.p50_us.iter().copied())),
                json_num(median(cell.p99_us.iter().copied())),
                json_loans(&cell.loans),
                json_errors(&cell.errors),
            )
        })
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(out, "{}", rows.join(",\n"));
    }
    let _ = writeln!(out, "  ],");
    let _ = writeln!(
        out,
        "  \"wall_s\": {}",
        json_num(Some(results.wall.as_secs_f64()))
    );
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(12), "12");
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(16 << 20), "16 MiB");
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(json_num(Some(f64::NAN)), "null");
    }

    /// Results with a loan row that fell back to the heap in one repetition, a failed row and
    /// a latency row.
    fn sample_results() -> Results {
        use crate::{Cell, Sample};
        use std::time::Duration;
        let sample = |ms, loans| Sample {
            elapsed: Duration::from_millis(ms),
            cpu: Duration::from_millis(2 * ms),
            loans,
        };
        let loans = |shared| Loans {
            shared,
            total: 100,
            zero_copy: true,
        };
        let cell = |transport, samples, errors| Cell {
            size: 4096,
            transport,
            messages: 100,
            samples,
            errors,
        };
        Results {
            machine: Machine::detect(),
            command: "bench \"quoted\"".to_owned(),
            reps: 2,
            quick: true,
            sizes: vec![4096],
            cells: vec![
                cell(
                    Transport::PvmLoan,
                    vec![sample(10, Some(loans(100))), sample(12, Some(loans(97)))],
                    vec![],
                ),
                cell(
                    Transport::UNIX,
                    vec![sample(20, None)],
                    vec!["repetition 2: it broke".to_owned()],
                ),
                cell(
                    Transport::Raw,
                    vec![],
                    vec!["repetition 1: gone".to_owned()],
                ),
            ],
            latency: vec![LatencyCell {
                size: 64,
                transport: Transport::PvmLoan,
                rounds: 10,
                p50_us: vec![5.0, 7.0],
                p99_us: vec![9.0, 11.0],
                loans: vec![loans(0), loans(0)],
                errors: vec![],
            }],
            wall: Duration::from_secs(3),
        }
    }

    #[test]
    fn text_marks_heap_loans_and_failures() {
        let out = text(&sample_results());
        assert!(out.contains("heap loans: 3 of 100 (worst rep)"), "{out}");
        assert!(
            out.contains(
                "4 KiB tokio-pvm (loan): loans from the heap, per repetition: 0 of 100, 3 of 100"
            ),
            "{out}"
        );
        assert!(out.contains("heap loans: 100 of 100 (worst rep)"), "{out}");
        assert!(out.contains("ERROR: all 1 repetition(s) failed"), "{out}");
        assert!(
            out.contains("4 KiB unix+LengthDelimitedCodec: repetition 2: it broke"),
            "{out}"
        );
        // The loan row's median GB/s (of 10 and 12 ms) over the Unix row's (20 ms).
        assert!(out.contains("1.83x"), "{out}");
    }

    #[test]
    fn json_parses_and_carries_loans() {
        let out = json(&sample_results());
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        let rows = v["throughput"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["transport"], "tokio-pvm (loan)");
        assert_eq!(rows[0]["ratio_reference"], "unix+LengthDelimitedCodec");
        assert_eq!(rows[0]["loans_shared"], serde_json::json!([100, 97]));
        assert_eq!(rows[0]["loans_total"], serde_json::json!([100, 100]));
        assert_eq!(rows[0]["zero_copy"], serde_json::json!([true, true]));
        assert!(rows[1]["loans_shared"].is_null());
        assert_eq!(rows[2]["ok_reps"], 0);
        assert_eq!(v["latency"][0]["loans_shared"], serde_json::json!([0, 0]));
    }
}
