//! Manifests: where a process says what it publishes, and how a probe finds them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::block::{Block, BlockMemory};
use super::layout::{BLOCK_VERSION, FieldInfo, FieldKind, Layout, MAX_FIELDS, Metric, check_name};
use super::lock::lock_exclusive;
use crate::error::{Error, ErrorKind, Result};
use crate::sys;

/// Version of the manifest format.
const FORMAT: u32 = 1;
/// Largest manifest a reader accepts.
const MAX_MANIFEST: u64 = 1 << 20;
/// Most blocks in one manifest.
pub const MAX_BLOCKS: usize = 64;
/// The environment variable that overrides where manifests live.
pub const DIR_ENV: &str = "TOKIO_PVM_DIR";

#[derive(Debug, Serialize, Deserialize)]
struct ManifestFile {
    format: u32,
    pid: i32,
    start_time: u64,
    uid: u32,
    program: String,
    blocks: Vec<BlockEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BlockEntry {
    name: String,
    address: u64,
    size: u64,
    version: u32,
    layout_hash: u64,
    tunable: bool,
    fields: Vec<FieldEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FieldEntry {
    name: String,
    kind: String,
    offset: u64,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capacity: Option<u64>,
    /// `"counter"` for a counter; absent for a gauge (and in manifests older than counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric: Option<String>,
}

/// The directory this process publishes into: `$TOKIO_PVM_DIR`, else
/// `$XDG_RUNTIME_DIR/tokio-pvm`, else `/tmp/tokio-pvm-<uid>`.
pub fn publish_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("tokio-pvm");
    }
    PathBuf::from(format!("/tmp/tokio-pvm-{}", nix::unistd::geteuid()))
}

/// The directories a probe searches: `$TOKIO_PVM_DIR` alone if it is set; otherwise this
/// user's directory (as [`publish_dir`]) and every other user's that exists
/// (`/run/user/*/tokio-pvm`, `/tmp/tokio-pvm-<uid>`), which only a privileged probe can read.
pub fn search_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![dir.into()];
    }
    let mut dirs = vec![publish_dir()];
    let mut add = |d: PathBuf| {
        if !dirs.contains(&d) && d.is_dir() {
            dirs.push(d);
        }
    };
    if let Ok(users) = fs::read_dir("/run/user") {
        for u in users.flatten() {
            add(u.path().join("tokio-pvm"));
        }
    }
    if let Ok(tmp) = fs::read_dir("/tmp") {
        for e in tmp.flatten() {
            // Only `tokio-pvm-<uid>` directories owned by that uid: anyone can create a
            // directory in /tmp under any name.
            let name = e.file_name();
            let named_uid = name
                .to_str()
                .and_then(|n| n.strip_prefix("tokio-pvm-"))
                .filter(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|uid| uid.parse::<u32>().ok());
            let owned = named_uid.is_some_and(|uid| {
                fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir() && m.uid() == uid)
            });
            if owned {
                add(e.path());
            }
        }
    }
    dirs
}

/// Creates `dir` (mode 0700) if needed and checks that it belongs to this user and that no one
/// else may write into it.
fn prepare_dir(dir: &Path) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        Error::with_source(ErrorKind::Io, format!("{what} {}: {e}", dir.display()), e)
    };
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io("creating the manifest directory", e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| io("checking", e))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "the manifest directory {} is not a directory owned by uid {me} and writable \
                 only by it; remove it or point {DIR_ENV} at a directory of your own",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// A set of published blocks: while it lives, a manifest in [`publish_dir`] tells probes
/// where the blocks are. Dropping it removes the manifest.
///
/// ```
/// use tokio_pvm::probe::{BlockBuilder, Publication};
///
/// # let dir = std::env::temp_dir().join(format!("pvm-doc-{}", std::process::id()));
/// let mut b = BlockBuilder::new("stats");
/// let players = b.u64("players");
/// let mut stats = b.build()?;
/// let published = Publication::publish_in(&dir, &[&stats])?;
/// stats.set(players, 3); // a plain memory write: probes see it on their next read
/// drop(published); // the manifest is gone
/// # Ok::<(), tokio_pvm::Error>(())
/// ```
#[derive(Debug)]
pub struct Publication {
    path: PathBuf,
    /// Kept open: in-process writes to tunable blocks lock it.
    file: Arc<ManifestHandle>,
    _blocks: Vec<Arc<BlockMemory>>,
}

#[derive(Debug)]
struct ManifestHandle {
    dev: u64,
    ino: u64,
}

impl Publication {
    /// Publishes `blocks` in [`publish_dir`].
    ///
    /// Fails with [`ErrorKind::InvalidInput`] if a block is already published, two blocks
    /// share a name or there are more than [`MAX_BLOCKS`]; with
    /// [`ErrorKind::PermissionDenied`] if the directory is not this user's or others may write
    /// to it; and with an I/O error naming the path if the manifest cannot be written.
    pub fn publish(blocks: &[&Block]) -> Result<Publication> {
        Publication::publish_in(&publish_dir(), blocks)
    }

    /// Publishes `blocks` with the manifest in `dir` (created with mode 0700 if needed).
    pub fn publish_in(dir: &Path, blocks: &[&Block]) -> Result<Publication> {
        if blocks.len() > MAX_BLOCKS {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{} blocks, more than {MAX_BLOCKS}", blocks.len()),
            ));
        }
        for (i, b) in blocks.iter().enumerate() {
            if blocks[..i].iter().any(|o| o.name() == b.name()) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("two blocks are called {:?}", b.name()),
                ));
            }
            if b.inner
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
            {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("block {:?} is already published", b.name()),
                ));
            }
        }
        prepare_dir(dir)?;
        let pid = std::process::id() as i32;
        let (start_time, uid) =
            sys::process_identity(pid).map_err(|e| Error::io("reading /proc/self/stat", e))?;
        let manifest = ManifestFile {
            format: FORMAT,
            pid,
            start_time,
            uid,
            program: program_name(),
            blocks: blocks.iter().map(|b| entry(&b.inner)).collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::new(ErrorKind::Io, format!("encoding the manifest: {e}")))?;
        let path = dir.join(format!("{pid}.json"));
        let tmp = dir.join(format!(".{pid}.json.tmp"));
        let io = |what: &str, p: &Path, e: std::io::Error| {
            Error::with_source(ErrorKind::Io, format!("{what} {}: {e}", p.display()), e)
        };
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("creating", &tmp, e))?;
        f.write_all(&json).map_err(|e| io("writing", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| io("renaming the manifest to", &path, e))?;
        let meta = fs::metadata(&path).map_err(|e| io("checking", &path, e))?;
        for b in blocks {
            let file = File::open(&path).map_err(|e| io("opening", &path, e))?;
            *b.inner.lock.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
        }
        tracing::debug!(path = %path.display(), blocks = blocks.len(), "published");
        Ok(Publication {
            path,
            file: Arc::new(ManifestHandle {
                dev: meta.dev(),
                ino: meta.ino(),
            }),
            _blocks: blocks.iter().map(|b| b.inner.clone()).collect(),
        })
    }

    /// Where the manifest is.
    pub fn manifest_path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        // The blocks may be published again.
        for b in &self._blocks {
            *b.lock.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        if let Ok(meta) = fs::metadata(&self.path)
            && meta.dev() == self.file.dev
            && meta.ino() == self.file.ino
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            fs::read_to_string("/proc/self/comm")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default()
}

fn entry(b: &BlockMemory) -> BlockEntry {
    BlockEntry {
        name: b.name.to_string(),
        address: b.address(),
        size: b.layout.size as u64,
        version: BLOCK_VERSION,
        layout_hash: b.layout.hash(),
        tunable: b.tunable,
        fields: b
            .layout
            .fields
            .iter()
            .map(|f| FieldEntry {
                name: f.name.clone(),
                kind: f.kind.name().to_owned(),
                offset: f.offset as u64,
                size: f.size() as u64,
                capacity: match f.kind {
                    FieldKind::Str { capacity } => Some(capacity as u64),
                    _ => None,
                },
                metric: match f.metric {
                    Metric::Counter => Some("counter".to_owned()),
                    _ => None,
                },
            })
            .collect(),
    }
}

/// A publishing process, as its manifest describes it.
///
/// It keeps the manifest file it was read from open (one descriptor, shared by its clones):
/// [`Probe::set`](super::Probe::set) locks that very file rather than whatever the path names
/// by then.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub(crate) pid: i32,
    pub(crate) start_time: u64,
    pub(crate) uid: u32,
    pub(crate) program: String,
    pub(crate) blocks: Vec<BlockInfo>,
    pub(crate) manifest: PathBuf,
    /// The manifest as it was opened and checked: tools lock this very file, never one
    /// opened again by name (which its owner may have replaced since).
    pub(crate) file: Arc<CheckedManifest>,
}

/// The open manifest a [`ProcessInfo`] was read from.
#[derive(Debug)]
pub(crate) struct CheckedManifest {
    file: File,
    /// Serialises this process's writers that share `file`: an `flock` does not exclude
    /// another holder of the same open file.
    writers: std::sync::Mutex<()>,
}

impl CheckedManifest {
    /// Takes the writers' lock on the manifest: first among this process's users of the same
    /// open file, then (`flock`) among processes. Returns the guards and the file's owner as
    /// the open file says now.
    pub(crate) fn lock_writers(&self) -> Result<(WritersLock<'_>, u32)> {
        let local = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let flock = lock_exclusive(&self.file)?;
        let owner = self
            .file
            .metadata()
            .map_err(|e| Error::io("checking the locked manifest", e))?
            .uid();
        Ok((
            WritersLock {
                _flock: flock,
                _local: local,
            },
            owner,
        ))
    }

    /// Whether `path` still names this file (looked at without opening or following it).
    pub(crate) fn is_at(&self, path: &Path) -> Result<bool> {
        let here = self
            .file
            .metadata()
            .map_err(|e| Error::io("checking the manifest", e))?;
        match fs::symlink_metadata(path) {
            Ok(there) => Ok(there.dev() == here.dev() && there.ino() == here.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::with_source(
                ErrorKind::Io,
                format!("checking manifest {}: {e}", path.display()),
                e,
            )),
        }
    }
}

/// The writers' lock on a manifest, released when dropped.
#[derive(Debug)]
pub(crate) struct WritersLock<'a> {
    _flock: sys::FileLock<'a>,
    _local: std::sync::MutexGuard<'a, ()>,
}

impl ProcessInfo {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The program's name (its executable's file name).
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The user the process runs as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// When the process started, in clock ticks since boot (`/proc/PID/stat` field 22).
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// How long the process has been running.
    pub fn uptime(&self) -> Option<Duration> {
        let ticks = sys::clock_ticks_per_second()?;
        let since_boot = sys::system_uptime()?;
        let started = Duration::from_secs_f64(self.start_time as f64 / ticks as f64);
        since_boot.checked_sub(started)
    }

    /// The blocks it publishes.
    pub fn blocks(&self) -> &[BlockInfo] {
        &self.blocks
    }

    /// The block called `name`.
    pub fn block(&self, name: &str) -> Option<&BlockInfo> {
        self.blocks.iter().find(|b| &*b.name == name)
    }

    /// The manifest the description came from.
    pub fn manifest(&self) -> &Path {
        &self.manifest
    }
}

/// A published block, as a manifest describes it.
#[derive(Debug, Clone)]
pub struct BlockInfo {
    pub(crate) name: Arc<str>,
    pub(crate) address: u64,
    pub(crate) tunable: bool,
    pub(crate) hash: u64,
    pub(crate) layout: Arc<Layout>,
}

impl BlockInfo {
    /// The block's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the block is in the target's memory.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The block's size in bytes, header included.
    pub fn size(&self) -> usize {
        self.layout.size
    }

    /// Whether tools may write it.
    pub fn is_tunable(&self) -> bool {
        self.tunable
    }

    /// Its fields.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// Reads and checks the manifest at `path`: well-formed, within limits, about a live process
/// that started when the manifest says and that belongs to the manifest file's owner.
pub(crate) fn load(path: &Path) -> Result<ProcessInfo> {
    let invalid = |why: String| {
        Error::new(
            ErrorKind::InvalidData,
            format!("manifest {}: {why}", path.display()),
        )
    };
    // Never block on a FIFO or follow a symbolic link planted under a manifest's name; the
    // file type is checked on the open descriptor below.
    let mut file = sys::open_untrusted(path).map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        let hint = if kind == ErrorKind::PermissionDenied {
            "; manifests are readable only by the publishing user: run the probe as that user, \
             or as root"
        } else {
            ""
        };
        Error::with_source(
            kind,
            format!("opening manifest {}: {e}{hint}", path.display()),
            e,
        )
    })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("reading manifest metadata", e))?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST {
        return Err(invalid(format!(
            "not a regular file of at most {MAX_MANIFEST} bytes"
        )));
    }
    let mut text = Vec::new();
    Read::by_ref(&mut file)
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io("reading the manifest", e))?;
    let m: ManifestFile =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("not a valid manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(invalid(format!(
            "format {} (this probe reads format {FORMAT})",
            m.format
        )));
    }
    let named_pid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<i32>().ok());
    if m.pid <= 0 || named_pid != Some(m.pid) {
        return Err(invalid(format!(
            "names pid {}, but the file is not called {}.json",
            m.pid, m.pid
        )));
    }
    if m.blocks.len() > MAX_BLOCKS {
        return Err(invalid(format!("more than {MAX_BLOCKS} blocks")));
    }
    let mut blocks: Vec<BlockInfo> = Vec::with_capacity(m.blocks.len());
    for b in &m.blocks {
        let info = block_info(b).map_err(|e| invalid(format!("block {:?}: {e}", b.name)))?;
        if blocks.iter().any(|o| o.name == info.name) {
            return Err(invalid(format!("block {:?} appears twice", b.name)));
        }
        blocks.push(info);
    }
    // The process: alive, the same one that wrote the manifest, owned by the file's owner.
    let (start_time, owner) = sys::process_identity(m.pid).map_err(|e| match e.kind() {
        // Only a missing /proc entry means the process is gone (and the manifest stale).
        _ if sys::process_gone(&e) => Error::with_source(
            ErrorKind::NotFound,
            format!(
                "stale manifest {}: process {} is gone",
                path.display(),
                m.pid
            ),
            e,
        ),
        _ => Error::with_source(
            ErrorKind::Io,
            format!(
                "manifest {}: checking process {} in /proc failed: {e}",
                path.display(),
                m.pid
            ),
            e,
        ),
    })?;
    if start_time != m.start_time {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "stale manifest {}: pid {} now belongs to another process (started at tick \
                 {start_time}, the manifest says {}); its publisher is gone",
                path.display(),
                m.pid,
                m.start_time
            ),
        ));
    }
    if meta.uid() != owner || m.uid != owner {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "manifest {} is owned by uid {} and names uid {}, but process {} runs as uid \
                 {owner}: refused, a manifest must be written by the process it describes",
                path.display(),
                meta.uid(),
                m.uid,
                m.pid
            ),
        ));
    }
    Ok(ProcessInfo {
        pid: m.pid,
        start_time: m.start_time,
        uid: m.uid,
        program: m.program.chars().take(256).collect(),
        blocks,
        manifest: path.to_owned(),
        file: Arc::new(CheckedManifest {
            file,
            writers: std::sync::Mutex::new(()),
        }),
    })
}

fn block_info(b: &BlockEntry) -> std::result::Result<BlockInfo, String> {
    check_name(&b.name)?;
    if b.version != BLOCK_VERSION {
        return Err(format!(
            "block format {} (this probe reads {BLOCK_VERSION})",
            b.version
        ));
    }
    if b.fields.len() > MAX_FIELDS {
        return Err(format!("more than {MAX_FIELDS} fields"));
    }
    let mut fields = Vec::with_capacity(b.fields.len());
    for f in &b.fields {
        let kind = match (f.kind.as_str(), f.capacity) {
            ("u64", None) => FieldKind::U64,
            ("i64", None) => FieldKind::I64,
            ("f64", None) => FieldKind::F64,
            ("bool", None) => FieldKind::Bool,
            ("str", Some(c)) => FieldKind::Str {
                capacity: usize::try_from(c).unwrap_or(usize::MAX),
            },
            (k, _) => return Err(format!("field {:?} has unknown kind {k:?}", f.name)),
        };
        let metric = match (f.metric.as_deref(), kind) {
            (None, _) => Metric::Gauge,
            (Some("counter"), FieldKind::U64) => Metric::Counter,
            (Some(m), _) => {
                return Err(format!(
                    "field {:?} has metric {m:?}; only \"counter\" on a u64 field is known",
                    f.name
                ));
            }
        };
        let info = FieldInfo {
            name: f.name.clone(),
            kind,
            offset: usize::try_from(f.offset).unwrap_or(usize::MAX),
            metric,
        };
        if f.size != kind.size() as u64 {
            return Err(format!(
                "field {:?} says size {}, its kind takes {}",
                f.name,
                f.size,
                kind.size()
            ));
        }
        fields.push(info);
    }
    let layout = Layout {
        fields,
        size: usize::try_from(b.size).unwrap_or(usize::MAX),
    };
    layout.validate()?;
    if layout.hash() != b.layout_hash {
        return Err("its layout hash does not match its fields".into());
    }
    if b.address == 0 || !b.address.is_multiple_of(8) || b.address.checked_add(b.size).is_none() {
        return Err(format!(
            "address {:#x} is not a valid block address",
            b.address
        ));
    }
    Ok(BlockInfo {
        name: b.name.as_str().into(),
        address: b.address,
        tunable: b.tunable,
        hash: b.layout_hash,
        layout: Arc::new(layout),
    })
}

/// What [`Probe::discover`](super::Probe::discover) found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Live publishing processes, by pid.
    pub processes: Vec<ProcessInfo>,
    /// Manifests that were skipped, with the reason: stale (the process is gone or its pid was
    /// reused), unreadable, malformed, or refused (owner mismatch).
    pub skipped: Vec<(PathBuf, Error)>,
}

/// Checks a directory manifests are read from: `Ok(true)` if it may be trusted, `Ok(false)` if
/// it does not exist (or cannot be examined: it belongs to another user), and an error of kind
/// [`ErrorKind::PermissionDenied`] naming the directory and the fix if it is a symbolic link,
/// not a directory, or writable by group or others: whoever may write into it could put
/// anyone's manifests there, or swap them.
pub(crate) fn check_dir(dir: &Path) -> Result<bool> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(_) => return Ok(false),
    };
    let problem = if meta.file_type().is_symlink() {
        "is a symbolic link; name the directory it points to instead, once you have checked that \
         only its owner may write to it"
            .to_owned()
    } else if !meta.is_dir() {
        "is not a directory".to_owned()
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "is writable by {} (mode {:04o}); make it writable only by its owner (chmod go-w), or \
             use a directory of the publishing user's own",
            if meta.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        )
    } else {
        return Ok(true);
    };
    Err(Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "manifest directory {} {problem}: its manifests are not trusted",
            dir.display()
        ),
    ))
}

/// Reads every manifest in `dirs`. Directories that do not exist or cannot be listed are
/// passed over: they belong to other users.
pub(crate) fn discover_in(dirs: &[PathBuf]) -> Discovery {
    let mut found = Discovery::default();
    for dir in dirs {
        match check_dir(dir) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                found.skipped.push((dir.clone(), e));
                continue;
            }
        }
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            match load(&path) {
                Ok(info) if found.processes.iter().any(|p| p.pid == info.pid) => {}
                Ok(info) => found.processes.push(info),
                Err(e) => found.skipped.push((path, e)),
            }
        }
    }
    found.processes.sort_by_key(|p| p.pid);
    found
}

/// Removes the stale manifests in `dirs` (their process is gone or their pid was reused) that
/// this user may remove; returns their paths.
pub(crate) fn clean_stale(dirs: &[PathBuf]) -> Vec<PathBuf> {
    discover_in(dirs)
        .skipped
        .into_iter()
        .filter(|(_, e)| e.kind() == ErrorKind::NotFound)
        .filter(|(p, _)| fs::remove_file(p).is_ok())
        .map(|(p, _)| p)
        .collect()
}
