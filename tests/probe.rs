//! Probe and poke between real processes: a child re-executes this test binary to publish
//! blocks, write tunables or probe as another user; the test probes it with real
//! `process_vm_readv`/`process_vm_writev` calls and real manifests on disk.

mod util;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_pvm::ErrorKind;
use tokio_pvm::probe::{Probe, Value};
use util::ChildProc;

child_entry!();

/// A test's own directories: `root` (open to every user) and `manifests` inside it, which
/// the first publishing child creates (mode 0700). Removed when the test ends.
struct Dirs {
    root: PathBuf,
    manifests: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        let root = util::temp_dir(&format!("probe-{name}"));
        let manifests = root.join("m");
        Dirs { root, manifests }
    }

    fn search(&self) -> Vec<PathBuf> {
        vec![self.manifests.clone()]
    }

    fn arg(&self) -> &str {
        self.manifests.to_str().unwrap()
    }

    fn manifest(&self, pid: i32) -> PathBuf {
        self.manifests.join(format!("{pid}.json"))
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Spawns a child playing `role` (its first argument is the manifest directory) and waits
/// until its manifest is there.
fn publisher(dirs: &Dirs, role: &str, args: &[&str]) -> ChildProc {
    let mut all = vec![dirs.arg()];
    all.extend_from_slice(args);
    let mut child = ChildProc::spawn(role, &all);
    let path = dirs.manifest(child.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if let Some(status) = child.child.try_wait().unwrap() {
            panic!("{role} child exited before publishing: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// A long-lived target with blocks "stats", "other" and "knobs" (tunable).
fn target(dirs: &Dirs) -> ChildProc {
    publisher(dirs, "probe_target", &["60000"])
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, json: &serde_json::Value) {
    std::fs::write(path, serde_json::to_vec_pretty(json).unwrap()).unwrap();
}

/// Rewrites the manifest at `path` in place.
fn edit(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut json = read_json(path);
    f(&mut json);
    write_json(path, &json);
}

fn u64_of(snap: &tokio_pvm::probe::Snapshot, field: &str) -> u64 {
    match snap.value(field) {
        Some(Value::U64(v)) => v,
        other => panic!("{field}: {other:?}"),
    }
}

/// The `key=value` pairs of a child's report line.
fn pairs(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(u64::MAX)))
        .collect()
}

/// Asserts that `result` failed with `kind` and a message containing every one of `words`;
/// returns the message.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(
    result: tokio_pvm::Result<T>,
    kind: ErrorKind,
    words: &[&str],
) -> String {
    let e = result.expect_err("expected an error");
    let text = e.to_string();
    assert_eq!(e.kind(), kind, "{text}");
    for w in words {
        assert!(text.contains(w), "{w:?} not in: {text}");
    }
    text
}

// ----- 1. consistency ----------------------------------------------------------------------

/// Reads `torn` from `pid` up to `reads` times or until `budget` has passed, checking every
/// snapshot: all four words, the float and the text encode one counter, which never goes
/// back. Returns (reads, consistent snapshots, inconsistent reads, first and last counter).
fn read_torn_block(
    pid: i32,
    dirs: &Dirs,
    reads: u64,
    budget: Duration,
) -> (u64, u64, u64, u64, u64) {
    let probe = Probe::attach_in(&dirs.search(), pid).unwrap();
    let (mut done, mut ok, mut inconsistent) = (0u64, 0u64, 0u64);
    let (mut first, mut last) = (None, 0u64);
    let deadline = Instant::now() + budget;
    while done < reads && Instant::now() < deadline {
        done += 1;
        let snap = match probe.read("torn") {
            Ok(snap) => snap,
            Err(e) if e.kind() == ErrorKind::Inconsistent => {
                inconsistent += 1;
                continue;
            }
            Err(e) => panic!("read failed: {e}"),
        };
        ok += 1;
        let n = u64_of(&snap, "a");
        let expected = [
            Value::U64(n),
            Value::U64(n),
            Value::U64(n),
            Value::U64(n),
            Value::F64(n as f64),
            Value::Str(n.to_string()),
        ];
        let got: Vec<Value> = snap.values().map(|(_, v)| v).collect();
        assert_eq!(
            got,
            expected,
            "torn snapshot at sequence {}",
            snap.sequence()
        );
        assert_eq!(
            snap.sequence() % 2,
            0,
            "a snapshot taken while a writer was inside"
        );
        assert!(n >= last, "the counter went back from {last} to {n}");
        last = n;
        first.get_or_insert(n);
    }
    (done, ok, inconsistent, first.unwrap_or(0), last)
}

/// A writer updating between short random pauses (0 to 10 µs): every read overlaps about
/// two updates, and 100,000 of them fit in a few seconds even in a debug build.
#[test]
fn torn_reads_never_seen_by_a_probe() {
    let dirs = Dirs::new("torn");
    let child = publisher(&dirs, "probe_torn", &["10000"]);
    let started = Instant::now();
    let (reads, ok, inconsistent, first, last) =
        read_torn_block(child.pid(), &dirs, 100_000, Duration::from_secs(20));
    eprintln!(
        "torn reads, paced writer: {reads} reads in {:?}: {ok} consistent snapshots, \
         {inconsistent} inconsistent; counter {first} -> {last} (+{})",
        started.elapsed(),
        last - first
    );
    assert!(
        ok >= 10_000,
        "too few consistent snapshots: {ok} of {reads}"
    );
    assert!(
        last - first > 1000,
        "the writer was not writing: {first} -> {last}"
    );
}

/// A writer updating back to back at full speed: most read attempts race an update. The
/// probe gets fewer snapshots (it retries), reads for a fixed time, and never a torn one.
#[test]
fn torn_reads_never_seen_against_a_full_speed_writer() {
    let dirs = Dirs::new("torn-full");
    let child = publisher(&dirs, "probe_torn", &["0"]);
    let started = Instant::now();
    let (reads, ok, inconsistent, first, last) =
        read_torn_block(child.pid(), &dirs, 100_000, Duration::from_secs(2));
    eprintln!(
        "torn reads, full-speed writer: {reads} reads in {:?}: {ok} consistent snapshots, \
         {inconsistent} inconsistent; counter {first} -> {last} (+{})",
        started.elapsed(),
        last - first
    );
    assert!(ok > 0, "no consistent snapshot in {reads} reads");
    assert!(
        last - first > 1000,
        "the writer was not writing: {first} -> {last}"
    );
}

/// Two setter processes write "AAAA…" and "BBBB…" into one 64-byte field thousands of times
/// each while the target reads the block in-process: no snapshot mixes them, and each
/// setter's `old` value is whole too.
#[test]
fn concurrent_setters_never_interleave() {
    let dirs = Dirs::new("setters");
    let target = publisher(&dirs, "probe_tunable", &[]);
    let pid = target.pid().to_string();
    const SETS: u64 = 3000;
    let count = SETS.to_string();
    let a = ChildProc::spawn("probe_setter", &[dirs.arg(), &pid, "A", &count]);
    let b = ChildProc::spawn("probe_setter", &[dirs.arg(), &pid, "B", &count]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(dirs.manifests.join("ready-A").exists() && dirs.manifests.join("ready-B").exists()) {
        assert!(Instant::now() < deadline, "the setters never got ready");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::fs::write(dirs.manifests.join("go"), b"").unwrap();
    let mut setters = Vec::new();
    for (name, child) in [("A", a), ("B", b)] {
        let (ok, out) = child.finish(Duration::from_secs(60));
        assert!(ok, "setter {name} failed");
        assert_eq!(out.len(), 1, "{out:?}");
        eprintln!("setter {name}: {}", out[0]);
        let p = pairs(&out[0]);
        assert_eq!(p["sets"], SETS);
        assert_eq!((p["bad"], p["errors"]), (0, 0), "setter {name}: {}", out[0]);
        assert_eq!(p["own"] + p["others"] + p["empty"], SETS);
        setters.push(p);
    }
    assert_eq!(
        setters[0]["empty"] + setters[1]["empty"],
        1,
        "only the first write finds the field empty"
    );
    // One after the other, only the second setter's first write would find the other's
    // value; more means the lock passed between them while both were writing.
    assert!(
        setters[0]["others"] + setters[1]["others"] >= 2,
        "the setters never ran at the same time"
    );
    let probe = Probe::attach_in(&dirs.search(), target.pid()).unwrap();
    probe.set("tune", "stop", Value::Bool(true)).unwrap();
    let (ok, out) = target.finish(Duration::from_secs(10));
    assert!(ok);
    assert_eq!(out.len(), 1, "{out:?}");
    eprintln!("target: {}", out[0]);
    let p = pairs(&out[0]);
    assert_eq!((p["torn"], p["other"]), (0, 0), "{}", out[0]);
    assert!(p["a"] > 0 && p["b"] > 0, "{}", out[0]);
    assert!(p["transitions"] >= 2, "{}", out[0]);
}

// ----- 2. poke -----------------------------------------------------------------------------

/// Waits until the target's "ack" block satisfies `done`.
fn wait_ack(probe: &Probe, done: impl Fn(&tokio_pvm::probe::Snapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ack = probe.read("ack").unwrap();
        if done(&ack) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the target never acknowledged: {ack:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn set_changes_what_the_target_reads() {
    let dirs = Dirs::new("poke");
    let child = publisher(&dirs, "probe_poke", &[]);
    let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
    let tune = probe.read("tune").unwrap();
    assert_eq!(tune.value("limit"), Some(Value::U64(5)));
    assert_eq!(tune.value("mode"), Some(Value::Str("slow".into())));
    assert!(tune.is_tunable() && !probe.read("ack").unwrap().is_tunable());

    let change = probe.set("tune", "limit", Value::U64(42)).unwrap();
    assert_eq!((change.old, change.new), (Value::U64(5), Value::U64(42)));
    wait_ack(&probe, |a| u64_of(a, "limit") == 42);
    let change = probe
        .set("tune", "mode", Value::Str("fast".into()))
        .unwrap();
    assert_eq!(change.old, Value::Str("slow".into()));
    wait_ack(&probe, |a| {
        a.value("mode") == Some(Value::Str("fast".into()))
    });
    let change = probe.set("tune", "limit", Value::U64(7)).unwrap();
    assert_eq!(
        change.old,
        Value::U64(42),
        "the old value is the last one written"
    );
    wait_ack(&probe, |a| u64_of(a, "limit") == 7);

    // Refused writes, each before anything is written.
    let before = probe.read("tune").unwrap();
    expect_err(
        probe.set("ack", "limit", Value::U64(1)),
        ErrorKind::InvalidInput,
        &["not tunable"],
    );
    expect_err(
        probe.set("tune", "limit", Value::I64(1)),
        ErrorKind::InvalidInput,
        &["u64"],
    );
    expect_err(
        probe.set("tune", "limit", Value::Str("3".into())),
        ErrorKind::InvalidInput,
        &["u64"],
    );
    expect_err(
        probe.set("tune", "mode", Value::Str("x".repeat(17))),
        ErrorKind::InvalidInput,
        &["str[16]"],
    );
    expect_err(
        probe.set("tune", "nope", Value::U64(1)),
        ErrorKind::NotFound,
        &["\"nope\"", "limit, mode, quit"],
    );
    expect_err(
        probe.set("nope", "limit", Value::U64(1)),
        ErrorKind::NotFound,
        &["\"nope\"", "tune, ack"],
    );
    let after = probe.read("tune").unwrap();
    assert_eq!(
        after.sequence(),
        before.sequence(),
        "a refused write touched the block"
    );
    assert_eq!(after.value("limit"), Some(Value::U64(7)));

    let change = probe.set("tune", "quit", Value::Bool(true)).unwrap();
    assert_eq!(change.old, Value::Bool(false));
    let (ok, out) = child.finish(Duration::from_secs(10));
    assert!(ok);
    assert_eq!(
        out,
        [
            "limit=42 mode=slow quit=false",
            "limit=42 mode=fast quit=false",
            "limit=7 mode=fast quit=false",
            "limit=7 mode=fast quit=true",
        ],
        "the target saw each write once, in order"
    );
}

// ----- 3. and 4. stale manifests -----------------------------------------------------------

#[test]
fn manifest_of_a_killed_process_is_stale() {
    let dirs = Dirs::new("stale");
    let mut child = target(&dirs);
    let pid = child.pid();
    let probe = Probe::attach_in(&dirs.search(), pid).unwrap();
    assert_eq!(u64_of(&probe.read("stats").unwrap(), "n"), 7);
    child.kill(); // SIGKILL: the publication is never dropped
    let path = dirs.manifest(pid);
    assert!(path.exists(), "a killed process leaves its manifest behind");

    let found = Probe::discover_in(&dirs.search());
    assert!(found.processes.is_empty(), "{:?}", found.processes);
    assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
    let (skipped, e) = &found.skipped[0];
    assert_eq!(skipped, &path);
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("gone"), "{e}");
    expect_err(
        Probe::attach_in(&dirs.search(), pid),
        ErrorKind::NotFound,
        &["stale manifest", &pid.to_string(), "gone"],
    );
    expect_err(probe.read("stats"), ErrorKind::NotFound, &["gone"]);
    expect_err(
        probe.set("stats", "n", Value::U64(1)),
        ErrorKind::InvalidInput,
        &["not tunable"],
    );
}

#[test]
fn reused_pid_is_refused_as_stale() {
    let dirs = Dirs::new("reuse");
    let child = target(&dirs);
    let path = dirs.manifest(child.pid());
    edit(&path, |m| {
        let start = m["start_time"].as_u64().unwrap();
        m["start_time"] = (start + 12_345).into();
    });
    let found = Probe::discover_in(&dirs.search());
    assert!(found.processes.is_empty());
    assert_eq!(found.skipped.len(), 1);
    let e = &found.skipped[0].1;
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    for w in ["another process", "started at tick"] {
        assert!(e.to_string().contains(w), "{e}");
    }
    expect_err(
        Probe::attach_in(&dirs.search(), child.pid()),
        ErrorKind::NotFound,
        &["another process"],
    );
}

// ----- 5. addresses that are not the block -------------------------------------------------

#[test]
fn block_address_unmapped_or_not_a_block() {
    let dirs = Dirs::new("address");
    let child = target(&dirs);
    let path = dirs.manifest(child.pid());
    let original = read_json(&path);
    let stats = original["blocks"][0]["address"].as_u64().unwrap();
    let other = original["blocks"][1]["address"].as_u64().unwrap();
    assert_eq!(original["blocks"][0]["name"], "stats");
    let cases: [(u64, &[&str]); 5] = [
        (0x10000, &["EFAULT", "not mapped"]),
        (0x7fff_ffff_f000, &["EFAULT"]),
        // Inside the block: the words there are not a header.
        (stats + 8, &["no block header"]),
        // The sequence word would be field "n" (7): odd, as if a writer never finished.
        (stats + 16, &["no block header"]),
        // Another block, same size, another layout.
        (other, &["not the one the manifest describes"]),
    ];
    for (address, words) in cases {
        let mut m = original.clone();
        m["blocks"][0]["address"] = address.into();
        write_json(&path, &m);
        let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
        let text = expect_err(probe.read("stats"), ErrorKind::InvalidData, words);
        if !text.contains("EFAULT") {
            assert!(text.contains(&format!("{address:#x}")), "{text}");
        }
        // The other block is untouched and still reads.
        assert_eq!(u64_of(&probe.read("other").unwrap(), "m"), 9);
        expect_err(probe.read_all(), ErrorKind::InvalidData, words);
    }

    // A tunable block whose address is off: `set` refuses before writing anything, even
    // where the word it would take for the sequence is odd (knobs + 16: "level", 3), which
    // looks like a writer that died half-way.
    let knobs = original["blocks"][2]["address"].as_u64().unwrap();
    assert_eq!(original["blocks"][2]["name"], "knobs");
    for address in [knobs + 8, knobs + 16, stats, 0x10000] {
        let mut m = original.clone();
        m["blocks"][2]["address"] = address.into();
        write_json(&path, &m);
        let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
        expect_err(
            probe.set("knobs", "level", Value::U64(1)),
            ErrorKind::InvalidData,
            &[],
        );
    }

    write_json(&path, &original);
    let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
    let all = probe.read_all().unwrap();
    assert_eq!(u64_of(&all[0], "n"), 7);
    assert_eq!(all[0].value("label"), Some(Value::Str("target".into())));
    assert_eq!(u64_of(&all[1], "m"), 9);
    assert_eq!(
        u64_of(&all[2], "level"),
        3,
        "a refused set wrote into the target"
    );
    let change = probe.set("knobs", "level", Value::U64(4)).unwrap();
    assert_eq!(change.old, Value::U64(3));
}

// ----- 6. corrupt manifests ----------------------------------------------------------------

#[test]
fn corrupt_manifests_are_skipped_with_reasons() {
    let dirs = Dirs::new("corrupt");
    let good = [target(&dirs), target(&dirs)];
    let base_path = dirs.manifest(good[0].pid());
    let base_bytes = std::fs::read(&base_path).unwrap();
    let base = read_json(&base_path);
    let dir = &dirs.manifests;
    let mut expected: Vec<(PathBuf, &str)> = Vec::new();
    let mut raw = |name: &str, bytes: &[u8], why: &'static str| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        expected.push((path, why));
    };
    raw(
        "1000001.json",
        &[0xff, 0x00, 0x13, 0x37, b'{', 0xc3],
        "not a valid manifest",
    );
    raw(
        "1000002.json",
        &base_bytes[..base_bytes.len() / 2],
        "not a valid manifest",
    );
    raw(
        "1000003.json",
        &vec![b' '; 2 << 20],
        "at most 1048576 bytes",
    );
    raw("1000004.json", b"null", "not a valid manifest");
    raw("1000005.json", b"", "not a valid manifest");
    // A copy naming the good process, under another pid's name.
    raw("1000006.json", &base_bytes, "names pid");
    let mut edited = |n: u32, why: &'static str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut m = base.clone();
        m["pid"] = n.into();
        f(&mut m);
        let path = dir.join(format!("{n}.json"));
        write_json(&path, &m);
        expected.push((path, why));
    };
    edited(1000007, "misplaced", &|m| {
        m["blocks"][0]["fields"][0]["offset"] = 4096.into()
    });
    edited(1000008, "must be 1 to 64 ASCII letters", &|m| {
        m["blocks"][0]["name"] = "bad name!".into()
    });
    edited(1000009, "must be 1 to 64 ASCII letters", &|m| {
        m["blocks"][0]["fields"][1]["name"] = "../../etc".into()
    });
    edited(1000010, "format 99", &|m| m["format"] = 99.into());
    edited(1000011, "not a valid block address", &|m| {
        m["blocks"][0]["address"] = (u64::MAX - 7).into()
    });
    edited(1000012, "not a valid block address", &|m| {
        m["blocks"][0]["address"] = 0x10004.into()
    });
    edited(1000013, "unknown kind", &|m| {
        m["blocks"][0]["fields"][0]["kind"] = "u128".into()
    });
    edited(1000014, "layout hash", &|m| {
        m["blocks"][0]["fields"][0]["name"] = "renamed".into()
    });
    edited(1000015, "more than 64 blocks", &|m| {
        let block = m["blocks"][0].clone();
        m["blocks"] = vec![block; 65].into();
    });
    edited(1000016, "appears twice", &|m| {
        let block = m["blocks"][0].clone();
        m["blocks"][1] = block;
    });
    edited(1000017, "block size", &|m| {
        m["blocks"][0]["size"] = (1u64 << 40).into()
    });
    edited(1000018, "not a valid manifest", &|m| m["pid"] = "12".into());
    edited(1000019, "names pid", &|m| m["pid"] = (-1).into());
    let not_a_file = dir.join("1000020.json");
    std::fs::create_dir(&not_a_file).unwrap();
    expected.push((not_a_file, "not a regular file"));
    // Not manifests at all: passed over.
    std::fs::write(dir.join("notes.txt"), b"hello").unwrap();
    std::fs::write(dir.join(".1000021.json.tmp"), b"{").unwrap();
    std::fs::write(dir.join(".1000022.json"), b"{").unwrap();

    let found = Probe::discover_in(&dirs.search());
    let mut pids: Vec<i32> = good.iter().map(ChildProc::pid).collect();
    pids.sort();
    assert_eq!(
        found.processes.iter().map(|p| p.pid()).collect::<Vec<_>>(),
        pids,
        "the good processes are still found"
    );
    for p in &found.processes {
        assert_eq!(p.blocks().len(), 3);
        assert_eq!(p.uid(), nix::unistd::getuid().as_raw());
    }
    assert_eq!(
        found.skipped.len(),
        expected.len(),
        "{:#?}",
        found.skipped.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, why) in &expected {
        let (_, e) = found
            .skipped
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{} was not skipped", path.display()));
        let text = e.to_string();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{text}");
        assert!(text.contains(why), "{why:?} not in: {text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.len() < 1000, "a long message: {text}");
    }
    expect_err(
        Probe::attach_in(&dirs.search(), 1000007),
        ErrorKind::InvalidData,
        &["misplaced"],
    );
    let probe = Probe::attach_in(&dirs.search(), good[1].pid()).unwrap();
    assert_eq!(probe.read_all().unwrap().len(), 3);
}

// ----- 7. and 8. permissions ---------------------------------------------------------------

#[test]
fn unprivileged_probe_is_refused_with_the_fix() {
    if !ChildProc::can_switch_uid() {
        eprintln!("skipped: running children as uid 65534 needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dirs = Dirs::new("perm");
    let target = target(&dirs);
    let pid = target.pid().to_string();
    let path = dirs.manifest(target.pid());
    let as_nobody = || {
        let child = ChildProc::spawn_with("probe_try", &[dirs.arg(), &pid, "stats"], Some(65534));
        let (ok, out) = child.finish(Duration::from_secs(20));
        assert!(ok, "the probe child failed: {out:?}");
        eprintln!("as nobody: {out:#?}");
        out
    };

    // The manifest directory is root's, mode 0700: nobody cannot even list it.
    let out = as_nobody();
    assert_eq!(out[0], "discover processes=0 skipped=0");
    assert!(
        out[1].starts_with("attach PermissionDenied: ")
            && out[1].contains(&*path.to_string_lossy()),
        "{out:?}"
    );

    // Readable manifest (owned by root, like the target): attach works, the memory read
    // is refused by the kernel, and the error tells how to allow it.
    std::fs::set_permissions(&dirs.manifests, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = as_nobody();
    assert_eq!(out[0], "discover processes=1 skipped=0");
    assert_eq!(out[1], "attach ok");
    let read = &out[2];
    assert!(read.starts_with("read PermissionDenied: "), "{read}");
    for w in [
        "belongs to uid 0",
        "run the probe as uid 0 or as root",
        &pid,
    ] {
        assert!(read.contains(w), "{w:?} not in: {read}");
    }
}

#[test]
fn manifest_owned_by_another_user_is_refused() {
    if !ChildProc::can_switch_uid() {
        eprintln!("skipped: chown needs root");
        return;
    }
    let dirs = Dirs::new("owner");
    let target = target(&dirs);
    let path = dirs.manifest(target.pid());
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let found = Probe::discover_in(&dirs.search());
    assert!(found.processes.is_empty());
    assert_eq!(found.skipped.len(), 1);
    let e = &found.skipped[0].1;
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    expect_err(
        Probe::attach_in(&dirs.search(), target.pid()),
        ErrorKind::PermissionDenied,
        &["owned by uid 65534", "runs as uid 0"],
    );
}

// ----- 9. watch ----------------------------------------------------------------------------

/// Watches a target that exits after about a second; returns how many ticks yielded
/// snapshots, and checks that one NotFound error then the end follow.
async fn watch_until_exit(probe: &Probe) -> usize {
    let mut ticks = Box::pin(probe.watch(Duration::from_millis(100)));
    let mut oks = 0;
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ticks.next().await {
                Some(Ok(snaps)) => {
                    assert_eq!(snaps.len(), 3);
                    assert_eq!(u64_of(&snaps[0], "n"), 7);
                    oks += 1;
                }
                Some(Err(e)) => return e,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await
    .expect("the stream went on after the target exited");
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    let end = tokio::time::timeout(Duration::from_secs(5), ticks.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the stream did not end after the error: {:?}",
        end.map(|e| e.map(|r| r.map(|s| s.len())))
    );
    oks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_when_the_target_exits() {
    let dirs = Dirs::new("watch");
    let child = publisher(&dirs, "probe_target", &["1000"]);
    let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
    // Reaped as soon as it exits, as a shell or a supervisor would.
    let reaper = std::thread::spawn(move || {
        let mut child = child;
        child.child.wait().unwrap()
    });
    let oks = watch_until_exit(&probe).await;
    assert!(oks >= 3, "only {oks} snapshots in about a second");
    assert!(reaper.join().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_when_the_target_is_a_zombie() {
    let dirs = Dirs::new("watch-zombie");
    let child = publisher(&dirs, "probe_target", &["1000"]);
    let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
    // Not reaped while watched: the exited process stays a zombie, its /proc entry there.
    let oks = watch_until_exit(&probe).await;
    assert!(oks >= 3, "only {oks} snapshots in about a second");
    let (ok, _) = child.finish(Duration::from_secs(5));
    assert!(ok);
}

// ----- 10. whose credentials: a process that becomes someone else --------------------------

/// The start time of process `pid` (field 22 of `/proc/PID/stat`).
fn start_time(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace()
        .nth(22 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads `len` bytes of process `pid` at `addr` through `/proc/PID/mem`, as root may.
fn peek(pid: i32, addr: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    mem.seek(SeekFrom::Start(addr)).unwrap();
    let mut buf = vec![0u8; len];
    mem.read_exact(&mut buf).unwrap();
    buf
}

/// The manifest entry and in-memory bytes of a tunable block "knobs" (`level` = 3, `note` =
/// "owned by root"), as this crate publishes it, to be placed at `address` elsewhere.
fn knobs_block(address: u64) -> (serde_json::Value, Vec<u8>) {
    use tokio_pvm::probe::{BlockBuilder, Publication};
    let root = util::temp_dir("knobs-template");
    let dir = root.join("m");
    let mut b = BlockBuilder::new("knobs").tunable();
    b.u64("level");
    b.string("note", 32);
    let block = b.build().unwrap();
    let publication = Publication::publish_in(&dir, &[&block]).unwrap();
    let mut entry = read_json(publication.manifest_path())["blocks"][0].clone();
    drop(publication);
    let _ = std::fs::remove_dir_all(&root);
    let size = entry["size"].as_u64().unwrap();
    let hash = entry["layout_hash"].as_u64().unwrap();
    entry["address"] = address.into();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"TPVMBLK\0");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&(size as u32).to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes()); // sequence
    bytes.extend_from_slice(&hash.to_le_bytes());
    bytes.extend_from_slice(&3u64.to_le_bytes()); // level
    let mut note = b"owned by root".to_vec();
    note.resize(32, 0);
    bytes.extend_from_slice(&note);
    assert_eq!(bytes.len() as u64, size);
    (entry, bytes)
}

/// A child that is not a test role, killed and reaped on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 10, item 2: uid 65534 publishes a manifest for its own process, whose block address
/// is a static buffer of a setuid-root program; once root's probe has loaded the manifest the
/// process execs that program (same pid, same start time). The probe must neither read nor
/// write it: every access runs with uid 65534's credentials, which the kernel now refuses.
#[test]
fn a_process_that_execs_a_setuid_program_after_load_is_neither_read_nor_written() {
    use std::io::{BufRead, Write};
    use std::os::unix::process::CommandExt;
    let Some(helper) = util::setuid::setuid_helper() else {
        return;
    };
    let dirs = Dirs::new("setuid-exec");
    let (entry, block) = knobs_block(helper.block_addr);
    // A shell of uid 65534 that execs the helper when told to.
    let mut shell = Killed(
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("read go; {}", helper.exec_line(&block)))
            .uid(65534)
            .gid(65534)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = shell.0.id() as i32;
    std::fs::DirBuilder::new().create(&dirs.manifests).unwrap();
    let path = dirs.manifest(pid);
    let manifest = serde_json::json!({
        "format": 1,
        "pid": pid,
        "start_time": start_time(pid),
        "uid": 65534,
        "program": "sh",
        "blocks": [entry],
    });
    write_json(&path, &manifest);
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let probe = Probe::attach_in(&dirs.search(), pid).expect("a manifest of uid 65534's process");

    // Now the process becomes the setuid-root program.
    writeln!(shell.0.stdin.take().unwrap(), "go").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(shell.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "65534", "0", "0", "0"]
    );
    assert_eq!(start_time(pid), manifest["start_time"].as_u64().unwrap());

    let words = ["uid 65534", &pid.to_string()];
    expect_err(probe.read("knobs"), ErrorKind::PermissionDenied, &words);
    expect_err(probe.read_all(), ErrorKind::PermissionDenied, &words);
    let first_tick = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async {
            let mut ticks = Box::pin(probe.watch(Duration::from_millis(10)));
            ticks.next().await
        })
        .expect("a first tick");
    expect_err(first_tick, ErrorKind::PermissionDenied, &words);
    expect_err(
        probe.set("knobs", "level", Value::U64(99)),
        ErrorKind::PermissionDenied,
        &words,
    );
    // Root itself may read the program's memory: it is there, and it is unchanged.
    assert_eq!(peek(pid, helper.block_addr, block.len()), block);
    let secret = util::setuid::SETUID_SECRET.as_bytes();
    assert_eq!(peek(pid, helper.secret_addr, secret.len()), secret);
}

/// Issue 10, item 6: the manifest is replaced by a FIFO after the probe loaded it. `set`
/// locks the file it loaded, never opens the path again (a FIFO would block it forever),
/// and refuses the replaced manifest at once; nothing is written.
#[test]
fn set_refuses_a_manifest_replaced_by_a_fifo_without_blocking() {
    let dirs = Dirs::new("swap-fifo");
    let target = target(&dirs);
    let probe = Probe::attach_in(&dirs.search(), target.pid()).unwrap();
    let path = dirs.manifest(target.pid());
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let setter = probe.clone();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(setter.set("knobs", "level", Value::U64(4)));
    });
    let result = match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(result) => result,
        Err(_) => {
            // Let the blocked open go before failing.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&path);
            panic!("set blocked on the FIFO put in place of the manifest");
        }
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    expect_err(
        result,
        ErrorKind::NotFound,
        &["replaced", &path.to_string_lossy()],
    );
    assert_eq!(u64_of(&probe.read("knobs").unwrap(), "level"), 3);
}

/// Issue 10, item 6: the manifest is replaced by a symbolic link to another file after the
/// probe loaded it. `set` never opens or locks the link's target (here locked by someone
/// else: locking it would wait), and refuses the replaced manifest at once.
#[test]
fn set_refuses_a_manifest_replaced_by_a_symlink_without_locking_its_target() {
    use nix::fcntl::{Flock, FlockArg};
    let dirs = Dirs::new("swap-link");
    let target = target(&dirs);
    let probe = Probe::attach_in(&dirs.search(), target.pid()).unwrap();
    let path = dirs.manifest(target.pid());
    let victim = dirs.root.join("root-only");
    std::fs::write(&victim, b"not a manifest").unwrap();
    let held = Flock::lock(
        std::fs::File::open(&victim).unwrap(),
        FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e)
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let started = Instant::now();
    let result = probe.set("knobs", "level", Value::U64(4));
    let took = started.elapsed();
    let text = expect_err(
        result,
        ErrorKind::NotFound,
        &["replaced", &path.to_string_lossy()],
    );
    assert!(took < Duration::from_secs(2), "{took:?}: {text}");
    drop(held);
    assert_eq!(u64_of(&probe.read("knobs").unwrap(), "level"), 3);
}

/// Issue 10, item 8: attaching refuses a manifest directory that others may write to, or
/// that is a symbolic link, as discovery does, naming the directory and the fix.
#[test]
fn attach_refuses_an_open_or_symlinked_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = Dirs::new("attach-dir");
    let target = target(&dirs);
    let pid = target.pid();
    let shown = dirs.manifests.to_string_lossy().into_owned();
    std::fs::set_permissions(&dirs.manifests, std::fs::Permissions::from_mode(0o777)).unwrap();
    expect_err(
        Probe::attach_in(&dirs.search(), pid),
        ErrorKind::PermissionDenied,
        &[&shown, "writable by others", "chmod go-w"],
    );
    std::fs::set_permissions(&dirs.manifests, std::fs::Permissions::from_mode(0o770)).unwrap();
    expect_err(
        Probe::attach_in(&dirs.search(), pid),
        ErrorKind::PermissionDenied,
        &[&shown, "writable by its group"],
    );
    std::fs::set_permissions(&dirs.manifests, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = dirs.root.join("link");
    std::os::unix::fs::symlink(&dirs.manifests, &link).unwrap();
    expect_err(
        Probe::attach_in(std::slice::from_ref(&link), pid),
        ErrorKind::PermissionDenied,
        &[&link.to_string_lossy(), "symbolic link"],
    );
    // The directory itself is fine.
    Probe::attach_in(&dirs.search(), pid).unwrap();
}

/// Reads of another user's process run on a thread with that user's credentials: they work,
/// writes too. Prints what a read costs that way against a read of a root process (taken
/// directly), for the record.
#[test]
fn another_users_process_is_read_and_written_with_its_credentials() {
    if !ChildProc::can_switch_uid() {
        eprintln!("skipped: running children as uid 65534 needs root");
        return;
    }
    let dirs = Dirs::new("owner-creds");
    let child = target_as(&dirs, (65534, 65534));
    let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
    assert_eq!(probe.info().uid(), 65534);
    assert_eq!(u64_of(&probe.read("stats").unwrap(), "n"), 7);
    let change = probe.set("knobs", "level", Value::U64(5)).unwrap();
    assert_eq!(change.old, Value::U64(3));
    assert_eq!(u64_of(&probe.read("knobs").unwrap(), "level"), 5);

    let root_dirs = Dirs::new("owner-creds-root");
    let root_target = target(&root_dirs);
    let direct = Probe::attach_in(&root_dirs.search(), root_target.pid()).unwrap();
    let time = |probe: &Probe| {
        let started = Instant::now();
        for _ in 0..500 {
            probe.read("stats").unwrap();
        }
        started.elapsed() / 500
    };
    let (owner_thread, own) = (time(&probe), time(&direct));
    eprintln!(
        "Probe::read of \"stats\": {owner_thread:?} on a thread with uid 65534's credentials, \
         {own:?} directly (root target)"
    );
    // Switching a thread's credentials made the kernel mark this process not dumpable; once
    // no such thread runs (other tests may be using one), it is dumpable again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !nix::sys::prctl::get_dumpable().unwrap() {
        assert!(
            Instant::now() < deadline,
            "the probe left this process not dumpable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A process of uid 65534 that runs in group 0, which uid 65534 is not a member of (someone
/// privileged put it there), is not read with group 0's credentials on its owner's behalf.
#[test]
fn a_process_in_a_group_its_owner_is_not_in_is_refused() {
    if !ChildProc::can_switch_uid() {
        eprintln!("skipped: running children as uid 65534 needs root");
        return;
    }
    let dirs = Dirs::new("foreign-group");
    let child = target_as(&dirs, (65534, 0));
    let probe = Probe::attach_in(&dirs.search(), child.pid()).unwrap();
    let err = probe.read("stats").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("not a member"), "{err}");
    let err = probe.set("knobs", "level", Value::U64(5)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}

/// A `probe_target` child running as `(uid, gid)`, once its manifest is in `dirs`.
fn target_as(dirs: &Dirs, ids: (u32, u32)) -> ChildProc {
    let mut child = ChildProc::spawn_as("probe_target", &[dirs.arg(), "60000"], Some(ids));
    let path = dirs.manifest(child.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            child.child.try_wait().unwrap().is_none(),
            "the child exited"
        );
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}
