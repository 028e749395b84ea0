//! The one door to the kernel.
//!
//! Every raw system call the crate makes lives here: socket creation, socket options, the
//! non-blocking `recv`/`send` used by the control socket, `process_vm_readv`/`process_vm_writev`,
//! and the few `/proc` reads the probe needs. The rest of the
//! crate sees `OwnedFd`, slices and `io::Result`, never a raw pointer or an errno.

// Some calls serve only the probe.
#![cfg_attr(not(feature = "probe"), allow(dead_code))]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr, sockopt};
use tokio::io::unix::AsyncFd;

/// Most iovecs a single `process_vm_readv` call accepts on either side (`IOV_MAX`).
pub(crate) const IOV_MAX: usize = 1024;

fn nix_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Flags every socket of this crate is created with.
fn sock_flags() -> SockFlag {
    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC
}

/// A new non-blocking, close-on-exec `AF_UNIX` `SOCK_STREAM` socket.
pub(crate) fn stream_socket() -> io::Result<OwnedFd> {
    socket::socket(AddressFamily::Unix, SockType::Stream, sock_flags(), None).map_err(nix_err)
}

/// A connected pair of non-blocking, close-on-exec stream sockets.
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(AddressFamily::Unix, SockType::Stream, None, sock_flags()).map_err(nix_err)
}

fn unix_addr(path: &Path) -> io::Result<UnixAddr> {
    UnixAddr::new(path).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is not usable ({e}); a Unix socket path must be shorter than 108 bytes",
                path.display()
            ),
        )
    })
}

/// Binds `fd` to `path`.
pub(crate) fn bind(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let addr = unix_addr(path)?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(nix_err)
}

/// Marks `fd` as a listening socket.
pub(crate) fn listen(fd: &OwnedFd, backlog: i32) -> io::Result<()> {
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    socket::listen(fd, backlog).map_err(nix_err)
}

/// Starts connecting `fd` to `path`. A non-blocking Unix stream connect either completes at once
/// or fails with `EAGAIN` when the listener's backlog is full.
pub(crate) fn connect(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let addr = unix_addr(path)?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(nix_err)
}

/// Accepts one connection as a non-blocking, close-on-exec socket.
pub(crate) fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    socket::accept4(fd, sock_flags()).map_err(nix_err)
}

/// Shuts down one or both directions of a socket.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: socket::Shutdown) -> io::Result<()> {
    match socket::shutdown(fd.as_raw_fd(), how) {
        // The peer already went away: nothing left to shut down.
        Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(nix_err(e)),
    }
}

/// Credentials of the peer of a connected Unix socket, as the kernel recorded them at connect
/// time: `(pid, uid, gid)`. The pid is in the caller's pid namespace, 0 if the peer lives in a
/// namespace the caller cannot see.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    let cred = socket::getsockopt(&fd, sockopt::PeerCredentials).map_err(nix_err)?;
    Ok((cred.pid(), cred.uid(), cred.gid()))
}

/// Receives into uninitialised memory without blocking. Returns the number of bytes written to
/// the front of `buf`; 0 means end of stream.
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the duration of the
    // call; the kernel only writes into it and never reads the (possibly uninitialised) bytes.
    let ret = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret.unsigned_abs())
}

/// Copies the first `buf.len()` unread bytes of a socket into `buf` without consuming them and
/// without blocking. Returns how many there were; 0 means end of stream (or an empty `buf`).
pub(crate) fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    socket::recv(
        fd.as_raw_fd(),
        buf,
        socket::MsgFlags::MSG_PEEK | socket::MsgFlags::MSG_DONTWAIT,
    )
    .map_err(nix_err)
}

/// Sends without blocking and without raising `SIGPIPE` when the peer has gone.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    socket::send(
        fd.as_raw_fd(),
        buf,
        socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(nix_err)
}

/// Bytes written into the socket that the peer has not read yet (`SIOCOUTQ`).
pub(crate) fn unread_output(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` writes one `int` through the pointer, which points at a live local
    // `c_int`; the descriptor is borrowed for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// What a check of the peer found, from one `poll` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerState {
    /// The peer shut down its sending side, or the whole socket.
    pub(crate) hung_up: bool,
    /// The peer process has exited (its pidfd became readable).
    pub(crate) exited: bool,
}

/// Checks now, with one zero-timeout `poll` and not from cached readiness, whether the peer
/// has hung up the socket and, given its pidfd, whether the process has exited.
pub(crate) fn check_peer(
    socket: BorrowedFd<'_>,
    pidfd: Option<BorrowedFd<'_>>,
) -> io::Result<PeerState> {
    let mut fds = [
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        },
        libc::pollfd {
            fd: pidfd.map_or(-1, |p| p.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two valid pollfds for the duration of the call (a
        // negative fd is ignored by the kernel); the timeout is 0.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), 2, 0) };
        if ret >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
    Ok(PeerState {
        hung_up: fds[0].revents & gone != 0,
        exited: fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0,
    })
}

/// A pidfd for the peer of a connected Unix socket.
///
/// `SO_PEERPIDFD` (Linux 6.5+) names the very process that connected, with no pid-reuse race.
/// On older kernels (`ENOPROTOOPT`) this falls back to `pidfd_open(pid)`, which the caller
/// must only trust after proving the pid (the handshake's cookie pull). `Ok(None)` when
/// neither is available (kernels before 5.3). `EINVAL` from `SO_PEERPIDFD` means the peer has
/// already exited and been reaped: reported as `ESRCH`.
pub(crate) fn peer_pidfd(socket: BorrowedFd<'_>, pid: i32) -> io::Result<Option<OwnedFd>> {
    match socket::getsockopt(&socket, sockopt::PeerPidfd) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::ENOPROTOOPT) => {}
        Err(Errno::EINVAL) => return Err(io::Error::from_raw_os_error(libc::ESRCH)),
        Err(e) => return Err(nix_err(e)),
    }
    match pidfd_open(pid) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `pidfd_open(pid, 0)`.
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: pidfd_open succeeded, so `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_peer_sees_hang_up_and_exit() {
        let (a, b) = stream_pair().unwrap();
        let own = peer_pidfd(a.as_fd(), std::process::id() as i32).unwrap();
        let own = own.expect("pidfds are available here");
        let state = check_peer(a.as_fd(), Some(own.as_fd())).unwrap();
        assert_eq!(
            state,
            PeerState {
                hung_up: false,
                exited: false
            }
        );
        shutdown(b.as_fd(), socket::Shutdown::Write).unwrap();
        assert!(check_peer(a.as_fd(), None).unwrap().hung_up);

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        let state = check_peer(a.as_fd(), Some(pidfd.as_fd())).unwrap();
        assert!(state.exited, "an exited child's pidfd is readable");
    }

    #[test]
    fn read_remote_loops_and_refuses_bad_addresses() {
        let src: Vec<u8> = (0..=255u8).cycle().take(3 * 4096 + 5).collect();
        let pid = std::process::id() as i32;
        // Three ranges out of order, scattered into two local buffers of other sizes.
        let base = src.as_ptr() as u64;
        let ranges = [
            RemoteRange {
                addr: base + 4096,
                len: 4096,
            },
            RemoteRange {
                addr: base,
                len: 4096,
            },
            RemoteRange {
                addr: base + 8192,
                len: 4101,
            },
        ];
        let mut x = vec![MaybeUninit::new(0u8); 5000];
        let mut y = vec![MaybeUninit::new(0u8); 7293];
        read_remote_scatter(pid, &mut [&mut x[..], &mut y[..]], &ranges).unwrap();
        // SAFETY: the buffers were initialised with zeroes and then overwritten.
        let got: Vec<u8> = x
            .iter()
            .chain(&y)
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let want: Vec<u8> = [&src[4096..8192], &src[..4096], &src[8192..]].concat();
        assert_eq!(got, want);
        let mut z = vec![MaybeUninit::new(0u8); 16];
        let bad = [RemoteRange { addr: 8, len: 16 }];
        let err = read_remote(pid, &mut z, &bad).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        let wrong_total = [RemoteRange {
            addr: base,
            len: 15,
        }];
        assert!(read_remote(pid, &mut z, &wrong_total).is_err());
    }
}

/// Yama's `ptrace_scope` (0 classic, 1 restricted to descendants and declared tracers, 2 admin
/// only, 3 none), or `None` without Yama.
pub(crate) fn yama_ptrace_scope() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Declares which process may read this one under Yama mode 1: `Some(pid)` that process
/// (replacing any earlier declaration), `None` any process (`PR_SET_PTRACER_ANY`).
pub(crate) fn set_ptracer(pid: Option<i32>) -> io::Result<()> {
    let arg = match pid {
        Some(pid) => {
            libc::c_ulong::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?
        }
        None => libc::PR_SET_PTRACER_ANY,
    };
    // SAFETY: PR_SET_PTRACER takes an integer argument; no memory is passed.
    let ret = unsafe { libc::prctl(libc::PR_SET_PTRACER, arg, 0, 0, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `CAP_SYS_PTRACE`'s bit in a capability set.
const CAP_SYS_PTRACE: u32 = 19;

/// The calling thread's effective capabilities (`CapEff` in `/proc/thread-self/status`).
#[cfg(test)]
pub(crate) fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff in status"))
}

/// Whether the calling thread may read and write any process's memory whatever its owner:
/// `CAP_SYS_PTRACE` in its effective set, or in its permitted set, from which it can raise
/// it at any time. A failed `capget` counts as privileged: the caller then takes the careful
/// path.
pub(crate) fn can_ptrace_any() -> bool {
    thread_capabilities().map_or(true, |(effective, permitted)| {
        (effective | permitted) & (1 << CAP_SYS_PTRACE) != 0
    })
}

/// Registers a socket with the current Tokio runtime's reactor.
pub(crate) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that stays open, and keeps returning the
    // same number from `as_raw_fd`, until it is dropped together with the `AsyncFd`; the crate
    // never swaps it out through `get_mut`.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Fills `buf` with bytes from the kernel's random number generator.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable region of `rest.len()` bytes; getrandom writes at
        // most that many bytes into it.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += ret.unsigned_abs();
    }
    Ok(())
}

/// A range of addresses in another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemoteRange {
    pub(crate) addr: u64,
    pub(crate) len: u64,
}

/// A position in a list of `(address, length)` segments, for building iovecs.
struct Segments<'a> {
    segs: &'a [(usize, usize)],
    idx: usize,
    off: usize,
}

impl Segments<'_> {
    /// Fills `iov` with the segments from the current position; returns how many were used.
    fn fill(&self, iov: &mut [libc::iovec]) -> usize {
        let mut count = 0;
        let mut off = self.off;
        for &(addr, len) in &self.segs[self.idx..] {
            if count == iov.len() {
                break;
            }
            if len > off {
                iov[count] = libc::iovec {
                    iov_base: addr.wrapping_add(off) as *mut libc::c_void,
                    iov_len: len - off,
                };
                count += 1;
            }
            off = 0;
        }
        count
    }

    /// Moves the position `n` bytes forward.
    fn advance(&mut self, mut n: usize) {
        while self.idx < self.segs.len() {
            let rest = self.segs[self.idx].1 - self.off;
            if n < rest {
                self.off += n;
                return;
            }
            n -= rest;
            self.idx += 1;
            self.off = 0;
        }
    }
}

/// Copies exactly `local.len()` bytes out of process `pid`, from the concatenation of `remote`,
/// into `local`, with as many `process_vm_readv` calls as it takes.
///
/// A short transfer (the kernel copies in batches and stops at the first fault) is continued
/// from where it stopped; it is never reported as success. On `Ok(())` every byte of `local` has
/// been written. The lengths in `remote` must add up to `local.len()`.
pub(crate) fn read_remote(
    pid: i32,
    local: &mut [MaybeUninit<u8>],
    remote: &[RemoteRange],
) -> io::Result<()> {
    read_remote_scatter(pid, &mut [local], remote)
}

/// Like [`read_remote`], but scatters the bytes over several local buffers in order: one
/// system call can fill many messages. The lengths in `remote` must add up to the total length
/// of `local`.
pub(crate) fn read_remote_scatter(
    pid: i32,
    local: &mut [&mut [MaybeUninit<u8>]],
    remote: &[RemoteRange],
) -> io::Result<()> {
    let total: usize = local.iter().map(|b| b.len()).sum();
    let remote_total = remote
        .iter()
        .try_fold(0u64, |acc, r| acc.checked_add(r.len));
    if remote_total != Some(total as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "remote ranges do not add up to the local buffers",
        ));
    }
    let local_segs: Vec<(usize, usize)> = local
        .iter_mut()
        .map(|b| (b.as_mut_ptr() as usize, b.len()))
        .collect();
    let remote_segs = remote
        .iter()
        .map(|r| Ok((usize::try_from(r.addr)?, usize::try_from(r.len)?)))
        .collect::<Result<Vec<_>, std::num::TryFromIntError>>()
        .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
    let mut here = Segments {
        segs: &local_segs,
        idx: 0,
        off: 0,
    };
    let mut there = Segments {
        segs: &remote_segs,
        idx: 0,
        off: 0,
    };
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut local_iov = [empty; IOV_MAX];
    let mut remote_iov = [empty; IOV_MAX];
    let mut done = 0usize;
    while done < total {
        let nl = here.fill(&mut local_iov);
        let nr = there.fill(&mut remote_iov);
        // SAFETY: `local_iov[..nl]` describe writable parts of the `local` buffers, which are
        // exclusively borrowed for this call and only written by the kernel; `remote_iov[..nr]`
        // describe memory of the other process, which the kernel checks and never maps into
        // ours. The kernel copies at most the smaller of the two totals.
        let ret = unsafe {
            libc::process_vm_readv(
                pid,
                local_iov.as_ptr(),
                nl as libc::c_ulong,
                remote_iov.as_ptr(),
                nr as libc::c_ulong,
                0,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = ret.unsigned_abs();
        if n == 0 {
            // No progress and no error: do not spin. The kernel reports a fault as EFAULT when
            // nothing was copied, so this only happens with ranges the kernel refuses.
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        done += n;
        here.advance(n);
        there.advance(n);
    }
    Ok(())
}

/// The raw descriptor of any fd-like value, for logging.
pub(crate) fn raw(fd: &impl AsFd) -> i32 {
    fd.as_fd().as_raw_fd()
}

/// Writes all of `data` into process `pid` at `addr`, with as many `process_vm_writev` calls as
/// it takes (a short transfer is continued; no progress is `EFAULT`).
pub(crate) fn write_remote(pid: i32, addr: u64, data: &[u8]) -> io::Result<()> {
    let base = usize::try_from(addr).map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
    let mut done = 0usize;
    while done < data.len() {
        let local = libc::iovec {
            iov_base: data[done..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        let remote = libc::iovec {
            iov_base: base.wrapping_add(done) as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        // SAFETY: `local` describes the readable rest of `data`, borrowed for the call and only
        // read by the kernel (the `*mut` is what the C type asks for); `remote` describes memory
        // of the other process, which the kernel checks and never maps into ours.
        let ret = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        match ret.unsigned_abs() {
            0 => return Err(io::Error::from_raw_os_error(libc::EFAULT)),
            n => done += n,
        }
    }
    Ok(())
}

/// Copies `local.len()` bytes out of process `pid` at `addr`.
pub(crate) fn read_remote_at(pid: i32, addr: u64, local: &mut [u8]) -> io::Result<()> {
    let len = local.len() as u64;
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and `read_remote` only writes
    // initialised bytes into the buffer, so it stays initialised.
    let local = unsafe { &mut *(local as *mut [u8] as *mut [MaybeUninit<u8>]) };
    read_remote(pid, local, &[RemoteRange { addr, len }])
}

/// The start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22), and
/// the uid that owns it (the owner of `/proc/PID`).
pub(crate) fn process_identity(pid: i32) -> io::Result<(u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let owner = std::fs::metadata(&dir)?.uid();
    // The command name (field 2) is in parentheses and may contain anything, spaces and ')'
    // included: fields from 3 on start after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))?;
    let start = rest
        .split_ascii_whitespace()
        .nth(22 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))?;
    Ok((start, owner))
}

/// An exclusive `flock` on a file, released when dropped.
#[derive(Debug)]
pub(crate) struct FileLock<'a> {
    fd: BorrowedFd<'a>,
}

impl FileLock<'_> {
    /// Takes an exclusive lock on `fd`, trying again until `timeout` has passed; then fails
    /// with `WouldBlock`.
    pub(crate) fn exclusive(
        fd: BorrowedFd<'_>,
        timeout: std::time::Duration,
    ) -> io::Result<FileLock<'_>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // SAFETY: `fd` is a valid open descriptor for the borrow's lifetime; flock only
            // changes the lock state of its open file description.
            let ret = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if ret == 0 {
                return Ok(FileLock { fd });
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                _ => return Err(err),
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `exclusive`; unlocking a lock this value holds.
        unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Opens a file that someone else may have put in place, for reading: without following a
/// symbolic link and without blocking (on a FIFO, say). The caller checks the file type.
pub(crate) fn open_untrusted(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Whether an error from reading `/proc/PID` means that the process no longer exists.
pub(crate) fn process_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// Clock ticks per second, the unit of `/proc/PID/stat` times.
pub(crate) fn clock_ticks_per_second() -> Option<u64> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
}

/// Time since boot, from `/proc/uptime`.
pub(crate) fn system_uptime() -> Option<std::time::Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    std::time::Duration::try_from_secs_f64(secs).ok()
}

/// Whose credentials a thread takes before it reads or writes another process's memory on
/// someone else's behalf (see [`run_with_credentials`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ThreadCredentials {
    /// Check file and process access as `uid` and `gid` (the filesystem ids, `setfsuid` and
    /// `setfsgid`), with no supplementary groups and no capabilities. The real, effective and
    /// saved ids stay: the user the thread acts for is not allowed to signal, trace or limit
    /// it (the kernel checks those against the real and saved ids), which it would be if the
    /// thread became that user outright.
    Switch {
        /// The user to become.
        uid: u32,
        /// The group to become.
        gid: u32,
    },
    /// Keep the uid and gid, clear every capability.
    DropCapabilities,
}

// The 32-bit ABIs whose plain set*id calls take 16-bit ids.
#[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
const SYS_SETGROUPS: libc::c_long = libc::SYS_setgroups32;
#[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
const SYS_SETFSGID: libc::c_long = libc::SYS_setfsgid32;
#[cfg(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc"))]
const SYS_SETFSUID: libc::c_long = libc::SYS_setfsuid32;
#[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
const SYS_SETGROUPS: libc::c_long = libc::SYS_setgroups;
#[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
const SYS_SETFSGID: libc::c_long = libc::SYS_setfsgid;
#[cfg(not(any(target_arch = "x86", target_arch = "arm", target_arch = "sparc")))]
const SYS_SETFSUID: libc::c_long = libc::SYS_setfsuid;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets, as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's effective and permitted capability sets, from `capget`.
fn thread_capabilities() -> io::Result<(u64, u64)> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and the two-element `data` array are what capget reads and writes for
    // version 3; pid 0 is the calling thread. Both live across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::from_mut(&mut header),
            data.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// The calling thread's effective capabilities, from one `capget` call: what
/// [`effective_capabilities`] reads from `/proc`, without opening a file (it is asked before
/// every access to another process).
pub(crate) fn thread_effective_capabilities() -> io::Result<u64> {
    thread_capabilities().map(|(effective, _)| effective)
}

/// Empties the calling thread's effective, permitted and inheritable capability sets (and so
/// its ambient set). `capset` on pid 0 changes only the calling thread.
fn clear_thread_capabilities() -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: `header` and the two-element `data` array are what capset reads for version 3;
    // pid 0 is the calling thread. Both live across the call; capset does not write `data`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::from_mut(&mut header),
            data.as_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Changes the calling thread's, and only the calling thread's, credentials. The raw system
/// calls matter: glibc's `setresuid` and friends (and nix's, which call them) apply the change
/// to every thread of the process.
fn set_thread_credentials(creds: ThreadCredentials) -> io::Result<()> {
    let check = |what: &str, ret: libc::c_long| {
        if ret < 0 {
            let e = io::Error::last_os_error();
            Err(io::Error::new(e.kind(), format!("{what}: {e}")))
        } else {
            Ok(())
        }
    };
    let keep_capabilities = match creds {
        // -1 would mean "leave as it is" to the kernel, not "become -1".
        ThreadCredentials::Switch { uid, gid } if uid == u32::MAX || gid == u32::MAX => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("uid {uid} or gid {gid} is not a valid id"),
            ));
        }
        ThreadCredentials::Switch { uid, gid } => {
            // SAFETY: setgroups with a count of 0 reads no memory; the null list is allowed.
            let ret = unsafe { libc::syscall(SYS_SETGROUPS, 0, std::ptr::null::<libc::gid_t>()) };
            check("dropping the supplementary groups", ret)?;
            // setfsgid and setfsuid report no error: each returns the previous id, and a call
            // with -1 changes nothing and returns the current one, which is checked.
            // SAFETY: setfsgid takes an id by value; no memory is passed.
            unsafe { libc::syscall(SYS_SETFSGID, gid) };
            // SAFETY: as above; -1 only asks for the current id.
            let now = unsafe { libc::syscall(SYS_SETFSGID, u32::MAX) };
            if now != libc::c_long::from(gid) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("switching the filesystem gid to {gid} left it at {now}"),
                ));
            }
            // SAFETY: setfsuid takes an id by value; no memory is passed.
            unsafe { libc::syscall(SYS_SETFSUID, uid) };
            // SAFETY: as above; -1 only asks for the current id.
            let now = unsafe { libc::syscall(SYS_SETFSUID, u32::MAX) };
            if now != libc::c_long::from(uid) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("switching the filesystem uid to {uid} left it at {now}"),
                ));
            }
            false
        }
        ThreadCredentials::DropCapabilities => false,
    };
    if !keep_capabilities {
        let (effective, permitted) = thread_capabilities()?;
        if effective | permitted != 0 {
            clear_thread_capabilities()
                .map_err(|e| io::Error::new(e.kind(), format!("clearing capabilities: {e}")))?;
        }
        // Never trust that it worked: the caller's access must not run with any.
        let (effective, permitted) = thread_capabilities()?;
        if effective | permitted != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the thread still holds capabilities {effective:#x} (permitted \
                     {permitted:#x}) after dropping them"
                ),
            ));
        }
    }
    Ok(())
}

/// Runs `f` on a short-lived thread of its own that first takes the credentials `creds`, so
/// that the kernel's access checks on what `f` does (such as the ptrace check of
/// `process_vm_readv`/`process_vm_writev`) apply to those credentials and not to the caller's.
///
/// The thread ends when `f` returns; the caller's threads keep their credentials. If the
/// thread cannot take `creds` it fails with an error and never runs `f`. A panic in `f` is
/// passed on to the caller.
///
/// Changing a thread's ids makes the kernel mark the whole process not dumpable while the
/// thread runs; a process that was dumpable is made so again once the last such thread has
/// ended (see [`CredentialThreads`]).
pub(crate) fn run_with_credentials<R: Send>(
    creds: ThreadCredentials,
    f: impl FnOnce() -> R + Send,
) -> io::Result<R> {
    let _running = CredentialThreads::enter();
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("pvm-access".into())
            .spawn_scoped(scope, move || {
                set_thread_credentials(creds)?;
                Ok(f())
            })?;
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Threads of [`run_with_credentials`] under way, and whether the process was dumpable
/// before the first of them started.
static CREDENTIAL_THREADS: std::sync::Mutex<(usize, Option<ProcessIds>)> =
    std::sync::Mutex::new((0, None));

/// The process's real, effective and saved uids and gids.
type ProcessIds = ((u32, u32, u32), (u32, u32, u32));

/// This thread's ids, as the process's (the crate changes only threads it owns).
fn process_ids() -> Option<ProcessIds> {
    let u = nix::unistd::getresuid().ok()?;
    let g = nix::unistd::getresgid().ok()?;
    Some((
        (u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()),
        (g.real.as_raw(), g.effective.as_raw(), g.saved.as_raw()),
    ))
}

/// Counts a thread of [`run_with_credentials`] while it runs.
///
/// A thread that changes its credentials makes the kernel mark the whole process not dumpable
/// (so that the other user cannot trace that thread and, through it, the process). Once the
/// last such thread has ended, a process that was dumpable before is made dumpable again:
/// otherwise using the probe would leave it without core dumps and unreadable by its own
/// user's tools and transport peers. Not if the process's own ids changed meanwhile (it
/// dropped privileges, say): the kernel's not-dumpable then protects what it held before.
struct CredentialThreads;

impl CredentialThreads {
    fn enter() -> CredentialThreads {
        let mut state = CREDENTIAL_THREADS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0 == 0 {
            state.1 = if dumpable() { process_ids() } else { None };
        }
        state.0 += 1;
        CredentialThreads
    }
}

impl Drop for CredentialThreads {
    fn drop(&mut self) {
        let mut state = CREDENTIAL_THREADS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.0 -= 1;
        if state.0 == 0 && state.1.is_some() && state.1 == process_ids() && !dumpable() {
            // SAFETY: PR_SET_DUMPABLE takes an integer argument; no memory is passed.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        }
    }
}

/// Whether this process is dumpable (`PR_GET_DUMPABLE` is 1).
pub(crate) fn dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no argument and returns the flag.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// Opens `/proc/PID/mem` for reading and writing with the calling thread's filesystem
/// credentials. The kernel checks, at the open, that those credentials may trace the process
/// (`PTRACE_MODE_ATTACH_FSCREDS`); the descriptor then reaches only the address space the
/// process had at that moment: after an `execve` it reads and writes nothing.
pub(crate) fn open_memory(pid: i32) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/mem"))
}

/// Copies `buf.len()` bytes at `addr` out of an address space opened with [`open_memory`].
/// An unmapped address is `EIO`; an address space that is gone (the process exec'd or exited)
/// reads as an early end, reported as `ESRCH`.
pub(crate) fn read_memory(mem: &std::fs::File, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    mem.read_exact_at(buf, addr).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::from_raw_os_error(libc::ESRCH),
        _ => e,
    })
}

/// Writes `data` at `addr` into an address space opened with [`open_memory`]; errors as
/// [`read_memory`].
pub(crate) fn write_memory(mem: &std::fs::File, addr: u64, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    mem.write_all_at(data, addr).map_err(|e| match e.kind() {
        io::ErrorKind::WriteZero => io::Error::from_raw_os_error(libc::ESRCH),
        _ => e,
    })
}

/// `CAP_SETGID`'s and `CAP_SETUID`'s bits in a capability set.
const CAP_SETGID_SETUID: u64 = 1 << 6 | 1 << 7;

/// Whether the calling thread's effective capabilities let it become any user and group
/// (`CAP_SETUID` and `CAP_SETGID`).
pub(crate) fn can_switch_credentials(effective: u64) -> bool {
    effective & CAP_SETGID_SETUID == CAP_SETGID_SETUID
}

/// The real gid of process `pid` (the first number of `Gid:` in `/proc/PID/status`).
pub(crate) fn process_real_gid(pid: i32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Gid:"))
        .and_then(|ids| ids.split_ascii_whitespace().next())
        .and_then(|gid| gid.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Gid in /proc/PID/status"))
}

// ----- the zero-copy lane: shared memory and descriptor passing ---------------------------------

/// Seals a loan region's file carries once its owner has mapped it: it can neither shrink (a
/// mapping of a truncated file raises `SIGBUS` on access) nor grow, nobody can map it
/// writable or write to it any more (the owner's mapping made before stays writable: the peer
/// that gets the descriptor cannot change what the owner lends), and the seals cannot change.
const LOAN_SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;

/// `statfs` type of tmpfs/shmem, where a plain `memfd` lives (hugetlbfs files can lose pages
/// to a hole punched in them, which no seal short of a write seal prevents).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A new anonymous shared-memory file of `size` bytes (`memfd_create`), not sealed yet (see
/// [`seal_loan_file`]): the file behind this process's loaned messages.
pub(crate) fn loan_memfd(size: usize) -> io::Result<OwnedFd> {
    let name = c"tokio-pvm-loans";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain system calls on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Seals a loan region's file after its owner mapped it writable (kernels before 5.1 lack
/// `F_SEAL_FUTURE_WRITE` and refuse: no lane there).
pub(crate) fn seal_loan_file(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor the caller owns.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, LOAN_SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks a loan region's file received from a peer before it is mapped: its size must be
/// `size` and it must be sealed against shrinking (else the peer could truncate it and make
/// every access to the mapping fault with `SIGBUS`). The reason for a refusal otherwise.
pub(crate) fn check_loan_file(fd: BorrowedFd<'_>, size: usize) -> Result<(), String> {
    // SAFETY: plain system call on a descriptor the caller owns.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(format!(
            "its descriptor is not a sealable shared-memory file ({})",
            io::Error::last_os_error()
        ));
    }
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err("its file is not sealed against shrinking".into());
    }
    let mut fs = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fs` is valid for writes of one `statfs`; fstatfs fills it on success.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), fs.as_mut_ptr()) } < 0 {
        return Err(format!("fstatfs failed: {}", io::Error::last_os_error()));
    }
    // SAFETY: fstatfs returned 0, so it filled `fs`.
    let fs = unsafe { fs.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    if fs.f_type as i64 != TMPFS_MAGIC {
        return Err(format!(
            "its file is not plain shared memory (file system type {:#x}; a hugetlbfs file \
             can lose pages under the mapping)",
            fs.f_type
        ));
    }
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`; fstat fills it on success.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(format!("fstat failed: {}", io::Error::last_os_error()));
    }
    // SAFETY: fstat returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("its descriptor is not a regular file".into());
    }
    if usize::try_from(st.st_size).ok() != Some(size) {
        return Err(format!(
            "its file holds {} bytes, not the {size} announced",
            st.st_size
        ));
    }
    Ok(())
}

/// Maps `len` bytes of `fd` shared, read-write or read-only. Returns the start address.
pub(crate) fn map_shared(
    fd: BorrowedFd<'_>,
    len: usize,
    writable: bool,
) -> io::Result<std::ptr::NonNull<u8>> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a fresh mapping chosen by the kernel (no address hint, no MAP_FIXED), so no
    // existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Unmaps a mapping made by [`map_shared`].
///
/// # Safety
/// `ptr` and `len` are those of one mapping from [`map_shared`], and nothing refers into it
/// any more.
pub(crate) unsafe fn unmap(ptr: std::ptr::NonNull<u8>, len: usize) {
    // SAFETY: the caller guarantees the range is one mapping of ours with no users left.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

/// Sends `buf` with the descriptor `fd` attached (`SCM_RIGHTS`), without blocking and without
/// `SIGPIPE`. Returns how many bytes went; the descriptor travels with the first of them.
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<usize> {
    let iov = [io::IoSlice::new(buf)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [socket::ControlMessage::ScmRights(&fds)];
    socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(nix_err)
}

/// Like [`recv`], but also takes the descriptors that arrive with the bytes (`SCM_RIGHTS`,
/// close-on-exec): the first one goes into `kept` if it is empty, every other is closed at
/// once. Room is made for a few; the kernel closes any beyond that.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
    kept: &mut Option<OwnedFd>,
) -> io::Result<usize> {
    const MAX_FDS: usize = 4;
    // Room for one SCM_RIGHTS message of MAX_FDS descriptors, aligned for `cmsghdr`.
    let mut space = [0u64; 16];
    // SAFETY: CMSG_SPACE only computes a size.
    let space_len = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<libc::c_int>()) as u32) };
    debug_assert!(space_len as usize <= size_of_val(&space));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = space_len as usize;
    // SAFETY: `msg` points at `iov` (covering `buf`, writable, only written by the kernel) and
    // at `space` (writable, `space_len` bytes), all alive for the call.
    let ret = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &raw mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg.msg_control` with `msg.msg_controllen` bytes of control
    // messages; CMSG_FIRSTHDR/CMSG_NXTHDR/CMSG_DATA walk them within those bounds, and each
    // SCM_RIGHTS payload is an array of descriptors the kernel installed for this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..payload / size_of::<libc::c_int>() {
                    let fd = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                    // Dropping a descriptor that is not kept closes it.
                    if kept.is_none() {
                        *kept = Some(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(ret.unsigned_abs())
}
