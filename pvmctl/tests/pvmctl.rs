//! End-to-end tests of `pvmctl` against real processes: each test starts the `game_server`
//! example with its own manifest directory and drives it with the `pvmctl` binary.
//!
//! The example must be built (`cargo test` builds examples; `cargo test --test pvmctl` alone
//! does not: run `cargo build --examples` first).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long the server may take to print its first line.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A directory removed, with its contents, on drop.
struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory (mode 0700, as manifest directories must be) named after `name`.
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("pvmctl-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `game_server`, killed (and its directory removed) on drop, so that a failing
/// test leaks nothing.
struct Server {
    child: Child,
    pid: i32,
    lines: Receiver<String>,
    dir: TempDir,
}

impl Server {
    /// Starts `game_server --run-for 30` publishing into a directory of its own, and waits
    /// for its first line.
    fn start(name: &str) -> Server {
        let dir = TempDir::new(name);
        let mut child = Command::new(game_server_path())
            .args(["--run-for", "30"])
            .env("TOKIO_PVM_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting game_server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let server = Server {
            child,
            pid,
            lines,
            dir,
        };
        let first = server
            .lines
            .recv_timeout(START_TIMEOUT)
            .expect("game_server printed no first line");
        let expected = format!("game_server: pid {pid} publishing stats, tuning in ");
        assert!(first.starts_with(&expected), "first line: {first:?}");
        server
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn manifest(&self) -> PathBuf {
        self.dir().join(format!("{}.json", self.pid))
    }

    /// Runs `pvmctl --dir <this server's directory> args...`.
    fn pvmctl(&self, args: &[&str]) -> Run {
        let dir = self.dir().to_str().expect("utf-8 temp dir");
        let mut all = vec!["--dir", dir];
        all.extend_from_slice(args);
        pvmctl(&all, None)
    }

    /// Waits up to `timeout` for a line of the server's stdout that contains `needle`.
    fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no line with {needle:?} in {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("game_server ended its output"),
            }
        }
    }

    /// `pvmctl dump --format json`, parsed.
    fn dump_json(&self) -> serde_json::Value {
        let pid = self.pid.to_string();
        let run = self.pvmctl(&["dump", &pid, "--format", "json"]).success();
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example binary, next to this test's: `target/<profile>/deps/pvmctl-<hash>` ->
/// `target/<profile>/examples/game_server`.
fn game_server_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps");
    let path = profile_dir.join("examples").join("game_server");
    assert!(
        path.is_file(),
        "the game_server example is not built ({} is missing): run `cargo build --examples` \
         first, or plain `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// What a `pvmctl` run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts that it exited 0.
    fn success(self) -> Run {
        assert_eq!(self.code, Some(0), "pvmctl failed: {self:#?}");
        self
    }

    /// Asserts that it exited with `code` and printed a `pvmctl:` error.
    fn failure(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
        self
    }
}

/// Runs `pvmctl args...`, with `TOKIO_PVM_DIR` set to `dir` (or unset).
fn pvmctl(args: &[&str], dir: Option<&Path>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvmctl"));
    cmd.args(args).env_remove("TOKIO_PVM_DIR");
    if let Some(dir) = dir {
        cmd.env("TOKIO_PVM_DIR", dir);
    }
    let out = cmd.output().expect("running pvmctl");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> i32 {
    let mut child = Command::new("true").spawn().expect("running true");
    child.wait().expect("waiting for true");
    i32::try_from(child.id()).expect("pid fits i32")
}

fn u64_at(doc: &serde_json::Value, pointer: &str) -> u64 {
    doc.pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no u64 at {pointer} in {doc}"))
}

fn keys(doc: &serde_json::Value, pointer: &str) -> BTreeSet<String> {
    doc.pointer(pointer)
        .and_then(serde_json::Value::as_object)
        .unwrap_or_else(|| panic!("no object at {pointer} in {doc}"))
        .keys()
        .cloned()
        .collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn list_shows_pid_program_and_blocks() {
    let server = Server::start("list");
    // Through the environment variable this time; the other tests pass --dir.
    let run = pvmctl(&["list"], Some(server.dir())).success();
    let mut lines = run.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["PID", "PROGRAM", "UPTIME", "BLOCKS"]);
    let row: Vec<&str> = lines
        .next()
        .expect("a process row")
        .split_whitespace()
        .collect();
    assert_eq!(row[0], server.pid.to_string());
    assert_eq!(row[1], "game_server");
    assert!(row[2].ends_with('s'), "uptime {:?}", row[2]);
    assert_eq!(row[3], "stats,tuning*");
    assert!(run.stderr.is_empty(), "{run:#?}");

    let run = server.pvmctl(&["list", "--json"]).success();
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["processes"][0]["pid"], server.pid);
    assert_eq!(doc["processes"][0]["blocks"][1]["name"], "tuning");
    assert_eq!(doc["processes"][0]["blocks"][1]["tunable"], true);
}

#[test]
fn dump_table_shows_every_field_with_its_kind() {
    let server = Server::start("dump-table");
    let run = server.pvmctl(&["dump", &server.pid.to_string()]).success();
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let fields: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        fields,
        [
            ("stats.players", "u64"),
            ("stats.rooms", "u64"),
            ("stats.tick_ms", "f64"),
            ("stats.bytes_in", "u64"),
            ("stats.bytes_out", "u64"),
            ("stats.map", "str[32]"),
            ("tuning.max_players", "u64"),
            ("tuning.tick_rate_hz", "u64"),
        ]
    );
    assert_eq!(rows[6][2], "64");
    assert!(
        rows[5][2].starts_with('"'),
        "strings are quoted: {:?}",
        rows[5]
    );
}

#[test]
fn dump_json_has_the_fields_and_players_within_max() {
    let server = Server::start("dump-json");
    let doc = server.dump_json();
    assert_eq!(doc["pid"], server.pid);
    assert_eq!(doc["program"], "game_server");
    assert_eq!(keys(&doc, "/blocks"), set_of(&["stats", "tuning"]));
    assert_eq!(
        keys(&doc, "/blocks/stats"),
        set_of(&[
            "players",
            "rooms",
            "tick_ms",
            "bytes_in",
            "bytes_out",
            "map"
        ])
    );
    assert_eq!(
        keys(&doc, "/blocks/tuning"),
        set_of(&["max_players", "tick_rate_hz"])
    );
    assert_eq!(u64_at(&doc, "/blocks/tuning/max_players"), 64);
    assert_eq!(u64_at(&doc, "/blocks/tuning/tick_rate_hz"), 20);
    assert!(u64_at(&doc, "/blocks/stats/players") <= 64, "{doc}");
    assert!(doc["blocks"]["stats"]["tick_ms"].is_f64(), "{doc}");
    assert!(doc["blocks"]["stats"]["map"].is_string(), "{doc}");
}

#[test]
fn dump_prometheus_has_help_type_and_labelled_samples() {
    let server = Server::start("dump-prom");
    let run = server
        .pvmctl(&["dump", &server.pid.to_string(), "--format", "prometheus"])
        .success();
    let text = &run.stdout;
    assert!(text.contains("# HELP tokio_pvm_stats_players "), "{text}");
    assert!(
        text.contains("# TYPE tokio_pvm_stats_players gauge\n"),
        "{text}"
    );
    let sample = format!(
        "tokio_pvm_stats_players{{pid=\"{}\",program=\"game_server\"}} ",
        server.pid
    );
    assert!(text.lines().any(|l| l.starts_with(&sample)), "{text}");
    let map = format!(
        "tokio_pvm_stats_map_info{{pid=\"{}\",program=\"game_server\",value=\"",
        server.pid
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&map) && l.ends_with("\"} 1")),
        "{text}"
    );
    check_exposition(text);
}

/// Checks the Prometheus text format: `# HELP` and `# TYPE` once per metric, before its
/// samples; every sample is `name{labels} value`, with no timestamp.
fn check_exposition(text: &str) {
    let mut helped = BTreeSet::new();
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            // Counters (declared with BlockBuilder::counter) end in _total, as Prometheus
            // names them; everything else is a gauge.
            let want = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(kind, want, "{line}");
            assert!(typed.insert(name.to_owned()), "TYPE twice for {name}");
        } else {
            let (series, value) = line.rsplit_once("} ").expect("name{labels} value");
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("tokio_pvm_"), "{line}");
            assert!(helped.contains(name) && typed.contains(name), "{line}");
            assert!(
                !value.contains(' '),
                "a timestamp or junk after the value: {line}"
            );
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    assert!(!helped.is_empty(), "no metrics: {text:?}");
}

#[test]
fn set_writes_tuning_and_the_server_obeys() {
    let server = Server::start("set");
    let pid = server.pid.to_string();
    let run = server
        .pvmctl(&["set", &pid, "tuning.max_players=10"])
        .success();
    assert_eq!(run.stdout, "tuning.max_players: 64 -> 10\n");
    server.wait_for_line("tuning changed: max_players=10", Duration::from_secs(5));
    // The server caps the players at the tick that saw the change; give it two more.
    std::thread::sleep(Duration::from_millis(150));
    for _ in 0..3 {
        let doc = server.dump_json();
        assert_eq!(u64_at(&doc, "/blocks/tuning/max_players"), 10);
        assert!(u64_at(&doc, "/blocks/stats/players") <= 10, "{doc}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn set_failures_have_the_documented_exit_codes() {
    let server = Server::start("set-fail");
    let pid = server.pid.to_string();
    let run = server.pvmctl(&["set", &pid, "stats.players=5"]).failure(4);
    assert!(run.stderr.starts_with("pvmctl: "), "{run:#?}");
    assert!(run.stderr.contains("not tunable"), "{run:#?}");
    let run = server
        .pvmctl(&["set", &pid, "tuning.max_players=abc"])
        .failure(4);
    assert!(run.stderr.contains("u64"), "{run:#?}");
    let dead = dead_pid().to_string();
    let run = server
        .pvmctl(&["set", &dead, "tuning.max_players=5"])
        .failure(1);
    assert!(run.stderr.starts_with("pvmctl: "), "{run:#?}");
    server.pvmctl(&["set", &pid, "tuning.nope=5"]).failure(1);
    server
        .pvmctl(&["set", &pid, "tuning.max_players"])
        .failure(2);
    // Nothing was written.
    assert_eq!(
        u64_at(&server.dump_json(), "/blocks/tuning/max_players"),
        64
    );
}

#[test]
fn export_once_writes_a_complete_prom_file() {
    let server = Server::start("export");
    let textfile = TempDir::new("export-textfile");
    let out = textfile.path().to_str().unwrap();
    let run = server
        .pvmctl(&["export", "--textfile", out, "--once"])
        .success();
    assert!(run.stdout.is_empty(), "{run:#?}");
    let names: Vec<String> = fs::read_dir(textfile.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["tokio_pvm.prom"], "no temporary file is left");
    let text = fs::read_to_string(textfile.path().join("tokio_pvm.prom")).unwrap();
    check_exposition(&text);
    let sample = format!(
        "tokio_pvm_tuning_max_players{{pid=\"{}\",program=\"game_server\"}} 64",
        server.pid
    );
    assert!(text.lines().any(|l| l == sample), "{text}");
    // The game server declares its traffic as counters.
    assert!(
        text.contains("# TYPE tokio_pvm_stats_bytes_in_total counter")
            && text.contains("# TYPE tokio_pvm_stats_players gauge"),
        "{text}"
    );

    // A named process that is gone: the file is still written, and the status says so.
    let dead = dead_pid().to_string();
    server
        .pvmctl(&["export", "--textfile", out, "--once", &dead])
        .failure(1);
    let text = fs::read_to_string(textfile.path().join("tokio_pvm.prom")).unwrap();
    assert!(text.is_empty(), "{text}");
}

/// `GET path` over a plain TCP connection, as an HTTP/1.1 scraper sends it: the status code
/// and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to pvmctl serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a header and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[test]
fn serve_answers_scrapes_with_the_text_format_and_stops_on_sigterm() {
    let server = Server::start("serve");
    let dir = server.dir().to_str().unwrap().to_owned();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_pvmctl"))
        .args(["--dir", &dir, "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running pvmctl serve");
    let mut first = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("serving http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_owned();

    // A scrape, parsed by a published parser of the text format.
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    // The processes' metrics as `export` writes them, then the scrape's own (unlabelled).
    let fields: Vec<&str> = body
        .lines()
        .filter(|l| !l.contains("pvmctl_scrape"))
        .collect();
    check_exposition(&fields.join("\n"));
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the text format parses");
    let pid = server.pid.to_string();
    let players = scrape
        .samples
        .iter()
        .find(|s| s.metric == "tokio_pvm_tuning_max_players")
        .expect("a sample of the server's tunable field");
    assert_eq!(players.labels.get("pid"), Some(pid.as_str()));
    assert_eq!(players.labels.get("program"), Some("game_server"));
    assert!(matches!(players.value, prometheus_parse::Value::Gauge(v) if v == 64.0));
    let duration = scrape
        .samples
        .iter()
        .find(|s| s.metric == "pvmctl_scrape_duration_seconds")
        .expect("the scrape's own duration");
    assert!(matches!(duration.value, prometheus_parse::Value::Gauge(v) if v > 0.0 && v < 5.0));
    assert_eq!(http_get(&addr, "/-/healthy"), (200, "OK\n".to_owned()));
    assert_eq!(http_get(&addr, "/elsewhere").0, 404);

    // The target goes away: the next scrape still answers, without it.
    drop(server);
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&format!("pid=\"{pid}\"")), "{body}");
    assert!(body.contains("pvmctl_scrape_processes 0"), "{body}");

    // SIGTERM: a clean exit, promptly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "pvmctl serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn watch_prints_count_ticks_and_exits() {
    let server = Server::start("watch");
    let started = Instant::now();
    let run = server
        .pvmctl(&[
            "watch",
            &server.pid.to_string(),
            "--interval",
            "200ms",
            "--count",
            "2",
        ])
        .success();
    assert!(started.elapsed() < Duration::from_secs(5));
    let ticks: Vec<&str> = run.stdout.split("\n\n").collect();
    assert_eq!(ticks.len(), 2, "two ticks, one blank line apart: {run:#?}");
    for (i, tick) in ticks.iter().enumerate() {
        assert!(tick.starts_with(&format!("pvmctl watch: tick {}, every 200ms", i + 1)));
        assert!(
            tick.contains(&format!("{}  game_server", server.pid)),
            "{tick}"
        );
        assert!(tick.contains("  stats.players "), "{tick}");
    }
    // A counter shows its rate from the second tick on (the server's traffic grows).
    let bytes_in = |tick: &str| -> String {
        tick.lines()
            .find(|l| l.contains("stats.bytes_in"))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(!bytes_in(ticks[0]).contains("/s)"), "{}", ticks[0]);
    assert!(bytes_in(ticks[1]).ends_with("/s)"), "{}", ticks[1]);
    assert!(
        !run.stdout.contains('\x1b'),
        "no screen clearing into a pipe"
    );
}

#[test]
fn stale_manifests_are_skipped_and_cleaned() {
    let server = Server::start("stale");
    let dead = dead_pid();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(server.manifest()).unwrap()).unwrap();
    manifest["pid"] = dead.into();
    let stale = server.dir().join(format!("{dead}.json"));
    fs::write(&stale, manifest.to_string()).unwrap();

    let run = server.pvmctl(&["list"]).success();
    assert!(run.stdout.contains("game_server"), "{run:#?}");
    let skipped = format!("skipped {}: ", stale.display());
    assert!(
        run.stderr.lines().any(|l| l.starts_with(&skipped)),
        "{run:#?}"
    );

    let run = server.pvmctl(&["clean"]).success();
    assert_eq!(run.stdout, format!("removed {}\n", stale.display()));
    assert!(!stale.exists());
    assert!(server.manifest().exists(), "the live manifest stays");
    let run = server.pvmctl(&["list"]).success();
    assert!(run.stderr.is_empty(), "{run:#?}");
}

#[test]
fn help_documents_examples_and_exit_codes() {
    let run = pvmctl(&["--help"], None).success();
    for needle in [
        "Examples:",
        "Exit status:",
        "4  invalid value",
        "pvmctl set",
    ] {
        assert!(run.stdout.contains(needle), "{needle:?} in {}", run.stdout);
    }
    let run = pvmctl(&["watch", "--interval", "0s"], None);
    assert_eq!(run.code, Some(2), "{run:#?}");
}

/// A first user's mistakes get an error that names the cause and the fix, not a quiet success.
#[test]
fn a_missing_directory_is_an_error_that_names_it() {
    let run = pvmctl(&["--dir", "/nonexistent-tokio-pvm", "list"], None).failure(1);
    assert!(
        run.stderr.contains("/nonexistent-tokio-pvm") && run.stderr.contains("no such directory"),
        "{run:#?}"
    );
    let empty = std::env::temp_dir().join(format!("tokio-pvm-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.to_str().unwrap();
    let run = pvmctl(
        &[
            "--dir",
            e,
            "export",
            "--textfile",
            "/nonexistent-tf",
            "--once",
        ],
        None,
    )
    .failure(1);
    assert!(
        run.stderr.contains("/nonexistent-tf") && run.stderr.contains("mkdir -p"),
        "{run:#?}"
    );
    // With no publisher, --once still writes the file, and says that it has no metrics.
    let run = pvmctl(&["--dir", e, "export", "--textfile", e, "--once"], None).success();
    assert!(run.stderr.contains("no publishing processes"), "{run:#?}");
    assert!(empty.join("tokio_pvm.prom").exists());
    let _ = std::fs::remove_dir_all(&empty);
}

/// Issue 10, item 8: `dump`, `set`, `export PID` and `watch PID` refuse a manifest directory
/// that others may write to, or that is a symbolic link, as `list` does (exit status 3,
/// naming the directory and the fix), and write nothing.
#[test]
fn commands_on_a_pid_refuse_an_open_or_symlinked_dir() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start("dir-checks");
    let pid = server.pid.to_string();
    let textfile = TempDir::new("dir-checks-textfile");
    let out = textfile.path().to_str().unwrap();
    let commands: [&[&str]; 4] = [
        &["dump", &pid],
        &["set", &pid, "tuning.max_players=10"],
        &["export", "--textfile", out, "--once", &pid],
        &["watch", &pid, "--count", "1", "--interval", "100ms"],
    ];
    let dir = server.dir().to_str().unwrap().to_owned();
    let link = std::env::temp_dir().join(format!("pvmctl-test-{}-link", std::process::id()));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(server.dir(), &link).unwrap();
    let link_text = link.to_str().unwrap().to_owned();

    fs::set_permissions(server.dir(), fs::Permissions::from_mode(0o777)).unwrap();
    for args in commands {
        let run = server.pvmctl(args).failure(3);
        for w in [dir.as_str(), "writable by others", "chmod go-w"] {
            assert!(run.stderr.contains(w), "{args:?}: {w:?} not in {run:#?}");
        }
    }
    fs::set_permissions(server.dir(), fs::Permissions::from_mode(0o700)).unwrap();
    for args in commands {
        let mut all = vec!["--dir", link_text.as_str()];
        all.extend_from_slice(args);
        let run = pvmctl(&all, None).failure(3);
        for w in [link_text.as_str(), "symbolic link"] {
            assert!(run.stderr.contains(w), "{args:?}: {w:?} not in {run:#?}");
        }
    }
    let _ = fs::remove_file(&link);
    assert_eq!(
        u64_at(&server.dump_json(), "/blocks/tuning/max_players"),
        64,
        "nothing was written"
    );
}

/// Issue 10, item 9: `pvmctl set` refuses NaN, infinities and numbers that overflow to
/// infinity for an `f64` field (exit status 4, naming the value), and leaves the field as it
/// was; a finite value goes through. The target is this test process.
#[test]
fn set_refuses_floats_that_are_not_finite() {
    use tokio_pvm::probe::{BlockBuilder, Publication};
    let dir = TempDir::new("set-f64");
    let mut b = BlockBuilder::new("tuning").tunable();
    let ratio = b.f64("ratio");
    let mut tuning = b.build().unwrap();
    tuning.set(ratio, 0.5);
    let _published = Publication::publish_in(dir.path(), &[&tuning]).unwrap();
    let pid = std::process::id().to_string();
    let set = |value: &str| {
        let assignment = format!("tuning.ratio={value}");
        pvmctl(&["set", &pid, &assignment], Some(dir.path()))
    };
    for value in ["NaN", "nan", "inf", "-inf", "infinity", "1e309", "-1e309"] {
        let run = set(value).failure(4);
        assert!(run.stderr.starts_with("pvmctl: "), "{run:#?}");
        for w in [value, "not a finite number"] {
            assert!(run.stderr.contains(w), "{value}: {w:?} not in {run:#?}");
        }
        assert_eq!(
            tuning.read().unwrap().get(ratio),
            0.5,
            "{value} was written"
        );
    }
    let run = set("2.5").success();
    assert_eq!(run.stdout, "tuning.ratio: 0.5 -> 2.5\n");
    assert_eq!(tuning.read().unwrap().get(ratio), 2.5);
}
