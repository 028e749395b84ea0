//! How an async child runs its work on Tokio. Both children of a measurement use the same
//! flavor.

use std::future::Future;

/// A way to run the benchmark's async work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// A task spawned on a multi-thread runtime (one worker per CPU): what a server does.
    Task,
    /// A `current_thread` runtime, the work in its `block_on`.
    CurrentThread,
    /// Directly in a multi-thread runtime's `block_on`, as a plain `#[tokio::main]` loop: the
    /// work runs on the main thread, outside the workers.
    BlockOn,
}

impl Flavor {
    /// Suffix of a row's id and label; empty for the default flavor.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Flavor::Task => "",
            Flavor::CurrentThread => "current_thread",
            Flavor::BlockOn => "block_on",
        }
    }

    /// Runs `work` to completion in this flavor.
    pub(crate) fn run<F>(self, work: F) -> Result<(), String>
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let rt = match self {
            Flavor::Task | Flavor::BlockOn => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .map_err(|e| format!("starting the Tokio runtime: {e}"))?;
        match self {
            Flavor::Task => rt.block_on(async move {
                tokio::spawn(work)
                    .await
                    .map_err(|e| format!("the benchmark task failed: {e}"))?
            }),
            Flavor::CurrentThread | Flavor::BlockOn => rt.block_on(work),
        }
    }
}
