//! `pvmctl watch`: live values, refreshed.

use super::*;

/// `pvmctl watch`.
pub(crate) fn watch(
    dirs: Vec<PathBuf>,
    targets: Targets,
    interval: Duration,
    count: Option<u64>,
) -> Result<(), Failure> {
    if let Targets::Pids(pids) = &targets {
        // A process that is not there at the start is an error, as for `dump`.
        for &pid in pids {
            Probe::attach_in(&dirs, pid)?;
        }
    }
    let mut watcher = Watcher {
        dirs,
        targets,
        interval,
        seen: BTreeMap::new(),
        tty: io::stdout().is_terminal(),
        counters: HashMap::new(),
    };
    runtime()?.block_on(watcher.run(count))
}

/// The state of `pvmctl watch` between ticks.
#[derive(Debug)]
pub(crate) struct Watcher {
    /// Where the manifests are.
    dirs: Vec<PathBuf>,
    /// What is watched.
    targets: Targets,
    /// Time between ticks.
    interval: Duration,
    /// The processes read at the last tick, with their program names, to report exits.
    seen: BTreeMap<i32, Option<String>>,
    /// Whether stdout is a terminal (redraw) or not (append).
    tty: bool,
    /// Each counter's value at the last tick, and when it was read: (pid, `block.field`).
    counters: HashMap<(i32, String), (u64, std::time::Instant)>,
}

impl Watcher {
    /// Prints a tick every interval, `count` times or until every named process is gone.
    async fn run(&mut self, count: Option<u64>) -> Result<(), Failure> {
        let mut ticker = ticker(self.interval);
        let mut tick = 0u64;
        while count.is_none_or(|n| tick < n) {
            ticker.tick().await;
            tick += 1;
            let readings = self.targets.read(&self.dirs);
            let separator = match (self.tty, tick) {
                (true, _) => CLEAR_SCREEN,
                (false, 1) => "",
                (false, _) => "\n",
            };
            emit(&format!("{separator}{}", self.render(tick, &readings)))?;
            if !self.targets.drop_gone(&readings) {
                note("pvmctl: every watched process has exited");
                break;
            }
        }
        Ok(())
    }

    /// One tick's text; remembers which processes it saw.
    pub(crate) fn render(&mut self, tick: u64, readings: &[Reading]) -> String {
        let live: Vec<&Reading> = readings.iter().filter(|r| !r.gone()).collect();
        let mut out = format!(
            "pvmctl watch: tick {tick}, every {}, {} process{}\n",
            interval_text(self.interval),
            live.len(),
            if live.len() == 1 { "" } else { "es" }
        );
        if live.is_empty() && !self.targets.named() {
            let _ = writeln!(out, "no publishing processes in {}", dir_list(&self.dirs));
        }
        let now = std::time::Instant::now();
        let mut counters = HashMap::new();
        for r in &live {
            out.push_str(&self.process_section(r, now, &mut counters));
        }
        self.counters = counters;
        for line in self.exits(readings) {
            out.push_str(&line);
            out.push('\n');
        }
        self.seen = live
            .iter()
            .map(|r| (r.pid(), r.info().map(|i| i.program().to_owned())))
            .collect();
        out
    }

    /// A line for each process seen at the last tick that is gone now, or that could not be
    /// found at all.
    pub(crate) fn exits(&self, readings: &[Reading]) -> Vec<String> {
        let mut lines = Vec::new();
        for (pid, program) in &self.seen {
            let now = readings.iter().find(|r| r.pid() == *pid);
            if now.is_none_or(Reading::gone) {
                let program = printable(program.as_deref().unwrap_or("?"));
                lines.push(format!("process {pid} ({program}) exited"));
            }
        }
        for r in readings
            .iter()
            .filter(|r| !self.seen.contains_key(&r.pid()))
        {
            if let (true, Some(e)) = (r.gone(), r.error()) {
                let error = printable(&e.to_string());
                lines.push(format!("process {}: {error}", r.pid()));
            }
        }
        lines
    }
}

impl Watcher {
    /// A process's part of a tick; a counter's value is followed by its rate since the last
    /// tick. The counters read go into `counters`.
    pub(crate) fn process_section(
        &self,
        r: &Reading,
        now: std::time::Instant,
        counters: &mut HashMap<(i32, String), (u64, std::time::Instant)>,
    ) -> String {
        let Reading::Read(_, snapshots) = r else {
            return process_section(r);
        };
        let mut rows = field_rows(snapshots);
        let fields = snapshots.iter().flat_map(|snap| {
            snap.layout()
                .fields()
                .iter()
                .zip(snap.values())
                .map(move |(info, (name, value))| (snap.block(), info, name, value))
        });
        for (row, (block, info, name, value)) in rows.iter_mut().zip(fields) {
            let (Metric::Counter, Value::U64(count)) = (info.metric(), value) else {
                continue;
            };
            let key = (r.pid(), format!("{block}.{name}"));
            if let Some(&(before, at)) = self.counters.get(&key) {
                let secs = now.duration_since(at).as_secs_f64();
                if count >= before && secs > 0.0 {
                    let rate = (count - before) as f64 / secs;
                    row[2].push_str(&format!("  ({rate:.1}/s)"));
                }
            }
            counters.insert(key, (count, now));
        }
        let mut out = process_heading(r);
        out.push_str(&columns(&rows, "  "));
        out
    }
}

/// The heading of a process's part of a tick: pid, program, uptime.
fn process_heading(r: &Reading) -> String {
    match r.info() {
        Some(info) => format!(
            "{}  {}  up {}\n",
            r.pid(),
            printable(info.program()),
            uptime_text(info)
        ),
        None => format!("{}\n", r.pid()),
    }
}

/// A process's part of a tick: a heading, then its fields (or why they could not be read).
pub(crate) fn process_section(r: &Reading) -> String {
    let mut out = process_heading(r);
    match r {
        Reading::Read(_, snapshots) => out.push_str(&columns(&field_rows(snapshots), "  ")),
        Reading::Unreadable(_, e) | Reading::Missing(_, e) => {
            let _ = writeln!(out, "  error: {}", printable(&e.to_string()));
        }
    }
    out
}
