//! `cargo xtask hessian`: the notebook's Hessian study reproduced and
//! explained, plus the matrix-free spectrum ([`hessfree_harness::hessian`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use hessfree_harness::hessian::{self, HessianOptions};

use crate::DataDirArgs;

#[derive(Args, Debug, Clone)]
pub struct HessianArgs {
    #[command(flatten)]
    pub data: DataDirArgs,

    /// Directory for report.md, the figures and summary.json.
    #[arg(long, value_name = "DIR", default_value = "docs/reports/hessian")]
    pub out: PathBuf,

    /// Small batches, sub-sampled data and few Lanczos steps: a smoke test
    /// of the whole pipeline in well under a minute.
    #[arg(long)]
    pub quick: bool,

    /// Do not compute: check that the report in --out is complete and that
    /// report.md and the SVG figures are what summary.json renders to.
    #[arg(long)]
    pub check: bool,

    /// Seed of every random choice (initialisation, probes, SGD order).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: HessianArgs) -> Result<()> {
    if args.check {
        return hessian::check(&args.out);
    }
    hessian::run(&HessianOptions {
        data_dir: args.data.data_dir,
        out: args.out,
        quick: args.quick,
        seed: args.seed,
    })
}
