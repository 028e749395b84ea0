//! Parsing message sizes and taking medians: shared by `examples/bench` and `benches/peers`
//! (included with `#[path]`).

/// A size in bytes, or with a unit (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, binary), of at least
/// `min` bytes; `what_min` says why in the error.
pub(crate) fn parse_size(text: &str, min: usize, what_min: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("bad size {text:?}")),
    };
    let n: usize = digits.parse().map_err(|_| format!("bad size {text:?}"))?;
    match n.checked_mul(unit) {
        Some(size) if size < min => Err(format!("size {text:?}: {what_min}")),
        Some(size) => Ok(size),
        None => Err(format!("size {text:?} is too large")),
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}
