//! Starting, watching and reaping the child processes of one measurement, and the CPU time of
//! reaped children: shared by `examples/bench` and `benches/peers` (which includes this file
//! with `#[path]`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;

/// The hidden argument that makes the binary a child.
pub(crate) const CHILD_FLAG: &str = "--child";

/// How often a wait for a child's report also checks whether another child failed.
const POLL: Duration = Duration::from_millis(20);

/// One child process.
struct Kid {
    what: String,
    pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    status: Option<ExitStatus>,
}

/// The children of one measurement, with one deadline for all of them. Dropping the group
/// kills and reaps every child still running, so that an error or a timeout never leaves one
/// behind, and [`children_cpu`] read afterwards includes all of them.
pub(crate) struct Group {
    exe: PathBuf,
    kids: Vec<Kid>,
    deadline: Instant,
    timeout: Duration,
}

impl Group {
    /// A group whose children must all be done within `timeout` from now.
    pub(crate) fn new(exe: &Path, timeout: Duration) -> Group {
        Group {
            exe: exe.to_owned(),
            kids: Vec::new(),
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    /// Starts `exe --child ARGS...`; returns its index in the group. `what` names it in errors.
    pub(crate) fn spawn(&mut self, what: &str, args: &[String]) -> Result<usize, String> {
        let mut child = Command::new(&self.exe)
            .arg(CHILD_FLAG)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting child {what}: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        self.kids.push(Kid {
            what: what.to_owned(),
            pid,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
            status: None,
        });
        Ok(self.kids.len() - 1)
    }

    /// Starts `exe --child ROLE ARGS...`; returns its index in the group.
    #[allow(dead_code)] // each including crate uses one of the two ways to start a child
    pub(crate) fn spawn_role(&mut self, role: &str, args: &[String]) -> Result<usize, String> {
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(role.to_owned());
        all.extend_from_slice(args);
        self.spawn(role, &all)
    }

    /// Closes child `k`'s standard input.
    #[allow(dead_code)]
    pub(crate) fn close_stdin(&mut self, k: usize) {
        self.kids[k].stdin = None;
    }

    /// Closes every child's standard input: the signal for a lingering sender to exit.
    #[allow(dead_code)]
    pub(crate) fn close_all_stdin(&mut self) {
        for kid in &mut self.kids {
            kid.stdin = None;
        }
    }

    /// The next line child `k` prints. Fails if the deadline passes, if `k` exits without
    /// printing one, or if any child of the group fails meanwhile.
    pub(crate) fn line(&mut self, k: usize) -> Result<String, String> {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Err(self.timed_out(&format!("a report from {}", self.kids[k].what)));
            }
            match self.kids[k]
                .lines
                .recv_timeout((self.deadline - now).min(POLL))
            {
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Timeout) => self.check_failures()?,
                Err(RecvTimeoutError::Disconnected) => {
                    // Its standard output closed: it is exiting. Say how it ended.
                    while self.kids[k].status.is_none() && Instant::now() < self.deadline {
                        self.check_failures()?;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    return Err(match self.kids[k].status {
                        Some(_) => format!("{} without reporting", self.describe(k)),
                        None => self.timed_out(&format!("{} to exit", self.kids[k].what)),
                    });
                }
            }
        }
    }

    /// Waits until every child has exited; fails on the first one that failed, or at the
    /// deadline.
    pub(crate) fn wait_all(&mut self) -> Result<(), String> {
        loop {
            self.check_failures()?;
            if self.kids.iter().all(|kid| kid.status.is_some()) {
                return Ok(());
            }
            if Instant::now() >= self.deadline {
                return Err(self.timed_out("the children to exit"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reaps the children that have exited; an error describes the first that failed.
    fn check_failures(&mut self) -> Result<(), String> {
        for k in 0..self.kids.len() {
            let kid = &mut self.kids[k];
            if kid.status.is_none() {
                match kid.child.try_wait() {
                    Ok(Some(status)) => kid.status = Some(status),
                    Ok(None) => continue,
                    Err(e) => return Err(format!("waiting for {}: {e}", kid.what)),
                }
                if !kid.status.is_some_and(|s| s.success()) {
                    return Err(self.describe(k));
                }
            }
        }
        Ok(())
    }

    /// How child `k`, which has exited, ended, with the end of what it wrote to stderr.
    fn describe(&mut self, k: usize) -> String {
        let kid = &mut self.kids[k];
        let status = kid.status.map_or_else(
            || "is still running".to_owned(),
            |s| format!("exited ({s})"),
        );
        let stderr = kid
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        if tail.is_empty() {
            format!("child {} (pid {}) {status}", kid.what, kid.pid)
        } else {
            format!(
                "child {} (pid {}) {status}: {}",
                kid.what,
                kid.pid,
                tail.join(" / ")
            )
        }
    }

    fn timed_out(&self, what: &str) -> String {
        let running: Vec<String> = self
            .kids
            .iter()
            .filter(|kid| kid.status.is_none())
            .map(|kid| format!("{} (pid {})", kid.what, kid.pid))
            .collect();
        format!(
            "timed out after {:?} waiting for {what}; killed {}",
            self.timeout,
            if running.is_empty() {
                "nothing (all had exited)".to_owned()
            } else {
                running.join(", ")
            }
        )
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for kid in &mut self.kids {
            kid.stdin = None;
            if kid.status.is_none() {
                let _ = kid.child.kill();
                kid.status = kid.child.wait().ok();
            }
        }
    }
}

/// A name no other measurement of any run uses: `prefix`, this process's id and a counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A fresh socket path under the temporary directory, named by [`unique_name`].
#[allow(dead_code)]
pub(crate) fn socket_path(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.sock", unique_name(prefix)))
}

/// Removes a socket file when dropped (the children normally remove it themselves; this
/// covers a child that was killed).
pub(crate) struct RemoveOnDrop(pub(crate) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// User + system CPU time of all children of this process that have been waited for
/// (`getrusage(RUSAGE_CHILDREN)`).
pub(crate) fn children_cpu() -> Result<Duration, String> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| format!("getrusage(RUSAGE_CHILDREN): {e}"))?;
    let tv = |t: TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    Ok(tv(usage.user_time()) + tv(usage.system_time()))
}
