//! `pvmctl set`: writes a tunable field.

use super::*;

/// `pvmctl set`.
pub(crate) fn set(dirs: &[PathBuf], pid: i32, a: &Assignment) -> Result<(), Failure> {
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
pub(crate) fn tunable_field(
    info: &ProcessInfo,
    block: &str,
    field: &str,
) -> Result<FieldKind, Failure> {
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
