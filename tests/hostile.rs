//! Hostile and broken input: random bytes at the decoder, and a raw peer that completes the
//! handshake by hand and then breaks the protocol over a real socket.

mod util;

use std::io::{Read, Write};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio::time::timeout;
use tokio_pvm::fuzzing::{self, MAX_FRAME};
use tokio_pvm::{Config, Connection, ErrorKind, Listener};
use util::raw::{
    RawPeer, T_ACK, T_BATCH, T_DATA, T_ERROR, T_HELLO, T_INLINE, T_SYNC, batch_body, data_body,
    frame, hello_body,
};
use util::{ChildProc, check, temp_dir};

child_entry!();

// ----- the decoder -------------------------------------------------------------------------

/// The receive buffer never grows past what the largest allowed frame needs.
fn assert_bounded(capacity: usize, chunk: usize) {
    let bound = 2 * (MAX_FRAME + chunk) + 64;
    assert!(
        capacity <= bound,
        "buffer grew to {capacity} bytes (bound {bound})"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_or_overallocate(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..600,
    ) {
        let (_, _, cap) = fuzzing::decode(&data, chunk);
        assert_bounded(cap, chunk);
    }

    #[test]
    fn every_length_field_is_checked_before_allocation(
        ty in 0u8..15,
        len in any::<u32>(),
        flags in prop_oneof![Just(0u8), any::<u8>()],
        chunk in 1usize..100,
    ) {
        let mut data = vec![ty, flags, 0, 0];
        data.extend_from_slice(&len.to_le_bytes());
        // Some body bytes, far fewer than most lengths announce.
        data.extend(std::iter::repeat_n(0u8, 64));
        let (frames, err, cap) = fuzzing::decode(&data, chunk);
        assert_bounded(cap, chunk);
        // A frame that cannot complete either errors or waits; it never yields garbage.
        prop_assert!(frames <= 1);
        if len as usize > MAX_FRAME {
            prop_assert!(err.is_some(), "a {len}-byte body was accepted for type {ty}");
        }
    }

    #[test]
    fn truncated_valid_frames_end_with_peer_gone(cut in 1usize..40) {
        let full = frame(3, &data_body(0, 10, &[(4096, 10)], 1));
        let cut = cut.min(full.len() - 1);
        let (frames, err, _) = fuzzing::decode(&full[..cut], 7);
        prop_assert_eq!(frames, 0);
        prop_assert!(err.expect("truncation is an error").is_peer_gone());
    }

    #[test]
    fn range_counts_over_the_limit_are_refused(count in 1025u32..5000) {
        let ranges: Vec<(u64, u64)> = (0..count as u64).map(|i| (4096 * (i + 1), 1)).collect();
        let body = data_body(0, count as u64, &ranges, count);
        let (frames, err, cap) = fuzzing::decode(&frame(3, &body), 4096);
        prop_assert_eq!(frames, 0);
        prop_assert!(err.expect("over IOV_MAX").is_limit_exceeded());
        assert_bounded(cap, 4096);
    }
}

// ----- a raw peer over a real socket -------------------------------------------------------

/// Accepts one connection while `peer` runs on a thread; returns both.
async fn accept_raw<F>(listener: &mut Listener, peer: F) -> (Connection, RawPeer)
where
    F: FnOnce() -> RawPeer + Send + 'static,
{
    let peer = tokio::task::spawn_blocking(peer);
    let conn = timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    (conn, peer.await.unwrap())
}

/// The next stream item, which must be an error of `kind` mentioning `needle`; then `None`.
async fn expect_error(conn: &mut Connection, kind: ErrorKind, needle: &str) {
    let err = match timeout(Duration::from_secs(5), conn.next())
        .await
        .expect("no hang")
    {
        Some(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(err.kind(), kind, "{err}");
    assert!(err.to_string().contains(needle), "{err}");
    assert!(conn.next().await.is_none(), "one error, then None");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_end_only_that_connection() {
    let dir = temp_dir("hostile");
    let path = dir.join("s");
    let mut listener = Listener::bind_with(&path, Config::new().window(4, 1 << 20)).unwrap();

    // An ACK for messages never sent.
    let p = path.clone();
    let (mut conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    peer.send(T_ACK, &5u64.to_le_bytes());
    expect_error(&mut conn, ErrorKind::Protocol, "ACK for 5 messages").await;
    assert!(
        peer.error_reason().unwrap().contains("ACK"),
        "the peer is told why"
    );

    // A duplicate ACK.
    let p = path.clone();
    let (conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    let (mut tx, mut rx) = conn.split();
    tx.feed(bytes::Bytes::from_static(&[1; 1000]))
        .await
        .unwrap();
    // Writes the descriptor out; the flush itself waits for the ACK, which comes below.
    let _ = timeout(Duration::from_millis(50), tx.flush()).await;
    peer.send(T_ACK, &1u64.to_le_bytes());
    peer.send(T_ACK, &1u64.to_le_bytes());
    let err = timeout(Duration::from_secs(5), rx.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        err.is_protocol() && err.to_string().contains("already acknowledged"),
        "{err}"
    );
    assert_eq!(tx.in_flight(), (0, 0));

    // HELLO after the handshake.
    let p = path.clone();
    let (mut conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    let hello = hello_body(&[0; 16]);
    peer.send(T_HELLO, &hello);
    expect_error(&mut conn, ErrorKind::Protocol, "after the handshake").await;

    // A sequence number out of order.
    let p = path.clone();
    let (mut conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(b"hi");
    peer.send(T_INLINE, &body);
    expect_error(&mut conn, ErrorKind::Protocol, "expected 0").await;

    // A well-formed BATCH is delivered message by message; the next batch's first sequence
    // number must follow on.
    let p = path.clone();
    let (mut conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    peer.send(T_BATCH, &batch_body(0, &[b"ab", b"", b"cde"]));
    for want in [&b"ab"[..], b"", b"cde"] {
        let got = timeout(Duration::from_secs(5), conn.next()).await.unwrap();
        assert_eq!(&got.unwrap().unwrap()[..], want);
    }
    let (ty, body) = peer.recv().expect("an ACK for the batch");
    assert_eq!((ty, body), (T_ACK, 3u64.to_le_bytes().to_vec()));
    peer.send(T_BATCH, &batch_body(2, &[b"x"]));
    expect_error(&mut conn, ErrorKind::Protocol, "expected 3").await;

    // A BATCH whose entry runs past the frame's end.
    let p = path.clone();
    let (mut conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    let mut body = 0u64.to_le_bytes().to_vec();
    body.extend_from_slice(&100u32.to_le_bytes());
    body.extend_from_slice(b"short");
    peer.send(T_BATCH, &body);
    expect_error(&mut conn, ErrorKind::Protocol, "runs past").await;

    // Overrunning the window (4 messages): 4 fill the receive buffer (acknowledged while the
    // application does not read), 4 more the window, the ninth overruns it.
    let p = path.clone();
    let (mut conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    for seq in 0..9u64 {
        let mut body = seq.to_le_bytes().to_vec();
        body.extend_from_slice(b"x");
        peer.send(T_INLINE, &body);
    }
    tokio::time::sleep(Duration::from_millis(100)).await; // all nine are in our socket
    // Those whose acknowledgement went out before the overrun (at most the four that fit into
    // the buffer; how many depends on how the frames were read) are delivered first.
    let mut delivered = 0;
    let err = loop {
        match timeout(Duration::from_secs(5), conn.next()).await.unwrap() {
            Some(Ok(m)) => {
                assert_eq!(&m[..], b"x");
                delivered += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the overrun being reported"),
        }
    };
    assert!(err.to_string().contains("overran the window"), "{err}");
    assert!(delivered <= 4, "{delivered} delivered");
    assert!(conn.next().await.is_none(), "one error, then None");

    // A descriptor for memory the peer does not have mapped: EFAULT, named.
    let p = path.clone();
    let (mut conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    peer.send(T_DATA, &data_body(0, 4096, &[(4096, 4096)], 1));
    expect_error(&mut conn, ErrorKind::Protocol, "EFAULT").await;
    assert!(
        peer.error_reason().unwrap().contains("EFAULT"),
        "the peer is told why"
    );

    // Garbage instead of a HELLO, DATA before HELLO, a peer that vanishes mid-handshake: the
    // listener drops each and goes on serving.
    let mut garbage = RawPeer::connect(&path);
    garbage.sock.write_all(&[0xff; 300]).unwrap();
    let mut early = RawPeer::connect(&path);
    early.send(T_DATA, &data_body(0, 1, &[(4096, 1)], 1));
    let mut vanished = RawPeer::connect(&path);
    let hello = hello_body(&[1; 16]);
    vanished.send(T_HELLO, &hello);
    drop(vanished);
    let good = ChildProc::spawn("send", &[path.to_str().unwrap(), "100", "3"]);
    let mut conn = timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        conn.peer().pid().unwrap(),
        good.pid(),
        "only the good client comes out of accept"
    );
    for seq in 0..3 {
        assert!(check(seq, 100, &conn.next().await.unwrap().unwrap()));
    }
    assert!(conn.next().await.is_none());
    // Each got at most the listener's HELLO, then the end of the stream (not a read timeout).
    let mut rest = Vec::new();
    assert!(
        garbage.sock.read_to_end(&mut rest).is_ok(),
        "garbage is disconnected"
    );
    assert!(
        early.sock.read_to_end(&mut rest).is_ok(),
        "DATA before HELLO is disconnected"
    );
}

/// The ACK values among `frames`.
fn acks(frames: &[(u8, Vec<u8>)]) -> Vec<u64> {
    frames
        .iter()
        .filter(|(ty, _)| *ty == T_ACK)
        .map(|(_, body)| u64::from_le_bytes(body[..8].try_into().unwrap()))
        .collect()
}

/// Inline messages are acknowledged without a write of their own: with the receiver's next
/// write, when the sender asks (SYNC), or once a quarter of the window is unacknowledged. A
/// SYNC that does not match what arrived is a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_messages_are_acknowledged_when_asked_or_with_the_receivers_writes() {
    let dir = temp_dir("lazy-ack");
    let path = dir.join("s");
    let mut listener = Listener::bind_with(&path, Config::new().window(64, 1 << 20)).unwrap();
    let p = path.clone();
    let (conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    let (mut tx, mut rx) = conn.split();
    let inline = |seq: u64| {
        let mut body = seq.to_le_bytes().to_vec();
        body.extend_from_slice(&[seq as u8; 100]);
        body
    };

    // Ten messages, all read by the application: no ACK is written for them.
    for seq in 0..10 {
        peer.send(T_INLINE, &inline(seq));
    }
    for seq in 0..10u8 {
        let m = timeout(Duration::from_secs(5), rx.next()).await.unwrap();
        assert_eq!(m.unwrap().unwrap()[..], [seq; 100]);
    }
    let quiet = peer.frames_within(Duration::from_millis(300));
    assert!(
        acks(&quiet).is_empty(),
        "nothing asked for an ACK: {quiet:?}"
    );

    // The receiver's own message takes the ACK along.
    tx.feed(bytes::Bytes::from_static(b"reply")).await.unwrap();
    let _ = timeout(Duration::from_millis(50), tx.flush()).await;
    let frames = peer.frames_within(Duration::from_millis(300));
    assert_eq!(acks(&frames), [10], "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|(ty, _)| *ty == T_BATCH || *ty == T_INLINE)
    );
    peer.send(T_ACK, &1u64.to_le_bytes()); // for "reply"

    // Five more and a SYNC: acknowledged at once, though the application does not read.
    for seq in 10..15 {
        peer.send(T_INLINE, &inline(seq));
    }
    peer.send(T_SYNC, &15u64.to_le_bytes());
    let frames = peer.frames_within(Duration::from_millis(300));
    assert_eq!(acks(&frames), [15], "{frames:?}");

    // A quarter of the window (16 of 64) unacknowledged: acknowledged without being asked.
    for seq in 15..31 {
        peer.send(T_INLINE, &inline(seq));
    }
    let frames = peer.frames_within(Duration::from_millis(300));
    assert_eq!(acks(&frames), [31], "{frames:?}");

    // A SYNC for fewer messages than arrived.
    peer.send(T_SYNC, &3u64.to_le_bytes());
    let mut rest = 0;
    let err = loop {
        match timeout(Duration::from_secs(5), rx.next()).await.unwrap() {
            Some(Ok(_)) => rest += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without the bad SYNC being reported"),
        }
    };
    assert_eq!(rest, 21, "what arrived before the bad SYNC is delivered");
    assert!(
        err.is_protocol() && err.to_string().contains("SYNC for the first 3 messages"),
        "{err}"
    );
}

#[tokio::test]
async fn a_message_too_large_for_the_peer_is_refused_and_the_connection_lives() {
    let (mut a, mut b) = Connection::pair_with(Config::new().max_message_size(1000))
        .await
        .unwrap();
    let err = a
        .send(bytes::Bytes::from(vec![0u8; 1001]))
        .await
        .unwrap_err();
    assert!(
        err.is_limit_exceeded() && err.to_string().contains("max_message_size"),
        "{err}"
    );
    let (sent, got) = tokio::join!(a.send(bytes::Bytes::from(vec![3u8; 1000])), b.next());
    sent.unwrap();
    assert_eq!(got.unwrap().unwrap().len(), 1000);
}

/// A listener that answers with an ERROR frame and closes at once: whatever the client was
/// doing (writing its HELLO into a closed socket, or reading), it reports the listener's
/// reason, not a bare broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_reported_even_when_the_write_fails_first() {
    let dir = temp_dir("refusal");
    let path = dir.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    const ATTEMPTS: usize = 50;
    let server = std::thread::spawn(move || {
        for _ in 0..ATTEMPTS {
            let (mut sock, _) = listener.accept().unwrap();
            let mut body = 7u32.to_le_bytes().to_vec(); // code 7: other
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(b"the listener closed");
            let _ = sock.write_all(&frame(T_ERROR, &body));
        }
    });
    for _ in 0..ATTEMPTS {
        let err = timeout(Duration::from_secs(5), Connection::connect(&path))
            .await
            .expect("no hang")
            .unwrap_err();
        assert!(err.to_string().contains("the listener closed"), "{err}");
    }
    server.join().unwrap();
}

/// The messages of the BATCH and INLINE frames among `frames`, in order.
fn payloads(frames: &[(u8, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (ty, body) in frames {
        match *ty {
            T_INLINE => out.push(body[8..].to_vec()),
            T_BATCH => {
                let mut rest = &body[8..];
                while !rest.is_empty() {
                    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                    out.push(rest[4..4 + len].to_vec());
                    rest = &rest[4 + len..];
                }
            }
            _ => {}
        }
    }
    out
}

/// A byte stream's flush while the peer has yet to read earlier bytes leaves its frames in
/// the write buffer; they go out together, with nothing more done on the writing side, as
/// soon as the peer reads, and a stream dropped meanwhile loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_while_the_peer_has_not_read_go_out_together_when_it_reads() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir("coalesce");
    let path = dir.join("s");
    let mut listener = Listener::bind(&path).unwrap();
    let p = path.clone();
    let (conn, mut peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
    let mut stream = tokio_pvm::ByteStream::new(conn);

    // The first flush finds everything read and writes at once; the next two find it unread.
    for m in [&b"a"[..], b"bb", b"ccc"] {
        stream.write_all(m).await.unwrap();
        stream.flush().await.unwrap();
    }
    let first = peer.recv().expect("the first flush was written");
    assert_eq!(payloads(&[first]), [b"a".to_vec()]);
    // That read is the only signal: the stream is not polled again.
    let frames = peer.frames_within(Duration::from_millis(300));
    assert_eq!(payloads(&frames), [b"bb".to_vec(), b"ccc".to_vec()]);
    assert_eq!(frames.len(), 1, "one BATCH frame, one write: {frames:?}");

    // The frames a flush left behind go out when the peer reads, though nothing polls the
    // stream: the driver writes them, woken by the socket, within far less than the
    // watchdog's period (20 ms), the only other thing that would wake it.
    let mut fastest = Duration::MAX;
    for round in 0..5u8 {
        for m in [vec![round; 3], vec![round; 4]] {
            stream.write_all(&m).await.unwrap();
            stream.flush().await.unwrap();
        }
        let first = peer.recv().expect("the first flush was written");
        let read_at = std::time::Instant::now();
        let second = peer.recv().expect("the deferred flush follows");
        fastest = fastest.min(read_at.elapsed());
        assert_eq!(payloads(&[first, second]), [vec![round; 3], vec![round; 4]]);
    }
    assert!(
        fastest < Duration::from_millis(15),
        "deferred frames waited {fastest:?} after the peer read"
    );
    drop(stream);
}

/// On a current-thread runtime a flush writes at once, whatever the peer has read: the
/// runtime may sit idle after it (the application's thread elsewhere), and bytes left for
/// its driver would wait there, where a socket would have delivered them.
#[test]
fn a_flush_on_a_current_thread_runtime_is_written_before_it_returns() {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = temp_dir("coalesce-ct");
    let path = dir.join("s");
    let (stream, mut peer) = rt.block_on(async {
        let mut listener = Listener::bind(&path).unwrap();
        let p = path.clone();
        let (conn, peer) = accept_raw(&mut listener, move || RawPeer::handshake(&p)).await;
        let mut stream = tokio_pvm::ByteStream::new(conn);
        for m in [&b"a"[..], b"bb"] {
            stream.write_all(m).await.unwrap();
            stream.flush().await.unwrap();
        }
        (stream, peer)
    });
    // The runtime is idle from here on.
    let frames = [
        peer.recv().unwrap(),
        peer.recv().expect("the second flush was written"),
    ];
    assert_eq!(payloads(&frames), [b"a".to_vec(), b"bb".to_vec()]);
    drop(stream);
}
