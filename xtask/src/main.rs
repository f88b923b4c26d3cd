//! `cargo xtask`: the command-line harness of hessfree.
//!
//! Thin by design: each subcommand lives in its own module, parses its flags
//! and calls into the library crates, which hold the algorithms. A new
//! subcommand is a new module plus one variant of [`Command`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod data_info;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Harness for hessfree: data checks, solver comparisons, reports",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the data set and print counts, class balance and pixel statistics.
    DataInfo(data_info::DataInfoArgs),
}

/// Where to find the IDX files; shared by every subcommand that loads data.
#[derive(Args, Debug, Clone)]
pub struct DataDirArgs {
    /// Directory holding the four IDX files (gzip or raw). Overrides the
    /// HESSFREE_DATA environment variable and the bundled data/mnist.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::DataInfo(args) => data_info::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so that stdout carries only the command's output;
/// `RUST_LOG` picks the level, `info` by default.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
