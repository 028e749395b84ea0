//! The child processes of the benchmark: one function per role.
//!
//! A child is this same binary started as `bench --child ROLE ARGS...`. It reports on its
//! standard output, one line per report:
//!
//! * `READY`: a listener is bound and the peer may be started.
//! * `READY ADDR`: (a TCP receiver) a listener is bound at `ADDR`, a port the system chose;
//!   the peer connects there.
//! * `SRC PID ADDR`: (raw source) the buffer to read lives at `ADDR` in process `PID`.
//! * `SOURCE CPU_NS`: (a throughput sender, first) the CPU time it took to build what it makes
//!   its messages from (the fresh source, or the one resent message).
//! * `DONE MESSAGES ELAPSED_NS`: a receiver's result; the clock ran from the moment the first
//!   message had arrived to the moment the last one had.
//! * `LAT ROUND_TRIPS P50_NS P99_NS`: a pinger's one-way latency (round trip / 2).
//! * `LOANS SHARED TOTAL ZERO_COPY`: (a side that loans, last) how many of its `TOTAL` loans
//!   were in the loan region rather than on the heap, and whether the zero-copy lane was open
//!   (1) or not (0).
//!
//! The roles of the protocol-stack rows (`h2-server`, `h2-client`, `ws-server`, `ws-client`)
//! live in `stacks.rs`, those of the TCP rows (`pvm-tcp-recv`, `pvm-tcp-send`, `tcp-recv`,
//! `tcp-send`, `tcp-tls-recv`, `tcp-tls-send`) in `tcp.rs`; they report the same way.
//!
//! Errors go to standard error and make the child exit with a failure status.

use std::fmt::Display;
use std::future::Future;
use std::hint::black_box;
use std::io::Read;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use nix::errno::Errno;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;
use tokio::net::{UnixListener, UnixStream};
use tokio_pvm::{Config, Connection, DEFAULT_MAX_MESSAGE_SIZE, Listener, LoanBuf};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::fresh::{Checker, Fresh};

/// Runs child role `role` with its arguments.
pub(crate) fn run(role: &str, args: &[String]) -> Result<(), String> {
    match role {
        "pvm-recv" => {
            let a = StreamArgs::parse(role, args)?;
            a.flavor.run(pvm_recv(a))
        }
        "pvm-send" => {
            let a = StreamArgs::parse(role, args)?;
            a.flavor.run(pvm_send(a))
        }
        "unix-recv" => {
            let a = StreamArgs::parse(role, args)?;
            a.flavor.run(unix_recv(a))
        }
        "unix-send" => {
            let a = StreamArgs::parse(role, args)?;
            a.flavor.run(unix_send(a))
        }
        "raw-src" => {
            let [size] = args else {
                return Err(format!("raw-src takes SIZE, got {args:?}"));
            };
            raw_src(size_arg(size)?)
        }
        "raw-dst" => {
            let [pid, addr, size, count, buffers] = args else {
                return Err(format!(
                    "raw-dst takes PID ADDR SIZE COUNT BUFFERS, got {args:?}"
                ));
            };
            raw_dst(
                number(pid, "pid")?,
                number(addr, "address")?,
                size_arg(size)?,
                count_arg(count)?,
                number(buffers, "buffer count")?,
            )
        }
        "memcpy" => {
            let [size, count] = args else {
                return Err(format!("memcpy takes SIZE COUNT, got {args:?}"));
            };
            memcpy(size_arg(size)?, count_arg(count)?)
        }
        "lat-echo-pvm" | "lat-echo-unix" => {
            let [path, size, data] = args else {
                return Err(format!("{role} takes PATH SIZE DATA, got {args:?}"));
            };
            let (path, size, data) = (path.clone(), size_arg(size)?, Data::parse(data)?);
            if role == "lat-echo-pvm" {
                Flavor::Spawned.run(pvm_echo(path, size, data))
            } else {
                Flavor::Spawned.run(unix_echo(path, size, data))
            }
        }
        "lat-ping-pvm" | "lat-ping-unix" => {
            let [path, size, data, warmup, rounds] = args else {
                return Err(format!(
                    "{role} takes PATH SIZE DATA WARMUP ROUND_TRIPS, got {args:?}"
                ));
            };
            let ping = Ping {
                path: path.clone(),
                size: size_arg(size)?,
                data: Data::parse(data)?,
                warmup: number(warmup, "warm-up count")?,
                rounds: count_arg(rounds)?,
            };
            if role == "lat-ping-pvm" {
                Flavor::Spawned.run(pvm_ping(ping))
            } else {
                Flavor::Spawned.run(unix_ping(ping))
            }
        }
        "h2-server" | "h2-client" | "ws-server" | "ws-client" => {
            crate::stacks::run_child(role, args)
        }
        #[cfg(feature = "tcp")]
        "pvm-tcp-recv" | "pvm-tcp-send" | "tcp-recv" | "tcp-send" | "tcp-tls-recv"
        | "tcp-tls-send" => crate::tcp::run_child(role, args),
        other => Err(format!("unknown child role {other:?}")),
    }
}

// ----- arguments ---------------------------------------------------------------------------

fn number<T: FromStr>(value: &str, what: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("bad {what} {value:?}"))
}

pub(crate) fn size_arg(value: &str) -> Result<usize, String> {
    match number(value, "size")? {
        0 => Err("the message size must be at least 1 byte".to_owned()),
        size => Ok(size),
    }
}

pub(crate) fn count_arg(value: &str) -> Result<u64, String> {
    match number(value, "message count")? {
        n if n < 2 => Err(format!(
            "at least 2 messages are needed to time anything, got {n}"
        )),
        n => Ok(n),
    }
}

/// What the sender of a throughput measurement sends, and what its receiver checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Data {
    /// A freshly allocated and written message each time, stamped with its sequence number
    /// (see [`crate::fresh`]); the receiver checks the length and the stamps.
    Fresh,
    /// As `Fresh`, but written straight into a buffer from `Connection::loan`, with a loan
    /// region on both sides (see [`loan_region`]).
    Loan,
    /// A clone of one pre-built message each time; the receiver checks the length and the
    /// first and last byte.
    Resent,
}

impl Data {
    /// The name on a child's command line.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Data::Fresh => "fresh",
            Data::Loan => "loan",
            Data::Resent => "resent",
        }
    }

    fn parse(value: &str) -> Result<Data, String> {
        match value {
            "fresh" => Ok(Data::Fresh),
            "loan" => Ok(Data::Loan),
            "resent" => Ok(Data::Resent),
            other => Err(format!("bad data kind {other:?}: fresh, loan or resent")),
        }
    }
}

/// How an async child runs its work on Tokio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// In a task spawned on a multi-thread runtime with the default number of workers (one
    /// per CPU); the child's main thread waits for it in `block_on`.
    Spawned,
    /// In `block_on` of a `current_thread` runtime: one thread does everything.
    CurrentThread,
    /// Directly in `block_on` of a multi-thread runtime (what a loop in a plain
    /// `#[tokio::main]` does): the work runs on the main thread, and the connection's driver
    /// task, if any, on the workers.
    BlockOn,
}

impl Flavor {
    /// The name on a child's command line, and in row labels.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Flavor::Spawned => "spawned",
            Flavor::CurrentThread => "current_thread",
            Flavor::BlockOn => "block_on",
        }
    }

    fn parse(value: &str) -> Result<Flavor, String> {
        match value {
            "spawned" => Ok(Flavor::Spawned),
            "current_thread" => Ok(Flavor::CurrentThread),
            "block_on" => Ok(Flavor::BlockOn),
            other => Err(format!(
                "bad runtime flavor {other:?}: spawned, current_thread or block_on"
            )),
        }
    }

    /// Runs `work` on a new runtime of this flavor.
    pub(crate) fn run<F>(self, work: F) -> Result<(), String>
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let rt = match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::Spawned | Flavor::BlockOn => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .map_err(|e| format!("starting the Tokio runtime: {e}"))?;
        match self {
            Flavor::Spawned => rt.block_on(async move {
                tokio::spawn(work)
                    .await
                    .map_err(|e| format!("the benchmark task failed: {e}"))?
            }),
            Flavor::CurrentThread | Flavor::BlockOn => rt.block_on(work),
        }
    }
}

/// The arguments of a throughput sender or receiver: `PATH SIZE COUNT FLAVOR DATA` (for the
/// TCP roles, `PATH` is the address to bind or to connect to).
pub(crate) struct StreamArgs {
    pub(crate) path: String,
    pub(crate) size: usize,
    pub(crate) count: u64,
    pub(crate) flavor: Flavor,
    pub(crate) data: Data,
}

impl StreamArgs {
    pub(crate) fn parse(role: &str, args: &[String]) -> Result<StreamArgs, String> {
        let [path, size, count, flavor, data] = args else {
            return Err(format!(
                "{role} takes PATH SIZE COUNT FLAVOR DATA, got {args:?}"
            ));
        };
        Ok(StreamArgs {
            path: path.clone(),
            size: size_arg(size)?,
            count: count_arg(count)?,
            flavor: Flavor::parse(flavor)?,
            data: Data::parse(data)?,
        })
    }
}

// ----- shared pieces -----------------------------------------------------------------------

/// A message of `size` bytes: byte `i` is `i % 251`.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Checks what a receiver can check cheaply: the length and the first and last byte.
#[inline]
fn touch(msg: &[u8], size: usize) -> Result<(), String> {
    if msg.len() != size {
        return Err(format!(
            "a message has {} bytes, expected {size}",
            msg.len()
        ));
    }
    let first = black_box(msg[0]);
    let last = black_box(msg[size - 1]);
    if first != 0 || last != ((size - 1) % 251) as u8 {
        return Err(format!(
            "a message of {size} bytes has first byte {first} and last byte {last}, expected 0 \
             and {}",
            (size - 1) % 251
        ));
    }
    Ok(())
}

/// Tells the parent that the listener is bound.
fn ready() {
    println!("READY");
}

/// The loan region of both sides of a connection that loans messages of `size` bytes: 64 MiB
/// or 4 messages, whichever is larger (room for the window in flight, the receive buffer and
/// the message being written).
fn loan_region(size: usize) -> usize {
    size.saturating_mul(4).max(64 << 20)
}

/// The same limits on both sides of a `tokio-pvm` connection: the default window, messages
/// up to 64 MiB or `size`, whichever is larger, and for [`Data::Loan`] a loan region of
/// [`loan_region`]`(size)`.
pub(crate) fn pvm_config(size: usize, data: Data) -> Config {
    let config = Config::new().max_message_size((size as u64).max(DEFAULT_MAX_MESSAGE_SIZE));
    if data == Data::Loan {
        config.loan_region(loan_region(size))
    } else {
        config
    }
}

/// A length-delimited codec (4-byte length) that accepts frames up to 64 MiB or `size`,
/// whichever is larger: the same limit as [`pvm_config`].
pub(crate) fn codec(size: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(size.max(DEFAULT_MAX_MESSAGE_SIZE as usize))
        .new_codec()
}

/// Counts messages and takes the time when the first and when the last expected one arrived.
/// Two branches and two clock reads per run, nothing per message.
pub(crate) struct Clock {
    expect: u64,
    seen: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Clock {
    pub(crate) fn new(expect: u64) -> Clock {
        Clock {
            expect,
            seen: 0,
            first: None,
            last: None,
        }
    }

    #[inline]
    pub(crate) fn tick(&mut self) {
        self.seen += 1;
        if self.seen == 1 {
            self.first = Some(Instant::now());
        }
        if self.seen == self.expect {
            self.last = Some(Instant::now());
        }
    }

    /// Prints the `DONE MESSAGES ELAPSED_NS` line, or fails if not every expected message
    /// arrived.
    pub(crate) fn report(self) -> Result<(), String> {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return Err(format!(
                "received {} of {} messages",
                self.seen, self.expect
            ));
        };
        if self.seen != self.expect {
            return Err(format!(
                "received {} messages, expected {}",
                self.seen, self.expect
            ));
        }
        println!("DONE {} {}", self.seen, (last - first).as_nanos());
        Ok(())
    }
}

// ----- throughput: tokio-pvm and Unix socket + LengthDelimitedCodec ------------------------

/// What a receiver checks in every message.
enum Check {
    /// The length and the first and last byte of [`pattern`].
    Pattern(usize),
    /// The length and the stamps of the next sequence number.
    Stamps(Checker),
}

impl Check {
    fn new(data: Data, size: usize) -> Check {
        match data {
            Data::Resent => Check::Pattern(size),
            Data::Fresh | Data::Loan => Check::Stamps(Checker::new(size)),
        }
    }

    #[inline]
    fn check(&mut self, msg: &[u8]) -> Result<(), String> {
        match self {
            Check::Pattern(size) => touch(msg, *size),
            Check::Stamps(checker) => checker.check(msg),
        }
    }
}

/// How many of a side's loans came from the connection's loan region, as `Connection::loan`
/// chose: the rest came from the heap and travelled as ordinary messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Loans {
    pub(crate) shared: u64,
    pub(crate) total: u64,
    /// Whether the zero-copy lane was open (`Connection::zero_copy`).
    pub(crate) zero_copy: bool,
}

impl Loans {
    #[inline]
    fn count(&mut self, buf: &LoanBuf) {
        self.total += 1;
        self.shared += u64::from(buf.is_shared());
    }

    /// Prints the `LOANS SHARED TOTAL ZERO_COPY` line.
    fn report(mut self, zero_copy: bool) {
        self.zero_copy = zero_copy;
        println!(
            "LOANS {} {} {}",
            self.shared,
            self.total,
            u8::from(self.zero_copy)
        );
    }

    /// Parses a `LOANS` line.
    pub(crate) fn parse(line: &str) -> Result<Loans, String> {
        let bad = || format!("unexpected report {line:?}, expected LOANS SHARED TOTAL ZERO_COPY");
        let ["LOANS", shared, total, zero_copy] = line.split_whitespace().collect::<Vec<_>>()[..]
        else {
            return Err(bad());
        };
        Ok(Loans {
            shared: shared.parse().map_err(|_| bad())?,
            total: total.parse().map_err(|_| bad())?,
            zero_copy: match zero_copy {
                "1" => true,
                "0" => false,
                _ => return Err(bad()),
            },
        })
    }

    /// Both sides' loans together.
    pub(crate) fn add(self, other: Loans) -> Loans {
        Loans {
            shared: self.shared + other.shared,
            total: self.total + other.total,
            zero_copy: self.zero_copy && other.zero_copy,
        }
    }
}

/// Makes the messages of a sender.
pub(crate) enum Producer {
    Resent(Bytes),
    Fresh(Fresh),
    Loan(Fresh, Loans),
}

impl Producer {
    /// Builds what the messages are made from (the fresh source, or the one message); called
    /// before connecting, so that it stays out of the measurement.
    fn new(data: Data, size: usize) -> Producer {
        match data {
            Data::Resent => Producer::Resent(Bytes::from(pattern(size))),
            Data::Fresh => Producer::Fresh(Fresh::new(size)),
            Data::Loan => Producer::Loan(Fresh::new(size), Loans::default()),
        }
    }

    /// The next message. A loaning producer loans it from `lender`; without one (never the
    /// case: the Unix and TCP roles refuse loans) it comes from the heap and counts as not
    /// shared.
    #[inline]
    pub(crate) fn next(&mut self, lender: Option<&Connection>) -> Bytes {
        match (self, lender) {
            (Producer::Resent(msg), _) => msg.clone(),
            (Producer::Fresh(fresh), _) => fresh.heap(),
            (Producer::Loan(fresh, loans), Some(conn)) => {
                let mut buf = conn.loan(fresh.size());
                loans.count(&buf);
                fresh.fill(&mut buf);
                buf.freeze()
            }
            (Producer::Loan(fresh, loans), None) => {
                loans.total += 1;
                fresh.heap()
            }
        }
    }

    /// The loans counted so far, if this producer loans.
    fn loans(&self) -> Option<Loans> {
        match self {
            Producer::Loan(_, loans) => Some(*loans),
            _ => None,
        }
    }
}

/// Receives until the stream ends, checking every message, and reports the clock.
pub(crate) async fn receive_all<St, T, E>(stream: &mut St, a: &StreamArgs) -> Result<(), String>
where
    St: Stream<Item = Result<T, E>> + Unpin,
    T: AsRef<[u8]>,
    E: Display,
{
    let mut check = Check::new(a.data, a.size);
    let mut clock = Clock::new(a.count);
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|e| format!("receiving message {}: {e}", clock.seen))?;
        check.check(msg.as_ref())?;
        drop(msg);
        clock.tick();
    }
    clock.report()
}

/// Feeds `count` messages made by `make` (which may use the sink, to loan from it), then
/// closes the sink.
pub(crate) async fn feed_all<S>(
    sink: &mut S,
    count: u64,
    mut make: impl FnMut(&S) -> Bytes,
) -> Result<(), String>
where
    S: Sink<Bytes> + Unpin,
    S::Error: Display,
{
    for i in 0..count {
        let msg = make(sink);
        sink.feed(msg)
            .await
            .map_err(|e| format!("sending message {i}: {e}"))?;
    }
    sink.close()
        .await
        .map_err(|e| format!("closing after {count} messages: {e}"))
}

/// Binds a listener at `path`, says `READY`, and accepts the one connection.
pub(crate) async fn pvm_accept(path: &str, config: Config) -> Result<Connection, String> {
    let listener = Listener::bind_with(path, config).map_err(|e| format!("binding {path}: {e}"))?;
    ready();
    let conn = listener
        .accept()
        .await
        .map_err(|e| format!("accepting on {path}: {e}"))?;
    drop(listener); // removes the socket file
    Ok(conn)
}

async fn pvm_recv(a: StreamArgs) -> Result<(), String> {
    let mut conn = pvm_accept(&a.path, pvm_config(a.size, a.data)).await?;
    receive_all(&mut conn, &a).await
}

/// Makes a sender's [`Producer`] and reports the CPU time that took (see [`report_source`]).
pub(crate) fn make_producer(data: Data, size: usize) -> Result<Producer, String> {
    report_source(|| Producer::new(data, size))
}

/// Builds what a child makes its messages from with `build` and reports, on a
/// `SOURCE CPU_NS` line, the CPU time that took (this thread's, from
/// `getrusage(RUSAGE_THREAD)`): benchmark scaffolding, which the parent takes out of the
/// measurement's CPU time.
pub(crate) fn report_source<T>(build: impl FnOnce() -> T) -> Result<T, String> {
    let before = thread_cpu()?;
    let built = build();
    let took = thread_cpu()?.saturating_sub(before);
    println!("SOURCE {}", took.as_nanos());
    Ok(built)
}

/// User + system CPU time of the calling thread.
fn thread_cpu() -> Result<Duration, String> {
    let usage =
        getrusage(UsageWho::RUSAGE_THREAD).map_err(|e| format!("getrusage(RUSAGE_THREAD): {e}"))?;
    let tv = |t: TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(tv(usage.user_time()) + tv(usage.system_time()))
}

async fn pvm_send(a: StreamArgs) -> Result<(), String> {
    let mut producer = make_producer(a.data, a.size)?;
    let mut conn = Connection::connect_with(&a.path, pvm_config(a.size, a.data))
        .await
        .map_err(|e| format!("connecting to {}: {e}", a.path))?;
    feed_all(&mut conn, a.count, |c| producer.next(Some(c))).await?;
    if let Some(loans) = producer.loans() {
        loans.report(conn.zero_copy());
    }
    Ok(())
}

/// Refuses [`Data::Loan`]: a Unix socket has no loan lane.
fn no_loans(data: Data) -> Result<(), String> {
    if data == Data::Loan {
        return Err("the Unix-socket roles do not loan: a socket has no loan lane".to_owned());
    }
    Ok(())
}

/// Binds a Unix listener at `path`, says `READY`, accepts the one connection and removes the
/// socket file.
pub(crate) async fn unix_accept_stream(path: &str) -> Result<UnixStream, String> {
    let listener = UnixListener::bind(path).map_err(|e| format!("binding {path}: {e}"))?;
    ready();
    let (stream, _) = listener
        .accept()
        .await
        .map_err(|e| format!("accepting on {path}: {e}"))?;
    drop(listener);
    let _ = std::fs::remove_file(path);
    Ok(stream)
}

/// [`unix_accept_stream`], the connection framed for messages of `size` bytes.
async fn unix_accept(
    path: &str,
    size: usize,
) -> Result<Framed<UnixStream, LengthDelimitedCodec>, String> {
    Ok(Framed::new(unix_accept_stream(path).await?, codec(size)))
}

async fn unix_recv(a: StreamArgs) -> Result<(), String> {
    no_loans(a.data)?;
    let mut framed = unix_accept(&a.path, a.size).await?;
    receive_all(&mut framed, &a).await
}

async fn unix_send(a: StreamArgs) -> Result<(), String> {
    no_loans(a.data)?;
    let mut producer = make_producer(a.data, a.size)?;
    let stream = UnixStream::connect(&a.path)
        .await
        .map_err(|e| format!("connecting to {}: {e}", a.path))?;
    let mut framed = Framed::new(stream, codec(a.size));
    feed_all(&mut framed, a.count, |_| producer.next(None)).await
}

// ----- throughput: raw process_vm_readv and memcpy -----------------------------------------

/// Holds a touched buffer of `size` bytes, says where it is, and waits until standard input
/// closes.
fn raw_src(size: usize) -> Result<(), String> {
    let buf = pattern(size);
    println!("SRC {} {}", std::process::id(), buf.as_ptr() as usize);
    let mut rest = Vec::new();
    std::io::stdin()
        .read_to_end(&mut rest)
        .map_err(|e| format!("waiting for standard input to close: {e}"))?;
    black_box(&buf);
    Ok(())
}

/// Copies `local.len()` bytes at `addr` in process `pid` into `local`, continuing after short
/// transfers.
fn read_full(pid: Pid, addr: usize, local: &mut [u8]) -> Result<(), String> {
    let len = local.len();
    let mut done = 0;
    while done < len {
        let remote = [RemoteIoVec {
            base: addr + done,
            len: len - done,
        }];
        let mut iov = [std::io::IoSliceMut::new(&mut local[done..])];
        match process_vm_readv(pid, &mut iov, &remote) {
            Ok(0) => {
                return Err(format!(
                    "process_vm_readv from process {pid} copied nothing at offset {done}"
                ));
            }
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(format!(
                    "process_vm_readv of {len} bytes from process {pid} at {addr:#x}: {e}"
                ));
            }
        }
    }
    Ok(())
}

/// Reads process `pid`'s buffer `count` times into `buffers` pre-faulted local buffers (at
/// least one) used in turn, as a transport's receive buffers are.
fn raw_dst(pid: i32, addr: usize, size: usize, count: u64, buffers: usize) -> Result<(), String> {
    let pid = Pid::from_raw(pid);
    let buffers = buffers.max(1);
    // A non-zero fill writes every page, so none faults during the loop.
    let mut locals: Vec<Vec<u8>> = (0..buffers)
        .map(|_| black_box(vec![0x5a_u8; size]))
        .collect();
    let mut clock = Clock::new(count);
    for i in 0..count {
        let local = &mut locals[(i % buffers as u64) as usize];
        read_full(pid, addr, local)?;
        touch(local, size)?;
        clock.tick();
    }
    clock.report()
}

/// Copies `size` bytes between two pre-faulted buffers `count` times on one thread.
fn memcpy(size: usize, count: u64) -> Result<(), String> {
    let src = pattern(size);
    let mut dst = black_box(vec![0x5a_u8; size]);
    let mut clock = Clock::new(count);
    for _ in 0..count {
        black_box(&mut dst[..]).copy_from_slice(black_box(&src[..]));
        touch(&dst, size)?;
        clock.tick();
    }
    clock.report()
}

// ----- latency -----------------------------------------------------------------------------

/// What a pinger does: `warmup` untimed round trips, then `rounds` timed ones, each with a
/// message of `size` bytes made as `data` says.
struct Ping {
    path: String,
    size: usize,
    data: Data,
    warmup: u64,
    rounds: u64,
}

/// Reports the median and 99th percentile (nearest rank) of one-way latencies in ns.
fn report_latency(mut one_way_ns: Vec<u64>) -> Result<(), String> {
    if one_way_ns.is_empty() {
        return Err("no round trips were timed".to_owned());
    }
    one_way_ns.sort_unstable();
    let rank = |p: usize| one_way_ns[(one_way_ns.len() * p).div_ceil(100).max(1) - 1];
    println!("LAT {} {} {}", one_way_ns.len(), rank(50), rank(99));
    Ok(())
}

/// Sends every message back, as `reply` makes it from the received one, with `send` (feed +
/// flush), until the pinger closes; then closes.
async fn echo_all<S, T, E>(
    conn: &mut S,
    mut reply: impl FnMut(&S, T) -> Bytes,
) -> Result<(), String>
where
    S: Sink<Bytes> + Stream<Item = Result<T, E>> + Unpin,
    S::Error: Display,
    E: Display,
{
    while let Some(msg) = conn.next().await {
        let msg = msg.map_err(|e| format!("receiving: {e}"))?;
        let msg = reply(conn, msg);
        conn.send(msg).await.map_err(|e| format!("echoing: {e}"))?;
    }
    conn.close().await.map_err(|e| format!("closing: {e}"))
}

/// The round trips of a pinger: the clock starts, `make` makes the message (as the
/// application would), `send` (feed + flush) sends it, and the clock stops when the echo
/// has come back; the echo is checked after. Returns the timed one-way latencies in ns.
async fn ping_all<S, T, E>(
    conn: &mut S,
    ping: &Ping,
    mut make: impl FnMut(&S) -> Bytes,
) -> Result<Vec<u64>, String>
where
    S: Sink<Bytes> + Stream<Item = Result<T, E>> + Unpin,
    S::Error: Display,
    T: AsRef<[u8]>,
    E: Display,
{
    let mut check = Check::new(ping.data, ping.size);
    let mut one_way = Vec::with_capacity(ping.rounds as usize);
    for i in 0..ping.warmup + ping.rounds {
        let start = Instant::now();
        let msg = make(conn);
        conn.send(msg)
            .await
            .map_err(|e| format!("sending round trip {i}: {e}"))?;
        let reply = conn
            .next()
            .await
            .ok_or_else(|| format!("the echo closed before round trip {i} came back"))?
            .map_err(|e| format!("receiving round trip {i}: {e}"))?;
        let rtt = start.elapsed();
        check.check(reply.as_ref())?;
        drop(reply);
        if i >= ping.warmup {
            one_way.push(rtt.as_nanos() as u64 / 2);
        }
    }
    conn.close().await.map_err(|e| format!("closing: {e}"))?;
    // Wait for the echo's own close, so that neither side leaves the other mid-frame.
    while let Some(msg) = conn.next().await {
        msg.map_err(|e| format!("waiting for the echo to close: {e}"))?;
    }
    Ok(one_way)
}

/// Echoes every message back: the received `Bytes` themselves, or with [`Data::Loan`] a
/// fresh loan the received content is copied into (what an application that loans does: a
/// received loaned message lies in the pinger's region, not in this side's).
async fn pvm_echo(path: String, size: usize, data: Data) -> Result<(), String> {
    let mut conn = pvm_accept(&path, pvm_config(size, data)).await?;
    if data != Data::Loan {
        return echo_all(&mut conn, |_, msg: Bytes| msg).await;
    }
    let mut loans = Loans::default();
    echo_all(&mut conn, |c, msg: Bytes| {
        let mut buf = c.loan(msg.len());
        loans.count(&buf);
        buf.copy_from_slice(&msg);
        buf.freeze()
    })
    .await?;
    loans.report(conn.zero_copy());
    Ok(())
}

async fn pvm_ping(ping: Ping) -> Result<(), String> {
    let mut producer = Producer::new(ping.data, ping.size);
    let mut conn = Connection::connect_with(&ping.path, pvm_config(ping.size, ping.data))
        .await
        .map_err(|e| format!("connecting to {}: {e}", ping.path))?;
    let one_way = ping_all(&mut conn, &ping, |c| producer.next(Some(c))).await?;
    report_latency(one_way)?;
    if let Some(loans) = producer.loans() {
        loans.report(conn.zero_copy());
    }
    Ok(())
}

/// Echoes every frame back.
async fn unix_echo(path: String, size: usize, data: Data) -> Result<(), String> {
    no_loans(data)?;
    let mut framed = unix_accept(&path, size).await?;
    echo_all(&mut framed, |_, frame: BytesMut| frame.freeze()).await
}

async fn unix_ping(ping: Ping) -> Result<(), String> {
    no_loans(ping.data)?;
    let mut producer = Producer::new(ping.data, ping.size);
    let stream = UnixStream::connect(&ping.path)
        .await
        .map_err(|e| format!("connecting to {}: {e}", ping.path))?;
    let mut framed = Framed::new(stream, codec(ping.size));
    let one_way = ping_all(&mut framed, &ping, |_| producer.next(None)).await?;
    report_latency(one_way)
}
