//! The in-memory format of a published block, shared by the target and the probe.
//!
//! ```text
//! offset 0   magic      8 bytes  "TPVMBLK\0"
//! offset 8   version    u32      BLOCK_VERSION
//! offset 12  size       u32      whole block, header included, a multiple of 8
//! offset 16  sequence   u64      seqlock: odd while a writer is inside
//! offset 24  layout     u64      hash of the field list (names, kinds, offsets, sizes)
//! offset 32  fields, each 8-byte aligned, little-endian
//! ```
//!
//! `u64`, `i64`, `f64` (IEEE-754 bits) and `bool` (0 or 1) take 8 bytes; a string field of
//! capacity `n` takes `n` rounded up to 8 bytes, UTF-8, padded with NUL bytes.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};

/// First bytes of every block.
pub(crate) const MAGIC: [u8; 8] = *b"TPVMBLK\0";
/// Version of the block format above.
pub(crate) const BLOCK_VERSION: u32 = 1;
/// Size of the block header.
pub(crate) const HEADER_LEN: usize = 32;
/// Offset of the sequence word.
pub(crate) const SEQ_OFFSET: usize = 16;
/// Largest capacity of a string field.
pub const MAX_STRING: usize = 1024;
/// Most fields in one block.
pub const MAX_FIELDS: usize = 256;
/// Longest block or field name.
pub const MAX_NAME: usize = 64;
/// Largest block, header included (18,464 bytes).
pub const MAX_BLOCK: usize = HEADER_LEN + MAX_FIELDS * 8 + 16 * MAX_STRING;

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldKind {
    /// An unsigned 64-bit integer.
    U64,
    /// A signed 64-bit integer.
    I64,
    /// A 64-bit float.
    F64,
    /// A boolean.
    Bool,
    /// UTF-8 text of at most `capacity` bytes.
    Str {
        /// Most bytes the field holds.
        capacity: usize,
    },
}

impl FieldKind {
    /// Bytes the field takes in the block.
    pub fn size(self) -> usize {
        match self {
            // Saturating: a capacity from an untrusted manifest is range-checked after this.
            FieldKind::Str { capacity } => capacity.div_ceil(8).saturating_mul(8),
            _ => 8,
        }
    }

    /// The name used in manifests and by `pvmctl`: `u64`, `i64`, `f64`, `bool`, `str`.
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::U64 => "u64",
            FieldKind::I64 => "i64",
            FieldKind::F64 => "f64",
            FieldKind::Bool => "bool",
            FieldKind::Str { .. } => "str",
        }
    }

    fn code(self) -> u8 {
        match self {
            FieldKind::U64 => 1,
            FieldKind::I64 => 2,
            FieldKind::F64 => 3,
            FieldKind::Bool => 4,
            FieldKind::Str { .. } => 5,
        }
    }

    /// Parses `text` as a value of this kind, as an operator types it: `42`, `-7`, `0.5`,
    /// `true`/`false` (or `1`/`0`), any text for strings.
    pub fn parse(self, text: &str) -> Result<Value> {
        let bad =
            |what: &str| Error::new(ErrorKind::InvalidInput, format!("{text:?} is not {what}"));
        Ok(match self {
            FieldKind::U64 => Value::U64(
                text.trim()
                    .parse()
                    .map_err(|_| bad("an unsigned 64-bit integer (u64)"))?,
            ),
            FieldKind::I64 => Value::I64(
                text.trim()
                    .parse()
                    .map_err(|_| bad("a signed 64-bit integer (i64)"))?,
            ),
            FieldKind::F64 => {
                let v: f64 = text.trim().parse().map_err(|_| bad("a number (f64)"))?;
                if !v.is_finite() {
                    // NaN and infinities are refused, typed as words or reached by overflow:
                    // a process reading a tunable expects a setting, not a poison value.
                    let why = if v.is_nan() {
                        "it is not a number (NaN)".to_owned()
                    } else if text
                        .trim()
                        .trim_start_matches(['+', '-'])
                        .starts_with(['i', 'I'])
                    {
                        "it is infinite".to_owned()
                    } else {
                        format!(
                            "it is beyond the largest f64 ({:e}) and would become infinite",
                            f64::MAX
                        )
                    };
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "{text:?} is not a finite number: {why}; f64 fields take finite values only"
                        ),
                    ));
                }
                Value::F64(v)
            }
            FieldKind::Bool => Value::Bool(match text.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(bad("a boolean (true, false, 1 or 0)")),
            }),
            FieldKind::Str { .. } => Value::Str(text.to_owned()),
        })
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldKind::Str { capacity } => write!(f, "str[{capacity}]"),
            other => f.write_str(other.name()),
        }
    }
}

/// A field's value, as read from a block or to be written into one.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// A `u64` field.
    U64(u64),
    /// An `i64` field.
    I64(i64),
    /// An `f64` field.
    F64(f64),
    /// A `bool` field.
    Bool(bool),
    /// A string field.
    Str(String),
}

impl Value {
    /// The value as a number, for metrics: booleans are 0 or 1, strings have none.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            Value::Bool(v) => Some(if v { 1.0 } else { 0.0 }),
            Value::Str(_) => None,
        }
    }

    /// Whether this value can be stored in a field of `kind`.
    pub fn fits(&self, kind: FieldKind) -> bool {
        match (self, kind) {
            (Value::U64(_), FieldKind::U64)
            | (Value::I64(_), FieldKind::I64)
            | (Value::F64(_), FieldKind::F64)
            | (Value::Bool(_), FieldKind::Bool) => true,
            (Value::Str(s), FieldKind::Str { capacity }) => s.len() <= capacity,
            _ => false,
        }
    }

    /// The bytes of this value in a field of `kind` (the caller checked [`Value::fits`]).
    pub(crate) fn encode(&self, kind: FieldKind) -> Vec<u8> {
        let mut out = match self {
            Value::U64(v) => v.to_le_bytes().to_vec(),
            Value::I64(v) => v.to_le_bytes().to_vec(),
            Value::F64(v) => v.to_bits().to_le_bytes().to_vec(),
            Value::Bool(v) => u64::from(*v).to_le_bytes().to_vec(),
            Value::Str(s) => s.as_bytes().to_vec(),
        };
        out.resize(kind.size(), 0);
        out
    }

    /// Reads a value of `kind` from its bytes in a block.
    pub(crate) fn decode(kind: FieldKind, bytes: &[u8]) -> Value {
        let word = || {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[..8]);
            u64::from_le_bytes(w)
        };
        match kind {
            FieldKind::U64 => Value::U64(word()),
            FieldKind::I64 => Value::I64(word() as i64),
            FieldKind::F64 => Value::F64(f64::from_bits(word())),
            FieldKind::Bool => Value::Bool(word() != 0),
            FieldKind::Str { capacity } => {
                let text = &bytes[..capacity.min(bytes.len())];
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                Value::Str(String::from_utf8_lossy(&text[..end]).into_owned())
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(s) => f.write_str(s),
        }
    }
}

/// What a field measures, for tools that export it: a value that goes up and down, or a
/// count that only goes up (whose rate is what one watches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Metric {
    /// A value that may go up and down (players online, a queue's length): a Prometheus
    /// gauge. The default.
    #[default]
    Gauge,
    /// A count that only goes up while the process runs (requests served, bytes sent): a
    /// Prometheus counter, named with `_total`; `pvmctl watch` shows its rate.
    Counter,
}

/// One field of a block: its name, type and place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldInfo {
    pub(crate) name: String,
    pub(crate) kind: FieldKind,
    pub(crate) offset: usize,
    pub(crate) metric: Metric,
}

impl FieldInfo {
    /// The field's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field's type.
    pub fn kind(&self) -> FieldKind {
        self.kind
    }

    /// Where the field starts, in bytes from the start of the block.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes the field takes.
    pub fn size(&self) -> usize {
        self.kind.size()
    }

    /// What the field measures (see [`BlockBuilder::counter`](super::BlockBuilder::counter)).
    pub fn metric(&self) -> Metric {
        self.metric
    }
}

/// The fields of a block, enough to read it without the target's Rust types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub(crate) fields: Vec<FieldInfo>,
    pub(crate) size: usize,
}

impl Layout {
    /// The fields, in order.
    pub fn fields(&self) -> &[FieldInfo] {
        &self.fields
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldInfo> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The size of the whole block, header included.
    pub fn block_size(&self) -> usize {
        self.size
    }

    /// A hash of the field list (FNV-1a over names, kinds, offsets and sizes), stored in the
    /// block's header so that a probe can tell a block from a different layout.
    pub(crate) fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(&(self.size as u64).to_le_bytes());
        for f in &self.fields {
            eat(f.name.as_bytes());
            eat(&[0, f.kind.code()]);
            eat(&(f.offset as u64).to_le_bytes());
            eat(&(f.size() as u64).to_le_bytes());
        }
        h
    }

    /// Checks a layout that came from outside (a manifest): every field inside the block,
    /// aligned, not overlapping the header or each other, names valid and unique.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.size < HEADER_LEN || self.size > MAX_BLOCK || !self.size.is_multiple_of(8) {
            return Err(format!(
                "block size {} is not a multiple of 8 between {HEADER_LEN} and {MAX_BLOCK}",
                self.size
            ));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(format!(
                "{} fields, more than {MAX_FIELDS}",
                self.fields.len()
            ));
        }
        let mut next = HEADER_LEN;
        for (i, f) in self.fields.iter().enumerate() {
            check_name(&f.name).map_err(|e| format!("field {i}: {e}"))?;
            if self.fields[..i].iter().any(|g| g.name == f.name) {
                return Err(format!("field name {:?} appears twice", f.name));
            }
            if let FieldKind::Str { capacity } = f.kind
                && (capacity == 0 || capacity > MAX_STRING)
            {
                return Err(format!(
                    "string field {:?} has capacity {capacity}, allowed 1..={MAX_STRING}",
                    f.name
                ));
            }
            let end = f.offset.checked_add(f.size());
            if f.offset < next || !f.offset.is_multiple_of(8) || end.is_none_or(|e| e > self.size) {
                return Err(format!(
                    "field {:?} at offset {} (size {}) is misplaced in a {}-byte block",
                    f.name,
                    f.offset,
                    f.size(),
                    self.size
                ));
            }
            next = end.unwrap_or(usize::MAX);
        }
        Ok(())
    }
}

/// Block and field names: 1 to [`MAX_NAME`] ASCII letters, digits and `_`, not starting with a
/// digit, so that they can become metric names as they are.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1 to {MAX_NAME} ASCII letters, digits or '_', not starting \
             with a digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(fields: &[(&str, FieldKind, usize)], size: usize) -> Layout {
        Layout {
            fields: fields
                .iter()
                .map(|&(name, kind, offset)| FieldInfo {
                    name: name.into(),
                    kind,
                    offset,
                    metric: Metric::Gauge,
                })
                .collect(),
            size,
        }
    }

    #[test]
    fn values_roundtrip_through_bytes() {
        let cases = [
            (Value::U64(u64::MAX), FieldKind::U64),
            (Value::I64(-5), FieldKind::I64),
            (Value::F64(0.25), FieldKind::F64),
            (Value::Bool(true), FieldKind::Bool),
            (Value::Str("héllo".into()), FieldKind::Str { capacity: 12 }),
            (Value::Str(String::new()), FieldKind::Str { capacity: 3 }),
        ];
        for (v, k) in cases {
            assert!(v.fits(k));
            let bytes = v.encode(k);
            assert_eq!(bytes.len(), k.size());
            assert_eq!(Value::decode(k, &bytes), v);
        }
        assert!(!Value::Str("toolong".into()).fits(FieldKind::Str { capacity: 3 }));
        assert!(!Value::U64(1).fits(FieldKind::I64));
    }

    #[test]
    fn parse_names_the_expected_type() {
        assert_eq!(FieldKind::U64.parse(" 10 ").unwrap(), Value::U64(10));
        assert_eq!(FieldKind::Bool.parse("0").unwrap(), Value::Bool(false));
        let e = FieldKind::U64.parse("-1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("u64"), "{e}");
        assert!(FieldKind::F64.parse("fast").is_err());
    }

    #[test]
    fn parse_refuses_floats_that_are_not_finite() {
        assert_eq!(FieldKind::F64.parse("1e308").unwrap(), Value::F64(1e308));
        assert_eq!(FieldKind::F64.parse("-0.5").unwrap(), Value::F64(-0.5));
        for (text, why) in [
            ("NaN", "NaN"),
            ("nan", "NaN"),
            ("-nan", "NaN"),
            ("inf", "infinite"),
            ("-Infinity", "infinite"),
            ("+inf", "infinite"),
            ("1e309", "beyond the largest f64"),
            ("-1e400", "beyond the largest f64"),
        ] {
            let e = FieldKind::F64.parse(text).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{text}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(why) && msg.contains(text), "{text}: {msg}");
            assert!(msg.contains("finite"), "{text}: {msg}");
        }
    }

    #[test]
    fn validate_rejects_bad_layouts() {
        let good = layout(
            &[
                ("a", FieldKind::U64, 32),
                ("s", FieldKind::Str { capacity: 5 }, 40),
            ],
            48,
        );
        good.validate().unwrap();
        assert_ne!(good.hash(), layout(&[("a", FieldKind::U64, 32)], 48).hash());
        let bad = [
            layout(&[("a", FieldKind::U64, 24)], 40), // overlaps the header
            layout(&[("a", FieldKind::U64, 36)], 48), // misaligned
            layout(&[("a", FieldKind::U64, 40)], 40), // past the end
            layout(&[("a", FieldKind::U64, 32), ("a", FieldKind::U64, 40)], 48), // twice
            layout(&[("9a", FieldKind::U64, 32)], 40), // bad name
            layout(&[("a", FieldKind::U64, 32)], 1 << 30), // huge
            layout(&[("a", FieldKind::Str { capacity: 0 }, 32)], 40),
            layout(&[("a", FieldKind::U64, 40), ("b", FieldKind::U64, 32)], 48), // overlap order
            layout(&[("a", FieldKind::U64, usize::MAX - 7)], 40), // offset + size overflows
            layout(
                &[(
                    "a",
                    FieldKind::Str {
                        capacity: usize::MAX,
                    },
                    32,
                )],
                40,
            ), // huge string
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
    }
}
