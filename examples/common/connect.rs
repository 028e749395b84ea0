//! Connecting from the examples: wait for the listener to appear.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_pvm::{Config, Connection, Error};

/// How long to wait for a listener to appear at the socket path (the other example may start
/// a moment later).
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Connects to `path`, waiting up to [`CONNECT_WAIT`] for a listener to appear there.
pub(crate) async fn connect(path: &Path, config: Config) -> Result<Connection, Error> {
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut said = false;
    loop {
        match Connection::connect_with(path, config.clone()).await {
            Err(e) if no_listener(&e) && Instant::now() < deadline => {
                if !std::mem::replace(&mut said, true) {
                    eprintln!(
                        "no listener at {} yet; waiting up to {CONNECT_WAIT:?} for one",
                        path.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result,
        }
    }
}

fn no_listener(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|s| {
            matches!(
                s.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            )
        })
}
