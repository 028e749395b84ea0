//! The machine description, and the results as aligned text tables or as JSON.

pub(crate) use crate::fmt::grouped;
use std::fmt::Write as _;

use crate::child::Loans;
use crate::stacks::{self, Protocol, Stack};
use crate::{Cell, LatencyCell, Results, Row};

pub(crate) use crate::machine::Machine;

pub(crate) use crate::stats::median;

/// Medians and spread of one cell of a table of rates.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    /// Messages (or requests, see [`Row::unit`]) per second.
    per_s: Option<f64>,
    gb_per_s: Option<f64>,
    gb_per_s_min: Option<f64>,
    gb_per_s_max: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    ratio_vs_unix: Option<f64>,
}

fn summarize<R: Row>(cell: &Cell<R>, unix_gb_per_s: Option<f64>) -> Summary {
    let row = cell.transport;
    let timed = row.timed(cell.messages) as f64;
    // Bytes each message (or request) moves.
    let bytes = (cell.size as u64 * row.directions()) as f64;
    let moved_gb = cell.messages as f64 * bytes / 1e9;
    let secs: Vec<f64> = cell
        .samples
        .iter()
        .map(|s| s.elapsed.as_secs_f64())
        .filter(|&s| s > 0.0)
        .collect();
    let gb: Vec<f64> = secs.iter().map(|s| timed * bytes / 1e9 / s).collect();
    let gb_per_s = median(gb.iter().copied());
    Summary {
        per_s: median(secs.iter().map(|s| timed / s)),
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

/// The summary of `cell`, one of `cells`, with its ratio to the Unix-socket row of `cells` it
/// compares with (see [`Row::reference`]).
fn summary<R: Row>(cells: &[Cell<R>], cell: &Cell<R>) -> Summary {
    let reference = cell.transport.reference();
    let unix = cells
        .iter()
        .find(|c| c.size == cell.size && c.transport == reference)
        .and_then(|c| summarize(c, None).gb_per_s);
    summarize(cell, unix)
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
fn cell_loans<R>(cell: &Cell<R>) -> Vec<Loans> {
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
         protocol-stack rows, then the latency rows); medians shown",
        results.reps
    );
    let mut notes = Notes::default();
    if !results.cells.is_empty() {
        throughput_table(&mut out, results, &mut notes);
    }
    if !results.stacks.is_empty() {
        stacks_table(&mut out, &results.stacks, &mut notes);
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
    rate_rows(out, &results.cells, notes, "transport", false);
    let _ = writeln!(out);
    for line in [
        "GB = 10^9 bytes. Rates count the messages after the first, timed in the receiving \
         process from the first message's arrival to the last one's.",
        "Data: every tokio-pvm, unix and tcp row sends fresh messages (each copied from a \
         rotating offset of a 64 MiB pseudo-random source into a new buffer, stamped with its \
         sequence number in its first and last 8 bytes, which the receiver checks), except the \
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
        "tcp rows: TCP over the loopback interface (127.0.0.1), TCP_NODELAY on both sides. \
         tokio-pvm tcp+tls: a Connection at tcp://127.0.0.1:PORT with Config::tls, every \
         message inline in the protocol's frames; tcp+tls+LengthDelimitedCodec: the codec \
         over tokio-rustls. TLS: rustls with ring (TLS 1.3), mutual (each side presents a \
         certificate of one CA, made once per run, untimed).",
        "raw: one reused destination buffer; rotated: the same loop into as many buffers as \
         the default window holds (16 MiB, at most 1024), used in turn, as a transport's \
         receive buffers are.",
    ] {
        let _ = writeln!(out, "{line}");
    }
}

/// The rows of a table of rates under their header, a blank line between sizes. `what` heads
/// the second column; with `units`, each rate says what it counts (`req/s`, `msg/s`).
fn rate_rows<R: Row>(
    out: &mut String,
    cells: &[Cell<R>],
    notes: &mut Notes,
    what: &str,
    units: bool,
) {
    let (rate, width) = if units { ("rate", 16) } else { ("msg/s", 12) };
    // Room for the longest label: 26 characters, or more if a row's label is longer.
    let names = cells
        .iter()
        .map(|c| c.transport.label().len())
        .fold(26, usize::max);
    let header = format!(
        "{:>8}  {:<names$}  {:>width$}  {:>8}  {:>9}  {:>8}  {:>7}",
        "size", what, rate, "GB/s", "CPU s/GB", "vs unix", "spread"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    let mut last_size = None;
    for cell in cells {
        if last_size.is_some_and(|s| s != cell.size) {
            let _ = writeln!(out);
        }
        last_size = Some(cell.size);
        let label = cell.transport.label();
        let what = format!("{} {label}", size_label(cell.size));
        let mark = error_mark(notes, &what, &cell.errors);
        if cell.samples.is_empty() {
            let _ = writeln!(
                out,
                "{:>8}  {label:<names$}  ERROR: all {} repetition(s) failed, see below",
                size_label(cell.size),
                cell.errors.len()
            );
            continue;
        }
        let s = summary(cells, cell);
        let spread = match (s.gb_per_s_min, s.gb_per_s_max, s.gb_per_s) {
            (Some(lo), Some(hi), Some(mid)) if mid > 0.0 => {
                format!("{:.0}%", (hi - lo) / mid * 100.0)
            }
            _ => "-".to_owned(),
        };
        let per_s = s.per_s.map_or_else(
            || "-".to_owned(),
            |v| {
                let v = grouped(v.round() as u64);
                if units {
                    format!("{v} {}/s", cell.transport.unit())
                } else {
                    v
                }
            },
        );
        let loans = loan_mark(notes, what, &cell_loans(cell));
        let _ = writeln!(
            out,
            "{:>8}  {label:<names$}  {per_s:>width$}  {:>8}  {:>9}  {:>8}  {:>7}{mark}{loans}",
            size_label(cell.size),
            num(s.gb_per_s, 3),
            num(s.cpu_s_per_gb, 3),
            s.ratio_vs_unix
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
            spread,
        );
    }
}

fn stacks_table(out: &mut String, cells: &[Cell<Stack>], notes: &mut Notes) {
    let _ = writeln!(out);
    // Counts per protocol and size (the same over both carriers).
    let mut counts: Vec<String> = Vec::new();
    for protocol in [Protocol::Http2, Protocol::WebSocket] {
        let mut sizes: Vec<String> = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            let seen = cells[..i]
                .iter()
                .any(|c| c.transport.protocol == protocol && c.size == cell.size);
            if cell.transport.protocol == protocol && !seen {
                sizes.push(format!(
                    "{} x {}",
                    size_label(cell.size),
                    grouped(cell.messages)
                ));
            }
        }
        if !sizes.is_empty() {
            counts.push(format!("{} {}", protocol.name(), sizes.join(", ")));
        }
    }
    let _ = writeln!(
        out,
        "requests (HTTP/2) or messages (WebSocket) per measurement: {}",
        counts.join("; ")
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "protocol stacks (hyper HTTP/2, tokio-tungstenite WebSocket) over tokio_pvm::ByteStream \
         and tokio::net::UnixStream"
    );
    rate_rows(out, cells, notes, "stack", true);
    let _ = writeln!(out);
    for line in [
        format!(
            "HTTP/2: one connection, {} requests in flight; each POST carries a fresh body of \
             the size (stamped with the request's number, also sent in a header), which the \
             server reads whole and checks, answering with a fresh body of the same size, which \
             the client reads whole and checks. Timed in the client from just before the first \
             request to the last response read (handshake excluded); rates count every \
             request, GB/s both bodies (2 x size per request).",
            stacks::H2_IN_FLIGHT
        ),
        format!(
            "HTTP/2 settings, both sides, both carriers: stream window {}, connection window \
             {}, max frame {}, send buffer {} per stream (hyper's defaults would throttle 4 MiB \
             bodies).",
            size_label(stacks::H2_STREAM_WINDOW as usize),
            size_label(stacks::H2_CONN_WINDOW as usize),
            size_label(stacks::H2_MAX_FRAME as usize),
            size_label(stacks::H2_SEND_BUF),
        ),
        "WebSocket: the client sends binary messages of fresh data (stamped) with send() = \
         feed + flush, one after another, masked as the protocol requires of a client; the \
         server checks each one's length and stamps, in order, and times from the first \
         message's arrival to the last one's; rates count the messages after the first."
            .to_owned(),
        "ByteStream: tokio_pvm::ByteStream over a Connection with the default Config; \
         UnixStream: tokio::net::UnixStream. Both children run in a task spawned on a \
         multi-thread runtime."
            .to_owned(),
        "CPU s/GB: both children, whole lifetimes less the building of their 64 MiB sources, \
         per GB moved (both bodies for HTTP/2). vs unix: GB/s over the same protocol over \
         UnixStream at the same size."
            .to_owned(),
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

/// The GB/s, CPU and ratio fields of `cell`, one of `cells`: `"gb_per_s": .., ..,
/// "ratio_reference": ..`.
fn json_rates<R: Row>(cells: &[Cell<R>], cell: &Cell<R>) -> String {
    let s = summary(cells, cell);
    format!(
        "\"gb_per_s\": {}, \"gb_per_s_min\": {}, \"gb_per_s_max\": {}, \"cpu_s_per_gb\": {}, \
         \"ratio_vs_unix\": {}, \"ratio_reference\": {}",
        json_num(s.gb_per_s),
        json_num(s.gb_per_s_min),
        json_num(s.gb_per_s_max),
        json_num(s.cpu_s_per_gb),
        json_num(s.ratio_vs_unix),
        json_str(cell.transport.reference().label()),
    )
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
            format!(
                "    {{\"size\": {}, \"transport\": {}, \"messages\": {}, \"ok_reps\": {}, \
                 \"msg_per_s\": {}, {}, {}, \"errors\": {}}}",
                cell.size,
                json_str(cell.transport.label()),
                cell.messages,
                cell.samples.len(),
                json_num(summary(&results.cells, cell).per_s),
                json_rates(&results.cells, cell),
                json_loans(&cell_loans(cell)),
                json_errors(&cell.errors),
            )
        })
        .collect();
    let _ = writeln!(out, "{}", rows.join(",\n"));
    let _ = writeln!(out, "  ],");
    let _ = writeln!(out, "  \"stacks\": [");
    let rows: Vec<String> = results
        .stacks
        .iter()
        .map(|cell| {
            format!(
                "    {{\"size\": {}, \"stack\": {}, \"key\": {}, \"unit\": {}, \"count\": {}, \
                 \"ok_reps\": {}, \"per_s\": {}, {}, \"errors\": {}}}",
                cell.size,
                json_str(cell.transport.label()),
                json_str(cell.transport.key()),
                json_str(cell.transport.unit()),
                cell.messages,
                cell.samples.len(),
                json_num(summary(&results.stacks, cell).per_s),
                json_rates(&results.stacks, cell),
                json_errors(&cell.errors),
            )
        })
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(out, "{}", rows.join(",\n"));
    }
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

    /// Results with a loan row that fell back to the heap in one repetition, a failed row,
    /// two protocol-stack rows (HTTP/2 over each carrier) and a latency row.
    fn sample_results() -> Results {
        use crate::{Cell, Sample, Transport};
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
            stacks: vec![
                Cell {
                    size: 1 << 20,
                    transport: Stack::ALL[0],
                    messages: 1000,
                    samples: vec![sample(1000, None)],
                    errors: vec![],
                },
                Cell {
                    size: 1 << 20,
                    transport: Stack::ALL[1],
                    messages: 1000,
                    samples: vec![sample(4000, None)],
                    errors: vec![],
                },
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
        // 1,000 requests of 1 MiB each way in 1 s, over ByteStream; in 4 s over UnixStream.
        assert!(
            out.contains("1 MiB  HTTP/2 over ByteStream           1,000 req/s     2.097"),
            "{out}"
        );
        assert!(out.contains("4.00x"), "{out}");
        assert!(out.contains("HTTP/2 1 MiB x 1,000"), "{out}");
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
        let stacks = v["stacks"].as_array().unwrap();
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0]["stack"], "HTTP/2 over ByteStream");
        assert_eq!(stacks[0]["key"], "h2-pvm");
        assert_eq!(stacks[0]["unit"], "req");
        assert_eq!(stacks[0]["count"], 1000);
        assert_eq!(stacks[0]["per_s"], 1000.0);
        assert_eq!(stacks[0]["ratio_vs_unix"], 4.0);
        assert_eq!(stacks[1]["ratio_reference"], "HTTP/2 over UnixStream");
    }
}
