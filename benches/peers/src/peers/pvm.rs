//! tokio-pvm: a receiver binds a [`Listener`] and reads its [`Connection`]'s `Stream` to the
//! end; a sender connects and `feed`s each message into its `Sink<Bytes>`, then `close()`s
//! (which returns once the receiver has pulled and acknowledged everything).
//!
//! How the sender makes each message is its [`Lane`]: a fresh heap buffer the receiver pulls
//! ([`Lane::Copy`]), or a buffer loaned from the connection's shared region that the receiver
//! reads in place ([`Lane::Loan`], the zero-copy lane).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_pvm::{Config, Connection, DEFAULT_MAX_MESSAGE_SIZE, Listener};

use super::{Job, Role, ctx, ctx_with, ready};
use crate::flavor::Flavor;
use crate::payload::{Checker, Latencies, Source, check};

/// How a tokio-pvm sender makes its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// A fresh `BytesMut` per message (the copy from the source, then the stamps), frozen
    /// into `Bytes`: what an application that builds its messages does.
    Copy,
    /// Both sides set `Config::loan_region`; the sender writes the same fresh data and stamps
    /// straight into `Connection::loan(size)` and sends the frozen buffer: the receiver reads
    /// it in place from the sender's shared memory, as an iceoryx2 subscriber does.
    Loan,
}

impl Lane {
    /// Every lane, in table order.
    pub(crate) const ALL: [Lane; 2] = [Lane::Copy, Lane::Loan];

    pub(crate) fn id(self) -> &'static str {
        match self {
            Lane::Copy => "tokio-pvm",
            Lane::Loan => "tokio-pvm-loan",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Lane::Copy => "tokio-pvm",
            Lane::Loan => "tokio-pvm (loan)",
        }
    }
}

/// Both sides' configuration: the defaults (window of 1024 messages and 16 MiB, 256 B inline
/// threshold, pulls from 2 MiB on the blocking pool), with messages up to 64 MiB or `size`,
/// whichever is larger; for the loan lane a region of 64 MiB or four messages, whichever is
/// larger (room for a window in flight and a window in the receiver's buffer).
fn config(lane: Lane, size: usize) -> Config {
    let config = Config::new().max_message_size((size as u64).max(DEFAULT_MAX_MESSAGE_SIZE));
    match lane {
        Lane::Copy => config,
        Lane::Loan => config.loan_region((64 << 20).max(4 * size)),
    }
}

/// Makes the messages a sender feeds.
struct Producer {
    lane: Lane,
    src: Source,
    /// Loans that came from the heap (the region was full or the lane closed).
    heap_loans: u64,
}

impl Producer {
    fn new(lane: Lane, size: usize) -> Producer {
        Producer {
            lane,
            src: Source::new(size),
            heap_loans: 0,
        }
    }

    /// Message `seq`: `size` bytes from the source, stamped.
    fn message(&mut self, seq: u64, conn: &Connection) -> Bytes {
        match self.lane {
            Lane::Copy => self.src.fresh_bytes(seq),
            Lane::Loan => {
                let mut buf = conn.loan(self.src.size());
                self.heap_loans += u64::from(!buf.is_shared());
                self.src.write(&mut buf, seq);
                buf.freeze()
            }
        }
    }

    /// Says on standard error if any loan came from the heap: such messages were pulled, and
    /// the row does not measure the zero-copy lane alone.
    fn report_loans(&self, messages: u64) {
        if self.heap_loans > 0 {
            eprintln!(
                "note: {} of {messages} loans of {} bytes came from the heap",
                self.heap_loans,
                self.src.size()
            );
        }
    }
}

pub(crate) fn run(role: Role, lane: Lane, flavor: Flavor, job: Job) -> Result<(), String> {
    match role {
        Role::Recv => flavor.run(recv(lane, job)),
        Role::Send => flavor.run(send(lane, job)),
        Role::Echo => flavor.run(echo(lane, job)),
        Role::Ping => flavor.run(ping(lane, job)),
        Role::Cleanup => Ok(()),
    }
}

async fn accept(lane: Lane, job: &Job) -> Result<Connection, String> {
    let listener = Listener::bind_with(&job.addr, config(lane, job.size))
        .map_err(ctx_with(|| format!("binding {}", job.addr)))?;
    ready(&job.addr);
    let conn = listener
        .accept()
        .await
        .map_err(ctx_with(|| format!("accepting on {}", job.addr)))?;
    drop(listener); // removes the socket file
    Ok(conn)
}

async fn connect(lane: Lane, job: &Job) -> Result<Connection, String> {
    Connection::connect_with(&job.addr, config(lane, job.size))
        .await
        .map_err(ctx_with(|| format!("connecting to {}", job.addr)))
}

async fn recv(lane: Lane, job: Job) -> Result<(), String> {
    let mut conn = accept(lane, &job).await?;
    let mut checker = Checker::new(job.size, job.count);
    while let Some(msg) = conn.next().await {
        let msg = msg.map_err(ctx_with(|| format!("receiving message {}", checker.seen())))?;
        checker.take(&msg)?;
    }
    checker.report()
}

async fn send(lane: Lane, job: Job) -> Result<(), String> {
    let mut conn = connect(lane, &job).await?;
    let mut producer = Producer::new(lane, job.size);
    for seq in 0..job.count {
        let msg = producer.message(seq, &conn);
        conn.feed(msg)
            .await
            .map_err(ctx_with(|| format!("sending message {seq}")))?;
    }
    producer.report_loans(job.count);
    conn.close()
        .await
        .map_err(ctx_with(|| format!("closing after {} messages", job.count)))
}

/// Answers each message with `send` (feed + flush: returns once the pinger has pulled the
/// answer), until the pinger closes.
async fn echo(lane: Lane, job: Job) -> Result<(), String> {
    let mut conn = accept(lane, &job).await?;
    let mut producer = Producer::new(lane, job.size);
    let mut seq = 0;
    while let Some(msg) = conn.next().await {
        let msg = msg.map_err(ctx_with(|| format!("receiving message {seq}")))?;
        check(&msg, job.size, seq)?;
        drop(msg);
        let answer = producer.message(seq, &conn);
        conn.send(answer)
            .await
            .map_err(ctx_with(|| format!("answering message {seq}")))?;
        seq += 1;
    }
    conn.close().await.map_err(ctx("closing"))
}

async fn ping(lane: Lane, job: Job) -> Result<(), String> {
    let mut conn = connect(lane, &job).await?;
    let mut producer = Producer::new(lane, job.size);
    let mut lat = Latencies::new(job.warmup, job.count);
    for i in 0..job.warmup + job.count {
        let started = std::time::Instant::now();
        let msg = producer.message(i, &conn);
        conn.send(msg)
            .await
            .map_err(ctx_with(|| format!("sending round trip {i}")))?;
        let answer = conn
            .next()
            .await
            .ok_or_else(|| format!("the echo closed before round trip {i} came back"))?
            .map_err(ctx_with(|| format!("receiving round trip {i}")))?;
        check(&answer, job.size, i)?;
        drop(answer);
        lat.record(i, started);
    }
    conn.close().await.map_err(ctx("closing"))?;
    // Wait for the echo's own close, so that neither side leaves the other mid-frame.
    while let Some(msg) = conn.next().await {
        msg.map_err(ctx("waiting for the echo to close"))?;
    }
    lat.report()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every lane over a connected pair in this process: the right messages, in order.
    #[tokio::test]
    async fn lanes_deliver_checked_messages() {
        for lane in Lane::ALL {
            let (mut a, mut b) = Connection::pair_with(config(lane, 4096)).await.unwrap();
            let mut producer = Producer::new(lane, 4096);
            let mut checker = Checker::new(4096, 3);
            for seq in 0..3 {
                a.send(producer.message(seq, &a)).await.unwrap();
                checker.take(&b.next().await.unwrap().unwrap()).unwrap();
            }
            assert!(checker.done());
        }
    }
}
