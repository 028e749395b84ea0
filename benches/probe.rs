//! What probe and poke cost: the target's updates, and a probe's reads and writes.
//!
//! ```text
//! cargo bench --bench probe
//! cargo bench --bench probe -- --quick      # a faster, rougher run
//! ```
//!
//! - `update/1 field`, `update/5 fields`: [`Block::update`] on an ordinary (not tunable)
//!   block, the cost a process pays on its hot path to keep published state current: a few
//!   atomic stores framed by the seqlock, no system call.
//! - `update/set`: [`Block::set`], an update of one field.
//! - `update/read in process`: [`Block::read`], the consistent copy a process takes of its own
//!   block (how it reads its tunables; [`Block::changed_since`] alone is one atomic load).
//! - `probe/read small`, `probe/read 1 KiB string`: [`Probe::read`] of a published block of
//!   six fields, and of one that also holds a 1024-byte string.
//! - `probe/set u64`: [`Probe::set`] of one `u64` field of a tunable block.
//!
//! The probe benchmarks publish the blocks in a temporary directory and attach to this very
//! process. `process_vm_readv` on oneself still enters the kernel and goes through the same
//! access check and page walk as on another process, so `Probe::read` costs what it costs
//! against a real target: three system calls (sequence word, block, sequence word again)
//! when no writer interferes. What it does not measure is the cache misses of reading another
//! CPU's freshly written lines.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio_pvm::probe::{Block, BlockBuilder, Probe, Publication, Value};

/// An ordinary block of five `u64` fields and the handles of all five.
fn five_field_block() -> (Block, [tokio_pvm::probe::Field<u64>; 5]) {
    let mut b = BlockBuilder::new("hot");
    let fields = [b.u64("a"), b.u64("b"), b.u64("c"), b.u64("d"), b.u64("e")];
    (b.build().expect("a valid block"), fields)
}

fn target_side(c: &mut Criterion) {
    let (mut block, [a, b, c2, d, e]) = five_field_block();
    let mut group = c.benchmark_group("update");
    let mut n = 0u64;
    group.bench_function("1 field", |bench| {
        bench.iter(|| {
            n = n.wrapping_add(1);
            block.update(|w| w.set(a, black_box(n)));
        })
    });
    group.bench_function("5 fields", |bench| {
        bench.iter(|| {
            n = n.wrapping_add(1);
            let v = black_box(n);
            block.update(|w| {
                w.set(a, v);
                w.set(b, v + 1);
                w.set(c2, v + 2);
                w.set(d, v + 3);
                w.set(e, v + 4);
            });
        })
    });
    group.bench_function("set", |bench| {
        bench.iter(|| {
            n = n.wrapping_add(1);
            block.set(a, black_box(n));
        })
    });
    group.bench_function("read in process", |bench| {
        bench.iter(|| black_box(block.read().expect("no writer is running")))
    });
    group.finish();
}

/// A directory of its own for this run's manifest (not named `tokio-pvm-*`, so that `pvmctl`
/// does not find it); removed at the end.
fn bench_dir() -> PathBuf {
    std::env::temp_dir().join(format!("pvm-bench-{}", std::process::id()))
}

fn probe_side(c: &mut Criterion) {
    // `stats`: six fields, 32 + 6 * 8 = 80 bytes with the header.
    let mut s = BlockBuilder::new("stats");
    let players = s.u64("players");
    s.u64("rooms");
    s.f64("tick_ms");
    s.u64("bytes_in");
    s.u64("bytes_out");
    s.bool("open");
    let mut stats = s.build().expect("a valid block");
    // `log`: two fields and a 1024-byte string, 1 KiB plus 48 bytes.
    let mut l = BlockBuilder::new("log");
    let lines = l.u64("lines");
    l.u64("errors");
    let last = l.string("last", 1024);
    let mut log = l.build().expect("a valid block");
    // `tuning`: what `Probe::set` writes.
    let mut t = BlockBuilder::new("tuning").tunable();
    let limit = t.u64("limit");
    let tuning = t.build().expect("a valid block");

    stats.set(players, 12);
    let text = "x".repeat(1024);
    log.update(|w| {
        w.set(lines, 1);
        w.set_str(last, &text);
    });

    let dir = bench_dir();
    let publication =
        Publication::publish_in(&dir, &[&stats, &log, &tuning]).expect("publishing the blocks");
    let probe = Probe::attach_in(std::slice::from_ref(&dir), std::process::id() as i32)
        .expect("attaching to this process");
    // Fails early, with the kernel's reason, if this process may not read itself.
    probe.read_all().expect("reading this process's blocks");

    let mut group = c.benchmark_group("probe");
    group.bench_function("read small", |bench| {
        bench.iter(|| black_box(probe.read("stats").expect("reading stats")))
    });
    group.bench_function("read 1 KiB string", |bench| {
        bench.iter(|| black_box(probe.read("log").expect("reading log")))
    });
    let mut n = 0u64;
    group.bench_function("set u64", |bench| {
        bench.iter(|| {
            n = n.wrapping_add(1);
            black_box(
                probe
                    .set("tuning", "limit", Value::U64(n))
                    .expect("writing tuning.limit"),
            )
        })
    });
    group.finish();

    let check = tuning.read().expect("reading tuning");
    assert_eq!(check.get(limit), n, "the last write is visible in-process");
    drop(publication);
    let _ = std::fs::remove_dir(&dir);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = target_side, probe_side
}
criterion_main!(benches);
