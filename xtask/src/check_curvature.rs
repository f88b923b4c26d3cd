//! `cargo xtask check-curvature`: gradcheck and gradgradcheck for hessfree
//! ([`hessfree_harness::curvature_check`]).

use anyhow::Result;
use candle_core::DType;
use clap::ValueEnum;
use hessfree_harness::curvature_check::{self, CheckOptions};

use crate::DataDirArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub data: DataDirArgs,

    /// Precision to check: f64 against finite differences and dense
    /// matrices, f32 against the f64 products at the same point.
    #[arg(long, value_enum, default_value_t = DtypeArg::Both)]
    pub dtype: DtypeArg,

    /// Training samples in the batch [default: 256, or 32 with --quick].
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,

    /// Seed of the batch, the point and the directions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Use a small synthetic batch of 14x14 images instead of MNIST: no data
    /// files needed, done in seconds.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F64,
    F32,
    Both,
}

pub fn run(args: &Args) -> Result<()> {
    curvature_check::run(&CheckOptions {
        data_dir: args.data.data_dir.clone(),
        dtypes: match args.dtype {
            DtypeArg::F64 => vec![DType::F64],
            DtypeArg::F32 => vec![DType::F32],
            DtypeArg::Both => vec![DType::F64, DType::F32],
        },
        batch: args.batch,
        seed: args.seed,
        quick: args.quick,
    })
}
