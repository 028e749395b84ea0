//! Fresh messages: what the senders of the primary rows send, and how their receivers check
//! them.
//!
//! A sender makes one source buffer of pseudo-random bytes before it connects (64 MiB, or the
//! message size if that is larger), then builds every message anew: `size` bytes copied from
//! the source at an offset that moves on by `size` each message (back to 0 when the rest of
//! the source is too short), with the message's sequence number stamped into it. So every
//! message is in memory the sender has just written, as an application's would be, and not
//! one buffer that stays hot in the caches.
//!
//! The stamps: the sequence number, little-endian, in the first 8 bytes and in the last 8.
//! Messages shorter than 16 bytes get what fits without the two overlapping: the head stamp
//! takes the first `min(size, 8)` bytes, the tail stamp the last `min(size - head, 8)` bytes
//! (none below 9 bytes), each holding the low bytes of the number. The receiver checks the
//! length and both stamps against the number it expects next, which catches a lost,
//! duplicated or reordered message and one cut short or shifted.

use bytes::{Bytes, BytesMut};

/// Size of the source buffer messages are copied from (at least; see [`Fresh::new`]).
pub(crate) const SOURCE_BYTES: usize = 64 << 20;

/// Lengths of the head and tail stamps of a message of `size` bytes.
fn stamp_lens(size: usize) -> (usize, usize) {
    let head = size.min(8);
    (head, (size - head).min(8))
}

/// Writes `seq` into the stamps of `msg`.
pub(crate) fn stamp(msg: &mut [u8], seq: u64) {
    let (head, tail) = stamp_lens(msg.len());
    let bytes = seq.to_le_bytes();
    let len = msg.len();
    msg[..head].copy_from_slice(&bytes[..head]);
    msg[len - tail..].copy_from_slice(&bytes[..tail]);
}

/// The number in a stamp of `bytes.len()` (at most 8) bytes.
fn read_stamp(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// The low `len` bytes of `seq`: what a stamp of `len` bytes holds.
fn low_bytes(seq: u64, len: usize) -> u64 {
    if len >= 8 {
        seq
    } else {
        seq & ((1u64 << (8 * len)) - 1)
    }
}

/// Makes the fresh messages of one sender, numbered from 0.
pub(crate) struct Fresh {
    source: Vec<u8>,
    size: usize,
    offset: usize,
    seq: u64,
}

impl Fresh {
    /// A source of `max(SOURCE_BYTES, size)` pseudo-random bytes (splitmix64) for messages of
    /// `size` bytes.
    pub(crate) fn new(size: usize) -> Fresh {
        let mut source = vec![0u8; SOURCE_BYTES.max(size)];
        let mut state: u64 = 0x243F_6A88_85A3_08D3;
        let (words, tail) = source.as_chunks_mut::<8>();
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).to_le_bytes()
        };
        for word in words {
            *word = next();
        }
        let last = next();
        tail.copy_from_slice(&last[..tail.len()]);
        Fresh {
            source,
            size,
            offset: 0,
            seq: 0,
        }
    }

    /// The size of the messages.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The source bytes of the next message, and its sequence number.
    fn next_source(&mut self) -> (&[u8], u64) {
        if self.offset + self.size > self.source.len() {
            self.offset = 0;
        }
        let start = self.offset;
        self.offset += self.size;
        let seq = self.seq;
        self.seq += 1;
        (&self.source[start..start + self.size], seq)
    }

    /// Writes the next message into `buf`, which must be `size` bytes long.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        let (src, seq) = self.next_source();
        buf.copy_from_slice(src);
        stamp(buf, seq);
    }

    /// The next message in a buffer of its own, freshly allocated.
    pub(crate) fn heap(&mut self) -> Bytes {
        let (src, seq) = self.next_source();
        stamped(src, seq)
    }

    /// Message `seq` in a buffer of its own, freshly allocated: the same bytes as the
    /// `seq`-th message of [`heap`](Fresh::heap) (message `seq` starts `seq` sizes into the
    /// source, wrapped as `heap` wraps). For a sender that makes its messages out of order, or
    /// in several tasks at once: it needs no `&mut`.
    pub(crate) fn numbered(&self, seq: u64) -> Bytes {
        let per_pass = (self.source.len() / self.size) as u64;
        let start = (seq % per_pass) as usize * self.size;
        stamped(&self.source[start..start + self.size], seq)
    }
}

/// A new buffer holding `src`, stamped with `seq`.
fn stamped(src: &[u8], seq: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(src.len());
    buf.extend_from_slice(src);
    stamp(&mut buf, seq);
    buf.freeze()
}

/// Checks that `msg` is message `seq` of a sender of messages of `size` bytes: its length and
/// its stamps. For a receiver that gets messages out of order, and knows each one's number
/// some other way.
#[inline]
pub(crate) fn check_stamped(msg: &[u8], size: usize, seq: u64) -> Result<(), String> {
    if msg.len() != size {
        return Err(format!(
            "message {seq} has {} bytes, expected {size}",
            msg.len()
        ));
    }
    let (head, tail) = stamp_lens(size);
    let got_head = read_stamp(&msg[..head]);
    let got_tail = read_stamp(&msg[size - tail..]);
    if got_head != low_bytes(seq, head) || got_tail != low_bytes(seq, tail) {
        return Err(format!(
            "message {seq} of {size} bytes is stamped {got_head} (first {head} bytes) and \
             {got_tail} (last {tail} bytes): lost, duplicated, reordered or damaged"
        ));
    }
    Ok(())
}

/// Checks the messages of one receiver: each must have the length and the stamps of the next
/// sequence number.
pub(crate) struct Checker {
    size: usize,
    next: u64,
}

impl Checker {
    pub(crate) fn new(size: usize) -> Checker {
        Checker { size, next: 0 }
    }

    /// Checks `msg` against the next expected message.
    #[inline]
    pub(crate) fn check(&mut self, msg: &[u8]) -> Result<(), String> {
        check_stamped(msg, self.size, self.next)?;
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_fit_every_size() {
        for size in [1, 2, 7, 8, 9, 12, 15, 16, 17, 64, 4096] {
            let mut fresh = Fresh::new(size);
            let mut checker = Checker::new(size);
            for _ in 0..300 {
                let msg = fresh.heap();
                checker.check(&msg).unwrap();
            }
            let mut buf = vec![0u8; size];
            fresh.fill(&mut buf);
            checker.check(&buf).unwrap();
        }
    }

    #[test]
    fn a_lost_message_is_caught() {
        let mut fresh = Fresh::new(64);
        let mut checker = Checker::new(64);
        checker.check(&fresh.heap()).unwrap();
        let _lost = fresh.heap();
        assert!(checker.check(&fresh.heap()).is_err());
    }

    #[test]
    fn numbered_messages_are_the_sequence() {
        // Small enough that the offset wraps within the test: 64 MiB / 24 MiB = 2 per pass.
        let size = 24 << 20;
        let mut fresh = Fresh::new(size);
        let numbered: Vec<Bytes> = (0..5).map(|seq| fresh.numbered(seq)).collect();
        for (seq, msg) in numbered.iter().enumerate() {
            assert_eq!(*msg, fresh.heap(), "message {seq}");
            check_stamped(msg, size, seq as u64).unwrap();
        }
        assert!(check_stamped(&numbered[1], size, 2).is_err());
        assert!(check_stamped(&numbered[1][1..], size, 1).is_err());
    }
}
