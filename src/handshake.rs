//! The handshake: credentials from the kernel, HELLO both ways, and a cookie pulled out of the
//! peer's memory to prove that pulls work before any user data moves.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, debug_span, warn};

use crate::Mode;
use crate::PeerInfo;
use crate::carrier::Carrier;
use crate::codec::{
    COOKIE_LEN, ErrorCode, Frame, FrameCodec, Hello, Limits, OutFrame, READY_INLINE, READY_SHARED,
    VERSION,
};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::loan::{LendRegion, PeerRegion};
use crate::protocol::{Lanes, Modes, Negotiated, Shared};
use crate::socket::ControlSocket;
use crate::sys::{self, RemoteRange};

type Io = Framed<Carrier, FrameCodec>;

/// Runs the handshake on a connected socket, bounded by the configured timeout.
pub(crate) async fn handshake(fd: OwnedFd, config: &Config) -> Result<Arc<Shared>> {
    handshake_until(fd, config, Instant::now() + config.handshake_timeout).await
}

/// Runs the handshake, failing with a timeout error at `deadline`.
pub(crate) async fn handshake_until(
    fd: OwnedFd,
    config: &Config,
    deadline: Instant,
) -> Result<Arc<Shared>> {
    let timeout = config.handshake_timeout;
    let span = debug_span!(
        "tokio_pvm::handshake",
        fd = sys::raw(&fd),
        peer_pid = tracing::field::Empty
    );
    // The connection's span is a sibling of the handshake's, not its child: its events are not
    // prefixed with a handshake that is over.
    let outer = tracing::Span::current();
    match tokio::time::timeout_at(deadline, run(fd, config, outer).instrument(span)).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(timeout)),
    }
}

async fn run(fd: OwnedFd, config: &Config, outer: tracing::Span) -> Result<Arc<Shared>> {
    let socket = ControlSocket::new(fd).map_err(|e| Error::io("registering the socket", e))?;
    let (pid, uid, gid) = socket
        .peer_credentials()
        .map_err(|e| Error::io("reading the peer's credentials (SO_PEERCRED)", e))?;
    tracing::Span::current().record("peer_pid", pid);
    let mut io = Framed::new(Carrier::Unix(socket), codec(config));

    let own_uid = nix::unistd::geteuid().as_raw();
    if !config.accepts_uid(own_uid, uid) {
        let err = Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "peer process {pid} runs as uid {uid}, this process as uid {own_uid}: \
                 connections from other users are refused by default; allow them with \
                 Config::allow_uid({uid}) or Config::allow_any_uid()"
            ),
        );
        refuse(
            &mut io,
            ErrorCode::Refused,
            &format!(
                "uid {uid} is not accepted by process {} (uid {own_uid}); that side must allow it \
                 with Config::allow_uid({uid})",
                std::process::id()
            ),
        )
        .await;
        return Err(err);
    }
    negotiate(io, PeerInfo::local(pid, uid, gid), config, outer).await
}

/// The handshake over a TCP carrier whose TLS handshake (if any) is done: HELLO and READY
/// both ways, every message inline. Fails with a timeout error at `deadline`.
#[cfg(feature = "tcp")]
pub(crate) async fn handshake_remote(
    carrier: Carrier,
    peer: PeerInfo,
    config: &Config,
    deadline: Instant,
) -> Result<Arc<Shared>> {
    let span = debug_span!("tokio_pvm::handshake", peer = %peer);
    let outer = tracing::Span::current();
    let io = Framed::new(carrier, codec(config));
    let timeout = config.handshake_timeout;
    let who = peer.to_string();
    let tls = peer.certificate().is_some();
    match tokio::time::timeout_at(
        deadline,
        negotiate(io, peer, config, outer).instrument(span),
    )
    .await
    {
        Ok(result) => result.map_err(|e| crate::tcp::explain(e, &who, tls)),
        Err(_) => Err(timed_out(timeout)),
    }
}

/// The handshake took longer than `timeout`.
fn timed_out(timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "the handshake did not finish within {timeout:?}: the peer is not a tokio-pvm \
             endpoint, is stuck, or is overloaded; raise Config::handshake_timeout if it is \
             only slow"
        ),
    )
}

/// Tells a peer over TCP why it is refused before the handshake (a full listener): an
/// ERROR frame in answer to its HELLO, which its `connect` reports.
#[cfg(feature = "tcp")]
pub(crate) async fn refuse_remote(carrier: Carrier, code: ErrorCode, reason: &str) {
    let mut io = Framed::new(carrier, codec(&Config::default()));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = io.next().await; // its HELLO
        refuse(&mut io, code, reason).await;
        let _ = io.close().await;
    })
    .await;
}

/// The frame codec under `config`'s limits.
fn codec(config: &Config) -> FrameCodec {
    FrameCodec::new(Limits {
        max_message_size: config.max_message_size,
        max_ranges: config.max_ranges,
        max_inline: config.max_inline_size,
    })
}

/// HELLO and READY both ways, the memory proof and the loan regions between processes of
/// this host, then the connection.
async fn negotiate(
    mut io: Io,
    peer: PeerInfo,
    config: &Config,
    outer: tracing::Span,
) -> Result<Arc<Shared>> {
    // A peer over TCP is never pulled from and never given a region: every message travels
    // inline, both ways.
    let local = peer.pid().zip(peer.uid());
    let who = peer.to_string();

    // Only for an accepted local peer: a region costs a memfd and a mapping.
    let lend = local.and_then(|_| lend_region(config));
    if lend.is_some() {
        // The peer's region file may arrive with any read from now on (nothing was read yet).
        if let Some(socket) = io.get_mut().unix_mut() {
            socket.accept_fds();
        }
    }

    let claim = local.map(|(pid, _)| permit_reader(pid, config));

    // The cookie lives at a fixed address until the peer has said READY.
    let mut cookie = Box::new([0u8; COOKIE_LEN]);
    sys::random_bytes(&mut cookie[..]).map_err(|e| Error::io("reading random bytes", e))?;
    // A remote peer never pulls the cookie, and is not told where this process keeps
    // anything.
    let hello = Hello {
        version: VERSION,
        cookie_addr: match local {
            Some(_) => cookie.as_ptr() as usize as u64,
            None => 0,
        },
        cookie: match local {
            Some(_) => *cookie,
            None => [0; COOKIE_LEN],
        },
        max_message_size: config.max_message_size,
        window_messages: config.window_messages,
        window_bytes: config.window_bytes,
        max_inline: config.max_inline_size,
        max_ranges: config.max_ranges,
        loan_region: lend.as_ref().map_or(0, |(r, _)| r.size() as u64),
    };
    send(&mut io, OutFrame::Hello(&hello), &who).await?;
    let theirs = match next_frame(&mut io, &who).await? {
        Frame::Hello(h) => h,
        other => return Err(unexpected(other, "HELLO")),
    };
    // The version first: another version may give the other fields other meanings.
    if theirs.version != VERSION {
        let msg = format!(
            "peer {who} speaks protocol version {}, this side speaks {VERSION}; run the same \
             tokio-pvm release on both sides",
            theirs.version
        );
        refuse(&mut io, ErrorCode::Version, &msg).await;
        return Err(Error::protocol(msg));
    }
    if theirs.window_messages == 0 || theirs.window_bytes == 0 || theirs.max_ranges == 0 {
        let msg = format!("peer {who} announced an empty window or no address ranges in its HELLO");
        refuse(&mut io, ErrorCode::Protocol, &msg).await;
        return Err(Error::protocol(msg));
    }

    // Prove that we can read the peer's memory, and that the pid is really the peer. If we
    // cannot, or may not (see `pull_allowed`), and the configuration allows it, we receive
    // inline instead.
    let Some((pid, uid)) = local else {
        return finish_remote(io, peer, config, &theirs, outer).await;
    };
    let proven = match pull_allowed(pid, uid) {
        Ok(()) => prove_pull(pid, &theirs),
        Err(why) => Err((ErrorCode::PullFailed, why)),
    };
    let recv_mode = match proven {
        Ok(()) => Mode::Pull,
        Err((code, err)) if config.require_pull => {
            let reason = format!(
                "process {} cannot read this process's memory: {err}",
                std::process::id()
            );
            refuse(&mut io, code, &reason).await;
            return Err(err);
        }
        Err((_, err)) => {
            warn!(
                peer_pid = pid,
                "cannot read the memory of peer process {pid}, so its messages will travel \
                 inline over the socket (slower): {err}"
            );
            Mode::Inline(Arc::from(err.to_string()))
        }
    };
    // The pid is proven: hold the process itself, so that a pid reused after the peer's death
    // can never be read from.
    let pidfd = match recv_mode {
        Mode::Inline(_) => None,
        Mode::Pull => match sys::peer_pidfd(io.get_ref().as_fd(), pid) {
            Ok(fd) => fd,
            Err(e) => {
                let err = Error::pull(pid, e);
                // "This process" in the text is us, not the peer who reads it.
                let reason = format!("in process {}: {err}", std::process::id());
                refuse(&mut io, ErrorCode::Other, &reason).await;
                return Err(err);
            }
        },
    };
    let inline = matches!(recv_mode, Mode::Inline(_));
    // The zero-copy lane: both sides created a region; each passes its own and maps the
    // peer's.
    let both_lend = lend.is_some() && theirs.loan_region > 0;
    if let (true, Some((region, fd)), Some(socket)) = (both_lend, &lend, io.get_ref().unix()) {
        let frame = crate::codec::region_frame(region.size() as u64);
        if let Err(e) = socket.send_with_fd(&frame, Some(fd.as_fd())).await {
            // Descriptor passing refused (an LSM, too many in flight): the frame goes alone,
            // and the peer, finding no descriptor with it, leaves this direction's lane closed.
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return Err(Error::io("passing the loan region to the peer", e));
            }
            warn!(
                peer_pid = pid,
                "cannot pass the loan region to peer process {pid} ({e}); its lane stays closed"
            );
            socket
                .send_with_fd(&frame, None)
                .await
                .map_err(|e| Error::io("sending the loan region frame", e))?;
        }
    }
    let borrow = if both_lend {
        match next_frame(&mut io, &who).await? {
            Frame::Region { size } => {
                let fd = io.get_mut().unix_mut().and_then(ControlSocket::take_fd);
                map_peer_region(fd, size, &theirs, hello.loan_region, pid)
            }
            other => return Err(unexpected(other, "REGION")),
        }
    } else {
        None
    };
    if let Some(socket) = io.get_mut().unix_mut() {
        socket.refuse_fds();
    }
    let mut flags = if inline { READY_INLINE } else { 0 };
    if borrow.is_some() {
        flags |= READY_SHARED;
    }
    send(&mut io, OutFrame::Ready { flags }, &who).await?;
    let (send_mode, lends) = match next_frame(&mut io, &who).await? {
        Frame::Ready { flags } if flags & READY_SHARED != 0 && !both_lend => {
            return Err(Error::protocol(
                "the peer's READY accepts a loan region this side never offered",
            ));
        }
        Frame::Ready { flags } => (
            if flags & READY_INLINE == 0 {
                Mode::Pull
            } else {
                Mode::Inline(Arc::from(format!(
                    "peer process {pid} cannot read this process's memory and asked for inline \
                     messages"
                )))
            },
            flags & READY_SHARED != 0,
        ),
        other => return Err(unexpected(other, "READY")),
    };
    if both_lend && !lends {
        warn!(
            peer_pid = pid,
            "peer process {pid} did not map this side's loan region: loaned messages travel \
             as ordinary ones (its log says why)"
        );
    }
    drop(cookie);
    if inline {
        io.codec_mut().accept_inline_messages();
    }

    let negotiated = negotiated(config, &theirs, &send_mode);
    debug!(?negotiated, %peer, "handshake complete");
    let span = debug_span!(
        parent: &outer,
        "tokio_pvm::connection",
        peer_pid = pid,
        peer_uid = uid
    );
    if let Some(claim) = claim {
        claim.keep();
    }
    let modes = Modes {
        recv: recv_mode,
        send: send_mode,
    };
    let lanes = Lanes {
        lend: lend.filter(|_| lends).map(|(region, _fd)| region),
        borrow,
    };
    Ok(Shared::new(io, peer, pidfd, negotiated, modes, lanes, span))
}

/// What the two HELLOs agree on, for a side that sends in `send_mode`.
fn negotiated(config: &Config, theirs: &Hello, send_mode: &Mode) -> Negotiated {
    Negotiated {
        send_window_messages: config.window_messages.min(theirs.window_messages).max(1),
        send_window_bytes: config.window_bytes.min(theirs.window_bytes).max(1),
        recv_max_message: config.max_message_size,
        send_max_message: match send_mode {
            Mode::Pull => theirs.max_message_size,
            Mode::Inline(_) => theirs.max_message_size.min(u64::from(u32::MAX - 16)),
        },
        inline_threshold: match send_mode {
            Mode::Pull => config.inline_threshold.min(theirs.max_inline),
            Mode::Inline(_) => u32::MAX,
        },
        // The peer's decoder bounds a BATCH body as it bounds an INLINE one.
        batch_body_max: crate::codec::BATCH_FIXED
            + u64::from(theirs.max_inline).min(theirs.max_message_size) as usize,
        recv_window_messages: config.window_messages,
        recv_window_bytes: config.window_bytes,
        blocking_threshold: config.blocking_threshold,
        max_pulls_in_flight: config.max_pulls_in_flight,
        pool_bytes: config.pool_bytes,
        pull_timeout: config.pull_timeout,
        linger: config.linger,
    }
}

/// The rest of the handshake with a peer over TCP: both sides receive inline, so READY says
/// so both ways.
async fn finish_remote(
    mut io: Io,
    peer: PeerInfo,
    config: &Config,
    theirs: &Hello,
    outer: tracing::Span,
) -> Result<Arc<Shared>> {
    let who = peer.to_string();
    let why: Arc<str> = Arc::from("over TCP every message travels inline");
    send(
        &mut io,
        OutFrame::Ready {
            flags: READY_INLINE,
        },
        &who,
    )
    .await?;
    match next_frame(&mut io, &who).await? {
        Frame::Ready { flags } if flags == READY_INLINE => {}
        Frame::Ready { .. } => {
            let msg = format!("peer {who} asked to pull or share memory over TCP");
            refuse(&mut io, ErrorCode::Protocol, &msg).await;
            return Err(Error::protocol(msg));
        }
        other => return Err(unexpected(other, "READY")),
    }
    io.codec_mut().accept_inline_messages();
    let send_mode = Mode::Inline(why.clone());
    let negotiated = negotiated(config, theirs, &send_mode);
    debug!(?negotiated, %peer, "handshake complete");
    let span = debug_span!(parent: &outer, "tokio_pvm::connection", %peer);
    let modes = Modes {
        recv: Mode::Inline(why),
        send: send_mode,
    };
    Ok(Shared::new(
        io,
        peer,
        None,
        negotiated,
        modes,
        Lanes::default(),
        span,
    ))
}

/// This side's loan region, if [`Config::loan_region`] asks for one and it can be made.
fn lend_region(config: &Config) -> Option<(Arc<LendRegion>, OwnedFd)> {
    if config.loan_region == 0 {
        return None;
    }
    match LendRegion::create(config.loan_region) {
        Ok(region) => Some(region),
        Err(e) => {
            warn!(
                "cannot create a loan region of {} bytes (memfd_create, ftruncate or mmap \
                 failed: {e}); this connection has no zero-copy lane",
                config.loan_region
            );
            None
        }
    }
}

/// Maps the loan region the peer passed; `None` (and a warning) if it cannot be used.
///
/// A region larger than this side's own is refused: a peer's region costs this process
/// address space, and pages the peer left unwritten are allocated (and charged to this
/// process) when a message points at them, so this side's own size is the bound it accepted.
fn map_peer_region(
    fd: Option<OwnedFd>,
    size: u64,
    theirs: &Hello,
    own: u64,
    pid: i32,
) -> Option<Arc<PeerRegion>> {
    let mapped = match fd {
        None => Err("no descriptor came with its REGION frame".to_string()),
        Some(_) if size != theirs.loan_region => Err(format!(
            "its REGION frame says {size} bytes, its HELLO {}",
            theirs.loan_region
        )),
        Some(_) if size > own => Err(format!(
            "it is {size} bytes, larger than this side's own region of {own} bytes, the most \
             this side maps; give both sides the same Config::loan_region"
        )),
        Some(fd) => PeerRegion::map(&fd, size),
    };
    match mapped {
        Ok(region) => Some(region),
        Err(why) => {
            warn!(
                peer_pid = pid,
                "the loan region of peer process {pid} cannot be used ({why}); its loaned \
                 messages travel as ordinary ones"
            );
            None
        }
    }
}

/// What to declare under Yama's `ptrace_scope` 1 so that `peer` may read this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ptracer {
    /// Nothing to do (no Yama, another mode, or already declared).
    Nothing,
    /// `PR_SET_PTRACER(pid)`.
    One(i32),
    /// `PR_SET_PTRACER_ANY`.
    Any,
}

/// The one reader declared under Yama mode 1 for this process, if any: `PR_SET_PTRACER`
/// keeps a single pid, and replacing it would cut off the peer that relies on it.
static DECLARED_READER: std::sync::Mutex<Option<i32>> = std::sync::Mutex::new(None);

fn ptracer_action(scope: Option<u8>, any: bool, declared: Option<i32>, peer: i32) -> Ptracer {
    match (scope, any, declared) {
        (Some(1), true, _) => Ptracer::Any,
        (Some(1), false, None) if peer != std::process::id() as i32 => Ptracer::One(peer),
        _ => Ptracer::Nothing,
    }
}

/// The permission claimed for one peer under Yama mode 1; given back (so that the next peer
/// can be declared) if the handshake fails.
struct ReaderClaim {
    pid: Option<i32>,
}

impl ReaderClaim {
    /// The handshake succeeded: the peer keeps the permission.
    fn keep(mut self) {
        self.pid = None;
    }
}

impl Drop for ReaderClaim {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let mut declared = DECLARED_READER
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *declared == Some(pid) {
                *declared = None;
            }
        }
    }
}

/// Under Yama mode 1, lets `peer` read this process (see [`Config::allow_any_ptracer`]).
fn permit_reader(peer: i32, config: &Config) -> ReaderClaim {
    let none = ReaderClaim { pid: None };
    let scope = sys::yama_ptrace_scope();
    if scope != Some(1) {
        return none;
    }
    let mut declared = DECLARED_READER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A declared reader that has exited no longer holds the permission (Yama drops it).
    let alive =
        declared.filter(|&p| p == 0 || std::path::Path::new(&format!("/proc/{p}")).exists());
    let action = ptracer_action(scope, config.any_ptracer, alive, peer);
    let result = match action {
        Ptracer::Nothing => return none,
        Ptracer::One(pid) => sys::set_ptracer(Some(pid)).map(|()| *declared = Some(pid)),
        Ptracer::Any => sys::set_ptracer(None).map(|()| *declared = Some(0)),
    };
    match result {
        Ok(()) => {
            debug!(
                ?action,
                "declared the peer as a permitted reader (Yama mode 1)"
            );
            ReaderClaim {
                pid: match action {
                    Ptracer::One(pid) => Some(pid),
                    _ => None,
                },
            }
        }
        Err(e) => {
            warn!(?action, error = %e, "prctl(PR_SET_PTRACER) failed");
            none
        }
    }
}

/// Whether this process may pull from peer process `pid`, which runs as `peer_uid`.
///
/// A pull is made with this process's credentials, at addresses the peer names, long after the
/// handshake: by then the peer may have `exec`ed a setuid program (same pid, same pidfd, new
/// owner). The kernel's own check at each pull only stops that if our credentials are no
/// stronger than the peer's were, so we pull only when:
/// - the peer is this process (`Connection::pair`), or
/// - the peer runs as our uid (real and effective), and either we are root (a root peer can
///   read anything itself) or we lack `CAP_SYS_PTRACE` (the kernel then refuses a pull from a
///   process that gained privileges, as it would refuse the peer).
///
/// Every other peer sends its messages inline over the socket; no read of its memory is ever
/// made on its say-so, not even the cookie read.
fn pull_allowed(pid: i32, peer_uid: u32) -> Result<()> {
    if pid == std::process::id() as i32 {
        return Ok(());
    }
    let uid = nix::unistd::getuid().as_raw();
    let euid = nix::unistd::geteuid().as_raw();
    let why = if peer_uid != euid || uid != euid {
        format!(
            "peer process {pid} runs as uid {peer_uid} and this process as uid {euid}: \
             messages from another user travel inline over the socket, because a pull made with \
             this process's privileges could read memory the peer itself may not (for example \
             after it execs a setuid program); run both sides as the same user for pulls"
        )
    } else if euid != 0 && sys::can_ptrace_any() {
        format!(
            "this process holds CAP_SYS_PTRACE, so a pull would not be limited to what peer \
             process {pid} may read itself (for example after it execs a setuid program): its \
             messages travel inline over the socket; drop the capability for pulls"
        )
    } else {
        return Ok(());
    };
    Err(Error::new(ErrorKind::PermissionDenied, why))
}

/// Pulls the peer's cookie and compares it; on failure, the ERROR code to refuse with and the
/// error.
fn prove_pull(pid: i32, theirs: &Hello) -> std::result::Result<(), (ErrorCode, Error)> {
    let mut got = [MaybeUninit::<u8>::uninit(); COOKIE_LEN];
    let range = [RemoteRange {
        addr: theirs.cookie_addr,
        len: COOKIE_LEN as u64,
    }];
    sys::read_remote(pid, &mut got, &range)
        .map_err(|e| (ErrorCode::PullFailed, Error::pull(pid, e)))?;
    // SAFETY: read_remote returned Ok, so every byte of `got` was written.
    let got: [u8; COOKIE_LEN] = got.map(|b| unsafe { b.assume_init() });
    if got != theirs.cookie {
        let msg = format!(
            "the memory of process {pid} (the pid the kernel reports for the peer) does not hold \
             the cookie the peer sent: the peer is in another pid namespace or is not the process \
             that owns the socket"
        );
        return Err((ErrorCode::CookieMismatch, Error::protocol(msg)));
    }
    Ok(())
}

/// Sends a handshake frame. If the peer already closed the socket, its ERROR frame (sent
/// before it closed) explains why better than the broken pipe does.
async fn send(io: &mut Io, frame: OutFrame<'_>, who: &str) -> Result<()> {
    match io.send(frame).await {
        Ok(()) => Ok(()),
        // The reason, if any, is already in our receive buffer or on its way; do not wait
        // for a peer that keeps the socket half open.
        // A peer's ERROR frame explains the failed write, whatever its code; a bare end of
        // stream explains nothing, so the write error stands.
        Err(e) => match tokio::time::timeout(Duration::from_millis(100), io.next()).await {
            Ok(Some(Ok(Frame::Error { code, reason }))) => Err(refusal(code, &reason, who)),
            _ => Err(e),
        },
    }
}

/// The next frame; a peer's ERROR or end of stream becomes the matching error.
async fn next_frame(io: &mut Io, who: &str) -> Result<Frame> {
    match io.next().await {
        Some(Ok(Frame::Error { code, reason })) => Err(refusal(code, &reason, who)),
        Some(result) => result,
        None => Err(Error::new(
            ErrorKind::PeerGone,
            format!("peer {who} closed the connection during the handshake"),
        )),
    }
}

/// The error for a peer's ERROR frame during the handshake.
fn refusal(code: ErrorCode, reason: &str, who: &str) -> Error {
    Error::new(
        code.kind(),
        format!("peer {who} refused the connection: {reason}"),
    )
}

fn unexpected(frame: Frame, wanted: &str) -> Error {
    let got = match frame {
        Frame::Hello(_) => "HELLO",
        Frame::Ready { .. } => "READY",
        Frame::Data(_) => "DATA",
        Frame::Inline { .. } => "INLINE",
        Frame::Batch(_) => "BATCH",
        Frame::Ack { .. } => "ACK",
        Frame::Close { .. } => "CLOSE",
        Frame::Stop { .. } => "STOP",
        Frame::Error { .. } => "ERROR",
        Frame::Region { .. } => "REGION",
        Frame::Shared { .. } => "SHARED",
        Frame::Release(_) => "RELEASE",
        Frame::Sync { .. } => "SYNC",
    };
    Error::protocol(format!("expected {wanted} during the handshake, got {got}"))
}

/// Tells the peer why we refuse; best effort, the peer may already be gone.
async fn refuse(io: &mut Io, code: ErrorCode, reason: &str) {
    debug!(?code, reason, "refusing peer");
    let _ = io.send(OutFrame::Error { code, reason }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yama_mode_one_declares_the_first_peer_or_any_when_allowed() {
        assert_eq!(ptracer_action(None, false, None, 7), Ptracer::Nothing);
        assert_eq!(ptracer_action(Some(0), true, None, 7), Ptracer::Nothing);
        assert_eq!(ptracer_action(Some(2), true, None, 7), Ptracer::Nothing);
        assert_eq!(ptracer_action(Some(1), false, None, 7), Ptracer::One(7));
        // Not ourselves (Connection::pair), and a second peer does not take the first one's
        // permission away.
        let own = std::process::id() as i32;
        assert_eq!(ptracer_action(Some(1), false, None, own), Ptracer::Nothing);
        assert_eq!(ptracer_action(Some(1), false, Some(7), 8), Ptracer::Nothing);
        assert_eq!(ptracer_action(Some(1), true, Some(7), 8), Ptracer::Any);
    }
}
