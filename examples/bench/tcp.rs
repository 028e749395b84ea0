//! The TCP rows of the throughput table, over the loopback interface (`127.0.0.1`):
//! `tokio-pvm tcp+tls` (a [`tokio_pvm::Connection`] at `tcp://127.0.0.1:PORT`, mutual TLS
//! through `Config::tls`), `tcp+LengthDelimitedCodec` (`tokio::net::TcpStream` with
//! `TCP_NODELAY`, framed as the Unix row is) and `tcp+tls+LengthDelimitedCodec` (the same
//! inside tokio-rustls, with mutual TLS set up as `tokio_pvm::Tls::from_pem` sets it up). Here
//! are both sides: the certificates the parent makes ([`Certs`]), what it starts and reads
//! ([`run_tcp`]), and the children's roles (`pvm-tcp-recv`, `pvm-tcp-send`, `tcp-recv`,
//! `tcp-send`, `tcp-tls-recv`, `tcp-tls-send`), which take `ADDR SIZE COUNT FLAVOR DATA`, and
//! the TLS roles `CERTS` after (the directory of [`Certs`]).
//!
//! The roles do what the Unix roles of `child.rs` do, with the same producer, checker and
//! clock: the sender builds its fresh source (`SOURCE`), connects, `feed`s every message and
//! `close()`s; the receiver checks every message until the stream ends (`DONE`). Only the
//! listening differs: the receiver binds `ADDR` with port 0, so that the system chooses a free
//! port, and says `READY ADDR` with the address it is bound at, which the parent gives the
//! sender as its `ADDR`.
//!
//! TLS: rustls with the `ring` provider and its safe default protocol versions (TLS 1.3 is
//! what two rustls peers agree on). Both sides present a certificate, both signed by one
//! authority, which both trust; the server requires the client's
//! (`WebPkiClientVerifier`), the client checks that the server's names `127.0.0.1`. The parent
//! makes the authority and both certificates (ECDSA P-256, with rcgen) once per run, before
//! the first measurement, and writes them as PEM files that the children read: nothing of
//! that is timed. A child reads its files and builds its TLS configuration before it
//! connects or accepts (outside the clock, inside the CPU time, as the handshake is).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_pvm::{Address, Config, Connection, Listener, Tls};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::Framed;

use crate::child::{
    Data, Flavor, StreamArgs, codec, feed_all, make_producer, pvm_config, receive_all,
};
use crate::spawn::{Group, unique_name};
use crate::{Reported, Transport, path_arg, run_stream};

/// A TCP row of the throughput table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpRow {
    /// `tokio_pvm::Connection` over its TCP carrier, inside mutual TLS.
    Pvm,
    /// `tokio::net::TcpStream` + `LengthDelimitedCodec`.
    Plain,
    /// `tokio::net::TcpStream` inside tokio-rustls (mutual TLS) + `LengthDelimitedCodec`.
    Tls,
}

impl TcpRow {
    const ALL: [TcpRow; 3] = [TcpRow::Pvm, TcpRow::Plain, TcpRow::Tls];

    /// The row's name for `--only`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            TcpRow::Pvm => "pvm-tcp",
            TcpRow::Plain => "tcp",
            TcpRow::Tls => "tcp-tls",
        }
    }

    /// The row's name in the tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            TcpRow::Pvm => "tokio-pvm tcp+tls",
            TcpRow::Plain => "tcp+LengthDelimitedCodec",
            TcpRow::Tls => "tcp+tls+LengthDelimitedCodec",
        }
    }

    /// The receiver's and the sender's child roles.
    fn roles(self) -> (&'static str, &'static str) {
        match self {
            TcpRow::Pvm => ("pvm-tcp-recv", "pvm-tcp-send"),
            TcpRow::Plain => ("tcp-recv", "tcp-send"),
            TcpRow::Tls => ("tcp-tls-recv", "tcp-tls-send"),
        }
    }

    /// What the receiver binds: loopback, port 0 (the system chooses).
    fn bind(self) -> &'static str {
        match self {
            TcpRow::Pvm => "tcp://127.0.0.1:0",
            TcpRow::Plain | TcpRow::Tls => "127.0.0.1:0",
        }
    }

    /// Whether the row needs the certificates.
    fn tls(self) -> bool {
        self != TcpRow::Plain
    }
}

// ----- the parent's side -------------------------------------------------------------------

/// The TLS rows' certificates, as PEM files in a directory of their own in the temporary
/// directory (named after this process, readable by its user only, removed on drop):
/// `ca.pem`, the authority both sides trust; `server.pem` and `server.key`, the receiver's
/// certificate and key; `client.pem` and `client.key`, the sender's. Both certificates name
/// `localhost` and `127.0.0.1`.
pub(crate) struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// The certificates, made now if any of `rows` needs them (untimed: before the first
    /// measurement).
    pub(crate) fn for_rows(rows: &[Transport]) -> Result<Option<Certs>, String> {
        let tls = |t: &Transport| matches!(t, Transport::Tcp(row) if row.tls());
        if !rows.iter().any(tls) {
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(unique_name("tokio-pvm-bench-certs"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // From here on, dropping `certs` removes the directory, whatever fails.
        let certs = Certs { dir };
        certs
            .write()
            .map_err(|e| format!("making the TLS certificates: {e}"))?;
        Ok(Some(certs))
    }

    /// Makes the authority and both certificates, and writes them.
    fn write(&self) -> Result<(), String> {
        let err = |e: rcgen::Error| e.to_string();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tokio-pvm bench CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let ca = params.self_signed(&key).map_err(err)?;
        self.put("ca.pem", &ca.pem())?;
        let issuer = rcgen::Issuer::new(params, key);
        for side in [Side::Server, Side::Client] {
            let mut params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .map_err(err)?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                format!("tokio-pvm bench {}", side.name()),
            );
            let key = rcgen::KeyPair::generate().map_err(err)?;
            let cert = params.signed_by(&key, &issuer).map_err(err)?;
            let (cert_file, key_file) = side.files();
            self.put(cert_file, &cert.pem())?;
            self.put(key_file, &key.serialize_pem())?;
        }
        Ok(())
    }

    fn put(&self, name: &str, pem: &str) -> Result<(), String> {
        let path = self.dir.join(name);
        std::fs::write(&path, pem).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The children of one measurement of a TCP row, and what they reported: the same sequence
/// as the Unix row's (see `run_stream`), fresh data, both children on the default flavor.
pub(crate) fn run_tcp(
    exe: &Path,
    row: TcpRow,
    size: usize,
    messages: u64,
    certs: Option<&Certs>,
    timeout: Duration,
) -> Result<Reported, String> {
    let data = Data::Fresh;
    let mut args = vec![
        row.bind().to_owned(),
        size.to_string(),
        messages.to_string(),
        Flavor::Spawned.arg().to_owned(),
        data.arg().to_owned(),
    ];
    if row.tls() {
        let certs = certs.ok_or("the certificates of the TLS rows were not made")?;
        args.push(path_arg(&certs.dir)?);
    }
    run_stream(Group::new(exe, timeout), row.roles(), args, data, messages)
}

// ----- the children ------------------------------------------------------------------------

/// Runs TCP role `role` with its arguments.
pub(crate) fn run_child(role: &str, args: &[String]) -> Result<(), String> {
    let Some(row) = TcpRow::ALL
        .into_iter()
        .find(|r| r.roles().0 == role || r.roles().1 == role)
    else {
        return Err(format!("unknown child role {role:?}"));
    };
    let receiver = row.roles().0 == role;
    let side = if receiver { Side::Server } else { Side::Client };
    let (a, certs) = match (row.tls(), args) {
        (false, _) => (StreamArgs::parse(role, args)?, None),
        (true, [stream @ .., certs]) if stream.len() == 5 => {
            (StreamArgs::parse(role, stream)?, Some(Path::new(certs)))
        }
        (true, _) => {
            return Err(format!(
                "{role} takes ADDR SIZE COUNT FLAVOR DATA CERTS, got {args:?}"
            ));
        }
    };
    if a.data == Data::Loan {
        return Err(format!(
            "{role} does not loan: a TCP connection carries every message inline"
        ));
    }
    match (row, certs) {
        (TcpRow::Pvm, Some(certs)) => {
            let config = pvm_config(a.size, a.data).tls(pvm_tls(certs, side)?);
            if receiver {
                a.flavor.run(pvm_recv(a, config))
            } else {
                a.flavor.run(pvm_send(a, config))
            }
        }
        (TcpRow::Tls, Some(certs)) if receiver => {
            let acceptor = TlsAcceptor::from(server_config(certs)?);
            a.flavor.run(tls_recv(a, acceptor))
        }
        (TcpRow::Tls, Some(certs)) => {
            let connector = TlsConnector::from(client_config(certs)?);
            a.flavor.run(tls_send(a, connector))
        }
        (TcpRow::Plain, _) if receiver => a.flavor.run(tcp_recv(a)),
        (TcpRow::Plain, _) => a.flavor.run(tcp_send(a)),
        (TcpRow::Pvm | TcpRow::Tls, None) => unreachable!("the TLS roles have CERTS"),
    }
}

/// Which end of the connection a child is, for TLS: the receiver is the server.
#[derive(Debug, Clone, Copy)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }

    /// The side's certificate and key files in the certificate directory.
    fn files(self) -> (&'static str, &'static str) {
        match self {
            Side::Server => ("server.pem", "server.key"),
            Side::Client => ("client.pem", "client.key"),
        }
    }
}

fn read(certs: &Path, name: &str) -> Result<Vec<u8>, String> {
    let path = certs.join(name);
    std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `side`'s certificate, its key and the authority, as PEM.
fn pems(certs: &Path, side: Side) -> Result<[Vec<u8>; 3], String> {
    let (cert, key) = side.files();
    Ok([
        read(certs, cert)?,
        read(certs, key)?,
        read(certs, "ca.pem")?,
    ])
}

/// tokio-pvm's TLS for `side`.
fn pvm_tls(certs: &Path, side: Side) -> Result<Tls, String> {
    let [cert, key, ca] = pems(certs, side)?;
    Tls::from_pem(&cert, &key, &ca).map_err(|e| e.to_string())
}

/// A side's certificate chain and key, and the authority as its root store: parsed PEM.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
}

impl Identity {
    fn read(certs: &Path, side: Side) -> Result<Identity, String> {
        let [cert, key, ca] = pems(certs, side)?;
        let (cert_file, key_file) = side.files();
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{cert_file}: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("{key_file}: {e}"))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(ca.map_err(|e| format!("ca.pem: {e}"))?)
                .map_err(|e| format!("ca.pem: {e}"))?;
        }
        Ok(Identity { chain, key, roots })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The receiver's rustls configuration: its certificate, and client certificates required,
/// signed by the authority.
fn server_config(certs: &Path) -> Result<Arc<ServerConfig>, String> {
    let Identity { chain, key, roots } = Identity::read(certs, Side::Server)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("the client verifier: {e}"))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the server certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// The sender's rustls configuration: the authority as its only root, and its certificate.
fn client_config(certs: &Path) -> Result<Arc<ClientConfig>, String> {
    let Identity { chain, key, roots } = Identity::read(certs, Side::Client)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// Says `READY ADDR`: the listener is bound at `addr`, which the sender connects to.
fn ready_at(addr: impl std::fmt::Display) {
    println!("READY {addr}");
}

async fn pvm_recv(a: StreamArgs, config: Config) -> Result<(), String> {
    let listener = Listener::bind_with(a.path.as_str(), config)
        .map_err(|e| format!("binding {}: {e}", a.path))?;
    let addr = listener
        .local_addrs()
        .into_iter()
        .find(|addr| matches!(addr, Address::Tcp(_)))
        .ok_or_else(|| format!("the listener bound at {} has no TCP address", a.path))?;
    ready_at(&addr);
    let mut conn = listener
        .accept()
        .await
        .map_err(|e| format!("accepting on {addr}: {e}"))?;
    drop(listener);
    receive_all(&mut conn, &a).await
}

async fn pvm_send(a: StreamArgs, config: Config) -> Result<(), String> {
    let mut producer = make_producer(a.data, a.size)?;
    let mut conn = Connection::connect_with(a.path.as_str(), config)
        .await
        .map_err(|e| format!("connecting to {}: {e}", a.path))?;
    feed_all(&mut conn, a.count, |c| producer.next(Some(c))).await
}

/// Binds a TCP listener at `addr`, says `READY` with the address it is bound at, and accepts
/// the one connection, with `TCP_NODELAY`.
async fn tcp_accept(addr: &str) -> Result<TcpStream, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("the address of the listener at {addr}: {e}"))?;
    ready_at(bound);
    let (stream, _) = listener
        .accept()
        .await
        .map_err(|e| format!("accepting on {bound}: {e}"))?;
    nodelay(&stream)?;
    Ok(stream)
}

/// Connects to `addr`, with `TCP_NODELAY`.
async fn tcp_connect(addr: &str) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    nodelay(&stream)?;
    Ok(stream)
}

fn nodelay(stream: &TcpStream) -> Result<(), String> {
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY: {e}"))
}

async fn tcp_recv(a: StreamArgs) -> Result<(), String> {
    let mut framed = Framed::new(tcp_accept(&a.path).await?, codec(a.size));
    receive_all(&mut framed, &a).await
}

async fn tcp_send(a: StreamArgs) -> Result<(), String> {
    let mut producer = make_producer(a.data, a.size)?;
    let mut framed = Framed::new(tcp_connect(&a.path).await?, codec(a.size));
    feed_all(&mut framed, a.count, |_| producer.next(None)).await
}

async fn tls_recv(a: StreamArgs, acceptor: TlsAcceptor) -> Result<(), String> {
    let stream = tcp_accept(&a.path).await?;
    let stream = acceptor
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake with the sender: {e}"))?;
    let mut framed = Framed::new(stream, codec(a.size));
    receive_all(&mut framed, &a).await?;
    // The sender waits for this side's end (see `tls_send`): TLS's close_notify, then FIN.
    SinkExt::<Bytes>::close(&mut framed)
        .await
        .map_err(|e| format!("closing after the last message: {e}"))
}

async fn tls_send(a: StreamArgs, connector: TlsConnector) -> Result<(), String> {
    let mut producer = make_producer(a.data, a.size)?;
    let stream = tcp_connect(&a.path).await?;
    // The host of ADDR: the server's certificate must name it.
    let host = a.path.rsplit_once(':').map_or(a.path.as_str(), |(h, _)| h);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))?;
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with the receiver at {}: {e}", a.path))?;
    let mut framed = Framed::new(stream, codec(a.size));
    feed_all(&mut framed, a.count, |_| producer.next(None)).await?;
    // Read until the receiver's end of stream before exiting. The server sends TLS 1.3
    // session tickets after the handshake, which this side, only writing, never reads; a
    // socket closed with unread bytes resets the connection (RST), and a reset can destroy
    // the last messages before the receiver has read them. (The clock has stopped: the
    // receiver times up to the last message's arrival.)
    match framed.next().await {
        None => Ok(()),
        Some(Ok(frame)) => Err(format!(
            "the receiver sent a frame of {} bytes",
            frame.len()
        )),
        Some(Err(e)) => Err(format!("waiting for the receiver's end of stream: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_make_both_sides_tls() {
        let rows = [Transport::Tcp(TcpRow::Plain)];
        assert!(Certs::for_rows(&rows).unwrap().is_none());
        let certs = Certs::for_rows(&[Transport::Tcp(TcpRow::Tls)])
            .unwrap()
            .expect("the TLS row needs certificates");
        let dir = certs.dir.clone();
        for side in [Side::Server, Side::Client] {
            pvm_tls(&dir, side).unwrap();
        }
        server_config(&dir).unwrap();
        client_config(&dir).unwrap();
        drop(certs);
        assert!(!dir.exists());
    }
}
