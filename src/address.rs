//! Where to listen or connect: a Unix socket path, or a TCP host and port.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a [`Listener`](crate::Listener) listens or a [`Connection`](crate::Connection)
/// connects. The same program runs on either carrier; only the address changes.
///
/// - `unix:/run/app.sock`, or any plain path: a Unix socket between processes of this host,
///   where the receiver pulls payloads out of the sender's memory.
/// - `tcp://host:port`: TCP (with the default `tcp` feature), where every message travels
///   inline through the same frames, inside TLS (see [`Config::tls`](crate::Config::tls)).
///
/// A [`Path`] or [`PathBuf`] is always a Unix socket; a string is parsed by its prefix (a
/// socket file whose name starts with `tcp://` needs the `unix:` prefix or a `Path`).
///
/// ```
/// use tokio_pvm::Address;
///
/// assert_eq!(Address::from("tcp://10.0.0.7:7000"), Address::Tcp("10.0.0.7:7000".into()));
/// assert_eq!(Address::from("unix:/run/app.sock"), Address::Unix("/run/app.sock".into()));
/// assert_eq!(Address::from("/run/app.sock"), Address::Unix("/run/app.sock".into()));
/// assert_eq!(Address::from("tcp://[::1]:7000").to_string(), "tcp://[::1]:7000");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port` (a name, an IPv4 address, or an IPv6 address in brackets).
    Tcp(String),
}

impl Address {
    /// The Unix socket path, if this is one.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Address::Unix(path) => Some(path),
            Address::Tcp(_) => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(host_port) => write!(f, "tcp://{host_port}"),
        }
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Address {
        if let Some(rest) = s.strip_prefix("tcp://") {
            Address::Tcp(rest.to_owned())
        } else if let Some(rest) = s.strip_prefix("unix:") {
            Address::Unix(PathBuf::from(rest))
        } else {
            Address::Unix(PathBuf::from(s))
        }
    }
}

impl From<String> for Address {
    fn from(s: String) -> Address {
        Address::from(s.as_str())
    }
}

impl From<&String> for Address {
    fn from(s: &String) -> Address {
        Address::from(s.as_str())
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Address {
        Address::Unix(path.to_owned())
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Address {
        Address::Unix(path)
    }
}

impl From<&PathBuf> for Address {
    fn from(path: &PathBuf) -> Address {
        Address::Unix(path.clone())
    }
}

impl From<&Address> for Address {
    fn from(addr: &Address) -> Address {
        addr.clone()
    }
}
