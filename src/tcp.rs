//! The TCP carrier: a connection's frames over TCP, inside TLS unless the configuration opts
//! out on loopback (see [`Config::tls`](crate::Config::tls)).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::carrier::Carrier;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::{PeerInfo, x509};

/// A connected TCP stream, plain (loopback only) or inside TLS.
#[derive(Debug)]
pub(crate) enum TcpCarrier {
    /// No encryption, no authentication: only between two processes of one host, and only
    /// when both opted in.
    Plain(TcpStream),
    /// TLS, authenticated both ways.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsFd for TcpCarrier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            TcpCarrier::Plain(s) => s.as_fd(),
            TcpCarrier::Tls(s) => s.get_ref().0.as_fd(),
        }
    }
}

impl AsyncRead for TcpCarrier {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpCarrier::Plain(s) => Pin::new(s).poll_read(cx, buf),
            TcpCarrier::Tls(s) => match Pin::new(&mut **s).poll_read(cx, buf) {
                // The connection ended without TLS's close_notify: a cut connection, or a
                // peer that exited. The protocol tells a clean end by its own CLOSE frame
                // and reports a missing one as the peer gone, so this is an end of stream.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for TcpCarrier {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TcpCarrier::Plain(s) => Pin::new(s).poll_write(cx, buf),
            TcpCarrier::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpCarrier::Plain(s) => Pin::new(s).poll_flush(cx),
            TcpCarrier::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TcpCarrier::Plain(s) => Pin::new(s).poll_shutdown(cx),
            TcpCarrier::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

// ----- TLS settings ------------------------------------------------------------------------

/// TLS for the TCP carrier: this side's certificate and key, and the certificate authorities
/// whose certificates it accepts. Both sides present a certificate (mutual TLS), and a
/// peer's certificate is its identity
/// ([`PeerInfo::certificate_subject`](crate::PeerInfo::certificate_subject)), as the kernel's
/// credentials are between processes of one host.
///
/// Set it on both sides with [`Config::tls`](crate::Config::tls). The client checks that the
/// server's certificate names the host it connected to (the `host` of `tcp://host:port`, or
/// [`server_name`](Tls::server_name)); the server checks that the client's certificate is
/// signed by a trusted authority. rustls does the work, with the `ring` provider, TLS 1.2
/// and 1.3.
///
/// - One `Tls` serves both roles, so a node's certificate must allow both (extended key
///   usages `serverAuth` and `clientAuth`, or none).
/// - Trust a private authority that signs only your nodes: every certificate it signs is let
///   in, and there is no further authorization (check
///   [`PeerInfo::certificate_subject`](crate::PeerInfo::certificate_subject) or the
///   certificate itself after `accept` if some nodes may do less). A public CA bundle would
///   let in anyone with a certificate from it.
/// - Revocation lists are not checked: rotate the authority, or keep certificates short-lived.
///
/// ```no_run
/// # fn demo() -> Result<(), tokio_pvm::Error> {
/// use tokio_pvm::{Config, Tls};
///
/// let tls = Tls::from_pem(
///     &std::fs::read("/etc/app/node.crt").unwrap(), // this side's chain, leaf first
///     &std::fs::read("/etc/app/node.key").unwrap(), // its private key
///     &std::fs::read("/etc/app/ca.crt").unwrap(),   // the authorities to trust
/// )?;
/// let config = Config::new().tls(tls);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Mutual TLS from PEM text: `certificate_chain` (this side's certificate first, then
    /// any intermediates), its `private_key` (PKCS#8, PKCS#1 or SEC1), and `trusted`, the
    /// certificates of the authorities that sign the peers' certificates.
    ///
    /// Fails with [`ErrorKind::InvalidInput`] naming what is missing or malformed.
    pub fn from_pem(certificate_chain: &[u8], private_key: &[u8], trusted: &[u8]) -> Result<Tls> {
        let bad = |what: &str, e: &dyn fmt::Display| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("Tls::from_pem: {what}: {e}"),
            )
        };
        let chain = CertificateDer::pem_slice_iter(certificate_chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("the certificate chain is not PEM", &e))?;
        if chain.is_empty() {
            return Err(bad("the certificate chain", &"no CERTIFICATE block found"));
        }
        let key = PrivateKeyDer::from_pem_slice(private_key)
            .map_err(|e| bad("no private key found (PKCS#8, PKCS#1 or SEC1 PEM)", &e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(trusted) {
            let ca = ca.map_err(|e| bad("the trusted certificates are not PEM", &e))?;
            roots
                .add(ca)
                .map_err(|e| bad("a trusted certificate cannot be used", &e))?;
        }
        if roots.is_empty() {
            return Err(bad(
                "the trusted certificates",
                &"no CERTIFICATE block found: without one, no peer can be verified",
            ));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad("the client verifier", &e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("the protocol versions", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad("the certificate and key do not go together", &e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("the protocol versions", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("the certificate and key do not go together", &e))?;
        Ok(Tls::from_rustls(Arc::new(client), Arc::new(server)))
    }

    /// From rustls configurations built elsewhere (other roots, verifiers or key stores).
    /// For the identity guarantees above, the server configuration should require client
    /// certificates.
    pub fn from_rustls(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Tls {
        Tls {
            client,
            server,
            server_name: None,
        }
    }

    /// The name the server's certificate must have, instead of the host of the address
    /// (connecting by IP address to a server whose certificate has only a DNS name, say).
    pub fn server_name(mut self, name: &str) -> Result<Tls> {
        let name = ServerName::try_from(name.to_owned()).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("Tls::server_name: {name:?} is not a DNS name or IP address: {e}"),
            )
        })?;
        self.server_name = Some(name);
        Ok(self)
    }
}

// ----- connecting and accepting ------------------------------------------------------------

/// Connects to `host_port` and completes TLS (or checks that plain TCP is allowed), the TCP
/// options set. Returns the carrier and who the peer is.
pub(crate) async fn connect(host_port: &str, config: &Config) -> Result<(Carrier, PeerInfo)> {
    let mode = security(config, host_port)?;
    let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(host_port))
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "connecting to tcp://{host_port} did not finish within {:?} \
                     (Config::connect_timeout): the host is unreachable or drops the packets",
                    config.connect_timeout
                ),
            )
        })?
        .map_err(|e| Error::io(&format!("connecting to tcp://{host_port}"), e))?;
    set_options(&stream, config)?;
    let addr = stream
        .peer_addr()
        .map_err(|e| Error::io("reading the peer's address", e))?;
    let tls = match mode {
        Security::Plain => return plain(stream, addr, host_port),
        Security::Tls(tls) => tls,
    };
    let name = match &tls.server_name {
        Some(name) => name.clone(),
        None => ServerName::try_from(host_of(host_port).to_owned()).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "tcp://{host_port}: the host is not a DNS name or IP address a certificate \
                     can name ({e}); set Tls::server_name"
                ),
            )
        })?,
    };
    let stream = TlsConnector::from(tls.client.clone())
        .connect(name, stream)
        .await
        .map_err(|e| tls_error(e, &format!("tcp://{host_port}")))?;
    let certificate = peer_certificate(stream.get_ref().1.peer_certificates())
        .ok_or_else(|| no_certificate(&format!("tcp://{host_port}")))?;
    Ok((
        Carrier::Tcp(TcpCarrier::Tls(Box::new(TlsStream::Client(stream)))),
        PeerInfo::remote(addr, Some(certificate)),
    ))
}

/// Completes TLS on a socket a listener accepted (or checks that plain TCP is allowed).
pub(crate) async fn accept(
    stream: TcpStream,
    addr: SocketAddr,
    config: &Config,
) -> Result<(Carrier, PeerInfo)> {
    set_options(&stream, config)?;
    let tls = match security(config, &addr.to_string())? {
        Security::Plain => return plain(stream, addr, &addr.to_string()),
        Security::Tls(tls) => tls,
    };
    let stream = TlsAcceptor::from(tls.server.clone())
        .accept(stream)
        .await
        .map_err(|e| tls_error(e, &format!("the client at {addr}")))?;
    let certificate = peer_certificate(stream.get_ref().1.peer_certificates())
        .ok_or_else(|| no_certificate(&format!("the client at {addr}")))?;
    Ok((
        Carrier::Tcp(TcpCarrier::Tls(Box::new(TlsStream::Server(stream)))),
        PeerInfo::remote(addr, Some(certificate)),
    ))
}

pub(crate) enum Security<'a> {
    Tls(&'a Tls),
    Plain,
}

/// TLS, or plain TCP if the configuration opted out; neither is an error naming both fixes.
pub(crate) fn security<'a>(config: &'a Config, host_port: &str) -> Result<Security<'a>> {
    match (&config.tls, config.plain_tcp_on_loopback) {
        (Some(tls), _) => Ok(Security::Tls(tls)),
        (None, true) => Ok(Security::Plain),
        (None, false) => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "tcp://{host_port}: the TCP carrier needs TLS, and this side has none: set \
                 Config::tls(Tls::from_pem(certificate, key, trusted_ca)) on both sides (or, \
                 between processes of one host only, \
                 Config::danger_plain_tcp_on_loopback())"
            ),
        )),
    }
}

/// A plain TCP carrier, if both ends are loopback addresses.
fn plain(stream: TcpStream, addr: SocketAddr, what: &str) -> Result<(Carrier, PeerInfo)> {
    check_loopback(&stream, what)?;
    Ok((
        Carrier::Tcp(TcpCarrier::Plain(stream)),
        PeerInfo::remote(addr, None),
    ))
}

/// Plain TCP only between two loopback addresses.
fn check_loopback(stream: &TcpStream, what: &str) -> Result<()> {
    let local = stream.local_addr().map(|a| a.ip().is_loopback());
    let peer = stream.peer_addr().map(|a| a.ip().is_loopback());
    match (local, peer) {
        (Ok(true), Ok(true)) => Ok(()),
        _ => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{what}: plain TCP (Config::danger_plain_tcp_on_loopback) is allowed only \
                 between loopback addresses (127.0.0.0/8, ::1), and this connection is not; \
                 use Config::tls"
            ),
        )),
    }
}

/// `TCP_NODELAY` and keep-alive as `config` says.
fn set_options(stream: &TcpStream, config: &Config) -> Result<()> {
    let io = |what: &str, e: io::Error| Error::io(&format!("setting {what} on a TCP socket"), e);
    stream
        .set_nodelay(config.tcp_nodelay)
        .map_err(|e| io("TCP_NODELAY", e))?;
    if let Some(idle) = config.tcp_keepalive {
        let fd = stream.as_fd();
        let secs = u32::try_from(idle.as_secs().max(1)).unwrap_or(u32::MAX);
        let set = || -> nix::Result<()> {
            setsockopt(&fd, sockopt::KeepAlive, &true)?;
            setsockopt(&fd, sockopt::TcpKeepIdle, &secs)?;
            // Probes every tenth of the idle time (at least 1 s), three unanswered probes
            // and the connection is declared dead.
            setsockopt(&fd, sockopt::TcpKeepInterval, &(secs / 10).max(1))?;
            setsockopt(&fd, sockopt::TcpKeepCount, &3)?;
            // Keep-alive probes only an idle connection; a peer whose host vanished while
            // data was unacknowledged is caught by this instead (milliseconds: the same
            // bound as the probes', not the kernel's 15 minutes of retransmissions).
            let probes_ms = u64::from(secs) * 1000 + 3 * u64::from((secs / 10).max(1)) * 1000;
            setsockopt(
                &fd,
                sockopt::TcpUserTimeout,
                &u32::try_from(probes_ms).unwrap_or(u32::MAX),
            )
        };
        set().map_err(|e| io("keep-alive", e.into()))?;
    }
    Ok(())
}

/// The host part of `host:port` (without the brackets of an IPv6 address).
fn host_of(host_port: &str) -> &str {
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A TLS peer that presented no certificate (a `Tls::from_rustls` configuration that does
/// not require one): refused, since its certificate is its identity.
fn no_certificate(peer: &str) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "TLS handshake with {peer}: it presented no certificate, and over TCP a peer's \
             certificate is its identity; configure it with Tls::from_pem (or require client \
             certificates in the rustls ServerConfig given to Tls::from_rustls)"
        ),
    )
}

/// The peer's end-entity certificate and its subject.
fn peer_certificate(chain: Option<&[CertificateDer<'_>]>) -> Option<(Arc<[u8]>, Arc<str>)> {
    let leaf = chain?.first()?;
    let subject = x509::subject(leaf).unwrap_or_else(|| "(unreadable subject)".to_owned());
    Some((Arc::from(leaf.as_ref()), Arc::from(subject)))
}

/// The rustls error inside an I/O error from tokio-rustls, if that is what it is.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A failed TLS handshake, with the cause in words and the fix.
fn tls_error(e: io::Error, peer: &str) -> Error {
    match rustls_error(&e) {
        Some(err) => refusal(err, peer),
        None => Error::io(&format!("TLS handshake with {peer}"), e),
    }
}

/// An error of the protocol's handshake that TLS caused: under TLS 1.3 a server refuses the
/// client's certificate after the client's side of the TLS handshake has finished, so the
/// client learns of it on its first read.
pub(crate) fn explain(err: Error, peer: &str, tls: bool) -> Error {
    match err.io_source().and_then(rustls_error) {
        Some(e) => refusal(e, peer),
        // A TLS server drops a client that does not start TLS: over plain TCP, a peer that
        // hangs up during the handshake is most likely one.
        None if !tls && err.is_peer_gone() => Error::new(
            ErrorKind::PeerGone,
            format!(
                "{err} (if it uses TLS, this side needs Config::tls too: plain TCP and TLS do \
                 not meet)"
            ),
        ),
        None => err,
    }
}

/// A refusal by TLS (either side's), with the cause in words and the fix.
fn refusal(err: &rustls::Error, peer: &str) -> Error {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    let why = match err {
        rustls::Error::NoCertificatesPresented => {
            "it presented no certificate; mutual TLS needs one on both sides: give it \
             Config::tls(Tls::from_pem(..)) with its own certificate"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => {
            "its certificate is not signed by an authority this side trusts; add its CA to \
             the trusted certificates given to Tls::from_pem"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "its certificate has expired; renew it".to_owned()
        }
        rustls::Error::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
            "its certificate is not valid yet (check both clocks)".to_owned()
        }
        rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        ) => "its certificate does not name the host connected to; connect by a name the \
              certificate has, or set Tls::server_name"
            .to_owned(),
        rustls::Error::AlertReceived(alert) => {
            let fix = match alert {
                Alert::CertificateRequired => "give this side a certificate (Tls::from_pem)",
                Alert::UnknownCA | Alert::BadCertificate => {
                    "this side's certificate must be signed by an authority the peer trusts"
                }
                Alert::CertificateExpired => "this side's certificate has expired; renew it",
                _ => "its log says why",
            };
            format!("it refused this side's TLS handshake ({alert:?}): {fix}")
        }
        rustls::Error::InvalidMessage(_) => {
            "it does not speak TLS: both sides of a TCP connection need Config::tls (or both \
             Config::danger_plain_tcp_on_loopback), or it is not a tokio-pvm endpoint"
                .to_owned()
        }
        other => format!("{other}"),
    };
    Error::new(
        ErrorKind::PermissionDenied,
        format!("TLS handshake with {peer} failed: {why}"),
    )
}
