//! What a benchmark ran on: shared by `examples/bench` and `benches/peers` (included with
//! `#[path]`).

/// What the results were measured on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
}

impl Machine {
    /// CPUs this process may run on (as `nproc` counts them), the CPU model from
    /// `/proc/cpuinfo` and the kernel release (as `uname -r` prints it).
    pub(crate) fn detect() -> Machine {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown kernel".to_owned());
        Machine { nproc, cpu, kernel }
    }
}
