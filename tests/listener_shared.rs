//! One listener shared by several accepting tasks (`accept` and `poll_accept` take `&self`):
//! each connection is handed out exactly once, and no waiting task is left asleep while a
//! connection is ready for it. Real sockets, with clients in tasks of this process or in child
//! processes; every wait has a deadline, so that a task left waiting fails the test instead
//! of hanging it.

mod util;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_pvm::{Connection, Listener};
use util::{ChildProc, temp_dir};

child_entry!();

/// Deadline of every wait: far more than any of these tests needs.
const LIMIT: Duration = Duration::from_secs(30);

/// A client: connects, sends its index, closes (which returns once the listener's side has
/// taken the message in).
async fn client(path: PathBuf, index: u64) -> tokio_pvm::Result<()> {
    let mut conn = Connection::connect(&path).await?;
    conn.send(Bytes::from(index.to_le_bytes().to_vec())).await?;
    conn.close().await
}

/// The index a [`client`] sent on `conn`; reads the connection to its end.
async fn index_of(mut conn: Connection) -> u64 {
    let msg = conn.next().await.expect("a message").expect("a good one");
    if let Some(more) = conn.next().await {
        panic!("one message per client, then the end; got {more:?}");
    }
    u64::from_le_bytes(msg[..].try_into().expect("8 bytes"))
}

/// Receives `n` reports, or fails with `what` once [`LIMIT`] has passed.
async fn reports<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize, what: &str) -> Vec<T> {
    let mut got = Vec::with_capacity(n);
    let all = async {
        while got.len() < n {
            got.push(rx.recv().await.expect("reporters alive"));
        }
    };
    if timeout(LIMIT, all).await.is_err() {
        panic!("{what}: {} of {n} within {LIMIT:?}", got.len());
    }
    got
}

/// Asserts that `indices` holds each of `0..n` exactly once.
fn each_once(mut indices: Vec<u64>, n: u64) {
    indices.sort_unstable();
    assert_eq!(indices, (0..n).collect::<Vec<_>>(), "each connection once");
}

/// A task that accepts from `listener` until aborted, and reports `(who, client index)` for
/// each connection.
fn acceptor(
    who: usize,
    listener: Arc<Listener>,
    tx: mpsc::UnboundedSender<(usize, u64)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let conn = listener.accept().await.expect("accept");
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((who, index_of(conn).await));
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tasks_accepting_from_one_listener_get_each_connection_once() {
    const CLIENTS: u64 = 48;
    let path = temp_dir("shared-two").join("s");
    let listener = Arc::new(Listener::bind(&path).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let acceptors = [
        acceptor(0, listener.clone(), tx.clone()),
        acceptor(1, listener.clone(), tx),
    ];
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(path.clone(), i)))
        .collect();
    let got = reports(&mut rx, CLIENTS as usize, "connections handed out").await;
    for c in clients {
        timeout(LIMIT, c)
            .await
            .expect("client done")
            .unwrap()
            .expect("client");
    }
    let per_task = [0, 1].map(|who| got.iter().filter(|(w, _)| *w == who).count());
    each_once(got.into_iter().map(|(_, i)| i).collect(), CLIENTS);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "no connection handed out twice");
    eprintln!("connections per accepting task: {per_task:?}");
    for a in acceptors {
        assert!(!a.is_finished(), "accepting tasks wait on");
        a.abort();
    }
}

/// `tasks` tasks each wait in one `accept`, then as many clients connect one after another:
/// each connection must reach a task still waiting, although the task that took the
/// previous one (and was the last to poll the socket) has ended.
async fn every_waiting_task_gets_a_connection(name: &str, tasks: u64) {
    let path = temp_dir(name).join("s");
    let listener = Arc::new(Listener::bind(&path).unwrap());
    let waiting: Vec<_> = (0..tasks)
        .map(|_| {
            let listener = listener.clone();
            tokio::spawn(async move { index_of(listener.accept().await.expect("accept")).await })
        })
        .collect();
    // Let every task start waiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..tasks {
        match timeout(LIMIT, client(path.clone(), i)).await {
            Ok(Ok(())) => {}
            failed => panic!(
                "client {i} was not accepted ({failed:?}): the tasks still waiting in accept \
                 were left asleep"
            ),
        }
    }
    let mut got = Vec::new();
    for task in waiting {
        got.push(timeout(LIMIT, task).await.expect("task done").unwrap());
    }
    each_once(got, tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_task_gets_a_connection_on_a_multi_thread_runtime() {
    every_waiting_task_gets_a_connection("shared-waiters-mt", 8).await;
}

#[tokio::test(flavor = "current_thread")]
async fn every_waiting_task_gets_a_connection_on_a_current_thread_runtime() {
    every_waiting_task_gets_a_connection("shared-waiters-ct", 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_cancelled_over_and_over_lose_no_connection() {
    const CLIENTS: u64 = 32;
    let path = temp_dir("shared-cancel").join("s");
    let listener = Arc::new(Listener::bind(&path).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    // One task gives up on `accept` every 200 µs and calls it again; the other waits.
    let impatient = {
        let listener = listener.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let Ok(conn) = timeout(Duration::from_micros(200), listener.accept()).await else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send((0, index_of(conn.expect("accept")).await));
                });
            }
        })
    };
    let patient = acceptor(1, listener.clone(), tx);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(path.clone(), i)))
        .collect();
    let got = reports(&mut rx, CLIENTS as usize, "connections handed out").await;
    for c in clients {
        timeout(LIMIT, c)
            .await
            .expect("client done")
            .unwrap()
            .expect("client");
    }
    each_once(got.into_iter().map(|(_, i)| i).collect(), CLIENTS);
    impatient.abort();
    patient.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn poll_accept_makes_a_stream_that_shares_the_listener_with_accept() {
    const CLIENTS: u64 = 16;
    let path = temp_dir("shared-stream").join("s");
    let listener = Arc::new(Listener::bind(&path).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = {
        let listener = listener.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut incoming = futures::stream::poll_fn(|cx| listener.poll_accept(cx).map(Some));
            while let Some(conn) = incoming.next().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send((0, index_of(conn.expect("accept")).await));
                });
            }
        })
    };
    let accepting = acceptor(1, listener.clone(), tx);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(path.clone(), i)))
        .collect();
    let got = reports(&mut rx, CLIENTS as usize, "connections handed out").await;
    for c in clients {
        timeout(LIMIT, c)
            .await
            .expect("client done")
            .unwrap()
            .expect("client");
    }
    each_once(got.into_iter().map(|(_, i)| i).collect(), CLIENTS);
    stream.abort();
    accepting.abort();
}

/// Reads `conn` to its end; `(who, peer pid, messages)`.
async fn count(who: usize, mut conn: Connection) -> (usize, i32, u64) {
    let pid = conn.peer().pid().unwrap();
    let mut n = 0;
    while let Some(msg) = conn.next().await {
        msg.expect("a good message");
        n += 1;
    }
    (who, pid, n)
}

/// `path` as the argument of a child role.
fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_take_each_child_process_once() {
    const CHILDREN: usize = 6;
    let path = temp_dir("shared-children").join("s");
    let listener = Arc::new(Listener::bind(&path).unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let streams: Vec<_> = (0..2)
        .map(|who| {
            let listener = listener.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut incoming =
                    futures::stream::poll_fn(|cx| listener.poll_accept(cx).map(Some));
                while let Some(conn) = incoming.next().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(count(who, conn.expect("accept")).await);
                    });
                }
            })
        })
        .collect();
    // Each child connects, sends 64 and 4096 bytes three times, and closes.
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| ChildProc::spawn("send", &[arg(&path), "64,4096", "3"]))
        .collect();
    let got = reports(&mut rx, CHILDREN, "child connections handed out").await;
    let mut pids: Vec<i32> = got.iter().map(|&(_, pid, _)| pid).collect();
    pids.sort_unstable();
    let mut expected: Vec<i32> = children.iter().map(ChildProc::pid).collect();
    expected.sort_unstable();
    assert_eq!(pids, expected, "each child's connection once");
    assert!(
        got.iter().all(|&(_, _, n)| n == 6),
        "every message: {got:?}"
    );
    for child in children {
        let (ok, out) = child.finish(LIMIT);
        assert!(ok && out == ["6"], "child: {out:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "no connection handed out twice");
    for s in streams {
        s.abort();
    }
}
