//! A listener's TCP sockets: accepting, and the TLS and protocol handshakes of each accepted
//! connection in a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};

use std::collections::VecDeque;

use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn};

use super::admission::ConnectionPermit;
use super::backoff::Backoff;
use crate::codec::ErrorCode;
use crate::config::Config;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};

/// Handshakes (TLS, then the protocol's) under way at once on one TCP socket; past that,
/// new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 128;

/// Sockets accepted in a row before finished handshakes (and other tasks) get their turn.
const ACCEPT_BATCH: usize = 16;

/// One listening TCP socket.
pub(super) struct TcpSide {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    handshakes: JoinSet<Result<Connection>>,
    /// The handshakes under way, oldest first, to drop the oldest when every slot is taken.
    started: VecDeque<AbortHandle>,
    /// Live connections of the whole listener, for `Config::max_connections`.
    live: Arc<AtomicUsize>,
    /// The pause after running out of descriptors or memory.
    backoff: Backoff,
}

impl TcpSide {
    /// Binds `host_port`. Refuses, before binding, a configuration with neither TLS nor the
    /// plain-TCP opt-in, and plain TCP on an address other than loopback.
    pub(super) fn bind(host_port: &str, config: Config, live: Arc<AtomicUsize>) -> Result<TcpSide> {
        // Neither TLS nor the plain-TCP opt-in: refused before binding, as a connect is.
        crate::tcp::security(&config, host_port)?;
        let ctx = |e| Error::io(&format!("listening on tcp://{host_port}"), e);
        let std = std::net::TcpListener::bind(host_port).map_err(ctx)?;
        let addr = std.local_addr().map_err(ctx)?;
        if config.tls.is_none() && !addr.ip().is_loopback() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot listen on tcp://{host_port} ({addr}) without TLS: \
                     Config::danger_plain_tcp_on_loopback allows loopback addresses only; use \
                     Config::tls, or listen on 127.0.0.1 or [::1]"
                ),
            ));
        }
        std.set_nonblocking(true).map_err(ctx)?;
        let listener = TcpListener::from_std(std).map_err(|e| {
            Error::io(
                "registering the listener with the Tokio runtime (is one running?)",
                e,
            )
        })?;
        debug!(%addr, tls = config.tls.is_some(), "listening on TCP");
        Ok(TcpSide {
            listener,
            addr,
            config,
            handshakes: JoinSet::new(),
            started: VecDeque::new(),
            live,
            backoff: Backoff::default(),
        })
    }

    /// The address bound (with the port the kernel chose for port 0).
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Handshakes under way.
    pub(super) fn handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// With every handshake slot taken, drops the oldest handshake still under way (as the
    /// Unix side drops the oldest connection without a HELLO): a flood of silent connections
    /// then costs a real client a slot's turn, not the whole timeout.
    fn make_room(&mut self) {
        self.started.retain(|h| !h.is_finished());
        while self.started.len() >= MAX_HANDSHAKES {
            match self.started.pop_front() {
                Some(oldest) => oldest.abort(),
                None => break,
            }
        }
    }

    /// A connection whose handshakes finished, accepting new sockets meanwhile. `Pending`
    /// registers `cx` on the socket (or, with every slot taken, on the handshakes) and on the
    /// handshakes under way. Failed handshakes are logged and dropped.
    pub(super) fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<Connection>> {
        loop {
            while let Poll::Ready(Some(done)) = self.handshakes.poll_join_next(cx) {
                match done {
                    Ok(Ok(conn)) => return Poll::Ready(Ok(conn)),
                    Ok(Err(e)) => {
                        warn!(addr = %self.addr, error = %e, "TCP handshake failed; connection dropped");
                    }
                    Err(e) => warn!(addr = %self.addr, error = %e, "TCP handshake task ended"),
                }
            }
            if self.backoff.poll_wait(cx).is_pending() {
                return Poll::Pending;
            }
            let mut started = 0;
            loop {
                if started == ACCEPT_BATCH {
                    // Others' turn (a flood must not hold the thread); then on from here.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match self.listener.poll_accept(cx) {
                    Poll::Ready(Ok((stream, peer))) => {
                        self.backoff.succeeded();
                        self.make_room();
                        let limit = self
                            .config
                            .max_connections
                            .map(|max| (self.live.clone(), max));
                        let handle = self.handshakes.spawn(handshake(
                            stream,
                            peer,
                            self.config.clone(),
                            limit,
                        ));
                        self.started.push_back(handle);
                        started += 1;
                    }
                    Poll::Ready(Err(e)) if super::transient_accept_error(&e) => {}
                    Poll::Ready(Err(e)) if super::out_of_resources(&e) => {
                        // The socket stays readable: without the pause every poll would
                        // fail again at once. A handshake under way gives its descriptor back.
                        if let Some(oldest) = self.started.pop_front() {
                            oldest.abort();
                        }
                        if let Some(err) = self.backoff.paused(&format!("tcp://{}", self.addr), e) {
                            return Poll::Ready(Err(err));
                        }
                        if self.backoff.poll_wait(cx).is_pending() {
                            break;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(Error::io(
                            &format!("accepting on tcp://{}", self.addr),
                            e,
                        )));
                    }
                    Poll::Pending => break,
                }
            }
            // A JoinSet polled while it was empty registered no waker for the new tasks.
            if started == 0 {
                return Poll::Pending;
            }
        }
    }
}

/// The TLS and protocol handshakes of one accepted connection. `limit` is the listener's
/// count of live connections and `Config::max_connections`: a permit is taken only once TLS
/// has authenticated the peer, so that connections that prove nothing cannot use the limit
/// up; a peer over the limit is told why.
async fn handshake(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Config,
    limit: Option<(Arc<AtomicUsize>, usize)>,
) -> Result<Connection> {
    // A client speaks first (TLS's ClientHello, or over plain TCP the protocol's HELLO), as
    // soon as it is connected; one that does not is dropped within the HELLO timeout, and
    // TLS must finish within it too, so that silent connections cannot hold the slots.
    let first = config.hello_timeout.min(config.handshake_timeout);
    let timed_out = || {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "the client at {peer} did not start or finish its handshake within {first:?} \
                 (Config::hello_timeout)"
            ),
        )
    };
    // (A peek, not `readable()`, which may report a fresh socket readable with nothing in.)
    tokio::time::timeout(first, stream.peek(&mut [0u8; 1]))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| Error::io(&format!("reading from {peer}"), e))?;
    let (carrier, info) = tokio::time::timeout(first, crate::tcp::accept(stream, peer, &config))
        .await
        .map_err(|_| timed_out())??;
    let permit = match limit {
        None => None,
        Some((live, max)) => match ConnectionPermit::try_new(&live, max) {
            Some(permit) => Some(permit),
            None => {
                let reason = format!(
                    "the listener already has {max} connections, the limit set with \
                     Config::max_connections; try again later"
                );
                crate::handshake::refuse_remote(carrier, ErrorCode::Limit, &reason).await;
                return Err(Error::limit(format!("refused {info}: {reason}")));
            }
        },
    };
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let shared = crate::handshake::handshake_remote(carrier, info, &config, deadline).await?;
    Ok(Connection::accepted(shared, permit))
}
