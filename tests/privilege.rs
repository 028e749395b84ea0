//! Privilege: a receiver never reads, with its own privilege, memory its peer could not read.
//!
//! The attack: a peer of another uid (allowed in with `Config::allow_any_uid`) completes the
//! handshake, hands its socket to a second process, and execs a setuid-root program: same pid,
//! same pidfd, now euid 0. The second process then announces a message inside the setuid
//! program's memory. A receiver that pulled from that peer would read root's memory for it.

mod util;

use std::time::Duration;

use futures::StreamExt;
use tokio::time::timeout;
use tokio_pvm::{Config, ErrorKind, Listener};
use util::attack::euid_of;
use util::setuid::{BUFFER_LEN, SETUID_SECRET, setuid_helper};
use util::{ChildProc, open_to_all, temp_dir};

child_entry!();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_turns_setuid_root_is_never_read() {
    if !ChildProc::can_switch_uid() {
        eprintln!("skipped: starting a peer as uid 65534 needs root");
        return;
    }
    let Some(helper) = setuid_helper() else {
        return;
    };
    let dir = temp_dir("setuid-pull");
    let path = dir.join("s.sock");
    let listener = Listener::bind_with(&path, Config::new().allow_any_uid()).unwrap();
    open_to_all(&path);
    let peer = ChildProc::spawn_with(
        "setuid_data_attack",
        &[
            path.to_str().unwrap(),
            helper.path.to_str().unwrap(),
            &helper.secret_addr.to_string(),
            &BUFFER_LEN.to_string(),
        ],
        Some(65534),
    );
    let mut conn = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("accepted in time")
        .unwrap();
    assert_eq!(conn.peer().uid().unwrap(), 65534);
    assert!(
        !conn.mode().is_pull(),
        "a peer of another uid must send inline, never be pulled from"
    );
    let outcome = timeout(Duration::from_secs(15), conn.next())
        .await
        .expect("the announced message is answered in time");
    // The scenario happened: the peer's pid now runs the setuid-root program.
    assert_eq!(
        euid_of(peer.pid()),
        Some(0),
        "the peer should have become setuid root"
    );
    match outcome {
        Some(Err(e)) => {
            assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
            assert!(e.to_string().contains("inline"), "{e}");
        }
        Some(Ok(msg)) => {
            let leaked = msg
                .windows(SETUID_SECRET.len())
                .any(|w| w == SETUID_SECRET.as_bytes());
            panic!(
                "a message of {} bytes was delivered from the setuid program's memory (secret \
                 leaked: {leaked})",
                msg.len()
            );
        }
        None => panic!("the stream ended without the protocol error"),
    }
    assert!(conn.next().await.is_none());
}
