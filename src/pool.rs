//! Reusable receive buffers.
//!
//! A pull into fresh memory pays a page fault per 4 KiB page (3-5x the cost of the copy
//! itself). Large receive buffers are therefore recycled: a message is handed to the
//! application as a `Bytes` that owns a pooled buffer, and when the application drops the last
//! reference the buffer goes back to its connection's pool, pages still mapped. Buffers come
//! in power-of-two size classes from [`MIN_POOLED`] up; smaller ones come from the allocator,
//! which recycles small blocks without faults on its own.
//!
//! Idle buffers are capped twice: per connection ([`Config::buffer_pool`]) and for the whole
//! process ([`set_process_buffer_pool`]), so that many idle connections cannot pin memory
//! (a peer can make a connection keep one buffer of every size class for almost nothing).
//!
//! [`Config::buffer_pool`]: crate::Config::buffer_pool

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

/// Smallest buffer worth pooling.
pub(crate) const MIN_POOLED: usize = 64 << 10;

/// Default cap on the idle receive buffers of all connections of a process: 64 MiB.
pub const DEFAULT_PROCESS_BUFFER_POOL: usize = 64 << 20;

/// Idle bytes counted against a cap shared by many pools.
#[derive(Debug)]
struct Budget {
    idle: AtomicUsize,
    limit: AtomicUsize,
}

impl Budget {
    /// Counts `size` more idle bytes; false (and nothing counted) if they do not fit.
    fn reserve(&self, size: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |idle| {
                idle.checked_add(size).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Gives back `size` idle bytes counted by [`Budget::reserve`].
    fn release(&self, size: usize) {
        self.idle.fetch_sub(size, Ordering::AcqRel);
    }
}

/// The budget of all pools of this process.
static PROCESS: Budget = Budget {
    idle: AtomicUsize::new(0),
    limit: AtomicUsize::new(DEFAULT_PROCESS_BUFFER_POOL),
};

/// Caps the idle receive buffers that all connections of this process keep together
/// (default [`DEFAULT_PROCESS_BUFFER_POOL`], 64 MiB; 0 turns recycling off process-wide).
///
/// Each connection also has its own cap ([`Config::buffer_pool`](crate::Config::buffer_pool),
/// 32 MiB by default); a buffer is kept only while both have room, and is freed otherwise.
/// Lowering the cap does not free buffers already idle; they are freed as they are reused or
/// their connections end.
pub fn set_process_buffer_pool(bytes: usize) {
    PROCESS.limit.store(bytes, Ordering::Relaxed);
}

/// Idle receive-buffer bytes kept by all connections of this process now, and the cap
/// (see [`set_process_buffer_pool`]).
pub fn process_buffer_pool() -> (usize, usize) {
    (
        PROCESS.idle.load(Ordering::Relaxed),
        PROCESS.limit.load(Ordering::Relaxed),
    )
}

/// Counts `size` more idle bytes against the process-wide cap.
fn reserve_process(size: usize) -> bool {
    PROCESS.reserve(size)
}

/// Gives `size` idle bytes back to the process-wide count.
fn release_process(size: usize) {
    PROCESS.release(size);
}

/// A pool of receive buffers with a cap on the bytes it keeps idle.
#[derive(Debug, Clone)]
pub(crate) struct BufferPool {
    inner: Arc<Mutex<Idle>>,
}

#[derive(Debug)]
struct Idle {
    /// Idle buffers, each with `len() == capacity` a power of two.
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    max_bytes: usize,
}

/// A buffer on loan from a pool; holds `len` bytes of message.
#[derive(Debug)]
pub(crate) struct Loan {
    buf: Vec<u8>,
    len: usize,
    pool: Weak<Mutex<Idle>>,
}

impl BufferPool {
    /// A pool keeping at most `max_bytes` of idle buffers (0 disables pooling).
    pub(crate) fn new(max_bytes: usize) -> BufferPool {
        BufferPool {
            inner: Arc::new(Mutex::new(Idle {
                buffers: Vec::new(),
                bytes: 0,
                max_bytes,
            })),
        }
    }

    /// Whether the pool keeps anything.
    pub(crate) fn enabled(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max_bytes
            > 0
    }

    /// A buffer of at least `len` bytes, initialised (its contents are unspecified).
    pub(crate) fn take(&self, len: usize) -> Loan {
        let class = len.max(MIN_POOLED).next_power_of_two();
        let reused = {
            let mut idle = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            // The most recently returned buffer of the class: its pages are the likeliest to
            // still be in the cache.
            match idle.buffers.iter().rposition(|b| b.len() == class) {
                Some(i) => {
                    let buf = idle.buffers.remove(i);
                    idle.bytes -= buf.len();
                    release_process(buf.len());
                    Some(buf)
                }
                None => None,
            }
        };
        Loan {
            // A fresh buffer is zeroed lazily by the kernel (calloc of fresh pages).
            buf: reused.unwrap_or_else(|| vec![0u8; class]),
            len,
            pool: Arc::downgrade(&self.inner),
        }
    }
}

impl Loan {
    /// The message part of the buffer, to be filled.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// The filled buffer as `Bytes`; the buffer returns to the pool when the last reference is
    /// dropped.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut idle = pool.lock().unwrap_or_else(PoisonError::into_inner);
        let size = self.buf.len();
        if idle.bytes + size <= idle.max_bytes && reserve_process(size) {
            idle.bytes += size;
            idle.buffers.push(std::mem::take(&mut self.buf));
        }
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        // The connection is gone: its idle buffers are freed with it.
        release_process(self.bytes);
    }
}

/// A buffer for one message being received: exactly `len` bytes from the allocator for small
/// messages, a pooled buffer for large ones.
#[derive(Debug)]
pub(crate) enum RecvBuf {
    Fresh(BytesMut, usize),
    Pooled(Loan),
}

impl RecvBuf {
    pub(crate) fn new(len: usize, pool: &BufferPool) -> RecvBuf {
        if len >= MIN_POOLED && pool.enabled() {
            RecvBuf::Pooled(pool.take(len))
        } else {
            RecvBuf::Fresh(BytesMut::with_capacity(len), len)
        }
    }

    /// The memory the message is to be written to.
    ///
    /// # Safety
    /// The caller must write only initialised bytes into it: a pooled buffer is initialised
    /// memory seen through `MaybeUninit`.
    pub(crate) unsafe fn target(&mut self) -> &mut [MaybeUninit<u8>] {
        match self {
            RecvBuf::Fresh(buf, len) => &mut buf.spare_capacity_mut()[..*len],
            RecvBuf::Pooled(loan) => {
                let init = loan.as_mut_slice();
                // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout; the only writer of
                // the returned slice is the kernel copying bytes in, so it stays initialised.
                unsafe { &mut *(std::ptr::from_mut(init) as *mut [MaybeUninit<u8>]) }
            }
        }
    }

    /// The message, once every byte of [`target`](RecvBuf::target) has been written.
    ///
    /// # Safety
    /// The caller must have written every byte of `target()`.
    pub(crate) unsafe fn assume_filled(self) -> Bytes {
        match self {
            RecvBuf::Fresh(mut buf, len) => {
                // SAFETY: the caller wrote all `len` bytes of the spare capacity.
                unsafe { buf.set_len(len) };
                buf.freeze()
            }
            RecvBuf::Pooled(loan) => loan.into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused() {
        let pool = BufferPool::new(1 << 20);
        let mut loan = pool.take(100_000);
        loan.as_mut_slice().fill(7);
        let addr = loan.as_ref().as_ptr();
        let bytes = loan.into_bytes();
        assert_eq!(bytes.len(), 100_000);
        assert!(bytes.iter().all(|&b| b == 7));
        let copy = bytes.clone();
        drop(bytes);
        assert_eq!(pool.inner.lock().unwrap().bytes, 0, "still referenced");
        drop(copy);
        assert_eq!(pool.inner.lock().unwrap().bytes, 128 << 10);
        let again = pool.take(70_000);
        assert_eq!(
            again.as_ref().as_ptr(),
            addr,
            "same class reuses the buffer"
        );
        assert_eq!(pool.inner.lock().unwrap().bytes, 0);
    }

    #[test]
    fn idle_bytes_are_capped() {
        let pool = BufferPool::new(200 << 10);
        let a = pool.take(128 << 10).into_bytes();
        let b = pool.take(128 << 10).into_bytes();
        drop(a);
        drop(b);
        assert_eq!(
            pool.inner.lock().unwrap().bytes,
            128 << 10,
            "the second is freed"
        );
        let disabled = BufferPool::new(0);
        drop(disabled.take(1 << 20).into_bytes());
        assert_eq!(disabled.inner.lock().unwrap().bytes, 0);
    }

    #[test]
    fn a_shared_budget_caps_the_sum() {
        let budget = Budget {
            idle: AtomicUsize::new(0),
            limit: AtomicUsize::new(300),
        };
        assert!(budget.reserve(200));
        assert!(!budget.reserve(200), "200 + 200 is over the cap");
        assert!(budget.reserve(100));
        assert!(!budget.reserve(1));
        budget.release(200);
        assert!(budget.reserve(150));
        assert_eq!(budget.idle.load(Ordering::Relaxed), 250);
        assert!(!budget.reserve(usize::MAX), "no overflow");
    }

    #[test]
    fn buffers_outliving_their_pool_are_freed() {
        let pool = BufferPool::new(1 << 20);
        let bytes = pool.take(1 << 16).into_bytes();
        drop(pool);
        drop(bytes);
    }
}
