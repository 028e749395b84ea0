//! A handshake's wait for its peer's HELLO, and what a client dropped before it is accepted
//! is told.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use nix::sys::socket::Shutdown;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

use super::admission::MAX_HANDSHAKES;
use crate::codec::{ErrorCode, FrameCodec, Limits, OutFrame};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// Length of a HELLO frame on the wire: an 8-byte header and a 64-byte body.
pub(super) const HELLO_FRAME_LEN: usize = 8 + 72;

/// A handshake's slot: where the handshake stands with respect to its peer's HELLO, shared by
/// its task and the listener, which may take the slot only while the HELLO is not in.
#[derive(Debug)]
pub(super) struct HelloSlot {
    state: AtomicU8,
    /// The listener's copy of the socket, to look for the HELLO without reading it and to tell
    /// a client that is dropped unaccepted why (see [`Unaccepted`]).
    copy: Mutex<Option<OwnedFd>>,
}

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const EVICTED: u8 = 2;

impl HelloSlot {
    pub(super) fn new(sock: &OwnedFd) -> HelloSlot {
        HelloSlot {
            state: AtomicU8::new(WAITING),
            // Without a copy (out of descriptors) the client sees only the hang-up.
            copy: Mutex::new(sock.try_clone().ok()),
        }
    }

    /// The HELLO is in: the handshake may go on, unless the slot was taken first.
    fn start(&self) -> bool {
        self.state
            .compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Takes the slot if the handshake still waits for its HELLO.
    pub(super) fn evict(&self) -> bool {
        self.state
            .compare_exchange(WAITING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(super) fn waiting(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    fn evicted(&self) -> bool {
        self.state.load(Ordering::Acquire) == EVICTED
    }

    fn take_copy(&self) -> Option<OwnedFd> {
        self.copy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether a whole HELLO waits unread in the socket.
    pub(super) fn hello_buffered(&self) -> bool {
        let copy = self.copy.lock().unwrap_or_else(PoisonError::into_inner);
        copy.as_ref().is_some_and(|fd| {
            let mut buf = [0u8; HELLO_FRAME_LEN];
            matches!(sys::peek(fd.as_fd(), &mut buf), Ok(n) if n == HELLO_FRAME_LEN)
        })
    }
}

/// Waits until the peer's whole HELLO waits unread in the socket (or the peer has stopped
/// sending), then claims the handshake's slot and hands the socket back for the handshake.
///
/// A tokio-pvm client sends its HELLO as soon as it connects, so this normally returns at once.
/// Until it returns, the connection has cost one registration and no handshake work (no cookie,
/// no HELLO of ours, no `PR_SET_PTRACER`), and the listener may give its slot to a newer
/// connection. A client never waits for the listener's HELLO before sending its own, so the
/// listener's HELLO following the client's changes nothing for it.
pub(super) async fn wait_for_hello(
    sock: OwnedFd,
    pid: i32,
    unaccepted: &Unaccepted,
    deadline: Instant,
    config: &Config,
) -> Result<OwnedFd> {
    // Usually the HELLO is already there: no need to wait for readiness.
    let mut buf = [0u8; HELLO_FRAME_LEN];
    if matches!(sys::peek(sock.as_fd(), &mut buf), Ok(HELLO_FRAME_LEN)) {
        return match unaccepted.slot.start() {
            true => Ok(sock),
            false => Err(evicted(unaccepted)),
        };
    }
    let fd = sys::register(sock).map_err(|e| Error::io("registering an accepted socket", e))?;
    let arrived = async {
        loop {
            let mut guard = fd
                .readable()
                .await
                .map_err(|e| Error::io("polling an accepted socket", e))?;
            let finished = guard.ready().is_read_closed();
            let mut buf = [0u8; HELLO_FRAME_LEN];
            match guard.try_io(|fd| sys::peek(fd.as_fd(), &mut buf)) {
                Ok(Ok(0)) => {
                    return Err(Error::new(
                        ErrorKind::PeerGone,
                        format!(
                            "process {pid} closed its connection to {} before sending its HELLO",
                            unaccepted.reasons.path
                        ),
                    ));
                }
                // What a peer that stopped sending has sent (an ERROR frame, say) is for the
                // handshake to read.
                Ok(Ok(n)) if n == HELLO_FRAME_LEN || finished => return Ok(()),
                // Part of a frame. Peeking consumed nothing, so the readiness is cleared here
                // to wait for more; a readiness event newer than the guard's is kept.
                Ok(Ok(_)) => guard.clear_ready(),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(Error::io("reading an accepted socket", e)),
                Err(_would_block) => {}
            }
        }
    };
    match tokio::time::timeout_at(deadline, arrived).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the listener at {} dropped the connection from process {pid}: no complete \
                     HELLO arrived within {:?} of accepting it (a tokio-pvm client sends its \
                     HELLO at once; raise Config::hello_timeout on the listener if its clients \
                     stall between connecting and sending)",
                    unaccepted.reasons.path, config.hello_timeout
                ),
            ));
        }
    }
    match unaccepted.slot.start() {
        true => Ok(fd.into_inner()),
        false => Err(evicted(unaccepted)),
    }
}

/// The error of a handshake whose slot was given away.
fn evicted(unaccepted: &Unaccepted) -> Error {
    Error::new(ErrorKind::PeerGone, unaccepted.reasons.evicted.clone())
}

/// What clients dropped unaccepted are told.
#[derive(Debug)]
pub(super) struct Reasons {
    /// The listener's path, as shown.
    pub(super) path: String,
    /// The listener closed.
    pub(super) closed: String,
    /// Its slot went to a newer connection.
    pub(super) evicted: String,
}

impl Reasons {
    pub(super) fn new(path: &Path) -> Reasons {
        Reasons {
            path: path.display().to_string(),
            closed: format!(
                "the listener at {} closed before accepting this connection; connect again \
                 once a listener runs there",
                path.display()
            ),
            evicted: format!(
                "the listener at {} dropped this connection to make room: all its {MAX_HANDSHAKES} \
                 handshake slots were taken and this connection had not sent its HELLO (a \
                 tokio-pvm client sends it at once); connect again",
                path.display()
            ),
        }
    }
}

/// The listener's own copy of an accepted socket (kept in its [`HelloSlot`]), held until
/// [`Listener::accept`](super::Listener::accept) hands the connection out. Dropped before that
/// (the listener closed or gave the handshake's slot away, so its handshake task was aborted or
/// its finished connection discarded), it tells the client why, so that the client fails at
/// once with a clear error instead of seeing a bare hang-up.
pub(super) struct Unaccepted {
    slot: Arc<HelloSlot>,
    reasons: Arc<Reasons>,
}

impl Unaccepted {
    pub(super) fn new(slot: Arc<HelloSlot>, reasons: Arc<Reasons>) -> Unaccepted {
        Unaccepted { slot, reasons }
    }

    /// The connection was handed out, or its handshake failed (and the client was told
    /// why, or is gone): close the copy without a word.
    pub(super) fn release(self) {
        drop(self.slot.take_copy());
    }

    /// The client has not been told why it is dropped: tell it `reason` (or that its slot was
    /// given away, if it was).
    pub(super) fn refuse(self, reason: &str) {
        if let Some(fd) = self.slot.take_copy() {
            let reason = match self.slot.evicted() {
                true => &self.reasons.evicted,
                false => reason,
            };
            refuse(fd.as_fd(), ErrorCode::Other, reason);
        }
    }
}

impl Drop for Unaccepted {
    fn drop(&mut self) {
        if let Some(fd) = self.slot.take_copy() {
            let reason = match self.slot.evicted() {
                true => &self.reasons.evicted,
                false => &self.reasons.closed,
            };
            refuse(fd.as_fd(), ErrorCode::Other, reason);
        }
    }
}

/// Sends the client an ERROR frame with `code` and `reason` and shuts the socket down; best
/// effort and without blocking (a frame this small always fits in the socket buffer of a new
/// connection). The client fails with the code's error kind ([`ErrorKind::PeerGone`] for
/// [`ErrorCode::Other`]) and the reason, whether it is in its handshake (it reads frames
/// first, the hang-up after) or already connected.
pub(super) fn refuse(sock: BorrowedFd<'_>, code: ErrorCode, reason: &str) {
    let mut frame = BytesMut::new();
    let limits = Limits {
        max_message_size: 0,
        max_ranges: 0,
        max_inline: 0,
    };
    let error = OutFrame::Error { code, reason };
    if FrameCodec::new(limits).encode(error, &mut frame).is_ok() {
        let _ = sys::send(sock, &frame);
    }
    // Take what the client sent and nobody read (a partial HELLO, say), a little of it at
    // most: a Unix socket closed with unread data resets the peer (ECONNRESET), which could
    // then lose our ERROR frame instead of reading it and the end of the stream.
    let mut sink = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    for _ in 0..16 {
        if !matches!(sys::recv(sock, &mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = sys::shutdown(sock, Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{COOKIE_LEN, Hello, VERSION};

    #[test]
    fn hello_frame_len_is_what_the_codec_writes() {
        let hello = Hello {
            version: VERSION,
            cookie_addr: 0,
            cookie: [0; COOKIE_LEN],
            max_message_size: 1,
            window_messages: 1,
            window_bytes: 1,
            max_inline: 1,
            max_ranges: 1,
            loan_region: 0,
        };
        let limits = Limits {
            max_message_size: 0,
            max_ranges: 0,
            max_inline: 0,
        };
        let mut frame = BytesMut::new();
        FrameCodec::new(limits)
            .encode(OutFrame::Hello(&hello), &mut frame)
            .unwrap();
        assert_eq!(frame.len(), HELLO_FRAME_LEN);
    }

    #[test]
    fn a_slot_goes_to_the_handshake_or_to_eviction_not_both() {
        let (a, _b) = sys::stream_pair().unwrap();
        let slot = HelloSlot::new(&a);
        assert!(slot.waiting() && !slot.hello_buffered());
        assert!(slot.evict());
        assert!(!slot.start() && slot.evicted());
        let slot = HelloSlot::new(&a);
        assert!(slot.start());
        assert!(!slot.evict() && !slot.waiting());
    }

    #[test]
    fn a_whole_hello_in_the_socket_counts_as_arrived() {
        let (a, b) = sys::stream_pair().unwrap();
        let slot = HelloSlot::new(&a);
        sys::send(b.as_fd(), &[1; HELLO_FRAME_LEN - 1]).unwrap();
        assert!(!slot.hello_buffered());
        sys::send(b.as_fd(), &[1]).unwrap();
        assert!(slot.hello_buffered());
    }
}
