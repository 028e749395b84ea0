//! Reading many processes, for `watch` and `export`.

use super::*;

/// The processes a repeating command reads.
#[derive(Debug)]
pub(crate) enum Targets {
    /// Every publishing process, discovered again at each tick.
    All,
    /// The named processes.
    Pids(Vec<i32>),
}

impl Targets {
    /// Every process if `pids` is empty, else those (each once).
    pub(crate) fn new(mut pids: Vec<i32>) -> Targets {
        if pids.is_empty() {
            return Targets::All;
        }
        pids.sort_unstable();
        pids.dedup();
        Targets::Pids(pids)
    }

    /// Whether the operator named the processes.
    pub(crate) fn named(&self) -> bool {
        matches!(self, Targets::Pids(_))
    }

    /// Reads every target: its manifest (again) and all of its blocks.
    pub(crate) fn read(&self, dirs: &[PathBuf]) -> Vec<Reading> {
        match self {
            Targets::All => Probe::discover_in(dirs)
                .processes
                .into_iter()
                .map(|info| Reading::of(Probe::from_info(info)))
                .collect(),
            Targets::Pids(pids) => pids
                .iter()
                .map(|&pid| match Probe::attach_in(dirs, pid) {
                    Ok(probe) => Reading::of(probe),
                    Err(e) => Reading::Missing(pid, e),
                })
                .collect(),
        }
    }

    /// Forgets the named processes that are gone; false when none is left.
    pub(crate) fn drop_gone(&mut self, readings: &[Reading]) -> bool {
        match self {
            Targets::All => true,
            Targets::Pids(pids) => {
                pids.retain(|pid| !readings.iter().any(|r| r.pid() == *pid && r.gone()));
                !pids.is_empty()
            }
        }
    }
}

/// One process at one tick.
#[derive(Debug)]
pub(crate) enum Reading {
    /// Every block was read.
    Read(Probe, Vec<Snapshot>),
    /// The manifest was loaded, the blocks could not be read.
    Unreadable(Probe, Error),
    /// No manifest could be loaded for the process.
    Missing(i32, Error),
}

impl Reading {
    /// Reads every block of `probe`'s process.
    pub(crate) fn of(probe: Probe) -> Reading {
        match probe.read_all() {
            Ok(snapshots) => Reading::Read(probe, snapshots),
            Err(e) => Reading::Unreadable(probe, e),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> i32 {
        match self {
            Reading::Read(probe, _) | Reading::Unreadable(probe, _) => probe.pid(),
            Reading::Missing(pid, _) => *pid,
        }
    }

    /// The process as its manifest describes it, if it could be loaded.
    pub(crate) fn info(&self) -> Option<&ProcessInfo> {
        match self {
            Reading::Read(probe, _) | Reading::Unreadable(probe, _) => Some(probe.info()),
            Reading::Missing(..) => None,
        }
    }

    /// Why the blocks could not be read, if they could not.
    pub(crate) fn error(&self) -> Option<&Error> {
        match self {
            Reading::Read(..) => None,
            Reading::Unreadable(_, e) | Reading::Missing(_, e) => Some(e),
        }
    }

    /// Whether the process is gone (exited, or stopped publishing).
    pub(crate) fn gone(&self) -> bool {
        self.error()
            .is_some_and(|e| e.kind() == ErrorKind::NotFound)
    }
}

/// Starts the single-threaded runtime that times `watch` and `export`.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("starting the timer runtime: {e}")))
}

/// A timer that ticks at once and then every `interval`, skipping missed ticks.
pub(crate) fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(interval);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    t
}
