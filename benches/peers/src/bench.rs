//! The orchestrator: which measurements, in which order, and how one is run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::peers::{Job, Peer, Role};
use crate::report::{Machine, size_label};
use crate::spawn::{Group, RemoveOnDrop, children_cpu, unique_name};
use crate::{LATENCY_SIZES, Options};

/// One successful throughput measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rep: usize,
    /// From the first message's arrival to the last one's, in the receiving child.
    pub(crate) elapsed: Duration,
    /// User + system time of both children, whole lives.
    pub(crate) cpu: Duration,
}

/// All repetitions of one throughput row.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    pub(crate) size: usize,
    pub(crate) peer: Peer,
    pub(crate) messages: u64,
    pub(crate) samples: Vec<Sample>,
    pub(crate) errors: Vec<(usize, String)>,
}

/// One successful latency measurement: the pinger's percentiles of one-way latency.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatencySample {
    pub(crate) rep: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// All repetitions of one latency row.
#[derive(Debug, Clone)]
pub(crate) struct LatencyCell {
    pub(crate) size: usize,
    pub(crate) peer: Peer,
    pub(crate) warmup: u64,
    pub(crate) rounds: u64,
    pub(crate) samples: Vec<LatencySample>,
    pub(crate) errors: Vec<(usize, String)>,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) machine: Machine,
    pub(crate) command: String,
    pub(crate) reps: usize,
    pub(crate) quick: bool,
    pub(crate) sizes: Vec<usize>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) latency: Vec<LatencyCell>,
    /// What the iceoryx2 dead-node clean-ups said, if anything went wrong or was removed.
    pub(crate) cleanup_notes: Vec<String>,
    pub(crate) wall: Duration,
}

impl Results {
    pub(crate) fn failed(&self) -> bool {
        self.cells.iter().any(|c| !c.errors.is_empty())
            || self.latency.iter().any(|c| !c.errors.is_empty())
    }
}

/// Runs every measurement `opts` asks for, `opts.reps` times, interleaved: for each
/// repetition, for each size, for each transport; then the latency rows.
pub(crate) fn run(opts: &Options, command: String) -> Result<Results, String> {
    let started = Instant::now();
    let exe: PathBuf =
        std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let mut cells: Vec<Cell> = opts
        .sizes
        .iter()
        .flat_map(|&size| {
            Peer::throughput_rows(size)
                .into_iter()
                .filter(|&peer| opts.selects(peer))
                .map(move |peer| Cell {
                    size,
                    peer,
                    messages: opts.scale.messages(size),
                    samples: Vec::new(),
                    errors: Vec::new(),
                })
        })
        .collect();
    let mut latency: Vec<LatencyCell> = LATENCY_SIZES
        .iter()
        .filter(|size| opts.sizes.contains(size))
        .flat_map(|&size| {
            let (warmup, rounds) = opts.scale.round_trips(size);
            Peer::latency_rows()
                .into_iter()
                .filter(|&peer| opts.selects(peer))
                .map(move |peer| LatencyCell {
                    size,
                    peer,
                    warmup,
                    rounds,
                    samples: Vec::new(),
                    errors: Vec::new(),
                })
        })
        .collect();
    let uses_iceoryx2 =
        cells.iter().any(|c| c.peer.is_iceoryx2()) || latency.iter().any(|c| c.peer.is_iceoryx2());
    let mut cleanup_notes = Vec::new();
    if uses_iceoryx2 {
        // Leftovers of an earlier run whose children were killed.
        iceoryx2_cleanup(&exe, opts.timeout, "before the run", &mut cleanup_notes);
    }

    let total = opts.reps * (cells.len() + latency.len());
    let mut done = 0;
    for rep in 1..=opts.reps {
        for cell in &mut cells {
            done += 1;
            let result =
                measure_throughput(&exe, cell.peer, cell.size, cell.messages, opts.timeout);
            let what = format!(
                "[{done}/{total}] rep {rep}/{} {} {}",
                opts.reps,
                size_label(cell.size),
                cell.peer.label()
            );
            match result {
                Ok(mut sample) => {
                    sample.rep = rep;
                    let secs = sample.elapsed.as_secs_f64();
                    let timed = (cell.messages - 1) as f64;
                    let moved_gb = cell.messages as f64 * cell.size as f64 / 1e9;
                    eprintln!(
                        "{what}: {:.3} GB/s, {:.0} msg/s, CPU {:.3} s/GB",
                        timed * cell.size as f64 / 1e9 / secs,
                        timed / secs,
                        sample.cpu.as_secs_f64() / moved_gb
                    );
                    cell.samples.push(sample);
                }
                Err(e) => {
                    eprintln!("{what}: ERROR {e}");
                    cell.errors.push((rep, e));
                    if cell.peer.is_iceoryx2() {
                        let when = format!("after the failed measurement {what}");
                        iceoryx2_cleanup(&exe, opts.timeout, &when, &mut cleanup_notes);
                    }
                }
            }
        }
        for cell in &mut latency {
            done += 1;
            let result = measure_latency(
                &exe,
                cell.peer,
                cell.size,
                (cell.warmup, cell.rounds),
                opts.timeout,
            );
            let what = format!(
                "[{done}/{total}] rep {rep}/{} latency {} {}",
                opts.reps,
                size_label(cell.size),
                cell.peer.latency_label()
            );
            match result {
                Ok((p50_us, p99_us)) => {
                    eprintln!("{what}: p50 {p50_us:.1} us, p99 {p99_us:.1} us");
                    cell.samples.push(LatencySample {
                        rep,
                        p50_us,
                        p99_us,
                    });
                }
                Err(e) => {
                    eprintln!("{what}: ERROR {e}");
                    cell.errors.push((rep, e));
                    if cell.peer.is_iceoryx2() {
                        let when = format!("after the failed measurement {what}");
                        iceoryx2_cleanup(&exe, opts.timeout, &when, &mut cleanup_notes);
                    }
                }
            }
        }
    }
    Ok(Results {
        machine: Machine::detect(),
        command,
        reps: opts.reps,
        quick: opts.quick,
        sizes: opts.sizes.clone(),
        cells,
        latency,
        cleanup_notes,
        wall: started.elapsed(),
    })
}

/// Where the receiving child sets up: a socket file for the Unix-socket transports (removed
/// when the returned guard drops, in case a child was killed), a service name for iceoryx2,
/// nothing used for ipc-channel (its one-shot server picks its own name).
fn rendezvous(peer: Peer) -> (String, Option<RemoveOnDrop>) {
    let name = unique_name("tokio-pvm-peers");
    match peer {
        Peer::Pvm { .. } | Peer::Unix(_) => {
            let path = std::env::temp_dir().join(format!("{name}.sock"));
            (
                path.to_string_lossy().into_owned(),
                Some(RemoveOnDrop(path)),
            )
        }
        Peer::IpcChannel | Peer::Iceoryx2(_) => (name, None),
    }
}

/// The address in a receiver's `READY ADDR` line.
fn ready_addr(line: &str) -> Result<String, String> {
    match line.split_once(' ') {
        Some(("READY", addr)) if !addr.is_empty() => Ok(addr.to_owned()),
        _ => Err(format!(
            "expected READY ADDR from the receiver, got {line:?}"
        )),
    }
}

/// Parses the `DONE MESSAGES ELAPSED_NS` line of a receiver.
fn parse_done(line: &str, messages: u64) -> Result<Duration, String> {
    let bad = || format!("unexpected report {line:?}");
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["DONE", n, ns] => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            let ns: u64 = ns.parse().map_err(|_| bad())?;
            if n != messages {
                return Err(format!(
                    "the receiver counted {n} messages, expected {messages}"
                ));
            }
            Ok(Duration::from_nanos(ns))
        }
        _ => Err(bad()),
    }
}

/// The two children of one throughput measurement; returns the receiver's elapsed time. The
/// group is dropped (every child reaped) before this returns.
fn run_throughput(
    exe: &Path,
    peer: Peer,
    size: usize,
    messages: u64,
    timeout: Duration,
) -> Result<Duration, String> {
    let (addr, _remove) = rendezvous(peer);
    let mut job = Job {
        addr,
        size,
        count: messages,
        warmup: 0,
    };
    let mut group = Group::new(exe, timeout);
    let receiver = group.spawn(&format!("{} recv", peer.id()), &job.args(peer, Role::Recv))?;
    job.addr = ready_addr(&group.line(receiver)?)?;
    group.spawn(&format!("{} send", peer.id()), &job.args(peer, Role::Send))?;
    let report = group.line(receiver)?;
    group.close_all_stdin();
    group.wait_all()?;
    drop(group);
    parse_done(&report, messages)
}

/// One throughput measurement with the CPU time of its two children.
fn measure_throughput(
    exe: &Path,
    peer: Peer,
    size: usize,
    messages: u64,
    timeout: Duration,
) -> Result<Sample, String> {
    let before = children_cpu()?;
    let elapsed = run_throughput(exe, peer, size, messages, timeout);
    let after = children_cpu()?;
    Ok(Sample {
        rep: 0,
        elapsed: elapsed?,
        cpu: after.saturating_sub(before),
    })
}

/// One latency measurement: the pinger's median and 99th percentile, in µs.
fn measure_latency(
    exe: &Path,
    peer: Peer,
    size: usize,
    (warmup, rounds): (u64, u64),
    timeout: Duration,
) -> Result<(f64, f64), String> {
    let (addr, _remove) = rendezvous(peer);
    let mut job = Job {
        addr,
        size,
        count: warmup + rounds,
        warmup: 0,
    };
    let mut group = Group::new(exe, timeout);
    let echo = group.spawn(&format!("{} echo", peer.id()), &job.args(peer, Role::Echo))?;
    job.addr = ready_addr(&group.line(echo)?)?;
    job.count = rounds;
    job.warmup = warmup;
    let pinger = group.spawn(&format!("{} ping", peer.id()), &job.args(peer, Role::Ping))?;
    let line = group.line(pinger)?;
    group.close_all_stdin();
    group.wait_all()?;
    let bad = || format!("unexpected report {line:?}");
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["LAT", n, p50, p99] => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            if n != rounds {
                return Err(format!(
                    "the pinger timed {n} round trips, expected {rounds}"
                ));
            }
            let p50: f64 = p50.parse().map_err(|_| bad())?;
            let p99: f64 = p99.parse().map_err(|_| bad())?;
            Ok((p50 / 1e3, p99 / 1e3))
        }
        _ => Err(bad()),
    }
}

/// Runs iceoryx2's dead-node clean-up in a child (outside any measurement); notes what it
/// removed or why it failed.
fn iceoryx2_cleanup(exe: &Path, timeout: Duration, when: &str, notes: &mut Vec<String>) {
    let peer = Peer::Iceoryx2(crate::peers::Wake::Event);
    let job = Job {
        addr: "-".to_owned(),
        size: 0,
        count: 0,
        warmup: 0,
    };
    let mut group = Group::new(exe, timeout);
    let result = group
        .spawn("iceoryx2 cleanup", &job.args(peer, Role::Cleanup))
        .and_then(|k| group.line(k))
        .and_then(|line| {
            group.wait_all()?;
            Ok(line)
        });
    match result {
        Ok(line) if line == "CLEANED 0" => {}
        Ok(line) => notes.push(format!("iceoryx2 clean-up {when}: {line}")),
        Err(e) => notes.push(format!("iceoryx2 clean-up {when} failed: {e}")),
    }
}
