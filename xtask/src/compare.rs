//! `cargo xtask compare`: run optimisers side by side on one problem and
//! write a convergence report (summary.json, trace.csv, SVG plots, weight
//! PNGs, report.md) into `--out`.
//!
//! Per-optimiser settings are flags (`--sgd-lr`, `--damping`, ...). A run
//! can also override problem settings with `name@key=value;key=value` in
//! `--optimizers`, e.g. `sgd,sgd@init=normal:0.1,sgd@laplace=0.001`, which
//! is how the notebook's three SGD runs share one report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::Args;
use hessfree_analysis::memory::ProcMemory;
use hessfree_data::{MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_report::compare::{CompareReport, CompareSummary, DatasetInfo, Host, RunSummary};
use hessfree_report::{WeightGrid, ensure_dir, split_columns};
use hessfree_solvers::{
    DenseNewtonConfig, Experiment, LbfgsConfig, Method, NewtonCgConfig, OnRecord, ProblemSpec,
    RunOptions, SgdConfig, StopReason, StopRules, TraceRecord, TrustRegionConfig,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::DataDirArgs;
use crate::provenance;

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Comma-separated optimisers: sgd, newton-cg, trust-region, lbfgs,
    /// dense-newton. Append `@key=value;...` to override init, l2, laplace,
    /// seed, curvature_dtype, lr (SGD), damping (Newton-CG), hessian_batch
    /// (dense Newton) or max_time for that run.
    #[arg(long, default_value = "sgd,newton-cg", value_name = "LIST")]
    pub optimizers: String,
    /// softmax, softmax-nobias, or mlp:W1[,W2...]
    #[arg(long, default_value = "softmax")]
    pub model: String,
    /// Hidden activation for MLPs: tanh, relu, softplus.
    #[arg(long, default_value = "tanh")]
    pub activation: String,
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
    /// SGD mini-batch size.
    #[arg(long, default_value_t = 100)]
    pub sgd_batch: usize,
    /// SGD steps (its iteration cap instead of --max-iters).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sgd_steps: u64,
    /// SGD heavy-ball momentum in [0, 1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub sgd_momentum: f64,
    /// Evaluate SGD's full-batch objective every this many steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub sgd_eval_every: u64,

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
    /// Precondition CG with the curvature diagonal, (diag + λ)^0.75.
    #[arg(long)]
    pub preconditioner: bool,
    /// Start CG from zero instead of the previous direction.
    #[arg(long)]
    pub no_warm_start: bool,
    /// Take CG's last iterate without backtracking over earlier ones.
    #[arg(long)]
    pub no_cg_backtracking: bool,

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
    /// iterations (SGD, Newton-CG and trust region only).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// Continue each run from `<DIR>/checkpoints/<run>.ckpt`. DIR must exist;
    /// a run without a checkpoint in it starts afresh, a finished one is not
    /// rerun.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
}

/// A run label as a file-name stem (`sgd@lr=0.1` → `sgd_lr_0_1`).
fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where a run's checkpoint lives under an output (or resume) directory.
fn checkpoint_path(dir: &std::path::Path, label: &str) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("{}.ckpt", slug(label)))
}

/// One requested run: its label, method and problem.
struct Planned {
    label: String,
    method: Method,
    spec: ProblemSpec,
    max_iters: u64,
    /// This run's solver-time budget, overriding --max-time.
    max_time: Option<f64>,
    trace_every: u64,
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

fn plan(args: &CompareArgs) -> Result<Vec<Planned>> {
    let (kernel, simd, cuda_blocks) = kernel_flags(args)?;
    let base = ProblemSpec {
        model: args.model.clone(),
        activation: args.activation.clone(),
        l2: args.l2,
        laplace: args.laplace,
        init: args.init.clone(),
        curvature: args.curvature.clone(),
        hessian_fraction: args.hessian_fraction,
        seed: args.seed,
        dtype: args.dtype.clone(),
        curvature_dtype: args.curvature_dtype.clone(),
        kernel,
        x_storage: args.x_storage.clone(),
        simd,
        cuda_blocks,
    };
    for (flag, value) in [
        ("--max-time", args.max_time),
        ("--max-passes", args.max_passes),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && v > 0.0)
        {
            bail!("{flag} must be a positive number, got {v}");
        }
    }
    if !(args.grad_tol.is_finite() && args.grad_tol >= 0.0) {
        bail!("--grad-tol must be finite and >= 0, got {}", args.grad_tol);
    }
    let mut planned = Vec::new();
    for token in args
        .optimizers
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let (name, overrides) = token.split_once('@').unwrap_or((token, ""));
        let mut spec = base.clone();
        let mut sgd = SgdConfig {
            learning_rate: args.sgd_lr,
            batch_size: args.sgd_batch,
            momentum: args.sgd_momentum,
            seed: args.seed,
        };
        let defaults = if spec.model.starts_with("softmax") {
            NewtonCgConfig::convex()
        } else {
            NewtonCgConfig::default()
        };
        let mut newton = NewtonCgConfig {
            initial_damping: args.damping.unwrap_or(defaults.initial_damping),
            cg_max_iters: args.cg_max_iters,
            cg_rel_tol: args.cg_tol,
            preconditioner: args.preconditioner,
            warm_start_decay: (!args.no_warm_start).then_some(0.95),
            cg_backtracking: !args.no_cg_backtracking,
            ..defaults
        };
        let mut hessian_batch = args.hessian_batch;
        let mut max_time = args.max_time;
        for kv in overrides.split(';').filter(|s| !s.is_empty()) {
            let (key, value) = kv
                .split_once('=')
                .with_context(|| format!("override `{kv}` in `{token}` is not key=value"))?;
            let num = || -> Result<f64> {
                value.parse::<f64>().with_context(|| {
                    format!("override `{kv}` in `{token}`: `{value}` is not a number")
                })
            };
            match key {
                "init" => spec.init = value.to_string(),
                "l2" => spec.l2 = num()?,
                "laplace" => spec.laplace = num()?,
                "seed" => {
                    spec.seed = value
                        .parse()
                        .with_context(|| format!("override `{kv}`: expected an integer"))?;
                    sgd.seed = spec.seed;
                }
                "curvature_dtype" => spec.curvature_dtype = Some(value.to_string()),
                "lr" => sgd.learning_rate = num()?,
                "damping" => newton.initial_damping = num()?,
                "max_time" => {
                    let v = num()?;
                    if !(v.is_finite() && v > 0.0) {
                        bail!("override `{kv}` in `{token}`: max_time must be a positive number");
                    }
                    max_time = Some(v);
                }
                "hessian_batch" => {
                    hessian_batch = value
                        .parse()
                        .with_context(|| format!("override `{kv}`: expected an integer"))?;
                }
                other => bail!(
                    "unknown override `{other}` in `{token}`; expected one of: init, l2, laplace, seed, curvature_dtype, lr, damping, hessian_batch, max_time"
                ),
            }
        }
        let method = match name {
            "sgd" => Method::Sgd(sgd),
            "newton-cg" => Method::NewtonCg(newton),
            "trust-region" => Method::TrustRegion(TrustRegionConfig {
                initial_radius: args.tr_radius,
                cg_rel_tol: args.tr_cg_tol,
                cg_max_iters: args.cg_max_iters as u64,
                ..Default::default()
            }),
            "lbfgs" => Method::Lbfgs(LbfgsConfig {
                memory: args.lbfgs_memory,
                ..Default::default()
            }),
            "dense-newton" => Method::DenseNewton(DenseNewtonConfig {
                hessian_batch: (hessian_batch > 0).then_some(hessian_batch),
                ..Default::default()
            }),
            other => bail!(
                "unknown optimizer `{other}`; expected one of: {}",
                Method::CHOICES
            ),
        };
        method
            .validate()
            .with_context(|| format!("run `{token}`"))?;
        let is_sgd = matches!(method, Method::Sgd(_));
        planned.push(Planned {
            label: token.to_string(),
            method,
            spec,
            max_iters: if is_sgd {
                args.sgd_steps
            } else {
                args.max_iters
            },
            max_time,
            trace_every: if is_sgd { args.sgd_eval_every } else { 1 },
        });
    }
    if args.checkpoint_every.is_some() || args.resume.is_some() {
        for p in &planned {
            if !p.method.checkpointable() {
                bail!(
                    "run `{}`: {} cannot be checkpointed or resumed; only sgd, newton-cg and trust-region can",
                    p.label,
                    p.method.name()
                );
            }
        }
    }
    if planned.is_empty() {
        bail!(
            "--optimizers is empty; expected some of: {}",
            Method::CHOICES
        );
    }
    Ok(planned)
}

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                Ok(Device::new_cuda(0).context("opening CUDA device 0")?)
            }
            #[cfg(not(feature = "cuda"))]
            {
                bail!(
                    "this build has no CUDA support; rebuild with the `cuda` feature: \
                     cargo run -p xtask --features cuda -- compare --device cuda ..."
                )
            }
        }
        other => bail!("unknown device `{other}`; expected one of: cpu, cuda"),
    }
}

/// The kernels a run used: one name, or the gradient's and the curvature's
/// when they differ (mixed precision).
fn kernel_name(experiment: &Experiment) -> String {
    let main = experiment.objective.kernel_name();
    let curvature = experiment.curvature_objective.kernel_name();
    if main == curvature {
        main
    } else {
        format!("{main}; curvature {curvature}")
    }
}

fn problem_label(spec: &ProblemSpec) -> String {
    let mut s = spec.model.clone();
    if spec.model.starts_with("mlp") {
        s += &format!(" ({})", spec.activation);
    }
    if spec.l2 > 0.0 {
        s += &format!(", l2={}", spec.l2);
    }
    if spec.laplace > 0.0 {
        s += &format!(", laplace={}", spec.laplace);
    }
    s
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

/// A progress bar on a terminal, plain log lines otherwise.
fn progress(label: &str, max_iters: u64) -> (Option<ProgressBar>, OnRecord) {
    let label = label.to_string();
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(max_iters);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label);
        let b = bar.clone();
        let cb: OnRecord = Arc::new(move |r: &TraceRecord| {
            b.set_position(r.iter);
            let acc = r
                .test_accuracy
                .map(|a| format!(" acc {a:.4}"))
                .unwrap_or_default();
            b.set_message(format!(
                "f {:.6e} |g| {:.2e}{acc}",
                r.objective, r.grad_norm
            ));
        });
        (Some(bar), cb)
    } else {
        let cb: OnRecord = Arc::new(move |r: &TraceRecord| {
            tracing::info!(
                run = %label,
                iter = r.iter,
                objective = r.objective,
                grad_norm = r.grad_norm,
                test_accuracy = ?r.test_accuracy,
                seconds = r.wall_seconds,
                "trace"
            );
        });
        (None, cb)
    }
}

pub fn run(args: &CompareArgs) -> Result<()> {
    // Everything that can be refused is refused before any work or output.
    let planned = plan(args)?;
    let refs = references(args)?;
    for (label, _) in &refs {
        if !planned.iter().any(|p| &p.label == label) {
            bail!("--reference names `{label}`, which is not in --optimizers");
        }
    }
    // A mistyped DIR would otherwise quietly rerun every run from the start.
    if let Some(dir) = &args.resume
        && !dir.is_dir()
    {
        let why = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        bail!(
            "--resume {}: {why}; expected the --out directory of the run to continue",
            dir.display()
        );
    }
    let device = device(&args.device)?;
    check_writable(&args.out)?;
    let data_dir = resolve_data_dir(args.data.data_dir.as_deref())?;
    let splits = load_dir(&data_dir.path, MNIST_CLASSES)?;
    for p in &planned {
        p.spec
            .parse(splits.train.rows, splits.train.cols)
            .with_context(|| format!("run `{}`", p.label))?;
    }

    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        // A second handler (tests calling run twice) is not an error worth failing for.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }

    let mut runs = Vec::new();
    let mut traces = Vec::new();
    let mut images = Vec::new();
    let mut weights = Vec::new();
    for p in &planned {
        let stop = StopRules {
            grad_tol: (args.grad_tol > 0.0).then_some(args.grad_tol),
            max_iters: Some(p.max_iters),
            max_seconds: p.max_time,
            max_hvps: args.max_hvps,
            max_data_passes: args.max_passes,
            ..Default::default()
        };
        if interrupt.load(Ordering::SeqCst) {
            tracing::warn!(run = %p.label, "skipped: interrupted");
            continue;
        }
        let experiment = Arc::new(
            Experiment::prepare(p.spec.clone(), &splits.train, &splits.test, &device)
                .with_context(|| format!("preparing run `{}`", p.label))?,
        );
        let (bar, on_record) = progress(&p.label, p.max_iters);
        let resume = match &args.resume {
            Some(dir) => {
                let path = checkpoint_path(dir, &p.label);
                if path.exists() {
                    tracing::info!(run = %p.label, checkpoint = %path.display(), "resuming");
                    Some(Arc::new(hessfree_solvers::checkpoint::read(&path)?))
                } else {
                    tracing::warn!(run = %p.label, checkpoint = %path.display(), "no checkpoint: starting afresh");
                    None
                }
            }
            None => None,
        };
        let checkpoint = match args.checkpoint_every {
            Some(every) => {
                let path = checkpoint_path(&args.out, &p.label);
                if let Some(dir) = path.parent() {
                    ensure_dir(dir)?;
                }
                let sink: hessfree_solvers::CheckpointSink =
                    Arc::new(move |snap| hessfree_solvers::checkpoint::write_atomic(&path, snap));
                Some(hessfree_solvers::Checkpointing { every, sink })
            }
            None => None,
        };
        let opts = RunOptions {
            checkpoint,
            resume,
            stop,
            trace_every: p.trace_every,
            test_every: 1,
            test_accuracy: None,
            on_record: Some(on_record),
            interrupt: Some(interrupt.clone()),
        };
        ProcMemory::reset_peak();
        tracing::info!(run = %p.label, "starting");
        let out = experiment
            .run(&p.method, opts)
            .with_context(|| format!("run `{}`", p.label))?;
        let peak = ProcMemory::read().map(|m| m.hwm_bytes);
        if let Some(bar) = bar {
            bar.finish_with_message(out.stop.to_string());
        }
        let last = out.trace.last().cloned();
        let (final_objective, final_grad_norm) = match &last {
            Some(r) => (r.objective, r.grad_norm),
            None => (f64::NAN, f64::NAN),
        };
        let slug = slug(&p.label);
        let weights_image = format!("weights_{slug}.png");
        let weights_file = format!("weights_{slug}.safetensors");
        weights.push((
            weights_file.clone(),
            experiment.model.clone(),
            out.params.clone(),
        ));
        let w0 = experiment
            .model
            .layout()
            .view(&out.params, "layer0.weight")?;
        let (fan_in, fan_out) = w0.dims2()?;
        let w0: Vec<f32> = w0.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut columns = split_columns(&w0, fan_in, fan_out)?;
        columns.truncate(32);
        images.push((weights_image.clone(), columns));
        let stop_detail = out.stop.to_string();
        runs.push(RunSummary {
            name: p.label.clone(),
            method: p.method.name().to_string(),
            problem: problem_label(&p.spec),
            settings: serde_json::to_value(&p.method)?,
            stop_reason: out.stop.tag().to_string(),
            stop_detail,
            iterations: last.as_ref().map_or(0, |r| r.iter),
            wall_seconds: out.solver_seconds,
            final_objective,
            final_grad_norm,
            train_accuracy: experiment.train_accuracy(&out.params)?,
            test_accuracy: experiment.test_accuracy(&out.params)?,
            grad_evals: out.counts.grad_evals,
            loss_evals: out.counts.loss_evals,
            hvp_evals: out.counts.hvp_evals,
            data_passes: out.counts.samples as f64 / splits.train.len() as f64,
            peak_memory_bytes: peak,
            hessian_bytes: out.extras.get("hessian_bytes").map(|b| *b as u64),
            reference_test_accuracy: refs.iter().find(|r| r.0 == p.label).map(|r| r.1),
            extras: out.extras.clone(),
            weights_image: Some(weights_image),
            weights_file: Some(weights_file),
            kernel: Some(kernel_name(&experiment)),
        });
        tracing::info!(run = %p.label, stop = %out.stop, seconds = out.solver_seconds, "finished");
        traces.push((p.label.clone(), out.trace));
        if out.stop == StopReason::Interrupted {
            tracing::warn!("interrupted: writing the report for the runs so far");
        }
    }

    let summary = CompareSummary {
        kind: "compare".into(),
        title: args.title.clone(),
        host: Host {
            cpu_model: provenance::cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: candle_core::utils::get_num_threads(),
        },
        git_revision: provenance::git_revision(),
        date: provenance::today_utc(),
        command_line: provenance::command_line(),
        seed: args.seed,
        dataset: DatasetInfo {
            name: format!("MNIST ({})", provenance::display_path(&data_dir.path)),
            train_samples: splits.train.len(),
            test_samples: splits.test.len(),
        },
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        problem: planned[0].spec.clone(),
        runs,
    };
    // Round-trip the trace through its CSV form so the written report is
    // exactly what `report --check` regenerates from the files.
    let provisional = CompareReport { summary, traces };
    let traces = CompareReport::parse_trace_csv(&provisional.trace_csv()?)?;
    let report = CompareReport {
        summary: provisional.summary,
        traces,
    };
    ensure_dir(&args.out)?;
    for (file, columns) in &images {
        WeightGrid::mnist().write_png(args.out.join(file), columns)?;
    }
    for (file, model, params) in &weights {
        hessfree_model::save_weights(&args.out.join(file), model, params)?;
    }
    report.write(&args.out)?;
    let report_path = args.out.join(hessfree_report::compare::REPORT_FILE);
    println!("report written to {}", report_path.display());
    // A run that failed (a NaN mid-run, a rejected step too many) is in the
    // report with its last finite parameters, and the command says so.
    let failed: Vec<String> = report
        .summary
        .runs
        .iter()
        .filter(|r| r.stop_reason == "failed")
        .map(|r| format!("`{}` {}", r.name, r.stop_detail))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} run(s) failed: {} (report written to {})",
            failed.len(),
            failed.join("; "),
            report_path.display()
        );
    }
    Ok(())
}

/// Refuses an output directory that cannot be written, before any work: it
/// must be a directory (or not exist yet) below a writable directory.
fn check_writable(out: &std::path::Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    let mut existing = out;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
    }
    if !existing.is_dir() {
        bail!(
            "--out {} cannot be created: {} is not a directory",
            out.display(),
            existing.display()
        );
    }
    let probe = existing.join(format!(".hessfree-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {} is not writable", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
