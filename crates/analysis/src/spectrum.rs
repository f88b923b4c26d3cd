//! The spectrum of one curvature operator at one point, matrix-free:
//! Lanczos extremes, Hutchinson trace, SLQ density and the condition number
//! of the damped system that Newton-CG solves.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::hutchinson::{TraceEstimate, hutchinson_trace};
use crate::lanczos::{LanczosResult, RitzValue, lanczos};
use crate::slq::{SpectralNodes, gaussian_density, slq_density};
use crate::util::{apply_f64, dot};
use hessfree_model::{CurvatureKind, LinOp, Objective};

/// How much work to spend on each estimate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpectrumOptions {
    /// Lanczos steps for the extremes and condition numbers; at most the dimension are taken.
    pub lanczos_steps: usize,
    /// How many eigenvalues to report at each end.
    pub extremes: usize,
    /// Rademacher probes for Hutchinson's trace; at least 2.
    pub trace_probes: usize,
    /// Start vectors for the SLQ density; at least 1.
    pub slq_probes: usize,
    /// Lanczos steps per SLQ probe.
    pub slq_steps: usize,
    /// Seed of the Lanczos start vector; Hutchinson and SLQ draw from fixed variations of it.
    pub seed: u64,
    /// Damping values `λ` for the condition numbers of `H + λI`.
    pub dampings: Vec<f64>,
    /// Points at which the smoothed density is evaluated.
    pub density_points: usize,
    /// Standard deviation of the Gaussian smoothing of the SLQ density, as a
    /// fraction of the width of the Ritz interval.
    pub density_sigma: f64,
}

impl Default for SpectrumOptions {
    fn default() -> Self {
        Self {
            lanczos_steps: 100,
            extremes: 5,
            trace_probes: 30,
            slq_probes: 8,
            slq_steps: 40,
            seed: 0,
            dampings: vec![0.0, 1e-4, 1e-3, 1e-2],
            density_points: 400,
            density_sigma: 0.01,
        }
    }
}

/// The condition number of `H + λI` estimated from Lanczos extremes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DampedCondition {
    /// The damping `λ` added to every eigenvalue.
    pub damping: f64,
    /// `θ_min + λ`, the smallest Ritz value shifted by the damping.
    pub lambda_min: f64,
    /// `θ_max + λ`, the largest Ritz value shifted by the damping.
    pub lambda_max: f64,
    /// `(θ_max + λ)/(θ_min + λ)`; `None` when `θ_min + λ ≤ 0` (not positive
    /// definite along a Ritz vector). Ritz values lie inside the spectrum,
    /// so this is a lower bound on the true condition number.
    pub kappa: Option<f64>,
}

/// The condition number of the damped operator from a Lanczos run.
pub fn damped_condition(run: &LanczosResult, damping: f64) -> DampedCondition {
    let (lo, hi) = run.extremes();
    let (lo, hi) = (lo + damping, hi + damping);
    DampedCondition {
        damping,
        lambda_min: lo,
        lambda_max: hi,
        kappa: (lo > 0.0).then(|| hi / lo),
    }
}

/// Everything measured about one operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpectrumReport {
    /// The curvature kind (`"hessian"` or `"ggn"`); empty from
    /// [`operator_spectrum`], which has no objective.
    pub kind: String,
    /// Dimension of the operator.
    pub dim: usize,
    /// Training samples of the objective (from [`operator_spectrum`]: those one product touches).
    pub samples: usize,
    /// The dtype the products ran in, e.g. `"f32"`.
    pub dtype: String,
    /// Lanczos steps actually taken.
    pub lanczos_steps: usize,
    /// Whether Lanczos stopped early at an invariant subspace.
    pub lanczos_breakdown: bool,
    /// Largest first.
    pub largest: Vec<RitzValue>,
    /// Smallest first.
    pub smallest: Vec<RitzValue>,
    /// Hutchinson's trace estimate.
    pub trace: TraceEstimate,
    /// The SLQ quadrature nodes behind `density`.
    pub slq: SpectralNodes,
    /// The trace implied by the SLQ quadrature, for comparison.
    pub slq_trace: f64,
    /// Standard deviation of the smoothing in eigenvalue units: the option's
    /// fraction times the width of the Ritz values.
    pub density_sigma: f64,
    /// `(t, φ(t))`, the smoothed density.
    pub density: Vec<(f64, f64)>,
    /// `H + λI` condition estimates, one per [`SpectrumOptions::dampings`] entry.
    pub conditions: Vec<DampedCondition>,
    /// Curvature products spent on all of the above.
    pub products: usize,
    /// Wall-clock seconds of the Lanczos run.
    pub lanczos_seconds: f64,
    /// Wall-clock seconds of Hutchinson's probes.
    pub trace_seconds: f64,
    /// Wall-clock seconds of the SLQ probes.
    pub slq_seconds: f64,
}

/// Lanczos, Hutchinson and SLQ on the curvature of `obj` at `w`.
pub fn spectrum_report(
    obj: &dyn Objective,
    w: &Tensor,
    kind: CurvatureKind,
    opts: &SpectrumOptions,
) -> Result<SpectrumReport> {
    let op = obj.curvature(w, kind)?;
    let (device, dtype) = (obj.device().clone(), obj.dtype());
    let mut report = operator_spectrum(op.as_ref(), &device, dtype, opts)?;
    report.kind = kind.to_string();
    report.samples = obj.num_samples();
    Ok(report)
}

/// [`spectrum_report`] for any operator.
pub fn operator_spectrum(
    op: &dyn LinOp,
    device: &Device,
    dtype: DType,
    opts: &SpectrumOptions,
) -> Result<SpectrumReport> {
    let t = Instant::now();
    let run = lanczos(op, opts.lanczos_steps, opts.seed, device, dtype)?;
    let lanczos_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let trace = hutchinson_trace(
        op,
        opts.trace_probes,
        opts.seed ^ 0x7472_6163,
        device,
        dtype,
    )?;
    let trace_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let slq = slq_density(
        op,
        opts.slq_probes,
        opts.slq_steps,
        opts.seed ^ 0x0073_6c71,
        device,
        dtype,
    )?;
    let slq_seconds = t.elapsed().as_secs_f64();

    let (lo, hi) = run.extremes();
    let width = (hi - lo).abs().max(hi.abs()).max(f64::MIN_POSITIVE);
    let sigma = opts.density_sigma * width;
    let density = gaussian_density(&slq.nodes, sigma, opts.density_points);
    Ok(SpectrumReport {
        kind: String::new(),
        dim: op.dim(),
        samples: op.samples_per_apply(),
        dtype: format!("{dtype:?}").to_lowercase(),
        lanczos_steps: run.steps(),
        lanczos_breakdown: run.breakdown,
        largest: run.largest(opts.extremes),
        smallest: run.smallest(opts.extremes),
        slq_trace: slq.trace(op.dim()),
        products: run.products + trace.samples + slq.products,
        trace,
        slq,
        density_sigma: sigma,
        density,
        conditions: opts
            .dampings
            .iter()
            .map(|&l| damped_condition(&run, l))
            .collect(),
        lanczos_seconds,
        trace_seconds,
        slq_seconds,
    })
}

/// `vᵀAv / vᵀv`: an upper bound on `λ_min(A)` (and a lower bound on
/// `λ_max`) for any non-zero `v`, from one product.
pub fn rayleigh_quotient(op: &dyn LinOp, v: &[f64], device: &Device, dtype: DType) -> Result<f64> {
    let av = apply_f64(op, v, device, dtype)?;
    Ok(dot(v, &av) / dot(v, v))
}

/// Eigenvalues `μ_pq = −6 + 2cos a + 2cos b + 2cos a·cos b` (`a = pπ/(R+1)`,
/// `b = qπ/(C+1)`) of the notebook's 3x3 Laplacian stencil with zero padding
/// on an `R x C` image: the stencil is a polynomial in the horizontal and
/// vertical neighbour sums, which the 2-D sine transform diagonalises.
/// Returns `(min μ², max μ²)`, the extreme eigenvalues of `LᵀL = L²`.
pub fn laplacian_gram_extremes(rows: usize, cols: usize) -> (f64, f64) {
    let mu = |p: usize, q: usize| {
        let a = (p as f64 * std::f64::consts::PI / (rows + 1) as f64).cos();
        let b = (q as f64 * std::f64::consts::PI / (cols + 1) as f64).cos();
        -6.0 + 2.0 * a + 2.0 * b + 2.0 * a * b
    };
    let mut lo = f64::INFINITY;
    let mut hi = 0f64;
    for p in 1..=rows {
        for q in 1..=cols {
            let m2 = mu(p, q).powi(2);
            lo = lo.min(m2);
            hi = hi.max(m2);
        }
    }
    (lo, hi)
}

/// The smoothest sine mode `sin(π(r+1)/(R+1))·sin(π(c+1)/(C+1))`, row-major:
/// the eigenvector of `LᵀL` for its smallest eigenvalue.
pub fn laplacian_smoothest_mode(rows: usize, cols: usize) -> Vec<f64> {
    let pi = std::f64::consts::PI;
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            (pi * (r + 1) as f64 / (rows + 1) as f64).sin()
                * (pi * (c + 1) as f64 / (cols + 1) as f64).sin()
        })
        .collect()
}

/// The softmax-shift direction of a first layer `W` (`inputs x classes`,
/// flat index `j·classes + c`) built from a per-input vector `u`: the same
/// `u` added to every class column, zero elsewhere in a vector of length
/// `dim`. Every softmax data term is blind to it (`A_i 1 = 0`).
pub fn shift_direction(u: &[f64], classes: usize, dim: usize) -> Vec<f64> {
    let mut v = vec![0.0; dim];
    for (j, &uj) in u.iter().enumerate() {
        for c in 0..classes {
            v[j * classes + c] = uj;
        }
    }
    v
}
