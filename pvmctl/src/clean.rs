//! `pvmctl clean`: manifests of processes that died.

use super::*;

/// `pvmctl clean`.
pub(crate) fn clean(dirs: &[PathBuf]) -> Result<(), Failure> {
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
