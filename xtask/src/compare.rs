//! `cargo xtask compare`: run optimisers side by side on one problem and
//! write a convergence report (summary.json, trace.csv, SVG plots, weight
//! PNGs, report.md) into `--out`.
//!
//! This module turns flags into a [`CompareJob`] and shows progress; the
//! runs and the report are the harness's ([`hessfree_harness::compare`]).
//! Per-optimiser settings are flags (`--sgd-lr`, `--damping`, ...); a run
//! can override problem settings with `name@key=value;key=value` in
//! `--optimizers` (see [`hessfree_harness::compare::plan`](mod@hessfree_harness::compare::plan)).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use hessfree_harness::ProblemSpec;
use hessfree_harness::compare::{
    CompareJob, NewtonSettings, RunDefaults, parse_preconditioner, plan,
};
use hessfree_model::Collective;
use hessfree_solvers::{AdamConfig, KfacConfig, LbfgsConfig, SgdConfig, TrustRegionConfig};

use crate::DataDirArgs;
use crate::progress::{progress, quiet};

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Comma-separated optimisers: sgd, adam, kfac (K-FAC, MLPs and
    /// autoencoders), newton-cg, hf (Newton-CG as Martens runs it; use with
    /// --curvature ggn), trust-region, lbfgs,
    /// dense-newton. Append `@key=value;...` to override init, l2,
    /// laplace, seed, curvature_dtype, lr (SGD, Adam, K-FAC), damping
    /// (Newton-CG, hf, K-FAC), curvature_batch, gradient_batch and
    /// preconditioner (Newton-CG, hf), momentum, adaptive, targets, inverse_every,
    /// stats_every, batch, stats_batch, model_batch (K-FAC), hessian_batch
    /// (dense Newton), max_time, checkpoint_every or trace_every for that
    /// run. One override
    /// may list values, `adam@lr=1e-4|1e-3`: a grid whose points each get
    /// --grid-time, the best then continued to --max-time.
    #[arg(long, default_value = "sgd,newton-cg", value_name = "LIST")]
    pub optimizers: String,
    /// softmax, softmax-nobias, mlp:W1[,W2...], mlp:W1:ACT1[,W2:ACT2...]
    /// or autoencoder:W1[,W2...],CODE (Martens' deep autoencoder: logistic
    /// layers, a linear code, the mirrored decoder, logistic outputs).
    #[arg(long, default_value = "softmax")]
    pub model: String,
    /// Hidden activation for MLP layers that name none: logistic, tanh,
    /// relu, softplus, linear.
    #[arg(long, default_value = "tanh")]
    pub activation: String,
    /// The loss: softmax-cross-entropy, sigmoid-cross-entropy or
    /// squared-error (default: the model's own, softmax cross-entropy for
    /// classifiers, sigmoid cross-entropy for autoencoders).
    #[arg(long)]
    pub loss: Option<String>,
    /// L2 penalty (lam/2)·||W||² on weights (not biases).
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true)]
    pub l2: f64,
    /// The notebook's Laplacian smoothness penalty eps (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub laplace: f64,
    /// zero, normal:STD (truncated normal) or glorot.
    #[arg(long, default_value = "zero")]
    pub init: String,
    /// Curvature for Newton-CG and the trust region: hessian or ggn.
    #[arg(long, default_value = "hessian")]
    pub curvature: String,
    /// Fraction of the training set the curvature is computed on.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub hessian_fraction: f64,
    /// Iteration cap for every optimiser except SGD (see --sgd-steps).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_iters: u64,
    /// Solver-time budget per optimiser, in seconds.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub max_time: Option<f64>,
    /// Solver-time budget of each point of a grid (`lr=A|B|C`), in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 180.0,
        allow_negative_numbers = true
    )]
    pub grid_time: f64,
    /// Why this problem was chosen: a paragraph printed at the top of the report.
    #[arg(long, value_name = "TEXT")]
    pub rationale: Option<String>,
    /// Stop when the gradient norm falls below this (0 = never).
    #[arg(long, default_value_t = 1e-6, allow_negative_numbers = true)]
    pub grad_tol: f64,
    /// Budget of Hessian-vector products per optimiser.
    #[arg(long)]
    pub max_hvps: Option<u64>,
    /// Budget of data passes per optimiser.
    #[arg(long, allow_negative_numbers = true)]
    pub max_passes: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// f32 or f64.
    #[arg(long, default_value = "f64")]
    pub dtype: String,
    /// The dtype of the curvature products inside CG (default: --dtype);
    /// f32 with --dtype f64 is mixed precision.
    #[arg(long, value_name = "DTYPE")]
    pub curvature_dtype: Option<String>,
    /// Softmax kernel: auto, fused, candle (HESSFREE_FUSED=0 means candle).
    #[arg(long, default_value = "auto")]
    pub kernel: String,
    /// How the kernels store X: auto, u8, csr (compressed rows, CPU; for the
    /// softmax kernel and an MLP's first layer), float.
    #[arg(long, default_value = "auto")]
    pub x_storage: String,
    /// The fused CPU kernel's instruction set: auto or a lower level
    /// (HESSFREE_SIMD sets it when this is auto).
    #[arg(long, default_value = "auto")]
    pub simd: String,
    /// Thread blocks of the CUDA kernels (default: twice the
    /// multiprocessors; HESSFREE_CUDA_BLOCKS sets it when not given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub cuda_blocks: Option<u64>,
    /// cpu or cuda (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub data: DataDirArgs,
    /// Output directory of the report.
    #[arg(long, default_value = "docs/reports/latest")]
    pub out: PathBuf,
    /// Title of the report.
    #[arg(long, default_value = "Optimiser comparison")]
    pub title: String,
    /// A reference test accuracy to print next to a run, as LABEL=ACC (repeatable).
    #[arg(long = "reference", value_name = "LABEL=ACC")]
    pub references: Vec<String>,

    /// SGD learning rate.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub sgd_lr: f64,
    /// SGD with Nesterov momentum (needs --sgd-momentum > 0).
    #[arg(long)]
    pub sgd_nesterov: bool,
    /// SGD's learning-rate schedule: constant, step:EVERY:FACTOR, exp:GAMMA,
    /// cosine:STEPS or cosine:STEPS:FLOOR, each optionally after warmup:W,
    #[arg(long, default_value = "constant", value_name = "SCHEDULE")]
    pub sgd_schedule: String,
    /// Adam's learning rate (PyTorch's default).
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    pub adam_lr: f64,
    /// Adam's first-moment decay β₁.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub adam_beta1: f64,
    /// Adam's second-moment decay β₂.
    #[arg(long, default_value_t = 0.999, allow_negative_numbers = true)]
    pub adam_beta2: f64,
    /// Adam's ε.
    #[arg(long, default_value_t = 1e-8, allow_negative_numbers = true)]
    pub adam_eps: f64,
    /// Adam's learning-rate schedule (the forms of --sgd-schedule).
    #[arg(long, default_value = "constant", value_name = "SCHEDULE")]
    pub adam_schedule: String,
    /// Mini-batch size of SGD and Adam.
    #[arg(long, default_value_t = 100)]
    pub sgd_batch: usize,
    /// SGD's and Adam's steps (their iteration cap instead of --max-iters).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sgd_steps: u64,
    /// SGD heavy-ball momentum in [0, 1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub sgd_momentum: f64,
    /// Evaluate SGD's and Adam's full-batch objective every this many steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub sgd_eval_every: u64,

    /// K-FAC's mini-batch size.
    #[arg(long, default_value_t = 1000)]
    pub kfac_batch: usize,
    /// Rows of each K-FAC batch its factors' statistics use.
    #[arg(long, default_value_t = 250)]
    pub kfac_stats_batch: usize,
    /// Rows of each K-FAC batch the adaptive quadratic model's Gauss-Newton
    /// products use (default: the whole batch).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub kfac_model_batch: Option<u64>,
    /// K-FAC steps between updates of the factors' moving averages.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub kfac_stats_every: u64,
    /// Gradients of K-FAC's G factors: mc (Monte-Carlo Fisher), mc:S,
    /// empirical, exact.
    #[arg(long, default_value = "mc")]
    pub kfac_targets: String,
    /// K-FAC's initial damping λ (adapted unless adaptive=false).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub kfac_damping: f64,
    /// Iterations between eigendecompositions of K-FAC's factors.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub kfac_inverse_every: u64,

    /// Newton-CG's initial Tikhonov damping λ (default: 1e-4 for softmax
    /// models, which are convex, 1e-2 otherwise).
    #[arg(long, allow_negative_numbers = true)]
    pub damping: Option<f64>,
    /// CG iteration cap per Newton-CG outer iteration.
    #[arg(long, default_value_t = 250)]
    pub cg_max_iters: usize,
    /// A fixed relative CG tolerance instead of the forcing sequence min(0.5, √‖g‖).
    #[arg(long, allow_negative_numbers = true)]
    pub cg_tol: Option<f64>,
    /// Precondition Newton-CG's CG: `diag` (the flag alone), the curvature
    /// diagonal (diag + λ)^0.75; `kfac` or `kfac:TARGETS`, K-FAC's damped
    /// inverse (MLPs and autoencoders); `none`. hf keeps its diagonal
    /// unless a run overrides it (`hf@preconditioner=kfac`).
    #[arg(long, num_args = 0..=1, default_missing_value = "diag", value_name = "KIND")]
    pub preconditioner: Option<String>,
    /// Start CG from zero instead of the previous direction.
    #[arg(long)]
    pub no_warm_start: bool,
    /// Take CG's last iterate without backtracking over earlier ones.
    #[arg(long)]
    pub no_cg_backtracking: bool,
    /// Curvature products of newton-cg and hf on N training rows per
    /// iteration, the next N of one shuffle each time (hf's default: 15000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub curvature_batch: Option<u64>,
    /// The gradient and line search of newton-cg and hf on N training rows
    /// per iteration instead of the full set, the next N of one shuffle
    /// each time; the curvature batch is then the first rows of it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub gradient_batch: Option<u64>,

    /// Initial trust-region radius.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub tr_radius: f64,
    /// Cap on the Steihaug CG forcing term min(TOL, √‖g‖).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub tr_cg_tol: f64,
    /// L-BFGS memory.
    #[arg(long, default_value_t = 10)]
    pub lbfgs_memory: usize,
    /// Rows the dense-Newton Hessian is assembled on (0 = the whole training
    /// set, as scikit-learn's newton-cholesky does).
    #[arg(long, default_value_t = 0)]
    pub hessian_batch: usize,

    /// Write each run's full state to `<out>/checkpoints/<run>.ckpt` every N
    /// iterations (SGD, Newton-CG, hf and trust region only).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// Continue each run from `<DIR>/checkpoints/<run>.ckpt`. DIR must exist;
    /// a run without a checkpoint in it starts afresh, a finished one is not
    /// rerun.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Under mpirun: skip the check, at every gradient, that all ranks hold
    /// the same parameters (on in debug builds such as `cargo xtask`).
    #[arg(long)]
    pub skip_rank_check: bool,
}

/// The kernel flags, with the variables older scripts set mapped onto the
/// ones left at `auto`: the library itself never reads the environment.
fn kernel_flags(args: &CompareArgs) -> Result<(String, String, Option<usize>)> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let kernel = match (args.kernel.as_str(), env("HESSFREE_FUSED").as_deref()) {
        ("auto", Some("0")) => "candle".to_string(),
        (k, _) => k.to_string(),
    };
    let simd = match (args.simd.as_str(), env("HESSFREE_SIMD")) {
        ("auto", Some(level)) => level,
        (s, _) => s.to_string(),
    };
    let cuda_blocks = match (args.cuda_blocks, env("HESSFREE_CUDA_BLOCKS")) {
        (Some(n), _) => Some(n as usize),
        (None, Some(v)) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("HESSFREE_CUDA_BLOCKS={v} is not a positive integer"))?,
        ),
        (None, None) => None,
    };
    Ok((kernel, simd, cuda_blocks))
}

fn references(args: &CompareArgs) -> Result<Vec<(String, f64)>> {
    args.references
        .iter()
        .map(|r| {
            let (label, acc) = r
                .rsplit_once('=')
                .with_context(|| format!("--reference `{r}` is not LABEL=ACC"))?;
            let acc: f64 = acc
                .parse()
                .with_context(|| format!("--reference `{r}`: `{acc}` is not a number"))?;
            Ok((label.to_string(), acc))
        })
        .collect()
}

impl CompareArgs {
    fn defaults(&self) -> Result<RunDefaults> {
        let (kernel, simd, cuda_blocks) = kernel_flags(self)?;
        let precond = match &self.preconditioner {
            Some(kind) => parse_preconditioner(kind).context("--preconditioner")?,
            None => (false, None),
        };
        Ok(RunDefaults {
            problem: ProblemSpec {
                model: self.model.clone(),
                activation: self.activation.clone(),
                l2: self.l2,
                laplace: self.laplace,
                init: self.init.clone(),
                curvature: self.curvature.clone(),
                hessian_fraction: self.hessian_fraction,
                seed: self.seed,
                dtype: self.dtype.clone(),
                curvature_dtype: self.curvature_dtype.clone(),
                kernel,
                x_storage: self.x_storage.clone(),
                simd,
                cuda_blocks,
                loss: self.loss.clone(),
            },
            sgd: SgdConfig {
                learning_rate: self.sgd_lr,
                batch_size: self.sgd_batch,
                momentum: self.sgd_momentum,
                seed: self.seed,
                nesterov: self.sgd_nesterov,
                schedule: self.sgd_schedule.parse().context("--sgd-schedule")?,
            },
            adam: AdamConfig {
                learning_rate: self.adam_lr,
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_eps,
                batch_size: self.sgd_batch,
                seed: self.seed,
                schedule: self.adam_schedule.parse().context("--adam-schedule")?,
            },
            kfac: KfacConfig {
                batch_size: self.kfac_batch,
                stats_batch: self.kfac_stats_batch,
                model_batch: self.kfac_model_batch.map(|n| n as usize),
                stats_every: self.kfac_stats_every,
                targets: self.kfac_targets.clone(),
                damping: self.kfac_damping,
                inverse_every: self.kfac_inverse_every,
                seed: self.seed,
                ..KfacConfig::default()
            },
            newton: NewtonSettings {
                damping: self.damping,
                cg_max_iters: self.cg_max_iters,
                cg_rel_tol: self.cg_tol,
                preconditioner: precond.0,
                kfac_preconditioner: precond.1,
                warm_start: !self.no_warm_start,
                cg_backtracking: !self.no_cg_backtracking,
                curvature_batch: self.curvature_batch.map(|n| n as usize),
                gradient_batch: self.gradient_batch.map(|n| n as usize),
            },
            trust_region: TrustRegionConfig {
                initial_radius: self.tr_radius,
                cg_rel_tol: self.tr_cg_tol,
                cg_max_iters: self.cg_max_iters as u64,
                ..Default::default()
            },
            lbfgs: LbfgsConfig {
                memory: self.lbfgs_memory,
                ..Default::default()
            },
            hessian_batch: self.hessian_batch,
            max_iters: self.max_iters,
            sgd_steps: self.sgd_steps,
            sgd_eval_every: self.sgd_eval_every,
            max_time: self.max_time,
            grid_time: self.grid_time,
        })
    }
}

/// `ranks`: the MPI job this process is one rank of ([`hessfree_harness::ranks::join`]).
pub fn run(args: &CompareArgs, ranks: Option<Arc<dyn Collective>>) -> Result<()> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let lead = ranks.as_ref().is_none_or(|r| r.rank() == 0);
    let parallel = ranks.as_ref().is_some_and(|r| r.size() > 1);
    let job = CompareJob {
        runs: plan(&args.optimizers, &args.defaults()?)?,
        grad_tol: args.grad_tol,
        max_hvps: args.max_hvps,
        max_passes: args.max_passes,
        device: args.device.clone(),
        data_dir: args.data.data_dir.clone(),
        out: args.out.clone(),
        title: args.title.clone(),
        references: references(args)?,
        checkpoint_every: args.checkpoint_every,
        resume: args.resume.clone(),
        seed: args.seed,
        dtype: args.dtype.clone(),
        interrupt: interrupt.clone(),
        rationale: args.rationale.clone(),
        ranks,
        check_params: cfg!(debug_assertions) && !args.skip_rank_check,
    };
    // Ranks would see Ctrl-C at different iterations and then wait on each
    // other for ever; under MPI it ends the job, and --resume continues it.
    if !parallel {
        let flag = interrupt.clone();
        // A second handler (tests calling run twice) is not an error worth failing for.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let report = if lead {
        hessfree_harness::compare::run(&job, &progress)?
    } else {
        hessfree_harness::compare::run(&job, &quiet)?
    };
    if lead {
        println!("report written to {}", report.display());
    }
    Ok(())
}
