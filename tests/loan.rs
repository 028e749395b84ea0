//! The zero-copy lane between real processes: loaned messages are read in place from the
//! sender's shared memory, released when the receiving application drops them, bounded by the
//! region, kept readable after the sender exits, and replaced by the ordinary lanes where the
//! shared memory is refused.

mod util;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_pvm::{Config, Connection, Listener};
use util::raw::{RawPeer, T_HELLO, T_READY, frame, hello_body};
use util::{ChildProc, check, pattern, temp_dir};

child_entry!(roles::run);

/// Sizes of the loaned messages: inline-sized (these come from the heap and travel inline),
/// page-sized, odd, large.
const SIZES: [usize; 6] = [1, 64, 4096, 5000, 65_536, 262_147];

/// How many of the first `count` messages are large enough for the lane (above the default
/// inline threshold of 256 bytes).
fn lane_sized(count: u64) -> u64 {
    (0..count)
        .filter(|&s| SIZES[s as usize % SIZES.len()] > 256)
        .count() as u64
}

/// The inode of the loan region file mapped at `addr` in this process, if any.
fn loan_mapping(addr: usize) -> Option<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.contains("memfd:tokio-pvm-loans"))
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = fields[0].split_once('-').unwrap();
            let a = usize::from_str_radix(a, 16).unwrap();
            let b = usize::from_str_radix(b, 16).unwrap();
            (a..b).contains(&addr).then(|| fields[4].parse().unwrap())
        })
}

/// Whether `addr` lies in a mapping of a loan region's file in this process.
fn in_loan_mapping(addr: usize) -> bool {
    loan_mapping(addr).is_some()
}

/// Whether the loan region file with `inode` is mapped in this process.
fn inode_mapped(inode: u64) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|l| {
            l.contains("memfd:tokio-pvm-loans")
                && l.split_whitespace().nth(4) == Some(&inode.to_string())
        })
}

fn config(region: usize) -> Config {
    Config::new().loan_region(region)
}

async fn accept(listener: &Listener) -> Connection {
    timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("accept timed out")
        .expect("accept failed")
}

/// Sends `count` loaned messages of the sizes in [`SIZES`] with pattern content; returns how
/// many loans were shared.
async fn send_loaned(conn: &mut Connection, count: u64) -> u64 {
    let mut shared = 0;
    for seq in 0..count {
        let len = SIZES[seq as usize % SIZES.len()];
        let mut buf = conn.loan(len);
        shared += u64::from(buf.is_shared());
        buf.copy_from_slice(&pattern(seq, len));
        conn.feed(buf.freeze()).await.unwrap();
    }
    conn.flush().await.unwrap();
    shared
}

/// Reads messages until the stream ends, checking each against the pattern; returns how
/// many arrived and how many were read in place from a loan region.
async fn receive_checked(conn: &mut Connection) -> (u64, u64) {
    let (mut seq, mut in_place) = (0u64, 0u64);
    while let Some(m) = timeout(Duration::from_secs(20), conn.next()).await.unwrap() {
        let m = m.unwrap();
        let len = SIZES[seq as usize % SIZES.len()];
        assert!(check(seq, len, &m), "message {seq} ({len} bytes) corrupted");
        in_place += u64::from(in_loan_mapping(m.as_ptr() as usize));
        seq += 1;
    }
    (seq, in_place)
}

async fn both_directions(flavor: &str) {
    let dir = temp_dir(&format!("loan-both-{flavor}"));
    let path = dir.join("s");
    // Twice the window: room for what is in flight and what the receiver buffers.
    let listener = Listener::bind_with(&path, config(32 << 20)).unwrap();
    let child = ChildProc::spawn("lend", &[path.to_str().unwrap(), "600", flavor, "33554432"]);
    let mut conn = accept(&listener).await;
    assert!(conn.zero_copy(), "both sides set a loan region");
    let (received, in_place) = receive_checked(&mut conn).await;
    assert_eq!(received, 600);
    assert_eq!(
        in_place, 400,
        "every loaned message above 256 bytes is read in place"
    );
    let shared = send_loaned(&mut conn, 600).await;
    assert_eq!(
        shared, 400,
        "a region of two windows has room for every loan"
    );
    conn.close().await.unwrap();
    let (ok, out) = child.finish(Duration::from_secs(20));
    assert!(ok, "{out:?}");
    assert_eq!(
        out,
        ["zero_copy true", "shared 400", "received 600 in_place 400"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaned_messages_cross_intact_and_in_place_both_ways() {
    both_directions("multi").await;
}

#[tokio::test(flavor = "current_thread")]
async fn loaned_messages_cross_on_a_current_thread_runtime() {
    both_directions("current").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_bounds_loans_and_drops_give_them_back() {
    let dir = temp_dir("loan-release");
    let path = dir.join("s");
    let listener = Listener::bind_with(&path, config(1 << 20)).unwrap();
    let child = ChildProc::spawn("fill_region", &[path.to_str().unwrap()]);
    let mut conn = accept(&listener).await;
    // The child fills its 1 MiB region with four 256 KiB loans and sends them.
    let mut held = Vec::new();
    for seq in 0..4 {
        let m = timeout(Duration::from_secs(10), conn.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(check(seq, 256 << 10, &m));
        assert!(in_loan_mapping(m.as_ptr() as usize));
        held.push(m);
    }
    // While they are held, the child's next loan comes from the heap (and still arrives).
    let m = conn.next().await.unwrap().unwrap();
    assert!(check(4, 256 << 10, &m));
    assert!(
        !in_loan_mapping(m.as_ptr() as usize),
        "a heap loan is pulled"
    );
    // Dropping them lets the child lend that memory again.
    drop(held);
    conn.send(bytes::Bytes::from_static(b"dropped"))
        .await
        .unwrap();
    let m = conn.next().await.unwrap().unwrap();
    assert!(check(5, 256 << 10, &m));
    assert!(
        in_loan_mapping(m.as_ptr() as usize),
        "released memory is lent again"
    );
    assert!(conn.next().await.is_none());
    let (ok, out) = child.finish(Duration::from_secs(20));
    assert!(ok, "{out:?}");
    assert_eq!(
        out,
        [
            "shared 4",
            "while held: shared false",
            "after release: shared true"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaned_messages_stay_readable_after_the_sender_exits() {
    let dir = temp_dir("loan-exit");
    let path = dir.join("s");
    let listener = Listener::bind_with(&path, config(8 << 20)).unwrap();
    let child = ChildProc::spawn("lend_and_exit", &[path.to_str().unwrap(), "12"]);
    let mut conn = accept(&listener).await;
    let mut held = Vec::new();
    while let Some(m) = timeout(Duration::from_secs(10), conn.next()).await.unwrap() {
        held.push(m.unwrap());
    }
    let (ok, _) = child.finish(Duration::from_secs(10));
    assert!(ok);
    // The sender process is gone; its region lives on in this process's mapping.
    assert_eq!(held.len(), 12);
    for (seq, m) in held.iter().enumerate() {
        let len = SIZES[seq % SIZES.len()];
        assert!(check(seq as u64, len, m), "message {seq} intact after exit");
        assert_eq!(in_loan_mapping(m.as_ptr() as usize), len > 256);
    }
    let inode = loan_mapping(held[2].as_ptr() as usize).unwrap();
    drop(held);
    drop(conn);
    // The connection's driver lets go of the region as it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while inode_mapped(inode) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !inode_mapped(inode),
        "the mapping goes with the last message and the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_vanishes_leaves_its_delivered_loans_readable() {
    let dir = temp_dir("loan-vanish");
    let path = dir.join("s");
    let listener = Listener::bind_with(&path, config(8 << 20)).unwrap();
    let child = ChildProc::spawn("lend_and_vanish", &[path.to_str().unwrap(), "12"]);
    let mut conn = accept(&listener).await;
    let mut held = Vec::new();
    for _ in 0..12 {
        let m = timeout(Duration::from_secs(10), conn.next()).await.unwrap();
        held.push(m.unwrap().unwrap());
    }
    let (ok, _) = child.finish(Duration::from_secs(10));
    assert!(ok);
    // The stream ends (the process is gone), and what was delivered stays intact.
    let end = timeout(Duration::from_secs(5), conn.next())
        .await
        .expect("the stream ends when the sender vanishes");
    assert!(!matches!(end, Some(Ok(_))), "nothing more arrives: {end:?}");
    for (seq, m) in held.iter().enumerate() {
        let len = SIZES[seq % SIZES.len()];
        assert!(
            check(seq as u64, len, m),
            "message {seq} intact after the sender vanished"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_peer_opting_in_loans_are_ordinary_messages() {
    let dir = temp_dir("loan-off");
    let path = dir.join("s");
    let listener = Listener::bind_with(&path, config(8 << 20)).unwrap();
    // The child sets no loan region.
    let child = ChildProc::spawn("lend", &[path.to_str().unwrap(), "60", "multi", "0"]);
    let mut conn = accept(&listener).await;
    assert!(!conn.zero_copy());
    let (received, in_place) = receive_checked(&mut conn).await;
    assert_eq!((received, in_place), (60, 0));
    let shared = send_loaned(&mut conn, 60).await;
    assert_eq!(shared, 0, "no lane: every loan comes from the heap");
    conn.close().await.unwrap();
    let (ok, out) = child.finish(Duration::from_secs(20));
    assert!(ok, "{out:?}");
    assert_eq!(
        out,
        ["zero_copy false", "shared 0", "received 60 in_place 0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_that_cannot_map_the_peers_region_falls_back_for_that_direction() {
    let dir = temp_dir("loan-refused");
    let path = dir.join("s");
    // The child's address-space limit has room for its own region but not for this one too:
    // its mmap of this side's region fails.
    let listener = Listener::bind_with(&path, config(4 << 30)).unwrap();
    let child = ChildProc::spawn("lend_limited", &[path.to_str().unwrap(), "60"]);
    let mut conn = accept(&listener).await;
    assert!(
        !conn.zero_copy(),
        "the child could not map this side's region"
    );
    // The child's own (small) region works: its direction is zero-copy.
    let (received, in_place) = receive_checked(&mut conn).await;
    assert_eq!((received, in_place), (60, lane_sized(60)));
    let shared = send_loaned(&mut conn, 60).await;
    assert_eq!(shared, 0);
    conn.close().await.unwrap();
    let (ok, out) = child.finish(Duration::from_secs(20));
    assert!(ok, "{out:?}");
    assert_eq!(
        out,
        ["zero_copy true", "shared 40", "received 60 in_place 0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_region_larger_than_this_sides_own_is_not_mapped() {
    let dir = temp_dir("loan-larger");
    let path = dir.join("s");
    let listener = Listener::bind_with(&path, config(1 << 20)).unwrap();
    // The child lends 32 MiB: more than this side maps. It maps this side's 1 MiB.
    let child = ChildProc::spawn("lend", &[path.to_str().unwrap(), "60", "multi", "33554432"]);
    let mut conn = accept(&listener).await;
    assert!(
        conn.zero_copy(),
        "the child mapped this side's smaller region"
    );
    let (received, in_place) = receive_checked(&mut conn).await;
    assert_eq!(
        (received, in_place),
        (60, 0),
        "the child's loans were pulled"
    );
    send_loaned(&mut conn, 60).await;
    conn.close().await.unwrap();
    let (ok, out) = child.finish(Duration::from_secs(20));
    assert!(ok, "{out:?}");
    assert_eq!(out[..2], ["zero_copy false", "shared 0"]);
    assert!(out[2].starts_with("received 60 in_place "), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_gives_back_what_it_had_not_read() {
    const LEN: usize = 256 << 10;
    let (mut a, b) = Connection::pair_with(config(1 << 20)).await.unwrap();
    assert!(a.zero_copy());
    for seq in 0..4 {
        let mut buf = a.loan(LEN);
        assert!(buf.is_shared());
        buf.copy_from_slice(&pattern(seq, LEN));
        a.send(buf.freeze()).await.unwrap();
    }
    // The peer's transport holds all four (acknowledged, unread): the region is full.
    assert!(!a.loan(LEN).is_shared());
    let (_b_tx, b_rx) = b.split();
    drop(b_rx);
    // Its discarded messages are released: the region is lent again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !a.loan(LEN).is_shared() {
        assert!(std::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // And sends now fail as to a closed socket.
    let err = a
        .send(bytes::Bytes::from_static(b"late"))
        .await
        .unwrap_err();
    assert!(err.is_peer_gone(), "{err}");
}

// ----- a hostile lender, speaking the wire protocol by hand ---------------------------------

const T_REGION: u8 = 10;
const T_SHARED: u8 = 11;
const T_RELEASE: u8 = 12;

/// Connects to `path` as a raw peer that announces a loan region and passes it with its REGION
/// frame: a memfd of `size` bytes holding `content` at offset 0, sealed as the protocol asks or
/// not sealed at all. Returns the peer (handshake done) and whether the listener mapped the
/// region (the SHARED flag of its READY).
fn raw_lender(path: &std::path::Path, size: u64, sealed: bool, content: &[u8]) -> (RawPeer, bool) {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let fd = memfd_create(c"tokio-pvm-loans", MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    let file = std::fs::File::from(fd);
    file.write_all_at(content, 0).unwrap();
    if sealed {
        use nix::fcntl::{FcntlArg, SealFlag, fcntl};
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
        )
        .unwrap();
    }
    let mut peer = RawPeer::connect(path);
    let mut hello = hello_body(b"0123456789abcdef");
    hello[64..72].copy_from_slice(&size.to_le_bytes());
    peer.send(T_HELLO, &hello);
    let (ty, theirs) = peer.recv().expect("the listener's HELLO");
    assert_eq!(ty, T_HELLO);
    assert_ne!(u64::from_le_bytes(theirs[64..72].try_into().unwrap()), 0);
    // Our REGION, with the file attached.
    let mut body = size.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 8]);
    let bytes = frame(T_REGION, &body);
    let fds = [file.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        peer.sock.as_raw_fd(),
        &[std::io::IoSlice::new(&bytes)],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    // The listener's REGION (its descriptor is dropped by the kernel: plain reads), READY.
    let (ty, _) = peer.recv().expect("the listener's REGION");
    assert_eq!(ty, T_REGION);
    let (ty, ready) = peer.recv().expect("the listener's READY");
    assert_eq!(ty, T_READY);
    peer.send(T_READY, &[0u8; 8]);
    let mapped = u32::from_le_bytes(ready[..4].try_into().unwrap()) & 2 != 0;
    (peer, mapped)
}

fn shared_body(seq: u64, offset: u64, len: u64) -> Vec<u8> {
    [seq, offset, len]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Runs `peer_side` on a thread while this side accepts; returns what the accepted
/// connection's stream produced first.
async fn against_raw(
    name: &str,
    peer_side: impl FnOnce(&std::path::Path) -> Option<String> + Send + 'static,
) -> (
    Option<tokio_pvm::Result<bytes::Bytes>>,
    Option<String>,
    Connection,
) {
    let dir = temp_dir(name);
    let path = dir.join("s");
    let listener = Listener::bind_with(&path, config(1 << 20)).unwrap();
    let peer = std::thread::spawn(move || peer_side(&path));
    let mut conn = accept(&listener).await;
    let first = timeout(Duration::from_secs(5), conn.next()).await.unwrap();
    let said = peer.join().unwrap();
    (first, said, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsealed_region_is_not_mapped_and_shared_frames_then_end_the_connection() {
    let (first, said, conn) = against_raw("loan-unsealed", |path| {
        let (mut peer, mapped) = raw_lender(path, 1 << 16, false, b"hello");
        assert!(
            !mapped,
            "a region that can shrink under the mapping is refused"
        );
        peer.send(T_SHARED, &shared_body(0, 0, 5));
        peer.error_reason()
    })
    .await;
    let err = first.unwrap().unwrap_err();
    assert_eq!(err.kind(), tokio_pvm::ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("no loan region"), "{err}");
    assert!(said.unwrap().contains("no loan region"));
    assert!(!conn.zero_copy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_frame_outside_the_region_ends_the_connection() {
    let (first, said, _conn) = against_raw("loan-bounds", |path| {
        let (mut peer, mapped) = raw_lender(path, 1 << 16, true, b"hello");
        assert!(mapped);
        peer.send(T_SHARED, &shared_body(0, (1 << 16) - 2, 5));
        peer.error_reason()
    })
    .await;
    let err = first.unwrap().unwrap_err();
    assert_eq!(err.kind(), tokio_pvm::ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(said.unwrap().contains("outside"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_message_is_read_in_place_and_released_on_the_wire() {
    let dir = temp_dir("loan-wire");
    let path = dir.join("s");
    let listener = Listener::bind_with(&path, config(1 << 20)).unwrap();
    let peer = std::thread::spawn(move || {
        let content = [b'x'; 4096];
        let (mut peer, mapped) = raw_lender(&path, 1 << 16, true, &content);
        assert!(mapped);
        peer.send(T_SHARED, &shared_body(0, 64, 1000));
        // An ACK, then a RELEASE of offset 64 once the application dropped the message.
        let mut seen = Vec::new();
        while let Some((ty, body)) = peer.recv() {
            seen.push(ty);
            if ty == T_RELEASE {
                assert_eq!(body[..8], [1, 0, 0, 0, 0, 0, 0, 0], "one offset");
                assert_eq!(u64::from_le_bytes(body[8..16].try_into().unwrap()), 64);
                // Releasing what it was never lent ends the connection on the other side.
                let mut bogus = vec![1, 0, 0, 0, 0, 0, 0, 0];
                bogus.extend_from_slice(&128u64.to_le_bytes());
                peer.send(T_RELEASE, &bogus);
                return format!("{seen:?} {}", peer.error_reason().unwrap_or_default());
            }
        }
        format!("no RELEASE: {seen:?}")
    });
    let mut conn = accept(&listener).await;
    let msg = timeout(Duration::from_secs(5), conn.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&msg[..], &[b'x'; 1000][..]);
    assert!(in_loan_mapping(msg.as_ptr() as usize), "read in place");
    drop(msg);
    // The release goes out when the connection next works: here, this read.
    let end = timeout(Duration::from_secs(5), conn.next()).await.unwrap();
    let said = tokio::task::spawn_blocking(move || peer.join().unwrap())
        .await
        .unwrap();
    assert!(said.contains("does not hold"), "{said}");
    let err = end.unwrap().unwrap_err();
    assert!(err.to_string().contains("does not hold"), "{err}");
}

mod roles {
    use super::*;

    fn result(line: impl std::fmt::Display) {
        println!("RESULT {line}");
    }

    pub(crate) fn run(role: &str, args: &[String]) -> Option<i32> {
        let flavor = args.get(2).map_or("multi", String::as_str);
        let rt = match flavor {
            "current" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        let path = std::path::PathBuf::from(&args[0]);
        let count: u64 = args.get(1).map_or(0, |c| c.parse().unwrap());
        match role {
            // lend PATH COUNT FLAVOR [REGION]: send COUNT loaned messages, then receive the
            // parent's until it closes.
            "lend" => {
                let region = args.get(3).map_or(8 << 20, |r| r.parse().unwrap());
                rt.block_on(lend(&path, count, config(region)));
            }
            // lend_limited PATH COUNT: as `lend`, under an address-space limit that the
            // parent's region does not fit into.
            "lend_limited" => {
                // Room for what the process uses now, its own 4 GiB region and 2 GiB more
                // (threads, allocator arenas), but not for the parent's 4 GiB region too.
                let status = std::fs::read_to_string("/proc/self/status").unwrap();
                let vm_kb: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmSize:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap();
                let limit = (vm_kb << 10) + (6 << 30);
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_AS,
                    limit,
                    limit,
                )
                .unwrap();
                rt.block_on(lend(&path, count, config(4 << 30)));
            }
            "fill_region" => rt.block_on(fill_region(&path)),
            // lend_and_vanish PATH COUNT: send COUNT loaned messages (flushed: the parent's
            // transport has them), then end the process without closing anything, as a
            // crash does.
            "lend_and_vanish" => rt.block_on(async {
                let mut conn = Connection::connect_with(&path, config(8 << 20))
                    .await
                    .unwrap();
                send_loaned(&mut conn, count).await;
                std::process::exit(0);
            }),
            "lend_and_exit" => rt.block_on(async {
                let mut conn = Connection::connect_with(&path, config(8 << 20))
                    .await
                    .unwrap();
                send_loaned(&mut conn, count).await;
                conn.close().await.unwrap();
            }),
            _ => return None,
        }
        Some(0)
    }

    async fn lend(path: &std::path::Path, count: u64, config: Config) {
        let mut conn = Connection::connect_with(path, config).await.unwrap();
        result(format!("zero_copy {}", conn.zero_copy()));
        result(format!("shared {}", send_loaned(&mut conn, count).await));
        // Close the sending side (the parent reads to its end), then read the parent's.
        conn.close().await.unwrap();
        let (received, in_place) = receive_checked(&mut conn).await;
        result(format!("received {received} in_place {in_place}"));
    }

    async fn fill_region(path: &std::path::Path) {
        const LEN: usize = 256 << 10;
        let mut conn = Connection::connect_with(path, config(1 << 20))
            .await
            .unwrap();
        let send = |seq: u64, conn: &Connection| {
            let mut buf = conn.loan(LEN);
            buf.copy_from_slice(&pattern(seq, LEN));
            buf
        };
        let mut shared = 0;
        for seq in 0..4 {
            let buf = send(seq, &conn);
            shared += u64::from(buf.is_shared());
            conn.send(buf.freeze()).await.unwrap();
        }
        result(format!("shared {shared}"));
        let buf = send(4, &conn);
        result(format!("while held: shared {}", buf.is_shared()));
        conn.send(buf.freeze()).await.unwrap();
        // The parent says when it dropped the four.
        let cue = conn.next().await.unwrap().unwrap();
        assert_eq!(&cue[..], b"dropped");
        let mut buf = send(5, &conn);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !buf.is_shared() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            buf = send(5, &conn);
        }
        result(format!("after release: shared {}", buf.is_shared()));
        conn.send(buf.freeze()).await.unwrap();
        conn.close().await.unwrap();
    }
}
