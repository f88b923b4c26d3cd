//! `cargo xtask`: the command-line harness of hessfree.
//!
//! Thin by design: each subcommand lives in its own module, parses its flags
//! and calls the harness crate (`hessfree-harness`), which holds the
//! experiments and reports on top of the library crates. A new subcommand
//! is a new module plus one variant of [`Command`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hessfree_harness::ranks;
use tracing_subscriber::EnvFilter;

mod bench_peers;
mod bench_report;
mod check_curvature;
mod compare;
mod data_info;
mod eval;
mod hessian;
mod mpi_study;
mod progress;
mod project;
mod report;

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
    /// Print the test accuracy of saved weights (`weights.safetensors`).
    Eval(eval::EvalArgs),
    /// Check gradients and curvature products against finite differences,
    /// dense matrices and double backward (like gradcheck/gradgradcheck).
    CheckCurvature(check_curvature::Args),
    /// Run optimisers side by side and write a convergence report.
    Compare(Box<compare::CompareArgs>),
    /// Summarise the last `cargo bench` into docs/reports/bench.
    BenchReport(bench_report::BenchReportArgs),
    /// Time scikit-learn and JAX on the same problems (own Python venv).
    BenchPeers(bench_peers::BenchPeersArgs),
    /// The Hessian study: spy plots, rank vs batch size, memory, matrix-free spectrum.
    Hessian(hessian::HessianArgs),
    /// Time an HF iteration's pieces on a model too big to train here and
    /// project a full run (default: Martens' 784-1000-500-250-30 autoencoder).
    Project(project::ProjectArgs),
    /// Regenerate committed reports from their data, or check them (--check).
    Report(report::ReportArgs),
    /// The MPI scaling study: launches `mpi-probe` jobs, fits the model,
    /// writes docs/reports/mpi (needs --features mpi).
    MpiStudy(mpi_study::StudyArgs),
    /// One job of the MPI scaling study, run under mpirun by `mpi-study`.
    MpiProbe(mpi_study::ProbeArgs),
}

/// Where to find the IDX files; shared by every subcommand that loads data.
#[derive(Args, Debug, Clone)]
pub struct DataDirArgs {
    /// Directory holding the four IDX files (gzip or raw). Overrides the
    /// HESSFREE_DATA environment variable and the bundled data/mnist.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The ranks of the job this process was launched in, read from the
/// variables MPI launchers set (OpenMPI, then PMIx and Hydra's PMI);
/// `None` when no launcher started it.
fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

fn main() -> ExitCode {
    if std::env::var_os("CANDLE_GRAD_DO_NOT_DETACH").is_none() {
        // Candle detaches gradients unless this is set before a thread's
        // first backward pass; double backward needs the graph. `cargo run`
        // sets it through .cargo/config.toml, an installed binary does not.
        // SAFETY: this is the first statement of `main`: no other thread
        // exists yet that could read or write the environment concurrently.
        unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    }
    let cli = Cli::parse();
    // Under mpirun every rank runs this; the job's ranks come first so
    // that only rank 0 logs at `info`.
    let launched = launched_ranks();
    let ranks = match ranks::join(launched) {
        Ok(r) => r,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(ranks.as_ref().is_none_or(|r| r.rank() == 0));
    let result = match cli.command {
        Command::Compare(args) => compare::run(&args, ranks.clone()),
        Command::MpiProbe(args) => mpi_study::probe(&args, ranks.clone()),
        other if ranks.as_ref().is_some_and(|r| r.size() > 1) => {
            Err(ranks::single_process_only(other.name(), launched).unwrap_err())
        }
        Command::DataInfo(args) => data_info::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::CheckCurvature(args) => check_curvature::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Project(args) => project::run(&args),
        Command::Hessian(args) => hessian::run(args),
        Command::BenchReport(args) => bench_report::run(&args),
        Command::BenchPeers(args) => bench_peers::run(&args),
        Command::MpiStudy(args) => mpi_study::study(&args),
    };
    match result {
        Ok(()) => {
            ranks::end(ranks.as_ref(), None);
            ExitCode::SUCCESS
        }
        Err(err) => {
            // `{:#}` prints the whole context chain on one line.
            let why = format!("{err:#}");
            ranks::end(ranks.as_ref(), Some(&why));
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// The subcommand as typed, for messages.
    fn name(&self) -> &'static str {
        match self {
            Command::DataInfo(_) => "data-info",
            Command::Eval(_) => "eval",
            Command::CheckCurvature(_) => "check-curvature",
            Command::Compare(_) => "compare",
            Command::Report(_) => "report",
            Command::Project(_) => "project",
            Command::Hessian(_) => "hessian",
            Command::BenchReport(_) => "bench-report",
            Command::BenchPeers(_) => "bench-peers",
            Command::MpiStudy(_) => "mpi-study",
            Command::MpiProbe(_) => "mpi-probe",
        }
    }
}

/// Logs go to stderr so that stdout carries only the command's output;
/// `RUST_LOG` picks the level: `info` by default, `warn` on MPI ranks
/// other than 0, which would repeat rank 0's lines.
fn init_tracing(lead: bool) {
    let default = if lead { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
