//! Fast local transport for Tokio: move `Bytes` between processes on one Linux host with
//! `process_vm_readv` ("cross memory attach").
//!
//! A sender hands [`Bytes`](bytes::Bytes) to a [`Sink`](futures_sink::Sink). Only a small
//! descriptor (sequence number, length, addresses) travels over a Unix-domain control socket;
//! the receiver copies the payload straight out of the sender's memory with one
//! `process_vm_readv` call, acknowledges, and only then does the sender release its buffer.
//! The receiver sees a [`Stream`](futures_core::Stream) of `Bytes`. One copy, made by the kernel
//! from the sender's memory into the receiver's, no socket buffer in between.
//!
//! ```no_run
//! use bytes::Bytes;
//! use futures_util::{SinkExt, StreamExt};
//! use tokio_pvm::{Connection, Listener};
//!
//! # async fn demo() -> Result<(), tokio_pvm::Error> {
//! // In one process:
//! let listener = Listener::bind("/tmp/app.sock")?;
//! let mut conn = listener.accept().await?;
//! while let Some(msg) = conn.next().await {
//!     println!("got {} bytes", msg?.len());
//! }
//!
//! // In another:
//! let mut conn = Connection::connect("/tmp/app.sock").await?;
//! conn.send(Bytes::from(vec![0u8; 4 << 20])).await?; // returns once the peer has it
//! conn.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Where to start
//! `cargo run --release --example demo` moves a million small messages and two gigabytes
//! between two processes and prints the rates; `examples/producer.rs` and
//! `examples/consumer.rs` are the smallest complete pair of programs (run the consumer, then
//! the producer, in two terminals), and `cargo test` runs the suite. The README walks through
//! the rest.
//!
//! # Zero copy
//! With [`Config::loan_region`] set on both sides, a message written into a buffer from
//! [`Sender::loan`] is not copied again: the receiver's `Bytes` point into a sealed
//! shared-memory region the sender passed at the handshake, and the memory is lent again once
//! the receiving application drops them. It is opt-in because the memory stays the sender's
//! (see the method's documentation and the README's security model).
//!
//! # Probe and poke
//! The [`probe`] module uses the same system calls for a second job: a process publishes a few
//! blocks of typed fields (updated with plain memory writes, no system call, except for the
//! lock taken when the process itself writes a tunable block), an outside probe
//! reads consistent snapshots of them, and an operator tool writes new values into blocks
//! marked tunable. The `pvmctl` tool (its own crate in the repository's `pvmctl/` directory)
//! lists, dumps, watches, sets and exports them for Prometheus. The module is behind the
//! default `probe` feature; `default-features = false` leaves it (and its JSON dependencies)
//! out for a transport-only user.
//!
//! # Security model
//! The receiver reads the sender's memory, so the kernel must allow it: the same uid (and a
//! dumpable process), or `CAP_SYS_PTRACE`, subject to Yama's `ptrace_scope`. The pid to read
//! comes from the kernel (`SO_PEERCRED`), never from the peer's frames, and the handshake pulls
//! a random cookie out of each side's memory before any data moves. By default only peers of
//! the same uid are accepted ([`Config::allow_uid`] widens this). A receiver reads only the
//! ranges the sender announced, and delivers only bytes read while the connection was open and
//! the peer process alive (checked after each batch of pulls, through a pidfd). A side that may
//! not read its peer's memory falls back to receiving inline over the socket
//! ([`Mode::Inline`]); the README's security model has the details.
//!
//! # Layers
//! kernel calls (`sys`) → control socket on `AsyncFd` (`socket`) → frames (`codec`, see its
//! documentation for the wire format) → protocol state (`protocol`: window, acks, pulls) →
//! public types ([`Listener`], [`Connection`], [`Sender`], [`Receiver`]).

// Lints are set in Cargo.toml's [lints] table.

mod address;
mod bytestream;
mod carrier;
mod codec;
mod config;
mod connection;
mod error;
mod fanout;
mod handshake;
mod listener;
mod loan;
mod pool;
#[cfg(feature = "probe")]
pub mod probe;
mod protocol;
mod pull;
mod socket;
mod sys;
#[cfg(feature = "tcp")]
mod tcp;
#[cfg(feature = "tcp")]
mod x509;

pub use address::Address;
pub use bytestream::{ByteReader, ByteStream, ByteWriter, DEFAULT_GATHER};
pub use config::{
    Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LINGER,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PULL_TIMEOUT, DEFAULT_SLOW_SUBSCRIBER_GRACE,
    DEFAULT_TCP_KEEPALIVE, DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_MESSAGES, SlowSubscriber,
};
pub use connection::{Connection, Mode, PeerInfo, Receiver, ReuniteError, Sender};
pub use error::{Error, ErrorKind, Result};
pub use fanout::{Fanout, SubscriberId};
pub use listener::Listener;
pub use loan::LoanBuf;
pub use pool::{DEFAULT_PROCESS_BUFFER_POOL, process_buffer_pool, set_process_buffer_pool};
#[cfg(feature = "tcp")]
pub use tcp::Tls;

/// Entry points for the fuzz target and property tests. Not part of the public API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::codec::{Limits, decode_stream};

    /// Limits the fuzzing entry points decode under.
    pub const MAX_MESSAGE: u64 = 1 << 20;
    /// Most ranges per descriptor under fuzzing.
    pub const MAX_RANGES: u32 = 1024;
    /// Largest inline payload under fuzzing.
    pub const MAX_INLINE: u32 = 64 << 10;
    /// Largest frame the limits above allow: header plus the largest body (an INLINE frame).
    pub const MAX_FRAME: usize = 8 + 8 + MAX_INLINE as usize;

    /// Feeds `data` to the frame decoder in pieces of `chunk` bytes, as the control socket
    /// delivers it. Returns the frames decoded, the error that stopped decoding (if any), and
    /// the largest capacity the receive buffer reached.
    pub fn decode(data: &[u8], chunk: usize) -> (usize, Option<crate::Error>, usize) {
        let limits = Limits {
            max_message_size: MAX_MESSAGE,
            max_ranges: MAX_RANGES,
            max_inline: MAX_INLINE,
        };
        let r = decode_stream(data, chunk, limits);
        (r.frames, r.error, r.max_capacity)
    }
}

// Compile the README's examples as doc tests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;
