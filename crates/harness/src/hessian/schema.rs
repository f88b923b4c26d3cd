//! The Hessian study's record, `summary.json`: everything the report shows,
//! so that the report and its figures can be re-rendered (and checked)
//! without recomputing.

use serde::{Deserialize, Serialize};

use hessfree_analysis::{DampedCondition, LambdaMin, OperatorMemory, SpectrumReport};

use super::spy::HessianOrder;
use super::study::RankStudy;

#[derive(Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) meta: Meta,
    pub(crate) digits: Vec<Digit>,
    pub(crate) memory: Vec<MemoryRow>,
    pub(crate) rank: RankStudy,
    pub(crate) spy: Vec<SpyFile>,
    pub(crate) problems: Vec<Problem>,
    pub(crate) payoff: Payoff,
    pub(crate) kfac: KfacStudy,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) generator: String,
    pub(crate) quick: bool,
    pub(crate) seed: u64,
    pub(crate) git_revision: String,
    pub(crate) host: String,
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) device: String,
    pub(crate) data_dir: String,
    pub(crate) total_seconds: f64,
    /// `/proc/loadavg` at the start and the end: timings on a shared
    /// machine mean little without it.
    pub(crate) load_average: (String, String),
    /// Peak resident set of the whole run.
    pub(crate) peak_rss_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Digit {
    pub(crate) index: usize,
    pub(crate) label: u8,
    pub(crate) file: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct MemoryRow {
    pub(crate) name: String,
    pub(crate) memory: OperatorMemory,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SpyFile {
    pub(crate) batch: usize,
    pub(crate) init: String,
    pub(crate) order: HessianOrder,
    pub(crate) file: String,
    pub(crate) dark_fraction: f64,
    /// Whether every pixel equals the same batch's plot at `W = 0` (`None`
    /// for the `W = 0` plots themselves).
    pub(crate) same_as_zero_init: Option<bool>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct OptimumInfo {
    pub(crate) method: String,
    pub(crate) iterations: usize,
    /// CG iterations of each Newton step (empty for SGD).
    pub(crate) cg_iterations: Vec<usize>,
    pub(crate) products: usize,
    pub(crate) loss: f64,
    pub(crate) grad_norm: f64,
    pub(crate) converged: bool,
    /// Why the solver stopped.
    pub(crate) stop: String,
    pub(crate) seconds: f64,
    pub(crate) test_accuracy: Option<f64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Problem {
    pub(crate) key: String,
    pub(crate) title: String,
    pub(crate) model: String,
    pub(crate) penalty: String,
    pub(crate) optimum: OptimumInfo,
    pub(crate) spectrum: SpectrumReport,
    /// The exact smallest eigenvalue, bracketed (softmax problems only).
    pub(crate) lambda_min: Option<LambdaMin>,
    pub(crate) density_file: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct LambdaMinRow {
    pub(crate) problem: String,
    pub(crate) point: String,
    pub(crate) bracket: LambdaMin,
    /// Smallest Ritz value of a Lanczos run on the same operator.
    pub(crate) lanczos_min: f64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CgRow {
    pub(crate) problem: String,
    pub(crate) point: String,
    /// Iterations to reach each relative residual in `PAYOFF_RTOLS`
    /// (`None`: not reached within `max_iter`).
    pub(crate) iterations: Vec<Option<usize>>,
    pub(crate) max_iter: usize,
}

pub(crate) const PAYOFF_RTOLS: [f64; 4] = [1e-2, 1e-4, 1e-6, 1e-8];

#[derive(Serialize, Deserialize)]
pub(crate) struct Payoff {
    pub(crate) lambda_min: Vec<LambdaMinRow>,
    pub(crate) cg: Vec<CgRow>,
    /// The solvers' Newton-CG runs on the no-bias problem without and
    /// with the Laplacian penalty.
    pub(crate) newton: Vec<(String, OptimumInfo)>,
    pub(crate) conditions: Vec<(String, Vec<DampedCondition>)>,
}

/// K-FAC against the assembled Gauss-Newton matrix of a small MLP.
#[derive(Serialize, Deserialize)]
pub(crate) struct KfacStudy {
    pub(crate) model: String,
    /// Training images the curvature is averaged over.
    pub(crate) samples: usize,
    pub(crate) dim: usize,
    /// Parameters per layer: the diagonal blocks K-FAC keeps.
    pub(crate) blocks: Vec<usize>,
    pub(crate) dampings: Vec<f64>,
    pub(crate) points: Vec<KfacPoint>,
    pub(crate) seconds: f64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct KfacPoint {
    pub(crate) key: String,
    pub(crate) point: String,
    /// How the point was reached (`None`: the initialisation).
    pub(crate) training: Option<OptimumInfo>,
    pub(crate) figure: String,
    pub(crate) ggn_largest: f64,
    pub(crate) ggn_trace: f64,
    /// `(rank, eigenvalue)`, largest first, at the ranks the figure uses.
    pub(crate) ggn_eigenvalues: Vec<(usize, f64)>,
    pub(crate) approximations: Vec<Approximation>,
    pub(crate) preconditioned: Vec<PreconditionedRow>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Approximation {
    pub(crate) name: String,
    /// `‖M − GGN‖_F / ‖GGN‖_F`.
    pub(crate) relative_frobenius: f64,
    /// `‖M − blockdiag(GGN)‖_F / ‖blockdiag(GGN)‖_F`: the error of the
    /// Kronecker factorisation alone (`None` for the block diagonal itself).
    pub(crate) vs_block_diagonal: Option<f64>,
    pub(crate) eigenvalues: Vec<(usize, f64)>,
}

/// Condition numbers of the damped system `GGN + γI` without and with a
/// preconditioner.
#[derive(Serialize, Deserialize)]
pub(crate) struct PreconditionedRow {
    pub(crate) damping: f64,
    pub(crate) none: f64,
    /// `diag(GGN) + γI`.
    pub(crate) jacobi: f64,
    /// `K-FAC + γI` (exact-expectation factors, exactly shifted).
    pub(crate) kfac: f64,
    /// The same from Monte-Carlo factors (1 target per case).
    pub(crate) kfac_mc: f64,
}
