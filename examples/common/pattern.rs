//! The message scheme shared by the `producer`, `consumer`, `demo` and `fanout` examples.
//!
//! A message is at least 8 bytes long and is read as little-endian 64-bit words; a last,
//! partial word holds the first bytes of the word that would stand there.
//!
//! * Word 0 is the sequence number: 0, 1, 2, ... in sending order.
//! * Word `i >= 1` is [`body_word`]`(seq % variants(len), i)`: the message's variant mixed
//!   with the word's index, so every word of a message differs from its neighbours and from
//!   the same word of the other variants.
//!
//! The body depends on the sequence number only through its variant, so the producer keeps a
//! [`Pool`] of finished messages and rewrites just the 8-byte header before each send: making
//! a message costs the same for 64 bytes as for 64 MiB. The consumer recomputes every word
//! and compares every byte ([`verify`]), which catches corrupted, shifted or truncated data,
//! a body of the wrong variant, and a header that does not name the expected message (one
//! lost, duplicated, reordered, or a buffer rewritten for a later message before it was read).
//! Messages whose sequence numbers differ by a multiple of the variant count share a body;
//! only their headers tell them apart.
//!
//! A pooled buffer is rewritten only when the transport has released it:
//! `Bytes::try_into_mut` succeeds only for the last handle to a buffer. The pool holds one
//! buffer more than the default window lets be in flight, so that is normally the case; when
//! it is not, a fresh buffer is generated instead and counted in [`Pool::regenerated`].

// Each example uses a different part of this module.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio_pvm::{DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_MESSAGES};

/// Length of the sequence number at the start of every message.
pub(crate) const HEADER: usize = 8;

/// Most distinct bodies per message size.
const MAX_VARIANTS: u64 = 8;

/// Memory the pre-generated variants of one size may take (before the pool's extra slots).
const VARIANT_BUDGET: u64 = 64 << 20;

/// How many distinct bodies messages of `len` bytes cycle through: up to 8, fewer for
/// messages so large that 8 would take more than 64 MiB.
pub(crate) fn variants(len: usize) -> u64 {
    (VARIANT_BUDGET / (len as u64).max(1)).clamp(1, MAX_VARIANTS)
}

/// Word `index` (at byte offset `8 * index`, `index >= 1`) of a message of variant `variant`.
#[inline(always)]
pub(crate) fn body_word(variant: u64, index: u64) -> u64 {
    (variant + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Writes the header and body of message `seq` into `buf`, which must hold at least 8 bytes.
fn fill(buf: &mut [u8], seq: u64) {
    let variant = seq % variants(buf.len());
    let (words, tail) = buf.as_chunks_mut::<8>();
    let index = words.len() as u64;
    for (i, word) in words.iter_mut().enumerate() {
        *word = body_word(variant, i as u64).to_le_bytes();
    }
    tail.copy_from_slice(&body_word(variant, index).to_le_bytes()[..tail.len()]);
    buf[..HEADER].copy_from_slice(&seq.to_le_bytes());
}

/// A fresh buffer holding message `seq` of `len` bytes.
fn generate(len: usize, seq: u64) -> BytesMut {
    let mut buf = BytesMut::zeroed(len);
    fill(&mut buf, seq);
    buf
}

/// The offset of the first byte of `msg` that breaks the scheme for message `seq`, if any.
fn first_mismatch(msg: &[u8], seq: u64) -> Option<usize> {
    const BLOCK: usize = 512;
    let variant = seq % variants(msg.len());
    let (words, tail) = msg.as_chunks::<8>();
    let Some((header, body)) = words.split_first() else {
        return Some(0);
    };
    if u64::from_le_bytes(*header) != seq {
        return Some(0);
    }
    // Fold each block into one word so the comparison runs without a branch per word, and
    // look for the exact offset only in a block that differs.
    for (b, block) in body.chunks(BLOCK).enumerate() {
        let first = (1 + b * BLOCK) as u64;
        let diff = block.iter().zip(first..).fold(0, |acc, (word, i)| {
            acc | (u64::from_le_bytes(*word) ^ body_word(variant, i))
        });
        if diff != 0 {
            let (word, i) = block
                .iter()
                .zip(first..)
                .find(|&(word, i)| u64::from_le_bytes(*word) != body_word(variant, i))?;
            let expected = body_word(variant, i).to_le_bytes();
            let at = word
                .iter()
                .zip(expected)
                .position(|(got, want)| *got != want)?;
            return Some(i as usize * 8 + at);
        }
    }
    let index = words.len() as u64;
    let expected = body_word(variant, index).to_le_bytes();
    tail.iter()
        .zip(expected)
        .position(|(got, want)| *got != want)
        .map(|at| index as usize * 8 + at)
}

/// Checks every byte of `msg` against the scheme for message `seq`.
pub(crate) fn verify(msg: &[u8], seq: u64) -> Result<(), String> {
    if msg.len() < HEADER {
        return Err(format!(
            "message {seq} has {} bytes, fewer than the {HEADER}-byte sequence number",
            msg.len()
        ));
    }
    match first_mismatch(msg, seq) {
        None => Ok(()),
        Some(at) if at < HEADER => {
            let mut header = [0u8; HEADER];
            header.copy_from_slice(&msg[..HEADER]);
            Err(format!(
                "message {seq} carries sequence number {} (messages lost, duplicated or \
                 reordered, or a buffer reused before it was read)",
                u64::from_le_bytes(header)
            ))
        }
        Some(at) => {
            let mut reference = vec![0u8; msg.len()];
            fill(&mut reference, seq);
            Err(format!(
                "message {seq} ({} bytes) is corrupted at byte {at}: got {:#04x}, expected {:#04x}",
                msg.len(),
                msg[at],
                reference[at]
            ))
        }
    }
}

/// Pre-generated messages of one size; only the header is rewritten before each send.
#[derive(Debug)]
pub(crate) struct Pool {
    len: usize,
    /// Slot `i` holds a body of variant `i % variants(len)`; message `seq` uses slot
    /// `seq % slots.len()`, and the number of slots is a multiple of the variants.
    slots: Vec<Bytes>,
    regenerated: u64,
}

impl Pool {
    /// A pool for messages of `len` bytes (at least [`HEADER`]).
    pub(crate) fn new(len: usize) -> Pool {
        let window = u64::from(DEFAULT_WINDOW_MESSAGES)
            .min(DEFAULT_WINDOW_BYTES.div_ceil((len as u64).max(1)));
        let count = (window + 1).next_multiple_of(variants(len));
        let slots = (0..count).map(|i| generate(len, i).freeze()).collect();
        Pool {
            len,
            slots,
            regenerated: 0,
        }
    }

    /// Message `seq`.
    pub(crate) fn message(&mut self, seq: u64) -> Bytes {
        let index = (seq % self.slots.len() as u64) as usize;
        let slot = &mut self.slots[index];
        let mut buf = match std::mem::take(slot).try_into_mut() {
            Ok(buf) => buf,
            // The transport still holds this buffer: leave it alone and make a new one.
            Err(_held) => {
                self.regenerated += 1;
                generate(self.len, seq)
            }
        };
        buf[..HEADER].copy_from_slice(&seq.to_le_bytes());
        let msg = buf.freeze();
        *slot = msg.clone();
        msg
    }

    /// How many messages needed a fresh buffer because the pooled one was still in flight.
    pub(crate) fn regenerated(&self) -> u64 {
        self.regenerated
    }
}

/// Sends messages `0..count` of `len` bytes with `feed`, then closes the sink (flush, and
/// tell the peer that nothing more will come). Returns when the peer has every message.
pub(crate) async fn send_all<S>(sink: &mut S, pool: &mut Pool, count: u64) -> Result<(), S::Error>
where
    S: Sink<Bytes> + Unpin,
{
    for seq in 0..count {
        sink.feed(pool.message(seq)).await?;
    }
    sink.close().await
}

/// Checks a stream of messages: every byte, sequence numbers 0, 1, 2, ..., one size
/// throughout, and optionally the size and the count.
#[derive(Debug)]
pub(crate) struct Checker {
    expect_size: Option<usize>,
    size: Option<usize>,
    messages: u64,
    bytes: u64,
    started: Option<Instant>,
}

/// What a [`Checker`] saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) messages: u64,
    /// Size of each message (0 if there were none).
    pub(crate) size: usize,
    pub(crate) bytes: u64,
    /// From the first message to [`Checker::finish`].
    pub(crate) seconds: f64,
}

impl Checker {
    /// A checker expecting messages of `expect_size` bytes, or of any one size.
    pub(crate) fn new(expect_size: Option<usize>) -> Checker {
        Checker {
            expect_size,
            size: None,
            messages: 0,
            bytes: 0,
            started: None,
        }
    }

    /// Checks the next message. The clock starts at the first one.
    pub(crate) fn check(&mut self, msg: &[u8]) -> Result<(), String> {
        self.started.get_or_insert_with(Instant::now);
        let seq = self.messages;
        match (self.expect_size, self.size) {
            (Some(want), _) if msg.len() != want => {
                return Err(format!(
                    "message {seq} has {} bytes, expected {want}",
                    msg.len()
                ));
            }
            (None, Some(size)) if msg.len() != size => {
                return Err(format!(
                    "message {seq} has {} bytes, but the messages before it had {size}",
                    msg.len()
                ));
            }
            _ => {}
        }
        verify(msg, seq)?;
        self.size = Some(msg.len());
        self.messages += 1;
        self.bytes += msg.len() as u64;
        Ok(())
    }

    /// Checks every message of `stream` until it ends. With `stall`, fails if no message
    /// arrives for that long.
    pub(crate) async fn receive_all<S>(
        &mut self,
        stream: &mut S,
        stall: Option<Duration>,
    ) -> Result<(), String>
    where
        S: Stream<Item = Result<Bytes, tokio_pvm::Error>> + Unpin,
    {
        loop {
            let next = match stall {
                Some(stall) => tokio::time::timeout(stall, stream.next())
                    .await
                    .map_err(|_| {
                        format!(
                            "no message for {stall:?} after {} messages: the transfer stalled",
                            self.messages
                        )
                    })?,
                None => stream.next().await,
            };
            let Some(msg) = next else { return Ok(()) };
            let msg = msg.map_err(|e| {
                format!(
                    "receiving failed after {} good messages: {e}",
                    self.messages
                )
            })?;
            self.check(&msg)?;
        }
    }

    /// Messages checked so far.
    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }

    /// Stops the clock, checks the count if one is expected, and sums up.
    pub(crate) fn finish(self, expect_count: Option<u64>) -> Result<Summary, String> {
        let seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        if let Some(want) = expect_count
            && self.messages != want
        {
            return Err(format!(
                "the stream ended after {} messages, expected {want}",
                self.messages
            ));
        }
        Ok(Summary {
            messages: self.messages,
            size: self.size.unwrap_or(0),
            bytes: self.bytes,
            seconds,
        })
    }
}

impl Summary {
    /// Messages per second (0 if no time passed).
    pub(crate) fn msg_per_sec(&self) -> f64 {
        per_sec(self.messages as f64, self.seconds)
    }

    /// Gigabytes (10^9 bytes) per second (0 if no time passed).
    pub(crate) fn gb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1e9, self.seconds)
    }
}

fn per_sec(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}
