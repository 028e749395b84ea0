//! The crate's error type.

use std::fmt;
use std::io;
use std::sync::Arc;

/// The broad cause of an [`Error`], for programs that react differently to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peer process went away: it exited, was killed, or closed the connection without the
    /// close handshake. Messages it had in flight may not have been delivered.
    PeerGone,
    /// The kernel refused access: reading the peer's memory (ptrace access rules), or the peer's
    /// credentials were refused by this side's or the other side's [`Config`](crate::Config).
    PermissionDenied,
    /// The peer broke the wire protocol: a malformed or unexpected frame, a bad version, or a
    /// descriptor that points at memory the peer does not have mapped.
    Protocol,
    /// A message or frame exceeded a limit set in [`Config`](crate::Config).
    LimitExceeded,
    /// Something took too long: the handshake (or the connect before it, with a full backlog)
    /// did not finish within [`Config::handshake_timeout`](crate::Config::handshake_timeout),
    /// or a lock that serialises writers of a probed block stayed held.
    Timeout,
    /// The kernel does not support cross memory attach (`ENOSYS`).
    Unsupported,
    /// The connection was already closed by this side.
    Closed,
    /// Any other I/O error from the operating system.
    Io,
    /// Probe and poke: no such process, manifest, block or field.
    NotFound,
    /// Probe and poke: a manifest or a block in the target's memory is malformed, or does not
    /// match its manifest.
    InvalidData,
    /// Probe and poke: a value of the wrong type or out of range, or a write to a block that is
    /// not tunable.
    InvalidInput,
    /// Probe and poke: no consistent snapshot of a block within the bounded number of retries
    /// (a writer kept it busy, or one stopped half-way).
    Inconsistent,
}

/// An error from the transport.
///
/// The message names the cause and, where there is one, the fix. [`Error::kind`] tells causes
/// apart; the original operating system error, if any, is the [`source`](std::error::Error::source).
/// Errors are cheap to clone: a failed connection hands the same error to both of its halves.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

/// Shorthand for `Result<T, tokio_pvm::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: io::Error,
    ) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: Some(source),
            }),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::new(
            ErrorKind::Protocol,
            format!("protocol violation: {}", message.into()),
        )
    }

    pub(crate) fn limit(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::LimitExceeded, message)
    }

    pub(crate) fn io(context: &str, err: io::Error) -> Error {
        let message = match out_of_descriptors(&err) {
            Some(why) => format!("{context}: {why}"),
            None => format!("{context}: {err}"),
        };
        Error::with_source(ErrorKind::Io, message, err)
    }

    /// Classifies a failed read of the peer's memory.
    pub(crate) fn pull(pid: i32, err: io::Error) -> Error {
        let (kind, message) = match err.raw_os_error() {
            Some(nix::libc::ESRCH) if pid == 0 => (
                ErrorKind::PermissionDenied,
                "the peer runs in a pid namespace this process cannot see (the kernel reports its \
                 pid as 0), so its memory cannot be read; run both processes in the same pid \
                 namespace (e.g. docker --pid=host or a shared pod namespace)"
                    .to_string(),
            ),
            Some(nix::libc::ESRCH) => (
                ErrorKind::PeerGone,
                format!("peer process {pid} is gone (ESRCH while reading its memory)"),
            ),
            Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => (
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied reading the memory of peer process {pid}: both processes \
                     must run as the same user and the peer must be dumpable, or this process \
                     needs CAP_SYS_PTRACE; with Yama (/proc/sys/kernel/yama/ptrace_scope) set to \
                     1 the peer must allow this process with prctl(PR_SET_PTRACER), 2 needs \
                     CAP_SYS_PTRACE, 3 forbids it; in Docker add --cap-add=SYS_PTRACE, in \
                     Kubernetes add SYS_PTRACE to securityContext.capabilities"
                ),
            ),
            Some(nix::libc::EFAULT) => (
                ErrorKind::Protocol,
                format!(
                    "bad address from peer process {pid}: it announced a buffer that is not \
                     mapped in its memory (EFAULT)"
                ),
            ),
            Some(nix::libc::ENOSYS) => (
                ErrorKind::Unsupported,
                "process_vm_readv is not available: the kernel was built without \
                 CONFIG_CROSS_MEMORY_ATTACH or a seccomp filter blocks it (ENOSYS)"
                    .to_string(),
            ),
            // Not the peer's fault: this side needed a descriptor (the peer's pidfd).
            Some(nix::libc::EMFILE | nix::libc::ENFILE) => (
                ErrorKind::Io,
                format!(
                    "taking a pidfd for peer process {pid}: {}",
                    out_of_descriptors(&err).unwrap_or_default()
                ),
            ),
            _ => (
                ErrorKind::Io,
                format!("reading the memory of peer process {pid} failed: {err}"),
            ),
        };
        Error::with_source(kind, message, err)
    }

    /// Classifies a failed read or write of a probed process's memory.
    #[cfg(feature = "probe")]
    pub(crate) fn remote_access(pid: i32, what: &str, err: io::Error) -> Error {
        let (kind, message) = match err.raw_os_error() {
            Some(nix::libc::ESRCH) => (
                ErrorKind::NotFound,
                format!("process {pid} is gone (ESRCH while {what})"),
            ),
            Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => (
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied {what} of process {pid}: run the probe as the same user as \
                     the target (and the target must be dumpable), or give the probe \
                     CAP_SYS_PTRACE; with Yama (/proc/sys/kernel/yama/ptrace_scope) 1 the probe \
                     needs CAP_SYS_PTRACE or must be the target's declared ptracer, 2 needs \
                     CAP_SYS_PTRACE, 3 forbids it; in Docker add --cap-add=SYS_PTRACE, in \
                     Kubernetes add SYS_PTRACE to securityContext.capabilities"
                ),
            ),
            Some(nix::libc::EFAULT) => (
                ErrorKind::InvalidData,
                format!(
                    "{what} of process {pid} failed: the address is not mapped in the process \
                     (EFAULT); its manifest is stale or corrupt"
                ),
            ),
            Some(nix::libc::ENOSYS) => (
                ErrorKind::Unsupported,
                "process_vm_readv/process_vm_writev are not available: the kernel was built \
                 without CONFIG_CROSS_MEMORY_ATTACH or a seccomp filter blocks them (ENOSYS)"
                    .to_string(),
            ),
            _ => (
                ErrorKind::Io,
                format!("{what} of process {pid} failed: {err}"),
            ),
        };
        Error::with_source(kind, message, err)
    }

    /// The kind of the operating system error behind this one, if any.
    /// The operating system error underneath, if any.
    #[cfg(feature = "tcp")]
    pub(crate) fn io_source(&self) -> Option<&io::Error> {
        self.inner.source.as_ref()
    }

    pub(crate) fn source_kind(&self) -> Option<io::ErrorKind> {
        self.inner.source.as_ref().map(io::Error::kind)
    }

    /// The broad cause of this error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether the peer went away (see [`ErrorKind::PeerGone`]).
    pub fn is_peer_gone(&self) -> bool {
        self.kind() == ErrorKind::PeerGone
    }

    /// Whether access was refused (see [`ErrorKind::PermissionDenied`]).
    pub fn is_permission_denied(&self) -> bool {
        self.kind() == ErrorKind::PermissionDenied
    }

    /// Whether the peer broke the protocol (see [`ErrorKind::Protocol`]).
    pub fn is_protocol(&self) -> bool {
        self.kind() == ErrorKind::Protocol
    }

    /// Whether a configured limit was exceeded (see [`ErrorKind::LimitExceeded`]).
    pub fn is_limit_exceeded(&self) -> bool {
        self.kind() == ErrorKind::LimitExceeded
    }

    /// Whether the handshake timed out (see [`ErrorKind::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }
}

/// What to say when `err` means that no file descriptor is left: the cause is this process's
/// (or the system's) descriptor limit, whatever the call that ran into it was for.
fn out_of_descriptors(err: &io::Error) -> Option<&'static str> {
    match err.raw_os_error() {
        Some(nix::libc::EMFILE) => Some(
            "this process is out of file descriptors (EMFILE): raise `ulimit -n` or close \
             connections",
        ),
        Some(nix::libc::ENFILE) => Some(
            "the system is out of file descriptors (ENFILE): raise the fs.file-max sysctl or \
             close connections and files",
        ),
        _ => None,
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_ref().map(|e| e as _)
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::io("I/O error on the control socket", err)
    }
}

impl Error {
    /// This error as a socket's read would report it: a peer that went away is
    /// [`ConnectionReset`](io::ErrorKind::ConnectionReset) (a write reports
    /// [`BrokenPipe`](io::ErrorKind::BrokenPipe), as the `From` conversion gives).
    pub(crate) fn into_read_error(self) -> io::Error {
        if self.kind() == ErrorKind::PeerGone {
            io::Error::new(io::ErrorKind::ConnectionReset, self)
        } else {
            io::Error::from(self)
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.kind() {
            ErrorKind::PeerGone => io::ErrorKind::BrokenPipe,
            ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::Protocol => io::ErrorKind::InvalidData,
            ErrorKind::LimitExceeded => io::ErrorKind::InvalidInput,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::Closed => io::ErrorKind::NotConnected,
            ErrorKind::Io => err.source_kind().unwrap_or(io::ErrorKind::Other),
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::InvalidData => io::ErrorKind::InvalidData,
            ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            ErrorKind::Inconsistent => io::ErrorKind::ResourceBusy,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: std::error::Error + Send + Sync + 'static>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn pull_errors_name_cause_and_fix() {
        let e = Error::pull(42, io::Error::from_raw_os_error(nix::libc::EPERM));
        assert!(e.is_permission_denied());
        assert!(e.to_string().contains("CAP_SYS_PTRACE"), "{e}");
        let e = Error::pull(42, io::Error::from_raw_os_error(nix::libc::ESRCH));
        assert!(e.is_peer_gone());
        assert!(e.to_string().contains("42"), "{e}");
        let e = Error::pull(0, io::Error::from_raw_os_error(nix::libc::ESRCH));
        assert!(e.to_string().contains("namespace"), "{e}");
        let e = Error::pull(7, io::Error::from_raw_os_error(nix::libc::EFAULT));
        assert!(e.is_protocol() && e.to_string().contains("EFAULT"), "{e}");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn descriptor_exhaustion_names_the_limit_not_the_peer() {
        let emfile = || io::Error::from_raw_os_error(nix::libc::EMFILE);
        for e in [Error::pull(42, emfile()), Error::io("accepting", emfile())] {
            let text = e.to_string();
            assert_eq!(e.kind(), ErrorKind::Io);
            assert!(
                text.contains("this process is out of file descriptors (EMFILE)")
                    && text.contains("ulimit -n")
                    && !text.contains("memory"),
                "{text}"
            );
        }
        let e = Error::pull(42, io::Error::from_raw_os_error(nix::libc::ENFILE));
        assert!(e.to_string().contains("fs.file-max"), "{e}");
    }
}
