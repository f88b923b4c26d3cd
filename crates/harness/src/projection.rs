//! A projection of a full Hessian-free run on a model too big to train here
//! (Martens' 784-1000-500-250-30 autoencoder: days on two cores). It times
//! the pieces an HF iteration is made of on this machine, runs a few real
//! HF iterations, and projects a run of Martens' length from them.
//!
//! The report is a pure function of its `summary.json`, like the others:
//! the projection is computed when rendering, so its arithmetic is checked
//! by `report --check` along with the rest.
//!
//! Timing model of one HF iteration `i` with `m_i` CG steps:
//! `t_i = f + m_i · p`, where `p` is one Gauss-Newton product on the
//! curvature batch (measured alone) and `f` everything else (the gradient
//! and the preconditioner's diagonal on the full set, the curvature batch's
//! forward pass, the backtracking over CG iterates and the line search),
//! fitted from the measured iterations as the mean of `t_i − m_i · p`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use hessfree_data::{MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_model::{CurvatureKind, Objective};
use hessfree_report::{fmt_duration_s, fmt_sig, markdown_table, stale_files, write_rendered};
use hessfree_solvers::{NewtonCgConfig, RunOptions, StopRules};
use serde::{Deserialize, Serialize};

use crate::compare::{Host, device};
use crate::experiment::{Experiment, ProblemSpec};
use crate::method::{Method, run};
use crate::provenance;

/// The summary's file name, as in the other reports.
pub const SUMMARY_FILE: &str = "summary.json";
/// The rendered report.
pub const REPORT_FILE: &str = "report.md";

/// What to time and project.
pub struct ProjectionJob {
    /// The problem (model, dtype, init, penalties) the HF run is on.
    pub spec: ProblemSpec,
    pub device: String,
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    pub title: String,
    /// HF iterations to run and time.
    pub hf_iters: u64,
    /// Stops the timed HF run early, in seconds.
    pub max_time: f64,
    /// Timings of each piece, the median reported.
    pub repeats: usize,
    /// Iterations of the projected run.
    pub target_iters: u64,
    /// Where `target_iters` comes from, printed with the projection.
    pub target_source: String,
}

/// One timed HF iteration, from the run's trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterationTiming {
    pub iter: u64,
    /// Solver seconds of this iteration alone.
    pub seconds: f64,
    pub cg_steps: u64,
    /// Curvature products, gradients and loss evaluations this iteration.
    pub products: u64,
    pub gradients: u64,
    pub losses: u64,
}

/// Everything the report shows; the projection is derived from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionSummary {
    /// `"projection"`, to tell it from the other reports' summaries.
    pub kind: String,
    pub title: String,
    pub host: Host,
    pub git_revision: String,
    pub date: String,
    pub command_line: String,
    pub device: String,
    pub problem: ProblemSpec,
    pub parameters: usize,
    pub train_rows: usize,
    pub curvature_batch: usize,
    pub cg_cap: u64,
    /// Each repeat, in seconds: a gradient (with the loss) on the whole
    /// training set and on the curvature batch, the curvature batch's
    /// forward pass that products reuse, and one product at a fixed point.
    pub gradient_full_seconds: Vec<f64>,
    pub gradient_batch_seconds: Vec<f64>,
    pub product_setup_seconds: Vec<f64>,
    pub product_seconds: Vec<f64>,
    pub iterations: Vec<IterationTiming>,
    pub target_iters: u64,
    pub target_source: String,
}

/// The median of `xs` (0 for none).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Seconds of `f` each of `repeats` times, the device synchronised so that
/// a CUDA kernel's time is in its own measurement.
fn time_each(
    repeats: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f()?;
            device.synchronize()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Times the pieces, runs the HF iterations and writes the report.
pub fn run_projection(job: &ProjectionJob) -> Result<PathBuf> {
    if job.repeats == 0 || job.hf_iters == 0 || job.target_iters == 0 {
        bail!(
            "repeats, HF iterations and target iterations must be at least 1, got {}, {} and {}",
            job.repeats,
            job.hf_iters,
            job.target_iters
        );
    }
    let device = device(&job.device)?;
    let data_dir = resolve_data_dir(job.data_dir.as_deref())?;
    let splits = load_dir(&data_dir.path, MNIST_CLASSES)?;
    Experiment::check(&job.spec, &splits.train)?;
    let exp = Experiment::prepare(job.spec.clone(), &splits.train, &splits.test, &device)?;
    let hf = NewtonCgConfig::martens();
    let batch = hf
        .curvature_batches
        .map(|b| b.size)
        .context("Martens' settings have curvature batches")?;
    let n = exp.objective.num_samples();
    if batch > n {
        bail!("the curvature batch of {batch} rows exceeds the {n} training rows");
    }
    let w = exp.initial_point()?;
    let full: &dyn Objective = exp.objective.as_ref();
    let on_batch = exp
        .objective
        .subsample(&(0..batch).collect::<Vec<_>>())
        .context("the curvature batch")?;
    let v = Tensor::randn(0.0, 1.0, w.dims(), &device)?.to_dtype(w.dtype())?;
    tracing::info!(parameters = w.elem_count(), "timing the gradient");
    let gradient_full_seconds = time_each(job.repeats, &device, || {
        full.loss_and_grad(&w)?;
        Ok(())
    })?;
    let gradient_batch_seconds = time_each(job.repeats, &device, || {
        on_batch.loss_and_grad(&w)?;
        Ok(())
    })?;
    tracing::info!("timing the Gauss-Newton product");
    let mut op = None;
    let product_setup_seconds = time_each(job.repeats, &device, || {
        op = Some(on_batch.curvature(&w, CurvatureKind::GaussNewton)?);
        Ok(())
    })?;
    let op = op.context("at least one repeat")?;
    let product_seconds = time_each(job.repeats, &device, || {
        op.apply(&v)?;
        Ok(())
    })?;

    tracing::info!(iterations = job.hf_iters, "timing HF iterations");
    let opts = RunOptions {
        stop: StopRules {
            max_iters: Some(job.hf_iters),
            max_seconds: Some(job.max_time),
            grad_tol: None,
            ..StopRules::default()
        },
        ..RunOptions::default()
    };
    let method = Method::Hf(hf.clone());
    let out = run(&method, exp.problem_for(&method)?, w, opts)?;
    let iterations = out
        .trace
        .windows(2)
        .map(|p| IterationTiming {
            iter: p[1].iter,
            seconds: p[1].wall_seconds - p[0].wall_seconds,
            cg_steps: p[1].cg_iters.unwrap_or(0),
            products: p[1].hvp_evals - p[0].hvp_evals,
            gradients: p[1].grad_evals - p[0].grad_evals,
            losses: p[1].loss_evals - p[0].loss_evals,
        })
        .collect::<Vec<_>>();
    if iterations.is_empty() {
        bail!(
            "the HF run ended before its first iteration ({}); expected at least one to time",
            out.stop
        );
    }
    let summary = ProjectionSummary {
        kind: "projection".into(),
        title: job.title.clone(),
        host: Host::this_machine(),
        git_revision: provenance::git_revision(),
        date: provenance::today_utc(),
        command_line: provenance::command_line(),
        device: job.device.clone(),
        problem: job.spec.clone(),
        parameters: exp.model.layout().len(),
        train_rows: n,
        curvature_batch: batch,
        cg_cap: hf.cg_max_iters as u64,
        gradient_full_seconds,
        gradient_batch_seconds,
        product_setup_seconds,
        product_seconds,
        iterations,
        target_iters: job.target_iters,
        target_source: job.target_source.clone(),
    };
    write(&job.out, &summary)?;
    Ok(job.out.join(REPORT_FILE))
}

/// Writes `summary.json` and the report rendered from it, each atomically.
pub fn write(dir: &Path, summary: &ProjectionSummary) -> Result<()> {
    Ok(write_rendered(dir, &render(summary)?)?)
}

/// Every file of the report and its bytes.
pub fn render(summary: &ProjectionSummary) -> Result<Vec<(String, Vec<u8>)>> {
    let json = serde_json::to_string_pretty(summary)? + "\n";
    Ok(vec![
        (SUMMARY_FILE.into(), json.into_bytes()),
        (REPORT_FILE.into(), markdown(summary).into_bytes()),
    ])
}

/// Reads `dir/summary.json`, if it is a projection's.
pub fn load(dir: &Path) -> Result<ProjectionSummary> {
    let path = dir.join(SUMMARY_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let summary: ProjectionSummary = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a projection's summary", path.display()))?;
    if summary.kind != "projection" {
        bail!(
            "{} has kind `{}`, expected `projection`",
            path.display(),
            summary.kind
        );
    }
    Ok(summary)
}

/// The files of `dir` that differ from what its summary renders.
pub fn check(dir: &Path) -> Result<Vec<String>> {
    Ok(stale_files(dir, &render(&load(dir)?)?))
}

/// The fitted timing model: seconds per product `p` (measured) and the
/// fixed seconds per iteration `f`.
struct Model {
    product: f64,
    fixed: f64,
}

impl Model {
    fn fit(s: &ProjectionSummary) -> Self {
        let product = median(&s.product_seconds);
        let fixed = s
            .iterations
            .iter()
            .map(|it| it.seconds - it.products as f64 * product)
            .sum::<f64>()
            / s.iterations.len().max(1) as f64;
        Self { product, fixed }
    }

    fn iteration(&self, products: f64) -> f64 {
        self.fixed + products * self.product
    }
}

fn hours(seconds: f64) -> String {
    if seconds >= 2.0 * 86_400.0 {
        format!("{} days", fmt_sig(seconds / 86_400.0, 3))
    } else {
        format!("{} hours", fmt_sig(seconds / 3600.0, 3))
    }
}

fn markdown(s: &ProjectionSummary) -> String {
    let mut md = String::new();
    let secs = |xs: &[f64]| {
        let all: Vec<String> = xs.iter().map(|x| fmt_sig(*x, 3)).collect();
        format!("{} s (of {})", fmt_sig(median(xs), 3), all.join(", "))
    };
    let _ = writeln!(md, "# {}\n", s.title);
    let _ = writeln!(
        md,
        "**This report is a projection, not a measurement of a full run.** It measures the \
         pieces of a Hessian-free iteration and a few real iterations on this machine, and \
         multiplies them out to a run of Martens' length.\n"
    );
    let _ = writeln!(
        md,
        "- Model: `{}`, {} parameters, {} on `{}`, init `{}`, L2 {}.\n\
         - Host: {} ({} cores, {} threads), revision `{}`, {}.\n\
         - Training rows: {}; curvature batch: {} rows{}; CG cap: {} steps.\n\
         - Command: `{}`\n",
        s.problem.model,
        s.parameters,
        s.problem.dtype,
        s.device,
        s.problem.init,
        s.problem.l2,
        s.host.cpu_model,
        s.host.cores,
        s.host.threads,
        s.git_revision,
        s.date,
        s.train_rows,
        s.curvature_batch,
        if 4 * s.curvature_batch == s.train_rows {
            " (a quarter, Martens' `numchunks = 4`)"
        } else {
            ""
        },
        s.cg_cap,
        s.command_line,
    );
    let grad_batch = median(&s.gradient_batch_seconds);
    let product = median(&s.product_seconds);
    let setup = median(&s.product_setup_seconds);
    let _ = writeln!(md, "## Measured here\n");
    let rows = vec![
        vec![
            format!("gradient and loss, all {} rows", s.train_rows),
            secs(&s.gradient_full_seconds),
        ],
        vec![
            format!(
                "gradient and loss, the {} curvature rows",
                s.curvature_batch
            ),
            secs(&s.gradient_batch_seconds),
        ],
        vec![
            "curvature batch's forward pass (once per iteration)".into(),
            secs(&s.product_setup_seconds),
        ],
        vec![
            "one Gauss-Newton product on the curvature batch".into(),
            secs(&s.product_seconds),
        ],
    ];
    let _ = writeln!(md, "{}", markdown_table(&["piece", "median"], &rows));
    let _ = writeln!(
        md,
        "On the same {} rows, one Gauss-Newton product costs {} gradients (Martens' factor is \
         at most 2); with the forward pass it reuses, {} gradients.\n",
        s.curvature_batch,
        fmt_sig(product / grad_batch, 3),
        fmt_sig((product + setup) / grad_batch, 3),
    );
    let rows: Vec<Vec<String>> = s
        .iterations
        .iter()
        .map(|it| {
            vec![
                it.iter.to_string(),
                fmt_duration_s(it.seconds),
                it.cg_steps.to_string(),
                it.products.to_string(),
                it.gradients.to_string(),
                it.losses.to_string(),
            ]
        })
        .collect();
    let _ = writeln!(
        md,
        "HF iterations with Martens' settings from the `{}` initialisation, timed:\n\n{}",
        s.problem.init,
        markdown_table(
            &[
                "iteration",
                "seconds",
                "CG steps",
                "products",
                "gradients",
                "losses"
            ],
            &rows
        )
    );
    let m = Model::fit(s);
    let mean_products = s.iterations.iter().map(|i| i.products as f64).sum::<f64>()
        / s.iterations.len().max(1) as f64;
    let _ = writeln!(
        md,
        "## The timing model\n\n\
         One iteration with `m` curvature products takes `f + m·p` seconds: `p` = {} s is the \
         product measured above, and `f` = {} s, fitted as the mean over the timed iterations \
         of their seconds less their products, is everything else (the gradient and the \
         preconditioner's diagonal on the full set, the curvature batch's forward pass, the \
         backtracking over CG iterates, the line search).\n",
        fmt_sig(m.product, 3),
        fmt_sig(m.fixed, 3),
    );
    let _ = writeln!(md, "## Projection\n");
    let _ = writeln!(
        md,
        "A full run is taken as {} HF iterations ({}). Assumptions: the per-iteration cost \
         stays what the timing model says (the network's size, not its weights, sets it); the \
         machine and thread count are this report's; nothing else runs.\n",
        s.target_iters, s.target_source
    );
    let n = s.target_iters as f64;
    let rows = vec![
        vec![
            format!(
                "CG as long as in the timed iterations ({} products each)",
                fmt_sig(mean_products, 3)
            ),
            fmt_duration_s(m.iteration(mean_products)),
            hours(n * m.iteration(mean_products)),
        ],
        vec![
            format!("CG at its cap ({} products each)", s.cg_cap),
            fmt_duration_s(m.iteration(s.cg_cap as f64)),
            hours(n * m.iteration(s.cg_cap as f64)),
        ],
    ];
    let _ = writeln!(
        md,
        "{}",
        markdown_table(
            &[
                "CG length",
                "per iteration",
                &format!("{} iterations", s.target_iters)
            ],
            &rows
        )
    );
    let _ = writeln!(
        md,
        "Early iterations stop CG sooner than later ones, which in Martens' runs often reach \
         the cap, so the first row is a lower estimate and the second an upper one. Both are \
         projections from the measurements above, not timings of a full run."
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> ProjectionSummary {
        ProjectionSummary {
            kind: "projection".into(),
            title: "t".into(),
            host: Host {
                cpu_model: "cpu".into(),
                cores: 2,
                threads: 2,
            },
            git_revision: "r".into(),
            date: "d".into(),
            command_line: "c".into(),
            device: "cpu".into(),
            problem: ProblemSpec::default(),
            parameters: 10,
            train_rows: 100,
            curvature_batch: 25,
            cg_cap: 250,
            gradient_full_seconds: vec![4.0, 4.2, 3.9],
            gradient_batch_seconds: vec![1.0, 1.1, 0.9],
            product_setup_seconds: vec![0.5],
            product_seconds: vec![2.0, 1.0, 3.0],
            iterations: vec![
                IterationTiming {
                    iter: 1,
                    seconds: 30.0,
                    cg_steps: 10,
                    products: 10,
                    gradients: 1,
                    losses: 3,
                },
                IterationTiming {
                    iter: 2,
                    seconds: 50.0,
                    cg_steps: 20,
                    products: 20,
                    gradients: 1,
                    losses: 3,
                },
            ],
            target_iters: 500,
            target_source: "s".into(),
        }
    }

    #[test]
    fn the_model_subtracts_the_measured_products_from_each_iteration() {
        let m = Model::fit(&summary());
        // p = median(2, 1, 3) = 2; f = mean(30 - 20, 50 - 40) = 10.
        assert_eq!(m.product, 2.0);
        assert_eq!(m.fixed, 10.0);
        assert_eq!(m.iteration(250.0), 510.0);
    }

    #[test]
    fn the_report_says_it_is_a_projection_and_multiplies_out() {
        let md = markdown(&summary());
        assert!(md.contains("is a projection, not a measurement"), "{md}");
        // 500 iterations at the cap: 500 * 510 s = 2.95 days; at the
        // timed iterations' 15 products, 500 * 40 s = 5.56 hours.
        assert!(md.contains("2.95 days"), "{md}");
        assert!(md.contains("5.56 hours"), "{md}");
        // 1 product costs 2 gradients on the same rows.
        assert!(md.contains("costs 2 gradients"), "{md}");
    }

    #[test]
    fn a_written_report_checks_clean_and_a_stale_one_does_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write(dir, &summary()).expect("write");
        assert!(check(dir).expect("check").is_empty());
        std::fs::write(dir.join(REPORT_FILE), "edited").expect("edit");
        assert_eq!(check(dir).expect("check").len(), 1);
    }
}
