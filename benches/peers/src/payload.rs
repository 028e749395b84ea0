//! What every producer writes and every consumer checks, the same for all peers.
//!
//! A producer owns a [`Source`] of pseudo-random bytes, prepared once at start. For message
//! `seq` it copies `size` bytes from a rotating offset of the source into the message's buffer,
//! then stamps `seq` (little-endian `u64`) into the first 8 and the last 8 bytes. A consumer
//! checks the length and both stamps of every message, and that the stamps count up from 0
//! without a gap ([`Checker`]).

use std::time::Instant;

use bytes::{Bytes, BytesMut};

/// The smallest message: both stamps must fit without overlapping.
pub(crate) const MIN_SIZE: usize = 16;

/// Bytes of one stamp.
const STAMP: usize = 8;

/// The source holds at least this much...
const SOURCE_MIN: usize = 1 << 20;
/// ...room for this many messages...
const SOURCE_MESSAGES: usize = 1024;
/// ...but no more than this (unless one message is larger).
const SOURCE_MAX: usize = 64 << 20;

/// Pseudo-random bytes that messages are copied from, at a rotating offset.
///
/// Its length is `size` × 1024 clamped to 1..64 MiB (and at least one message), rounded down
/// to whole messages: from 64 KiB up it is 64 MiB, more than a last-level cache, so the copy
/// into each message reads memory as a producer of fresh data would; small messages do not
/// pay for filling 64 MiB they never read.
#[derive(Debug)]
pub(crate) struct Source {
    data: Vec<u8>,
    size: usize,
    slots: u64,
}

impl Source {
    pub(crate) fn new(size: usize) -> Source {
        assert!(size >= MIN_SIZE, "messages have at least {MIN_SIZE} bytes");
        let len = size
            .saturating_mul(SOURCE_MESSAGES)
            .clamp(SOURCE_MIN, SOURCE_MAX)
            .max(size);
        let slots = len / size;
        let mut data = vec![0u8; slots * size];
        // xorshift64*, seeded per process: cheap, and not a pattern a transport could compress
        // or a checker could mistake for a stamp.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
        for word in data.chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        Source {
            data,
            size,
            slots: slots as u64,
        }
    }

    /// The message size this source was made for.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The bytes message `seq` is copied from (before its stamps).
    #[inline]
    pub(crate) fn chunk(&self, seq: u64) -> &[u8] {
        let off = (seq % self.slots) as usize * self.size;
        &self.data[off..off + self.size]
    }

    /// Message `seq` in a fresh `BytesMut`, frozen: what a `Sink<Bytes>` producer sends.
    #[inline]
    pub(crate) fn fresh_bytes(&self, seq: u64) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.size);
        buf.extend_from_slice(self.chunk(seq));
        stamp(&mut buf, seq);
        buf.freeze()
    }

    /// Writes message `seq` into `dst`, which must be exactly one message long.
    #[inline]
    pub(crate) fn write(&self, dst: &mut [u8], seq: u64) {
        dst.copy_from_slice(self.chunk(seq));
        stamp(dst, seq);
    }
}

/// Writes `seq` into the first and the last 8 bytes of `msg` (at least [`MIN_SIZE`] long).
#[inline]
pub(crate) fn stamp(msg: &mut [u8], seq: u64) {
    let n = msg.len();
    let s = seq.to_le_bytes();
    msg[..STAMP].copy_from_slice(&s);
    msg[n - STAMP..].copy_from_slice(&s);
}

/// Checks that `msg` is message `seq` of `size` bytes: its length and both stamps.
#[inline]
pub(crate) fn check(msg: &[u8], size: usize, seq: u64) -> Result<(), String> {
    if msg.len() != size {
        return Err(format!(
            "message {seq} has {} bytes, expected {size}",
            msg.len()
        ));
    }
    let head = u64::from_le_bytes(msg[..STAMP].try_into().expect("8 bytes"));
    let tail = u64::from_le_bytes(msg[size - STAMP..].try_into().expect("8 bytes"));
    if head != seq || tail != seq {
        return Err(format!(
            "expected message {seq}, got stamps {head} (first 8 bytes) and {tail} (last 8 bytes): \
             lost, reordered or torn"
        ));
    }
    Ok(())
}

/// A consumer's bookkeeping: checks each message in arrival order and takes the time when the
/// first and the last expected message arrived (two clock reads per run, nothing per message).
#[derive(Debug)]
pub(crate) struct Checker {
    size: usize,
    expect: u64,
    seen: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Checker {
    pub(crate) fn new(size: usize, expect: u64) -> Checker {
        Checker {
            size,
            expect,
            seen: 0,
            first: None,
            last: None,
        }
    }

    /// Messages checked so far.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Whether every expected message has arrived.
    pub(crate) fn done(&self) -> bool {
        self.seen >= self.expect
    }

    /// Checks the next message.
    #[inline]
    pub(crate) fn take(&mut self, msg: &[u8]) -> Result<(), String> {
        if self.seen == self.expect {
            return Err(format!(
                "a message arrived after the {} expected",
                self.expect
            ));
        }
        check(msg, self.size, self.seen)?;
        self.seen += 1;
        if self.seen == 1 {
            self.first = Some(Instant::now());
        }
        if self.seen == self.expect {
            self.last = Some(Instant::now());
        }
        Ok(())
    }

    /// Prints `DONE MESSAGES ELAPSED_NS`, or fails if messages are missing.
    pub(crate) fn report(self) -> Result<(), String> {
        match (self.first, self.last) {
            (Some(first), Some(last)) if self.seen == self.expect => {
                println!("DONE {} {}", self.seen, (last - first).as_nanos());
                Ok(())
            }
            _ => Err(format!(
                "the stream ended after {} of {} messages",
                self.seen, self.expect
            )),
        }
    }
}

/// A pinger's one-way latencies (half of each round trip), in ns.
#[derive(Debug)]
pub(crate) struct Latencies {
    warmup: u64,
    one_way_ns: Vec<u64>,
}

impl Latencies {
    pub(crate) fn new(warmup: u64, rounds: u64) -> Latencies {
        Latencies {
            warmup,
            one_way_ns: Vec::with_capacity(rounds as usize),
        }
    }

    /// Records round trip `i` (untimed while `i` is below the warm-up count).
    pub(crate) fn record(&mut self, i: u64, started: Instant) {
        let rtt = started.elapsed();
        if i >= self.warmup {
            self.one_way_ns.push(rtt.as_nanos() as u64 / 2);
        }
    }

    /// Prints `LAT ROUND_TRIPS P50_NS P99_NS` (nearest rank).
    pub(crate) fn report(mut self) -> Result<(), String> {
        if self.one_way_ns.is_empty() {
            return Err("no round trips were timed".to_owned());
        }
        self.one_way_ns.sort_unstable();
        let v = &self.one_way_ns;
        let rank = |p: usize| v[(v.len() * p).div_ceil(100).max(1) - 1];
        println!("LAT {} {} {}", v.len(), rank(50), rank(99));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for size in [16, 64, 4096, 3 << 20] {
            let src = Source::new(size);
            let msg = src.fresh_bytes(7);
            check(&msg, size, 7).unwrap();
            assert!(check(&msg, size, 8).is_err());
            let mut buf = vec![0u8; size];
            src.write(&mut buf, 1 << 40);
            check(&buf, size, 1 << 40).unwrap();
            assert!(check(&buf[1..], size, 1 << 40).is_err());
        }
    }

    #[test]
    fn source_rotates() {
        let src = Source::new(1 << 20);
        assert_eq!(src.slots, 64);
        assert_ne!(src.chunk(0), src.chunk(1));
        assert_eq!(src.chunk(0), src.chunk(64));
        assert_eq!(Source::new(64).data.len(), 1 << 20);
        assert_eq!(Source::new(128 << 20).slots, 1);
    }

    #[test]
    fn checker_wants_order() {
        let src = Source::new(64);
        let mut c = Checker::new(64, 3);
        c.take(&src.fresh_bytes(0)).unwrap();
        assert!(c.take(&src.fresh_bytes(2)).is_err());
        c.take(&src.fresh_bytes(1)).unwrap();
        c.take(&src.fresh_bytes(2)).unwrap();
        assert!(c.done());
        assert!(c.take(&src.fresh_bytes(3)).is_err());
    }
}
