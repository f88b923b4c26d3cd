//! `cargo xtask mpi-study` and `mpi-probe`: the MPI scaling study
//! (`docs/reports/mpi`, [`hessfree_harness::scaling`]). `mpi-study` launches
//! one `mpirun` job of `mpi-probe` per configuration and writes the report;
//! both need a build with `--features mpi`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use hessfree_harness::scaling;
use hessfree_model::Collective;

use crate::DataDirArgs;

#[derive(Args, Debug)]
pub struct StudyArgs {
    /// Output directory of the report.
    #[arg(long, default_value = "docs/reports/mpi")]
    pub out: PathBuf,
    /// Timed repetitions of each product and sum.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// How the job's ranks talk, as the report names it.
    #[arg(long)]
    pub transport: String,
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Where rank 0 writes the measurements (JSON).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub data: DataDirArgs,
}

pub fn study(args: &StudyArgs) -> Result<()> {
    if !cfg!(feature = "mpi") {
        bail!("mpi-study needs a build with MPI: cargo run -p xtask --features mpi -- mpi-study");
    }
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let exe = std::env::current_exe().context("finding this binary")?;
    let report = scaling::run_study(&exe, &args.out, args.repeats)?;
    println!("report written to {}", report.display());
    Ok(())
}

pub fn probe(args: &ProbeArgs, ranks: Option<Arc<dyn Collective>>) -> Result<()> {
    let Some(ranks) = ranks else {
        bail!("mpi-probe runs under mpirun (mpi-study launches it)");
    };
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let ping = |bytes: usize| -> Option<f64> {
        #[cfg(feature = "mpi")]
        {
            hessfree_harness::ranks::mpi::ping_pong(bytes, 50)
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = bytes;
            None
        }
    };
    let result = scaling::probe(
        ranks.clone(),
        &args.transport,
        args.data.data_dir.as_deref(),
        args.repeats,
        &ping,
    )?;
    if ranks.rank() == 0 {
        scaling::write_probe(&args.out, &result)?;
    }
    Ok(())
}
