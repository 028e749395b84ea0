//! The TCP carrier: the same connections over `tcp://` addresses, inside mutual TLS (with
//! certificates made here with rcgen), or plain on loopback when both sides opt in; and
//! every way TLS refuses a peer, with an error that names the fix.

#![cfg(feature = "tcp")]

mod util;

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_pvm::{Address, ByteStream, Config, Connection, ErrorKind, Listener, Tls};
use util::pki::Pki;
use util::{check, pattern};

child_entry!();

const LIMIT: Duration = Duration::from_secs(20);

fn plain() -> Config {
    Config::new().danger_plain_tcp_on_loopback()
}

fn tcp_addr(listener: &Listener) -> Address {
    listener
        .local_addrs()
        .into_iter()
        .find(|a| matches!(a, Address::Tcp(_)))
        .expect("a TCP address")
}

/// Accepts on `listener` in a task of its own (a listener takes sockets in only while it is
/// polled), handing each connection over on the channel returned.
fn accept_in_background(
    listener: Listener,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<Connection>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        while let Ok(conn) = listener.accept().await {
            let _ = tx.send(conn).await;
        }
    });
    (task, rx)
}

/// `n` TCP connections to `addr` that never send a byte.
async fn silent_sockets(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut silent = Vec::new();
    for _ in 0..n {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    silent
}

/// Sizes from empty to 16 MiB, both ways at once, each checked byte for byte, in order;
/// then a clean close each way.
async fn round_trip(server: Config, client: Config) -> (Connection, Connection) {
    let listener = Listener::bind_with("tcp://127.0.0.1:0", server).unwrap();
    let addr = tcp_addr(&listener);
    let (a, b) = tokio::join!(
        async { timeout(LIMIT, listener.accept()).await.unwrap().unwrap() },
        async { Connection::connect_with(&addr, client).await.unwrap() }
    );
    (a, b)
}

async fn exchange(a: Connection, b: Connection) {
    const SIZES: [usize; 8] = [0, 1, 100, 4096, 65_536, 65_537, 1 << 20, 16 << 20];
    let send = |conn: Connection| async move {
        let (mut tx, mut rx) = conn.split();
        let sending = async {
            for (seq, &n) in SIZES.iter().enumerate() {
                tx.send(pattern(seq as u64, n)).await.unwrap();
            }
            tx.close().await.unwrap();
        };
        let receiving = async {
            let mut seq = 0u64;
            while let Some(m) = rx.next().await {
                let m = m.unwrap();
                assert!(check(seq, SIZES[seq as usize], &m), "message {seq} damaged");
                seq += 1;
            }
            seq
        };
        let ((), got) = tokio::join!(sending, receiving);
        got
    };
    let (got_a, got_b) = timeout(LIMIT, async { tokio::join!(send(a), send(b)) })
        .await
        .expect("no hang");
    assert_eq!((got_a, got_b), (SIZES.len() as u64, SIZES.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_on_loopback_carries_every_size_both_ways() {
    let (a, b) = round_trip(plain(), plain()).await;
    assert!(!a.peer().is_local() && a.peer().pid().is_none() && a.peer().uid().is_none());
    assert!(a.peer().addr().unwrap().ip().is_loopback());
    assert_eq!(a.peer().certificate_subject(), None);
    assert!(!a.mode().is_pull() && !b.send_mode().is_pull());
    exchange(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_carries_every_size_and_names_the_peer_by_its_certificate() {
    let pki = Pki::new("test CA");
    let server = Config::new().tls(pki.tls("server-1", &pki));
    let client = Config::new().tls(pki.tls("client-1", &pki));
    let (a, b) = round_trip(server, client).await;
    assert_eq!(a.peer().certificate_subject(), Some("CN=client-1"));
    assert_eq!(b.peer().certificate_subject(), Some("CN=server-1"));
    assert!(a.peer().certificate().is_some());
    assert!(a.peer().to_string().contains("CN=client-1"), "{}", a.peer());
    exchange(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_stream_runs_over_tls() {
    let pki = Pki::new("test CA");
    let (a, b) = round_trip(
        Config::new().tls(pki.tls("server", &pki)),
        Config::new().tls(pki.tls("client", &pki)),
    )
    .await;
    let (mut a, b) = (ByteStream::new(a), ByteStream::new(b));
    let echo = tokio::spawn(async move {
        let (r, mut w) = b.into_split();
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            w.write_all(format!("{line}!\n").as_bytes()).await.unwrap();
            w.flush().await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    for i in 0..100 {
        a.write_all(format!("line {i}\n").as_bytes()).await.unwrap();
        a.flush().await.unwrap();
        let mut reply = String::new();
        timeout(LIMIT, a.read_line(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, format!("line {i}!\n"));
    }
    a.shutdown().await.unwrap();
    let mut rest = String::new();
    assert_eq!(a.read_line(&mut rest).await.unwrap(), 0, "end of stream");
    timeout(LIMIT, echo).await.unwrap().unwrap();
}

/// The listener's side of a refused connection: nothing is accepted, and the listener goes
/// on (a good client connects afterwards).
async fn refused(server: Config, client: Config, needle_client: &str) -> tokio_pvm::Error {
    let listener = Listener::bind_with("tcp://127.0.0.1:0", server).unwrap();
    let addr = tcp_addr(&listener);
    let err = tokio::select! {
        r = Connection::connect_with(&addr, client) => r.expect_err("the connection must be refused"),
        c = listener.accept() => panic!("accepted a connection that must be refused: {c:?}"),
    };
    eprintln!("refused as expected: {err}");
    assert!(
        err.to_string().contains(needle_client),
        "client error should mention {needle_client:?}: {err}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_name_the_cause_and_the_fix() {
    let pki = Pki::new("test CA");
    let other = Pki::new("another CA");
    let server = || Config::new().tls(pki.tls("server", &pki));

    // No TLS on the client at all.
    let err = refused(server(), Config::new(), "Config::tls").await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);

    // A client certificate from an authority the server does not trust.
    let err = refused(
        server(),
        Config::new().tls(other.tls("intruder", &pki)),
        "authority the peer trusts",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");

    // A client that trusts another authority than the server's.
    let err = refused(
        server(),
        Config::new().tls(pki.tls("client", &other)),
        "authority",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");

    // An expired client certificate.
    let (cert, key) = pki.leaf_valid("old", &["localhost"], (-30, -1));
    let expired = Tls::from_pem(cert.as_bytes(), key.as_bytes(), pki.ca_pem().as_bytes()).unwrap();
    let err = refused(server(), Config::new().tls(expired), "expired; renew it").await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");

    // A server certificate that does not name the host connected to.
    let (cert, key) = pki.leaf("elsewhere", &["elsewhere.example"]);
    let misnamed = Tls::from_pem(cert.as_bytes(), key.as_bytes(), pki.ca_pem().as_bytes()).unwrap();
    let err = refused(
        Config::new().tls(misnamed),
        Config::new().tls(pki.tls("client", &pki)),
        "Tls::server_name",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");

    // A client without a certificate of its own (built with rustls directly).
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    roots
        .add(
            tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(
                pki.ca_pem().as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let anonymous = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_side = pki.tls("unused", &pki);
    let _ = server_side;
    let own = pki.tls("anonymous", &pki);
    let tls = Tls::from_rustls(std::sync::Arc::new(anonymous), own_server(&own));
    let err = refused(
        server(),
        Config::new().tls(tls),
        "give this side a certificate",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

/// A server configuration for a `Tls` built from rustls parts (only its client half is
/// used by a connecting side).
fn own_server(_tls: &Tls) -> std::sync::Arc<tokio_rustls::rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["unused".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
                    .unwrap(),
            )
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_is_refused_beyond_loopback_and_without_opting_in() {
    let err = Listener::bind_with("tcp://0.0.0.0:0", plain()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("loopback"), "{err}");
    let err = Listener::bind("tcp://127.0.0.1:0").unwrap_err();
    assert!(err.to_string().contains("Config::tls"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listener_serves_a_unix_socket_and_tcp() {
    let dir = util::temp_dir("both");
    let path = dir.join("s");
    let listener = Listener::bind_all(
        [Address::from(path.as_path()), "tcp://127.0.0.1:0".into()],
        plain(),
    )
    .unwrap();
    let tcp = tcp_addr(&listener);
    assert_eq!(listener.path(), Some(path.as_path()));
    let server = async {
        let mut peers = Vec::new();
        for _ in 0..2 {
            let mut conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
            peers.push(conn.peer().is_local());
            conn.send(Bytes::from_static(b"hello")).await.unwrap();
            conn.close().await.unwrap();
        }
        peers
    };
    let clients = async {
        tokio::join!(
            Connection::connect(&path),
            Connection::connect_with(&tcp, plain())
        )
    };
    let (mut peers, (local, remote)) = tokio::join!(server, clients);
    let (mut local, mut remote) = (local.unwrap(), remote.unwrap());
    peers.sort();
    assert_eq!(peers, [false, true]);
    for conn in [&mut local, &mut remote] {
        assert_eq!(conn.next().await.unwrap().unwrap(), "hello");
        assert!(conn.next().await.is_none());
    }
}

/// A peer over plain TCP that speaks the wire protocol by hand: HELLO and READY (inline), then
/// whatever the test reads.
struct RawTcpPeer {
    sock: std::net::TcpStream,
}

impl RawTcpPeer {
    fn handshake(addr: &str) -> RawTcpPeer {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = util::raw::hello_body(&[0; 16]);
        hello[16..24].copy_from_slice(&0u64.to_le_bytes()); // no cookie address over TCP
        sock.write_all(&util::raw::frame(util::raw::T_HELLO, &hello))
            .unwrap();
        let mut peer = RawTcpPeer { sock };
        assert_eq!(peer.recv().0, util::raw::T_HELLO);
        let mut ready = 1u32.to_le_bytes().to_vec(); // INLINE
        ready.extend_from_slice(&[0; 4]);
        peer.sock
            .write_all(&util::raw::frame(util::raw::T_READY, &ready))
            .unwrap();
        assert_eq!(peer.recv().0, util::raw::T_READY);
        peer
    }

    fn recv(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read;
        let mut h = [0u8; 8];
        self.sock.read_exact(&mut h).unwrap();
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let mut body = vec![0; len];
        self.sock.read_exact(&mut body).unwrap();
        (h[0], body)
    }
}

/// A message larger than 256 KiB travels in PART frames of at most 256 KiB, in order, that
/// add up to it; a small one in one frame. Neither side buffers more than a part of a large
/// message besides the message itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_travel_in_bounded_parts() {
    const T_PART: u8 = 14;
    let listener = Listener::bind_with("tcp://127.0.0.1:0", plain()).unwrap();
    let Address::Tcp(addr) = tcp_addr(&listener) else {
        unreachable!()
    };
    let raw = tokio::task::spawn_blocking(move || RawTcpPeer::handshake(&addr));
    let mut conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let mut peer = raw.await.unwrap();
    let big = pattern(0, (4 << 20) + 5);
    let small = pattern(1, 1000);
    let (b, s) = (big.clone(), small.clone());
    let reader = tokio::task::spawn_blocking(move || {
        let (big, small) = (b, s);
        let mut parts = Vec::new();
        let mut message = Vec::new();
        while message.len() < big.len() {
            let (ty, body) = peer.recv();
            assert_eq!(ty, T_PART, "a large message travels in parts");
            assert_eq!(u64::from_le_bytes(body[..8].try_into().unwrap()), 0);
            assert_eq!(
                u64::from_le_bytes(body[8..16].try_into().unwrap()),
                big.len() as u64
            );
            parts.push(body.len() - 16);
            message.extend_from_slice(&body[16..]);
        }
        assert_eq!(message, big);
        let (ty, body) = peer.recv();
        assert!(
            ty == util::raw::T_INLINE || ty == util::raw::T_BATCH,
            "a small message is one frame: {ty}"
        );
        assert!(body.ends_with(&small));
        // The sender's flush asks for the acknowledgement of both (SYNC), after them.
        let (ty, body) = peer.recv();
        assert_eq!(ty, util::raw::T_SYNC);
        assert_eq!(body, 2u64.to_le_bytes());
        use std::io::Write;
        peer.sock
            .write_all(&util::raw::frame(util::raw::T_ACK, &2u64.to_le_bytes()))
            .unwrap();
        // The socket stays open until the test is done: closing it would be the peer gone.
        (parts, peer)
    });
    // The second message waits for the first to be in the socket, as a socket's writer
    // waits for room.
    timeout(LIMIT, async {
        conn.feed(big).await.unwrap();
        conn.send(small).await.unwrap();
    })
    .await
    .expect("no hang");
    let (parts, _peer) = timeout(LIMIT, reader).await.unwrap().unwrap();
    assert!(parts.iter().all(|&n| n <= 256 << 10), "{parts:?}");
    assert_eq!(parts.len(), 17);
}

/// Random bytes after the handshake over TCP: the connection ends with an error (or the
/// stream ends), never a panic or a hang, and the listener goes on accepting.
#[test]
fn hostile_bytes_over_tcp_end_only_that_connection() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener =
        rt.block_on(async { Listener::bind_with("tcp://127.0.0.1:0", plain()).unwrap() });
    let Address::Tcp(addr) = tcp_addr(&listener) else {
        unreachable!()
    };
    let config = ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    };
    proptest!(config, |(garbage in proptest::collection::vec(any::<u8>(), 1..2048))| {
        let a = addr.clone();
        let raw = std::thread::spawn(move || {
            use std::io::Write;
            let mut peer = RawTcpPeer::handshake(&a);
            let _ = peer.sock.write_all(&garbage);
            peer
        });
        rt.block_on(async {
            let mut conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
            let _peer = raw.join().unwrap();
            let end = timeout(Duration::from_secs(5), async {
                loop {
                    match conn.next().await {
                        Some(Ok(_)) => {} // garbage may happen to be a valid message
                        Some(Err(e)) => break Some(e),
                        None => break None,
                    }
                }
            })
            .await;
            // Garbage that is a valid prefix waits for the rest of a frame: then the
            // connection is still open, which is no hang of anything else.
            if let Ok(Some(e)) = end {
                assert!(!e.to_string().is_empty());
            }
        });
    });
    // The listener still serves a well-behaved client.
    rt.block_on(async {
        let (accepted, connected) = tokio::join!(
            listener.accept(),
            Connection::connect_with(format!("tcp://{addr}"), plain())
        );
        let (mut a, mut b) = (accepted.unwrap(), connected.unwrap());
        b.send(Bytes::from_static(b"still here")).await.unwrap();
        assert_eq!(a.next().await.unwrap().unwrap(), "still here");
    });
}

/// `Config::max_connections` counts TCP connections too: one over the limit is refused with
/// an error naming the limit, and one is let in again once a connection has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_counts_tcp_connections() {
    let listener = Listener::bind_with("tcp://127.0.0.1:0", plain().max_connections(1)).unwrap();
    let addr = tcp_addr(&listener);
    let (accepting, mut accepted) = accept_in_background(listener);
    // Each connection is served until its peer leaves, then dropped.
    let serving = tokio::spawn(async move {
        while let Some(mut conn) = accepted.recv().await {
            tokio::spawn(async move { while conn.next().await.is_some() {} });
        }
    });
    let first = Connection::connect_with(&addr, plain()).await.unwrap();
    let err = Connection::connect_with(&addr, plain())
        .await
        .expect_err("a second connection is over the limit");
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert!(err.to_string().contains("Config::max_connections"), "{err}");
    drop(first);
    // The listener's copy goes when the peer's end is seen; retry until it has.
    let mut again = None;
    for _ in 0..100 {
        match Connection::connect_with(&addr, plain()).await {
            Ok(conn) => {
                again = Some(conn);
                break;
            }
            Err(e) if e.kind() == ErrorKind::LimitExceeded => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        again.is_some(),
        "a connection is let in once the first has gone"
    );
    drop(again);
    accepting.abort();
    serving.abort();
}

/// One `Fanout` publishes to a subscriber over a Unix socket and one over TCP: the same
/// messages, in order, to both, whatever carries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_publishes_over_both_carriers() {
    let dir = util::temp_dir("fanout-both");
    let path = dir.join("s");
    let listener = Listener::bind_all(
        [Address::from(path.as_path()), "tcp://127.0.0.1:0".into()],
        plain(),
    )
    .unwrap();
    let tcp = tcp_addr(&listener);
    let subscribe = |addr: Address| async move {
        let mut conn = Connection::connect_with(&addr, plain()).await.unwrap();
        let mut got = Vec::new();
        while let Some(m) = conn.next().await {
            got.push(m.unwrap());
        }
        got
    };
    let local = tokio::spawn(subscribe(Address::from(path.as_path())));
    let remote = tokio::spawn(subscribe(tcp));
    let mut fanout = tokio_pvm::Fanout::new(&plain());
    for _ in 0..2 {
        let conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        fanout.subscribe(conn);
    }
    let sizes = [0usize, 10, 70_000, 300_000, 3 << 20];
    for (seq, &n) in sizes.iter().enumerate() {
        fanout.send(pattern(seq as u64, n)).await.unwrap();
    }
    fanout.close().await.unwrap();
    for got in [local.await.unwrap(), remote.await.unwrap()] {
        assert_eq!(got.len(), sizes.len());
        for (seq, m) in got.iter().enumerate() {
            assert!(check(seq as u64, sizes[seq], m), "message {seq} damaged");
        }
    }
}

/// Connections that never start TLS cannot keep clients out: more of them than there are
/// handshake slots, and a client still gets in at once, whether the slots are freed by
/// `Config::hello_timeout` (short) or by dropping the oldest unfinished handshake (long).
async fn silent_connections_then_a_client(hello_timeout: Duration) {
    let pki = Pki::new("test CA");
    let server = Config::new()
        .tls(pki.tls("server", &pki))
        .hello_timeout(hello_timeout);
    let listener = Listener::bind_with("tcp://127.0.0.1:0", server).unwrap();
    let Address::Tcp(addr) = tcp_addr(&listener) else {
        unreachable!()
    };
    let (accepting, mut accepted) = accept_in_background(listener);
    // More silent connections than the listener has TLS handshake slots (128).
    let mut silent = silent_sockets(&addr, 150).await;
    let started = std::time::Instant::now();
    let client = Config::new().tls(pki.tls("client", &pki));
    let mut b = timeout(
        LIMIT,
        Connection::connect_with(format!("tcp://{addr}"), client),
    )
    .await
    .expect("the client got in")
    .unwrap();
    let mut a = accepted.recv().await.unwrap();
    assert_eq!(a.peer().certificate_subject(), Some("CN=client"));
    b.send(Bytes::from_static(b"in")).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), "in");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    if hello_timeout > LIMIT {
        // The slots were freed by dropping the oldest handshakes, whose sockets the listener
        // (still running) has closed.
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        let read = timeout(Duration::from_secs(5), silent[0].read(&mut byte))
            .await
            .expect("the oldest silent connection was dropped, not left waiting");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    accepting.abort();
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connections_cannot_keep_a_client_out() {
    silent_connections_then_a_client(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_slot_silent_the_oldest_handshake_makes_room() {
    // Longer than the test's patience: the slots are freed by dropping the oldest.
    silent_connections_then_a_client(Duration::from_secs(60)).await;
}

/// Connections that have authenticated nothing do not count against
/// `Config::max_connections`: silent TCP sockets cannot lock a Unix client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_sockets_do_not_use_up_the_connection_limit() {
    let dir = util::temp_dir("limit-silent");
    let path = dir.join("s");
    let listener = Listener::bind_all(
        [Address::from(path.as_path()), "tcp://127.0.0.1:0".into()],
        plain().max_connections(2),
    )
    .unwrap();
    let Address::Tcp(addr) = tcp_addr(&listener) else {
        unreachable!()
    };
    let (accepting, mut accepted) = accept_in_background(listener);
    let silent = silent_sockets(&addr, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // let the listener take them in
    let local = timeout(LIMIT, Connection::connect(&path))
        .await
        .expect("no hang")
        .expect("the limit is not used up by silent sockets");
    let conn = accepted.recv().await.unwrap();
    assert!(conn.peer().is_local());
    drop((local, conn, silent));
    accepting.abort();
}

/// A TLS connection cut without `close_notify` (the peer's process died, or the network cut
/// it) is the peer gone, as over a Unix socket: what arrived is delivered, then `PeerGone`
/// naming the peer, not a TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_cut_without_close_notify_is_the_peer_gone() {
    use std::os::fd::AsFd;
    let pki = Pki::new("test CA");
    let (mut a, mut b) = round_trip(
        Config::new().tls(pki.tls("server", &pki)),
        Config::new().tls(pki.tls("client", &pki)),
    )
    .await;
    b.send(Bytes::from_static(b"last words")).await.unwrap();
    // Cut the TCP connection under TLS, as a dying process's kernel would.
    nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&b.as_fd()),
        nix::sys::socket::Shutdown::Both,
    )
    .unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), "last words");
    let err = timeout(LIMIT, a.next())
        .await
        .expect("no hang")
        .expect("an error, not a clean end")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
    assert!(err.to_string().contains("CN=client"), "{err}");
    drop(b);
}

/// TLS on one side and plain TCP on the other do not meet, and each side's error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_tcp_do_not_meet_and_say_why() {
    let pki = Pki::new("test CA");
    // A TLS client at a plain listener.
    let err = refused(
        plain(),
        Config::new().tls(pki.tls("client", &pki)),
        "does not speak TLS",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // A plain client at a TLS listener.
    let err = refused(
        Config::new().tls(pki.tls("server", &pki)),
        plain(),
        "this side needs Config::tls too",
    )
    .await;
    assert_eq!(err.kind(), ErrorKind::PeerGone, "{err}");
}

/// The TCP options `Config` documents are set on both ends: `TCP_NODELAY`, keep-alive (60 s
/// idle, probes every 6 s, 3 of them) and `TCP_USER_TIMEOUT` bounding unacknowledged data
/// the same way (78 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_options_are_set_as_documented() {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::os::fd::AsFd;
    let (a, b) = round_trip(plain(), plain()).await;
    for conn in [&a, &b] {
        let fd = conn.as_fd();
        assert!(getsockopt(&fd, sockopt::TcpNoDelay).unwrap());
        assert!(getsockopt(&fd, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepIdle).unwrap(), 60);
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepInterval).unwrap(), 6);
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepCount).unwrap(), 3);
        assert_eq!(getsockopt(&fd, sockopt::TcpUserTimeout).unwrap(), 78_000);
    }
    let (c, _d) = round_trip(plain().tcp_keepalive(None).tcp_nodelay(false), plain()).await;
    assert!(!getsockopt(&c.as_fd(), sockopt::KeepAlive).unwrap());
    assert!(!getsockopt(&c.as_fd(), sockopt::TcpNoDelay).unwrap());
}
