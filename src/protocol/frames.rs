//! Reading the control socket: frames are dispatched to the two directions, and the end of
//! the stream (or a reset) is judged for what it lost.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_core::Stream;
use tracing::debug;

use super::{Guard, Role, recv};
use crate::Mode;
use crate::codec::Frame;
use crate::error::{Error, ErrorKind, Result};

impl Guard<'_> {
    /// Reads and dispatches every frame available now. Returns whether anything happened.
    pub(super) fn drive_read(&mut self) -> bool {
        let mut progressed = false;
        while self.state.fatal.is_none() && !self.state.eof {
            let shared = self.shared;
            let mut cx = Context::from_waker(&shared.io_waker);
            match Pin::new(&mut self.state.io).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    progressed = true;
                    if let Err(e) = self.dispatch(frame) {
                        self.fail(e, true);
                    }
                }
                Poll::Ready(Some(Err(e))) if e.is_peer_gone() => {
                    // The stream ended inside a frame.
                    progressed = true;
                    let peer = self.state.peer_name.clone();
                    let err = Error::new(
                        ErrorKind::PeerGone,
                        format!(
                            "peer {peer} closed the connection in the middle of a frame: it \
                             exited, was killed, or the connection was cut; what it was sending \
                             was lost"
                        ),
                    );
                    self.fail(err, false);
                }
                Poll::Ready(Some(Err(e))) => {
                    progressed = true;
                    if is_reset(&e) {
                        // The peer closed its end with our messages unread: like an end of
                        // stream, which says whether anything was lost.
                        self.on_eof();
                    } else {
                        let tell_peer = !e.is_peer_gone() && e.kind() != ErrorKind::Io;
                        self.fail(e, tell_peer);
                    }
                }
                Poll::Ready(None) => {
                    progressed = true;
                    self.on_eof();
                }
                Poll::Pending => break,
            }
        }
        if progressed {
            self.ack_if_urgent();
        }
        progressed
    }

    pub(super) fn dispatch(&mut self, frame: Frame) -> Result<()> {
        match frame {
            Frame::Ack { count } => {
                self.state.send.on_ack(count)?;
                // Room in the window: whoever reads the acknowledgement sends what a dropped
                // sender left, then closes for it.
                self.send_backlog();
                self.close_if_dropped();
                self.notify(Role::Send);
                Ok(())
            }
            Frame::Stop { delivered } => {
                self.state.send.on_stop()?;
                debug!(delivered, "peer closed its receiving side");
                self.shared.send_ready.store(false, Ordering::Release);
                self.notify(Role::Send);
                Ok(())
            }
            Frame::Data(desc) => {
                if let Mode::Inline(_) = self.shared.modes.recv {
                    return Err(Error::protocol(
                        "DATA descriptor received, but this side asked for inline messages",
                    ));
                }
                let len = desc.len;
                self.on_message(desc.seq, len, recv::Incoming::Pull(desc))
            }
            Frame::Inline { seq, payload } => {
                let len = payload.len() as u64;
                self.on_message(seq, len, recv::Incoming::Inline(payload))
            }
            Frame::Batch(mut batch) => {
                let mut seq = batch.seq;
                while let Some(payload) = batch.next_message() {
                    let len = payload.len() as u64;
                    self.on_message(seq, len, recv::Incoming::Inline(payload))?;
                    seq = seq.wrapping_add(1);
                }
                Ok(())
            }
            Frame::Close { sent } => {
                self.state.recv.on_close(sent)?;
                debug!(sent, "peer closed its sending side");
                self.notify(Role::Recv);
                Ok(())
            }
            Frame::Error { code, reason } => {
                let kind = code.kind();
                let peer = self.state.peer_name.clone();
                self.fail(
                    Error::new(kind, format!("peer {peer} ended the connection: {reason}")),
                    false,
                );
                Ok(())
            }
            Frame::Shared { seq, offset, len } => {
                let Some(region) = &self.state.borrow else {
                    return Err(Error::protocol(
                        "SHARED message received, but this side mapped no loan region of the peer",
                    ));
                };
                let max = self.state.limits.recv_max_message;
                if len > max {
                    return Err(Error::limit(format!(
                        "the peer announced a {len}-byte loaned message, larger than this \
                         side's limit of {max} bytes; raise Config::max_message_size on the \
                         receiver"
                    )));
                }
                let Some(data) = region.message(offset, len) else {
                    return Err(Error::protocol(format!(
                        "SHARED message of {len} bytes at offset {offset} is empty or lies \
                         outside the peer's loan region"
                    )));
                };
                self.on_message(seq, len, recv::Incoming::Inline(data))
            }
            Frame::Release(releases) => self.on_release(releases),
            Frame::Sync { sent } => self.state.recv.on_sync(sent),
            Frame::Hello(_) | Frame::Ready { .. } | Frame::Region { .. } => Err(Error::protocol(
                "handshake frame received after the handshake",
            )),
        }
    }

    pub(super) fn on_eof(&mut self) {
        self.shared.send_ready.store(false, Ordering::Release);
        self.state.eof = true;
        let peer = self.state.peer_name.clone();
        let st = &mut *self.state;
        if st.send.stopped() {
            // The peer said it discards what we send: what it did not acknowledge is not lost.
            st.send.discard_in_flight();
        }
        // Messages announced and not received yet are discarded by `fail`: they are lost.
        let lost = st.recv.not_received();
        let ours = st.send.in_flight().0;
        if !st.recv.ended_cleanly() {
            self.fail(
                Error::new(
                    ErrorKind::PeerGone,
                    format!(
                        "peer {peer} closed the connection without closing its sending \
                         side ({lost} of its messages and {ours} of ours in flight were not \
                         received): it exited, was killed, or its unsent messages were \
                         abandoned (Config::linger)"
                    ),
                ),
                false,
            );
        } else if ours > 0 {
            self.fail(
                Error::new(
                    ErrorKind::PeerGone,
                    format!(
                        "peer {peer} closed the connection with {ours} of our messages \
                         not yet received"
                    ),
                ),
                false,
            );
        } else {
            self.notify(Role::Send);
            self.notify(Role::Recv);
        }
    }
}

/// A reset or broken connection: the peer closed its end.
pub(super) fn is_reset(e: &Error) -> bool {
    matches!(
        e.source_kind(),
        Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
    )
}
