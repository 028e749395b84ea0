//! Child roles that attack a receiver: a peer that turns into a setuid-root program after the
//! handshake, and a peer whose message lives in memory that never faults in.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use nix::libc;
use tokio_pvm::Connection;

use super::raw::{RawPeer, T_DATA, T_ERROR, T_HELLO, data_body, frame, hello_body};
use super::{result, role_command};

/// Runs `role` if it is one of these; returns the exit code.
pub async fn run(role: &str, args: &[String]) -> Option<i32> {
    match role {
        "setuid_data_attack" => Some(setuid_data_attack(args)),
        "send_data_after_exec" => Some(send_data_after_exec(args)),
        "send_uffd_page" => Some(send_uffd_page(args).await),
        "hello_then_stall" => Some(hello_then_stall(args)),
        _ => None,
    }
}

/// setuid_data_attack PATH HELPER ADDR LEN (run as another uid): completes the handshake by
/// hand, hands the socket to a second process, and execs the setuid-root HELPER, keeping its
/// pid (the one the receiver knows). The second process then announces a message at ADDR,
/// inside the helper's memory, which this uid may not read.
fn setuid_data_attack(args: &[String]) -> i32 {
    let peer = RawPeer::handshake(Path::new(&args[0]));
    let me = std::process::id().to_string();
    let sock = peer.sock.as_fd().try_clone_to_owned().unwrap();
    let mut holder = role_command("send_data_after_exec", &[&me, &args[2], &args[3]]);
    // Its report is not read: the receiver's side of the test is what counts.
    holder
        .stdin(std::process::Stdio::from(sock))
        .stdout(std::process::Stdio::null());
    // Never waited for: this process is about to become the setuid program, and the holder
    // ends on its own once the receiver has answered (or with the test).
    #[allow(clippy::zombie_processes)]
    let _holder = holder.spawn().expect("spawn the socket holder");
    drop(peer);
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&args[1]).exec();
    eprintln!("exec {}: {err}", args[1]);
    1
}

/// send_data_after_exec PID ADDR LEN (stdin: the connection's socket): waits until process
/// PID runs with euid 0, then sends a DATA descriptor for LEN bytes at ADDR and reports the
/// receiver's answer.
fn send_data_after_exec(args: &[String]) -> i32 {
    let pid: i32 = args[0].parse().unwrap();
    let addr: u64 = args[1].parse().unwrap();
    let len: u64 = args[2].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while euid_of(pid) != Some(0) {
        if Instant::now() > deadline {
            result("the peer never became setuid root");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let mut sock = UnixStream::from(stdin);
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&frame(T_DATA, &data_body(0, len, &[(addr, len)], 1)))
        .unwrap();
    let mut peer = RawPeer::from_stream(sock);
    while let Some((ty, body)) = peer.recv() {
        if ty == T_ERROR {
            result(format!("error {}", String::from_utf8_lossy(&body[8..])));
            return 0;
        }
    }
    result("eof");
    0
}

/// The effective uid of process `pid`, from `/proc/PID/status`.
pub fn euid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// `struct uffdio_api` of `<linux/userfaultfd.h>`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register` of `<linux/userfaultfd.h>`.
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// LEN bytes of fresh anonymous memory registered with a userfaultfd that nobody serves: any
/// access to it, by this process or through `process_vm_readv`, sleeps until the userfaultfd
/// is closed (this process exits).
fn unanswered_memory(len: usize) -> &'static [u8] {
    // SAFETY: plain system calls on values owned here; the structs match the kernel's layout.
    unsafe {
        let uffd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK);
        assert!(
            uffd >= 0,
            "userfaultfd: {}",
            std::io::Error::last_os_error()
        );
        let uffd = uffd as libc::c_int;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        assert_eq!(libc::ioctl(uffd, UFFDIO_API, &mut api), 0, "UFFDIO_API");
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        let mut reg = UffdioRegister {
            start: addr as u64,
            len: len as u64,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        assert_eq!(
            libc::ioctl(uffd, UFFDIO_REGISTER, &mut reg),
            0,
            "UFFDIO_REGISTER: {}",
            std::io::Error::last_os_error()
        );
        // The fd stays open (never closed) and the mapping is never unmapped: 'static. No
        // byte of it is read here.
        std::slice::from_raw_parts(addr.cast::<u8>(), len)
    }
}

/// send_uffd_page PATH: connects and sends one 64 KiB message whose memory never faults in.
async fn send_uffd_page(args: &[String]) -> i32 {
    let data = unanswered_memory(64 << 10);
    let mut conn = Connection::connect(&args[0]).await.unwrap();
    result("sending");
    let outcome = conn.send(Bytes::from_static(data)).await;
    result(match outcome {
        Ok(()) => "send ok".to_owned(),
        Err(e) => format!("send error: {e}"),
    });
    // Keep the memory unanswered until the test kills this process.
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// hello_then_stall PATH N HOLD_MS: opens N connections, sends a whole HELLO on each and then
/// nothing more, holding them for HOLD_MS. Reports `opened N` at once, then how many the
/// listener refused and the first reason.
fn hello_then_stall(args: &[String]) -> i32 {
    let path = Path::new(&args[0]);
    let n: usize = args[1].parse().unwrap();
    let hold = Duration::from_millis(args[2].parse().unwrap());
    let mut peers: Vec<RawPeer> = (0..n).map(|_| RawPeer::connect(path)).collect();
    for p in &mut peers {
        p.send(T_HELLO, &hello_body(&[7; 16]));
    }
    result(format!("opened {n}"));
    std::io::stdout().flush().unwrap();
    std::thread::sleep(hold);
    let mut refused = Vec::new();
    for p in &mut peers {
        p.sock
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        if let Some((T_ERROR, body)) = p.recv() {
            refused.push(String::from_utf8_lossy(&body[8..]).into_owned());
        }
    }
    result(format!(
        "refused {} {}",
        refused.len(),
        refused.first().map_or("", String::as_str)
    ));
    0
}
