//! The probe side: find publishing processes, read their blocks, write their tunables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;

use super::access::{self, Remote};
use super::block::{READ_ATTEMPTS, Snapshot};
use super::layout::{BLOCK_VERSION, HEADER_LEN, MAGIC, SEQ_OFFSET, Value};
use super::manifest::{self, BlockInfo, Discovery, ProcessInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// What [`Probe::set`] changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The field's value before the write.
    pub old: Value,
    /// The value written.
    pub new: Value,
}

/// Reads the blocks of one publishing process from outside, and writes its tunables.
///
/// Every read is a few `process_vm_readv` calls made by the probe: the target makes no system
/// call and does no I/O for it, and does not notice if the probe dies half-way.
///
/// # Whose credentials
///
/// Every read and write of the target's memory ([`Probe::read`], [`Probe::read_all`],
/// [`Probe::watch`], [`Probe::set`]) is made with the credentials of the manifest's owner, so
/// that the kernel's ptrace access check, made at the moment of the access, refuses a process
/// that has become someone else's since its manifest was loaded (by executing a setuid or
/// setgid program: same pid, same start time). A probe without capabilities, and a root probe
/// reading a root-owned process, access it directly; a probe that may switch users (root) does
/// it through `/proc/PID/mem` opened on a short-lived thread that first takes the owner's
/// filesystem uid and the process's real gid, without supplementary groups or capabilities
/// (the kernel checks them at the open, and the descriptor reaches only that address space); any other probe with capabilities, on a
/// thread that drops them. One thread serves a whole batch (a block's consistent copy, all of
/// [`Probe::read_all`], everything [`Probe::set`] does). So `CAP_SYS_PTRACE` no longer opens
/// other users' processes (run the probe as the owner, or as root), and under Yama
/// `ptrace_scope` 1 a root probe no longer passes by capability: the target must be its
/// descendant or declare it with `PR_SET_PTRACER`. `docs/PROBE.md` (section 4.1) has the
/// details.
///
/// ```no_run
/// use std::time::Duration;
/// use futures_util::StreamExt;
/// use tokio_pvm::probe::Probe;
///
/// # async fn run() -> tokio_pvm::Result<()> {
/// for process in Probe::discover().processes {
///     let probe = Probe::from_info(process);
///     for snapshot in probe.read_all()? {
///         for (field, value) in snapshot.values() {
///             println!("{} {}.{field} = {value}", probe.pid(), snapshot.block());
///         }
///     }
/// }
/// let probe = Probe::attach(4242)?;
/// let mut ticks = Box::pin(probe.watch(Duration::from_secs(1)));
/// while let Some(snapshots) = ticks.next().await {
///     println!("{:?}", snapshots?);
/// }
/// # Ok(()) }
/// ```
///
/// # Descriptors
/// A `Probe` keeps its manifest open (the one descriptor that was checked, see
/// [`Probe::set`]) and, for a root probe of another user's process, that process's memory;
/// its clones share them. A program that watches many processes needs as many descriptors:
/// raise the soft `RLIMIT_NOFILE` to the hard limit (`pvmctl` does).
#[derive(Debug, Clone)]
pub struct Probe {
    info: Arc<ProcessInfo>,
    /// The process's address space opened with its owner's credentials, kept between reads
    /// (root probes of other users' processes; see the `access` module).
    opened: Arc<access::OpenedMemory>,
}

impl Probe {
    /// Every live publishing process whose manifest this process can read (see
    /// [`search_dirs`](super::search_dirs)), with the manifests it skipped and why.
    pub fn discover() -> Discovery {
        manifest::discover_in(&manifest::search_dirs())
    }

    /// Like [`Probe::discover`], in the given directories only.
    pub fn discover_in(dirs: &[PathBuf]) -> Discovery {
        manifest::discover_in(dirs)
    }

    /// Removes stale manifests (dead process, or pid reused) that this user may remove, from
    /// the directories [`Probe::discover`] searches; returns their paths.
    pub fn clean_stale() -> Vec<PathBuf> {
        manifest::clean_stale(&manifest::search_dirs())
    }

    /// Like [`Probe::clean_stale`], in the given directories only.
    pub fn clean_stale_in(dirs: &[PathBuf]) -> Vec<PathBuf> {
        manifest::clean_stale(dirs)
    }

    /// Attaches to process `pid` through its manifest, found in the directories
    /// [`Probe::discover`] searches.
    ///
    /// Fails with [`ErrorKind::NotFound`] if no manifest names `pid` or its manifest is stale,
    /// [`ErrorKind::PermissionDenied`] if its owner does not match the process's, and
    /// [`ErrorKind::InvalidData`] if it is malformed.
    pub fn attach(pid: i32) -> Result<Probe> {
        Probe::attach_in(&manifest::search_dirs(), pid)
    }

    /// Like [`Probe::attach`], looking in the given directories only.
    ///
    /// A directory that is a symbolic link, or that its group or others may write to, is
    /// refused with [`ErrorKind::PermissionDenied`], as [`Probe::discover_in`] refuses it.
    pub fn attach_in(dirs: &[PathBuf], pid: i32) -> Result<Probe> {
        let mut first_error = None;
        for dir in dirs {
            match manifest::check_dir(dir) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            let path = dir.join(format!("{pid}.json"));
            match manifest::load(&path) {
                Ok(info) => return Ok(Probe::from_info(info)),
                Err(e) if e.kind() == ErrorKind::NotFound && !path.exists() => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "no manifest for process {pid} in {}: it does not publish, or publishes \
                     elsewhere (set {} to its directory)",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    manifest::DIR_ENV
                ),
            )
        }))
    }

    /// A probe for a process [`Probe::discover`] found.
    pub fn from_info(info: ProcessInfo) -> Probe {
        Probe {
            info: Arc::new(info),
            opened: Arc::default(),
        }
    }

    /// The process's id.
    pub fn pid(&self) -> i32 {
        self.info.pid
    }

    /// The process, as its manifest describes it.
    pub fn info(&self) -> &ProcessInfo {
        &self.info
    }

    fn block(&self, name: &str) -> Result<&BlockInfo> {
        self.info.block(name).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "process {} publishes no block {name:?} (it has: {})",
                    self.info.pid,
                    self.info
                        .blocks
                        .iter()
                        .map(|b| b.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// Runs `f`, which reads and writes the process's memory, with the credentials of the
    /// manifest's owner (see the `access` module).
    fn with_remote<R: Send>(&self, f: impl FnOnce(&Remote) -> Result<R> + Send) -> Result<R> {
        access::with_remote(self.info.pid, self.info.uid, &self.opened, f)
    }

    /// Checks that the process is still the one the manifest describes.
    fn check_alive(&self) -> Result<()> {
        match sys::process_identity(self.info.pid) {
            Ok((start, _)) if start == self.info.start_time => Ok(()),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("process {} ({}) exited", self.info.pid, self.info.program),
            )),
        }
    }

    /// A consistent snapshot of the block called `block`.
    ///
    /// Reads the sequence word, the block, and the sequence word again, each with its own
    /// `process_vm_readv` call, and keeps the copy only if the word was even and unchanged;
    /// after a bounded number of attempts it fails with [`ErrorKind::Inconsistent`] rather
    /// than spin. The header in the target's memory (magic, version, size, layout hash) must
    /// match the manifest, or the read fails with [`ErrorKind::InvalidData`].
    ///
    /// The reads run with the credentials of the manifest's owner (see [whose
    /// credentials](Probe#whose-credentials)): a process that is no longer that user's alone
    /// (it executed a setuid or setgid program) is refused with
    /// [`ErrorKind::PermissionDenied`], as is another user's process when the probe is
    /// neither that user nor root.
    pub fn read(&self, block: &str) -> Result<Snapshot> {
        let info = self.block(block)?;
        self.with_remote(|remote| self.read_block(remote, info))
    }

    fn read_block(&self, remote: &Remote, info: &BlockInfo) -> Result<Snapshot> {
        let pid = self.info.pid;
        let seq_addr = info.address + SEQ_OFFSET as u64;
        let what = format!("reading block {:?}", info.name);
        let mut data = vec![0u8; info.layout.size];
        for attempt in 0..READ_ATTEMPTS {
            let before = remote.word(seq_addr, &what)?;
            if before & 1 == 0 {
                remote.read(info.address, &mut data, &what)?;
                if remote.word(seq_addr, &what)? == before {
                    self.check_header(info, &data)?;
                    return Ok(Snapshot {
                        origin: 0,
                        block: info.name.clone(),
                        sequence: before,
                        layout: info.layout.clone(),
                        data,
                        tunable: info.tunable,
                    });
                }
            }
            if attempt > 16 {
                std::thread::yield_now();
            }
        }
        // Before blaming a writer: a sequence word that never reads even may not be one (a
        // stale or corrupt manifest pointing elsewhere; `set` would then write there). The
        // header never changes, so a copy taken while busy still shows whether this is it.
        remote.read(info.address, &mut data, &what)?;
        self.check_header(info, &data)?;
        Err(Error::new(
            ErrorKind::Inconsistent,
            format!(
                "block {:?} of process {pid} changed during each of {READ_ATTEMPTS} reads (or a \
                 writer stopped half-way): no consistent snapshot",
                info.name
            ),
        ))
    }

    fn check_header(&self, info: &BlockInfo, data: &[u8]) -> Result<()> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[i..i + 8]);
            w
        };
        let vs = word(8);
        let version = u32::from_le_bytes([vs[0], vs[1], vs[2], vs[3]]);
        let size = u32::from_le_bytes([vs[4], vs[5], vs[6], vs[7]]) as usize;
        let hash = u64::from_le_bytes(word(24));
        let problem = if word(0) != MAGIC {
            Some("no block header at that address".to_string())
        } else if version != BLOCK_VERSION {
            Some(format!("block format {version}, expected {BLOCK_VERSION}"))
        } else if size != info.layout.size || hash != info.hash {
            Some(format!(
                "the block in memory ({size} bytes, layout {hash:#x}) is not the one the \
                 manifest describes ({} bytes, layout {:#x})",
                info.layout.size, info.hash
            ))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(p) => Err(Error::new(
                ErrorKind::InvalidData,
                format!(
                    "block {:?} of process {} at {:#x}: {p}; the manifest is stale or corrupt",
                    info.name, self.info.pid, info.address
                ),
            )),
        }
    }

    /// A consistent snapshot of every block, in manifest order.
    pub fn read_all(&self) -> Result<Vec<Snapshot>> {
        self.with_remote(|remote| {
            self.info
                .blocks
                .iter()
                .map(|b| self.read_block(remote, b))
                .collect()
        })
    }

    /// Every block, read at each tick of `interval` (the first at once; intervals below 1 ms
    /// are taken as 1 ms). Poll it inside a Tokio runtime (it uses Tokio's timer).
    ///
    /// The stream yields one `Vec` of snapshots per tick. When the process exits it yields one
    /// error of kind [`ErrorKind::NotFound`] and ends; other errors (a permission problem, a
    /// corrupt block) are yielded and the stream goes on. Missed ticks are skipped, not
    /// bunched. Dropping the stream stops it; it holds nothing in the target.
    pub fn watch(&self, interval: Duration) -> impl Stream<Item = Result<Vec<Snapshot>>> + Send {
        // At least a millisecond between reads; the timer is made on the first poll, inside
        // the runtime that polls the stream.
        let period = interval.max(Duration::from_millis(1));
        let probe = self.clone();
        futures_util::stream::unfold(Some((probe, None)), move |state| async move {
            let (probe, ticker) = state?;
            let mut ticker = ticker.unwrap_or_else(|| {
                let mut t = tokio::time::interval(period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                t
            });
            ticker.tick().await;
            if let Err(e) = probe.check_alive() {
                return Some((Err(e), None));
            }
            match probe.read_all() {
                Ok(all) => Some((Ok(all), Some((probe, Some(ticker))))),
                // The process may have died during the read.
                Err(e) => match probe.check_alive() {
                    Err(gone) => Some((Err(gone), None)),
                    // ESRCH: it exited, and lingers as a zombie that still has its /proc entry.
                    Ok(()) if e.kind() == ErrorKind::NotFound => Some((Err(e), None)),
                    Ok(()) => Some((Err(e), Some((probe, Some(ticker))))),
                },
            }
        })
    }

    /// Writes `value` into field `field` of tunable block `block`; returns the old and new
    /// values.
    ///
    /// The value must have the field's type ([`FieldKind::parse`](super::FieldKind::parse)
    /// turns an operator's text into one); a block not marked tunable is refused with
    /// [`ErrorKind::InvalidInput`]. Writers are serialised by an exclusive `flock` on the
    /// process's manifest (the process takes it too when it updates a tunable block), and
    /// the write follows the seqlock protocol with separate `process_vm_writev` calls: the
    /// sequence word made odd, the field, the sequence word made even.
    ///
    /// The lock is taken on the manifest file opened and checked when the probe was
    /// attached, never on one opened again by name. With it held, `set` checks again that the
    /// file and the process belong to the manifest's uid, that the process started when the
    /// manifest says ([`ErrorKind::NotFound`] if not: it exited) and that the path still names
    /// the same file ([`ErrorKind::NotFound`]: it stopped publishing or published again; attach
    /// again). The read of the old value and the three writes then run, as one batch, with
    /// the credentials of the manifest's owner (see [whose credentials](Probe#whose-credentials)):
    /// a process that is no longer that user's alone is refused with
    /// [`ErrorKind::PermissionDenied`], and nothing is read or written.
    pub fn set(&self, block: &str, field: &str, value: Value) -> Result<Change> {
        let info = self.block(block)?;
        let pid = self.info.pid;
        if !info.tunable {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "block {block:?} of process {pid} is not tunable: the process reads it \
                     only as its own output; only blocks declared with BlockBuilder::tunable \
                     can be written"
                ),
            ));
        }
        let f = info.layout.field(field).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "block {block:?} has no field {field:?} (it has: {})",
                    info.layout
                        .fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        if !value.fits(f.kind) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{block}.{field} is {}; the value {value:?} does not fit",
                    f.kind
                ),
            ));
        }
        let bytes = value.encode(f.kind);
        let (offset, kind) = (f.offset, f.kind);
        // The manifest as it was opened and checked when it was loaded, not one opened again
        // by name: its owner may have replaced it since (with a FIFO that would block us, or
        // a symbolic link to a file that is not theirs).
        let (_lock, file_owner) = self.info.file.lock_writers()?;
        self.check_owner(file_owner)?;
        if !self.info.file.is_at(&self.info.manifest)? {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "manifest {} was removed or replaced since process {pid} was attached: the \
                     process stopped publishing or published again; attach again (nothing was \
                     written)",
                    self.info.manifest.display()
                ),
            ));
        }
        let (old, ()) = self.with_remote(|remote| {
            let old = match self.read_block(remote, info) {
                Ok(snap) => Value::decode(kind, &snap.data[offset..offset + kind.size()]),
                // A writer died half-way (it cannot be running: we hold the lock); this write
                // repairs the block, and the old value is whatever is there.
                Err(e) if e.kind() == ErrorKind::Inconsistent => {
                    let mut raw = vec![0u8; kind.size()];
                    let addr = info.address + offset as u64;
                    remote.read(addr, &mut raw, "reading the old value")?;
                    Value::decode(kind, &raw)
                }
                Err(e) => return Err(e),
            };
            let what = format!("writing block {block:?}");
            let seq_addr = info.address + SEQ_OFFSET as u64;
            let seq = remote.word(seq_addr, &what)?;
            // Odd only if a writer died half-way; it stays odd until this write completes.
            let busy = seq | 1;
            remote.write(seq_addr, &busy.to_le_bytes(), &what)?;
            remote.write(info.address + offset as u64, &bytes, &what)?;
            remote.write(seq_addr, &busy.wrapping_add(1).to_le_bytes(), &what)?;
            Ok((old, ()))
        })?;
        tracing::debug!(pid, block, field, %old, new = %value, "tunable written");
        Ok(Change { old, new: value })
    }

    /// Checks, with the writers' lock held, that the manifest file (`file_owner`, as the open
    /// file says now) and the process still belong to the uid the manifest was loaded for, and
    /// that the process is the one that started when the manifest says.
    ///
    /// This is not what keeps a write out of a process that became someone else's (the
    /// accesses themselves run with the owner's credentials, so the kernel refuses those at the
    /// moment they happen); it turns such a case into a clear error before any access.
    fn check_owner(&self, file_owner: u32) -> Result<()> {
        let (pid, uid) = (self.info.pid, self.info.uid);
        let (start, owner) = sys::process_identity(pid).map_err(|e| {
            if sys::process_gone(&e) {
                Error::with_source(
                    ErrorKind::NotFound,
                    format!("process {pid} ({}) exited", self.info.program),
                    e,
                )
            } else {
                Error::with_source(
                    ErrorKind::Io,
                    format!("checking process {pid} in /proc failed: {e}"),
                    e,
                )
            }
        })?;
        if start != self.info.start_time {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "process {pid} ({}) exited, and its pid now belongs to another process",
                    self.info.program
                ),
            ));
        }
        if file_owner != uid || owner != uid {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "process {pid} was loaded as uid {uid}'s, but now its manifest {} belongs to \
                     uid {file_owner} and the process runs as uid {owner} (it may have executed a \
                     setuid program): refused, nothing was read or written",
                    self.info.manifest.display()
                ),
            ));
        }
        Ok(())
    }
}

// The header is read as part of the block; make sure it is covered.
const _: () = assert!(HEADER_LEN == 32 && SEQ_OFFSET < HEADER_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{BlockBuilder, FieldKind, Publication};

    /// The probe's whole path against this very process: publish, discover, read, set.
    #[test]
    fn publish_read_and_set_in_one_process() {
        let dir = std::env::temp_dir().join(format!("pvm-unit-{}", std::process::id()));
        let mut b = BlockBuilder::new("stats");
        let n = b.u64("n");
        let mut stats = b.build().unwrap();
        let mut t = BlockBuilder::new("tuning").tunable();
        let limit = t.u64("limit");
        let name = t.string("name", 8);
        let tuning = t.build().unwrap();
        let publication = Publication::publish_in(&dir, &[&stats, &tuning]).unwrap();
        stats.set(n, 41);

        let found = Probe::discover_in(std::slice::from_ref(&dir));
        assert!(found.skipped.is_empty(), "{:?}", found.skipped);
        assert_eq!(found.processes.len(), 1);
        let probe =
            Probe::attach_in(std::slice::from_ref(&dir), std::process::id() as i32).unwrap();
        assert_eq!(
            probe.read("stats").unwrap().value("n"),
            Some(Value::U64(41))
        );

        let before = tuning.read().unwrap();
        let change = probe.set("tuning", "limit", Value::U64(10)).unwrap();
        assert_eq!(change.old, Value::U64(0));
        assert!(tuning.changed_since(&before));
        assert_eq!(tuning.read().unwrap().get(limit), 10);
        let text = FieldKind::Str { capacity: 8 }.parse("abc").unwrap();
        probe.set("tuning", "name", text).unwrap();
        assert_eq!(tuning.read().unwrap().get(name), "abc");

        let e = probe.set("stats", "n", Value::U64(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = probe.set("tuning", "limit", Value::I64(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = probe
            .set("tuning", "name", Value::Str("far too long".into()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert_eq!(probe.read("nope").unwrap_err().kind(), ErrorKind::NotFound);

        let path = publication.manifest_path().to_owned();
        drop(publication);
        assert!(!path.exists(), "the manifest is removed on drop");
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod hostile_input {
    use std::fs::File;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    use super::*;
    use crate::probe::{BlockBuilder, Publication};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pvm-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    /// A FIFO under a manifest's name neither blocks discovery nor is read.
    /// A field declared as a counter reaches a probe as one, through the manifest; a manifest
    /// that calls a non-`u64` field a counter is skipped with a reason.
    #[test]
    fn counters_are_declared_through_the_manifest() {
        use crate::probe::Metric;
        let dir = std::env::temp_dir().join(format!("pvm-counter-{}", std::process::id()));
        let mut b = BlockBuilder::new("traffic");
        let sent = b.counter("sent");
        b.u64("queued");
        let mut traffic = b.build().unwrap();
        let publication = Publication::publish_in(&dir, &[&traffic]).unwrap();
        traffic.set(sent, 7);
        let probe =
            Probe::attach_in(std::slice::from_ref(&dir), std::process::id() as i32).unwrap();
        let snap = probe.read("traffic").unwrap();
        let metrics: Vec<Metric> = snap.layout().fields().iter().map(|f| f.metric()).collect();
        assert_eq!(metrics, [Metric::Counter, Metric::Gauge]);
        assert_eq!(snap.value("sent"), Some(Value::U64(7)));

        let manifest = dir.join(format!("{}.json", std::process::id()));
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert_eq!(text.matches("\"metric\": \"counter\"").count(), 1, "{text}");
        std::fs::write(&manifest, text.replace("\"counter\"", "\"histogram\"")).unwrap();
        let found = Probe::discover_in(std::slice::from_ref(&dir));
        assert!(found.processes.is_empty());
        let (_, why) = &found.skipped[0];
        assert!(why.to_string().contains("histogram"), "{why}");
        drop(publication);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_named_like_a_manifest_does_not_block_discovery() {
        let d = dir("fifo");
        nix::unistd::mkfifo(
            &d.join(format!("{}.json", std::process::id())),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let started = Instant::now();
        let found = Probe::discover_in(std::slice::from_ref(&d));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(found.skipped.len(), 1);
        assert_eq!(found.skipped[0].1.kind(), ErrorKind::InvalidData);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A directory others may write into is refused whole.
    #[test]
    fn a_directory_writable_by_others_is_refused() {
        let d = dir("open");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let found = Probe::discover_in(std::slice::from_ref(&d));
        assert_eq!(found.skipped.len(), 1);
        assert_eq!(found.skipped[0].1.kind(), ErrorKind::PermissionDenied);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A block can be published again once its publication is gone; a tunable block's
    /// `try_update` never waits for a tool's lock.
    #[test]
    fn republish_and_try_update() {
        let d = dir("republish");
        let mut b = BlockBuilder::new("tuning").tunable();
        let n = b.u64("n");
        let mut block = b.build().unwrap();
        let first = Publication::publish_in(&d, &[&block]).unwrap();
        let manifest = first.manifest_path().to_owned();
        // A tool holding the writers' lock (another open file description).
        let tool = File::open(&manifest).unwrap();
        let held = crate::probe::lock::lock_exclusive(&tool).unwrap();
        let started = Instant::now();
        let err = block.try_update(|w| w.set(n, 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(block.read().unwrap().get(n), 0, "nothing was written");
        drop(held);
        block.try_update(|w| w.set(n, 2)).unwrap();
        drop(first);
        let again = Publication::publish_in(&d, &[&block]).unwrap();
        drop(again);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A zero interval is taken as 1 ms, not a panic.
    #[tokio::test]
    async fn watch_with_a_zero_interval() {
        use futures_util::StreamExt;
        let d = dir("watch");
        let mut b = BlockBuilder::new("stats");
        b.u64("n");
        let block = b.build().unwrap();
        let _p = Publication::publish_in(&d, &[&block]).unwrap();
        let probe = Probe::attach_in(std::slice::from_ref(&d), std::process::id() as i32).unwrap();
        let ticks: Vec<_> = probe.watch(Duration::ZERO).take(3).collect().await;
        assert!(ticks.iter().all(|t| t.is_ok()));
        drop(_p);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
