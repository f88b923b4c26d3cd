//! The Hessian study's computations over MNIST batches: the rank study, the
//! dense-versus-matrix-free comparison on the same batches, and CG counts of
//! Newton systems, built from the analysis crate's tools.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use anyhow::{Result, bail};
use hessfree_analysis::hutchinson::{TraceEstimate, hutchinson_trace};
use hessfree_analysis::lanczos::lanczos;
use hessfree_analysis::rank::{
    BatchRank, assemble_softmax_data_hessian, batch_rank, numerical_rank,
};
use hessfree_model::cg::{CgOptions, CgOutcome, conjugate_gradient};

use super::spy::{HessianOrder, hessian_spy_mask};
use hessfree_data::Dataset;
use hessfree_model::{
    Batches, CurvatureKind, Damped, Init, Model, ModelSpec, Objective, SoftmaxObjective,
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
        bail!(
            "batch of {n} images requested from a split of {}",
            data.len()
        );
    }
    let idx: Vec<usize> = (0..n).collect();
    let t = data
        .select(&idx)
        .to_tensors(device, dtype)
        .map_err(|e| anyhow::anyhow!("could not turn the first {n} images into tensors: {e}"))?;
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
    let rank = numerical_rank(&ev, h.full_dim());
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

/// CG on the Newton system `(H + λI) p = −g` at `w`.
pub fn newton_system_cg(
    obj: &dyn Objective,
    w: &Tensor,
    kind: CurvatureKind,
    damping: f64,
    opts: &CgOptions,
) -> Result<CgOutcome> {
    let (_, g) = obj.loss_and_grad(w)?;
    let op = obj.curvature(w, kind)?;
    let damped = Damped::new(op, damping);
    Ok(conjugate_gradient(&damped, &g.neg()?, None, None, opts)?)
}
