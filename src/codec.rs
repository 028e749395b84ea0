//! The wire format of the control socket.
//!
//! Every frame is an 8-byte header followed by a body. All integers are little-endian.
//!
//! ```text
//! header:  type u8 | flags u8 (0) | reserved u16 (0) | body length u32
//! ```
//!
//! | type | name   | body |
//! |------|--------|------|
//! | 1    | HELLO  | 72 bytes: magic `TOKIOPVM`, version u16, reserved u16, window messages u32, cookie address u64, cookie [16], max message size u64, window bytes u64, max inline size u32, max ranges u32, loan region size u64 (0: no zero-copy lane) |
//! | 2    | READY  | flags u32, reserved u32: "I checked your cookie"; flag 1 = "I cannot pull from you, send me every message inline"; flag 2 = "I mapped your loan region: send loaned messages as SHARED" |
//! | 3    | DATA   | sequence u64, total length u64, range count u32, reserved u32, then per range: address u64, length u64 |
//! | 4    | BATCH  | first sequence u64, then one or more inline messages, each a length u32 and the payload; the body is no larger than an INLINE body may be, so no entry exceeds the largest message |
//! | 5    | INLINE | sequence u64, then the payload |
//! | 6    | ACK    | count u64: every message with a sequence number below `count` has been received |
//! | 7    | CLOSE  | sent u64: how many messages the sender sent in total; no DATA or INLINE follows (ACKs for the other direction may) |
//! | 8    | ERROR  | code u32, reserved u32, reason (at most 1024 bytes, UTF-8, decoded lossily); the sender shuts the socket down next |
//! | 9    | STOP   | delivered u64: the receiving side was closed; every later message is acknowledged and discarded |
//! | 10   | REGION | size u64, reserved u64; sent once, in the handshake, with the loan region's memfd attached (`SCM_RIGHTS`) |
//! | 11   | SHARED | sequence u64, offset u64, length u64: a message in the sender's loan region, read in place |
//! | 12   | RELEASE | count u32, reserved u32, then count offsets u64: loaned messages the receiver's application dropped |
//! | 13   | SYNC   | sent u64: the sender waits for the acknowledgement of its first `sent` messages (every message it sent so far): acknowledge them as soon as they are received |
//!
//! Every body length is checked against the receiver's limits as soon as the header arrives,
//! before any room is reserved for the body; counts and lengths inside the body are checked
//! when it is complete, before anything is allocated for the message itself. An unknown
//! type, a non-zero flag or reserved field, or a malformed body is a protocol error. The full
//! description, with the handshake and the rules for sequence numbers, is in
//! `docs/PROTOCOL.md`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::Error;
use crate::sys::RemoteRange;

/// Protocol version spoken by this crate.
pub(crate) const VERSION: u16 = 5;
/// First bytes of every HELLO body.
pub(crate) const MAGIC: [u8; 8] = *b"TOKIOPVM";
/// Size of the handshake cookie.
pub(crate) const COOKIE_LEN: usize = 16;
/// Longest reason an ERROR frame may carry.
pub(crate) const MAX_ERROR_TEXT: usize = 1024;

const HEADER_LEN: usize = 8;
/// READY flag: "I cannot read your memory; send me every message inline".
pub(crate) const READY_INLINE: u32 = 1;
/// READY flag: "I mapped your loan region; send loaned messages as SHARED".
pub(crate) const READY_SHARED: u32 = 2;
const HELLO_LEN: usize = 72;
const REGION_LEN: usize = 16;
const SHARED_LEN: usize = 24;
/// Fixed part of a RELEASE body (the count).
const RELEASE_FIXED: usize = 8;
/// Most offsets one RELEASE frame carries.
pub(crate) const MAX_RELEASES: usize = 4096;
const DATA_FIXED: usize = 24;
const RANGE_LEN: usize = 16;
/// Fixed part of a BATCH body (the first sequence number).
pub(crate) const BATCH_FIXED: usize = 8;
/// Length prefix of each message in a BATCH body.
const BATCH_ENTRY: usize = 4;

const T_HELLO: u8 = 1;
const T_READY: u8 = 2;
const T_DATA: u8 = 3;
const T_BATCH: u8 = 4;
const T_INLINE: u8 = 5;
const T_ACK: u8 = 6;
const T_CLOSE: u8 = 7;
const T_ERROR: u8 = 8;
const T_STOP: u8 = 9;
const T_REGION: u8 = 10;
const T_SHARED: u8 = 11;
const T_RELEASE: u8 = 12;
const T_SYNC: u8 = 13;
const T_PART: u8 = 14;

/// Fixed part of a PART body: sequence number and the message's total length.
const PART_FIXED: usize = 16;

/// Largest payload one PART frame carries. A sender cuts an inline message larger than
/// [`PART_SIZE`] into parts of at most that size; a receiver accepts parts up to this.
pub(crate) const MAX_PART: usize = 1 << 20;

/// The size of the parts this side cuts large inline messages into: a message of more than
/// this travels in PART frames, so that the write buffer holds about a part of it at a time.
pub(crate) const PART_SIZE: usize = 256 << 10;

/// Codes carried by an ERROR frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum ErrorCode {
    /// The peer's uid is not accepted.
    Refused = 1,
    /// Reading the peer's memory failed.
    PullFailed = 2,
    /// The cookie read from the peer's memory did not match.
    CookieMismatch = 3,
    /// The peer broke the protocol.
    Protocol = 4,
    /// The peer exceeded a limit.
    Limit = 5,
    /// Incompatible protocol version.
    Version = 6,
    /// Anything else.
    Other = 7,
}

impl ErrorCode {
    /// The error kind a peer's ERROR frame with this code is reported as.
    pub(crate) fn kind(self) -> crate::ErrorKind {
        use crate::ErrorKind;
        match self {
            ErrorCode::Refused | ErrorCode::PullFailed => ErrorKind::PermissionDenied,
            ErrorCode::Limit => ErrorKind::LimitExceeded,
            ErrorCode::Protocol | ErrorCode::CookieMismatch | ErrorCode::Version => {
                ErrorKind::Protocol
            }
            ErrorCode::Other => ErrorKind::PeerGone,
        }
    }

    pub(crate) fn from_u32(code: u32) -> ErrorCode {
        match code {
            1 => ErrorCode::Refused,
            2 => ErrorCode::PullFailed,
            3 => ErrorCode::CookieMismatch,
            4 => ErrorCode::Protocol,
            5 => ErrorCode::Limit,
            6 => ErrorCode::Version,
            _ => ErrorCode::Other,
        }
    }
}

/// What one side announces in its HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u16,
    pub(crate) cookie_addr: u64,
    pub(crate) cookie: [u8; COOKIE_LEN],
    pub(crate) max_message_size: u64,
    pub(crate) window_messages: u32,
    pub(crate) window_bytes: u64,
    pub(crate) max_inline: u32,
    pub(crate) max_ranges: u32,
    /// Size of the loan region this side offers for its sends (0: none); a side that offers
    /// one also accepts the peer's.
    pub(crate) loan_region: u64,
}

/// A data descriptor: a message the receiver is to pull from the sender's memory.
///
/// The ranges stay in the received buffer (no allocation); [`Descriptor::ranges`] walks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub(crate) seq: u64,
    pub(crate) len: u64,
    ranges: Bytes,
}

impl Descriptor {
    /// The address ranges in the sender's memory, in order; their lengths add up to `len`.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = RemoteRange> + '_ {
        self.ranges
            .chunks_exact(RANGE_LEN)
            .map(|mut c| RemoteRange {
                addr: c.get_u64_le(),
                len: c.get_u64_le(),
            })
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Hello(Hello),
    /// `flags & READY_INLINE`: the sender of READY cannot pull and asks for every message
    /// inline. (A `u32` rather than a `bool`: a one-byte field here made every move of a
    /// decoded frame slower, measured on the 64 B benchmark.)
    Ready {
        flags: u32,
    },
    Data(Descriptor),
    Inline {
        seq: u64,
        payload: Bytes,
    },
    /// Inline messages with consecutive sequence numbers from `seq`, already checked to be
    /// well-formed; [`Batch::next_message`] walks them.
    Batch(Batch),
    Ack {
        count: u64,
    },
    Close {
        sent: u64,
    },
    /// The peer's application closed its receiving side; it acknowledges and discards every
    /// message from now on. `delivered` is how many it had handed to the application.
    Stop {
        delivered: u64,
    },
    /// The peer waits for the acknowledgement of its first `sent` messages.
    Sync {
        sent: u64,
    },
    Error {
        code: ErrorCode,
        reason: String,
    },
    /// The peer's loan region: its size (the descriptor came with the bytes).
    Region {
        size: u64,
    },
    /// A message at `offset` of the peer's loan region.
    Shared {
        seq: u64,
        offset: u64,
        len: u64,
    },
    /// Offsets of loaned messages the peer's application dropped; [`Releases::next_offset`]
    /// walks them.
    Release(Releases),
}

/// The offsets of a RELEASE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Releases(Bytes);

impl Releases {
    /// Takes the next offset off the frame, or `None` when it is empty.
    pub(crate) fn next_offset(&mut self) -> Option<u64> {
        (self.0.len() >= 8).then(|| self.0.get_u64_le())
    }
}

/// The messages of a BATCH frame: a checked body of `length u32, payload` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) seq: u64,
    entries: Bytes,
}

impl Batch {
    /// Takes the next message off the batch, or `None` when it is empty.
    pub(crate) fn next_message(&mut self) -> Option<Bytes> {
        if self.entries.len() < BATCH_ENTRY {
            return None;
        }
        let len = self.entries.get_u32_le() as usize;
        // The decoder checked that every entry's payload is within the body.
        Some(self.entries.split_to(len))
    }
}

/// A frame to encode. Borrows what it sends, so encoding allocates nothing but room in the
/// write buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OutFrame<'a> {
    Hello(&'a Hello),
    Ready {
        flags: u32,
    },
    Data {
        seq: u64,
        ranges: &'a [RemoteRange],
    },
    Inline {
        seq: u64,
        payload: &'a [u8],
    },
    Ack {
        count: u64,
    },
    Close {
        sent: u64,
    },
    Stop {
        delivered: u64,
    },
    Sync {
        sent: u64,
    },
    Error {
        code: ErrorCode,
        reason: &'a str,
    },
    Shared {
        seq: u64,
        offset: u64,
        len: u64,
    },
    Release {
        offsets: &'a [u64],
    },
    /// One part of inline message `seq` of `total` bytes: the next `payload.len()` bytes.
    Part {
        seq: u64,
        total: u64,
        payload: &'a [u8],
    },
}

/// What the decoder accepts: this side's receive limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_message_size: u64,
    pub(crate) max_ranges: u32,
    pub(crate) max_inline: u32,
}

/// Encoder and decoder for control-socket frames.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    limits: Limits,
    /// Header of a frame whose body has not fully arrived: (type, body length).
    pending: Option<(u8, usize)>,
    /// The inline message whose PART frames are arriving: sequence number, total length,
    /// the bytes so far.
    partial: Option<(u64, u64, Vec<u8>)>,
    /// The peer sends every message inline (see [`FrameCodec::accept_inline_messages`]).
    inline_mode: bool,
}

impl FrameCodec {
    /// Accepts inline payloads up to the largest message: the peer sends everything inline.
    /// Accepts inline messages up to the largest message: the peer sends everything inline,
    /// those above [`PART_SIZE`] in PART frames. One INLINE or BATCH frame (and one part)
    /// may then carry up to [`MAX_PART`], so that no single header makes this side reserve
    /// more than that.
    pub(crate) fn accept_inline_messages(&mut self) {
        self.inline_mode = true;
        self.limits.max_inline = u32::try_from(self.limits.max_message_size)
            .unwrap_or(u32::MAX)
            .min(MAX_PART as u32);
    }

    pub(crate) fn new(limits: Limits) -> FrameCodec {
        FrameCodec {
            limits,
            pending: None,
            partial: None,
            inline_mode: false,
        }
    }

    /// Largest body a frame of type `ty` may have under the current limits, or an error for an
    /// unknown type.
    fn max_body(&self, ty: u8) -> Result<(usize, usize), Error> {
        let l = &self.limits;
        Ok(match ty {
            T_HELLO => (HELLO_LEN, HELLO_LEN),
            T_READY => (8, 8),
            T_DATA => (DATA_FIXED, DATA_FIXED + RANGE_LEN * l.max_ranges as usize),
            T_INLINE => {
                let max = u64::from(l.max_inline).min(l.max_message_size);
                (8, 8 + max as usize)
            }
            T_BATCH => {
                // No more inline bytes than one INLINE frame may carry, and so no entry larger
                // than the largest message.
                let max = u64::from(l.max_inline).min(l.max_message_size);
                (BATCH_FIXED + BATCH_ENTRY, BATCH_FIXED + max as usize)
            }
            T_PART => {
                // No larger than an INLINE frame may be (so parts come only from a peer that
                // sends inline), nor than MAX_PART.
                let max = u64::from(l.max_inline).min(l.max_message_size);
                (PART_FIXED + 1, PART_FIXED + (max as usize).min(MAX_PART))
            }
            T_ACK | T_CLOSE | T_STOP | T_SYNC => (8, 8),
            T_ERROR => (8, 8 + MAX_ERROR_TEXT),
            T_REGION => (REGION_LEN, REGION_LEN),
            T_SHARED => (SHARED_LEN, SHARED_LEN),
            T_RELEASE => (RELEASE_FIXED + 8, RELEASE_FIXED + 8 * MAX_RELEASES),
            other => return Err(Error::protocol(format!("unknown frame type {other}"))),
        })
    }

    /// One PART frame: the first one of a message opens it (its total length checked
    /// against the limits, and larger than a PART could carry alone is not required: a
    /// sender decides), the others must continue it; the last one completes it, and the
    /// message comes out as an INLINE frame would.
    fn decode_part(&mut self, mut body: BytesMut) -> Result<Option<Frame>, Error> {
        let seq = body.get_u64_le();
        let total = body.get_u64_le();
        // A peer that sends inline may send messages up to the largest; otherwise no larger
        // than an INLINE frame could carry.
        let max = match self.inline_mode {
            true => self.limits.max_message_size,
            false => self
                .limits
                .max_message_size
                .min(u64::from(self.limits.max_inline)),
        };
        let (partial_seq, partial_total, buf) = match self.partial.as_mut() {
            Some(p) => p,
            None => {
                if total > max {
                    return Err(Error::limit(format!(
                        "the peer sent the first part of a {total}-byte inline message, more \
                         than the {max} bytes this side accepts"
                    )));
                }
                self.partial.insert((seq, total, Vec::new()))
            }
        };
        if seq != *partial_seq || total != *partial_total {
            return Err(Error::protocol(format!(
                "a PART frame for message {seq} of {total} bytes came while message \
                 {partial_seq} of {partial_total} bytes was incomplete"
            )));
        }
        let have = buf.len() as u64;
        if have + body.len() as u64 > total {
            return Err(Error::protocol(format!(
                "the parts of message {seq} carry more than its {total} bytes"
            )));
        }
        // Grown as the parts arrive (a peer that announces a large message and stalls holds
        // no more than twice what it sent), doubling, but never beyond the message's size.
        let room = buf.capacity() - buf.len();
        if room < body.len() {
            let left = usize::try_from(total - have).unwrap_or(usize::MAX);
            let grow = buf.len().max(body.len()).min(left);
            buf.reserve_exact(grow.max(body.len()));
        }
        buf.extend_from_slice(&body);
        if buf.len() as u64 == total {
            let (seq, _, buf) = self.partial.take().expect("checked above");
            return Ok(Some(Frame::Inline {
                seq,
                payload: Bytes::from(buf),
            }));
        }
        Ok(None)
    }

    fn decode_body(&self, ty: u8, mut body: Bytes) -> Result<Frame, Error> {
        Ok(match ty {
            T_HELLO => {
                let mut magic = [0u8; 8];
                body.copy_to_slice(&mut magic);
                if magic != MAGIC {
                    return Err(Error::protocol(
                        "the peer is not a tokio-pvm endpoint (bad HELLO magic)",
                    ));
                }
                let version = body.get_u16_le();
                expect_zero(body.get_u16_le() as u64, "HELLO reserved field")?;
                let window_messages = body.get_u32_le();
                let cookie_addr = body.get_u64_le();
                let mut cookie = [0u8; COOKIE_LEN];
                body.copy_to_slice(&mut cookie);
                Frame::Hello(Hello {
                    version,
                    cookie_addr,
                    cookie,
                    max_message_size: body.get_u64_le(),
                    window_messages,
                    window_bytes: body.get_u64_le(),
                    max_inline: body.get_u32_le(),
                    max_ranges: body.get_u32_le(),
                    loan_region: body.get_u64_le(),
                })
            }
            T_READY => {
                let flags = body.get_u32_le();
                expect_zero(body.get_u32_le() as u64, "READY reserved field")?;
                if flags & !(READY_INLINE | READY_SHARED) != 0 {
                    return Err(Error::protocol(format!(
                        "READY has unknown flags {flags:#x}"
                    )));
                }
                Frame::Ready { flags }
            }
            T_DATA => {
                let seq = body.get_u64_le();
                let len = body.get_u64_le();
                let count = body.get_u32_le();
                expect_zero(body.get_u32_le() as u64, "DATA reserved field")?;
                if count > self.limits.max_ranges {
                    return Err(Error::limit(format!(
                        "the peer sent a descriptor with {count} address ranges, more than the \
                         limit of {}",
                        self.limits.max_ranges
                    )));
                }
                if body.len() != count as usize * RANGE_LEN {
                    return Err(Error::protocol(format!(
                        "DATA frame announces {count} ranges but carries {} bytes of ranges",
                        body.len()
                    )));
                }
                if len > self.limits.max_message_size {
                    return Err(Error::limit(format!(
                        "the peer announced a {len}-byte message, larger than this side's limit \
                         of {} bytes; raise Config::max_message_size on the receiver",
                        self.limits.max_message_size
                    )));
                }
                let desc = Descriptor {
                    seq,
                    len,
                    ranges: body,
                };
                let mut sum = 0u64;
                for r in desc.ranges() {
                    if r.len == 0 {
                        return Err(Error::protocol("DATA frame carries an empty address range"));
                    }
                    if r.addr.checked_add(r.len).is_none() {
                        return Err(Error::protocol("DATA frame range wraps the address space"));
                    }
                    sum = sum
                        .checked_add(r.len)
                        .ok_or_else(|| Error::protocol("DATA frame range lengths overflow"))?;
                }
                if sum != len {
                    return Err(Error::protocol(format!(
                        "DATA frame announces {len} bytes but its ranges add up to {sum}"
                    )));
                }
                Frame::Data(desc)
            }
            T_INLINE => {
                let seq = body.get_u64_le();
                Frame::Inline { seq, payload: body }
            }
            T_BATCH => {
                let seq = body.get_u64_le();
                let mut rest = &body[..];
                while !rest.is_empty() {
                    if rest.len() < BATCH_ENTRY {
                        return Err(Error::protocol(format!(
                            "BATCH frame ends with {} stray bytes",
                            rest.len()
                        )));
                    }
                    let len = rest.get_u32_le() as usize;
                    if len > rest.len() {
                        return Err(Error::protocol(format!(
                            "BATCH frame entry of {len} bytes runs past the frame's end ({} \
                             bytes left)",
                            rest.len()
                        )));
                    }
                    rest.advance(len);
                }
                Frame::Batch(Batch { seq, entries: body })
            }
            T_ACK => Frame::Ack {
                count: body.get_u64_le(),
            },
            T_CLOSE => Frame::Close {
                sent: body.get_u64_le(),
            },
            T_STOP => Frame::Stop {
                delivered: body.get_u64_le(),
            },
            T_SYNC => Frame::Sync {
                sent: body.get_u64_le(),
            },
            T_ERROR => {
                let code = ErrorCode::from_u32(body.get_u32_le());
                expect_zero(body.get_u32_le() as u64, "ERROR reserved field")?;
                let reason = String::from_utf8_lossy(&body).into_owned();
                Frame::Error { code, reason }
            }
            T_REGION => {
                let size = body.get_u64_le();
                expect_zero(body.get_u64_le(), "REGION reserved field")?;
                Frame::Region { size }
            }
            T_SHARED => Frame::Shared {
                seq: body.get_u64_le(),
                offset: body.get_u64_le(),
                len: body.get_u64_le(),
            },
            T_RELEASE => {
                let count = body.get_u32_le() as usize;
                expect_zero(body.get_u32_le() as u64, "RELEASE reserved field")?;
                if count == 0 || body.len() != count * 8 {
                    return Err(Error::protocol(format!(
                        "RELEASE frame announces {count} offsets but carries {} bytes of them",
                        body.len()
                    )));
                }
                Frame::Release(Releases(body))
            }
            _ => unreachable!("max_body rejected unknown types"),
        })
    }
}

/// Room the read buffer is given for the next read of the socket when it runs low.
const READ_ROOM: usize = 32 << 10;

/// Makes room in the read buffer for at least the `more` bytes the frame being read still
/// needs. The buffer is shared with the payloads of earlier inline frames (their `Bytes`),
/// so running out of room means a new allocation: it is made for a read of [`READ_ROOM`]
/// at a time, not a few bytes, so that reads are large and allocations rare; while a quarter
/// of that is left, the room there is used as it is. (An inline message the application
/// keeps keeps its chunk of the buffer alive, as with any codec that hands out parts of its
/// read buffer; a `ByteStream` copies and lets go at once.)
fn make_room(src: &mut BytesMut, more: usize) {
    if src.capacity() - src.len() < more.max(READ_ROOM / 4) {
        src.reserve(more.max(READ_ROOM));
    }
}

fn expect_zero(value: u64, what: &str) -> Result<(), Error> {
    if value != 0 {
        return Err(Error::protocol(format!("{what} is {value}, must be 0")));
    }
    Ok(())
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        // A PART that does not complete its message yields nothing: go on with the next
        // frame in the buffer (returning `None` would wait for more bytes from the socket).
        loop {
            let (ty, body_len) = match self.pending {
                Some(p) => p,
                None => {
                    if src.len() < HEADER_LEN {
                        make_room(src, HEADER_LEN - src.len());
                        return Ok(None);
                    }
                    let ty = src[0];
                    let flags = src[1];
                    let reserved = u16::from_le_bytes([src[2], src[3]]);
                    let body_len = u32::from_le_bytes([src[4], src[5], src[6], src[7]]) as usize;
                    let (min, max) = self.max_body(ty)?;
                    if flags != 0 || reserved != 0 {
                        return Err(Error::protocol(format!(
                            "frame type {ty} has flags {flags:#x} and reserved {reserved:#x}; both \
                             must be 0 in protocol version {VERSION}"
                        )));
                    }
                    if body_len < min || body_len > max {
                        return Err(match ty {
                            T_INLINE if body_len > max => Error::limit(format!(
                                "the peer sent an inline payload of {} bytes, more than the {} \
                                 this side accepts",
                                body_len - 8,
                                max - 8
                            )),
                            T_BATCH if body_len > max => Error::limit(format!(
                                "the peer sent a batch of inline messages of {} bytes, more than \
                                 the {} this side accepts in one frame",
                                body_len - BATCH_FIXED,
                                max - BATCH_FIXED
                            )),
                            T_DATA if body_len > max => Error::limit(format!(
                                "the peer sent a descriptor with more than {} address ranges",
                                self.limits.max_ranges
                            )),
                            _ => Error::protocol(format!(
                                "frame type {ty} has a {body_len}-byte body; allowed {min}..={max}"
                            )),
                        });
                    }
                    src.advance(HEADER_LEN);
                    self.pending = Some((ty, body_len));
                    (ty, body_len)
                }
            };
            if src.len() < body_len {
                // The body length was checked against the limits above.
                make_room(src, body_len - src.len());
                return Ok(None);
            }
            self.pending = None;
            if ty == T_PART {
                match self.decode_part(src.split_to(body_len))? {
                    Some(frame) => return Ok(Some(frame)),
                    None => continue,
                }
            }
            if self.partial.is_some() && !matches!(ty, T_ACK | T_STOP | T_RELEASE | T_ERROR) {
                let (seq, total, got) = self
                    .partial
                    .as_ref()
                    .map_or((0, 0, 0), |p| (p.0, p.1, p.2.len()));
                return Err(Error::protocol(format!(
                    "frame type {ty} arrived while message {seq} had {got} of its {total} bytes; \
                     only acknowledgements, STOP, RELEASE and ERROR may come between the parts \
                     of a message"
                )));
            }
            let body = src.split_to(body_len).freeze();
            let frame = self.decode_body(ty, body)?;
            return Ok(Some(frame));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && self.pending.is_none() => Ok(None),
            None => Err(Error::new(
                crate::ErrorKind::PeerGone,
                "the peer closed the control socket in the middle of a frame",
            )),
        }
    }
}

/// A REGION frame announcing a loan region of `size` bytes (its memfd travels with it).
pub(crate) fn region_frame(size: u64) -> BytesMut {
    let mut dst = BytesMut::new();
    put_header(&mut dst, T_REGION, REGION_LEN);
    dst.put_u64_le(size);
    dst.put_u64_le(0);
    dst
}

/// Bytes a message adds to a BATCH body.
pub(crate) const fn batch_entry_len(payload: usize) -> usize {
    BATCH_ENTRY + payload
}

/// Bytes a BATCH frame holding one message of `payload` bytes adds to the write buffer.
pub(crate) const fn batch_body_len(payload: usize) -> usize {
    BATCH_FIXED + batch_entry_len(payload)
}

/// Writes a BATCH frame holding one message; returns where the frame starts in `dst`, for
/// [`append_to_batch`].
pub(crate) fn start_batch(dst: &mut BytesMut, seq: u64, payload: &[u8]) -> usize {
    let at = dst.len();
    put_header(dst, T_BATCH, batch_body_len(payload.len()));
    dst.put_u64_le(seq);
    dst.put_u32_le(payload.len() as u32);
    dst.put_slice(payload);
    at
}

/// Appends a message (whose sequence number follows the batch's last) to the BATCH frame that
/// starts at `at` and ends `dst`. The caller keeps the body within the peer's limit.
pub(crate) fn append_to_batch(dst: &mut BytesMut, at: usize, payload: &[u8]) {
    debug_assert_eq!(dst[at], T_BATCH);
    let body = dst.len() - at - HEADER_LEN + batch_entry_len(payload.len());
    dst.reserve(batch_entry_len(payload.len()));
    dst.put_u32_le(payload.len() as u32);
    dst.put_slice(payload);
    dst[at + 4..at + 8].copy_from_slice(&(body as u32).to_le_bytes());
}

fn put_header(dst: &mut BytesMut, ty: u8, body_len: usize) {
    dst.reserve(HEADER_LEN + body_len);
    dst.put_u8(ty);
    dst.put_u8(0);
    dst.put_u16_le(0);
    // Callers bound every body far below 4 GiB.
    dst.put_u32_le(body_len as u32);
}

impl Encoder<OutFrame<'_>> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, frame: OutFrame<'_>, dst: &mut BytesMut) -> Result<(), Error> {
        match frame {
            OutFrame::Hello(h) => {
                put_header(dst, T_HELLO, HELLO_LEN);
                dst.put_slice(&MAGIC);
                dst.put_u16_le(h.version);
                dst.put_u16_le(0);
                dst.put_u32_le(h.window_messages);
                dst.put_u64_le(h.cookie_addr);
                dst.put_slice(&h.cookie);
                dst.put_u64_le(h.max_message_size);
                dst.put_u64_le(h.window_bytes);
                dst.put_u32_le(h.max_inline);
                dst.put_u32_le(h.max_ranges);
                dst.put_u64_le(h.loan_region);
            }
            OutFrame::Ready { flags } => {
                put_header(dst, T_READY, 8);
                dst.put_u32_le(flags);
                dst.put_u32_le(0);
            }
            OutFrame::Shared { seq, offset, len } => {
                put_header(dst, T_SHARED, SHARED_LEN);
                dst.put_u64_le(seq);
                dst.put_u64_le(offset);
                dst.put_u64_le(len);
            }
            OutFrame::Release { offsets } => {
                put_header(dst, T_RELEASE, RELEASE_FIXED + 8 * offsets.len());
                dst.put_u32_le(offsets.len() as u32);
                dst.put_u32_le(0);
                for &o in offsets {
                    dst.put_u64_le(o);
                }
            }
            OutFrame::Data { seq, ranges } => {
                let len: u64 = ranges.iter().map(|r| r.len).sum();
                put_header(dst, T_DATA, DATA_FIXED + RANGE_LEN * ranges.len());
                dst.put_u64_le(seq);
                dst.put_u64_le(len);
                dst.put_u32_le(ranges.len() as u32);
                dst.put_u32_le(0);
                for r in ranges {
                    dst.put_u64_le(r.addr);
                    dst.put_u64_le(r.len);
                }
            }
            OutFrame::Inline { seq, payload } => {
                put_header(dst, T_INLINE, 8 + payload.len());
                dst.put_u64_le(seq);
                dst.put_slice(payload);
            }
            OutFrame::Part {
                seq,
                total,
                payload,
            } => {
                put_header(dst, T_PART, PART_FIXED + payload.len());
                dst.put_u64_le(seq);
                dst.put_u64_le(total);
                dst.put_slice(payload);
            }
            OutFrame::Ack { count } => {
                put_header(dst, T_ACK, 8);
                dst.put_u64_le(count);
            }
            OutFrame::Close { sent } => {
                put_header(dst, T_CLOSE, 8);
                dst.put_u64_le(sent);
            }
            OutFrame::Stop { delivered } => {
                put_header(dst, T_STOP, 8);
                dst.put_u64_le(delivered);
            }
            OutFrame::Sync { sent } => {
                put_header(dst, T_SYNC, 8);
                dst.put_u64_le(sent);
            }
            OutFrame::Error { code, reason } => {
                let mut end = reason.len().min(MAX_ERROR_TEXT);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                put_header(dst, T_ERROR, 8 + end);
                dst.put_u32_le(code as u32);
                dst.put_u32_le(0);
                dst.put_slice(&reason.as_bytes()[..end]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_message_size: 1 << 20,
            max_ranges: 4,
            max_inline: 64,
        }
    }

    fn roundtrip(frame: OutFrame<'_>) -> Frame {
        let mut codec = FrameCodec::new(limits());
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).unwrap();
        // Feed it one byte at a time: every prefix is a partial frame.
        let mut src = BytesMut::new();
        let total = buf.len();
        for (i, b) in buf.iter().enumerate() {
            src.put_u8(*b);
            let out = codec.decode(&mut src).unwrap();
            if i + 1 < total {
                assert!(out.is_none(), "frame decoded early at byte {i}");
            } else {
                assert!(src.is_empty());
                return out.expect("complete frame decodes");
            }
        }
        unreachable!()
    }

    #[test]
    fn every_frame_roundtrips() {
        let hello = Hello {
            version: VERSION,
            cookie_addr: 0xdead_beef,
            cookie: [7; COOKIE_LEN],
            max_message_size: 99,
            window_messages: 3,
            window_bytes: 1000,
            max_inline: 12,
            max_ranges: 9,
            loan_region: 1 << 20,
        };
        assert_eq!(
            roundtrip(OutFrame::Hello(&hello)),
            Frame::Hello(hello.clone())
        );
        assert_eq!(
            roundtrip(OutFrame::Ready { flags: 0 }),
            Frame::Ready { flags: 0 }
        );
        assert_eq!(
            roundtrip(OutFrame::Ready {
                flags: READY_INLINE | READY_SHARED
            }),
            Frame::Ready {
                flags: READY_INLINE | READY_SHARED
            }
        );
        assert_eq!(
            roundtrip(OutFrame::Shared {
                seq: 4,
                offset: 4096,
                len: 77
            }),
            Frame::Shared {
                seq: 4,
                offset: 4096,
                len: 77
            }
        );
        match roundtrip(OutFrame::Release {
            offsets: &[64, 0, 128],
        }) {
            Frame::Release(mut r) => {
                let got: Vec<u64> = std::iter::from_fn(|| r.next_offset()).collect();
                assert_eq!(got, [64, 0, 128]);
            }
            other => panic!("{other:?}"),
        }
        let mut region = region_frame(1 << 30);
        let mut codec = FrameCodec::new(limits());
        assert_eq!(
            codec.decode(&mut region).unwrap(),
            Some(Frame::Region { size: 1 << 30 })
        );
        let ranges = [
            RemoteRange {
                addr: 4096,
                len: 10,
            },
            RemoteRange { addr: 8192, len: 5 },
        ];
        match roundtrip(OutFrame::Data {
            seq: 5,
            ranges: &ranges,
        }) {
            Frame::Data(d) => {
                assert_eq!((d.seq, d.len), (5, 15));
                assert_eq!(d.ranges().collect::<Vec<_>>(), ranges);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            roundtrip(OutFrame::Inline {
                seq: 1,
                payload: b"hi"
            }),
            Frame::Inline {
                seq: 1,
                payload: Bytes::from_static(b"hi")
            }
        );
        assert_eq!(
            roundtrip(OutFrame::Ack { count: 9 }),
            Frame::Ack { count: 9 }
        );
        assert_eq!(
            roundtrip(OutFrame::Close { sent: 2 }),
            Frame::Close { sent: 2 }
        );
        assert_eq!(
            roundtrip(OutFrame::Stop { delivered: 5 }),
            Frame::Stop { delivered: 5 }
        );
        assert_eq!(
            roundtrip(OutFrame::Sync { sent: 9 }),
            Frame::Sync { sent: 9 }
        );
        assert_eq!(
            roundtrip(OutFrame::Error {
                code: ErrorCode::Refused,
                reason: "no"
            }),
            Frame::Error {
                code: ErrorCode::Refused,
                reason: "no".into()
            }
        );
    }

    #[test]
    fn batches_roundtrip_and_split() {
        let mut buf = BytesMut::new();
        buf.put_slice(b"junk"); // a batch need not start the buffer
        let at = start_batch(&mut buf, 7, b"one");
        append_to_batch(&mut buf, at, b"");
        append_to_batch(&mut buf, at, b"three");
        let mut src = BytesMut::from(&buf[at..]);
        let Some(Frame::Batch(mut batch)) = FrameCodec::new(limits()).decode(&mut src).unwrap()
        else {
            panic!("a batch decodes as one");
        };
        assert!(src.is_empty());
        assert_eq!(batch.seq, 7);
        let mut got = Vec::new();
        while let Some(m) = batch.next_message() {
            got.push(m);
        }
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
    }

    #[test]
    fn rejects_malformed_batches() {
        let batch = |entries: &[u8]| {
            let mut v = header(T_BATCH, (8 + entries.len()) as u32);
            v.extend_from_slice(&1u64.to_le_bytes());
            v.extend_from_slice(entries);
            decode_raw(&v)
        };
        // An entry longer than what is left of the body.
        let err = batch(&[9, 0, 0, 0, 1, 2]).unwrap_err();
        assert!(
            err.is_protocol() && err.to_string().contains("runs past"),
            "{err}"
        );
        // A length prefix cut short.
        let err = batch(&[1, 0, 0, 0, 5, 2, 0]).unwrap_err();
        assert!(
            err.is_protocol() && err.to_string().contains("stray"),
            "{err}"
        );
        // A huge entry length inside a small body.
        assert!(batch(&[255, 255, 255, 255]).unwrap_err().is_protocol());
    }

    #[test]
    fn batches_respect_the_largest_message() {
        // Largest message 10 bytes, inline payloads up to 64: a batch body may not carry more
        // than 10 bytes of entries, as an INLINE frame may not carry an 11-byte payload.
        let mut codec = FrameCodec::new(Limits {
            max_message_size: 10,
            ..limits()
        });
        let mut frame = BytesMut::new();
        start_batch(&mut frame, 0, &[7; 20]);
        let err = codec.decode(&mut frame).unwrap_err();
        assert!(err.is_limit_exceeded(), "{err}");
    }

    fn decode_raw(bytes: &[u8]) -> Result<Option<Frame>, Error> {
        FrameCodec::new(limits()).decode(&mut BytesMut::from(bytes))
    }

    fn header(ty: u8, len: u32) -> Vec<u8> {
        let mut v = vec![ty, 0, 0, 0];
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    #[test]
    fn rejects_before_allocating() {
        // A huge body length is refused on the header alone.
        let err = decode_raw(&header(T_DATA, u32::MAX)).unwrap_err();
        assert!(err.is_limit_exceeded(), "{err}");
        assert!(decode_raw(&header(T_DATA, 3)).unwrap_err().is_protocol());
        let err = decode_raw(&header(T_INLINE, 8 + 65)).unwrap_err();
        assert!(err.is_limit_exceeded(), "{err}");
        assert!(decode_raw(&header(0, 0)).unwrap_err().is_protocol());
        assert!(decode_raw(&header(200, 0)).unwrap_err().is_protocol());
        assert!(decode_raw(&header(T_BATCH, 0)).unwrap_err().is_protocol());
        assert!(decode_raw(&header(T_BATCH, 8)).unwrap_err().is_protocol());
        let err = decode_raw(&header(T_BATCH, 8 + 65)).unwrap_err();
        assert!(err.is_limit_exceeded(), "{err}");
        assert!(
            decode_raw(&[T_ACK, 1, 0, 0, 8, 0, 0, 0])
                .unwrap_err()
                .is_protocol()
        );
        assert!(decode_raw(&header(T_ACK, 7)).unwrap_err().is_protocol());
    }

    #[test]
    fn rejects_bad_descriptors() {
        let data = |len: u64, ranges: &[(u64, u64)], count: u32| {
            let mut v = header(T_DATA, (DATA_FIXED + RANGE_LEN * ranges.len()) as u32);
            v.extend_from_slice(&0u64.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&count.to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
            for (a, l) in ranges {
                v.extend_from_slice(&a.to_le_bytes());
                v.extend_from_slice(&l.to_le_bytes());
            }
            decode_raw(&v)
        };
        assert!(data(10, &[(1, 10)], 1).unwrap().is_some());
        assert!(data(0, &[], 0).unwrap().is_some());
        // Sum mismatch, empty range, wrap, count mismatch, too large, too many ranges.
        assert!(data(11, &[(1, 10)], 1).unwrap_err().is_protocol());
        assert!(data(0, &[(1, 0)], 1).unwrap_err().is_protocol());
        assert!(
            data(10, &[(u64::MAX - 2, 10)], 1)
                .unwrap_err()
                .is_protocol()
        );
        assert!(data(10, &[(1, 10)], 2).unwrap_err().is_protocol());
        assert!(
            data(2 << 20, &[(1, 2 << 20)], 1)
                .unwrap_err()
                .is_limit_exceeded()
        );
        assert!(data(5, &[(1, 1); 5], 5).is_err());
        let overflow = data(10, &[(1, u64::MAX / 2 + 1), (1, u64::MAX / 2 + 1)], 2);
        assert!(overflow.is_err());
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut codec = FrameCodec::new(limits());
        let mut buf = BytesMut::from(&header(T_ACK, 8)[..]);
        buf.put_u32_le(1);
        assert!(codec.decode_eof(&mut buf).unwrap_err().is_peer_gone());
        let mut empty = BytesMut::new();
        assert!(
            FrameCodec::new(limits())
                .decode_eof(&mut empty)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn error_text_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        match roundtrip_big(OutFrame::Error {
            code: ErrorCode::Other,
            reason: &long,
        }) {
            Frame::Error { reason, .. } => assert!(reason.len() <= MAX_ERROR_TEXT),
            other => panic!("{other:?}"),
        }
    }

    fn roundtrip_big(frame: OutFrame<'_>) -> Frame {
        let mut codec = FrameCodec::new(limits());
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).unwrap();
        codec.decode(&mut buf).unwrap().unwrap()
    }

    fn parts_codec() -> FrameCodec {
        let mut codec = FrameCodec::new(limits());
        codec.accept_inline_messages();
        codec
    }

    fn part(seq: u64, total: u64, payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        parts_codec()
            .encode(
                OutFrame::Part {
                    seq,
                    total,
                    payload,
                },
                &mut buf,
            )
            .unwrap();
        buf
    }

    #[test]
    fn parts_make_one_message_with_acknowledgements_between_them() {
        let mut codec = parts_codec();
        let mut src = part(3, 10, b"abcd");
        codec.encode(OutFrame::Ack { count: 7 }, &mut src).unwrap();
        src.extend_from_slice(&part(3, 10, b"efg"));
        src.extend_from_slice(&part(3, 10, b"hij"));
        // The ACK comes out first; the parts before it are held.
        assert!(matches!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Ack { count: 7 })
        ));
        match codec.decode(&mut src).unwrap() {
            Some(Frame::Inline { seq: 3, payload }) => assert_eq!(&payload[..], b"abcdefghij"),
            other => panic!("{other:?}"),
        }
        assert!(src.is_empty());
        assert!(codec.decode(&mut src).unwrap().is_none());
    }

    #[test]
    fn a_message_in_parts_takes_no_more_memory_than_its_size() {
        let mut codec = FrameCodec::new(Limits {
            max_message_size: 64 << 20,
            max_ranges: 4,
            max_inline: 64 << 10,
        });
        codec.accept_inline_messages();
        let total = (5 << 20) + 3;
        let data = vec![7u8; total];
        let mut src = BytesMut::new();
        let mut out = None;
        for chunk in data.chunks(PART_SIZE) {
            src.clear();
            codec
                .encode(
                    OutFrame::Part {
                        seq: 0,
                        total: total as u64,
                        payload: chunk,
                    },
                    &mut src,
                )
                .unwrap();
            if let Some(frame) = codec.decode(&mut src).unwrap() {
                out = Some(frame);
            }
        }
        match out {
            Some(Frame::Inline { payload, .. }) => assert_eq!(payload.len(), total),
            other => panic!("{other:?}"),
        }
        // One INLINE header cannot make this side reserve more than a part.
        let mut header = BytesMut::new();
        put_header(&mut header, T_INLINE, 8 + (60 << 20));
        let err = codec.decode(&mut header).unwrap_err();
        assert!(err.is_limit_exceeded(), "{err}");
    }

    #[test]
    fn parts_that_do_not_add_up_are_protocol_errors() {
        let cases: [(&[BytesMut], &str); 4] = [
            (&[part(1, 10, b"abc"), part(2, 10, b"def")], "incomplete"),
            (&[part(1, 10, b"abc"), part(1, 11, b"def")], "incomplete"),
            (&[part(1, 4, b"abc"), part(1, 4, b"de")], "more than"),
            (
                &[part(1, 10, b"abc"), BytesMut::from(&header(T_CLOSE, 8)[..])],
                "between the parts",
            ),
        ];
        for (frames, needle) in cases {
            let mut codec = parts_codec();
            let mut src = BytesMut::new();
            for f in frames {
                src.extend_from_slice(f);
            }
            src.extend_from_slice(&[0; 8]); // a CLOSE body, where one is used
            let err = match codec.decode(&mut src) {
                Ok(Some(f)) => panic!("decoded {f:?}"),
                Ok(None) => panic!("waited for more instead of refusing"),
                Err(e) => e,
            };
            assert!(
                err.is_protocol() && err.to_string().contains(needle),
                "{err}"
            );
        }
        // Larger than the largest message: refused at the first part, before allocating.
        let mut codec = parts_codec();
        let err = codec.decode(&mut part(0, (1 << 20) + 1, b"x")).unwrap_err();
        assert!(err.is_limit_exceeded(), "{err}");
        // Without inline messages accepted, a part may be no larger than an inline payload.
        let err = FrameCodec::new(limits())
            .decode(&mut part(0, 100, &[0; 65]))
            .unwrap_err();
        assert!(err.is_protocol(), "{err}");
    }
}

/// Drives the decoder the way the control socket does, for fuzzing and property tests.
pub(crate) fn decode_stream(data: &[u8], chunk: usize, limits: Limits) -> DecodeReport {
    let mut codec = FrameCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut report = DecodeReport::default();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => report.frames += 1,
                Ok(None) => break,
                Err(e) => {
                    report.error = Some(e);
                    return report;
                }
            }
            report.max_capacity = report.max_capacity.max(buf.capacity());
        }
        report.max_capacity = report.max_capacity.max(buf.capacity());
    }
    if let Err(e) = codec.decode_eof(&mut buf) {
        report.error = Some(e);
    }
    report
}

/// What [`decode_stream`] saw.
#[derive(Debug, Default)]
pub(crate) struct DecodeReport {
    pub(crate) frames: usize,
    pub(crate) error: Option<Error>,
    pub(crate) max_capacity: usize,
}
