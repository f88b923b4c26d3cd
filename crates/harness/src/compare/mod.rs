//! Optimisers side by side on one problem: the runs ([`plan`](mod@plan)), their
//! execution into a convergence report ([`run`]), and the report's schema,
//! renderer and check ([`report`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use hessfree_analysis::memory::ProcMemory;
use hessfree_data::{MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_report::{WeightGrid, ensure_dir, split_columns};
use hessfree_solvers::{
    CheckpointSink, Checkpointing, OnRecord, RunOptions, Snapshot, StopReason, StopRules,
    checkpoint,
};

use crate::experiment::{Experiment, ProblemSpec, Shard};
use crate::provenance;
use hessfree_model::{Collective, shard_range};

pub mod plan;
pub mod report;

pub use plan::{GridPoint, NewtonSettings, PlannedRun, RunDefaults, parse_preconditioner, plan};
pub use report::{CommSummary, CompareReport, CompareSummary, DatasetInfo, Host, RunSummary};

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
    /// Why the problem was chosen, printed at the top of the report.
    pub rationale: Option<String>,
    /// The ranks of a data-parallel (MPI) job ([`crate::ranks::join`]);
    /// `None` in one process. Each rank keeps a contiguous shard of the
    /// training rows; rank 0 alone writes.
    pub ranks: Option<Arc<dyn Collective>>,
    /// Under MPI, check at every gradient that the ranks' parameters agree.
    pub check_params: bool,
}

impl CompareJob {
    /// Whether this process writes the report, weights and checkpoints.
    fn writes(&self) -> bool {
        self.ranks.as_ref().is_none_or(|r| r.rank() == 0)
    }
}

/// The data one rank runs on: its shard of the training rows (all of them
/// in one process), the test set, and where the shard sits.
struct RankData {
    splits: hessfree_data::Splits,
    /// Training rows over all ranks, the unit of a data pass.
    train_rows: usize,
    shard: Option<Shard>,
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

/// Test digits shown in an autoencoder report's reconstruction picture.
const RECONSTRUCTED_DIGITS: usize = 10;
const RECONSTRUCTIONS_FILE: &str = "reconstructions.png";

/// One run's results, ready for the report.
struct Finished {
    summary: RunSummary,
    trace: Vec<hessfree_solvers::TraceRecord>,
    /// The weight-image file and its columns.
    image: Option<(String, Vec<Vec<f32>>)>,
    /// The weights file, its model and the final parameters.
    weights: Option<(String, hessfree_model::Model, candle_core::Tensor)>,
    /// An autoencoder's reconstructions of the first test digits, as
    /// grey levels.
    reconstruction: Option<Vec<u8>>,
}

/// The checkpoint `--resume` holds for `label`, if any.
fn resume_from(job: &CompareJob, label: &str) -> Result<Option<Arc<Snapshot>>> {
    let Some(dir) = &job.resume else {
        return Ok(None);
    };
    let path = checkpoint_path(dir, label);
    if path.exists() {
        tracing::info!(run = %label, checkpoint = %path.display(), "resuming");
        Ok(Some(Arc::new(checkpoint::read(&path)?)))
    } else {
        tracing::warn!(run = %label, checkpoint = %path.display(), "no checkpoint: starting afresh");
        Ok(None)
    }
}

/// Where a grid point keeps the last snapshot it can be continued from
/// (its ordinary checkpoint ends as a finished one, which cannot).
fn continuation_path(dir: &Path, label: &str) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("{}.continue.ckpt", slug(label)))
}

/// Runs one planned run from `resume` (or its start). For a grid point,
/// also returns the last unfinished snapshot, to continue the best point.
fn execute(
    job: &CompareJob,
    p: &PlannedRun,
    resume: Option<Arc<Snapshot>>,
    data: &RankData,
    device: &Device,
    progress: &dyn Fn(&str, u64) -> RunProgress,
) -> Result<(Finished, Option<Arc<Snapshot>>)> {
    let splits = &data.splits;
    let stop = StopRules {
        grad_tol: (job.grad_tol > 0.0).then_some(job.grad_tol),
        max_iters: Some(p.max_iters),
        max_seconds: p.max_time,
        max_hvps: job.max_hvps,
        max_data_passes: job.max_passes,
        ..Default::default()
    };
    let experiment = Arc::new(
        Experiment::prepare_shard(
            p.spec.clone(),
            &splits.train,
            &splits.test,
            device,
            data.shard.clone(),
        )
        .with_context(|| format!("preparing run `{}`", p.label))?,
    );
    let RunProgress { on_record, finish } = progress(&p.label, p.max_iters);
    let latest: Arc<Mutex<Option<Arc<Snapshot>>>> = Arc::new(Mutex::new(None));
    // Rank 0 alone writes; the other ranks keep the in-memory snapshot a
    // grid's best point continues from.
    let disk = job
        .checkpoint_every
        .filter(|_| job.writes())
        .map(|_| checkpoint_path(&job.out, &p.label));
    if let Some(dir) = disk.as_ref().and_then(|d| d.parent()) {
        ensure_dir(dir)?;
    }
    let checkpoint = match (
        &p.grid,
        job.checkpoint_every
            .map(|e| p.checkpoint_every.unwrap_or(e)),
    ) {
        (Some(_), every) => {
            // Every trace interval, so the best point continues from near
            // its end; on disk too when checkpoints were asked for.
            let keep = latest.clone();
            let continuation = disk.as_ref().map(|_| continuation_path(&job.out, &p.label));
            let disk = disk.clone();
            let sink: CheckpointSink = Arc::new(move |snap| {
                if snap.meta.finished.is_none() {
                    if let Some(path) = &continuation {
                        checkpoint::write_atomic(path, snap)?;
                    }
                    *keep.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(snap.clone()));
                }
                match &disk {
                    Some(path) => checkpoint::write_atomic(path, snap),
                    None => Ok(()),
                }
            });
            let every = every.map_or(p.trace_every, |e| e.min(p.trace_every)).max(1);
            Some(Checkpointing { every, sink })
        }
        (None, Some(every)) => disk.clone().map(|path| {
            let sink: CheckpointSink = Arc::new(move |snap| checkpoint::write_atomic(&path, snap));
            Checkpointing { every, sink }
        }),
        (None, None) => None,
    };
    let opts = RunOptions {
        checkpoint,
        resume,
        stop,
        trace_every: p.trace_every,
        test_every: 1,
        scores: None,
        on_record: Some(on_record),
        interrupt: Some(job.interrupt.clone()),
    };
    ProcMemory::reset_peak();
    tracing::info!(run = %p.label, "starting");
    let comm_before = job.ranks.as_ref().map(|r| r.stats());
    let out = experiment
        .run(&p.method, opts)
        .with_context(|| format!("run `{}`", p.label))?;
    let comm = job
        .ranks
        .as_ref()
        .zip(comm_before)
        .map(|(r, before)| (r.size(), r.stats() - before));
    let peak = ProcMemory::read().map(|m| m.hwm_bytes);
    finish(&out.stop);
    let last = out.trace.last().cloned();
    let (final_objective, final_grad_norm) = match &last {
        Some(r) => (r.objective, r.grad_norm),
        None => (f64::NAN, f64::NAN),
    };
    // Grid points are summarised in their table only: no pictures, no weights.
    let (image, weights) = if p.grid.is_some() {
        (None, None)
    } else {
        let slug = slug(&p.label);
        let w0 = experiment
            .model
            .layout()
            .view(&out.params, "layer0.weight")?;
        let (fan_in, fan_out) = w0.dims2()?;
        let w0: Vec<f32> = w0.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut columns = split_columns(&w0, fan_in, fan_out)?;
        columns.truncate(32);
        (
            Some((format!("weights_{slug}.png"), columns)),
            Some((
                format!("weights_{slug}.safetensors"),
                experiment.model.clone(),
                out.params.clone(),
            )),
        )
    };
    let autoencoder = experiment.model.is_autoencoder();
    let final_scores = experiment.scores(&out.params)?;
    let (train_accuracy, test_accuracy) = if autoencoder {
        (None, None)
    } else {
        (
            Some(experiment.train_accuracy(&out.params)?),
            final_scores.test_accuracy,
        )
    };
    let reconstruction = if autoencoder && p.grid.is_none() {
        Some(reconstruct_digits(&experiment, &out.params)?)
    } else {
        None
    };
    let summary = RunSummary {
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
        train_accuracy,
        test_accuracy,
        train_error: final_scores.train_error,
        test_error: final_scores.test_error,
        grad_evals: out.counts.grad_evals,
        loss_evals: out.counts.loss_evals,
        hvp_evals: out.counts.hvp_evals,
        data_passes: out.counts.samples as f64 / data.train_rows as f64,
        peak_memory_bytes: peak,
        hessian_bytes: out.extras.get("hessian_bytes").map(|b| *b as u64),
        reference_test_accuracy: job.references.iter().find(|r| r.0 == p.label).map(|r| r.1),
        extras: out.extras.clone(),
        weights_image: image.as_ref().map(|i| i.0.clone()),
        weights_file: weights.as_ref().map(|w| w.0.clone()),
        kernel: Some(kernel_name(&experiment)),
        grid: p.grid.as_ref().map(|g| g.grid.clone()),
        best_of: None,
        communication: comm.map(|(ranks, c)| {
            let iterations = last.as_ref().map_or(0, |r| r.iter).max(1);
            CommSummary {
                ranks,
                allreduces: c.calls,
                bytes: c.bytes,
                bytes_per_iteration: c.bytes as f64 / iterations as f64,
                comm_seconds: c.seconds,
                compute_seconds: (out.solver_seconds - c.seconds).max(0.0),
            }
        }),
    };
    tracing::info!(run = %p.label, stop = %out.stop, seconds = out.solver_seconds, "finished");
    let continue_from = latest.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok((
        Finished {
            summary,
            trace: out.trace,
            image,
            weights,
            reconstruction,
        },
        continue_from,
    ))
}

/// After a grid's last point: continues the point with the lowest final
/// objective to the full budget, from its own checkpoint when resuming,
/// else from the point's last unfinished snapshot. `None` when no point
/// ended with a finite objective.
#[allow(clippy::too_many_arguments)]
fn continue_best(
    job: &CompareJob,
    last: &PlannedRun,
    point: &GridPoint,
    points: Vec<(usize, Option<Arc<Snapshot>>)>,
    done: &[Finished],
    data: &RankData,
    device: &Device,
    progress: &dyn Fn(&str, u64) -> RunProgress,
) -> Result<Option<Finished>> {
    let best = points
        .into_iter()
        .filter(|(i, _)| {
            let s = &done[*i].summary;
            s.stop_reason != "failed" && s.final_objective.is_finite()
        })
        .min_by(|a, b| {
            done[a.0]
                .summary
                .final_objective
                .total_cmp(&done[b.0].summary.final_objective)
        });
    let Some((index, snapshot)) = best else {
        tracing::warn!(grid = %point.grid, "no grid point ended with a finite objective");
        return Ok(None);
    };
    let chosen = &done[index].summary;
    let planned = job
        .runs
        .iter()
        .find(|r| r.label == chosen.name)
        .unwrap_or(last);
    let full = PlannedRun {
        label: format!("{} (best of grid)", planned.label),
        max_time: Some(point.full_time),
        grid: None,
        ..planned.clone()
    };
    let on_disk = match &job.resume {
        Some(dir) => {
            let path = continuation_path(dir, &planned.label);
            path.exists()
                .then(|| checkpoint::read(&path).map(Arc::new))
                .transpose()?
        }
        None => None,
    };
    let resume = match resume_from(job, &full.label)? {
        Some(own) => Some(own),
        None => snapshot.or(on_disk),
    };
    let (mut finished, _) = execute(job, &full, resume, data, device, progress)?;
    finished.summary.best_of = Some(point.grid.clone());
    Ok(Some(finished))
}

/// The first test digits as grey levels, one row of images.
fn test_digits(test: &hessfree_data::Dataset) -> Vec<u8> {
    let n = RECONSTRUCTED_DIGITS.min(test.len());
    test.images[..n * test.pixels_per_image()].to_vec()
}

/// An autoencoder's reconstructions of the first test digits, as grey levels.
fn reconstruct_digits(experiment: &Experiment, w: &candle_core::Tensor) -> Result<Vec<u8>> {
    let n = RECONSTRUCTED_DIGITS.min(experiment.test_x.dim(0)?);
    let x = experiment.test_x.narrow(0, 0, n)?;
    let out = experiment.model.reconstruction(w, &x)?;
    let v: Vec<f32> = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(v.iter()
        .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect())
}

/// One picture: the digits on top, each run's reconstructions below, with
/// a grey line between rows.
fn write_reconstructions(path: &Path, digits: &[u8], rows: &[Vec<u8>]) -> Result<()> {
    const SIDE: usize = 28;
    const GAP: usize = 2;
    let n = digits.len() / (SIDE * SIDE);
    let all: Vec<&[u8]> = std::iter::once(digits)
        .chain(rows.iter().map(Vec::as_slice))
        .collect();
    let width = n * SIDE + (n + 1) * GAP;
    let height = all.len() * SIDE + (all.len() + 1) * GAP;
    let mut pixels = vec![128u8; width * height];
    for (row, images) in all.iter().enumerate() {
        for k in 0..n {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let top = GAP + row * (SIDE + GAP);
                    let left = GAP + k * (SIDE + GAP);
                    pixels[(top + y) * width + left + x] = images[k * SIDE * SIDE + y * SIDE + x];
                }
            }
        }
    }
    let png = hessfree_report::gray_image_png(&pixels, height, width, 2)?;
    hessfree_report::write_atomic(path, png)?;
    Ok(())
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
    if let Some(ranks) = job.ranks.as_ref().filter(|r| r.size() > 1) {
        for p in &job.runs {
            let one_process =
                matches!(p.method, crate::Method::DenseNewton(_)) || p.method.uses_kfac();
            if one_process {
                bail!(
                    "run `{}`: {} runs in one process, and this job has {} MPI ranks; \
                     data parallelism covers sgd, adam, newton-cg, hf (without the K-FAC \
                     preconditioner), trust-region and lbfgs",
                    p.label,
                    p.method.name(),
                    ranks.size()
                );
            }
        }
    }
    if job.writes() {
        check_writable(&job.out)?;
    }
    Ok(())
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
        Experiment::check(&p.spec, &splits.train).with_context(|| format!("run `{}`", p.label))?;
        if p.method.uses_kfac() {
            let parsed = p.spec.parse(splits.train.rows, splits.train.cols)?;
            if matches!(parsed.model, hessfree_model::ModelSpec::Softmax { .. }) {
                bail!(
                    "run `{}`: K-FAC factors the dense layers of MLPs and autoencoders \
                     (`mlp:...`, `autoencoder:...`); `{}` is softmax regression",
                    p.label,
                    p.spec.model
                );
            }
        }
    }

    let train_rows = splits.train.len();
    let (splits, shard) = match &job.ranks {
        None => (splits, None),
        Some(ranks) => {
            // Each rank keeps only its contiguous shard of the training rows.
            let rows = shard_range(train_rows, ranks.size(), ranks.rank());
            let offset = rows.start;
            let train = splits.train.select(&rows.collect::<Vec<_>>());
            (
                hessfree_data::Splits {
                    train,
                    test: splits.test,
                },
                Some(Shard {
                    ranks: ranks.clone(),
                    offset,
                    rows: train_rows,
                    check_params: job.check_params,
                }),
            )
        }
    };
    let data = RankData {
        splits,
        train_rows,
        shard,
    };
    let splits = &data.splits;

    let mut done: Vec<Finished> = Vec::new();
    // Points of the grid in progress, with the snapshot each can be
    // continued from.
    let mut grid_points: Vec<(usize, Option<Arc<Snapshot>>)> = Vec::new();
    for p in &job.runs {
        if job.interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(run = %p.label, "skipped: interrupted");
            continue;
        }
        let resume = resume_from(job, &p.label)?;
        let (finished, continue_from) = execute(job, p, resume, &data, &device, progress)?;
        done.push(finished);
        if let Some(point) = &p.grid {
            grid_points.push((done.len() - 1, continue_from));
            if point.last
                && let Some(best) = continue_best(
                    job,
                    p,
                    point,
                    std::mem::take(&mut grid_points),
                    &done,
                    &data,
                    &device,
                    progress,
                )?
            {
                done.push(best);
            }
        }
        if done
            .last()
            .is_some_and(|f| f.summary.stop_reason == "interrupted")
        {
            tracing::warn!("interrupted: writing the report for the runs so far");
        }
    }
    let reconstructions = done
        .iter()
        .filter(|f| f.summary.grid.is_none())
        .filter_map(|f| f.reconstruction.clone())
        .collect::<Vec<_>>();
    let mut runs = Vec::new();
    let mut traces = Vec::new();
    let mut images = Vec::new();
    let mut weights = Vec::new();
    for f in done {
        traces.push((f.summary.name.clone(), f.trace));
        runs.push(f.summary);
        images.extend(f.image);
        weights.extend(f.weights);
    }
    let reconstructions_image = match (&reconstructions[..], &test_digits(&splits.test)) {
        ([], _) => None,
        (rows, digits) => Some((
            RECONSTRUCTIONS_FILE.to_string(),
            digits.clone(),
            rows.to_vec(),
        )),
    };

    let summary = CompareSummary {
        kind: "compare".into(),
        title: job.title.clone(),
        host: Host::this_machine(),
        git_revision: provenance::git_revision(),
        date: provenance::today_utc(),
        command_line: provenance::command_line(),
        seed: job.seed,
        dataset: DatasetInfo {
            name: format!("MNIST ({})", provenance::display_path(&data_dir.path)),
            train_samples: train_rows,
            test_samples: splits.test.len(),
        },
        device: job.device.clone(),
        dtype: job.dtype.clone(),
        problem: job.runs[0].spec.clone(),
        runs,
        reconstructions_image: reconstructions_image.as_ref().map(|r| r.0.clone()),
        rationale: job.rationale.clone(),
    };
    // Round-trip the trace through its CSV form so the written report is
    // exactly what `report --check` regenerates from the files.
    let provisional = CompareReport { summary, traces };
    let traces = CompareReport::parse_trace_csv(&provisional.trace_csv()?)?;
    let report = CompareReport {
        summary: provisional.summary,
        traces,
    };
    let report_path = job.out.join(report::REPORT_FILE);
    if !job.writes() {
        return Ok(report_path);
    }
    ensure_dir(&job.out)?;
    for (file, columns) in &images {
        WeightGrid::mnist().write_png(job.out.join(file), columns)?;
    }
    for (file, model, params) in &weights {
        hessfree_model::save_weights(&job.out.join(file), model, params)?;
    }
    if let Some((file, digits, rows)) = &reconstructions_image {
        write_reconstructions(&job.out.join(file), digits, rows)?;
    }
    report.write(&job.out)?;
    // A grid point that diverged is a result (its learning rate is too
    // high), not a failure of the job.
    let failed: Vec<String> = report
        .summary
        .runs
        .iter()
        .filter(|r| r.stop_reason == "failed" && r.grid.is_none())
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
