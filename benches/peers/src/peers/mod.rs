//! The transports under test, one module each, and what their child processes are told.
//!
//! Every transport has the same four roles, run in child processes:
//!
//! * `recv`: sets up the receiving end (a listener, a one-shot server, a service), prints
//!   `READY ADDR` (what the sender needs to reach it), then checks `COUNT` messages with a
//!   [`Checker`](crate::payload::Checker) and prints its `DONE` line.
//! * `send`: reaches `ADDR` and sends `COUNT` fresh messages (see [`crate::payload`]).
//! * `echo`: like `recv`, then answers each of `COUNT` messages with a fresh message of its
//!   own carrying the same sequence number.
//! * `ping`: sends a fresh message, waits for the answer, checks it, `WARMUP + COUNT` times;
//!   prints the `LAT` line of the timed ones.
//!
//! A child whose transport needs it alive until the peer has read everything waits, after
//! its last message, until the orchestrator closes its standard input ([`linger`]).
//!
//! Adding a transport: a variant of [`Peer`], its id and label, a module with a
//! `run(role, ..., &Job)`, and a line in [`run_child`].

pub(crate) mod iceoryx;
pub(crate) mod ipc;
pub(crate) mod pvm;
pub(crate) mod unix;

use std::io::Read;

use crate::flavor::Flavor;

pub(crate) use iceoryx::Wake;
pub(crate) use pvm::Lane;

/// One row of the tables: a transport and how it is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Pvm { lane: Lane, flavor: Flavor },
    Unix(Flavor),
    IpcChannel,
    Iceoryx2(Wake),
}

impl Peer {
    /// Rows of every message size, in table order: each tokio-pvm lane, then the peers.
    fn every_size() -> Vec<Peer> {
        let mut rows: Vec<Peer> = Lane::ALL
            .into_iter()
            .map(|lane| Peer::Pvm {
                lane,
                flavor: Flavor::Task,
            })
            .collect();
        rows.extend([
            Peer::Unix(Flavor::Task),
            Peer::IpcChannel,
            Peer::Iceoryx2(Wake::Event),
            Peer::Iceoryx2(Wake::Spin),
        ]);
        rows
    }

    /// The other runtime flavors of tokio-pvm (copy lane) and the Unix socket, in pairs.
    fn flavor_rows() -> Vec<Peer> {
        let mut rows = Vec::new();
        for flavor in [Flavor::CurrentThread, Flavor::BlockOn] {
            rows.push(Peer::Pvm {
                lane: Lane::Copy,
                flavor,
            });
            rows.push(Peer::Unix(flavor));
        }
        rows
    }

    /// The throughput rows of one message size: every transport, and at [`FLAVOR_SIZE`] the
    /// other two runtime flavors of tokio-pvm and the Unix socket, in pairs.
    pub(crate) fn throughput_rows(size: usize) -> Vec<Peer> {
        let mut rows = Peer::every_size();
        if size == FLAVOR_SIZE {
            rows.extend(Peer::flavor_rows());
        }
        rows
    }

    /// The rows of the latency table (for each size).
    pub(crate) fn latency_rows() -> Vec<Peer> {
        Peer::every_size()
    }

    /// Every row that exists, for `--only` and for children.
    pub(crate) fn all() -> Vec<Peer> {
        let mut all = Peer::every_size();
        all.extend(Peer::flavor_rows());
        all
    }

    /// The short name used on the command line (`--only`) and to start children.
    pub(crate) fn id(self) -> String {
        let with = |base: &str, flavor: Flavor| match flavor.suffix() {
            "" => base.to_owned(),
            s => format!("{base}-{s}"),
        };
        match self {
            Peer::Pvm { lane, flavor } => with(lane.id(), flavor),
            Peer::Unix(flavor) => with("unix", flavor),
            Peer::IpcChannel => "ipc-channel".to_owned(),
            Peer::Iceoryx2(Wake::Event) => "iceoryx2-event".to_owned(),
            Peer::Iceoryx2(Wake::Spin) => "iceoryx2-spin".to_owned(),
        }
    }

    /// The row's name in the throughput table.
    pub(crate) fn label(self) -> String {
        let with = |base: &str, flavor: Flavor| match flavor.suffix() {
            "" => base.to_owned(),
            s => format!("{base} ({s})"),
        };
        match self {
            Peer::Pvm { lane, flavor } => with(lane.label(), flavor),
            Peer::Unix(flavor) => with("unix+LengthDelimitedCodec", flavor),
            Peer::IpcChannel => "ipc-channel".to_owned(),
            Peer::Iceoryx2(Wake::Event) => "iceoryx2 (event)".to_owned(),
            Peer::Iceoryx2(Wake::Spin) => "iceoryx2 (busy poll: 1 core spins)".to_owned(),
        }
    }

    /// The row's name in the latency table (where a busy-polling pair spins on both sides).
    pub(crate) fn latency_label(self) -> String {
        match self {
            Peer::Iceoryx2(Wake::Spin) => "iceoryx2 (busy poll: 2 cores spin)".to_owned(),
            other => other.label(),
        }
    }

    /// The row its "vs unix" ratio divides by: the Unix socket in the same runtime flavor.
    pub(crate) fn reference(self) -> Peer {
        match self {
            Peer::Pvm { flavor, .. } | Peer::Unix(flavor) => Peer::Unix(flavor),
            Peer::IpcChannel | Peer::Iceoryx2(_) => Peer::Unix(Flavor::Task),
        }
    }

    pub(crate) fn is_iceoryx2(self) -> bool {
        matches!(self, Peer::Iceoryx2(_))
    }

    /// Whether `--only NAME` selects this row: its id, or a prefix of it ending at a `-`
    /// (`tokio-pvm` selects every tokio-pvm row, `iceoryx2` both iceoryx2 rows).
    pub(crate) fn matches(self, name: &str) -> bool {
        let id = self.id();
        id == name
            || id
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('-'))
    }

    fn from_id(id: &str) -> Option<Peer> {
        Peer::all().into_iter().find(|p| p.id() == id)
    }
}

/// The message size at which every runtime flavor is measured.
pub(crate) const FLAVOR_SIZE: usize = 64;

/// What a child does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Recv,
    Send,
    Echo,
    Ping,
    /// iceoryx2 only: removes what dead nodes left behind.
    Cleanup,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Recv => "recv",
            Role::Send => "send",
            Role::Echo => "echo",
            Role::Ping => "ping",
            Role::Cleanup => "cleanup",
        }
    }

    fn from_name(name: &str) -> Option<Role> {
        [
            Role::Recv,
            Role::Send,
            Role::Echo,
            Role::Ping,
            Role::Cleanup,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

/// A child's arguments.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// `recv`/`echo`: a unique name to set up under (a socket path, a service name);
    /// `send`/`ping`: what the receiver printed after `READY`.
    pub(crate) addr: String,
    pub(crate) size: usize,
    /// Messages (`recv`, `send`), answers (`echo`: warm-up included) or timed round trips
    /// (`ping`).
    pub(crate) count: u64,
    /// `ping`: untimed round trips first.
    pub(crate) warmup: u64,
}

impl Job {
    /// The arguments after `--child` that run `role` of `peer` on this job.
    pub(crate) fn args(&self, peer: Peer, role: Role) -> Vec<String> {
        vec![
            peer.id(),
            role.name().to_owned(),
            self.addr.clone(),
            self.size.to_string(),
            self.count.to_string(),
            self.warmup.to_string(),
        ]
    }
}

/// Runs the child described by the arguments after `--child`.
pub(crate) fn run_child(args: &[String]) -> Result<(), String> {
    let [peer, role, addr, size, count, warmup] = args else {
        return Err(format!(
            "a child takes PEER ROLE ADDR SIZE COUNT WARMUP, got {args:?}"
        ));
    };
    let peer = Peer::from_id(peer).ok_or_else(|| format!("unknown peer {peer:?}"))?;
    let role = Role::from_name(role).ok_or_else(|| format!("unknown role {role:?}"))?;
    let number = |v: &str, what: &str| -> Result<u64, String> {
        v.parse().map_err(|_| format!("bad {what} {v:?}"))
    };
    let job = Job {
        addr: addr.clone(),
        size: number(size, "size")? as usize,
        count: number(count, "count")?,
        warmup: number(warmup, "warm-up count")?,
    };
    if role != Role::Cleanup && job.size < crate::payload::MIN_SIZE {
        return Err(format!(
            "messages need at least {} bytes",
            crate::payload::MIN_SIZE
        ));
    }
    match peer {
        Peer::Pvm { lane, flavor } => pvm::run(role, lane, flavor, job),
        Peer::Unix(flavor) => unix::run(role, flavor, job),
        Peer::IpcChannel => ipc::run(role, &job),
        Peer::Iceoryx2(wake) => iceoryx::run(role, wake, &job),
    }
}

/// Tells the orchestrator what the sender needs to reach this receiver.
pub(crate) fn ready(addr: &str) {
    println!("READY {addr}");
}

/// Waits until the orchestrator closes this process's standard input (it does once the
/// measurement's report is in).
pub(crate) fn linger() -> Result<(), String> {
    let mut rest = Vec::new();
    std::io::stdin()
        .read_to_end(&mut rest)
        .map(drop)
        .map_err(|e| format!("waiting for standard input to close: {e}"))
}

/// An error as text, with what was being done.
pub(crate) fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Like [`ctx`], with the context made only if there is an error: hot loops must not format a
/// string per message (that cost would be measured as the transport's).
pub(crate) fn ctx_with<E: std::fmt::Display, D: std::fmt::Display>(
    what: impl FnOnce() -> D,
) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_parse() {
        let all = Peer::all();
        for p in &all {
            assert_eq!(Peer::from_id(&p.id()), Some(*p));
        }
        let mut ids: Vec<String> = all.iter().map(|p| p.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
    }

    #[test]
    fn only_matches_prefixes_at_dashes() {
        let ct = Peer::Unix(Flavor::CurrentThread);
        assert!(ct.matches("unix"));
        assert!(ct.matches("unix-current_thread"));
        assert!(!ct.matches("uni"));
        assert!(Peer::Iceoryx2(Wake::Spin).matches("iceoryx2"));
        assert!(Peer::IpcChannel.matches("ipc"));
        assert!(!Peer::IpcChannel.matches("ipc-chan"));
    }
}
