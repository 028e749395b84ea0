//! `pvmctl dump`: every field of one process, once.

use super::*;

/// `pvmctl dump`.
pub(crate) fn dump(dirs: &[PathBuf], pid: i32, format: Format) -> Result<(), Failure> {
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
pub(crate) fn dump_table(snapshots: &[Snapshot]) -> String {
    let header = ["FIELD", "KIND", "VALUE"].map(str::to_owned).to_vec();
    let rows: Vec<Vec<String>> = std::iter::once(header)
        .chain(field_rows(snapshots))
        .collect();
    columns(&rows, "")
}

/// The `dump --format json` document.
pub(crate) fn dump_json(info: &ProcessInfo, snapshots: &[Snapshot]) -> Json {
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
