//! Every read and write of a target's memory, with its owner's credentials.
//!
//! A manifest says which process to read and where; the file's owner is checked against the
//! process's owner when it is loaded, but a process can become someone else afterwards
//! without changing its pid or start time: it can `execve` a setuid program. So the probe does
//! not rely on a check made before the access. It makes every access with the credentials of
//! the manifest's owner, and the kernel's own ptrace access check, made at the moment of the
//! access, refuses a process that is not (or no longer) that user's alone.
//!
//! - A probe without capabilities accesses the process directly: the kernel checks its own
//!   credentials, which give nothing beyond its uid.
//! - A root probe reading a root-owned process accesses it directly too: the owner's
//!   credentials are its own.
//! - A probe that may switch users (`CAP_SETUID` and `CAP_SETGID`, as root has) opens the
//!   process's `/proc/PID/mem` on a short-lived thread that first takes the owner's
//!   filesystem uid and the process's real gid as its filesystem gid, with no supplementary
//!   groups and no capabilities; the kernel checks those at the open, and the descriptor
//!   reaches only the address space the process had then. The thread keeps our real and saved
//!   uid, so the owner can neither signal it nor change its limits.
//! - Any other probe with capabilities makes them on a thread that drops every capability.
//!
//! One thread serves a whole batch (a block's three reads, a write's reads and three writes).

use std::io;
use std::sync::Arc;

use nix::libc;

use crate::error::{Error, ErrorKind, Result};
use crate::sys::{self, ThreadCredentials};

/// How the accesses to one process are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// By the calling thread, whose credentials are no stronger than the owner's.
    Direct,
    /// On a thread with these credentials.
    Thread(ThreadCredentials),
}

/// Reads and writes one process's memory, as [`with_remote`] set up.
#[derive(Debug)]
pub(crate) struct Remote {
    pid: i32,
    /// The manifest owner's uid, whose credentials the accesses run with.
    owner: u32,
    plan: Plan,
    /// The uid the calling process runs as (real).
    me: u32,
    /// The process's address space, opened with the owner's credentials
    /// ([`Plan::Thread`] with [`ThreadCredentials::Switch`]).
    mem: Option<Arc<std::fs::File>>,
}

/// An address space opened with an owner's credentials, kept between batches by a
/// [`Probe`](super::Probe) and its clones, with the gid it was opened with.
///
/// Keeping it is sound: the kernel checked the owner's credentials at the open, and the
/// descriptor reaches only the address space the process had then; a process of that user
/// without capabilities can only become someone else by `exec`, after which the descriptor
/// reads and writes nothing. Any failed batch forgets it, so the next one opens (and is
/// checked) anew.
pub(crate) type OpenedMemory = std::sync::Mutex<Option<(Arc<std::fs::File>, u32)>>;

/// Runs `f`, which reads and writes process `pid` through the [`Remote`] it is given, with the
/// credentials of `owner` (the uid that owns the process's manifest): on a thread of its own
/// when this process's credentials are stronger than the owner's.
///
/// Fails without running `f` if the thread cannot take the owner's credentials.
pub(crate) fn with_remote<R: Send>(
    pid: i32,
    owner: u32,
    opened: &OpenedMemory,
    f: impl FnOnce(&Remote) -> Result<R> + Send,
) -> Result<R> {
    let me = nix::unistd::getuid().as_raw();
    let kept = opened
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let plan = plan(pid, owner, me, kept.as_ref().map(|(_, gid)| *gid))?;
    let mut remote = Remote {
        pid,
        owner,
        plan,
        me,
        mem: None,
    };
    match plan {
        Plan::Direct => f(&remote),
        // Only the open runs with the owner's credentials: the kernel checks them then, and
        // the descriptor reaches only the address space it was opened on.
        Plan::Thread(creds @ ThreadCredentials::Switch { gid, .. }) => {
            let mem = match kept {
                Some((mem, _)) => mem,
                None => {
                    let mem = sys::run_with_credentials(creds, || sys::open_memory(pid))
                        .map_err(|e| remote.credentials_error(e))?
                        .map_err(|e| remote.access_error(&format!("opening /proc/{pid}/mem"), e))?;
                    let mem = Arc::new(mem);
                    *opened
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((mem.clone(), gid));
                    mem
                }
            };
            remote.mem = Some(mem);
            let result = f(&remote);
            if result.is_err() {
                *opened
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            }
            result
        }
        Plan::Thread(creds) => {
            let remote = &remote;
            sys::run_with_credentials(creds, move || f(remote))
                .map_err(|e| remote.credentials_error(e))?
        }
    }
}

/// Chooses how to access process `pid`, owned by `owner`, from a process running as `me`;
/// `kept_gid` is the gid of an address space already opened for it, if any.
fn plan(pid: i32, owner: u32, me: u32, kept_gid: Option<u32>) -> Result<Plan> {
    // Unreadable: assume the worst, and take the careful path.
    let caps = sys::thread_effective_capabilities().unwrap_or(u64::MAX);
    let root = me == 0 && nix::unistd::geteuid().is_root();
    if caps == 0 || (owner == 0 && root) {
        return Ok(Plan::Direct);
    }
    if !sys::can_switch_credentials(caps) {
        return Ok(Plan::Thread(ThreadCredentials::DropCapabilities));
    }
    if let Some(gid) = kept_gid {
        return Ok(Plan::Thread(ThreadCredentials::Switch { uid: owner, gid }));
    }
    let gid = sys::process_real_gid(pid).map_err(|e| {
        if sys::process_gone(&e) {
            Error::with_source(
                ErrorKind::NotFound,
                format!("process {pid} is gone (reading /proc/{pid}/status)"),
                e,
            )
        } else {
            Error::with_source(
                ErrorKind::Io,
                format!("reading the group of process {pid} from /proc/{pid}/status: {e}"),
                e,
            )
        }
    })?;
    if !member_of(owner, gid) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "process {pid} runs with group {gid}, which its owner, uid {owner}, is not a \
                 member of (per the user database): a probe taking that group to read it would \
                 give uid {owner} access it does not have; refused (run the probe as uid \
                 {owner} and group {gid} if this is intended)"
            ),
        ));
    }
    Ok(Plan::Thread(ThreadCredentials::Switch { uid: owner, gid }))
}

/// Whether `uid` may run with group `gid`: its primary group or one of its supplementary
/// groups in the user database. The thread takes the target's gid so that the kernel can
/// compare it; without this check a user owning a process that someone else put into a group
/// would have the probe read it with that group's credentials.
fn member_of(uid: u32, gid: u32) -> bool {
    use nix::unistd::{Gid, Uid, User, getgrouplist};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() == gid {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    getgrouplist(&name, user.gid).is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

impl Remote {
    /// Copies `buf.len()` bytes of the process's memory at `addr` into `buf`.
    pub(crate) fn read(&self, addr: u64, buf: &mut [u8], what: &str) -> Result<()> {
        match &self.mem {
            Some(mem) => sys::read_memory(mem, addr, buf),
            None => sys::read_remote_at(self.pid, addr, buf),
        }
        .map_err(|e| self.access_error(what, e))
    }

    /// The little-endian word at `addr`.
    pub(crate) fn word(&self, addr: u64, what: &str) -> Result<u64> {
        let mut w = [0u8; 8];
        self.read(addr, &mut w, what)?;
        Ok(u64::from_le_bytes(w))
    }

    /// Writes `data` into the process's memory at `addr`.
    pub(crate) fn write(&self, addr: u64, data: &[u8], what: &str) -> Result<()> {
        match &self.mem {
            Some(mem) => sys::write_memory(mem, addr, data),
            None => sys::write_remote(self.pid, addr, data),
        }
        .map_err(|e| self.access_error(what, e))
    }

    /// Whether the accesses go through an address space opened with the owner's credentials
    /// (for tests).
    #[cfg(test)]
    pub(crate) fn on_owner_thread(&self) -> bool {
        self.mem.is_some()
    }

    fn access_error(&self, what: &str, e: io::Error) -> Error {
        let (pid, owner) = (self.pid, self.owner);
        if self.mem.is_some() && e.raw_os_error() == Some(libc::ESRCH) {
            // The address space the descriptor reaches is gone, the process may not be.
            return Error::with_source(
                ErrorKind::Io,
                format!(
                    "{what} of process {pid}: the process replaced its program (exec) or exited \
                     since the probe opened its memory; nothing was read or written, and the \
                     next access opens it anew, checked again"
                ),
                e,
            );
        }
        if !matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            return Error::remote_access(pid, what, e);
        }
        let why = match self.plan {
            Plan::Thread(ThreadCredentials::Switch { gid, .. }) => format!(
                "the probe reads and writes a process only with the credentials of its \
                 manifest's owner (uid {owner}, gid {gid}), and the kernel refused them: the \
                 process is not, or no longer, that user's alone (it may have executed a setuid \
                 or setgid program, changed its ids, or made itself not dumpable)"
            ),
            _ if self.me != owner => format!(
                "the process belongs to uid {owner}, and the probe reads and writes a process \
                 only with its owner's credentials: run the probe as uid {owner} or as root"
            ),
            _ => format!(
                "the process runs as uid {owner} like the probe, but the kernel refused: it must \
                 have the probe's gid as its real, effective and saved gid and be dumpable (no \
                 setuid or setgid program, no PR_SET_DUMPABLE 0)"
            ),
        };
        let yama = match sys::yama_ptrace_scope() {
            Some(1) if self.plan != Plan::Direct || owner != 0 => {
                "; with Yama ptrace_scope 1 the process must also be a descendant of the probe or \
                 declare it its ptracer (PR_SET_PTRACER), even for a root probe, which gives up \
                 its capabilities for the access"
            }
            Some(2) => {
                "; Yama ptrace_scope 2 allows only CAP_SYS_PTRACE, which the probe gives up for \
                 the access: only a root probe reading a root process works"
            }
            Some(3) => "; Yama ptrace_scope 3 forbids every access",
            _ => "",
        };
        Error::with_source(
            ErrorKind::PermissionDenied,
            format!("permission denied {what} of process {pid}: {why}{yama}"),
            e,
        )
    }

    fn credentials_error(&self, e: io::Error) -> Error {
        let kind = match e.kind() {
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        let whose = match self.plan {
            Plan::Thread(ThreadCredentials::Switch { uid, gid }) => {
                format!("switch to the manifest owner's uid {uid} and gid {gid}")
            }
            _ => "drop its capabilities".to_owned(),
        };
        Error::with_source(
            kind,
            format!(
                "the thread that accesses process {} could not {whose} ({e}), so nothing was \
                 read or written; run the probe as uid {} or as root",
                self.pid, self.owner
            ),
            e,
        )
    }
}

/// The setuid-root helper of the integration tests, built the same way here.
#[cfg(test)]
#[path = "../../tests/util/setuid.rs"]
#[allow(dead_code, unreachable_pub)]
mod setuid;

/// Where [`setuid`] builds its helper: a fresh directory every user can traverse.
#[cfg(test)]
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pvm-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    #[test]
    fn membership_comes_from_the_user_database() {
        // root's primary group, and nobody's (uid 65534, group 65534 on Debian).
        assert!(member_of(0, 0));
        assert!(member_of(65534, 65534));
        assert!(!member_of(65534, 0), "nobody is not in root's group");
        assert!(!member_of(4_000_000, 0), "no such user");
    }

    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A child killed and reaped on drop.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Waits for the helper's `ready` line.
    fn ready(child: &mut Child) {
        use std::io::BufRead;
        let mut line = String::new();
        let out = child.stdout.as_mut().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }

    fn creds() -> (u32, u32, u64) {
        let caps = sys::effective_capabilities().unwrap();
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            caps,
        )
    }

    /// A setuid-root process started by uid 65534: the thread that takes uid 65534's
    /// credentials is refused its memory (EPERM) by the kernel, while this root process may
    /// read it; the caller's own credentials are untouched afterwards.
    #[test]
    fn owner_credentials_do_not_reach_a_setuid_process() {
        let Some(helper) = setuid::setuid_helper() else {
            return;
        };
        let mut cmd = helper.command(&[]);
        cmd.uid(65534).gid(65534);
        let mut child = Running(cmd.spawn().unwrap());
        ready(&mut child.0);
        let pid = child.0.id() as i32;
        let before = creds();

        let secret = setuid::SETUID_SECRET.as_bytes();
        let mut buf = vec![0u8; secret.len()];
        // With this process's (root) credentials: allowed.
        sys::read_remote_at(pid, helper.secret_addr, &mut buf).unwrap();
        assert_eq!(buf, secret);

        // On a thread with uid 65534's: refused by the kernel.
        let mut buf = vec![0u8; secret.len()];
        let as_nobody = ThreadCredentials::Switch {
            uid: 65534,
            gid: 65534,
        };
        let result = sys::run_with_credentials(as_nobody, || {
            sys::read_remote_at(pid, helper.secret_addr, &mut buf)
        })
        .expect("the thread took uid 65534's credentials");
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert!(buf.iter().all(|&b| b == 0), "nothing was copied");

        // The same through the probe's door, for a manifest owned by 65534.
        let e = with_remote(pid, 65534, &OpenedMemory::default(), |remote| {
            assert!(remote.on_owner_thread());
            remote.read(helper.secret_addr, &mut buf, "reading the secret")
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        for w in ["uid 65534, gid 65534", "setuid", &pid.to_string()] {
            assert!(e.to_string().contains(w), "{w:?} not in: {e}");
        }
        assert!(buf.iter().all(|&b| b == 0), "nothing was copied");
        assert_eq!(creds(), before, "the caller kept its credentials");
    }

    /// The thread can read a process of the user it becomes: the refusal above is the
    /// kernel's answer to the credentials, not a thread that can read nothing. And a thread
    /// that cannot take its credentials never runs the access.
    #[test]
    fn owner_credentials_reach_the_owners_process() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: switching a thread to uid 65534 needs root");
            return;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("30").uid(65534).gid(65534).stdout(Stdio::null());
        let child = Running(cmd.spawn().unwrap());
        let pid = child.0.id() as i32;
        // The start of its first mapping, which is readable (the program's header).
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let start = maps.split('-').next().unwrap();
        let addr = u64::from_str_radix(start, 16).unwrap();
        let before = creds();

        let header = with_remote(pid, 65534, &OpenedMemory::default(), |remote| {
            assert!(remote.on_owner_thread());
            let mut buf = [0u8; 4];
            remote.read(addr, &mut buf, "reading the header")?;
            Ok(buf)
        })
        .unwrap();
        assert_eq!(&header, b"\x7fELF");
        assert_eq!(creds(), before, "the caller kept its credentials");

        let ran = AtomicBool::new(false);
        let bad = ThreadCredentials::Switch {
            uid: u32::MAX,
            gid: 65534,
        };
        let e = sys::run_with_credentials(bad, || ran.store(true, Ordering::SeqCst)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(
            !ran.load(Ordering::SeqCst),
            "the access ran without its credentials"
        );
    }

    /// The thread that acts for another user checks access with that user's filesystem ids
    /// only: its real and saved uid stay ours, so that user cannot signal it (a signal to one
    /// thread reaches the whole process) or change its limits.
    #[test]
    fn the_owner_cannot_signal_the_thread_that_acts_for_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: switching a thread to uid 65534 needs root");
            return;
        }
        let (inside_tx, inside) = std::sync::mpsc::channel();
        let (done, done_rx) = std::sync::mpsc::channel::<()>();
        let acting = std::thread::spawn(move || {
            let as_nobody = ThreadCredentials::Switch {
                uid: 65534,
                gid: 65534,
            };
            sys::run_with_credentials(as_nobody, move || {
                let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                inside_tx.send((nix::unistd::gettid(), status)).unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
        });
        let (tid, status) = inside.recv().unwrap();
        // Uid: real effective saved filesystem
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        assert_eq!(
            uids.split_whitespace().collect::<Vec<_>>(),
            ["0", "0", "0", "65534"]
        );
        let signalled = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -0 {tid}"))
            .uid(65534)
            .gid(65534)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        done.send(()).unwrap();
        acting.join().unwrap();
        assert!(
            !signalled.success(),
            "uid 65534 may signal the thread acting for it, and so this process"
        );
    }

    /// A kept address space reaches only the program it was opened on: once the process has
    /// exec'd a setuid-root program, the kept descriptor reads nothing (and is forgotten), and
    /// the next open is refused by the kernel.
    #[test]
    fn a_kept_address_space_ends_with_its_program() {
        let Some(helper) = setuid::setuid_helper() else {
            return;
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("read go; {}", helper.exec_line(&[])))
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut shell = Running(cmd.spawn().unwrap());
        let pid = shell.0.id() as i32;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let addr = u64::from_str_radix(maps.split('-').next().unwrap(), 16).unwrap();
        let kept = OpenedMemory::default();
        let header = with_remote(pid, 65534, &kept, |remote| {
            assert!(remote.on_owner_thread());
            let mut buf = [0u8; 4];
            remote.read(addr, &mut buf, "reading the header")?;
            Ok(buf)
        })
        .unwrap();
        assert_eq!(&header, b"\x7fELF");
        assert!(kept.lock().unwrap().is_some(), "the address space is kept");

        use std::io::Write;
        writeln!(shell.0.stdin.as_mut().unwrap(), "go").unwrap();
        ready(&mut shell.0);
        let secret = setuid::SETUID_SECRET.as_bytes();
        let mut buf = vec![0u8; secret.len()];
        let e = with_remote(pid, 65534, &kept, |remote| {
            remote.read(helper.secret_addr, &mut buf, "reading the secret")
        })
        .unwrap_err();
        assert!(e.to_string().contains("exec"), "{e}");
        assert!(buf.iter().all(|&b| b == 0), "nothing was copied");
        assert!(kept.lock().unwrap().is_none(), "a failed batch forgets it");
        let e = with_remote(pid, 65534, &kept, |remote| {
            remote.read(helper.secret_addr, &mut buf, "reading the secret")
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(buf.iter().all(|&b| b == 0), "nothing was copied");
    }
}
