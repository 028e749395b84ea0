//! The control socket: a non-blocking Unix stream socket driven by Tokio's `AsyncFd`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::Shutdown;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys;

/// A connected `SOCK_STREAM` Unix socket registered with the Tokio reactor.
///
/// It implements [`AsyncRead`] and [`AsyncWrite`] so that `tokio_util::codec::Framed` carries
/// the protocol's frames over it. Writes never raise `SIGPIPE`.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    fd: AsyncFd<OwnedFd>,
    /// While descriptors are accepted (`Some`: during the handshake, for the peer's loan
    /// region), the first one received with the bytes (`SCM_RIGHTS`); any other is closed at
    /// once, so a peer cannot fill this process's descriptor table. `None` otherwise, and the
    /// kernel then closes any descriptor a peer sends.
    fds: Option<Option<OwnedFd>>,
    /// [`peer_busy`](ControlSocket::peer_busy) cleared the write readiness while the socket
    /// may have room: the next write tries the socket before it waits for readiness.
    write_cleared: bool,
}

impl ControlSocket {
    /// Registers a connected, non-blocking socket with the current Tokio runtime.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<ControlSocket> {
        Ok(ControlSocket {
            fd: sys::register(fd)?,
            fds: None,
            write_cleared: false,
        })
    }

    /// Keeps descriptors that arrive with the bytes from now on, for [`take_fd`].
    ///
    /// [`take_fd`]: ControlSocket::take_fd
    pub(crate) fn accept_fds(&mut self) {
        self.fds.get_or_insert(None);
    }

    /// Stops keeping descriptors; one kept and not taken is closed.
    pub(crate) fn refuse_fds(&mut self) {
        self.fds = None;
    }

    /// The first descriptor received, if not taken yet.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.as_mut()?.take()
    }

    /// Sends `buf` with `fd` attached (or without a descriptor), waiting for room in the
    /// socket.
    pub(crate) async fn send_with_fd(
        &self,
        mut buf: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> io::Result<()> {
        let mut attached = fd.is_none();
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|sock| match fd {
                Some(fd) if !attached => sys::send_with_fd(sock.as_fd(), buf, fd),
                _ => sys::send(sock.as_fd(), buf),
            });
            match sent {
                Ok(Ok(n)) => {
                    attached = true;
                    buf = &buf[n..];
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Whether the peer has yet to read bytes written earlier. If so, `cx` is woken at the
    /// socket's next write-space event (the kernel raises one when the peer's reads leave
    /// this side's queued bytes under a quarter of the send buffer, so at the latest when it
    /// has read everything; any other event on the socket counts too), and true is returned:
    /// bytes written now would only queue behind the unread ones, and can as well go with
    /// that wake-up in one write. False if the peer has read everything, or when in doubt.
    ///
    /// A peer that shut down only its reading side (`SHUT_RD`, which this crate never does)
    /// raises no event: bytes left for it wait, where a write would have failed with `EPIPE`.
    ///
    /// It takes no wake-up away from other writers: readiness is cleared only as of the
    /// moment it was looked at (an event after that stays), and the next
    /// [`poll_write`](AsyncWrite::poll_write) tries the socket before it waits.
    pub(crate) fn peer_busy(&mut self, cx: &mut Context<'_>) -> bool {
        let guard = match self.fd.poll_write_ready(cx) {
            // Readiness cleared here before and no event since: `cx` is registered for the
            // next one. Pending after a write that found the socket full is not "busy": the
            // caller then writes, and that write registers its own waker again in place of
            // `cx`.
            Poll::Pending => return self.write_cleared,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(guard)) => guard,
        };
        if !matches!(sys::unread_output(self.as_fd()), Ok(n) if n > 0) {
            return false;
        }
        let mut guard = guard;
        guard.clear_ready();
        self.write_cleared = true;
        // An event between the look and the clear kept the readiness: then write now.
        self.fd.poll_write_ready(cx).is_pending()
    }

    /// `(pid, uid, gid)` of the peer as the kernel recorded them.
    pub(crate) fn peer_credentials(&self) -> io::Result<(i32, u32, u32)> {
        sys::peer_credentials(self.as_fd())
    }

    /// Shuts down one or both directions.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        sys::shutdown(self.as_fd(), how)
    }

    /// Whether the peer hung up, and (given its pidfd) whether it exited: one system call, now.
    pub(crate) fn check_peer(&self, pidfd: Option<BorrowedFd<'_>>) -> io::Result<sys::PeerState> {
        sys::check_peer(self.as_fd(), pidfd)
    }
}

impl AsFd for ControlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsyncRead for ControlSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes into the unfilled part and we mark as initialised
            // exactly the `n` bytes the kernel reports having written.
            let unfilled = unsafe { buf.unfilled_mut() };
            let len = unfilled.len();
            let fds = &mut this.fds;
            match guard.try_io(|fd| match fds {
                Some(kept) => sys::recv_with_fds(fd.as_fd(), unfilled, kept),
                None => sys::recv(fd.as_fd(), unfilled),
            }) {
                Ok(Ok(n)) => {
                    // SAFETY: the kernel wrote `n` bytes at the start of the unfilled region.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if n > 0 && n < len && this.fds.is_none() {
                        // A short read emptied the socket: the next read would only say
                        // "would block". Wait for the reactor's next event instead (what
                        // Tokio's own streams do), saving a system call per wake-up. Not
                        // while descriptors are accepted: a read stops after bytes that
                        // carry descriptors with more bytes queued behind them, and those
                        // would then wait for an event that does not come.
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for ControlSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        while this.write_cleared {
            // Readiness was cleared by `peer_busy`, not by a full socket: try it first.
            match sys::send(this.as_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.write_cleared = false,
                result => return Poll::Ready(result),
            }
        }
        loop {
            let mut guard = ready!(this.fd.poll_write_ready(cx))?;
            this.write_cleared = false;
            match guard.try_io(|fd| sys::send(fd.as_fd(), buf)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here; every write goes straight to the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown(Shutdown::Write))
    }
}
