//! Optimisers side by side on one problem: the runs ([`plan`](mod@plan)), their
//! execution into a convergence report ([`run`]), and the report's schema,
//! renderer and check ([`report`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use hessfree_analysis::memory::ProcMemory;
use hessfree_data::{MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_report::{WeightGrid, ensure_dir, split_columns};
use hessfree_solvers::{
    CheckpointSink, Checkpointing, OnRecord, RunOptions, StopReason, StopRules, checkpoint,
};

use crate::experiment::{Experiment, ProblemSpec};
use crate::provenance;

pub mod plan;
pub mod report;

pub use plan::{NewtonSettings, PlannedRun, RunDefaults, plan};
pub use report::{CompareReport, CompareSummary, DatasetInfo, Host, RunSummary};

/// A comparison, every setting parsed and checked.
pub struct CompareJob {
    pub runs: Vec<PlannedRun>,
    /// Stop rules shared by every run (each run adds its iteration cap and
    /// time budget).
    pub grad_tol: f64,
    pub max_hvps: Option<u64>,
    pub max_passes: Option<f64>,
    pub device: String,
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    pub title: String,
    /// `(run label, test accuracy)` to print next to a run.
    pub references: Vec<(String, f64)>,
    pub checkpoint_every: Option<u64>,
    pub resume: Option<PathBuf>,
    pub seed: u64,
    pub dtype: String,
    /// Set by the caller (Ctrl-C) to stop the current run at its next
    /// iteration and write the report for the runs so far.
    pub interrupt: Arc<AtomicBool>,
}

/// What a run reports while it runs: its trace records, then its end.
pub struct RunProgress {
    pub on_record: OnRecord,
    pub finish: Box<dyn FnOnce(&StopReason)>,
}

/// The device named `name`: `cpu`, or `cuda` in a build with the feature.
pub fn device(name: &str) -> Result<Device> {
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

/// A run label as a file-name stem (`sgd@lr=0.1` → `sgd_lr_0_1`).
pub fn slug(label: &str) -> String {
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
pub fn checkpoint_path(dir: &Path, label: &str) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("{}.ckpt", slug(label)))
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

/// Refuses what can be refused before any work or output.
fn check_job(job: &CompareJob) -> Result<()> {
    if let Some(v) = job.max_passes
        && !(v.is_finite() && v > 0.0)
    {
        bail!("--max-passes must be a positive number, got {v}");
    }
    if !(job.grad_tol.is_finite() && job.grad_tol >= 0.0) {
        bail!("--grad-tol must be finite and >= 0, got {}", job.grad_tol);
    }
    if job.checkpoint_every.is_some() || job.resume.is_some() {
        for p in &job.runs {
            if !p.method.checkpointable() {
                bail!(
                    "run `{}`: {} cannot be checkpointed or resumed; only sgd, adam, newton-cg, hf and trust-region can",
                    p.label,
                    p.method.name()
                );
            }
        }
    }
    for (label, _) in &job.references {
        if !job.runs.iter().any(|p| &p.label == label) {
            bail!("--reference names `{label}`, which is not in --optimizers");
        }
    }
    // A mistyped DIR would otherwise quietly rerun every run from the start.
    if let Some(dir) = &job.resume
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
    check_writable(&job.out)
}

/// Runs every planned run and writes the report into `job.out`; returns the
/// path of `report.md`. `progress` makes each run's progress display.
/// A run that failed (a NaN mid-run, a rejected step too many) is in the
/// report with its last finite parameters, and the result is an error
/// that says so.
pub fn run(job: &CompareJob, progress: &dyn Fn(&str, u64) -> RunProgress) -> Result<PathBuf> {
    check_job(job)?;
    let device = device(&job.device)?;
    let data_dir = resolve_data_dir(job.data_dir.as_deref())?;
    let splits = load_dir(&data_dir.path, MNIST_CLASSES)?;
    for p in &job.runs {
        p.spec
            .parse(splits.train.rows, splits.train.cols)
            .with_context(|| format!("run `{}`", p.label))?;
    }

    let mut runs = Vec::new();
    let mut traces = Vec::new();
    let mut images = Vec::new();
    let mut weights = Vec::new();
    for p in &job.runs {
        if job.interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(run = %p.label, "skipped: interrupted");
            continue;
        }
        let stop = StopRules {
            grad_tol: (job.grad_tol > 0.0).then_some(job.grad_tol),
            max_iters: Some(p.max_iters),
            max_seconds: p.max_time,
            max_hvps: job.max_hvps,
            max_data_passes: job.max_passes,
            ..Default::default()
        };
        let experiment = Arc::new(
            Experiment::prepare(p.spec.clone(), &splits.train, &splits.test, &device)
                .with_context(|| format!("preparing run `{}`", p.label))?,
        );
        let RunProgress { on_record, finish } = progress(&p.label, p.max_iters);
        let resume = match &job.resume {
            Some(dir) => {
                let path = checkpoint_path(dir, &p.label);
                if path.exists() {
                    tracing::info!(run = %p.label, checkpoint = %path.display(), "resuming");
                    Some(Arc::new(checkpoint::read(&path)?))
                } else {
                    tracing::warn!(run = %p.label, checkpoint = %path.display(), "no checkpoint: starting afresh");
                    None
                }
            }
            None => None,
        };
        let checkpoint = match job.checkpoint_every {
            Some(every) => {
                let path = checkpoint_path(&job.out, &p.label);
                if let Some(dir) = path.parent() {
                    ensure_dir(dir)?;
                }
                let sink: CheckpointSink =
                    Arc::new(move |snap| checkpoint::write_atomic(&path, snap));
                Some(Checkpointing { every, sink })
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
            interrupt: Some(job.interrupt.clone()),
        };
        ProcMemory::reset_peak();
        tracing::info!(run = %p.label, "starting");
        let out = experiment
            .run(&p.method, opts)
            .with_context(|| format!("run `{}`", p.label))?;
        let peak = ProcMemory::read().map(|m| m.hwm_bytes);
        finish(&out.stop);
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
        runs.push(RunSummary {
            name: p.label.clone(),
            method: p.method.name().to_string(),
            problem: problem_label(&p.spec),
            settings: serde_json::to_value(&p.method)?,
            stop_reason: out.stop.tag().to_string(),
            stop_detail: out.stop.to_string(),
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
            reference_test_accuracy: job.references.iter().find(|r| r.0 == p.label).map(|r| r.1),
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
        title: job.title.clone(),
        host: Host {
            cpu_model: provenance::cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: candle_core::utils::get_num_threads(),
        },
        git_revision: provenance::git_revision(),
        date: provenance::today_utc(),
        command_line: provenance::command_line(),
        seed: job.seed,
        dataset: DatasetInfo {
            name: format!("MNIST ({})", provenance::display_path(&data_dir.path)),
            train_samples: splits.train.len(),
            test_samples: splits.test.len(),
        },
        device: job.device.clone(),
        dtype: job.dtype.clone(),
        problem: job.runs[0].spec.clone(),
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
    ensure_dir(&job.out)?;
    for (file, columns) in &images {
        WeightGrid::mnist().write_png(job.out.join(file), columns)?;
    }
    for (file, model, params) in &weights {
        hessfree_model::save_weights(&job.out.join(file), model, params)?;
    }
    report.write(&job.out)?;
    let report_path = job.out.join(report::REPORT_FILE);
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
    Ok(report_path)
}

/// Refuses an output directory that cannot be written, before any work: it
/// must be a directory (or not exist yet) below a writable directory.
fn check_writable(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    let mut existing = out;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
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
