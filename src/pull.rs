//! Pulls: copying announced messages out of the peer's memory.
//!
//! Small runs of messages are pulled in place by the caller ([`pull_messages`]). Large
//! messages are pulled on Tokio's blocking pool ([`BlockingPull`]), each bounded by a timeout:
//! a pull can sleep in the kernel for as long as the peer likes (its pages may be backed by a
//! `userfaultfd` that never answers, or by a hung FUSE or NFS file), and no system call can
//! interrupt it. A pull that times out fails its connection and is abandoned: its thread stays
//! in the kernel until the peer's memory answers or the peer exits. Abandoned pulls that are
//! still running are counted for the whole process, and past [`MAX_STUCK_PULLS`] no new
//! blocking pull starts, so a peer cannot take every thread of the blocking pool.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::error::{Error, ErrorKind, Result};
use crate::pool::{BufferPool, RecvBuf};
use crate::sys::{self, RemoteRange};

/// Most abandoned pulls that may still hold a blocking-pool thread, in the whole process.
/// Tokio's blocking pool has 512 threads by default; this leaves most of them to the
/// application.
pub(crate) const MAX_STUCK_PULLS: usize = 64;

/// Abandoned blocking pulls still running, in the whole process.
static STUCK: AtomicUsize = AtomicUsize::new(0);

/// Abandoned blocking pulls still running in this process.
pub(crate) fn stuck_pulls() -> usize {
    STUCK.load(Ordering::Acquire)
}

/// Pulls messages of `lens` bytes, in order, from `ranges` of process `pid`, each into a
/// buffer of its own, with as few system calls as the ranges allow.
pub(crate) fn pull_messages(
    pid: i32,
    lens: &[usize],
    ranges: &[RemoteRange],
    pool: &BufferPool,
) -> std::io::Result<Vec<Bytes>> {
    let mut bufs: Vec<RecvBuf> = lens.iter().map(|&len| RecvBuf::new(len, pool)).collect();
    // SAFETY: the targets are only written by `read_remote_scatter`, that is by the kernel
    // copying bytes in: they stay initialised.
    let mut targets: Vec<&mut [MaybeUninit<u8>]> =
        bufs.iter_mut().map(|b| unsafe { b.target() }).collect();
    sys::read_remote_scatter(pid, &mut targets, ranges)?;
    // SAFETY: `read_remote_scatter` returned Ok, so every byte of every target was written.
    Ok(bufs
        .into_iter()
        .map(|b| unsafe { b.assume_filled() })
        .collect())
}

/// Pulls one message of `len` bytes.
fn pull_message(
    pid: i32,
    len: u64,
    ranges: &[RemoteRange],
    pool: &BufferPool,
) -> std::io::Result<Bytes> {
    let len =
        usize::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(nix::libc::EFBIG))?;
    let mut msgs = pull_messages(pid, &[len], ranges, pool)?;
    Ok(msgs.pop().unwrap_or_default())
}

/// One message being pulled on the blocking pool, with a deadline.
///
/// Dropped before it finishes (timed out, or its connection failed or was dropped), it is
/// abandoned: counted as stuck until its thread comes back.
#[derive(Debug)]
pub(crate) struct BlockingPull {
    handle: JoinHandle<std::io::Result<Bytes>>,
    /// Set by whichever comes first: the pull finishing, or this side giving up on it.
    settled: Arc<AtomicBool>,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    started: Instant,
    len: u64,
    pid: i32,
}

impl BlockingPull {
    /// Starts pulling a message of `len` bytes from `ranges` of process `pid`, failing after
    /// `timeout`. Refused while [`MAX_STUCK_PULLS`] abandoned pulls are still running.
    pub(crate) fn start(
        pid: i32,
        len: u64,
        ranges: Vec<RemoteRange>,
        pool: BufferPool,
        timeout: Duration,
    ) -> Result<BlockingPull> {
        let stuck = stuck_pulls();
        if stuck >= MAX_STUCK_PULLS {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "{stuck} earlier pulls from peers' memory timed out and are still stuck in \
                     the kernel (memory backed by a userfaultfd or a hung FUSE/NFS file), so no \
                     new pull of {len} bytes from peer process {pid} is started; they end when \
                     those peers answer or exit"
                ),
            ));
        }
        let settled = Arc::new(AtomicBool::new(false));
        let done = Settle(settled.clone());
        let handle = tokio::task::spawn_blocking(move || {
            let _done = done;
            pull_message(pid, len, &ranges, &pool)
        });
        Ok(BlockingPull {
            handle,
            settled,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            started: Instant::now(),
            len,
            pid,
        })
    }

    /// The message's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// When the pull started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The pulled message, the pull's error, or a [`ErrorKind::Timeout`] error once the
    /// deadline has passed.
    pub(crate) fn poll_result(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes>> {
        if let Poll::Ready(joined) = Pin::new(&mut self.handle).poll(cx) {
            return Poll::Ready(
                joined
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|e| Error::pull(self.pid, e)),
            );
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "pulling {} bytes from peer process {} did not finish within {:?}: its \
                     memory does not answer (backed by a userfaultfd, or by a hung FUSE or NFS \
                     file); the connection is closed and the pull abandoned (raise \
                     Config::pull_timeout if the peer is only slow)",
                    self.len, self.pid, self.timeout
                ),
            ))),
        }
    }
}

/// Held by the blocking task: when the pull ends (or the task is dropped unrun, at runtime
/// shutdown), a pull that was given up on no longer counts as stuck.
struct Settle(Arc<AtomicBool>);

impl Drop for Settle {
    fn drop(&mut self) {
        if self.0.swap(true, Ordering::AcqRel) {
            STUCK.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for BlockingPull {
    fn drop(&mut self) {
        // Not started yet: it never will (its `Settle` is dropped, and settles the count).
        self.handle.abort();
        // Still running: it holds its thread until the kernel lets go. Counted before it is
        // marked, so that a `Settle` racing with this never takes the count below zero (it
        // may read one too high for a moment, the safe side).
        STUCK.fetch_add(1, Ordering::AcqRel);
        if self.settled.swap(true, Ordering::AcqRel) {
            STUCK.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
