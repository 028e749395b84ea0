//! The lock that serialises writers of a process's tunable blocks: the manifest file's
//! `flock`, taken by the process itself (a block's `update`) and by tools (`Probe::set`).

use std::fs::File;
use std::os::fd::AsFd;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// How long a writer waits for another writer's lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the lock that serialises writers of a process's tunable blocks, waiting up to 5 s.
pub(crate) fn lock_exclusive(file: &File) -> Result<sys::FileLock<'_>> {
    lock_exclusive_within(file, LOCK_TIMEOUT)
}

/// Like [`lock_exclusive`], waiting up to `timeout`.
pub(crate) fn lock_exclusive_within(file: &File, timeout: Duration) -> Result<sys::FileLock<'_>> {
    sys::FileLock::exclusive(file.as_fd(), timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "another writer held the manifest's lock for more than {:?}; a tool may be \
                     stopped in the middle of a write",
                    timeout
                ),
            )
        } else {
            Error::io("locking the manifest", e)
        }
    })
}
