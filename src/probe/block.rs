//! The target side: blocks of typed fields in this process's memory.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::layout::{
    BLOCK_VERSION, FieldInfo, FieldKind, HEADER_LEN, Layout, MAGIC, MAX_BLOCK, MAX_FIELDS,
    MAX_STRING, Metric, SEQ_OFFSET, Value, check_name,
};
use crate::error::{Error, ErrorKind, Result};

/// Attempts of a consistent read before it gives up.
pub(crate) const READ_ATTEMPTS: u32 = 1000;

static NEXT_BLOCK_ID: AtomicU64 = AtomicU64::new(1);

mod sealed {
    pub trait Sealed {}
}

/// A type a field can hold: `u64`, `i64`, `f64`, `bool`, or [`Text`].
pub trait FieldType: sealed::Sealed {
    /// What reading the field gives.
    type Output;
    #[doc(hidden)]
    fn from_value(value: Value) -> Self::Output;
}

/// The type of a string field: set with [`Writer::set_str`], read as a `String`.
#[derive(Debug, Clone, Copy)]
pub struct Text(());

macro_rules! scalar {
    ($($t:ty => $variant:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl FieldType for $t {
            type Output = $t;
            fn from_value(value: Value) -> $t {
                match value {
                    Value::$variant(v) => v,
                    _ => unreachable!("the field's kind fixes the value's variant"),
                }
            }
        }
    )*};
}
scalar!(u64 => U64, i64 => I64, f64 => F64, bool => Bool);

impl sealed::Sealed for Text {}
impl FieldType for Text {
    type Output = String;
    fn from_value(value: Value) -> String {
        match value {
            Value::Str(s) => s,
            _ => unreachable!("the field's kind fixes the value's variant"),
        }
    }
}

/// A typed handle to one field of one block, returned by [`BlockBuilder`].
///
/// Handles are small and `Copy`. A handle belongs to the block it was declared on; using it
/// with another block panics.
pub struct Field<T> {
    block: u64,
    index: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Field<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Field<T> {}

impl<T> fmt::Debug for Field<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("block", &self.block)
            .field("index", &self.index)
            .finish()
    }
}

/// Declares a block: its name, its fields in order, and whether it is tunable.
///
/// ```
/// use tokio_pvm::probe::BlockBuilder;
///
/// let mut b = BlockBuilder::new("stats");
/// let players = b.u64("players");
/// let tick_ms = b.f64("tick_ms");
/// let map = b.string("map", 32);
/// let mut stats = b.build()?;
/// stats.update(|w| {
///     w.set(players, 12);
///     w.set(tick_ms, 0.8);
///     w.set_str(map, "harbour");
/// });
/// assert_eq!(stats.read()?.get(players), 12);
/// # Ok::<(), tokio_pvm::Error>(())
/// ```
#[derive(Debug)]
pub struct BlockBuilder {
    id: u64,
    name: String,
    tunable: bool,
    fields: Vec<FieldInfo>,
    next: usize,
    error: Option<String>,
}

impl BlockBuilder {
    /// Starts a block called `name` (ASCII letters, digits and `_`; it becomes part of metric
    /// names). An invalid name is reported by [`BlockBuilder::build`].
    pub fn new(name: &str) -> BlockBuilder {
        BlockBuilder {
            id: NEXT_BLOCK_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            tunable: false,
            fields: Vec::new(),
            next: HEADER_LEN,
            error: check_name(name).err(),
        }
    }

    /// Marks the block tunable: tools may write its fields from outside
    /// ([`Probe::set`](super::Probe::set)), and the process reads them with
    /// [`Block::read`].
    pub fn tunable(mut self) -> BlockBuilder {
        self.tunable = true;
        self
    }

    fn add<T>(&mut self, name: &str, kind: FieldKind) -> Field<T> {
        let index = self.fields.len();
        if self.error.is_none() {
            if let Err(e) = check_name(name) {
                self.error = Some(e);
            } else if self.fields.iter().any(|f| f.name == name) {
                self.error = Some(format!("field {name:?} is declared twice"));
            } else if index >= MAX_FIELDS {
                self.error = Some(format!("more than {MAX_FIELDS} fields"));
            }
        }
        self.fields.push(FieldInfo {
            name: name.to_owned(),
            kind,
            offset: self.next,
            metric: Metric::Gauge,
        });
        self.next += kind.size();
        Field {
            block: self.id,
            index,
            _type: PhantomData,
        }
    }

    /// Declares a `u64` field.
    pub fn u64(&mut self, name: &str) -> Field<u64> {
        self.add(name, FieldKind::U64)
    }

    /// Declares a `u64` field that counts something and only goes up while the process runs
    /// (requests served, bytes sent). It is written like any `u64` field; tools export it as
    /// a Prometheus counter (named with `_total`) and `pvmctl watch` shows its rate.
    pub fn counter(&mut self, name: &str) -> Field<u64> {
        let field = self.add(name, FieldKind::U64);
        if let Some(last) = self.fields.last_mut() {
            last.metric = Metric::Counter;
        }
        field
    }

    /// Declares an `i64` field.
    pub fn i64(&mut self, name: &str) -> Field<i64> {
        self.add(name, FieldKind::I64)
    }

    /// Declares an `f64` field.
    pub fn f64(&mut self, name: &str) -> Field<f64> {
        self.add(name, FieldKind::F64)
    }

    /// Declares a `bool` field.
    pub fn bool(&mut self, name: &str) -> Field<bool> {
        self.add(name, FieldKind::Bool)
    }

    /// Declares a string field of at most `capacity` bytes of UTF-8 (1 to
    /// [`MAX_STRING`](super::MAX_STRING)).
    pub fn string(&mut self, name: &str, capacity: usize) -> Field<Text> {
        if (capacity == 0 || capacity > MAX_STRING) && self.error.is_none() {
            self.error = Some(format!(
                "string field {name:?} has capacity {capacity}, allowed 1..={MAX_STRING}"
            ));
        }
        self.add(
            name,
            FieldKind::Str {
                capacity: capacity.clamp(1, MAX_STRING),
            },
        )
    }

    /// Allocates the block, every field zero (empty strings, `false`).
    ///
    /// Fails with [`ErrorKind::InvalidInput`] on an invalid or repeated name or string
    /// capacity, naming it, or if the block would be larger than
    /// [`MAX_BLOCK`](super::MAX_BLOCK) bytes (header included).
    pub fn build(self) -> Result<Block> {
        if let Some(e) = self.error {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("block {:?}: {e}", self.name),
            ));
        }
        if self.next > MAX_BLOCK {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "block {:?} takes {} bytes, more than the {MAX_BLOCK} a probe accepts; \
                     split it into several blocks",
                    self.name, self.next
                ),
            ));
        }
        let layout = Layout {
            fields: self.fields,
            size: self.next,
        };
        let words: Box<[AtomicU64]> = (0..layout.size / 8).map(|_| AtomicU64::new(0)).collect();
        let mut version_size = [0u8; 8];
        version_size[..4].copy_from_slice(&BLOCK_VERSION.to_le_bytes());
        version_size[4..].copy_from_slice(&(layout.size as u32).to_le_bytes());
        words[0].store(u64::from_le_bytes(MAGIC), Ordering::Relaxed);
        words[1].store(u64::from_le_bytes(version_size), Ordering::Relaxed);
        words[3].store(layout.hash(), Ordering::Relaxed);
        Ok(Block {
            inner: Arc::new(BlockMemory {
                id: self.id,
                name: self.name.into(),
                tunable: self.tunable,
                layout: Arc::new(layout),
                words,
                lock: Mutex::new(None),
            }),
        })
    }
}

/// The memory of a block and what describes it. Shared by the [`Block`] handle and the
/// publication that announced it, so the memory outlives both.
#[derive(Debug)]
pub(crate) struct BlockMemory {
    id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) tunable: bool,
    pub(crate) layout: Arc<Layout>,
    /// The block, as words: every access is atomic, because tools write tunable blocks from
    /// outside the process.
    words: Box<[AtomicU64]>,
    /// While published: the manifest, locked around in-process writes to a tunable block.
    pub(crate) lock: Mutex<Option<std::fs::File>>,
}

impl BlockMemory {
    /// Where the block starts in this process's memory.
    pub(crate) fn address(&self) -> u64 {
        self.words.as_ptr() as usize as u64
    }

    fn seq(&self) -> &AtomicU64 {
        &self.words[SEQ_OFFSET / 8]
    }

    /// One seqlock write: the sequence word odd, the fields, the sequence word even.
    fn write<R>(&self, f: impl FnOnce(&mut Writer<'_>) -> R) -> R {
        let seq = self.seq();
        let now = seq.load(Ordering::Relaxed);
        // Odd means an outside writer stopped half-way; stay odd while this update runs.
        let busy = now | 1;
        seq.store(busy, Ordering::Relaxed);
        fence(Ordering::Release);
        let out = f(&mut Writer { block: self });
        seq.store(busy.wrapping_add(1), Ordering::Release);
        out
    }
}

/// A published (or publishable) block of typed fields, owned by the process that updates it.
///
/// Updating ([`Block::update`], [`Block::set`]) is a few plain memory writes framed by a
/// sequence counter (a seqlock): no system call, no lock that a reader could hold, so a probe
/// that stops half-way through a read never stalls the process. (A published *tunable*
/// block is the exception: its updates take the lock tools write under; see
/// [`Block::update`].) Readers outside the process
/// see only whole updates.
///
/// A block is not `Clone`: one owner writes it. Share it behind a `Mutex` if several tasks
/// update it.
#[derive(Debug)]
pub struct Block {
    pub(crate) inner: Arc<BlockMemory>,
}

/// Writes fields inside one [`Block::update`].
#[derive(Debug)]
pub struct Writer<'a> {
    block: &'a BlockMemory,
}

impl Writer<'_> {
    fn info<T>(&self, field: Field<T>) -> &FieldInfo {
        assert_eq!(
            field.block, self.block.id,
            "a field handle of another block was used with block {:?}",
            self.block.name
        );
        &self.block.layout.fields[field.index]
    }

    fn store(&self, offset: usize, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.block.words[offset / 8 + i].store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
    }

    /// Sets a `u64`, `i64`, `f64` or `bool` field.
    ///
    /// # Panics
    ///
    /// If `field` was declared on another block.
    pub fn set<T: Scalar>(&mut self, field: Field<T>, value: T) {
        let offset = self.info(field).offset;
        self.block.words[offset / 8].store(value.to_word(), Ordering::Relaxed);
    }

    /// Sets a string field; text longer than the field's capacity is cut at the last
    /// character boundary that fits.
    ///
    /// # Panics
    ///
    /// If `field` was declared on another block.
    pub fn set_str(&mut self, field: Field<Text>, text: &str) {
        let info = self.info(field);
        let (offset, kind) = (info.offset, info.kind);
        let FieldKind::Str { capacity } = kind else {
            unreachable!("Field<Text> is declared by BlockBuilder::string")
        };
        let mut end = text.len().min(capacity);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = text.as_bytes()[..end].to_vec();
        bytes.resize(kind.size(), 0);
        self.store(offset, &bytes);
    }
}

/// The plain types a field can hold, stored as one 64-bit word.
pub trait Scalar: FieldType + Copy + sealed::Sealed {
    #[doc(hidden)]
    fn to_word(self) -> u64;
}

impl Scalar for u64 {
    fn to_word(self) -> u64 {
        self
    }
}

impl Scalar for i64 {
    fn to_word(self) -> u64 {
        self as u64
    }
}

impl Scalar for f64 {
    fn to_word(self) -> u64 {
        self.to_bits()
    }
}

impl Scalar for bool {
    fn to_word(self) -> u64 {
        u64::from(self)
    }
}

impl Block {
    /// The block's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether tools may write the block from outside.
    pub fn is_tunable(&self) -> bool {
        self.inner.tunable
    }

    /// The block's fields.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Changes fields as one update: readers see all of the changes or none.
    ///
    /// For an ordinary block this makes no system call and never waits. For a tunable block
    /// that is published, the update also takes the lock that outside writers take (`flock`
    /// on the manifest, two system calls), so that the two never interleave: it waits while
    /// a tool is writing (microseconds). If a tool holds the lock for more than 5 s (one
    /// stopped in the middle of a write), the update goes ahead without it and logs a
    /// warning; use [`Block::try_update`] to never wait.
    pub fn update<R>(&mut self, f: impl FnOnce(&mut Writer<'_>) -> R) -> R {
        let block = &*self.inner;
        if !block.tunable {
            return block.write(f);
        }
        let manifest = block.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let _lock = match manifest.as_ref() {
            Some(file) => match super::lock::lock_exclusive(file) {
                Ok(lock) => Some(lock),
                Err(e) => {
                    tracing::warn!(block = %block.name, error = %e, "updating a tunable block without the writers' lock");
                    None
                }
            },
            _ => None,
        };
        block.write(f)
    }

    /// Like [`Block::update`], but never waits: for a published tunable block whose lock a
    /// tool holds at this moment, it fails with [`ErrorKind::Timeout`] and changes nothing.
    pub fn try_update<R>(&mut self, f: impl FnOnce(&mut Writer<'_>) -> R) -> Result<R> {
        let block = &*self.inner;
        if !block.tunable {
            return Ok(block.write(f));
        }
        let manifest = block.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let _lock = match manifest.as_ref() {
            Some(file) => Some(super::lock::lock_exclusive_within(file, Duration::ZERO)?),
            None => None,
        };
        Ok(block.write(f))
    }

    /// Sets one field (an [`update`](Block::update) of one field).
    ///
    /// # Panics
    ///
    /// If `field` was declared on another block.
    pub fn set<T: Scalar>(&mut self, field: Field<T>, value: T) {
        self.update(|w| w.set(field, value));
    }

    /// A consistent copy of the block, as the process sees it now: for a tunable block, the
    /// values tools last wrote.
    ///
    /// Fails with [`ErrorKind::Inconsistent`] if a writer kept the block busy through every
    /// one of a bounded number of attempts (for example a tool that died half-way through a
    /// write; the next write repairs that).
    pub fn read(&self) -> Result<Snapshot> {
        let block = &*self.inner;
        let seq = block.seq();
        for attempt in 0..READ_ATTEMPTS {
            let before = seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let mut data = Vec::with_capacity(block.layout.size);
                for w in block.words.iter() {
                    data.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
                fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == before {
                    return Ok(Snapshot {
                        origin: block.id,
                        block: block.name.clone(),
                        sequence: before,
                        layout: block.layout.clone(),
                        data,
                        tunable: block.tunable,
                    });
                }
            }
            if attempt > 16 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Err(Error::new(
            ErrorKind::Inconsistent,
            format!(
                "block {:?} stayed busy through {READ_ATTEMPTS} read attempts",
                block.name
            ),
        ))
    }

    /// The block's sequence counter: it moves on with every update, from inside or outside.
    pub fn sequence(&self) -> u64 {
        self.inner.seq().load(Ordering::Acquire)
    }

    /// Whether the block was written since `snapshot` was taken: the cheap way for a process to
    /// notice that a tool changed a tunable.
    pub fn changed_since(&self, snapshot: &Snapshot) -> bool {
        self.sequence() != snapshot.sequence
    }
}

/// A consistent copy of a block, taken in the process ([`Block::read`]) or by a probe
/// ([`Probe::read`](super::Probe::read)).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The in-process block it was read from (`0`: read by a probe, from another process).
    pub(crate) origin: u64,
    pub(crate) block: Arc<str>,
    pub(crate) sequence: u64,
    pub(crate) layout: Arc<Layout>,
    pub(crate) data: Vec<u8>,
    pub(crate) tunable: bool,
}

impl Snapshot {
    /// The block's name.
    pub fn block(&self) -> &str {
        &self.block
    }

    /// Whether the block is tunable.
    pub fn is_tunable(&self) -> bool {
        self.tunable
    }

    /// The sequence counter the copy was taken at.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The block's fields.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn value_of(&self, info: &FieldInfo) -> Value {
        Value::decode(
            info.kind,
            &self.data[info.offset..info.offset + info.size()],
        )
    }

    /// A field's value, typed, from the handle the block was declared with.
    ///
    /// # Panics
    ///
    /// If `field` was declared on another block (for a snapshot taken with [`Block::read`]),
    /// or, for a snapshot a probe took, if the snapshot has no field of that type at the
    /// handle's position. A probe's snapshot is looked up by position: use handles only with
    /// snapshots of the same program's blocks, or [`Snapshot::value`] by name.
    pub fn get<T: FieldType>(&self, field: Field<T>) -> T::Output {
        assert!(
            self.origin == 0 || self.origin == field.block,
            "a field handle of another block was used with a snapshot of block {:?}",
            self.block
        );
        let info = &self.layout.fields[field.index];
        T::from_value(self.value_of(info))
    }

    /// A field's value by name, for readers without the target's types.
    pub fn value(&self, name: &str) -> Option<Value> {
        self.layout.field(name).map(|f| self.value_of(f))
    }

    /// Every field with its value, in order.
    pub fn values(&self) -> impl Iterator<Item = (&str, Value)> + '_ {
        self.layout
            .fields
            .iter()
            .map(|f| (f.name.as_str(), self.value_of(f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_and_read_in_process() {
        let mut b = BlockBuilder::new("t");
        let n = b.u64("n");
        let x = b.i64("x");
        let on = b.bool("on");
        let s = b.string("s", 5);
        let mut block = b.build().unwrap();
        let first = block.read().unwrap();
        assert_eq!(first.get(n), 0);
        assert_eq!(first.get(s), "");
        block.update(|w| {
            w.set(n, 7);
            w.set(x, -3);
            w.set(on, true);
            w.set_str(s, "héllo!"); // 7 bytes: cut to "héll" (5 bytes)
        });
        assert!(block.changed_since(&first));
        let snap = block.read().unwrap();
        assert_eq!(snap.sequence() % 2, 0);
        assert_eq!((snap.get(n), snap.get(x), snap.get(on)), (7, -3, true));
        assert_eq!(snap.get(s), "héll");
        assert_eq!(snap.value("n"), Some(Value::U64(7)));
        assert_eq!(snap.values().count(), 4);
        assert!(!block.changed_since(&snap));
    }

    #[test]
    fn builder_reports_bad_declarations() {
        let mut b = BlockBuilder::new("t");
        b.u64("a");
        b.u64("a");
        let e = b.build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("twice"), "{e}");
        assert!(BlockBuilder::new("bad name").build().is_err());
        let mut b = BlockBuilder::new("t");
        b.string("s", 0);
        assert!(b.build().is_err());
    }

    #[test]
    #[should_panic(expected = "another block")]
    fn foreign_field_handles_panic_on_snapshots_too() {
        let mut a = BlockBuilder::new("a");
        let fa = a.u64("x");
        let _a = a.build().unwrap();
        let mut b = BlockBuilder::new("b");
        b.u64("x");
        let b = b.build().unwrap();
        let _ = b.read().unwrap().get(fa);
    }

    #[test]
    fn blocks_larger_than_a_probe_accepts_are_refused() {
        let mut b = BlockBuilder::new("big");
        for i in 0..20 {
            b.string(&format!("s{i}"), MAX_STRING);
        }
        let e = b.build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("split it"), "{e}");
    }

    #[test]
    #[should_panic(expected = "another block")]
    fn foreign_field_handles_panic() {
        let mut a = BlockBuilder::new("a");
        let fa = a.u64("x");
        let _a = a.build().unwrap();
        let mut b = BlockBuilder::new("b").build().unwrap();
        b.set(fa, 1);
    }
}
