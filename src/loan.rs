//! The zero-copy lane: messages written straight into memory the receiver maps.
//!
//! With [`Config::loan_region`](crate::Config::loan_region) set on both sides, each side
//! creates a sealed `memfd` of that size at the handshake, maps it read-write, and passes its
//! descriptor to the peer (`SCM_RIGHTS`), which maps it read-only. [`Sender::loan`] carves a
//! [`LoanBuf`] out of that region; the application writes the message into it and sends the
//! frozen `Bytes` as any other. The transport recognises the address, and instead of a
//! descriptor to pull it sends the message's offset: the receiver hands its application a
//! `Bytes` that points into its mapping. When the application drops that `Bytes`, the offset
//! goes back to the sender (a RELEASE frame), and only then can the sender lend that memory
//! again. The producer's write is the only copy.
//!
//! The memory stays the sender's: a hostile sender can change a message after it was
//! delivered (a pull gives the receiver a private copy instead). That is why the lane is
//! opt-in on both sides. What a hostile sender cannot do is make the receiver fault: the
//! region's file must be sealed against shrinking and have the announced size before it is
//! mapped, and every offset is checked against the region's bounds.
//!
//! [`Sender::loan`]: crate::Sender::loan

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;

use bytes::{Bytes, BytesMut};

use crate::sys;

/// Loans start at multiples of this many bytes (a cache line), and take at least as much.
const ALIGN: usize = 64;

/// Region sizes are rounded up to whole pages.
const PAGE: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A shared mapping of a region's file, unmapped when dropped.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory that lives as long as this value; who may write where
// is settled by the region that owns it (a loan is written only through its one `LoanBuf`;
// the file is sealed with F_SEAL_FUTURE_WRITE before the peer gets it, so no other process can
// write it).
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The address of the byte at `offset`.
    fn at(&self, offset: usize) -> *mut u8 {
        // SAFETY (of the arithmetic): callers pass offsets within the mapping.
        self.ptr.as_ptr().wrapping_add(offset)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are one mapping made by `map_shared`; every slice into it holds
        // (through an `Arc` of its region) the value that owns this mapping, so none is left.
        unsafe { sys::unmap(self.ptr, self.len) };
    }
}

/// Free extents of a region, by offset.
#[derive(Debug)]
struct FreeList {
    extents: BTreeMap<usize, usize>,
}

impl FreeList {
    /// First fit: the lowest free extent that holds `len` bytes (keeps the memory in use, and
    /// warm in the caches, as small as possible).
    fn alloc(&mut self, len: usize) -> Option<usize> {
        let (&offset, &extent) = self.extents.iter().find(|&(_, &l)| l >= len)?;
        self.extents.remove(&offset);
        if extent > len {
            self.extents.insert(offset + len, extent - len);
        }
        Some(offset)
    }

    /// Returns `len` bytes at `offset`, merged with free neighbours.
    fn free(&mut self, offset: usize, len: usize) {
        let (mut start, mut total) = (offset, len);
        if let Some((&prev, &prev_len)) = self.extents.range(..offset).next_back()
            && prev + prev_len == offset
        {
            self.extents.remove(&prev);
            start = prev;
            total += prev_len;
        }
        if let Some(next_len) = self.extents.remove(&(offset + len)) {
            total += next_len;
        }
        self.extents.insert(start, total);
    }
}

/// This side's loan region: loans are carved out of it, and the peer maps it read-only.
#[derive(Debug)]
pub(crate) struct LendRegion {
    map: Mapping,
    free: Mutex<FreeList>,
}

impl LendRegion {
    /// Creates a region of at least `size` bytes; also returns its file, to pass to the peer.
    pub(crate) fn create(size: usize) -> std::io::Result<(Arc<LendRegion>, OwnedFd)> {
        let size = size
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| std::io::Error::from_raw_os_error(nix::libc::EFBIG))?;
        let fd = sys::loan_memfd(size)?;
        let ptr = sys::map_shared(fd.as_fd(), size, true)?;
        let map = Mapping { ptr, len: size };
        // Only now: this mapping stays writable, the peer's cannot be.
        sys::seal_loan_file(fd.as_fd())?;
        let region = LendRegion {
            map,
            free: Mutex::new(FreeList {
                extents: BTreeMap::from([(0, size)]),
            }),
        };
        Ok((Arc::new(region), fd))
    }

    pub(crate) fn size(&self) -> usize {
        self.map.len
    }

    /// A loan of `len` bytes, if the region has room.
    fn alloc(self: &Arc<Self>, len: usize) -> Option<Slot> {
        let cap = len.max(1).checked_next_multiple_of(ALIGN)?;
        let offset = lock(&self.free).alloc(cap)?;
        Some(Slot {
            region: self.clone(),
            offset,
            len,
            cap,
        })
    }

    /// A loan of `len` bytes from this region, if it has room.
    pub(crate) fn try_loan(self: &Arc<Self>, len: usize) -> Option<LoanBuf> {
        self.alloc(len).map(|slot| LoanBuf {
            inner: Inner::Shared(slot),
        })
    }

    /// Where `data` starts in this region, if it lies wholly inside it.
    pub(crate) fn offset_of(&self, data: &[u8]) -> Option<u64> {
        let base = self.map.ptr.as_ptr() as usize;
        let start = (data.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(data.len())?;
        (!data.is_empty() && end <= self.map.len).then_some(start as u64)
    }
}

/// A loan: `len` bytes (of `cap` reserved) at `offset` of a region, given back when dropped.
struct Slot {
    region: Arc<LendRegion>,
    offset: usize,
    len: usize,
    cap: usize,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `offset + len` is within the mapping (the free list only hands out extents
        // inside it), which lives as long as `self.region`; this slot is the only user of
        // those bytes until it is dropped.
        unsafe { std::slice::from_raw_parts(self.region.map.at(self.offset), self.len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.region.free).free(self.offset, self.cap);
    }
}

/// A writable buffer for one message, from [`Sender::loan`](crate::Sender::loan) or
/// [`Connection::loan`](crate::Connection::loan).
///
/// Write the message into it (it dereferences to `[u8]`, `len` bytes long), then
/// [`freeze`](LoanBuf::freeze) it into `Bytes` and send those through the same connection.
/// On a connection whose [zero-copy lane](crate::Connection::zero_copy) is open, the buffer is
/// in memory the receiver maps: the message is not copied again, the receiver reads it in
/// place. Otherwise (the lane is off, the region is full, or the message is small enough to
/// travel inline) it is ordinary heap memory and travels as any other message does. A loan's
/// `Bytes` sent on another connection are pulled from the region like any other memory; they
/// stay in the region, which the first connection's peer can read.
///
/// The bytes start zeroed the first time a part of the region is used; a reused part holds
/// whatever an earlier message left there, so write every byte you send (or
/// [`truncate`](LoanBuf::truncate) to what you wrote).
pub struct LoanBuf {
    inner: Inner,
}

enum Inner {
    Shared(Slot),
    Heap(BytesMut),
}

impl LoanBuf {
    pub(crate) fn heap(len: usize) -> LoanBuf {
        LoanBuf {
            inner: Inner::Heap(BytesMut::zeroed(len)),
        }
    }

    /// Whether the buffer is in the connection's loan region (the message will travel
    /// zero-copy), rather than on the heap.
    pub fn is_shared(&self) -> bool {
        matches!(self.inner, Inner::Shared(_))
    }

    /// Length of the buffer in bytes.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shortens the buffer to `len` bytes (no effect if it is not longer).
    pub fn truncate(&mut self, len: usize) {
        match &mut self.inner {
            Inner::Shared(slot) => slot.len = slot.len.min(len),
            Inner::Heap(b) => b.truncate(len),
        }
    }

    /// The message, ready to send. The loan goes back to the region when these `Bytes` (and
    /// every clone and slice of them) are dropped and the receiver's application has dropped
    /// its copy.
    pub fn freeze(self) -> Bytes {
        match self.inner {
            Inner::Shared(slot) => Bytes::from_owner(slot),
            Inner::Heap(b) => b.freeze(),
        }
    }
}

impl Deref for LoanBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            Inner::Shared(slot) => slot.as_ref(),
            Inner::Heap(b) => b,
        }
    }
}

impl DerefMut for LoanBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            Inner::Shared(slot) => {
                // SAFETY: as in `Slot::as_ref`; the slot is borrowed mutably, so this is the
                // only reference to its bytes. The file is sealed against writes by anyone but
                // this process's own mapping (F_SEAL_FUTURE_WRITE), so the peer cannot touch
                // them.
                unsafe { std::slice::from_raw_parts_mut(slot.region.map.at(slot.offset), slot.len) }
            }
            Inner::Heap(b) => b,
        }
    }
}

impl AsRef<[u8]> for LoanBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for LoanBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for LoanBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoanBuf")
            .field("len", &self.len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// The peer's loan region, mapped read-only: received loaned messages point into it.
pub(crate) struct PeerRegion {
    map: Mapping,
    /// Offsets of messages the application dropped, to tell the peer.
    released: Mutex<Vec<u64>>,
    /// How many offsets `released` holds, and how many bytes their messages had.
    pending: AtomicUsize,
    pending_bytes: AtomicUsize,
    /// Woken when an offset is added.
    on_release: OnceLock<Waker>,
}

impl fmt::Debug for PeerRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerRegion")
            .field("size", &self.map.len)
            .finish_non_exhaustive()
    }
}

impl PeerRegion {
    /// Checks the peer's region file (`size` bytes, sealed against shrinking) and maps it
    /// read-only; the reason for a refusal otherwise.
    pub(crate) fn map(fd: &OwnedFd, size: u64) -> Result<Arc<PeerRegion>, String> {
        let size = usize::try_from(size).map_err(|_| format!("{size} bytes do not fit"))?;
        if size == 0 {
            return Err("it is empty".into());
        }
        sys::check_loan_file(fd.as_fd(), size)?;
        let ptr = sys::map_shared(fd.as_fd(), size, false)
            .map_err(|e| format!("mapping {size} bytes failed: {e}"))?;
        Ok(Arc::new(PeerRegion {
            map: Mapping { ptr, len: size },
            released: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            on_release: OnceLock::new(),
        }))
    }

    /// Sets what is woken when the application drops a loaned message.
    pub(crate) fn set_waker(&self, waker: Waker) {
        let _ = self.on_release.set(waker);
    }

    /// The message of `len` bytes at `offset`, or `None` if it is empty or not wholly inside
    /// the region.
    pub(crate) fn message(self: &Arc<Self>, offset: u64, len: u64) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.map.len as u64 {
            return None;
        }
        Some(Bytes::from_owner(Borrowed {
            region: self.clone(),
            offset: offset as usize,
            len: len as usize,
        }))
    }

    /// The offsets released so far.
    pub(crate) fn take_released(&self) -> Vec<u64> {
        let mut released = lock(&self.released);
        self.pending.store(0, Ordering::Relaxed);
        self.pending_bytes.store(0, Ordering::Relaxed);
        std::mem::take(&mut *released)
    }

    /// How many offsets were released and not taken yet, and the bytes of their messages (a
    /// hint: it may be stale).
    pub(crate) fn pending(&self) -> (usize, usize) {
        (
            self.pending.load(Ordering::Relaxed),
            self.pending_bytes.load(Ordering::Relaxed),
        )
    }

    fn release(&self, offset: usize, len: usize) {
        {
            let mut released = lock(&self.released);
            released.push(offset as u64);
            self.pending.store(released.len(), Ordering::Relaxed);
            self.pending_bytes.fetch_add(len, Ordering::Relaxed);
        }
        if let Some(waker) = self.on_release.get() {
            waker.wake_by_ref();
        }
    }
}

/// A received loaned message: a window into the peer's region, released when dropped.
struct Borrowed {
    region: Arc<PeerRegion>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for Borrowed {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `offset + len` was checked to be within the mapping, which lives as long as
        // `self.region`. The mapping is read-only here; the peer does not write a loan until
        // it is released (a peer that does anyway changes bytes, never their validity: any
        // bit pattern is a valid `u8`, and the sealed file cannot shrink under the mapping).
        unsafe { std::slice::from_raw_parts(self.region.map.at(self.offset), self.len) }
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        self.region.release(self.offset, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_list_merges_neighbours_and_fits_first() {
        let mut f = FreeList {
            extents: BTreeMap::from([(0, 1024)]),
        };
        let a = f.alloc(256).unwrap();
        let b = f.alloc(256).unwrap();
        let c = f.alloc(256).unwrap();
        assert_eq!((a, b, c), (0, 256, 512));
        assert_eq!(f.alloc(512), None);
        f.free(b, 256);
        // The hole at 256 is the first fit for 128 bytes.
        assert_eq!(f.alloc(128), Some(256));
        f.free(256, 128);
        f.free(a, 256);
        f.free(c, 256);
        assert_eq!(f.extents, BTreeMap::from([(0, 1024)]));
    }

    #[test]
    fn loans_come_from_the_region_until_it_is_full() {
        let (region, _fd) = LendRegion::create(8192).unwrap();
        let mut a = region.try_loan(5000).unwrap();
        assert!(a.is_shared());
        a.copy_from_slice(&[7; 5000]);
        assert!(region.try_loan(5000).is_none(), "no room left");
        let b = LoanBuf::heap(5000);
        let frozen = a.freeze();
        assert_eq!(region.offset_of(&frozen), Some(0));
        assert_eq!(region.offset_of(&frozen[10..20]), Some(10));
        assert_eq!(region.offset_of(&b), None);
        drop(frozen);
        assert!(region.try_loan(8192).is_some(), "freed on drop");
    }

    #[test]
    fn the_peer_cannot_write_a_lent_region() {
        let (region, fd) = LendRegion::create(8192).unwrap();
        // A writable mapping or a write through the descriptor the peer gets is refused ...
        let err = sys::map_shared(fd.as_fd(), 8192, true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EPERM), "{err}");
        let file = std::fs::File::from(fd.try_clone().unwrap());
        let err = std::os::unix::fs::FileExt::write_at(&file, b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::EPERM), "{err}");
        // ... while this side's own mapping stays writable.
        let mut loan = region.try_loan(64).unwrap();
        loan[0] = 9;
        assert!(
            PeerRegion::map(&fd, 8192).is_ok(),
            "a read-only mapping is fine"
        );
    }

    #[test]
    fn a_peer_region_must_be_sealed_and_of_the_announced_size() {
        let (_region, fd) = LendRegion::create(8192).unwrap();
        assert!(PeerRegion::map(&fd, 8192).is_ok());
        let err = PeerRegion::map(&fd, 4096).unwrap_err();
        assert!(err.contains("8192"), "{err}");
        let file: OwnedFd = std::fs::File::open("/proc/self/exe").unwrap().into();
        let err = PeerRegion::map(&file, 4096).unwrap_err();
        assert!(err.contains("seal"), "{err}");
        let (region, fd) = LendRegion::create(4096).unwrap();
        let peer = PeerRegion::map(&fd, 4096).unwrap();
        let mut loan = region.try_loan(100).unwrap();
        loan[..3].copy_from_slice(b"abc");
        let msg = peer.message(0, 3).unwrap();
        assert_eq!(&msg[..], b"abc");
        assert!(peer.message(4000, 200).is_none());
        assert!(peer.message(u64::MAX, 2).is_none());
        assert!(peer.message(0, 0).is_none());
        drop(msg);
        assert_eq!(peer.take_released(), [0]);
    }
}
