//! Protocols written for sockets, run over `ByteStream` between two real processes: hyper's
//! HTTP/1.1 client and server on one keep-alive connection, and tokio-util's `LinesCodec`.
//! The child is this test binary, re-executed (see `util`).

mod util;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::time::timeout;
use tokio_pvm::{ByteStream, Connection, Listener};
use tokio_util::codec::{Framed, LinesCodec};
use util::http_roles::{LEN_HEADER, SUM_HEADER, checksum};
use util::{ChildProc, pattern, temp_dir, wait_for};

child_entry!();

/// Longest a whole test may take before it counts as hung.
const LIMIT: Duration = Duration::from_secs(10);

/// Connects to the child's listener; retries while it is between `bind` and `listen`.
async fn connect(path: &Path) -> Connection {
    wait_for(path).await;
    let mut tries = 0;
    loop {
        match Connection::connect(path).await {
            Ok(conn) => return conn,
            Err(_) if tries < 200 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("connecting to {}: {e}", path.display()),
        }
    }
}

fn header(resp: &hyper::Response<hyper::body::Incoming>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_and_server_in_two_processes_on_one_keep_alive_connection() {
    let dir = temp_dir("http");
    let path = dir.join("s");
    let child = ChildProc::spawn("http_server", &[path.to_str().unwrap()]);
    // Body sizes of the POST requests, in order, all on the same connection.
    let sizes = [0usize, 1024, 8 << 20, 1024, 0, 65_537, 8 << 20];
    timeout(LIMIT, async {
        let conn = connect(&path).await;
        assert_eq!(conn.peer().pid().unwrap(), child.pid());
        let io = TokioIo::new(ByteStream::new(conn));
        let (mut sender, driver) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP handshake");
        let driver = tokio::spawn(driver);

        for (seq, &size) in sizes.iter().enumerate() {
            let body = pattern(seq as u64, size);
            let req = Request::builder()
                .method(Method::POST)
                .uri("/echo")
                .header(hyper::header::HOST, "tokio-pvm")
                .body(Full::new(body.clone()))
                .unwrap();
            sender.ready().await.expect("connection still usable");
            let resp = sender.send_request(req).await.expect("response");
            assert_eq!(resp.status(), StatusCode::OK, "request {seq} ({size} B)");
            assert_eq!(
                header(&resp, LEN_HEADER),
                Some(size.to_string()),
                "request {seq}: the server saw the whole body"
            );
            assert_eq!(
                header(&resp, SUM_HEADER),
                Some(checksum(&body).to_string()),
                "request {seq}: the server saw the right bytes"
            );
            let got: Bytes = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(got.len(), size, "request {seq}: echoed length");
            assert!(got == body, "request {seq} ({size} B): echo differs");
        }

        // An unknown route on the same connection.
        let req = Request::builder()
            .method(Method::GET)
            .uri("/missing")
            .header(hyper::header::HOST, "tokio-pvm")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.ready().await.expect("connection still usable");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"not found\n");

        // Dropping the last sender makes the client shut the connection down cleanly.
        drop(sender);
        driver
            .await
            .expect("client connection task")
            .expect("client connection ends cleanly");
    })
    .await
    .expect("the HTTP exchange hung");
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok, "the server child exits 0 after the client closed");
    assert_eq!(
        out,
        [format!("requests {}", sizes.len() + 1)],
        "every request arrived on the one connection"
    );
}

/// Line `i`: lowercase text of a length that varies from 0 to a few KiB.
fn line(i: usize) -> String {
    let len = match i % 10 {
        0 => 0,
        1..=6 => i % 97,
        7 | 8 => 100 + i * 7 % 1500,
        _ => 4000 + i % 3000,
    };
    (0..len)
        .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_codec_across_two_processes() {
    const LOCKSTEP: usize = 1000;
    const PIPELINED: usize = 1000;
    let dir = temp_dir("lines");
    let path = dir.join("s");
    let listener = Listener::bind(&path).unwrap();
    let child = ChildProc::spawn("lines_upper", &[path.to_str().unwrap()]);
    timeout(LIMIT, async {
        let conn = listener.accept().await.expect("accept");
        assert_eq!(conn.peer().pid().unwrap(), child.pid());
        let mut framed = Framed::new(ByteStream::new(conn), LinesCodec::new());

        // One line at a time: send, then wait for its answer.
        for i in 0..LOCKSTEP {
            let sent = line(i);
            framed.send(sent.clone()).await.expect("send line");
            let back = framed.next().await.expect("an answer").expect("a line");
            assert_eq!(back, sent.to_uppercase(), "line {i}");
        }

        // Pipelined: one task writes every line and closes, the other reads the answers and
        // then the end of file that follows the child's own close.
        let (mut tx, mut rx) = framed.split();
        let writer = tokio::spawn(async move {
            for i in LOCKSTEP..LOCKSTEP + PIPELINED {
                tx.feed(line(i)).await.expect("feed line");
            }
            SinkExt::<String>::close(&mut tx).await.expect("close");
        });
        for i in LOCKSTEP..LOCKSTEP + PIPELINED {
            let back = rx.next().await.expect("an answer").expect("a line");
            assert_eq!(back, line(i).to_uppercase(), "line {i}");
        }
        assert!(
            rx.next().await.is_none(),
            "end of file once the child has closed"
        );
        writer.await.expect("writer task");
    })
    .await
    .expect("the line exchange hung");
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok, "the child exits 0 after end of file");
    assert_eq!(out, [format!("lines {}", LOCKSTEP + PIPELINED)]);
}

/// An in-process hyper server answers one request over `ByteStream`; the client reads the
/// whole response and shuts its side down at once, without yielding in between. Returns how
/// `serve_connection` ended.
async fn close_right_after_the_response(half_close: bool) -> Result<(), hyper::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = Connection::pair().await.unwrap();
    let server = tokio::spawn(async move {
        hyper::server::conn::http1::Builder::new()
            .half_close(half_close)
            .serve_connection(
                TokioIo::new(ByteStream::new(b)),
                hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"hi"),
                    )))
                }),
            )
            .await
    });
    let mut client = ByteStream::new(a);
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nhi") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "response cut short: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    client.shutdown().await.unwrap();
    timeout(LIMIT, server).await.expect("server hung").unwrap()
}

/// A hyper server over `ByteStream` closes cleanly when the client closes right after the
/// last response (deterministic on a current-thread runtime), with `half_close` either way.
/// This once failed with hyper's default (`IncompleteMessage`): `ByteStream::flush` waited for
/// the client's acknowledgement, and the client's close arrived right behind it, before hyper
/// saw its flush complete. Flush now only writes the descriptor out, as a socket's does.
#[tokio::test(flavor = "current_thread")]
async fn hyper_server_ends_cleanly_when_the_client_closes_after_the_response() {
    for half_close in [false, true] {
        close_right_after_the_response(half_close)
            .await
            .unwrap_or_else(|e| panic!("half_close({half_close}): {e}"));
    }
}
