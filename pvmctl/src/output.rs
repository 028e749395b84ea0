//! Writing to the terminal and reporting problems.

use super::*;

/// Writes `text` to stdout and flushes it.
pub(crate) fn emit(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => Failure::new(0, ""),
            _ => Failure::new(EXIT_FAILURE, format!("writing to stdout: {e}")),
        })
}

/// Prints `pvmctl: <message>` on stderr.
pub(crate) fn warn(message: &str) {
    note(&format!("pvmctl: {message}"));
}

/// Prints a line on stderr, its control characters escaped; a closed stderr is ignored.
pub(crate) fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{}", printable(line));
}

/// `text` with control characters escaped: manifests and the targets' memory are untrusted,
/// and must not drive the terminal.
pub(crate) fn printable(text: &str) -> String {
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
pub(crate) fn shown(value: &Value) -> String {
    match value {
        Value::Str(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A duration in the largest two units: `42s`, `3m12s`, `2h05m`, `3d04h`.
pub(crate) fn human(d: Duration) -> String {
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
pub(crate) fn interval_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        human(d)
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Lays out `rows` in columns two spaces apart, each line starting with `indent`.
pub(crate) fn columns(rows: &[Vec<String>], indent: &str) -> String {
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
pub(crate) fn field_rows(snapshots: &[Snapshot]) -> Vec<Vec<String>> {
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
pub(crate) fn json_value(value: &Value) -> Json {
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
pub(crate) fn uptime_text(info: &ProcessInfo) -> String {
    info.uptime().map_or_else(|| "-".to_owned(), human)
}
