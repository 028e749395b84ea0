//! `Connection::pair()` inside one process: real sockets, real handshake, real pulls from
//! this process's own memory.

mod util;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_pvm::{Config, Connection};
use util::pattern;

#[tokio::test]
async fn pair_moves_messages_of_every_size() {
    let (mut a, mut b) = Connection::pair().await.unwrap();
    assert_eq!(a.peer().pid().unwrap() as u32, std::process::id());
    let sizes = [0usize, 1, 63, 4096, 65_537, 300_000, 4 << 20];
    let sender = async {
        for (i, &n) in sizes.iter().enumerate() {
            a.feed(pattern(i as u64, n)).await.unwrap();
        }
        a.close().await.unwrap();
        a
    };
    let receiver = async {
        let mut got = Vec::new();
        while let Some(m) = b.next().await {
            got.push(m.unwrap());
        }
        got
    };
    let (_a, got) = tokio::join!(sender, receiver);
    assert_eq!(got.len(), sizes.len());
    for (i, (&n, m)) in sizes.iter().zip(&got).enumerate() {
        assert_eq!(m.len(), n);
        assert!(m == &pattern(i as u64, n), "message {i} corrupted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_in_different_tasks_both_directions() {
    let cfg = Config::new().window(8, 1 << 20).inline_threshold(256);
    let (a, b) = Connection::pair_with(cfg).await.unwrap();
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    const N: u64 = 2000;
    let t1 = tokio::spawn(async move {
        for i in 0..N {
            a_tx.feed(pattern(i, (i as usize * 37) % 5000))
                .await
                .unwrap();
        }
        a_tx.close().await.unwrap();
    });
    let t2 = tokio::spawn(async move {
        for i in 0..N {
            b_tx.feed(pattern(i + N, (i as usize * 91) % 70_000))
                .await
                .unwrap();
        }
        b_tx.close().await.unwrap();
    });
    let r1 = tokio::spawn(async move {
        let mut i = 0;
        while let Some(m) = b_rx.next().await {
            assert_eq!(m.unwrap(), pattern(i, (i as usize * 37) % 5000));
            i += 1;
        }
        i
    });
    let r2 = tokio::spawn(async move {
        let mut i = 0;
        while let Some(m) = a_rx.next().await {
            assert_eq!(m.unwrap(), pattern(i + N, (i as usize * 91) % 70_000));
            i += 1;
        }
        i
    });
    t1.await.unwrap();
    t2.await.unwrap();
    assert_eq!(r1.await.unwrap(), N);
    assert_eq!(r2.await.unwrap(), N);
}

#[tokio::test]
async fn dropping_the_sender_after_its_messages_closes_cleanly() {
    let (a, mut b) = Connection::pair().await.unwrap();
    let (mut tx, mut rx) = a.split();
    let receiving = async {
        let mut n = 0;
        while let Some(m) = b.next().await {
            assert_eq!(m.unwrap(), pattern(n, 100_000));
            n += 1;
        }
        b.close().await.unwrap();
        n
    };
    let sending = async move {
        for i in 0..10 {
            tx.feed(pattern(i, 100_000)).await.unwrap();
        }
        // Dropped with messages still in flight: once they are acknowledged (read by this
        // side's receiving half, which must be polled), CLOSE follows.
        drop(tx);
        assert!(rx.next().await.is_none(), "the peer closes after our CLOSE");
    };
    let ((), n) = tokio::join!(sending, receiving);
    assert_eq!(n, 10, "the stream ended with None after every message");
}

#[tokio::test]
async fn a_kept_message_stays_intact_while_buffers_are_recycled() {
    let (mut a, mut b) = Connection::pair().await.unwrap();
    let mut kept = Vec::new();
    for round in 0..20u64 {
        let (sent, got) = tokio::join!(a.send(pattern(round, 1 << 20)), b.next());
        sent.unwrap();
        let got = got.unwrap().unwrap();
        if round % 5 == 0 {
            kept.push((round, got));
        }
    }
    for (round, m) in kept {
        assert_eq!(
            m,
            pattern(round, 1 << 20),
            "message {round} changed after reuse"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pull_on_the_blocking_pool_with_a_zero_threshold() {
    let cfg = Config::new().blocking_threshold(0).inline_threshold(0);
    let (mut a, mut b) = Connection::pair_with(cfg).await.unwrap();
    for (i, n) in [0usize, 1, 5000, 300_000].into_iter().enumerate() {
        let (sent, got) = tokio::join!(a.send(pattern(i as u64, n)), b.next());
        sent.unwrap();
        assert_eq!(got.unwrap().unwrap(), pattern(i as u64, n));
    }
}

#[test]
fn public_types_can_move_between_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Connection>();
    send_sync::<tokio_pvm::Sender>();
    send_sync::<tokio_pvm::Receiver>();
    send::<tokio_pvm::Listener>();
    send_sync::<tokio_pvm::Error>();
    send_sync::<Config>();
}

#[tokio::test]
async fn the_halves_expose_the_control_socket() {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    use std::os::fd::{AsFd, AsRawFd};

    let (a, b) = Connection::pair().await.unwrap();
    assert_eq!(
        getsockopt(&a.as_fd(), sockopt::SockType).unwrap(),
        SockType::Stream
    );
    let fd = a.as_raw_fd();
    assert_ne!(fd, b.as_raw_fd());
    let (tx, rx) = a.split();
    assert_eq!((tx.as_raw_fd(), rx.as_raw_fd()), (fd, fd));
}

/// `into_split` and `reunite`: halves of one connection come back together and keep working;
/// halves of two connections are handed back with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_reunite_only_with_their_own() {
    let (a, mut b) = Connection::pair().await.unwrap();
    let (c, d) = Connection::pair().await.unwrap();
    let (tx, rx) = a.into_split();
    let (other_tx, other_rx) = c.into_split();
    let err = Connection::reunite(tx, other_rx).unwrap_err();
    assert!(
        err.to_string().contains("not from the same connection"),
        "{err}"
    );
    let tokio_pvm::ReuniteError(tx, other_rx) = err;
    let mut a = Connection::reunite(tx, rx).expect("the same connection");
    // (A send returns once the peer has the message, so the peer reads meanwhile.)
    let (sent, got) = tokio::join!(a.send(Bytes::from_static(b"again")), b.next());
    sent.unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"again");
    let (sent, got) = tokio::join!(b.send(Bytes::from_static(b"back")), a.next());
    sent.unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"back");
    drop((other_tx, other_rx, d));
}

/// A `ByteStream` tells who the peer is and how bytes travel each way.
#[tokio::test]
async fn a_byte_stream_names_its_peer_and_modes() {
    let (a, b) = Connection::pair().await.unwrap();
    let (mode, send_mode) = (a.mode().clone(), a.send_mode().clone());
    let stream = tokio_pvm::ByteStream::new(a);
    assert_eq!(stream.peer().pid().unwrap(), std::process::id() as i32);
    assert_eq!(stream.mode(), &mode);
    assert_eq!(stream.send_mode(), &send_mode);
    assert!(stream.mode().is_pull(), "a pair pulls from itself");
    drop(b);
}
