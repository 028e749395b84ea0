//! A simulated game server that publishes its live state with `tokio_pvm::probe`, and takes
//! new settings from `pvmctl` while it runs.
//!
//! ```text
//! game_server [--run-for SECS]
//! ```
//!
//! It publishes two blocks (see [`Publication::publish`]; the manifest goes to
//! `$TOKIO_PVM_DIR`, else `$XDG_RUNTIME_DIR/tokio-pvm/`, else `/tmp/tokio-pvm-<uid>/`):
//!
//! - `stats`: `players` (u64), `rooms` (u64, `ceil(players / 8)`), `tick_ms` (f64, how long
//!   the last tick's work took), `bytes_in` and `bytes_out` (u64 counters, growing with the
//!   players: exported as Prometheus counters, shown with their rate by `pvmctl watch`),
//!   `map` (text, at most 32 bytes). Updated every tick with plain memory writes.
//! - `tuning`, **tunable**: `max_players` (u64, default 64) and `tick_rate_hz` (u64, default
//!   20, clamped to 1..=1000). The server checks it every tick with
//!   [`Block::changed_since`] (one atomic load) and re-reads it only when a tool wrote it.
//!
//! Its first line on stdout is `game_server: pid <PID> publishing stats, tuning in <DIR>`.
//! After that it prints `tuning changed: max_players=<N> tick_rate_hz=<N>` whenever the
//! tunables change, and a status line about every 5 s. It runs until Ctrl-C (or SIGTERM), or
//! for `SECS` seconds with `--run-for SECS`, and then exits cleanly, removing its manifest.
//!
//! Try it with `pvmctl`, in two terminals:
//!
//! ```text
//! # terminal 1
//! cargo run --release --example game_server
//!
//! # terminal 2
//! cargo run --release --bin pvmctl -- list                          # the server and its blocks
//! cargo run --release --bin pvmctl -- watch                         # live values, every second
//! cargo run --release --bin pvmctl -- set <PID> tuning.max_players=10
//! cargo run --release --bin pvmctl -- set <PID> tuning.tick_rate_hz=50
//! cargo run --release --bin pvmctl -- dump <PID> --format prometheus
//! cargo run --release --bin pvmctl -- export --textfile /var/lib/node_exporter/textfile --once
//! ```
//!
//! After the `set`, terminal 1 prints `tuning changed: max_players=10 tick_rate_hz=20` and
//! `watch` shows `players` at 10 or fewer from the next tick on.

#[path = "common/cli.rs"]
mod cli;
use std::error::Error;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_pvm::probe::{Block, BlockBuilder, Field, Publication, Snapshot, Text};

const USAGE: &str = "\
usage: game_server [--run-for SECS]

Simulates a game server and publishes its state (block `stats`) and its settings (tunable
block `tuning`) for pvmctl. Runs until Ctrl-C, or for SECS seconds with --run-for.";

/// `tuning.max_players` before any tool writes it.
const DEFAULT_MAX_PLAYERS: u64 = 64;
/// `tuning.tick_rate_hz` before any tool writes it.
const DEFAULT_TICK_RATE_HZ: u64 = 20;
/// The tick rates the server accepts; others are clamped into this range.
const TICK_RATE_RANGE: (u64, u64) = (1, 1000);
/// Players per room.
const ROOM_SIZE: u64 = 8;
/// How often a status line is printed.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How long one map is played before the next.
const MAP_EVERY: Duration = Duration::from_secs(30);
/// The maps played in turn.
const MAPS: [&str; 4] = ["harbour", "citadel", "dunes", "glacier"];
/// Rounds of busy work per player per tick: what `tick_ms` measures.
const WORK_PER_PLAYER: u32 = 1000;

/// Command-line options.
struct Args {
    /// Stop after this long; `None` runs until Ctrl-C.
    run_for: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut run_for = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--run-for" => {
                let value = args.next().ok_or("--run-for needs a value (seconds)")?;
                let secs: f64 = value
                    .parse()
                    .map_err(|_| format!("--run-for: {value:?} is not a number of seconds"))?;
                let duration = Duration::try_from_secs_f64(secs)
                    .map_err(|_| format!("--run-for: {value:?} is not a usable duration"))?;
                run_for = Some(duration);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args { run_for })
}

/// Prints one line on stdout and flushes it, so that a reader of a pipe sees it at once.
///
/// A closed or broken stdout must not stop the server: errors are ignored.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The handles of the `stats` block's fields.
struct StatsFields {
    players: Field<u64>,
    rooms: Field<u64>,
    tick_ms: Field<f64>,
    bytes_in: Field<u64>,
    bytes_out: Field<u64>,
    map: Field<Text>,
}

/// The handles of the `tuning` block's fields.
struct TuningFields {
    max_players: Field<u64>,
    tick_rate_hz: Field<u64>,
}

/// The settings in force, taken from a snapshot of `tuning`.
#[derive(Clone, Copy)]
struct Settings {
    max_players: u64,
    /// As written by the operator, before clamping.
    tick_rate_hz: u64,
}

impl Settings {
    fn from_snapshot(snapshot: &Snapshot, fields: &TuningFields) -> Settings {
        Settings {
            max_players: snapshot.get(fields.max_players),
            tick_rate_hz: snapshot.get(fields.tick_rate_hz),
        }
    }

    /// The tick rate actually used.
    fn effective_rate(self) -> u64 {
        self.tick_rate_hz
            .clamp(TICK_RATE_RANGE.0, TICK_RATE_RANGE.1)
    }

    /// Time between ticks.
    fn period(self) -> Duration {
        Duration::from_secs_f64(1.0 / self.effective_rate() as f64)
    }

    /// Tells the operator when the written tick rate is outside the accepted range.
    fn report_clamping(self) {
        if self.effective_rate() != self.tick_rate_hz {
            say(&format!(
                "tick_rate_hz={} is outside {}..={}: ticking at {} Hz",
                self.tick_rate_hz,
                TICK_RATE_RANGE.0,
                TICK_RATE_RANGE.1,
                self.effective_rate()
            ));
        }
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so that the example needs no
/// `rand` and behaves the same on every run.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The simulated world.
struct World {
    rng: Xorshift,
    players: u64,
    bytes_in: u64,
    bytes_out: u64,
    ticks: u64,
    last_tick_ms: f64,
}

impl World {
    fn new() -> World {
        World {
            rng: Xorshift(0x9e37_79b9_7f4a_7c15),
            players: 0,
            bytes_in: 0,
            bytes_out: 0,
            ticks: 0,
            last_tick_ms: 0.0,
        }
    }

    /// One tick: players join and leave (a random walk that drifts upwards, with an
    /// occasional room emptying at once), never more than `max_players`; then some busy work
    /// per player, which is what `tick_ms` measures, and the traffic it caused.
    fn tick(&mut self, max_players: u64) {
        let started = Instant::now();
        let roll = self.rng.next();
        if roll.is_multiple_of(200) {
            // A room finished its match and everyone in it left.
            self.players = self.players.saturating_sub(ROOM_SIZE);
        } else {
            // A step of -2..=3 players: drifts up by half a player per tick.
            let step = (roll >> 8) % 6;
            self.players = (self.players + step).saturating_sub(2);
        }
        self.players = self.players.min(max_players);

        let mut state = roll;
        for _ in 0..self.players {
            for _ in 0..WORK_PER_PLAYER {
                state = state.rotate_left(7) ^ state.wrapping_mul(31);
            }
        }
        std::hint::black_box(state);
        let noise = self.rng.next();
        self.bytes_in = self
            .bytes_in
            .saturating_add(self.players * (48 + noise % 32));
        self.bytes_out = self
            .bytes_out
            .saturating_add(self.players * (200 + (noise >> 16) % 100));
        self.ticks += 1;
        // Nanoseconds over 10^6: one rounding, so 52077 ns is 0.052077, not the
        // 0.052077000000000005 that seconds times 1000 gives.
        self.last_tick_ms = started.elapsed().as_nanos() as f64 / 1e6;
    }

    fn rooms(&self) -> u64 {
        self.players.div_ceil(ROOM_SIZE)
    }

    /// Writes the world into the `stats` block as one update.
    fn publish(&self, stats: &mut Block, f: &StatsFields, map: &str) {
        stats.update(|w| {
            w.set(f.players, self.players);
            w.set(f.rooms, self.rooms());
            w.set(f.tick_ms, self.last_tick_ms);
            w.set(f.bytes_in, self.bytes_in);
            w.set(f.bytes_out, self.bytes_out);
            w.set_str(f.map, map);
        });
    }
}

/// A timer that ticks at the given period, starting one period from now.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Resolves when the server should stop: Ctrl-C, SIGTERM, or the end of `--run-for`.
async fn stop_signal(run_for: Option<Duration>) -> Result<&'static str, Box<dyn Error>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("listening for SIGTERM: {e}"))?;
    let deadline = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        res = tokio::signal::ctrl_c() => {
            res.map_err(|e| format!("listening for Ctrl-C: {e}"))?;
            Ok("Ctrl-C")
        }
        _ = term.recv() => Ok("SIGTERM"),
        () = deadline => Ok("--run-for elapsed"),
    }
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let mut b = BlockBuilder::new("stats");
    let sf = StatsFields {
        players: b.u64("players"),
        rooms: b.u64("rooms"),
        tick_ms: b.f64("tick_ms"),
        bytes_in: b.counter("bytes_in"),
        bytes_out: b.counter("bytes_out"),
        map: b.string("map", 32),
    };
    let mut stats = b.build()?;

    let mut t = BlockBuilder::new("tuning").tunable();
    let tf = TuningFields {
        max_players: t.u64("max_players"),
        tick_rate_hz: t.u64("tick_rate_hz"),
    };
    let mut tuning = t.build()?;
    // The defaults go in before publishing, so that no probe ever sees zeros.
    tuning.update(|w| {
        w.set(tf.max_players, DEFAULT_MAX_PLAYERS);
        w.set(tf.tick_rate_hz, DEFAULT_TICK_RATE_HZ);
    });

    let mut world = World::new();
    let started = Instant::now();
    let map_at = |now: Instant| {
        let round = now.duration_since(started).as_secs() / MAP_EVERY.as_secs();
        MAPS[(round % MAPS.len() as u64) as usize]
    };
    world.publish(&mut stats, &sf, map_at(started));

    let publication = Publication::publish(&[&stats, &tuning])?;
    // The settings in force, read before the first line announces the server: a tool that
    // writes the block as soon as it sees that line is then always noticed as a change.
    let mut last = tuning.read()?;
    let manifest = publication.manifest_path();
    let dir = manifest.parent().unwrap_or(Path::new("."));
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "game_server: pid {} publishing stats, tuning in {}",
            std::process::id(),
            dir.display()
        )
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to stdout: {e}"))?;
    }

    let mut settings = Settings::from_snapshot(&last, &tf);
    settings.report_clamping();
    let mut ticks = ticker(settings.period());
    let mut status = ticker(STATUS_EVERY);
    let stop = stop_signal(args.run_for);
    tokio::pin!(stop);

    let reason = loop {
        tokio::select! {
            reason = &mut stop => break reason?,
            _ = ticks.tick() => {
                if tuning.changed_since(&last) {
                    match tuning.read() {
                        Ok(snapshot) => {
                            let new = Settings::from_snapshot(&snapshot, &tf);
                            last = snapshot;
                            say(&format!(
                                "tuning changed: max_players={} tick_rate_hz={}",
                                new.max_players, new.tick_rate_hz
                            ));
                            new.report_clamping();
                            if new.effective_rate() != settings.effective_rate() {
                                ticks = ticker(new.period());
                            }
                            settings = new;
                        }
                        // A tool stopped half-way through a write: keep the settings in
                        // force; the next write repairs the block and is seen then.
                        Err(e) => eprintln!("game_server: reading tuning: {e}"),
                    }
                }
                // Caps the players at once when max_players dropped.
                world.tick(settings.max_players);
                world.publish(&mut stats, &sf, map_at(Instant::now()));
            }
            _ = status.tick() => {
                say(&format!(
                    "status: players={} rooms={} tick_ms={:.3} bytes_in={} bytes_out={} \
                     map={} ticks={} ({} Hz, max {} players)",
                    world.players,
                    world.rooms(),
                    world.last_tick_ms,
                    world.bytes_in,
                    world.bytes_out,
                    map_at(Instant::now()),
                    world.ticks,
                    settings.effective_rate(),
                    settings.max_players,
                ));
            }
        }
    };

    let path = manifest.to_owned();
    drop(publication);
    say(&format!(
        "game_server: stopping ({reason}); removed {}",
        path.display()
    ));
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    cli::main("game_server", USAGE, parse_args, run).await
}
