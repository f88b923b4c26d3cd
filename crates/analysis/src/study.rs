//! The pieces of `cargo xtask hessian` that compute: the rank study over
//! MNIST batches, the dense-versus-matrix-free comparison on the same
//! batches, and the payoff measurements (certified smallest eigenvalues,
//! CG iterations of Newton systems). The xtask only loads data, chooses the
//! points, and writes files.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::cg::{CgOptions, CgResult, conjugate_gradient};
use crate::error::{AnalysisError, Result};
use crate::lanczos::lanczos;
use crate::rank::{BatchRank, assemble_softmax_data_hessian, batch_rank};
use crate::spectrum::{
    laplacian_gram_extremes, laplacian_smoothest_mode, rayleigh_quotient, shift_direction,
};
use crate::spy::{HessianOrder, hessian_spy_mask};
use crate::trace::{TraceEstimate, hutchinson_trace};
use hessfree_data::Dataset;
use hessfree_model::{
    Batches, CurvatureKind, Damped, Init, Model, ModelSpec, Objective, Penalty, SoftmaxObjective,
};
use hessfree_report::SpyMask;

/// The first `n` images of `data` as f64 tensors `(x [n, d], one_hot [n, k])`.
pub fn first_rows(
    data: &Dataset,
    n: usize,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    if n == 0 || n > data.len() {
        return Err(AnalysisError::Invalid(format!(
            "batch of {n} images requested from a split of {}",
            data.len()
        )));
    }
    let idx: Vec<usize> = (0..n).collect();
    let t = data.select(&idx).to_tensors(device, dtype).map_err(|e| {
        AnalysisError::Invalid(format!(
            "could not turn the first {n} images into tensors: {e}"
        ))
    })?;
    Ok((t.images, t.one_hot))
}

/// The rank study's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankStudyConfig {
    /// Batch sizes (first `n` training images each).
    pub batches: Vec<usize>,
    /// Batch sizes that also get spy plots.
    pub spy_batches: Vec<usize>,
    /// Side of the spy plots in pixels (at most the matrix size).
    pub spy_px: usize,
    /// Standard deviation of the truncated-normal initialisation.
    pub normal_std: f64,
    pub seed: u64,
    /// Lanczos steps for the matrix-free comparison on each batch.
    pub lanczos_steps: usize,
    pub trace_probes: usize,
    /// Also decompose the unrestricted `dk x dk` matrix for this batch size
    /// at `W = 0`, to time it and confirm the restriction loses nothing.
    pub full_check_batch: Option<usize>,
}

/// One row of the rank table: a batch at one initialisation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankRow {
    pub init: String,
    pub rank: BatchRank,
    /// `9·n` (for k = 10): the notebook's rule of thumb.
    pub nine_n: usize,
    /// Largest eigenvalue from the dense decomposition and from Lanczos on the
    /// matrix-free operator of the same batch.
    pub dense_max: f64,
    pub lanczos_max: f64,
    pub lanczos_max_residual: f64,
    pub lanczos_seconds: f64,
    /// Dense trace against Hutchinson's estimate on the operator.
    pub dense_trace: f64,
    pub hutchinson: TraceEstimate,
}

/// The unrestricted decomposition of one batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FullCheck {
    pub batch: usize,
    pub dim: usize,
    pub rank: usize,
    pub restricted_rank: usize,
    pub assemble_seconds: f64,
    pub eigen_seconds: f64,
    pub restricted_dim: usize,
    pub restricted_eigen_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankStudy {
    pub config: RankStudyConfig,
    pub rows: Vec<RankRow>,
    pub full_check: Option<FullCheck>,
    pub seconds: f64,
}

/// A spy plot produced by the study, handed to the caller to write.
pub struct SpyPlot<'a> {
    pub batch: usize,
    pub init: &'a str,
    pub order: HessianOrder,
    pub mask: SpyMask,
}

fn init_name(init: Init) -> String {
    match init {
        Init::Zeros => "zero".into(),
        other => other.to_string(),
    }
}

/// For each batch size and each of `W = 0` and truncated-normal: assemble the
/// no-bias softmax Hessian on the batch's live pixels, decompose it, compare
/// its rank with `9·rank(X)`, compare its top eigenvalue and trace with
/// Lanczos and Hutchinson on the matrix-free operator, and hand spy plots to
/// `on_spy`. Class-major spy plots for every spy batch, plus a pixel-major
/// one for the largest spy batch at `W = 0`.
pub fn rank_study(
    train: &Dataset,
    config: &RankStudyConfig,
    mut on_spy: impl FnMut(SpyPlot<'_>) -> Result<()>,
) -> Result<RankStudy> {
    let start = Instant::now();
    let device = Device::Cpu;
    let dtype = DType::F64;
    let classes = usize::from(train.classes);
    let inputs = train.pixels_per_image();
    let model = Model::new(ModelSpec::Softmax { bias: false }, inputs, classes)?;
    let inits = [
        Init::Zeros,
        Init::TruncatedNormal {
            std: config.normal_std,
        },
    ];
    let pixel_major_batch = config.spy_batches.iter().copied().max();
    let mut rows = Vec::new();
    let mut full_check = None;
    for (b, &n) in config.batches.iter().enumerate() {
        let (x, y) = first_rows(train, n, &device, dtype)?;
        let obj = SoftmaxObjective::new(model.clone(), Batches::new(&x, &y, 1000)?, vec![])?;
        for (i, init) in inits.into_iter().enumerate() {
            let name = init_name(init);
            // Independent probes for every row, so the rows' intervals are
            // independent checks.
            let probe_seed =
                config.seed ^ ((b as u64) << 8 | i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let w = model.init(init, config.seed, &device, dtype)?;
            let h = assemble_softmax_data_hessian(&obj, &w, true)?;
            let rank = batch_rank(&h, &x)?;
            tracing::info!(
                batch = n,
                init = %name,
                rank = rank.hessian.rank,
                bound = rank.bound,
                decomposed = rank.decomposed_dim,
                assemble_s = rank.assemble_seconds,
                eigen_s = rank.eigen_seconds,
                "rank"
            );
            if config.spy_batches.contains(&n) {
                let mask = hessian_spy_mask(&h, HessianOrder::ClassMajor, config.spy_px)?;
                on_spy(SpyPlot {
                    batch: n,
                    init: &name,
                    order: HessianOrder::ClassMajor,
                    mask,
                })?;
                if init == Init::Zeros && Some(n) == pixel_major_batch {
                    let mask = hessian_spy_mask(&h, HessianOrder::PixelMajor, config.spy_px)?;
                    on_spy(SpyPlot {
                        batch: n,
                        init: &name,
                        order: HessianOrder::PixelMajor,
                        mask,
                    })?;
                }
            }
            let dense_trace = (0..h.matrix.nrows()).map(|i| h.matrix[(i, i)]).sum();
            let op = obj.curvature(&w, CurvatureKind::Hessian)?;
            let t = Instant::now();
            let run = lanczos(
                op.as_ref(),
                config.lanczos_steps,
                config.seed,
                &device,
                dtype,
            )?;
            let lanczos_seconds = t.elapsed().as_secs_f64();
            let top = run.largest(1)[0];
            let hutchinson =
                hutchinson_trace(op.as_ref(), config.trace_probes, probe_seed, &device, dtype)?;
            // PSD: the largest |λ| is λ_max.
            let dense_max = rank.hessian.max_abs;
            if init == Init::Zeros && Some(n) == config.full_check_batch {
                full_check = Some(full_decomposition(&obj, &w, &rank)?);
            }
            rows.push(RankRow {
                init: name,
                nine_n: (classes - 1) * n,
                dense_max,
                lanczos_max: top.value,
                lanczos_max_residual: top.residual,
                lanczos_seconds,
                dense_trace,
                hutchinson,
                rank,
            });
        }
    }
    Ok(RankStudy {
        config: config.clone(),
        rows,
        full_check,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn full_decomposition(
    obj: &SoftmaxObjective,
    w: &Tensor,
    restricted: &BatchRank,
) -> Result<FullCheck> {
    let h = assemble_softmax_data_hessian(obj, w, false)?;
    let t = Instant::now();
    let ev = h.eigenvalues()?;
    let eigen_seconds = t.elapsed().as_secs_f64();
    let rank = crate::rank::numerical_rank(&ev, h.full_dim());
    tracing::info!(
        batch = h.batch,
        dim = h.full_dim(),
        rank = rank.rank,
        eigen_s = eigen_seconds,
        "unrestricted decomposition"
    );
    Ok(FullCheck {
        batch: h.batch,
        dim: h.full_dim(),
        rank: rank.rank,
        restricted_rank: restricted.hessian.rank,
        assemble_seconds: h.seconds,
        eigen_seconds,
        restricted_dim: restricted.decomposed_dim,
        restricted_eigen_seconds: restricted.eigen_seconds,
    })
}

/// The smallest eigenvalue of a softmax-regression Hessian, bracketed
/// without any decomposition:
/// - below by Weyl: the data term is PSD, so `λ_min(H) ≥ λ_min(Q)` for the
///   penalty's Hessian `Q` (`lam` for L2 on the weights — 0 when there is a
///   bias, which L2 leaves alone — `2 eps μ_min²` for the Laplacian, 0 for
///   none);
/// - above by the Rayleigh quotient of a direction the data term cannot see:
///   the bias shift (all biases up by one) when there is a bias, else the
///   weight shift `u ⊗ 1` with `u` the penalty's bottom eigenvector.
///
/// When both agree the bracket is the eigenvalue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LambdaMin {
    pub penalty: String,
    /// Which direction gave the upper bound.
    pub direction: String,
    pub lower: f64,
    pub upper: f64,
}

/// [`LambdaMin`] for a softmax objective whose penalties are `penalties`
/// (at most one of each kind is expected; several add their lower bounds).
pub fn certify_lambda_min(obj: &SoftmaxObjective, w: &Tensor) -> Result<LambdaMin> {
    let model = obj.model();
    let (d, k) = (model.inputs(), model.classes());
    let layout = model.layout();
    let penalties = obj.regularizer().terms().to_vec();
    let mut lower = 0.0;
    let mut u = vec![1.0; d];
    let mut names = Vec::new();
    for p in &penalties {
        names.push(p.to_string());
        match *p {
            Penalty::L2 { lam } => lower += if model.has_bias() { 0.0 } else { lam },
            Penalty::Laplacian { eps, rows, cols } => {
                let (lo, _) = laplacian_gram_extremes(rows, cols);
                lower += 2.0 * eps * lo;
                u = laplacian_smoothest_mode(rows, cols);
            }
        }
    }
    if model.has_bias() {
        // Biases carry no penalty and the bias shift changes no probability.
        lower = 0.0;
    }
    let op = obj.curvature(w, CurvatureKind::Hessian)?;
    let (v, direction) = if model.has_bias() {
        let spec = layout.spec("layer0.bias")?;
        let mut v = vec![0.0; op.dim()];
        v[spec.range()].fill(1.0);
        (v, "bias shift (all biases + 1)".to_string())
    } else if penalties
        .iter()
        .any(|p| matches!(p, Penalty::Laplacian { .. }))
    {
        (
            shift_direction(&u, k, op.dim()),
            "weight shift u ⊗ 1, u the smoothest sine mode".to_string(),
        )
    } else {
        (
            shift_direction(&u, k, op.dim()),
            "weight shift 1 ⊗ 1".to_string(),
        )
    };
    let upper = rayleigh_quotient(op.as_ref(), &v, obj.device(), obj.dtype())?;
    Ok(LambdaMin {
        penalty: if names.is_empty() {
            "none".into()
        } else {
            names.join(" + ")
        },
        direction,
        lower,
        upper,
    })
}

/// CG on the Newton system `(H + λI) p = −g` at `w`.
pub fn newton_system_cg(
    obj: &dyn Objective,
    w: &Tensor,
    kind: CurvatureKind,
    damping: f64,
    opts: CgOptions,
) -> Result<CgResult> {
    let (_, g) = obj.loss_and_grad(w)?;
    let op = obj.curvature(w, kind)?;
    let damped = Damped::new(op, damping);
    let mut res = conjugate_gradient(&damped, &g.neg()?, opts)?;
    res.x = None;
    Ok(res)
}
