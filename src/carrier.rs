//! What a connection's frames travel over: the Unix control socket (pulls, descriptor
//! passing, credentials from the kernel), or, with the `tcp` feature, a TCP connection
//! (usually inside TLS) on which every message travels inline.
//!
//! The protocol layer sees one byte stream either way; the few things only a Unix socket can
//! do (check the peer after a pull, tell whether the peer has read what was written) answer
//! "nothing to report" on TCP.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::sys::socket::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::socket::ControlSocket;
use crate::sys;

/// A connection's byte stream.
#[derive(Debug)]
pub(crate) enum Carrier {
    /// A Unix stream socket between two processes of this host.
    Unix(ControlSocket),
    /// A TCP connection, with or without TLS.
    #[cfg(feature = "tcp")]
    Tcp(crate::tcp::TcpCarrier),
}

impl Carrier {
    /// The Unix socket, for what only the handshake between local processes does with it
    /// (descriptor passing).
    pub(crate) fn unix(&self) -> Option<&ControlSocket> {
        match self {
            Carrier::Unix(s) => Some(s),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(_) => None,
        }
    }

    /// The Unix socket, mutably (see [`unix`](Carrier::unix)).
    pub(crate) fn unix_mut(&mut self) -> Option<&mut ControlSocket> {
        match self {
            Carrier::Unix(s) => Some(s),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(_) => None,
        }
    }

    /// Shuts both directions down at once, without a goodbye: the connection is over (a
    /// failure, or the last half dropped). The peer reads the end of its stream, which the
    /// protocol judges (a missing CLOSE means the peer is gone).
    pub(crate) fn shutdown_now(&self) -> io::Result<()> {
        sys::shutdown(self.as_fd(), Shutdown::Both)
    }

    /// Whether the peer hung up and (given its pidfd) exited, checked now. Only pulls need
    /// it, and a TCP peer is never pulled from: there is nothing to report.
    pub(crate) fn check_peer(&self, pidfd: Option<BorrowedFd<'_>>) -> io::Result<sys::PeerState> {
        match self {
            Carrier::Unix(s) => s.check_peer(pidfd),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(_) => Ok(sys::PeerState {
                hung_up: false,
                exited: false,
            }),
        }
    }

    /// Whether the peer has yet to read bytes written before (see
    /// [`ControlSocket::peer_busy`]). Always false on TCP: the bytes may still be in flight,
    /// and writing at once keeps the network busy.
    pub(crate) fn peer_busy(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Carrier::Unix(s) => s.peer_busy(cx),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(_) => false,
        }
    }
}

impl AsFd for Carrier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Carrier::Unix(s) => s.as_fd(),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(s) => s.as_fd(),
        }
    }
}

impl AsyncRead for Carrier {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Carrier::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Carrier {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Carrier::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Carrier::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// Shuts the writing direction down in order: over TLS, after the `close_notify` alert
    /// (so that the peer can tell the end from a cut connection).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Carrier::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tcp")]
            Carrier::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
