//! A listener's TCP sockets: accepting, and the TLS and protocol handshakes of each accepted
//! connection in a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::admission::ConnectionPermit;
use crate::codec::ErrorCode;
use crate::config::Config;
use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};

/// Handshakes (TLS, then the protocol's) under way at once on one TCP socket; past that,
/// new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 128;

/// One listening TCP socket.
pub(super) struct TcpSide {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    handshakes: JoinSet<Result<Connection>>,
    /// Live connections of the whole listener, for `Config::max_connections`.
    live: Arc<AtomicUsize>,
}

impl TcpSide {
    /// Binds `host_port`. Refuses, before binding, a configuration with neither TLS nor the
    /// plain-TCP opt-in, and plain TCP on an address other than loopback.
    pub(super) fn bind(host_port: &str, config: Config, live: Arc<AtomicUsize>) -> Result<TcpSide> {
        if config.tls.is_none() && !config.plain_tcp_on_loopback {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot listen on tcp://{host_port}: the TCP carrier needs TLS, and the \
                     configuration has none: set Config::tls(Tls::from_pem(certificate, key, \
                     trusted_ca)) (or, for processes of this host only, \
                     Config::danger_plain_tcp_on_loopback())"
                ),
            ));
        }
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
            live,
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
            let mut started = false;
            while self.handshakes.len() < MAX_HANDSHAKES {
                match self.listener.poll_accept(cx) {
                    Poll::Ready(Ok((stream, peer))) => {
                        let config = self.config.clone();
                        let permit = match config.max_connections {
                            Some(max) => ConnectionPermit::try_new(&self.live, max).ok_or(max),
                            None => Err(0),
                        };
                        self.handshakes
                            .spawn(handshake(stream, peer, config, permit));
                        started = true;
                    }
                    Poll::Ready(Err(e)) if super::transient_accept_error(&e) => {}
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
            if !started {
                return Poll::Pending;
            }
        }
    }
}

/// The TLS and protocol handshakes of one accepted connection. `permit` is its place under
/// `Config::max_connections`: `Err(max)` if the listener is full (the client is told why),
/// `Err(0)` if there is no limit.
async fn handshake(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    config: Config,
    permit: std::result::Result<ConnectionPermit, usize>,
) -> Result<Connection> {
    // A client starts TLS as soon as it is connected: one that does not is dropped within
    // the HELLO timeout, so that silent connections cannot hold the handshake slots.
    let tls_time = config.hello_timeout.min(config.handshake_timeout);
    let (carrier, info) = tokio::time::timeout(tls_time, crate::tcp::accept(stream, peer, &config))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "the TLS handshake with {peer} did not finish within {tls_time:?} \
                     (Config::hello_timeout)"
                ),
            )
        })??;
    let permit = match permit {
        Ok(permit) => Some(permit),
        Err(0) => None,
        Err(max) => {
            let reason = format!(
                "the listener already has {max} connections, the limit set with \
                 Config::max_connections; try again later"
            );
            crate::handshake::refuse_remote(carrier, ErrorCode::Limit, &reason).await;
            return Err(Error::limit(format!("refused {info}: {reason}")));
        }
    };
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let shared = crate::handshake::handshake_remote(carrier, info, &config, deadline).await?;
    Ok(Connection::accepted(shared, permit))
}
