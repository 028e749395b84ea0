//! What a Tokio user would otherwise pick: `tokio::net::UnixStream` with
//! `tokio_util::codec::Framed` and a `LengthDelimitedCodec` (4-byte length, frames up to
//! 64 MiB, as tokio-pvm's default). The sender `feed`s each message (a fresh `Bytes`, made
//! exactly as tokio-pvm's sender makes it) and `close()`s at the end: flush, then shut the
//! write half down. The receiver reads frames until the end of the stream.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_pvm::DEFAULT_MAX_MESSAGE_SIZE;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{Job, Role, ctx, ctx_with, ready};
use crate::flavor::Flavor;
use crate::payload::{Checker, Latencies, Source, check};

type Frames = Framed<UnixStream, LengthDelimitedCodec>;

/// Frames up to 64 MiB or `size`, whichever is larger: tokio-pvm's limit.
fn codec(size: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(size.max(DEFAULT_MAX_MESSAGE_SIZE as usize))
        .new_codec()
}

pub(crate) fn run(role: Role, flavor: Flavor, job: Job) -> Result<(), String> {
    match role {
        Role::Recv => flavor.run(recv(job)),
        Role::Send => flavor.run(send(job)),
        Role::Echo => flavor.run(echo(job)),
        Role::Ping => flavor.run(ping(job)),
        Role::Cleanup => Ok(()),
    }
}

async fn accept(job: &Job) -> Result<Frames, String> {
    let listener =
        UnixListener::bind(&job.addr).map_err(ctx_with(|| format!("binding {}", job.addr)))?;
    ready(&job.addr);
    let (stream, _) = listener
        .accept()
        .await
        .map_err(ctx_with(|| format!("accepting on {}", job.addr)))?;
    drop(listener);
    let _ = std::fs::remove_file(&job.addr);
    Ok(Framed::new(stream, codec(job.size)))
}

async fn connect(job: &Job) -> Result<Frames, String> {
    let stream = UnixStream::connect(&job.addr)
        .await
        .map_err(ctx_with(|| format!("connecting to {}", job.addr)))?;
    Ok(Framed::new(stream, codec(job.size)))
}

async fn recv(job: Job) -> Result<(), String> {
    let mut frames = accept(&job).await?;
    let mut checker = Checker::new(job.size, job.count);
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(ctx_with(|| format!("receiving message {}", checker.seen())))?;
        checker.take(&frame)?;
    }
    checker.report()
}

async fn send(job: Job) -> Result<(), String> {
    let mut frames = connect(&job).await?;
    let src = Source::new(job.size);
    for seq in 0..job.count {
        frames
            .feed(src.fresh_bytes(seq))
            .await
            .map_err(ctx_with(|| format!("sending message {seq}")))?;
    }
    SinkExt::<Bytes>::close(&mut frames)
        .await
        .map_err(ctx_with(|| format!("closing after {} messages", job.count)))
}

/// Answers each frame with `send` (feed + flush into the socket), until the pinger closes.
async fn echo(job: Job) -> Result<(), String> {
    let mut frames = accept(&job).await?;
    let src = Source::new(job.size);
    let mut seq = 0;
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(ctx_with(|| format!("receiving message {seq}")))?;
        check(&frame, job.size, seq)?;
        drop(frame);
        frames
            .send(src.fresh_bytes(seq))
            .await
            .map_err(ctx_with(|| format!("answering message {seq}")))?;
        seq += 1;
    }
    SinkExt::<Bytes>::close(&mut frames)
        .await
        .map_err(ctx("closing"))
}

async fn ping(job: Job) -> Result<(), String> {
    let mut frames = connect(&job).await?;
    let src = Source::new(job.size);
    let mut lat = Latencies::new(job.warmup, job.count);
    for i in 0..job.warmup + job.count {
        let started = std::time::Instant::now();
        frames
            .send(src.fresh_bytes(i))
            .await
            .map_err(ctx_with(|| format!("sending round trip {i}")))?;
        let answer = frames
            .next()
            .await
            .ok_or_else(|| format!("the echo closed before round trip {i} came back"))?
            .map_err(ctx_with(|| format!("receiving round trip {i}")))?;
        check(&answer, job.size, i)?;
        drop(answer);
        lat.record(i, started);
    }
    SinkExt::<Bytes>::close(&mut frames)
        .await
        .map_err(ctx("closing"))?;
    while let Some(frame) = frames.next().await {
        frame.map_err(ctx("waiting for the echo to close"))?;
    }
    lat.report()
}
