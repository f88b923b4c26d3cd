//! `cargo xtask hessian`: the notebook's Hessian study reproduced and
//! explained, plus the matrix-free spectrum.
//!
//! The computing lives in `hessfree-analysis`; this module loads the data,
//! picks the points to analyse, and writes `report.md`, the figures and
//! `summary.json` into `--out`. `report.md` and the SVG figures are pure
//! functions of `summary.json`, so `--check` re-renders them from it and
//! fails if the committed files differ (or a figure is missing).
//!
//! The points analysed come from `hessfree-solvers`: its damped Newton-CG
//! (default settings) for the softmax problems, its SGD for the MLP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::{Deserialize, Serialize};

use hessfree_analysis::cg::CgOptions;
use hessfree_analysis::study::{
    LambdaMin, RankStudy, RankStudyConfig, SpyPlot, certify_lambda_min, newton_system_cg,
    rank_study,
};
use hessfree_analysis::{
    DampedCondition, HessianOrder, OperatorMemory, ProcMemory, SpectrumOptions, SpectrumReport,
    lanczos, measure_operator_memory, spectrum_report,
};
use hessfree_data::{Dataset, MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_model::{
    Activation, Batches, CurvatureKind, Init, Model, ModelSpec, Objective, Penalty,
    SoftmaxObjective, objective_for,
};
use hessfree_report::{
    Align, LinePlot, Series, ensure_dir, fmt_bytes, fmt_duration_s, fmt_sig, markdown_image,
    markdown_table_aligned, write_atomic, write_json,
};
use hessfree_solvers::{
    HfProblem, Method, NewtonCgConfig, RunOptions, SgdConfig, StopReason, StopRules,
};

use crate::DataDirArgs;
use crate::provenance::{cpu_model, git_revision};

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

/// Test images shown as in the notebook.
const DIGITS: [usize; 3] = [124, 123, 12];
const L2_LAM: f64 = 1e-4;
const LAPLACIAN_EPS: f64 = 1e-3;
const MLP_HIDDEN: usize = 256;
const NEWTON_GRAD_TOL: f64 = 1e-6;

/// How much of everything to do.
struct Plan {
    rank: RankStudyConfig,
    /// Training images for the softmax spectra and optima.
    softmax_samples: usize,
    /// Training images for the MLP spectrum (its products are 26x dearer).
    mlp_samples: usize,
    sgd_samples: usize,
    sgd_epochs: usize,
    spectrum: SpectrumOptions,
    newton_max_iters: u64,
    newton_max_hvps: u64,
    payoff_max_cg: usize,
}

impl Plan {
    fn new(quick: bool, seed: u64) -> Self {
        let spectrum = SpectrumOptions {
            lanczos_steps: if quick { 30 } else { 100 },
            extremes: 5,
            trace_probes: if quick { 10 } else { 30 },
            slq_probes: if quick { 3 } else { 8 },
            slq_steps: if quick { 15 } else { 40 },
            seed,
            dampings: vec![0.0, 1e-4, 1e-3, 1e-2],
            density_points: 400,
            density_sigma: 0.01,
        };
        let rank = RankStudyConfig {
            batches: if quick {
                vec![1, 2, 3]
            } else {
                vec![1, 5, 10, 100, 200, 500, 1000]
            },
            spy_batches: if quick {
                vec![1, 2, 3]
            } else {
                vec![1, 5, 10, 100, 200]
            },
            spy_px: 784,
            normal_std: 0.1,
            seed,
            lanczos_steps: if quick { 30 } else { 100 },
            trace_probes: if quick { 10 } else { 30 },
            full_check_batch: if quick { None } else { Some(1000) },
        };
        Self {
            rank,
            softmax_samples: if quick { 2000 } else { 60_000 },
            mlp_samples: if quick { 1000 } else { 10_000 },
            sgd_samples: if quick { 2000 } else { 60_000 },
            sgd_epochs: if quick { 1 } else { 5 },
            spectrum,
            newton_max_iters: if quick { 10 } else { 40 },
            newton_max_hvps: if quick { 500 } else { 2000 },
            payoff_max_cg: if quick { 100 } else { 300 },
        }
    }
}

// ---------------------------------------------------------------------------
// The record.

#[derive(Serialize, Deserialize)]
struct Summary {
    meta: Meta,
    digits: Vec<Digit>,
    memory: Vec<MemoryRow>,
    rank: RankStudy,
    spy: Vec<SpyFile>,
    problems: Vec<Problem>,
    payoff: Payoff,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    generator: String,
    quick: bool,
    seed: u64,
    git_revision: String,
    host: String,
    cpu: String,
    cores: usize,
    device: String,
    data_dir: String,
    total_seconds: f64,
    /// `/proc/loadavg` at the start and the end: timings on a shared
    /// machine mean little without it.
    load_average: (String, String),
    /// Peak resident set of the whole run.
    peak_rss_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Digit {
    index: usize,
    label: u8,
    file: String,
}

#[derive(Serialize, Deserialize)]
struct MemoryRow {
    name: String,
    memory: OperatorMemory,
}

#[derive(Serialize, Deserialize)]
struct SpyFile {
    batch: usize,
    init: String,
    order: HessianOrder,
    file: String,
    dark_fraction: f64,
    /// Whether every pixel equals the same batch's plot at `W = 0` (`None`
    /// for the `W = 0` plots themselves).
    same_as_zero_init: Option<bool>,
}

#[derive(Serialize, Deserialize)]
struct OptimumInfo {
    method: String,
    iterations: usize,
    /// CG iterations of each Newton step (empty for SGD).
    cg_iterations: Vec<usize>,
    products: usize,
    loss: f64,
    grad_norm: f64,
    converged: bool,
    /// Why the solver stopped.
    stop: String,
    seconds: f64,
    test_accuracy: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct Problem {
    key: String,
    title: String,
    model: String,
    penalty: String,
    optimum: OptimumInfo,
    spectrum: SpectrumReport,
    /// The exact smallest eigenvalue, bracketed (softmax problems only).
    lambda_min: Option<LambdaMin>,
    density_file: String,
}

#[derive(Serialize, Deserialize)]
struct LambdaMinRow {
    problem: String,
    point: String,
    bracket: LambdaMin,
    /// Smallest Ritz value of a Lanczos run on the same operator.
    lanczos_min: f64,
}

#[derive(Serialize, Deserialize)]
struct CgRow {
    problem: String,
    point: String,
    /// Iterations to reach each relative residual in `PAYOFF_RTOLS`
    /// (`None`: not reached within `max_iter`).
    iterations: Vec<Option<usize>>,
    max_iter: usize,
}

const PAYOFF_RTOLS: [f64; 4] = [1e-2, 1e-4, 1e-6, 1e-8];

#[derive(Serialize, Deserialize)]
struct Payoff {
    lambda_min: Vec<LambdaMinRow>,
    cg: Vec<CgRow>,
    /// The solvers' Newton-CG runs on the no-bias problem without and
    /// with the Laplacian penalty.
    newton: Vec<(String, OptimumInfo)>,
    conditions: Vec<(String, Vec<DampedCondition>)>,
}

// ---------------------------------------------------------------------------
// The run.

pub fn run(args: HessianArgs) -> Result<()> {
    if args.check {
        return check(&args.out);
    }
    let start = Instant::now();
    let load_start = load_average();
    let plan = Plan::new(args.quick, args.seed);
    let out = args.out.as_path();
    ensure_dir(out)?;
    let dir = resolve_data_dir(args.data.data_dir.as_deref())?;
    let splits = load_dir(&dir.path, MNIST_CLASSES)?;
    let (train, test) = (&splits.train, &splits.test);

    let digits = write_digits(test, out)?;
    let memory = memory_rows(train, &plan)?;

    tracing::info!(batches = ?plan.rank.batches, "rank study");
    let mut spy = Vec::new();
    let mut zero_masks = std::collections::HashMap::new();
    let rank = rank_study(train, &plan.rank, |plot: SpyPlot<'_>| {
        let file = spy_file_name(plot.batch, plot.init, plot.order);
        plot.mask.write_png(out.join(&file))?;
        let key = (plot.batch, plot.order);
        let same_as_zero_init = if plot.init == "zero" {
            zero_masks.insert(key, plot.mask.pixels().to_vec());
            None
        } else {
            zero_masks
                .get(&key)
                .map(|z: &Vec<bool>| z.as_slice() == plot.mask.pixels())
        };
        spy.push(SpyFile {
            same_as_zero_init,
            batch: plot.batch,
            init: plot.init.to_string(),
            order: plot.order,
            dark_fraction: plot.mask.dark_count() as f64
                / (plot.mask.width() * plot.mask.height()) as f64,
            file,
        });
        Ok(())
    })?;

    let (problems, payoff) = spectra_and_payoff(train, test, &plan)?;

    let summary = Summary {
        meta: Meta {
            generator: "cargo xtask hessian".into(),
            quick: args.quick,
            seed: args.seed,
            git_revision: git_revision(),
            host: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            device: "cpu".into(),
            data_dir: dir.path.display().to_string(),
            total_seconds: start.elapsed().as_secs_f64(),
            load_average: (load_start, load_average()),
            peak_rss_bytes: ProcMemory::lifetime_peak_bytes(),
        },
        digits,
        memory,
        rank,
        spy,
        problems,
        payoff,
    };
    // Render from the JSON text, exactly as --check will.
    let json = hessfree_report::to_json_pretty(&summary)?;
    let summary: Summary = serde_json::from_str(&json)?;
    for (file, plot) in figures(&summary) {
        plot.write_svg(out.join(file))?;
    }
    write_atomic(out.join("report.md"), render_report(&summary))?;
    write_json(out.join("summary.json"), &summary)?;
    remove_stale_figures(out, &summary)?;
    tracing::info!(
        out = %out.display(),
        seconds = summary.meta.total_seconds,
        peak_rss = summary.meta.peak_rss_bytes,
        "hessian report written"
    );
    Ok(())
}

/// Figures this command wrote in an earlier run (other batch sizes, say)
/// that the new report does not reference. Only names this command
/// produces are touched.
fn remove_stale_figures(out: &Path, summary: &Summary) -> Result<()> {
    let current: Vec<String> = summary
        .digits
        .iter()
        .map(|d| d.file.clone())
        .chain(summary.spy.iter().map(|f| f.file.clone()))
        .chain(figures(summary).into_iter().map(|(f, _)| f))
        .collect();
    for entry in std::fs::read_dir(out)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with("spy_n") && name.ends_with(".png"))
            || (name.starts_with("digit_") && name.ends_with(".png"))
            || (name.starts_with("density_") && name.ends_with(".svg"));
        if ours && !current.contains(&name) {
            std::fs::remove_file(out.join(&name))
                .with_context(|| format!("removing stale figure {}", out.join(&name).display()))?;
        }
    }
    Ok(())
}

fn write_digits(test: &Dataset, out: &Path) -> Result<Vec<Digit>> {
    let mut digits = Vec::new();
    for index in DIGITS {
        ensure!(
            index < test.len(),
            "test image {index} requested, the test split has {}",
            test.len()
        );
        let file = format!("digit_{index}.png");
        let png = hessfree_report::gray_image_png(test.image(index), test.rows, test.cols, 8)?;
        write_atomic(out.join(&file), png)?;
        digits.push(Digit {
            index,
            label: test.labels[index],
            file,
        });
    }
    Ok(digits)
}

fn spy_file_name(batch: usize, init: &str, order: HessianOrder) -> String {
    let init = init.replace(':', "").replace('.', "_");
    match order {
        HessianOrder::ClassMajor => format!("spy_n{batch}_{init}.png"),
        HessianOrder::PixelMajor => format!("spy_n{batch}_{init}_pixel_major.png"),
    }
}

fn tensors(data: &Dataset, n: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let n = n.min(data.len());
    let idx: Vec<usize> = (0..n).collect();
    let t = data.select(&idx).to_tensors(&Device::Cpu, dtype)?;
    Ok((t.images, t.one_hot))
}

fn softmax_objective(
    x: &Tensor,
    y: &Tensor,
    bias: bool,
    penalties: Vec<Penalty>,
) -> Result<(Model, Arc<SoftmaxObjective>)> {
    let model = Model::new(
        ModelSpec::Softmax { bias },
        x.dim(1)?,
        MNIST_CLASSES as usize,
    )?;
    let obj = SoftmaxObjective::new(
        model.clone(),
        Batches::new(x, y, Batches::DEFAULT_CHUNK_ROWS)?,
        penalties,
    )?;
    Ok((model, Arc::new(obj)))
}

fn mlp_model() -> Result<Model> {
    Ok(Model::new(
        ModelSpec::mlp(&[MLP_HIDDEN], Activation::Tanh),
        784,
        MNIST_CLASSES as usize,
    )?)
}

/// Dense bytes against the measured working memory of the operators.
fn memory_rows(train: &Dataset, plan: &Plan) -> Result<Vec<MemoryRow>> {
    let mut rows = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        let (x, y) = tensors(train, plan.softmax_samples, dtype)?;
        let (model, obj) = softmax_objective(&x, &y, false, vec![])?;
        let w = model.init(Init::TruncatedNormal { std: 0.1 }, 0, &Device::Cpu, dtype)?;
        let memory = measure_operator_memory(obj.as_ref(), &w, CurvatureKind::Hessian, 5)?;
        rows.push(MemoryRow {
            name: format!("softmax, no bias, {dtype:?}").to_lowercase(),
            memory,
        });
    }
    let (x, y) = tensors(train, plan.mlp_samples, DType::F32)?;
    let model = mlp_model()?;
    let obj = objective_for(
        &model,
        Batches::new(&x, &y, Batches::DEFAULT_CHUNK_ROWS)?,
        vec![],
    )?;
    let w = model.init(Init::Glorot, 0, &Device::Cpu, DType::F32)?;
    let memory = measure_operator_memory(obj.as_ref(), &w, CurvatureKind::Hessian, 5)?;
    rows.push(MemoryRow {
        name: format!("MLP 784-{MLP_HIDDEN}-10 tanh, exact Hessian, f32"),
        memory,
    });
    Ok(rows)
}

fn test_accuracy(model: &Model, w: &Tensor, test: &Dataset) -> Result<f64> {
    let t = test.to_tensors(&Device::Cpu, w.dtype())?;
    Ok(model.accuracy(w, &t.images, &t.labels, 10_000)?)
}

fn spectra_and_payoff(
    train: &Dataset,
    test: &Dataset,
    plan: &Plan,
) -> Result<(Vec<Problem>, Payoff)> {
    let dtype = DType::F64;
    let dev = Device::Cpu;
    let (x, y) = tensors(train, plan.softmax_samples, dtype)?;
    let laplacian = Penalty::Laplacian {
        eps: LAPLACIAN_EPS,
        rows: 28,
        cols: 28,
    };
    let mut problems = Vec::new();

    // L2, with bias.
    let (model, obj) = softmax_objective(&x, &y, true, vec![Penalty::L2 { lam: L2_LAM }])?;
    let (w, mut optimum) = optimum_softmax(&obj, &model, plan)?;
    optimum.test_accuracy = Some(test_accuracy(&model, &w, test)?);
    tracing::info!(problem = "l2", "spectrum");
    let spectrum = spectrum_report(obj.as_ref(), &w, CurvatureKind::Hessian, &plan.spectrum)?;
    let lambda_min = Some(certify_lambda_min(&obj, &w)?);
    problems.push(Problem {
        lambda_min,
        key: "l2".into(),
        title: format!("Softmax regression with bias, L2 (lam = {L2_LAM})"),
        model: "softmax (bias)".into(),
        penalty: format!("L2 lam={L2_LAM}"),
        optimum,
        spectrum,
        density_file: "density_l2.svg".into(),
    });

    // Laplacian, no bias, and the same data term without any penalty.
    let (model, lap) = softmax_objective(&x, &y, false, vec![laplacian])?;
    let (_, plain) = softmax_objective(&x, &y, false, vec![])?;
    let (w_lap, mut optimum) = optimum_softmax(&lap, &model, plan)?;
    optimum.test_accuracy = Some(test_accuracy(&model, &w_lap, test)?);
    let lap_run = clone_info(&optimum);
    tracing::info!(problem = "laplacian", "spectrum");
    let spectrum = spectrum_report(lap.as_ref(), &w_lap, CurvatureKind::Hessian, &plan.spectrum)?;
    let lap_conditions = spectrum.conditions.clone();
    let lap_lanczos_min = spectrum.smallest[0].value;
    problems.push(Problem {
        lambda_min: Some(certify_lambda_min(&lap, &w_lap)?),
        key: "laplacian".into(),
        title: format!(
            "Softmax regression without bias, Laplacian penalty (eps = {LAPLACIAN_EPS})"
        ),
        model: "softmax (no bias)".into(),
        penalty: format!("Laplacian eps={LAPLACIAN_EPS}"),
        optimum,
        spectrum,
        density_file: "density_laplacian.svg".into(),
    });

    // The MLP: exact Hessian and Gauss-Newton at the trained weights.
    let mlp = mlp_model()?;
    let (w_mlp, optimum) = optimum_mlp(train, test, &mlp, plan)?;
    let (xm, ym) = tensors(train, plan.mlp_samples, DType::F32)?;
    let mlp_obj = objective_for(
        &mlp,
        Batches::new(&xm, &ym, Batches::DEFAULT_CHUNK_ROWS)?,
        vec![],
    )?;
    for (kind, key) in [
        (CurvatureKind::Hessian, "mlp_hessian"),
        (CurvatureKind::GaussNewton, "mlp_ggn"),
    ] {
        tracing::info!(problem = key, "spectrum");
        let spectrum = spectrum_report(mlp_obj.as_ref(), &w_mlp, kind, &plan.spectrum)?;
        problems.push(Problem {
            key: key.into(),
            title: format!(
                "MLP 784-{MLP_HIDDEN}-10 tanh, {} on {} training images",
                match kind {
                    CurvatureKind::Hessian => "exact Hessian",
                    CurvatureKind::GaussNewton => "Gauss-Newton matrix",
                },
                plan.mlp_samples
            ),
            model: format!("mlp:{MLP_HIDDEN} (tanh)"),
            penalty: "none".into(),
            optimum: clone_info(&optimum),
            spectrum,
            lambda_min: None,
            density_file: format!("density_{key}.svg"),
        });
    }

    // The payoff: the no-bias problem without and with the Laplacian.
    tracing::info!("payoff");
    let w0 = model.init(Init::Zeros, 0, &dev, dtype)?;
    let (w_plain, mut plain_run) = optimum_softmax(&plain, &model, plan)?;
    plain_run.test_accuracy = Some(test_accuracy(&model, &w_plain, test)?);
    let plain_lanczos = lanczos(
        plain.curvature(&w_lap, CurvatureKind::Hessian)?.as_ref(),
        plan.spectrum.lanczos_steps,
        plan.spectrum.seed,
        &dev,
        dtype,
    )?;
    let plain_conditions = plan
        .spectrum
        .dampings
        .iter()
        .map(|&l| hessfree_analysis::damped_condition(&plain_lanczos, l))
        .collect();
    let mut lambda_min = Vec::new();
    for (name, obj, lmin) in [
        ("no penalty", &plain, plain_lanczos.extremes().0),
        ("Laplacian", &lap, lap_lanczos_min),
    ] {
        lambda_min.push(LambdaMinRow {
            problem: name.into(),
            point: "Laplacian optimum".into(),
            bracket: certify_lambda_min(obj, &w_lap)?,
            lanczos_min: lmin,
        });
    }
    let w_normal = model.init(
        Init::TruncatedNormal { std: 0.1 },
        plan.rank.seed,
        &dev,
        dtype,
    )?;
    let mut cg = Vec::new();
    for (name, obj) in [("no penalty", &plain), ("Laplacian", &lap)] {
        for (point, w) in [("W = 0", &w0), ("W ~ normal:0.1", &w_normal)] {
            let res = newton_system_cg(
                obj.as_ref(),
                w,
                CurvatureKind::Hessian,
                0.0,
                CgOptions {
                    rtol: *PAYOFF_RTOLS.last().unwrap_or(&1e-8),
                    max_iter: plan.payoff_max_cg,
                },
            )?;
            let iterations = PAYOFF_RTOLS
                .iter()
                .map(|&t| res.relative_residuals.iter().position(|&r| r <= t))
                .collect();
            cg.push(CgRow {
                problem: name.into(),
                point: point.into(),
                iterations,
                max_iter: plan.payoff_max_cg,
            });
        }
    }
    let payoff = Payoff {
        lambda_min,
        cg,
        newton: vec![
            ("no penalty".into(), plain_run),
            ("Laplacian".into(), lap_run),
        ],
        conditions: vec![
            ("no penalty".into(), plain_conditions),
            ("Laplacian".into(), lap_conditions),
        ],
    };
    Ok((problems, payoff))
}

fn clone_info(o: &OptimumInfo) -> OptimumInfo {
    OptimumInfo {
        method: o.method.clone(),
        iterations: o.iterations,
        cg_iterations: o.cg_iterations.clone(),
        products: o.products,
        loss: o.loss,
        grad_norm: o.grad_norm,
        converged: o.converged,
        stop: o.stop.clone(),
        seconds: o.seconds,
        test_accuracy: o.test_accuracy,
    }
}

/// Runs a `hessfree-solvers` method from `w0` and describes the result.
fn solve(
    obj: Arc<dyn Objective>,
    method: Method,
    w0: Tensor,
    stop: StopRules,
    trace_every: u64,
    what: String,
) -> Result<(Tensor, OptimumInfo)> {
    let problem = HfProblem::full(obj.clone(), CurvatureKind::Hessian);
    let out = hessfree_solvers::run(
        &method,
        problem,
        w0,
        RunOptions {
            stop,
            trace_every,
            ..RunOptions::default()
        },
    )?;
    let (loss, g) = obj.loss_and_grad(&out.params)?;
    let cg_iterations = out
        .trace
        .iter()
        .filter_map(|r| r.cg_iters.map(|c| c as usize))
        .collect();
    tracing::info!(method = out.method, stop = %out.stop, loss, "solver finished");
    Ok((
        out.params,
        OptimumInfo {
            method: what,
            iterations: out.trace.last().map_or(0, |r| r.iter as usize),
            cg_iterations,
            products: out.counts.hvp_evals as usize,
            loss,
            grad_norm: hessfree_model::linop::vec::norm(&g)?,
            converged: out.stop == StopReason::GradientTolerance,
            stop: out.stop.to_string(),
            seconds: out.solver_seconds,
            test_accuracy: None,
        },
    ))
}

/// A softmax problem's optimum by `hessfree-solvers`' damped Newton-CG
/// (default configuration) from `W = 0`.
fn optimum_softmax(
    obj: &Arc<SoftmaxObjective>,
    model: &Model,
    plan: &Plan,
) -> Result<(Tensor, OptimumInfo)> {
    let w0 = model.init(Init::Zeros, 0, &Device::Cpu, obj.dtype())?;
    let stop = StopRules {
        grad_tol: Some(NEWTON_GRAD_TOL),
        max_iters: Some(plan.newton_max_iters),
        max_hvps: Some(plan.newton_max_hvps),
        ..StopRules::default()
    };
    solve(
        obj.clone(),
        Method::NewtonCg(NewtonCgConfig::default()),
        w0,
        stop,
        1,
        format!(
            "hessfree-solvers damped Newton-CG (default settings) from W = 0, stopped at ‖g‖ ≤ {}, {} iterations or {} HVPs",
            fmt_sig(NEWTON_GRAD_TOL, 2),
            plan.newton_max_iters,
            plan.newton_max_hvps
        ),
    )
}

/// The trained MLP: `hessfree-solvers`' SGD from Glorot initialisation.
fn optimum_mlp(
    train: &Dataset,
    test: &Dataset,
    model: &Model,
    plan: &Plan,
) -> Result<(Tensor, OptimumInfo)> {
    let (x, y) = tensors(train, plan.sgd_samples, DType::F32)?;
    let n = x.dim(0)?;
    let obj = objective_for(
        model,
        Batches::new(&x, &y, Batches::DEFAULT_CHUNK_ROWS)?,
        vec![],
    )?;
    let w0 = model.init(Init::Glorot, plan.rank.seed, &Device::Cpu, DType::F32)?;
    let config = SgdConfig {
        learning_rate: 0.1,
        batch_size: 100,
        momentum: 0.0,
        seed: plan.rank.seed,
    };
    let steps = (plan.sgd_epochs * n / config.batch_size) as u64;
    let what = format!(
        "hessfree-solvers SGD: {} epochs ({steps} steps) of batch {}, learning rate {}, from Glorot initialisation, on {n} training images",
        plan.sgd_epochs, config.batch_size, config.learning_rate
    );
    let stop = StopRules {
        grad_tol: None,
        max_iters: Some(steps),
        ..StopRules::default()
    };
    let (w, mut info) = solve(obj, Method::Sgd(config), w0, stop, steps.max(1), what)?;
    info.test_accuracy = Some(test_accuracy(model, &w, test)?);
    Ok((w, info))
}

// ---------------------------------------------------------------------------
// Figures and the report: pure functions of the summary.

fn figures(s: &Summary) -> Vec<(String, LinePlot)> {
    let mut out = Vec::new();
    let rows = &s.rank.rows;
    let series =
        |init: &str, f: &dyn Fn(&hessfree_analysis::study::RankRow) -> f64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.init == init)
                .map(|r| (r.rank.batch as f64, f(r)))
                .collect()
        };
    let plot = LinePlot::new(
        "Rank of the 7840 x 7840 softmax Hessian vs batch size",
        "batch size n (first n training images)",
        "rank",
    )
    .log_x(true)
    .with_series(Series::new(
        "rank H, W = 0",
        series("zero", &|r| r.rank.hessian.rank as f64),
    ))
    .with_series(Series::new(
        "rank H, truncated normal(0.1)",
        series(&normal_name(s), &|r| r.rank.hessian.rank as f64),
    ))
    .with_series(Series::new(
        "9 rank(X)",
        series("zero", &|r| r.rank.bound as f64),
    ))
    .with_series(Series::new("9 n", series("zero", &|r| r.nine_n as f64)))
    .with_series(Series::new(
        "9 x (pixels non-zero in the batch)",
        series("zero", &|r| 9.0 * r.rank.active_pixels as f64),
    ));
    out.push(("rank.svg".to_string(), plot));
    for p in &s.problems {
        let max = p.spectrum.density.iter().map(|d| d.1).fold(0.0, f64::max);
        // A log axis cannot show the Gaussian tails' zeros: clamp at a floor
        // six decades below the peak instead of dropping points (which would
        // draw straight lines across the gaps).
        let floor = 1e-6 * max;
        let points = p.spectrum.density.iter().map(|&(t, d)| (t, d.max(floor)));
        let plot = LinePlot::new(
            format!("Spectral density (SLQ): {}", p.title),
            "eigenvalue",
            "density (Gaussian-smoothed)",
        )
        .log_y(true)
        .with_series(Series::new(
            format!(
                "{} probes x {} Lanczos steps, sigma = {}",
                p.spectrum.slq.probes,
                p.spectrum.slq.steps,
                fmt_sig(p.spectrum.density_sigma, 2)
            ),
            points,
        ));
        out.push((p.density_file.clone(), plot));
    }
    out
}

fn normal_name(s: &Summary) -> String {
    Init::TruncatedNormal {
        std: s.rank.config.normal_std,
    }
    .to_string()
}

fn opt_usize(v: Option<usize>, max: usize) -> String {
    v.map_or(format!("> {max}"), |i| i.to_string())
}

fn sig(x: f64) -> String {
    fmt_sig(x, 4)
}

fn render_report(s: &Summary) -> String {
    let mut md = String::new();
    let m = &s.meta;
    let push = |md: &mut String, text: &str| {
        md.push_str(text);
        md.push('\n');
    };
    push(
        &mut md,
        "# The Hessian of softmax regression on MNIST, explained\n",
    );
    push(
        &mut md,
        &format!(
            "Generated by `{}`{} from `summary.json`; do not edit by hand. Revision `{}`, host `{}` ({}, {} cores), device {}, seed {}. Whole run: {}, peak resident memory {}; load average (1, 5, 15 min) {} at the start and {} at the end (timings are wall-clock on a shared machine).\n",
            m.generator,
            if m.quick {
                " --quick (a smoke test: small batches, sub-sampled data)"
            } else {
                ""
            },
            m.git_revision,
            m.host,
            m.cpu,
            m.cores,
            m.device,
            m.seed,
            fmt_duration_s(m.total_seconds),
            m.peak_rss_bytes.map_or("unknown".into(), fmt_bytes),
            m.load_average.0,
            m.load_average.1,
        ),
    );
    push(
        &mut md,
        "The notebook drew spy plots of the 7840 x 7840 Hessian of softmax regression (784 pixels x 10 classes, no bias), noticed that its rank is about 9n for a batch of n images, found that the dense matrix takes 234 MiB, and gave up on Newton's method. This report reproduces that study, explains every observation, and then looks at the spectrum without ever forming the matrix.\n",
    );

    // 1. Digits.
    push(&mut md, "## 1. Sample digits\n");
    push(
        &mut md,
        "Test images 124, 123 and 12, as the notebook shows them (white on black, 8x upscaled):\n",
    );
    let cells: Vec<String> = s
        .digits
        .iter()
        .map(|d| {
            markdown_image(
                &format!("test image {} (label {})", d.index, d.label),
                &d.file,
            )
        })
        .collect();
    let headers: Vec<String> = s
        .digits
        .iter()
        .map(|d| format!("test {} (label {})", d.index, d.label))
        .collect();
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    push(
        &mut md,
        &markdown_table_aligned(&header_refs, &[], &[cells]),
    );

    // 2. Structure.
    push(&mut md, "## 2. Structure: spy plots\n");
    push(
        &mut md,
        "With parameters `W` (784 x 10), a batch `X` (n x 784) and `P = softmax(XW)`, the Hessian of the mean cross-entropy is\n\n`H = (1/n) Σ_i A_i ⊗ x_i x_iᵀ`, with `A_i = diag(p_i) − p_i p_iᵀ` (10 x 10).\n\nEntry ((j, c), (j', c')) is `Σ_i A_i[c, c'] x_ij x_ij' / n`. So:\n\n- **10 x 10 blocks of 784 x 784.** Ordered class by class, block (c, c') is a 784 x 784 matrix. (The flat layout `W[j, c] → j·10 + c` interleaves classes instead: 784 x 784 blocks of 10 x 10; the plots below reorder rows and columns class by class, and one pixel-major plot shows the raw layout.)\n- **Each block is a Gram matrix of the batch's pixels, weighted by the softmax curvature**: `Xᵀ diag(a^{cc'}) X / n` with `a_i^{cc'} = A_i[c, c']`.\n- **Streaks.** A pixel that is zero in every image of the batch has a zero row and column in every block: the white streaks. An entry for two live pixels is zero when no image has both of them lit.\n- **Why random weights do not fill in the zeros.** The weights enter only through the per-sample scalars `A_i[c, c']`. The zero pattern is decided by the products `x_ij x_ij'` alone, and pixels are non-negative, so nothing cancels: diagonal blocks carry `p_ic(1 − p_ic) > 0`, off-diagonal blocks `−p_ic p_ic' < 0`, the same sign for every sample. At W = 0 these are `0.09` and `−0.01` for every sample; at a random W they vary from sample to sample, but an entry that is a sum of zero products stays zero, and a sum of same-signed non-zero products stays non-zero. The table says, for each batch, whether the two plots are identical pixel for pixel.\n",
    );
    push(
        &mut md,
        &format!(
            "Each plot is {0} x {0} pixels for the 7840 x 7840 matrix: a pixel covers a 10 x 10 block of entries and is dark if any entry in it is non-zero (so white proves zero). The batch is the first n training images.\n",
            s.rank.config.spy_px
        ),
    );
    let normal = normal_name(s);
    let mut rows = Vec::new();
    for &b in &s.rank.config.spy_batches {
        let find = |init: &str| {
            s.spy
                .iter()
                .find(|f| f.batch == b && f.init == init && f.order == HessianOrder::ClassMajor)
        };
        let cell = |f: Option<&SpyFile>| {
            f.map_or("missing".into(), |f| {
                format!(
                    "{} <br> dark {}{}",
                    markdown_image(&format!("spy plot n={b} {}", f.init), &f.file),
                    fmt_sig(f.dark_fraction, 4),
                    match f.same_as_zero_init {
                        Some(true) => ", identical to W = 0",
                        Some(false) => ", **differs from W = 0**",
                        None => "",
                    }
                )
            })
        };
        rows.push(vec![b.to_string(), cell(find("zero")), cell(find(&normal))]);
    }
    push(
        &mut md,
        &markdown_table_aligned(
            &["n", "W = 0", &format!("W ~ {normal}")],
            &[Align::Right],
            &rows,
        ),
    );
    if let Some(f) = s.spy.iter().find(|f| f.order == HessianOrder::PixelMajor) {
        push(
            &mut md,
            &format!(
                "The same matrix for n = {} at W = 0 in the raw flat layout (784 x 784 blocks of 10 x 10; dead pixels are white bands 10 entries wide):\n\n{}\n",
                f.batch,
                markdown_image("spy plot, pixel-major layout", &f.file)
            ),
        );
    }

    // 3. Rank.
    push(&mut md, "## 3. Rank vs batch size\n");
    push(
        &mut md,
        "**Tolerance.** An eigenvalue counts as non-zero when `|λ| > max|λ| · dim · ε` with `dim = 7840` and `ε = 2.2e-16` (NumPy's `matrix_rank` rule); `rank(X)` uses the same rule on the singular values of X (`σ_max · max(n, 784) · ε`).\n\n**Method.** The Hessian is assembled in f64 in closed form (one faer product per class pair). Rows and columns of pixels that are zero throughout the batch are exactly zero, so they are dropped before faer's self-adjoint eigendecomposition (eigenvalues only); each contributes one exact zero eigenvalue. The last columns give the evidence: the largest `|λ|` counted as zero and the smallest counted as non-zero, both relative to the tolerance. A wide gap on both sides means the rank does not depend on the choice of tolerance.\n",
    );
    let rows: Vec<Vec<String>> = s
        .rank
        .rows
        .iter()
        .map(|r| {
            vec![
                r.rank.batch.to_string(),
                r.init.clone(),
                r.rank.hessian.rank.to_string(),
                r.rank.bound.to_string(),
                if r.rank.identity_holds {
                    "yes"
                } else {
                    "**no**"
                }
                .into(),
                r.nine_n.to_string(),
                r.rank.x.rank.to_string(),
                r.rank.active_pixels.to_string(),
            ]
        })
        .collect();
    push(
        &mut md,
        &markdown_table_aligned(
            &[
                "n",
                "W",
                "rank H",
                "9·rank X",
                "equal",
                "9n",
                "rank X",
                "live pixels",
            ],
            &[
                Align::Right,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
            &rows,
        ),
    );
    push(
        &mut md,
        "The evidence behind each rank: the tolerance; the largest `|λ|` counted as zero and the smallest counted as non-zero, relative to it; the rank with the tolerance ten times larger and ten times smaller; the same margin for the singular values of X; the smallest softmax probability in the batch; the size of the matrix decomposed and the time faer took.\n",
    );
    let rows: Vec<Vec<String>> = s
        .rank
        .rows
        .iter()
        .map(|r| {
            let h = &r.rank.hessian;
            vec![
                r.rank.batch.to_string(),
                r.init.clone(),
                fmt_sig(h.tolerance, 2),
                fmt_sig(h.largest_below / h.tolerance, 2),
                fmt_sig(h.margin_above(), 2),
                format!("{} / {}", h.rank_tol_times_10, h.rank_tol_div_10),
                fmt_sig(r.rank.x.margin_above(), 2),
                fmt_sig(r.rank.min_probability, 2),
                r.rank.decomposed_dim.to_string(),
                fmt_duration_s(r.rank.eigen_seconds),
            ]
        })
        .collect();
    push(
        &mut md,
        &markdown_table_aligned(
            &[
                "n",
                "W",
                "tolerance",
                "max zero / tol",
                "min non-zero / tol",
                "rank at 10·tol / tol/10",
                "X: min non-zero / tol",
                "min p",
                "decomposed dim",
                "eig time",
            ],
            &[
                Align::Right,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
            &rows,
        ),
    );
    let thin: Vec<&hessfree_analysis::study::RankRow> = s
        .rank
        .rows
        .iter()
        .filter(|r| r.rank.hessian.margin_above() < 100.0)
        .collect();
    if !thin.is_empty() {
        let list: Vec<String> = thin
            .iter()
            .map(|r| {
                format!(
                    "n = {} at {} (smallest counted eigenvalue {} × the tolerance; rank {} at 10·tol)",
                    r.rank.batch,
                    r.init,
                    fmt_sig(r.rank.hessian.margin_above(), 2),
                    r.rank.hessian.rank_tol_times_10
                )
            })
            .collect();
        push(
            &mut md,
            &format!(
                "**Where the rank is delicate.** The margin above the tolerance is thin for {}. The eigenvalues of H scale like the *squares* of X's singular values (`σ_j(X)²/(10n)` at W = 0), so a direction in which X is nearly, but not exactly, degenerate — resolved by X's own rank test with a wide margin — turns into an eigenvalue of H close to the rounding level. The identity still holds with the stated tolerance; it would not survive a tolerance ten times larger.\n",
                list.join("; ")
            ),
        );
    }
    push(
        &mut md,
        &format!("{}\n", markdown_image("rank vs batch size", "rank.svg")),
    );
    let all_equal = s.rank.rows.iter().all(|r| r.rank.identity_holds);
    push(
        &mut md,
        &format!(
            "**The identity rank(H) = 9·rank(X_batch)** {}. Why it holds: `A_i 1 = 0` (adding the same number to all ten logits changes no probability) and `A_i` has rank 9 whenever every probability is positive, which softmax guarantees. Every term `A_i ⊗ x_i x_iᵀ` is positive semi-definite, so the range of the sum is the sum of the ranges: `range(H) = 1^⊥ ⊗ span(x_1, …, x_n)`, of dimension `9·rank(X)`. At W = 0 every sample has the same `A = I/10 − 11ᵀ/100`, `H = A ⊗ XᵀX/n`, and the non-zero eigenvalues are `σ_j(X)²/(10n)`, each nine times. At other W the identity still holds in exact arithmetic; numerically, samples whose probabilities saturate (p near 0 or 1) contribute curvature near ε, and at a trained W the numerical rank can fall below the bound. At truncated-normal(0.1) the smallest probability in a batch is still far from 0 (column *min p*), so the ranks agree.\n\n**The notebook's 9n** is this identity while the images are linearly independent (`rank X = n`). It stops growing once X's rank saturates: the batch's images span at most as many dimensions as they have live pixels, and in practice fewer.\n\n**The null space** is therefore spanned by (1) the softmax shift directions `u ⊗ 1` (the same vector u added to all ten columns of W: 784 dimensions, including the dead pixels' shifts), (2) for each dead pixel, its ten weights (`9` more dimensions per dead pixel beyond the shift), and (3) for each linear dependency among the live pixels' columns over the batch, nine more. Its dimension is `7840 − 9·rank(X)`.\n",
            if all_equal {
                "holds in every row of the table"
            } else {
                "fails in at least one row (see the table)"
            }
        ),
    );
    if let Some(f) = &s.rank.full_check {
        push(
            &mut md,
            &format!(
                "**Full-size check.** For n = {} at W = 0 the unrestricted {}x{} matrix was decomposed too: rank {} (restricted: {}), eigenvalues in {} against {} for the {}x{} restricted matrix (assembly {}).\n",
                f.batch,
                f.dim,
                f.dim,
                f.rank,
                f.restricted_rank,
                fmt_duration_s(f.eigen_seconds),
                fmt_duration_s(f.restricted_eigen_seconds),
                f.restricted_dim,
                f.restricted_dim,
                fmt_duration_s(f.assemble_seconds),
            ),
        );
    }
    push(
        &mut md,
        &format!(
            "**Dense against matrix-free on the same batches.** Lanczos ({} steps, full reorthogonalisation) on the Hessian-vector product of each batch, against the dense decomposition; Hutchinson ({} Rademacher probes) against the dense trace.\n",
            s.rank.config.lanczos_steps, s.rank.config.trace_probes
        ),
    );
    let mut rows = Vec::new();
    for r in &s.rank.rows {
        let inside = r.hutchinson.ci95.0 <= r.dense_trace && r.dense_trace <= r.hutchinson.ci95.1;
        rows.push(vec![
            r.rank.batch.to_string(),
            r.init.clone(),
            sig(r.dense_max),
            sig(r.lanczos_max),
            fmt_sig((r.lanczos_max - r.dense_max).abs() / r.dense_max, 2),
            fmt_duration_s(r.rank.assemble_seconds + r.rank.eigen_seconds),
            fmt_duration_s(r.lanczos_seconds),
            sig(r.dense_trace),
            format!(
                "{} [{}, {}]",
                sig(r.hutchinson.mean),
                sig(r.hutchinson.ci95.0),
                sig(r.hutchinson.ci95.1)
            ),
            if inside { "yes" } else { "no" }.into(),
        ]);
    }
    push(
        &mut md,
        &markdown_table_aligned(
            &[
                "n",
                "W",
                "λ_max dense",
                "λ_max Lanczos",
                "rel. diff",
                "dense time",
                "Lanczos time",
                "trace dense",
                "Hutchinson (95% CI)",
                "inside",
            ],
            &[
                Align::Right,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
            &rows,
        ),
    );

    // 4. Memory.
    push(&mut md, "## 4. Memory\n");
    push(
        &mut md,
        "The dense Hessian of softmax regression without bias is 7840² entries: 234 MiB in f32 (the notebook's figure) and 469 MiB in f64. The matrix-free operator keeps the softmax probabilities P (n x 10) and per product forms XV and the curvature product (n x 10 each) and XᵀR (784 x 10); X itself is the data, which every method needs. Measured: the resident set before building the operator, the growth it keeps (*retained*), and the peak during the build and five products above the starting point (*working*), from `/proc/self/status` with the peak reset just before (`/proc/self/clear_refs`).\n",
    );
    let mut rows = Vec::new();
    for r in &s.memory {
        let m = &r.memory;
        let opt = |b: Option<u64>| b.map_or("n/a".into(), fmt_bytes);
        rows.push(vec![
            r.name.clone(),
            m.samples.to_string(),
            m.dim.to_string(),
            fmt_bytes(m.dense_f32_bytes),
            fmt_bytes(m.dense_f64_bytes),
            opt(m.retained_bytes),
            if m.peak_reset {
                opt(m.working_bytes)
            } else {
                "n/a (peak not resettable)".into()
            },
            fmt_duration_s(m.apply_seconds),
        ]);
    }
    push(
        &mut md,
        &markdown_table_aligned(
            &[
                "operator",
                "samples",
                "dim",
                "dense f32",
                "dense f64",
                "retained",
                "working (peak)",
                "one product",
            ],
            &[
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
            &rows,
        ),
    );
    push(
        &mut md,
        "Resident-set deltas are coarse (the allocator reuses freed pages, and pages are counted whole), so small operators can show 0 retained bytes; the point is the order of magnitude: megabytes where the dense matrix needs hundreds of megabytes (softmax) or hundreds of gigabytes (the MLP: 203530² entries, 154 GiB in f32).\n",
    );

    // 5. Spectrum.
    push(&mut md, "## 5. Spectrum, matrix-free\n");
    push(
        &mut md,
        "For each problem, at the point given: the extreme eigenvalues by Lanczos with full reorthogonalisation (Gram-Schmidt twice against the whole basis, so no ghost eigenvalues); the trace by Hutchinson's estimator with Rademacher probes and a Student-t 95% interval; the spectral density by stochastic Lanczos quadrature (Rademacher start vectors, Gauss quadrature nodes and weights smoothed with a Gaussian); and the condition number `(θ_max + λ)/(θ_min + λ)` of the damped operator `H + λI` that Newton-CG solves, from the extreme Ritz values. Ritz values lie inside the spectrum, so these condition numbers are lower bounds; *residual* is `‖Hy − θy‖`, which bounds the distance from θ to the nearest eigenvalue.\n\nThe smallest eigenvalues converge last: Lanczos finds the largest ones in a few dozen steps, but a smallest eigenvalue hidden below a cluster of small ones needs far more. Where the smallest eigenvalue is known exactly (section 6), the table's θ_min should be read against it.\n",
    );
    for p in &s.problems {
        let sp = &p.spectrum;
        push(&mut md, &format!("### {}\n", p.title));
        push(
            &mut md,
            &format!(
                "Point: {} — {} iterations ({}), loss {}, gradient norm {}, test accuracy {}, {}. Operator: {} ({}), dimension {}, {} samples per product, {}. Lanczos: {} steps{}; {} products in all ({} Lanczos, {} Hutchinson, {} SLQ).\n",
                p.optimum.method,
                p.optimum.iterations,
                p.optimum.stop,
                sig(p.optimum.loss),
                fmt_sig(p.optimum.grad_norm, 3),
                p.optimum
                    .test_accuracy
                    .map_or("n/a".into(), |a| fmt_sig(a, 4)),
                fmt_duration_s(p.optimum.seconds),
                sp.kind,
                p.penalty,
                sp.dim,
                sp.samples,
                sp.dtype,
                sp.lanczos_steps,
                if sp.lanczos_breakdown {
                    " (breakdown: invariant subspace found)"
                } else {
                    ""
                },
                sp.products,
                fmt_duration_s(sp.lanczos_seconds),
                fmt_duration_s(sp.trace_seconds),
                fmt_duration_s(sp.slq_seconds),
            ),
        );
        let mut rows = Vec::new();
        for i in 0..sp.largest.len().max(sp.smallest.len()) {
            let cell = |v: Option<&hessfree_analysis::RitzValue>| {
                v.map_or((String::new(), String::new()), |r| {
                    (sig(r.value), fmt_sig(r.residual, 2))
                })
            };
            let (tv, tr) = cell(sp.largest.get(i));
            let (bv, br) = cell(sp.smallest.get(i));
            rows.push(vec![(i + 1).to_string(), tv, tr, bv, br]);
        }
        push(
            &mut md,
            &markdown_table_aligned(
                &["#", "largest θ", "residual", "smallest θ", "residual"],
                &[
                    Align::Right,
                    Align::Right,
                    Align::Right,
                    Align::Right,
                    Align::Right,
                ],
                &rows,
            ),
        );
        let t = &sp.trace;
        push(
            &mut md,
            &format!(
                "Trace: Hutchinson {} ± {} (95% CI [{}, {}], {} probes); SLQ quadrature {}.\n",
                sig(t.mean),
                fmt_sig(t.ci95.1 - t.mean, 2),
                sig(t.ci95.0),
                sig(t.ci95.1),
                t.samples,
                sig(sp.slq_trace),
            ),
        );
        let exact = p
            .lambda_min
            .as_ref()
            .and_then(|l| exact_min(l, sp.largest.first().map_or(0.0, |r| r.value)));
        push(&mut md, &conditions_table(&sp.conditions, exact));
        if let Some(l) = &p.lambda_min {
            push(
                &mut md,
                &format!(
                    "Exact smallest eigenvalue (section 6's bracket; penalty {}, upper bound from the {}): {} ≤ λ_min ≤ {}.\n",
                    l.penalty,
                    l.direction,
                    fmt_sig(l.lower, 6),
                    fmt_sig(l.upper, 6)
                ),
            );
        }
        push(
            &mut md,
            &format!(
                "{}\n",
                markdown_image(&format!("spectral density, {}", p.key), &p.density_file)
            ),
        );
    }

    // 6. Payoff.
    push(
        &mut md,
        "## 6. The payoff: the Laplacian penalty makes Newton well posed\n",
    );
    push(
        &mut md,
        "Without a penalty the no-bias problem's Hessian is singular at every W (section 3): the minimiser is not unique, and `H p = −g` has infinitely many solutions. The Laplacian penalty `eps Σ_c ‖L W_c‖²` adds `Q = 2 eps (LᵀL) ⊗ I_10`. The 3x3 stencil with zero padding is diagonalised by the 2-D sine transform, with eigenvalues `μ_pq = 2(1 + cos a_p)(1 + cos b_q) − 8` (`a_p = pπ/29`, `b_q = qπ/29`), all in (−8, 0): L is invertible and `Q` is positive definite. The smallest eigenvalue of `H = H_data + Q` is then bracketed without any decomposition: below by Weyl (`H_data ⪰ 0`, so `λ_min(H) ≥ λ_min(Q) = 2 eps μ_11²`), above by the Rayleigh quotient of the softmax-shift direction built from the smoothest sine mode (which the data term cannot see). Both bounds agree, so the bracket *is* the eigenvalue.\n",
    );
    let mut rows = Vec::new();
    for r in &s.payoff.lambda_min {
        rows.push(vec![
            r.problem.clone(),
            r.point.clone(),
            fmt_sig(r.bracket.lower, 6),
            fmt_sig(r.bracket.upper, 6),
            fmt_sig(r.lanczos_min, 4),
        ]);
    }
    push(
        &mut md,
        &markdown_table_aligned(
            &[
                "problem",
                "at",
                "λ_min ≥ (Weyl)",
                "λ_min ≤ (Rayleigh, shift direction)",
                "smallest Ritz value (Lanczos)",
            ],
            &[
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
            &rows,
        ),
    );
    push(
        &mut md,
        "So the penalty turns a singular Hessian into a positive definite one: the minimiser is unique and every Newton system has exactly one solution. It is weakest in the smoothest shift direction, so the smallest eigenvalue is small. The data part of the gradient never points along a shift direction (`Σ_c (p_c − y_c) = 0`), which is why the unpenalised Newton systems are consistent at all. The CG iterations needed for the first Newton system `H p = −g` (no damping) at two starting points, read off one CG run to 1e-8 each:\n",
    );
    let mut rows = Vec::new();
    for r in &s.payoff.cg {
        let mut row = vec![r.problem.clone(), r.point.clone()];
        row.extend(r.iterations.iter().map(|&i| opt_usize(i, r.max_iter)));
        rows.push(row);
    }
    let heads: Vec<String> = PAYOFF_RTOLS
        .iter()
        .map(|t| format!("to {}", fmt_sig(*t, 1)))
        .collect();
    let mut headers = vec!["problem", "at"];
    headers.extend(heads.iter().map(String::as_str));
    push(
        &mut md,
        &markdown_table_aligned(
            &headers,
            &[
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
            &rows,
        ),
    );
    push(
        &mut md,
        "Whole Newton-CG runs from W = 0 (`hessfree-solvers`' damped Newton-CG with its default settings, the same budget for both; *CG per step* is the CG iterations of each Newton step):\n",
    );
    let mut rows = Vec::new();
    for (name, o) in &s.payoff.newton {
        rows.push(vec![
            name.clone(),
            o.iterations.to_string(),
            o.products.to_string(),
            o.cg_iterations
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            sig(o.loss),
            fmt_sig(o.grad_norm, 3),
            o.stop.clone(),
            o.test_accuracy.map_or("n/a".into(), |a| fmt_sig(a, 4)),
        ]);
    }
    push(
        &mut md,
        &markdown_table_aligned(
            &[
                "problem",
                "Newton steps",
                "HVPs",
                "CG per step",
                "loss",
                "‖g‖",
                "stopped by",
                "test acc.",
            ],
            &[
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Left,
                Align::Right,
            ],
            &rows,
        ),
    );
    for (name, c) in &s.payoff.conditions {
        push(
            &mut md,
            &format!("Condition numbers at the Laplacian optimum, {name}:\n"),
        );
        let exact = s
            .payoff
            .lambda_min
            .iter()
            .find(|r| &r.problem == name)
            .and_then(|r| exact_min(&r.bracket, c.first().map_or(0.0, |d| d.lambda_max)));
        push(&mut md, &conditions_table(c, exact));
    }
    md
}

/// The smallest eigenvalue when its bracket has closed (to rounding,
/// relative to the largest eigenvalue).
fn exact_min(l: &LambdaMin, lambda_max: f64) -> Option<f64> {
    ((l.upper - l.lower).abs() <= 1e-10 * lambda_max.abs()).then_some(l.lower)
}

/// Condition numbers from the Lanczos extremes, and, where the smallest
/// eigenvalue is known exactly, from it and the converged largest one.
fn conditions_table(c: &[DampedCondition], exact: Option<f64>) -> String {
    let rows: Vec<Vec<String>> = c
        .iter()
        .map(|d| {
            let mut row = vec![
                fmt_sig(d.damping, 2),
                sig(d.lambda_min),
                sig(d.lambda_max),
                d.kappa
                    .map_or("indefinite or singular".into(), |k| fmt_sig(k, 3)),
            ];
            if let Some(m) = exact {
                let lo = m + d.damping;
                row.push(if lo > 0.0 {
                    fmt_sig(d.lambda_max / lo, 3)
                } else {
                    "∞ (singular)".into()
                });
            }
            row
        })
        .collect();
    let mut headers = vec!["damping λ", "θ_min + λ", "θ_max + λ", "κ(H + λI) ≥ (Ritz)"];
    if exact.is_some() {
        headers.push("κ(H + λI) with the exact λ_min");
    }
    markdown_table_aligned(&headers, &[Align::Right; 5], &rows)
}

// ---------------------------------------------------------------------------
// --check.

fn check(out: &Path) -> Result<()> {
    let summary_path = out.join("summary.json");
    let text = std::fs::read_to_string(&summary_path).with_context(|| {
        format!(
            "reading {}; run `cargo xtask hessian` first",
            summary_path.display()
        )
    })?;
    let summary: Summary = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} does not parse as a hessian summary",
            summary_path.display()
        )
    })?;
    let mut problems = Vec::new();
    let expect = |name: &str, want: &str, problems: &mut Vec<String>| {
        let path = out.join(name);
        match std::fs::read_to_string(&path) {
            Ok(have) if have == want => {}
            Ok(_) => problems.push(format!(
                "{} differs from what summary.json renders to",
                path.display()
            )),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    };
    expect("report.md", &render_report(&summary), &mut problems);
    for (file, plot) in figures(&summary) {
        expect(&file, &plot.render_svg()?, &mut problems);
    }
    let pngs = summary
        .digits
        .iter()
        .map(|d| &d.file)
        .chain(summary.spy.iter().map(|f| &f.file));
    for file in pngs {
        let path = out.join(file);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.starts_with(b"\x89PNG\r\n\x1a\n") => {}
            Ok(_) => problems.push(format!("{} is not a PNG file", path.display())),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    for r in &summary.rank.rows {
        if !r.rank.identity_holds {
            problems.push(format!(
                "rank identity fails for n = {} at {}: rank {} vs 9·rank(X) = {}",
                r.rank.batch, r.init, r.rank.hessian.rank, r.rank.bound
            ));
        }
    }
    if let Some(f) = &summary.rank.full_check
        && f.rank != f.restricted_rank
    {
        problems.push(format!(
            "full and restricted decompositions disagree for n = {}: {} vs {}",
            f.batch, f.rank, f.restricted_rank
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the hessian report in {} is stale or incomplete (regenerate it with `cargo xtask hessian`):\n  {}",
            out.display(),
            problems.join("\n  ")
        );
    }
    println!(
        "{}: report.md, {} figures and summary.json are consistent",
        out.display(),
        figures(&summary).len() + summary.digits.len() + summary.spy.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Provenance.

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> String {
    read_trimmed("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}
