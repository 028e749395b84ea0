//! Throughput and latency of `tokio-pvm` next to a Unix socket with a length-delimited codec,
//! the raw `process_vm_readv` ceiling and a single-threaded `memcpy`, between real processes;
//! the throughput of `tokio-pvm`'s TCP carrier (mutual TLS) next to a TCP socket with the same
//! codec, plain and inside TLS, on the loopback interface; and HTTP/2 (hyper) and WebSocket
//! (tokio-tungstenite) over `tokio_pvm::ByteStream` next to the same over
//! `tokio::net::UnixStream`.
//!
//! ```text
//! cargo run --release --example bench [-- --json] [--reps N] [--sizes LIST] [--only LIST]
//!                                        [--quick] [--timeout SECS]
//! ```
//!
//! # Processes
//! This process only orchestrates. For each measurement it starts this same binary again
//! (`std::env::current_exe()` with a hidden `--child ROLE ARGS...` argument) as the children
//! the measurement needs, reads their one-line reports from their standard output, and waits
//! for them to exit. Nothing is timed in this process. A child that fails, or a measurement
//! that takes longer than `--timeout` (default 120 s), kills the measurement's children and
//! becomes an error row; the run goes on. Socket files live in the temporary directory, named
//! after this process's id, and are removed; the TLS rows' certificates too, in a directory of
//! their own removed at the end of the run (see `# Throughput rows`). Each measurement prints
//! one line on standard error as it finishes
//! (`[12/96] tokio-pvm 1 MiB rep 2: 4.123 GB/s, 3,931 msg/s`); the tables (or the JSON) come
//! on standard output at the end.
//!
//! # Data
//! The primary rows send *fresh* messages, as an application does: the sender builds one
//! source buffer of pseudo-random bytes before it connects (64 MiB, or the message size if
//! larger; untimed), then for every message allocates a new `BytesMut::with_capacity(size)`,
//! copies `size` bytes into it from the source at an offset that moves on by `size` each
//! message (back to 0 at the end), stamps the message's sequence number (u64, little-endian)
//! into its first 8 and its last 8 bytes, `freeze()`s it and `feed`s it. Below 16 bytes the
//! stamps get what fits without overlapping (the head stamp the first `min(size, 8)` bytes,
//! the tail stamp the last `min(size - 8, 8)` bytes, if any), each holding the number's low
//! bytes. The receiver checks every message's length and both stamps against the number it
//! expects next: in order, nothing lost. (`bench/fresh.rs` has the producer and the checker,
//! shared by every row that sends fresh data.)
//!
//! The *resent* rows send what the benchmark sent before: a clone of one pre-built `Bytes` for
//! every message (byte `i` is `i % 251`), whose receiver checks the length and the first and
//! last byte. A buffer that never changes stays hot and clean in the caches, which flatters a
//! pull; next to the fresh rows, they show by how much.
//!
//! # Throughput rows
//! For each message size, every row moves the same number of messages of that size: 4 GiB
//! worth, but at least 64 and at most 1,000,000 messages (64 B: 1,000,000; 1 KiB: 1,000,000;
//! 16 KiB: 262,144; 256 KiB: 16,384; 1 MiB: 4,096; 16 MiB: 256). With `--quick`: 64 MiB
//! worth, 8 to 20,000 messages. In table order:
//!
//! * `tokio-pvm`: a receiver child binds a [`tokio_pvm::Listener`], accepts, and calls
//!   `next()` until the stream ends; a sender child connects with
//!   `Connection::connect_with`, `feed`s every message (fresh data), then `close()`s, which
//!   returns once the receiver has pulled and acknowledged everything. Default
//!   [`tokio_pvm::Config`] apart from the largest message size (64 MiB or the message size).
//! * `tokio-pvm (loan)`: the zero-copy lane. Both sides set
//!   `Config::loan_region(max(64 MiB, 4 x size))`: room for the window in flight, the
//!   receiver's buffer and the message being written. The sender writes the same fresh data
//!   and stamps straight into `Connection::loan(size)`, `freeze()`s the buffer and `feed`s
//!   it; the receiver (the same checker) reads the message in place. The sender reports how
//!   many of its loans were in the region: a loan that does not fit, or one of a message
//!   small enough to travel inline (up to 256 B by default, so every 64 B loan), comes from
//!   the heap and travels as an ordinary message. A row with any heap loan says so in the
//!   table (`heap loans: N of M`) with every repetition's count below it.
//! * `unix+LengthDelimitedCodec`: the same two roles over `tokio::net::UnixStream` with
//!   `tokio_util::codec::Framed` and a `LengthDelimitedCodec` (frames up to 64 MiB, as
//!   `tokio-pvm`'s default), fresh data: `feed` per message, `close()` at the end (flush,
//!   then shut the write side down); the receiver reads frames until end of stream.
//! * `tokio-pvm tcp+tls`: the `tokio-pvm` row's two roles over TCP on the loopback interface.
//!   The receiver binds `tcp://127.0.0.1:0` (the system chooses the port) and reports the
//!   address it is bound at (`Listener::local_addrs`), which the sender connects to:
//!   `tcp://127.0.0.1:PORT`. Every message travels inline through the protocol's frames
//!   (messages over 256 KiB in parts). Both sides set the `tokio-pvm` row's `Config` plus
//!   `Config::tls(Tls::from_pem(..))`: mutual TLS, each side with its own certificate (the
//!   receiver the server's, the sender the client's). `TCP_NODELAY`, the carrier's default.
//! * `tcp+LengthDelimitedCodec`: the `unix+LengthDelimitedCodec` row over
//!   `tokio::net::TcpStream` on the loopback interface, `set_nodelay(true)` on both sides;
//!   the receiver binds `127.0.0.1:0` and reports its port, as above.
//! * `tcp+tls+LengthDelimitedCodec`: the same inside TLS with `tokio_rustls`, set up as
//!   `Tls::from_pem` sets up tokio-pvm's: rustls with the `ring` provider and its safe default
//!   protocol versions (two rustls peers agree on TLS 1.3); the receiver's `TlsAcceptor`
//!   requires a client certificate signed by the authority (`WebPkiClientVerifier`), the
//!   sender's `TlsConnector` trusts only the authority, presents its certificate and checks
//!   that the server's names `127.0.0.1`. Next to the plain row it shows what TLS costs;
//!   next to `tokio-pvm tcp+tls`, what tokio-pvm's protocol costs on top of the same TLS.
//!   The server sends TLS 1.3 session tickets after the handshake, which the sender, only
//!   writing, would leave unread, and a socket closed with unread bytes resets the
//!   connection, which can destroy the last messages before they are read: so after its
//!   `close()` the sender reads until end of stream, and the receiver, once it has checked
//!   the last message, closes its side (close_notify). The clock has stopped by then.
//!
//!   The certificates of the two TLS rows are made once per run, before the first
//!   measurement (untimed), by this process, with rcgen: an authority and two leaf
//!   certificates it signs (ECDSA P-256), both naming `localhost` and `127.0.0.1`, one for
//!   the receivers (`server.pem`, `server.key`) and one for the senders (`client.pem`,
//!   `client.key`), written with the authority's (`ca.pem`) as PEM files into a directory of
//!   their own in the temporary directory (`tokio-pvm-bench-certs-PID-N`, readable by this
//!   user only), whose path the TLS children get as their last argument. A child reads its
//!   files and builds its TLS configuration before it connects or accepts: outside the clock,
//!   inside the CPU time, as the TLS handshake is. `bench/tcp.rs` has these rows. They need
//!   the `tcp` feature (a default); built without it, the benchmark has no TCP rows.
//! * `tokio-pvm [current_thread]`, `unix [current_thread]`, `tokio-pvm [block_on]`,
//!   `unix [block_on]`: the `tokio-pvm` and `unix+LengthDelimitedCodec` rows in other runtime
//!   flavors (see below), for message sizes up to 4 KiB only, where the runtime's share of
//!   each message's cost is largest.
//! * `tokio-pvm (resent buffer)`, `unix (resent buffer)`: the primary rows with resent data.
//! * `process_vm_readv (raw)`: the ceiling for anything built on cross memory attach. A source
//!   child allocates and fills one buffer of the message size, reports its pid and address,
//!   and sleeps; a reader child copies that buffer with `process_vm_readv` (continuing after
//!   short transfers) into one reused, pre-faulted local buffer, in a tight loop. No socket, no
//!   allocation, no acknowledgement.
//! * `process_vm_readv (rotated)`: the same loop, but into as many pre-faulted buffers as the
//!   transport's default window holds messages of that size (16 MiB, at most 1024), used in
//!   turn. A transport hands every message over in a buffer of its own while others are being
//!   filled, so its destination is this one, not a buffer that stays in the cache.
//! * `memcpy (1 thread)`: one child copies between two pre-faulted buffers: what one core can
//!   copy, for scale.
//!
//! # Runtime flavors
//! Both children of a Tokio row run the same flavor:
//!
//! * by default (the rows without brackets), the work runs in a task spawned on a
//!   multi-thread runtime with the default worker count (one per CPU), and the main thread
//!   waits for it in `block_on`;
//! * `[current_thread]`: in `block_on` of a `current_thread` runtime, one thread for
//!   everything (a connection's driver task runs only when the work yields);
//! * `[block_on]`: directly in `block_on` of a multi-thread runtime, what a loop in a plain
//!   `#[tokio::main] async fn main` does: the work runs on the main thread, spawned tasks
//!   (the connection's driver) on the workers.
//!
//! # What is timed
//! The receiving child (the reader, for the raw rows; the copying child for `memcpy`) starts
//! its clock when the first message has arrived and stops it when the last one has. Rates
//! count the N - 1 messages in between, so process start, making the source buffer,
//! connection set-up and handshake stay out; making every message (allocation, copy, stamps)
//! is in, as it is in an application. msg/s and GB/s (10^9 bytes per second) follow. "vs unix"
//! is GB/s over the Unix row of the same size that sends the same kind of data on the same
//! runtime flavor: `unix [current_thread]` or `unix [block_on]` for the rows of that flavor,
//! `unix (resent buffer)` for the resent rows, `unix+LengthDelimitedCodec` for all others
//! (the loan row, the TCP rows, raw, rotated and memcpy included). Without that row
//! (`--only`), it is "-".
//!
//! # CPU
//! Before and after each measurement this process reads `getrusage(RUSAGE_CHILDREN)`, user +
//! system time of all its children that have been waited for. It reads the second value only
//! after every child of the measurement has been reaped, so the difference is the CPU time of
//! exactly those processes (both, or one for `memcpy`), over their whole lives, start-up and
//! handshake included. One piece of scaffolding is taken out: a Tokio row's sender measures
//! the CPU time of building what it makes its messages from (the 64 MiB source, or the one
//! resent message) with `getrusage(RUSAGE_THREAD)` and reports it, and this process subtracts
//! it (the source takes tens of milliseconds: a large share of a 64 B measurement, which
//! moves 64 MB). The protocol-stack rows subtract the source of each child that builds one:
//! both HTTP/2 children, the WebSocket client. CPU s/GB divides the rest by the bytes moved:
//! N × size, or 2 × N × size for HTTP/2. With two processes working at once, CPU s/GB can
//! exceed 1 / (GB/s).
//!
//! # Protocol-stack rows
//! Third-party protocols over [`tokio_pvm::ByteStream`] and over `tokio::net::UnixStream`, at
//! their own message sizes, 1 KiB, 64 KiB and 4 MiB (not `--sizes`). A server child binds (a
//! [`tokio_pvm::Listener`] with the default `Config`, or a `UnixListener`) and accepts one
//! connection; a client child connects (`Connection::connect` wrapped in `ByteStream::new`, or
//! `UnixStream::connect`). Both run on the default flavor (a task spawned on a multi-thread
//! runtime). `bench/stacks.rs` has both sides.
//!
//! * `HTTP/2 over ByteStream`, `HTTP/2 over UnixStream`: hyper's HTTP/2 client
//!   (`client::conn::http2`) and server (`server::conn::http2`, with `TokioExecutor` and
//!   `TokioIo`). The client makes N POST requests on the one connection, 32 in flight at a
//!   time (a `JoinSet` of tasks, each with a clone of the `SendRequest`), N = 60,000 at 1 KiB,
//!   16,000 at 64 KiB, 256 at 4 MiB. Each request's body is `size` bytes of fresh data (see
//!   Data), stamped with the request's number, which also travels in an `x-seq` header. The
//!   server reads each body whole, checks its length and stamps, and answers with a fresh body
//!   of the same size stamped with the same number; the client reads it whole and checks it.
//!   The client times from just before the first request to the last response read and
//!   checked (the handshake stays out). Both sides set the same HTTP/2 settings, over both
//!   transports, so that flow control does not hold 4 MiB bodies back (hyper's defaults are
//!   1 to 5 MiB windows and 16 KiB frames): stream window 4 MiB, connection window 32 MiB,
//!   largest frame 1 MiB, send buffer 4 MiB per stream. Rates count all N requests; GB/s counts
//!   the bodies of both directions, 2 × size × N.
//! * `WebSocket over ByteStream`, `WebSocket over UnixStream`: tokio-tungstenite
//!   (`client_async`, `accept_async`; largest message and frame 64 MiB on both sides). The
//!   client sends N binary messages of `size` bytes of fresh data (stamped), one after another
//!   with `send` (feed + flush, as applications do), N = 400,000 at 1 KiB, 32,000 at 64 KiB,
//!   512 at 4 MiB; the client masks every frame, as the protocol requires. The server checks
//!   every message's length and stamps, in order, and times from the first message's arrival
//!   to the last one's, as a throughput receiver does; rates count the N - 1 messages in
//!   between. Nothing goes back until the last message, after which the server sends a text
//!   message, `done`, and the client starts the close handshake.
//!
//! The counts make each measurement take 1 to 5 s on the machine they were chosen on (2 CPUs,
//! busy or not); with `--quick` they are divided by 20 (at least 64). Every side reports only
//! once everything it checks has passed. A connection's end is not timed, but it must be
//! clean: the HTTP/2 client drops its `SendRequest` and waits for the connection to end; both
//! sides of either protocol then close their stream as careful servers close sockets (shut the
//! writing side down, read until the peer's end of stream) before they exit. An error h2
//! reports for the connection itself once every request has been answered and every response
//! checked is a race at the close (seen over any socket) and does not fail the measurement;
//! any error before does. "vs unix" is GB/s over the same protocol's UnixStream row at the
//! same size.
//!
//! # Latency
//! One-way latency, for 64 B and 1 MiB, of three rows: `tokio-pvm`, `tokio-pvm (loan)` and the
//! Unix socket + codec, each on the default runtime flavor. An echo child sends every message
//! back; a pinger child starts its clock, makes a fresh message (the same producer as for
//! throughput), sends it, waits for the echo, stops the clock, checks the echo's stamps,
//! records half the round trip, and repeats, after a few untimed round trips of warm-up. The
//! `tokio-pvm` and Unix echoes send back the message they received (the `Bytes`, or the
//! frame). In the loan row both sides loan, with the region of the throughput row: the pinger
//! writes its message into a loan, and the echo copies what it received into a fresh loan of
//! its own and sends that, which is what an application that loans does (a received loaned
//! message lies in the pinger's region, which the echo can read but not lend). Both sides'
//! heap loans show as in the throughput table. Every side uses `send` (feed + flush). For
//! `tokio-pvm`, flush returns only once the peer has taken and acknowledged the message: part
//! of what the transport promises, so part of its latency. Small-message latency is mostly
//! thread wake-ups; where a wake-up across CPUs is expensive (virtual machines), it depends on
//! whether the scheduler puts the two processes on one CPU or on two, and can change between
//! runs.
//!
//! # Repetitions and options
//! Every measurement runs `--reps` times (default 5), interleaved: for each repetition, for
//! each size, for each throughput row, then for each stack size, for each protocol-stack row,
//! then the latency rows. Tables show medians; "spread" is (max - min) / median of GB/s.
//! `--quick` makes a much smaller run (1 repetition unless `--reps` is given) as a smoke test.
//! `--only LIST` measures only the named rows (their names are in `--help`; `h2-` and `ws-`
//! name the protocol-stack rows, `lat-` the latency rows; `throughput`, `stacks` and `latency`
//! all of each), in table order. `--json` prints the results as JSON instead of tables: every
//! row, with its label, the row its ratio divides by (`ratio_reference`), and for rows that
//! loan the shared and total loan counts and whether the lane was open, per successful
//! repetition (`loans_shared`, `loans_total`, `zero_copy`; `null` for the other rows). The
//! protocol-stack rows are in `stacks`, with `count` requests (`unit` `req`) or messages
//! (`msg`) per measurement and `per_s` of them.

#[path = "bench/child.rs"]
mod child;
#[path = "common/fmt.rs"]
mod fmt;
#[path = "bench/fresh.rs"]
mod fresh;
#[path = "common/machine.rs"]
mod machine;
#[path = "bench/report.rs"]
mod report;
#[path = "common/spawn.rs"]
mod spawn;
#[path = "bench/stacks.rs"]
mod stacks;
#[path = "common/stats.rs"]
mod stats;
#[cfg(feature = "tcp")]
#[path = "bench/tcp.rs"]
mod tcp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use child::{Data, Flavor, Loans};
use report::{Machine, size_label};
use spawn::{CHILD_FLAG, Group, RemoveOnDrop, children_cpu, socket_path};
use stacks::{STACK_SIZES, Stack};

const USAGE: &str = "\
usage: bench [--json] [--reps N] [--sizes LIST] [--only LIST] [--quick] [--timeout SECS]

Compares tokio-pvm with a Unix socket + LengthDelimitedCodec, raw process_vm_readv and a
single-threaded memcpy, each measurement between separate child processes; and on loopback
TCP, tokio-pvm's TCP carrier with mutual TLS (tokio-pvm tcp+tls) next to TcpStream +
LengthDelimitedCodec, plain (tcp) and inside tokio-rustls with mutual TLS (tcp-tls), the
certificates made once per run. The tokio-pvm, unix and tcp rows send fresh messages (each
one allocated, copied from a 64 MiB pseudo-random source and stamped with its sequence
number), except the (resent buffer) rows, which send one pre-built buffer again and again.
tokio-pvm (loan) writes the fresh messages into loans of the zero-copy lane. The
[current_thread] and [block_on] rows (sizes up to 4 KiB) run both sides on those runtime
flavors; the others in a task spawned on a multi-thread runtime. Protocol stacks (at 1 KiB,
64 KiB and 4 MiB): hyper HTTP/2 (POST requests, 32 in flight, answered with bodies of the
same size) and tokio-tungstenite WebSocket (binary messages one way), each over
tokio_pvm::ByteStream and over tokio::net::UnixStream. Latency: tokio-pvm, tokio-pvm (loan)
and unix at 64 B and 1 MiB. One line per finished measurement goes to stderr; the tables (or
JSON) to stdout. The methodology is in the comment at the top of examples/bench.rs.

  --json          print the results as JSON instead of tables
  --reps N        repetitions of every measurement (default 5; 1 with --quick)
  --sizes LIST    message sizes of the throughput rows, comma-separated, in bytes or with
                  K/KiB, M/MiB, G/GiB (default 64,1K,16K,256K,1M,16M)
  --only LIST     measure only these rows, comma-separated: pvm, pvm-loan, unix, pvm-tcp,
                  tcp, tcp-tls (the TCP rows need the tcp feature), pvm-current-thread,
                  unix-current-thread, pvm-block-on, unix-block-on, pvm-resent,
                  unix-resent, raw, rotated, memcpy (throughput); h2-pvm, h2-unix, ws-pvm,
                  ws-unix (protocol stacks); lat-pvm, lat-pvm-loan, lat-unix (latency);
                  throughput, stacks, latency (all of each)
  --quick         a much smaller run, as a smoke test
  --timeout SECS  give up on a measurement after SECS seconds (default 120)";

const DEFAULT_SIZES: [usize; 6] = [64, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 16 << 20];

/// Message sizes of the latency table.
const LATENCY_SIZES: [usize; 2] = [64, 1 << 20];

/// The rows of the latency table, in order.
const LATENCY_ROWS: [Transport; 3] = [Transport::PVM, Transport::PvmLoan, Transport::UNIX];

/// Largest message size with rows for the other runtime flavors.
const FLAVOR_MAX_SIZE: usize = 4 << 10;

/// The rows of the throughput table, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Fresh messages (see `fresh.rs`), both children on runtimes of the flavor.
    Pvm(Flavor),
    /// Fresh messages written into loans, over the zero-copy lane.
    PvmLoan,
    /// Fresh messages (see `fresh.rs`), both children on runtimes of the flavor.
    Unix(Flavor),
    /// Fresh messages over TCP on the loopback interface (see `tcp.rs`).
    #[cfg(feature = "tcp")]
    Tcp(tcp::TcpRow),
    /// One pre-built message, resent.
    PvmResent,
    /// One pre-built message, resent.
    UnixResent,
    Raw,
    /// Raw `process_vm_readv` into buffers that rotate like a transport's receive buffers.
    RawRotating,
    Memcpy,
}

impl Transport {
    const ALL: &[Transport] = &[
        Transport::Pvm(Flavor::Spawned),
        Transport::PvmLoan,
        Transport::Unix(Flavor::Spawned),
        #[cfg(feature = "tcp")]
        Transport::Tcp(tcp::TcpRow::Pvm),
        #[cfg(feature = "tcp")]
        Transport::Tcp(tcp::TcpRow::Plain),
        #[cfg(feature = "tcp")]
        Transport::Tcp(tcp::TcpRow::Tls),
        Transport::Pvm(Flavor::CurrentThread),
        Transport::Unix(Flavor::CurrentThread),
        Transport::Pvm(Flavor::BlockOn),
        Transport::Unix(Flavor::BlockOn),
        Transport::PvmResent,
        Transport::UnixResent,
        Transport::Raw,
        Transport::RawRotating,
        Transport::Memcpy,
    ];

    /// The primary rows: fresh messages, work in a spawned task.
    const PVM: Transport = Transport::Pvm(Flavor::Spawned);
    const UNIX: Transport = Transport::Unix(Flavor::Spawned);

    /// The row's name for `--only`.
    fn key(self) -> &'static str {
        match self {
            Transport::Pvm(Flavor::Spawned) => "pvm",
            Transport::Pvm(Flavor::CurrentThread) => "pvm-current-thread",
            Transport::Pvm(Flavor::BlockOn) => "pvm-block-on",
            Transport::PvmLoan => "pvm-loan",
            Transport::Unix(Flavor::Spawned) => "unix",
            Transport::Unix(Flavor::CurrentThread) => "unix-current-thread",
            Transport::Unix(Flavor::BlockOn) => "unix-block-on",
            #[cfg(feature = "tcp")]
            Transport::Tcp(row) => row.key(),
            Transport::PvmResent => "pvm-resent",
            Transport::UnixResent => "unix-resent",
            Transport::Raw => "raw",
            Transport::RawRotating => "rotated",
            Transport::Memcpy => "memcpy",
        }
    }

    /// Whether the row is measured at message size `size`: the other runtime flavors only
    /// up to [`FLAVOR_MAX_SIZE`], where the runtime's share of the cost is largest.
    fn applies(self, size: usize) -> bool {
        match self {
            Transport::Pvm(flavor) | Transport::Unix(flavor) if flavor != Flavor::Spawned => {
                size <= FLAVOR_MAX_SIZE
            }
            _ => true,
        }
    }

    /// For the rows of a sender and a receiver over a Unix socket: the children's roles,
    /// their runtime flavor and what the sender sends. (The TCP rows are `tcp.rs`'s.)
    fn stream_roles(self) -> Option<(&'static str, &'static str, Flavor, Data)> {
        let (pvm, unix) = (("pvm-recv", "pvm-send"), ("unix-recv", "unix-send"));
        let ((recv, send), flavor, data) = match self {
            Transport::Pvm(flavor) => (pvm, flavor, Data::Fresh),
            Transport::PvmLoan => (pvm, Flavor::Spawned, Data::Loan),
            Transport::Unix(flavor) => (unix, flavor, Data::Fresh),
            Transport::PvmResent => (pvm, Flavor::Spawned, Data::Resent),
            Transport::UnixResent => (unix, Flavor::Spawned, Data::Resent),
            Transport::Raw | Transport::RawRotating | Transport::Memcpy => return None,
            #[cfg(feature = "tcp")]
            Transport::Tcp(_) => return None,
        };
        Some((recv, send, flavor, data))
    }
}

/// A row of a table of rates (throughput, protocol stacks): what the report and the progress
/// lines need to know of it.
pub(crate) trait Row: Copy + PartialEq {
    /// The row's name in the tables.
    fn label(self) -> &'static str;

    /// The Unix-socket row this row's "vs unix" ratio divides by.
    fn reference(self) -> Self;

    /// How many of a measurement's `count` messages (or requests) its timed span covers: by
    /// default the ones after the first, timed from the first one's arrival to the last one's.
    fn timed(self, count: u64) -> u64 {
        count - 1
    }

    /// How many times its size each message (or request) moves: 2 for a request whose
    /// response is as large.
    fn directions(self) -> u64 {
        1
    }

    /// What the rate counts, per second: `msg` or `req`.
    fn unit(self) -> &'static str {
        "msg"
    }
}

impl Row for Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Pvm(Flavor::Spawned) => "tokio-pvm",
            Transport::Pvm(Flavor::CurrentThread) => "tokio-pvm [current_thread]",
            Transport::Pvm(Flavor::BlockOn) => "tokio-pvm [block_on]",
            Transport::PvmLoan => "tokio-pvm (loan)",
            Transport::Unix(Flavor::Spawned) => "unix+LengthDelimitedCodec",
            Transport::Unix(Flavor::CurrentThread) => "unix [current_thread]",
            Transport::Unix(Flavor::BlockOn) => "unix [block_on]",
            #[cfg(feature = "tcp")]
            Transport::Tcp(row) => row.label(),
            Transport::PvmResent => "tokio-pvm (resent buffer)",
            Transport::UnixResent => "unix (resent buffer)",
            Transport::Raw => "process_vm_readv (raw)",
            Transport::RawRotating => "process_vm_readv (rotated)",
            Transport::Memcpy => "memcpy (1 thread)",
        }
    }

    /// The Unix-socket row this row's "vs unix" ratio divides by: the one that sends the same
    /// kind of data, with the same runtime flavor.
    fn reference(self) -> Transport {
        match self {
            Transport::PvmResent | Transport::UnixResent => Transport::UnixResent,
            Transport::Pvm(flavor) | Transport::Unix(flavor) => Transport::Unix(flavor),
            _ => Transport::UNIX,
        }
    }
}

/// How much each measurement moves.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Bytes per throughput measurement, before the limits below.
    target_bytes: u64,
    /// Fewest and most messages per throughput measurement.
    min_messages: u64,
    max_messages: u64,
    /// Untimed and timed round trips per latency measurement, for 64 B and for 1 MiB.
    small_round_trips: (u64, u64),
    large_round_trips: (u64, u64),
}

const FULL: Scale = Scale {
    target_bytes: 4 << 30,
    min_messages: 64,
    max_messages: 1_000_000,
    small_round_trips: (200, 2000),
    large_round_trips: (30, 300),
};

const QUICK: Scale = Scale {
    target_bytes: 64 << 20,
    min_messages: 8,
    max_messages: 20_000,
    small_round_trips: (20, 200),
    large_round_trips: (5, 30),
};

impl Scale {
    fn messages(&self, size: usize) -> u64 {
        (self.target_bytes / size as u64).clamp(self.min_messages, self.max_messages)
    }

    fn round_trips(&self, size: usize) -> (u64, u64) {
        if size <= 64 << 10 {
            self.small_round_trips
        } else {
            self.large_round_trips
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    json: bool,
    reps: usize,
    sizes: Vec<usize>,
    scale: Scale,
    quick: bool,
    timeout: Duration,
    /// The rows to measure.
    only: Selection,
}

fn parse_size(text: &str) -> Result<usize, String> {
    stats::parse_size(text, 1, "messages must have at least 1 byte")
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let (mut json, mut quick, mut reps, mut sizes, mut timeout) =
        (false, false, None, None, Duration::from_secs(120));
    let mut only = Selection::all();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--json" => json = true,
            "--quick" => quick = true,
            "--reps" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--reps: {v:?} is not a number"))?;
                if n == 0 {
                    return Err("--reps must be at least 1".to_owned());
                }
                reps = Some(n);
            }
            "--sizes" => {
                let list = value()?;
                let parsed = list
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(parse_size)
                    .collect::<Result<Vec<_>, _>>()?;
                if parsed.is_empty() {
                    return Err("--sizes needs at least one size".to_owned());
                }
                sizes = Some(parsed);
            }
            "--timeout" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--timeout: {v:?} is not a positive number"))?;
                timeout = Duration::from_secs_f64(secs);
            }
            "--only" => only = parse_only(&value()?)?,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let sizes = sizes.unwrap_or_else(|| DEFAULT_SIZES.to_vec());
    let measured = |t: &Transport| sizes.iter().any(|&size| t.applies(size));
    if only.latency.is_empty() && only.stacks.is_empty() && !only.rows.iter().any(measured) {
        return Err(format!(
            "nothing to measure: the rows of --only have no measurement at these sizes (the \
             runtime-flavor rows need a size of at most {})",
            size_label(FLAVOR_MAX_SIZE)
        ));
    }
    Ok(Options {
        json,
        reps: reps.unwrap_or(if quick { 1 } else { 5 }),
        sizes,
        scale: if quick { QUICK } else { FULL },
        quick,
        timeout,
        only,
    })
}

/// The names `--only` takes, for its error messages.
fn only_keys() -> String {
    let rows: Vec<&str> = Transport::ALL.iter().map(|t| t.key()).collect();
    let stacks: Vec<&str> = Stack::ALL.iter().map(|s| s.key()).collect();
    let latency: Vec<String> = LATENCY_ROWS
        .iter()
        .map(|t| format!("lat-{}", t.key()))
        .collect();
    format!(
        "the rows are {}; {}; {}; throughput, stacks, latency (all of each)",
        rows.join(", "),
        stacks.join(", "),
        latency.join(", ")
    )
}

/// The rows to measure, each list in table order.
#[derive(Debug, Clone, PartialEq)]
struct Selection {
    /// Throughput rows.
    rows: Vec<Transport>,
    /// Protocol-stack rows.
    stacks: Vec<Stack>,
    /// Latency rows.
    latency: Vec<Transport>,
}

impl Selection {
    /// Every row.
    fn all() -> Selection {
        Selection {
            rows: Transport::ALL.to_vec(),
            stacks: Stack::ALL.to_vec(),
            latency: LATENCY_ROWS.to_vec(),
        }
    }
}

/// The rows `--only LIST` selects: throughput rows by [`Transport::key`], protocol-stack rows
/// by [`Stack::key`], latency rows by `lat-` and a throughput key, `throughput`, `stacks` and
/// `latency` for all of each. Table order is kept.
fn parse_only(list: &str) -> Result<Selection, String> {
    let (mut rows, mut stacks, mut latency) = (Vec::new(), Vec::new(), Vec::new());
    for key in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match key {
            "throughput" => rows.extend_from_slice(Transport::ALL),
            "stacks" => stacks.extend(Stack::ALL),
            "latency" => latency.extend(LATENCY_ROWS),
            _ => {
                if let Some(t) = Transport::ALL.iter().copied().find(|t| t.key() == key) {
                    rows.push(t);
                } else if let Some(s) = Stack::ALL.into_iter().find(|s| s.key() == key) {
                    stacks.push(s);
                } else if let Some(t) = LATENCY_ROWS
                    .into_iter()
                    .find(|t| key.strip_prefix("lat-") == Some(t.key()))
                {
                    latency.push(t);
                } else {
                    return Err(format!("--only: unknown row {key:?}; {}", only_keys()));
                }
            }
        }
    }
    if rows.is_empty() && stacks.is_empty() && latency.is_empty() {
        return Err(format!("--only needs at least one row; {}", only_keys()));
    }
    Ok(Selection {
        rows: in_order(Transport::ALL, &rows),
        stacks: in_order(&Stack::ALL, &stacks),
        latency: in_order(&LATENCY_ROWS, &latency),
    })
}

/// The rows of `all` that are in `chosen`, in the order of `all`, each once.
fn in_order<T: Copy + PartialEq>(all: &[T], chosen: &[T]) -> Vec<T> {
    all.iter().copied().filter(|t| chosen.contains(t)).collect()
}

/// One successful throughput (or protocol-stack) measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// The timed span: from the first message's arrival to the last one's (see
    /// [`Row::timed`]).
    pub(crate) elapsed: Duration,
    /// User + system time of the measurement's processes, less the making of what they make
    /// their messages from.
    pub(crate) cpu: Duration,
    /// For a row that loans: how many of the sender's loans were in the loan region.
    pub(crate) loans: Option<Loans>,
}

/// All repetitions of one row of a table of rates: a throughput row ([`Transport`]) or a
/// protocol-stack row ([`Stack`]).
#[derive(Debug, Clone)]
pub(crate) struct Cell<R = Transport> {
    pub(crate) size: usize,
    pub(crate) transport: R,
    /// Messages (or requests) per measurement.
    pub(crate) messages: u64,
    pub(crate) samples: Vec<Sample>,
    pub(crate) errors: Vec<String>,
}

/// All repetitions of one latency row.
#[derive(Debug, Clone)]
pub(crate) struct LatencyCell {
    pub(crate) size: usize,
    pub(crate) transport: Transport,
    pub(crate) rounds: u64,
    pub(crate) p50_us: Vec<f64>,
    pub(crate) p99_us: Vec<f64>,
    /// For the loan row: both sides' loans, per successful repetition.
    pub(crate) loans: Vec<Loans>,
    pub(crate) errors: Vec<String>,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) machine: Machine,
    pub(crate) command: String,
    pub(crate) reps: usize,
    pub(crate) quick: bool,
    pub(crate) sizes: Vec<usize>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) stacks: Vec<Cell<Stack>>,
    pub(crate) latency: Vec<LatencyCell>,
    pub(crate) wall: Duration,
}

/// Parses the `DONE MESSAGES ELAPSED_NS` line of a receiver.
fn parse_done(line: &str, messages: u64) -> Result<Duration, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields[..] {
        ["DONE", n, ns] => {
            let n: u64 = n.parse().map_err(|_| format!("bad report {line:?}"))?;
            let ns: u64 = ns.parse().map_err(|_| format!("bad report {line:?}"))?;
            if n != messages {
                return Err(format!(
                    "the receiver counted {n} messages, expected {messages}"
                ));
            }
            Ok(Duration::from_nanos(ns))
        }
        _ => Err(format!("unexpected report {line:?}")),
    }
}

fn expect_line(line: String, want: &str) -> Result<(), String> {
    if line == want {
        Ok(())
    } else {
        Err(format!("expected {want:?} from a child, got {line:?}"))
    }
}

fn path_arg(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the socket path {} is not UTF-8", path.display()))
}

/// What one throughput (or protocol-stack) measurement's children reported.
struct Reported {
    /// The timed span.
    elapsed: Duration,
    /// CPU time the children spent building their message sources, to leave out.
    setup_cpu: Duration,
    /// For a row that loans, the sender's loan count.
    loans: Option<Loans>,
}

/// Parses a sender's `SOURCE CPU_NS` line.
fn parse_source(line: &str) -> Result<Duration, String> {
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["SOURCE", ns] => ns
            .parse()
            .map(Duration::from_nanos)
            .map_err(|_| format!("bad report {line:?}")),
        _ => Err(format!(
            "unexpected report {line:?}, expected SOURCE CPU_NS"
        )),
    }
}

/// The receiver and the sender of a stream row, and what they reported. The receiver starts
/// with `args`, binds, and says `READY`, or `READY ADDR` if the system chose where (a TCP
/// port): the sender then starts with `ADDR` in place of the first argument (the socket path,
/// or the address to bind). The group is dropped (every child reaped) before this returns.
pub(crate) fn run_stream(
    mut group: Group,
    (recv, send): (&str, &str),
    mut args: Vec<String>,
    data: Data,
    messages: u64,
) -> Result<Reported, String> {
    let receiver = group.spawn_role(recv, &args)?;
    let ready = group.line(receiver)?;
    match ready.split_whitespace().collect::<Vec<_>>()[..] {
        ["READY"] => {}
        ["READY", addr] => args[0] = addr.to_owned(),
        _ => return Err(format!("expected READY from {recv}, got {ready:?}")),
    }
    let sender = group.spawn_role(send, &args)?;
    let setup_cpu = parse_source(&group.line(sender)?)?;
    let report = group.line(receiver)?;
    let loans = match data {
        Data::Loan => Some(Loans::parse(&group.line(sender)?)?),
        Data::Fresh | Data::Resent => None,
    };
    group.wait_all()?;
    drop(group);
    Ok(Reported {
        elapsed: parse_done(&report, messages)?,
        setup_cpu,
        loans,
    })
}

/// The children of one throughput measurement (other than a TCP row's, see `tcp.rs`), and
/// what they reported. The group is dropped (every child reaped) before this returns.
fn run_throughput(
    exe: &Path,
    transport: Transport,
    size: usize,
    messages: u64,
    timeout: Duration,
) -> Result<Reported, String> {
    let mut group = Group::new(exe, timeout);
    let (s, n) = (size.to_string(), messages.to_string());
    if let Some((recv, send, flavor, data)) = transport.stream_roles() {
        let path = RemoveOnDrop(socket_path("tokio-pvm-bench"));
        let args = vec![
            path_arg(&path.0)?,
            s,
            n,
            flavor.arg().to_owned(),
            data.arg().to_owned(),
        ];
        return run_stream(group, (recv, send), args, data, messages);
    }
    let report = match transport {
        Transport::Raw | Transport::RawRotating => {
            // The rotated row cycles through as many buffers as the default window holds
            // messages of this size (16 MiB, at most 1024 messages).
            let buffers = match transport {
                Transport::RawRotating => (tokio_pvm::DEFAULT_WINDOW_BYTES / size as u64)
                    .min(u64::from(tokio_pvm::DEFAULT_WINDOW_MESSAGES))
                    .max(1),
                _ => 1,
            };
            let rotate = buffers.to_string();
            let source = group.spawn_role("raw-src", std::slice::from_ref(&s))?;
            let line = group.line(source)?;
            let (pid, addr) = match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["SRC", pid, addr] => (pid.to_owned(), addr.to_owned()),
                _ => return Err(format!("unexpected report {line:?} from raw-src")),
            };
            let reader = group.spawn_role("raw-dst", &[pid, addr, s, n, rotate])?;
            let report = group.line(reader)?;
            group.close_stdin(source);
            group.wait_all()?;
            report
        }
        Transport::Memcpy => {
            let copier = group.spawn_role("memcpy", &[s, n])?;
            let report = group.line(copier)?;
            group.wait_all()?;
            report
        }
        other => return Err(format!("no throughput measurement for {}", other.label())),
    };
    drop(group);
    Ok(Reported {
        elapsed: parse_done(&report, messages)?,
        setup_cpu: Duration::ZERO,
        loans: None,
    })
}

/// Runs one measurement's children with `run` and adds their CPU time, read before and after
/// (see `# CPU` at the top).
fn measure(run: impl FnOnce() -> Result<Reported, String>) -> Result<Sample, String> {
    let before = children_cpu()?;
    let run = run();
    let after = children_cpu()?;
    let reported = run?;
    Ok(Sample {
        elapsed: reported.elapsed,
        cpu: after
            .saturating_sub(before)
            .saturating_sub(reported.setup_cpu),
        loans: reported.loans,
    })
}

impl<R: Row> Cell<R> {
    /// Measures this row once more, `run` starting its children and collecting their
    /// reports; says how it went on the progress line, and keeps the sample or the error.
    fn measure_once(
        &mut self,
        rep: usize,
        progress: &mut Progress,
        run: impl FnOnce(&Self) -> Result<Reported, String>,
    ) {
        let result = measure(|| run(self));
        progress.report(
            &format!("{} {}", self.transport.label(), size_label(self.size)),
            rep,
            &rate_outcome(self, &result),
        );
        match result {
            Ok(sample) => self.samples.push(sample),
            Err(e) => self.errors.push(format!("repetition {rep}: {e}")),
        }
    }
}

/// One latency measurement.
#[derive(Debug, Clone, Copy)]
struct Latency {
    /// The pinger's median and 99th percentile one-way latency, in µs.
    p50_us: f64,
    p99_us: f64,
    /// For the loan row: both sides' loans together.
    loans: Option<Loans>,
}

fn measure_latency(
    exe: &Path,
    transport: Transport,
    size: usize,
    (warmup, rounds): (u64, u64),
    timeout: Duration,
) -> Result<Latency, String> {
    let (echo, ping, data) = match transport {
        Transport::PVM => ("lat-echo-pvm", "lat-ping-pvm", Data::Fresh),
        Transport::PvmLoan => ("lat-echo-pvm", "lat-ping-pvm", Data::Loan),
        Transport::UNIX => ("lat-echo-unix", "lat-ping-unix", Data::Fresh),
        other => return Err(format!("no latency measurement for {}", other.label())),
    };
    let mut group = Group::new(exe, timeout);
    let path = RemoveOnDrop(socket_path("tokio-pvm-bench"));
    let p = path_arg(&path.0)?;
    let (s, d) = (size.to_string(), data.arg().to_owned());
    let echo = group.spawn_role(echo, &[p.clone(), s.clone(), d.clone()])?;
    expect_line(group.line(echo)?, "READY")?;
    let pinger = group.spawn_role(ping, &[p, s, d, warmup.to_string(), rounds.to_string()])?;
    let line = group.line(pinger)?;
    let loans = match data {
        Data::Loan => {
            let pinger = Loans::parse(&group.line(pinger)?)?;
            Some(pinger.add(Loans::parse(&group.line(echo)?)?))
        }
        Data::Fresh | Data::Resent => None,
    };
    group.wait_all()?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let bad = || format!("unexpected report {line:?}");
    match fields[..] {
        ["LAT", n, p50, p99] => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            if n != rounds {
                return Err(format!(
                    "the pinger timed {n} round trips, expected {rounds}"
                ));
            }
            let p50: f64 = p50.parse().map_err(|_| bad())?;
            let p99: f64 = p99.parse().map_err(|_| bad())?;
            Ok(Latency {
                p50_us: p50 / 1e3,
                p99_us: p99 / 1e3,
                loans,
            })
        }
        _ => Err(bad()),
    }
}

/// Reports each measurement on standard error as it finishes, so that a long run is not
/// silent: `[12/96] tokio-pvm 1 MiB rep 2: 4.123 GB/s, 3,931 msg/s`.
struct Progress {
    total: usize,
    done: usize,
}

impl Progress {
    fn report(&mut self, what: &str, rep: usize, outcome: &str) {
        self.done += 1;
        eprintln!("[{}/{}] {what} rep {rep}: {outcome}", self.done, self.total);
    }
}

/// A throughput (or protocol-stack) measurement's outcome, for [`Progress`].
fn rate_outcome<R: Row>(cell: &Cell<R>, result: &Result<Sample, String>) -> String {
    let sample = match result {
        Ok(sample) => sample,
        Err(e) => return format!("FAILED: {e}"),
    };
    let secs = sample.elapsed.as_secs_f64();
    let row = cell.transport;
    let timed = row.timed(cell.messages) as f64;
    let mut out = if secs > 0.0 {
        format!(
            "{:.3} GB/s, {} {}/s",
            timed * (cell.size as u64 * row.directions()) as f64 / 1e9 / secs,
            fmt::grouped((timed / secs).round() as u64),
            row.unit()
        )
    } else {
        "no time measured".to_owned()
    };
    if let Some(loans) = sample.loans {
        out.push_str(&loans_outcome(loans));
    }
    out
}

/// `, 4,096 of 4,096 loans shared` (and whether the lane was open, if not).
fn loans_outcome(loans: Loans) -> String {
    format!(
        ", {} of {} loans shared{}",
        fmt::grouped(loans.shared),
        fmt::grouped(loans.total),
        if loans.zero_copy {
            ""
        } else {
            " (zero-copy lane not open)"
        }
    )
}

fn run(opts: &Options, command: String) -> Result<Results, String> {
    let started = Instant::now();
    let exe: PathBuf =
        std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let mut cells: Vec<Cell> = opts
        .sizes
        .iter()
        .flat_map(|&size| {
            opts.only
                .rows
                .iter()
                .copied()
                .filter(move |t| t.applies(size))
                .map(move |transport| Cell {
                    size,
                    transport,
                    messages: opts.scale.messages(size).max(2),
                    samples: Vec::new(),
                    errors: Vec::new(),
                })
        })
        .collect();
    let mut stacks: Vec<Cell<Stack>> = STACK_SIZES
        .iter()
        .flat_map(|&size| {
            opts.only.stacks.iter().map(move |&stack| Cell {
                size,
                transport: stack,
                messages: stack.count(size, opts.quick),
                samples: Vec::new(),
                errors: Vec::new(),
            })
        })
        .collect();
    let mut latency: Vec<LatencyCell> = LATENCY_SIZES
        .iter()
        .flat_map(|&size| {
            opts.only.latency.iter().map(move |&transport| LatencyCell {
                size,
                transport,
                rounds: opts.scale.round_trips(size).1,
                p50_us: Vec::new(),
                p99_us: Vec::new(),
                loans: Vec::new(),
                errors: Vec::new(),
            })
        })
        .collect();
    let mut progress = Progress {
        total: opts.reps * (cells.len() + stacks.len() + latency.len()),
        done: 0,
    };
    // The TLS rows' certificates, made once (untimed) if any is measured; the directory is
    // removed when `certs` is dropped, at the end of the run.
    #[cfg(feature = "tcp")]
    let certs = tcp::Certs::for_rows(&opts.only.rows)?;

    for rep in 0..opts.reps {
        for cell in &mut cells {
            cell.measure_once(rep + 1, &mut progress, |c| {
                #[cfg(feature = "tcp")]
                if let Transport::Tcp(row) = c.transport {
                    let certs = certs.as_ref();
                    return tcp::run_tcp(&exe, row, c.size, c.messages, certs, opts.timeout);
                }
                run_throughput(&exe, c.transport, c.size, c.messages, opts.timeout)
            });
        }
        for cell in &mut stacks {
            cell.measure_once(rep + 1, &mut progress, |c| {
                stacks::run_stack(&exe, c.transport, c.size, c.messages, opts.timeout)
            });
        }
        for cell in &mut latency {
            let trips = opts.scale.round_trips(cell.size);
            let result = measure_latency(&exe, cell.transport, cell.size, trips, opts.timeout);
            let outcome = match &result {
                Ok(lat) => format!(
                    "p50 {:.1} us, p99 {:.1} us{}",
                    lat.p50_us,
                    lat.p99_us,
                    lat.loans.map(loans_outcome).unwrap_or_default()
                ),
                Err(e) => format!("FAILED: {e}"),
            };
            progress.report(
                &format!(
                    "latency {} {}",
                    cell.transport.label(),
                    size_label(cell.size)
                ),
                rep + 1,
                &outcome,
            );
            match result {
                Ok(lat) => {
                    cell.p50_us.push(lat.p50_us);
                    cell.p99_us.push(lat.p99_us);
                    cell.loans.extend(lat.loans);
                }
                Err(e) => cell.errors.push(format!("repetition {}: {e}", rep + 1)),
            }
        }
    }
    Ok(Results {
        machine: Machine::detect(),
        command,
        reps: opts.reps,
        quick: opts.quick,
        sizes: opts.sizes.clone(),
        cells,
        stacks,
        latency,
        wall: started.elapsed(),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        let role = args.get(1).map_or("", String::as_str);
        return match child::run(role, args.get(2..).unwrap_or_default()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench child {role} (pid {}): {e}", std::process::id());
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse_args(&args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let command = if args.is_empty() {
        "cargo run --release --example bench".to_owned()
    } else {
        format!("cargo run --release --example bench -- {}", args.join(" "))
    };
    match run(&opts, command) {
        Ok(results) => {
            if opts.json {
                print!("{}", report::json(&results));
            } else {
                print!("{}", report::text(&results));
            }
            let failed = results.cells.iter().any(|c| !c.errors.is_empty())
                || results.stacks.iter().any(|c| !c.errors.is_empty())
                || results.latency.iter().any(|c| !c.errors.is_empty());
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_rows_in_table_order() {
        let only = parse_only("unix, pvm-loan,lat-pvm-loan").unwrap();
        assert_eq!(only.rows, [Transport::PvmLoan, Transport::UNIX]);
        assert!(only.stacks.is_empty());
        assert_eq!(only.latency, [Transport::PvmLoan]);
        let only = parse_only("latency").unwrap();
        assert!(only.rows.is_empty() && only.stacks.is_empty());
        assert_eq!(only.latency, LATENCY_ROWS);
        let only = parse_only("throughput,pvm").unwrap();
        assert_eq!(only.rows, Transport::ALL);
        assert!(only.stacks.is_empty() && only.latency.is_empty());
        assert!(
            parse_only("tokio-pvm")
                .unwrap_err()
                .contains("pvm-block-on")
        );
        assert!(parse_only(" , ").is_err());
        #[cfg(feature = "tcp")]
        {
            let only = parse_only("tcp-tls,pvm-tcp,tcp,unix").unwrap();
            let keys: Vec<&str> = only.rows.iter().map(|t| t.key()).collect();
            assert_eq!(keys, ["unix", "pvm-tcp", "tcp", "tcp-tls"]);
        }
        assert!(parse_only("lat-raw").is_err());
        assert!(parse_only("lat-h2-pvm").is_err());
    }

    #[test]
    fn only_selects_stacks() {
        let only = parse_only("ws-unix,h2-pvm").unwrap();
        assert!(only.rows.is_empty() && only.latency.is_empty());
        assert_eq!(only.stacks, [Stack::ALL[0], Stack::ALL[3]]);
        assert_eq!(only.stacks[0].key(), "h2-pvm");
        let only = parse_only("stacks,ws-pvm").unwrap();
        assert_eq!(only.stacks, Stack::ALL);
        assert!(only.rows.is_empty() && only.latency.is_empty());
        assert!(parse_only("h2").unwrap_err().contains("ws-unix"));
        // The stack rows are measured whatever `--sizes` says.
        let args = ["--only", "stacks", "--sizes", "64"].map(String::from);
        let opts = parse_args(&args).unwrap();
        assert_eq!(opts.only.stacks, Stack::ALL);
        assert_eq!(parse_args(&[]).unwrap().only, Selection::all());
    }

    #[test]
    fn stack_counts() {
        for stack in Stack::ALL {
            for size in STACK_SIZES {
                let (full, quick) = (stack.count(size, false), stack.count(size, true));
                assert!(full >= quick && quick >= 64, "{} {size}", stack.key());
            }
            assert_eq!(stack.reference().reference(), stack.reference());
        }
        assert_eq!(Stack::ALL[0].count(1 << 10, false), 60_000);
        assert_eq!(Stack::ALL[0].count(1 << 10, true), 3_000);
        assert_eq!(Stack::ALL[2].count(4 << 20, true), 64);
    }

    #[test]
    fn usage_names_every_row() {
        for t in Transport::ALL {
            assert!(USAGE.contains(t.key()), "{}", t.key());
        }
        for s in Stack::ALL {
            assert!(USAGE.contains(s.key()), "{}", s.key());
        }
        for t in LATENCY_ROWS {
            assert!(USAGE.contains(&format!("lat-{}", t.key())), "{}", t.key());
        }
    }

    #[test]
    fn keys_are_distinct() {
        let keys: Vec<&str> = Transport::ALL
            .iter()
            .map(|t| t.key())
            .chain(Stack::ALL.iter().map(|s| s.key()))
            .collect();
        let labels: Vec<&str> = Transport::ALL
            .iter()
            .map(|t| t.label())
            .chain(Stack::ALL.iter().map(|s| s.label()))
            .collect();
        for list in [keys, labels] {
            for (i, a) in list.iter().enumerate() {
                assert!(!list[i + 1..].contains(a), "{a} twice");
            }
        }
    }
}
