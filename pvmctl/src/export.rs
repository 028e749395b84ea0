//! `pvmctl export`: the Prometheus text format for node_exporter's textfile collector.

use super::*;

/// `pvmctl export`.
pub(crate) fn export(dirs: &[PathBuf], args: &ExportArgs) -> Result<(), Failure> {
    let targets = Targets::new(args.pids.clone());
    if args.once {
        return export_once(dirs, &targets, &args.textfile);
    }
    runtime()?.block_on(async {
        let mut ticker = ticker(args.interval);
        loop {
            ticker.tick().await;
            if let Err(f) = export_once(dirs, &targets, &args.textfile) {
                warn(&f.message);
            }
        }
    })
}

/// Reads the targets and writes the textfile once. Fails if the file cannot be written, or
/// (after writing it) if a named process could not be read.
pub(crate) fn export_once(
    dirs: &[PathBuf],
    targets: &Targets,
    textfile: &Path,
) -> Result<(), Failure> {
    let (metrics, first_problem) = collect(dirs, targets);
    if metrics.families.is_empty() {
        note(&format!(
            "no publishing processes in {}: the textfile has no metrics",
            dir_list(dirs)
        ));
    }
    write_textfile(textfile, &metrics.render())?;
    first_problem.map_or(Ok(()), Err)
}

/// Reads the targets into metrics; also the first problem with a process named on the command
/// line (each problem is reported on stderr). A discovered process that exited meanwhile is
/// left out quietly.
pub(crate) fn collect(dirs: &[PathBuf], targets: &Targets) -> (Metrics, Option<Failure>) {
    let mut metrics = Metrics::default();
    let mut first_problem = None;
    for r in targets.read(dirs) {
        match &r {
            Reading::Read(probe, snapshots) => metrics.add(probe.info(), snapshots),
            _ if r.gone() && !targets.named() => {}
            Reading::Unreadable(_, e) | Reading::Missing(_, e) => {
                warn(&format!("process {}: {e}", r.pid()));
                if targets.named() {
                    first_problem.get_or_insert_with(|| Failure::from(e.clone()));
                }
            }
        }
    }
    (metrics, first_problem)
}

/// Writes `text` to `dir/tokio_pvm.prom` through a temporary file in `dir` and a rename.
pub(crate) fn write_textfile(dir: &Path, text: &str) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(Failure::new(
            EXIT_FAILURE,
            format!(
                "--textfile {}: no such directory; create it (mkdir -p {0}) and point \
                 node_exporter's --collector.textfile.directory at it",
                dir.display()
            ),
        ));
    }
    let path = dir.join(TEXTFILE_NAME);
    // Not ending in .prom, so that the collector never reads it.
    let tmp = dir.join(format!(".{TEXTFILE_NAME}.{}.tmp", std::process::id()));
    let written = write_new(&tmp, text).and_then(|()| fs::rename(&tmp, &path));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Failure::new(EXIT_FAILURE, format!("writing {}: {e}", path.display()))
    })
}

/// Creates `path` afresh (never through a symbolic link left there), writes and syncs it.
pub(crate) fn write_new(path: &Path, text: &str) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Metrics in the Prometheus text format, grouped by name.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Metric families by name (sorted, so the output is stable).
    families: BTreeMap<String, Family>,
}

/// One metric name: its help text and samples.
#[derive(Debug)]
pub(crate) struct Family {
    /// The `# HELP` text.
    help: String,
    /// The `# TYPE`: `gauge` or `counter`.
    kind: &'static str,
    /// The `block.field` of the first sample, to name collisions.
    source: String,
    /// The samples, each the label set and value that follow the name.
    samples: Vec<String>,
    /// The processes that have a sample, so that none has two.
    pids: HashSet<i32>,
}

impl Metrics {
    /// Adds every field of one process's blocks.
    pub(crate) fn add(&mut self, info: &ProcessInfo, snapshots: &[Snapshot]) {
        let labels = format!(
            "pid=\"{}\",program=\"{}\"",
            info.pid(),
            escape_label(info.program())
        );
        for snap in snapshots {
            for (field, (_, value)) in snap.layout().fields().iter().zip(snap.values()) {
                let counter = field.metric() == Metric::Counter;
                let name = format!(
                    "tokio_pvm_{}_{}{}",
                    snap.block(),
                    field.name(),
                    if counter { "_total" } else { "" }
                );
                let help = format!(
                    "Field {} ({}{}) of block {} of a tokio-pvm process{}",
                    field.name(),
                    field.kind(),
                    if counter { ", a counter" } else { "" },
                    snap.block(),
                    if snap.is_tunable() { " (tunable)" } else { "" }
                );
                let source = format!("{}.{}", snap.block(), field.name());
                let kind = if counter { "counter" } else { "gauge" };
                self.add_sample(info.pid(), &labels, (name, help, &source, kind), &value);
            }
        }
    }

    /// Adds one field's sample; a string becomes an `_info` metric with a `value` label.
    /// `name` is the metric, with its `help` text and `# TYPE` `kind`, from field `source`
    /// (`block.field`).
    pub(crate) fn add_sample(
        &mut self,
        pid: i32,
        labels: &str,
        (name, help, source, kind): (String, String, &str, &'static str),
        value: &Value,
    ) {
        let (name, sample) = match value {
            Value::Str(s) => (
                format!("{name}_info"),
                format!("{{{labels},value=\"{}\"}} 1", escape_label(s)),
            ),
            other => match prometheus_number(other) {
                Some(number) => (name, format!("{{{labels}}} {number}")),
                None => return,
            },
        };
        let family = self.families.entry(name.clone()).or_insert_with(|| Family {
            help,
            kind,
            source: source.to_owned(),
            samples: Vec::new(),
            pids: HashSet::new(),
        });
        if family.pids.insert(pid) {
            family.samples.push(sample);
        } else {
            // `a_b.c` and `a.b_c` (or `x.y_info` and string field `x.y`) make the same name.
            warn(&format!(
                "process {pid}: {source} and {} both become metric {name}; {source} is left out",
                family.source
            ));
        }
    }

    /// How many processes have at least one sample.
    pub(crate) fn processes(&self) -> usize {
        let mut pids = HashSet::new();
        for family in self.families.values() {
            pids.extend(family.pids.iter().copied());
        }
        pids.len()
    }

    /// The text format: `# HELP`, `# TYPE` and the samples of each metric; no timestamps.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for sample in &family.samples {
                let _ = writeln!(out, "{name}{sample}");
            }
        }
        out
    }
}

/// A numeric value in the text format: integers exactly, booleans as 0 or 1.
pub(crate) fn prometheus_number(value: &Value) -> Option<String> {
    Some(match value {
        Value::U64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::F64(v) if v.is_nan() => "NaN".to_owned(),
        Value::F64(v) if v.is_infinite() => if *v > 0.0 { "+Inf" } else { "-Inf" }.to_owned(),
        Value::F64(v) => v.to_string(),
        Value::Bool(v) => u8::from(*v).to_string(),
        _ => return None,
    })
}

/// Escapes a label value: backslash, double quote and newline.
pub(crate) fn escape_label(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Escapes help text: backslash and newline.
pub(crate) fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}
