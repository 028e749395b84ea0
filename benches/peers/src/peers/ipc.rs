//! ipc-channel (Servo's): its raw-bytes path, `ipc::bytes_channel()`, which sends a `&[u8]`
//! without serde. On Linux a channel is a `SOCK_SEQPACKET` socket pair; a message larger than
//! one packet goes out in fragments over a second socket pair made for that message. The API
//! is blocking, so both roles are plain threads, no runtime.
//!
//! Set-up: the receiver makes an `IpcOneShotServer` and prints its name; the sender makes the
//! bytes channel and sends the receiving end through the one-shot server (channels travel as
//! file descriptors). The sender fills one reused buffer with each fresh message and
//! `send`s it (the send copies it into the socket); the receiver gets a new `Vec<u8>` per
//! message.

use ipc_channel::ipc::{
    IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender, bytes_channel,
};

use super::{Job, Role, ctx, ctx_with, ready};
use crate::payload::{Checker, Latencies, Source, check};

pub(crate) fn run(role: Role, job: &Job) -> Result<(), String> {
    match role {
        Role::Recv => recv(job),
        Role::Send => send(job),
        Role::Echo => echo(job),
        Role::Ping => ping(job),
        Role::Cleanup => Ok(()),
    }
}

fn recv(job: &Job) -> Result<(), String> {
    let (server, name) =
        IpcOneShotServer::<IpcBytesReceiver>::new().map_err(ctx("making the one-shot server"))?;
    ready(&name);
    let (_bootstrap, rx) = server.accept().map_err(ctx("accepting the sender"))?;
    let mut checker = Checker::new(job.size, job.count);
    while !checker.done() {
        let msg = rx
            .recv()
            .map_err(ctx_with(|| format!("receiving message {}", checker.seen())))?;
        checker.take(&msg)?;
    }
    checker.report()
}

fn send(job: &Job) -> Result<(), String> {
    let (tx, rx) = bytes_channel().map_err(ctx("making the bytes channel"))?;
    IpcSender::<IpcBytesReceiver>::connect(job.addr.clone())
        .map_err(ctx_with(|| format!("connecting to {}", job.addr)))?
        .send(rx)
        .map_err(ctx("handing over the receiving end"))?;
    let src = Source::new(job.size);
    let mut buf = vec![0u8; job.size];
    for seq in 0..job.count {
        src.write(&mut buf, seq);
        tx.send(&buf)
            .map_err(ctx_with(|| format!("sending message {seq}")))?;
    }
    // Every message is in the kernel's socket buffers now; exiting loses none.
    Ok(())
}

/// The pinger's two channels: pings to the echo, answers back.
type Pair = (IpcBytesReceiver, IpcBytesSender);

fn echo(job: &Job) -> Result<(), String> {
    let (server, name) =
        IpcOneShotServer::<Pair>::new().map_err(ctx("making the one-shot server"))?;
    ready(&name);
    let (_bootstrap, (rx, tx)) = server.accept().map_err(ctx("accepting the pinger"))?;
    let src = Source::new(job.size);
    let mut buf = vec![0u8; job.size];
    for seq in 0..job.count {
        let msg = rx
            .recv()
            .map_err(ctx_with(|| format!("receiving message {seq}")))?;
        check(&msg, job.size, seq)?;
        drop(msg);
        src.write(&mut buf, seq);
        tx.send(&buf)
            .map_err(ctx_with(|| format!("answering message {seq}")))?;
    }
    Ok(())
}

fn ping(job: &Job) -> Result<(), String> {
    let (ping_tx, ping_rx) = bytes_channel().map_err(ctx("making the ping channel"))?;
    let (answer_tx, answer_rx) = bytes_channel().map_err(ctx("making the answer channel"))?;
    IpcSender::<Pair>::connect(job.addr.clone())
        .map_err(ctx_with(|| format!("connecting to {}", job.addr)))?
        .send((ping_rx, answer_tx))
        .map_err(ctx("handing over the channels"))?;
    let src = Source::new(job.size);
    let mut buf = vec![0u8; job.size];
    let mut lat = Latencies::new(job.warmup, job.count);
    for i in 0..job.warmup + job.count {
        let started = std::time::Instant::now();
        src.write(&mut buf, i);
        ping_tx
            .send(&buf)
            .map_err(ctx_with(|| format!("sending round trip {i}")))?;
        let answer = answer_rx
            .recv()
            .map_err(ctx_with(|| format!("receiving round trip {i}")))?;
        check(&answer, job.size, i)?;
        drop(answer);
        lat.record(i, started);
    }
    lat.report()
}
