//! The notebook's Hessian study reproduced and explained, plus the
//! matrix-free spectrum: spy plots, rank against batch size, memory, the
//! spectra of the softmax and MLP problems, what they pay for Newton, and
//! K-FAC against the assembled Gauss-Newton matrix of a small MLP.
//!
//! [`run`] loads the data, picks the points to analyse (the solvers' damped
//! Newton-CG for the softmax problems, SGD for the MLP), computes with
//! `hessfree-analysis` ([`study`]) and writes `report.md`, the figures and
//! `summary.json` ([`schema`]). `report.md` and the SVG figures are pure
//! functions of `summary.json` (`render`), so [`check`] re-renders them
//! from it and fails if the committed files differ (or a figure is missing).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};

use hessfree_analysis::{
    ProcMemory, SpectrumOptions, certify_lambda_min, lanczos, measure_operator_memory,
    spectrum_report,
};
use hessfree_data::{Dataset, MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_model::{
    Activation, Batches, CgOptions, CurvatureKind, Init, Model, ModelSpec, Objective, Penalty,
    SoftmaxObjective, objective_for,
};
use hessfree_report::{ensure_dir, fmt_sig, write_atomic, write_json, write_rendered};
use hessfree_solvers::{HfProblem, NewtonCgConfig, RunOptions, SgdConfig, StopReason, StopRules};

use crate::method::Method;
use crate::provenance::{cpu_model, git_revision};

mod check;
mod kfac;
mod render;
pub mod schema;
pub mod spy;
pub mod study;

pub use check::check;
use render::{figures, rendered};
use schema::*;
pub use spy::{HessianOrder, hessian_spy_mask};
use study::{RankStudyConfig, SpyPlot, newton_system_cg, rank_study};

/// What to study and where to write it.
#[derive(Clone, Debug)]
pub struct HessianOptions {
    /// Directory of the IDX files (`None`: the default search).
    pub data_dir: Option<PathBuf>,
    /// Directory for report.md, the figures and summary.json.
    pub out: PathBuf,
    /// Small batches, sub-sampled data and few Lanczos steps: a smoke test
    /// of the whole pipeline in well under a minute.
    pub quick: bool,
    /// Seed of every random choice (initialisation, probes, SGD order).
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
    /// Hidden widths of the MLP whose Gauss-Newton matrix is assembled for
    /// the K-FAC comparison (its order is the parameter count).
    kfac_hidden: Vec<usize>,
    /// Training images that curvature is averaged over.
    kfac_samples: usize,
    /// Dampings of the preconditioned systems.
    kfac_dampings: Vec<f64>,
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
            kfac_hidden: if quick { vec![2] } else { vec![4, 4] },
            kfac_samples: if quick { 200 } else { 2000 },
            kfac_dampings: vec![1e-4, 1e-3, 1e-2],
        }
    }
}

/// Computes the study and writes the report into `opts.out`.
pub fn run(opts: &HessianOptions) -> Result<()> {
    let args = opts;
    let start = Instant::now();
    let load_start = load_average();
    let plan = Plan::new(args.quick, args.seed);
    let out = args.out.as_path();
    ensure_dir(out)?;
    let dir = resolve_data_dir(args.data_dir.as_deref())?;
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
    let kfac = kfac::kfac_study(train, test, &plan)?;

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
        kfac,
    };
    // Render from the JSON text, exactly as --check will.
    let json = hessfree_report::to_json_pretty(&summary)?;
    let summary: Summary = serde_json::from_str(&json)?;
    write_rendered(out, &rendered(&summary)?)?;
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
            || (name.starts_with("density_") && name.ends_with(".svg"))
            || (name.starts_with("kfac_eigenvalues_") && name.ends_with(".svg"));
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
                &CgOptions::plain(*PAYOFF_RTOLS.last().unwrap_or(&1e-8), plan.payoff_max_cg),
            )?;
            // From x₀ = 0 the first residual is ‖b‖.
            let b_norm = res.residuals[0];
            let iterations = PAYOFF_RTOLS
                .iter()
                .map(|&t| res.residuals.iter().position(|&r| r <= t * b_norm))
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
    let out = crate::method::run(
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
        ..SgdConfig::default()
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
