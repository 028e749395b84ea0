//! The `main` the examples share: `--help`, argument errors (exit code 2) and run errors (exit
//! code 1), each reported with the program's name.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Parses the arguments with `parse` and runs `run` with them.
pub(crate) async fn main<A, E, Fut>(
    name: &str,
    usage: &str,
    parse: fn() -> Result<A, String>,
    run: impl FnOnce(A) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        return ExitCode::SUCCESS;
    }
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{name}: {e}\n\n{usage}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The value after `flag` on the command line, parsed as a number.
#[allow(dead_code)] // not every example that shares `main` takes numbers
pub(crate) fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a valid number"))
}
