//! `pvmctl list`: the publishing processes.

use super::*;

/// `pvmctl list`.
pub(crate) fn list(dirs: &[PathBuf], json: bool) -> Result<(), Failure> {
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
pub(crate) fn dir_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `list` table; empty if there are no processes.
pub(crate) fn list_table(processes: &[ProcessInfo]) -> String {
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
pub(crate) fn block_names(info: &ProcessInfo) -> String {
    info.blocks()
        .iter()
        .map(|b| format!("{}{}", b.name(), if b.is_tunable() { "*" } else { "" }))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `list --json` document: `{"processes": [...], "skipped": [...]}`.
pub(crate) fn list_json(found: &Discovery) -> Json {
    let processes: Vec<Json> = found.processes.iter().map(process_json).collect();
    let skipped: Vec<Json> = found
        .skipped
        .iter()
        .map(|(path, e)| json!({"path": path.to_string_lossy(), "reason": e.to_string()}))
        .collect();
    json!({"processes": processes, "skipped": skipped})
}

/// One process of `list --json`.
pub(crate) fn process_json(info: &ProcessInfo) -> Json {
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
