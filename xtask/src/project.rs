//! `cargo xtask project`: a full Hessian-free run on a model too big to
//! train here, projected from timed pieces and a few real iterations
//! ([`hessfree_harness::projection`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use hessfree_harness::ProblemSpec;
use hessfree_harness::projection::{self, ProjectionJob};

use crate::DataDirArgs;

#[derive(Args, Debug, Clone)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    /// The model, as for `compare --model`; default: Martens' MNIST autoencoder.
    #[arg(long, default_value = "autoencoder:1000,500,250,30")]
    pub model: String,
    #[arg(long, default_value = "sparse")]
    pub init: String,
    #[arg(long, default_value_t = 1e-5)]
    pub l2: f64,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, or cuda in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// HF iterations to run and time (Martens' settings, `hf`).
    #[arg(long, default_value_t = 2)]
    pub hf_iters: u64,
    /// Ends the timed HF run after this many seconds, at an iteration's end.
    #[arg(long, default_value_t = 3600.0)]
    pub max_time: f64,
    /// Times each piece (gradient, product) is measured; the median is used.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Iterations of the projected run: 500 is `maxepoch` in Martens'
    /// published `nnet_demo_2.m`.
    #[arg(long, default_value_t = 500)]
    pub target_iters: u64,
    #[arg(
        long,
        value_name = "DIR",
        default_value = "docs/reports/martens-projection"
    )]
    pub out: PathBuf,
    /// Do not compute: check that --out's report is what its summary.json renders.
    #[arg(long)]
    pub check: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &ProjectArgs) -> Result<()> {
    if args.check {
        let stale = projection::check(&args.out)?;
        if !stale.is_empty() {
            anyhow::bail!("{}", stale.join("; "));
        }
        println!("ok     {}", args.out.display());
        return Ok(());
    }
    let spec = ProblemSpec {
        model: args.model.clone(),
        l2: args.l2,
        init: args.init.clone(),
        curvature: "ggn".into(),
        seed: args.seed,
        dtype: args.dtype.clone(),
        ..ProblemSpec::default()
    };
    let path = projection::run_projection(&ProjectionJob {
        title: format!(
            "Martens' HF on `{}`: one gradient, one Gauss-Newton product and one HF iteration \
             measured, a full run projected",
            args.model
        ),
        spec,
        device: args.device.clone(),
        data_dir: args.data.data_dir.clone(),
        out: args.out.clone(),
        hf_iters: args.hf_iters,
        max_time: args.max_time,
        repeats: args.repeats,
        target_iters: args.target_iters,
        target_source: if args.target_iters == 500 {
            "`maxepoch = 500` in Martens' published `nnet_demo_2.m`, whose comment says a few \
             hundred updates are all a run needs"
                .into()
        } else {
            "`--target-iters`".into()
        },
    })?;
    println!("wrote {}", path.display());
    Ok(())
}
