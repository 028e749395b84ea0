//! Probe and poke: publish live state, read it from outside, write tunables into a running
//! process.
//!
//! A process declares a few **blocks** of typed fields ([`BlockBuilder`]), publishes them
//! ([`Publication`]), and from then on updates them with plain memory writes
//! ([`Block::update`]): no system call, no I/O, nothing paid while nobody looks (updates of a
//! published tunable block also take the writers' `flock`). A **probe**
//! in another process finds every publisher on the host ([`Probe::discover`]), reads
//! consistent snapshots of their blocks with `process_vm_readv` ([`Probe::read`],
//! [`Probe::watch`]), and writes new values into blocks the process marked **tunable**
//! ([`Probe::set`], with `process_vm_writev`); the process sees them with [`Block::read`] and
//! [`Block::changed_since`]. The `pvmctl` tool does all of this from the command line.
//!
//! # Consistency
//!
//! Each block carries a sequence counter (a seqlock): a writer makes it odd, writes, and makes
//! it even again. A reader copies the counter, the block, and the counter again, each in its
//! own call, and keeps the copy only if the counter was even and did not move; it retries a
//! bounded number of times, then reports [`ErrorKind::Inconsistent`](crate::ErrorKind) rather
//! than spin. Several tools writing the same process are serialised by an exclusive `flock`
//! on its manifest.
//!
//! # Manifests
//!
//! Publishing writes `<pid>.json` into [`publish_dir`]: `$TOKIO_PVM_DIR`, else
//! `$XDG_RUNTIME_DIR/tokio-pvm/`, else `/tmp/tokio-pvm-<uid>/` (directory mode 0700, file
//! 0600, written to a temporary file and renamed). It names the process (pid, start time,
//! program, uid) and each block (name, address, size, fields with their kinds and offsets,
//! tunable or not), so readers need none of the target's Rust types. Dropping the
//! [`Publication`] removes it; a probe ignores manifests whose process is gone or whose pid
//! now belongs to another process (start time mismatch), refuses one whose file owner is not
//! the process's owner, and treats the manifest and the target's memory as untrusted input:
//! every size, offset and header is checked before use.
//!
//! The block format, the seqlock protocol and the manifest schema are specified in
//! `docs/PROBE.md`, for readers written in other languages.
//!
//! # Permissions
//!
//! Reading and writing another process's memory follows the kernel's ptrace access rules,
//! subject to Yama's `ptrace_scope`, and the probe makes every access with the credentials of
//! the manifest's owner (a root probe switches a short-lived thread to them; see
//! [whose credentials](Probe#whose-credentials)): it reads and writes only what that user
//! could, and a process that executed a setuid program after its manifest was loaded is
//! refused by the kernel. Run the probe as the process's user, or as root. A refused probe
//! gets [`ErrorKind::PermissionDenied`](crate::ErrorKind) with the fix spelled out.

mod access;
mod block;
mod layout;
mod lock;
mod manifest;
mod reader;

pub use block::{Block, BlockBuilder, Field, FieldType, Scalar, Snapshot, Text, Writer};
pub use layout::{
    FieldInfo, FieldKind, Layout, MAX_BLOCK, MAX_FIELDS, MAX_NAME, MAX_STRING, Metric, Value,
};
pub use manifest::{
    BlockInfo, DIR_ENV, Discovery, MAX_BLOCKS, ProcessInfo, Publication, publish_dir, search_dirs,
};
pub use reader::{Change, Probe};
