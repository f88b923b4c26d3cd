//! The assembled softmax-regression Hessian of a batch and its numerical rank.
//!
//! Without a bias, `H = (1/n) Σ_i A_i ⊗ x_i x_iᵀ` with the per-sample softmax
//! curvature `A_i = diag(p_i) − p_i p_iᵀ` (`k x k`). Entry `(j·k + c,
//! j'·k + c')` (the flat layout of `W[j, c]`) is `Σ_i A_i[c, c'] x_ij x_ij' / n`.
//!
//! Structure used here:
//! - a pixel that is zero in every image of the batch gives `k` rows and
//!   columns that are exactly zero. They are dropped before the
//!   eigendecomposition: each contributes exactly one zero eigenvalue, so the
//!   rank of the full matrix is the rank of the restricted one;
//! - `A_i 1 = 0` (the softmax shift), and `A_i` has rank `k − 1` whenever all
//!   probabilities are positive, which they always are. Since every term is
//!   positive semi-definite, `range(H) = Σ_i range(A_i) ⊗ x_i
//!   = 1^⊥ ⊗ span(X)`, so `rank(H) = (k − 1)·rank(X)` exactly at *every*
//!   `W`. At `W = 0` all `A_i` equal `A = I/k − 11ᵀ/k²`, `H = A ⊗ XᵀX/n`, and
//!   the non-zero eigenvalues are `σ_j(X)²/(nk)`, each 9 times (for k = 10).
//!   Elsewhere samples whose probabilities saturate (`p` near 0 or 1) have
//!   tiny curvature, and the *numerical* rank can fall below the bound.

use std::time::Instant;

use candle_core::{DType, Tensor};
use faer::{Mat, MatRef, Side};
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result};
use hessfree_model::dense::tensor_to_mat;
use hessfree_model::{Objective, SoftmaxObjective};

/// The numerical-rank threshold used throughout: `max|λ| · dim · ε_f64`,
/// NumPy's `matrix_rank` default (`S.max() * max(M, N) * eps`). Entries of
/// the assembled matrix carry rounding errors of about `ε·‖H‖` per
/// accumulated term, so eigenvalues of an exactly singular direction come out
/// around `ε·‖H‖`; the threshold sits `dim` times above that.
pub fn rank_tolerance(max_abs: f64, dim: usize) -> f64 {
    max_abs * dim as f64 * f64::EPSILON
}

/// A numerical rank and the evidence for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericalRank {
    /// Number of values with `|λ|` above `tolerance`.
    pub rank: usize,
    /// Dimension of the matrix (including rows dropped as exactly zero).
    pub dim: usize,
    /// The threshold, from [`rank_tolerance`].
    pub tolerance: f64,
    /// Largest `|λ|` among the values.
    pub max_abs: f64,
    /// Largest `|λ|` at or below the tolerance (0 if none): how far the
    /// "zero" eigenvalues are from the threshold.
    pub largest_below: f64,
    /// Smallest `|λ|` above the tolerance (`None` for a zero matrix).
    pub smallest_above: Option<f64>,
    /// Eigenvalues below `−tolerance` (a PSD matrix has none).
    pub negative: usize,
    /// The rank the same values would have with the tolerance ten times
    /// larger and ten times smaller: equal to `rank` when the rank does not
    /// hinge on the choice of tolerance.
    pub rank_tol_times_10: usize,
    /// The rank with the tolerance ten times smaller.
    pub rank_tol_div_10: usize,
}

impl NumericalRank {
    /// `smallest_above / tolerance`: how many times above the threshold the
    /// smallest counted eigenvalue sits. A rank is robust when this is large
    /// and `largest_below / tolerance` is small.
    pub fn margin_above(&self) -> f64 {
        self.smallest_above
            .map_or(f64::INFINITY, |s| s / self.tolerance)
    }
}

/// The numerical rank of a matrix of dimension `dim` whose (possibly fewer)
/// computed eigenvalues or singular values are `values`; values not listed
/// are exact zeros.
pub fn numerical_rank(values: &[f64], dim: usize) -> NumericalRank {
    let max_abs = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    let tolerance = rank_tolerance(max_abs, dim);
    let mut rank = 0;
    let mut largest_below = 0f64;
    let mut smallest_above = f64::INFINITY;
    let mut negative = 0;
    for &v in values {
        let a = v.abs();
        if a > tolerance {
            rank += 1;
            smallest_above = smallest_above.min(a);
            if v < 0.0 {
                negative += 1;
            }
        } else {
            largest_below = largest_below.max(a);
        }
    }
    let count_above = |t: f64| values.iter().filter(|v| v.abs() > t).count();
    NumericalRank {
        rank_tol_times_10: count_above(10.0 * tolerance),
        rank_tol_div_10: count_above(0.1 * tolerance),
        rank,
        dim,
        tolerance,
        max_abs,
        largest_below,
        smallest_above: smallest_above.is_finite().then_some(smallest_above),
        negative,
    }
}

/// Eigenvalues (ascending) of a symmetric matrix, from faer's self-adjoint
/// eigendecomposition (values only: no eigenvectors are formed).
pub fn symmetric_eigenvalues(m: MatRef<'_, f64>) -> Result<Vec<f64>> {
    m.self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| AnalysisError::Eigen {
            dim: m.nrows(),
            message: format!("{e:?}"),
        })
}

/// Singular values (descending) of a matrix.
pub fn singular_values(m: MatRef<'_, f64>) -> Result<Vec<f64>> {
    m.singular_values().map_err(|e| AnalysisError::Eigen {
        dim: m.nrows().max(m.ncols()),
        message: format!("SVD: {e:?}"),
    })
}

/// Columns (pixels) of `x` (`[n, d]`) that are non-zero in at least one row.
pub fn active_pixels(x: &Tensor) -> Result<Vec<usize>> {
    let any = x.to_dtype(DType::F64)?.abs()?.max(0)?.to_vec1::<f64>()?;
    Ok(any
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.0)
        .map(|(j, _)| j)
        .collect())
}

/// The data term of a no-bias softmax-regression Hessian, assembled densely
/// on a subset of pixels.
#[derive(Clone, Debug)]
pub struct AssembledHessian {
    /// `(s·k) x (s·k)` with `s = pixels.len()`, index `local_pixel·k + class`.
    pub matrix: Mat<f64>,
    /// The pixels kept, ascending; the others have all-zero rows and columns.
    pub pixels: Vec<usize>,
    /// `d`, the pixel count of the full matrix.
    pub inputs: usize,
    /// `k`, the class count.
    pub classes: usize,
    /// Rows of the batch.
    pub batch: usize,
    /// `min_i,c p_ic` over the batch, to tell how saturated the softmax is.
    pub min_probability: f64,
    /// `max_i,c p_ic` over the batch.
    pub max_probability: f64,
    /// Wall-clock seconds to assemble, including the probabilities and the restriction.
    pub seconds: f64,
    local: Vec<Option<usize>>,
}

impl AssembledHessian {
    /// `d·k`, the dimension of the full matrix.
    pub fn full_dim(&self) -> usize {
        self.inputs * self.classes
    }

    /// Entry `(row, col)` of the full `dk x dk` matrix in the flat layout
    /// (index `pixel·k + class`); zero on dropped pixels.
    pub fn entry(&self, row: usize, col: usize) -> f64 {
        let k = self.classes;
        match (self.local[row / k], self.local[col / k]) {
            (Some(a), Some(b)) => self.matrix[(a * k + row % k, b * k + col % k)],
            _ => 0.0,
        }
    }

    /// The full matrix (dropped pixels as zero rows and columns).
    pub fn to_full(&self) -> Mat<f64> {
        let n = self.full_dim();
        Mat::from_fn(n, n, |i, j| self.entry(i, j))
    }

    /// Eigenvalues of the restricted matrix (ascending). The full matrix has
    /// these plus `k·(d − s)` exact zeros.
    pub fn eigenvalues(&self) -> Result<Vec<f64>> {
        symmetric_eigenvalues(self.matrix.as_ref())
    }
}

/// Assembles the data term of the Hessian of a no-bias softmax objective at
/// `w`, on the pixels that are non-zero in its batch (`restrict = true`) or
/// on all pixels.
///
/// The matrix is [`hessfree_model::dense::softmax_data_hessian`]'s (one
/// place assembles it), restricted to the kept pixels' rows and columns.
pub fn assemble_softmax_data_hessian(
    obj: &SoftmaxObjective,
    w: &Tensor,
    restrict: bool,
) -> Result<AssembledHessian> {
    let start = Instant::now();
    let model = obj.model();
    if model.has_bias() {
        return Err(AnalysisError::Unsupported(
            "the assembled rank study is for softmax regression without bias (the notebook's 7840 x 7840 matrix)".into(),
        ));
    }
    let (d, k) = (model.inputs(), model.classes());
    let n = obj.num_samples();
    let data = obj.data();
    let pixels: Vec<usize> = if restrict {
        let mut alive = vec![false; d];
        for (x, _) in data.chunks() {
            for j in active_pixels(x)? {
                alive[j] = true;
            }
        }
        (0..d).filter(|&j| alive[j]).collect()
    } else {
        (0..d).collect()
    };
    let s = pixels.len();
    let (mut pmin, mut pmax) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in obj.probabilities(w)? {
        let p = p.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        for v in p {
            pmin = pmin.min(v);
            pmax = pmax.max(v);
        }
    }
    // The model's assembler (GEMMs on weighted rows, all pixels), then the
    // rows and columns of the kept pixels in the interleaved layout.
    let full = hessfree_model::dense::softmax_data_hessian(obj, w)?;
    let h = Mat::<f64>::from_fn(s * k, s * k, |a, b| {
        full[(pixels[a / k] * k + a % k, pixels[b / k] * k + b % k)]
    });
    let mut local = vec![None; d];
    for (l, &j) in pixels.iter().enumerate() {
        local[j] = Some(l);
    }
    Ok(AssembledHessian {
        matrix: h,
        pixels,
        inputs: d,
        classes: k,
        batch: n,
        min_probability: pmin,
        max_probability: pmax,
        seconds: start.elapsed().as_secs_f64(),
        local,
    })
}

/// The rank study of one batch at one point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchRank {
    /// Rows of the batch, `n`.
    pub batch: usize,
    /// `d·k`.
    pub dim: usize,
    /// Pixels non-zero somewhere in the batch.
    pub active_pixels: usize,
    /// Size of the matrix actually decomposed (`active_pixels·k`).
    pub decomposed_dim: usize,
    /// Numerical rank of the full Hessian, from the restricted eigenvalues.
    pub hessian: NumericalRank,
    /// Rank of the batch matrix `X` (`n x d`), from its singular values,
    /// with the same rule (`σ_max · max(n, d) · ε`).
    pub x: NumericalRank,
    /// `(k − 1)·rank(X)`, the identity's right-hand side.
    pub bound: usize,
    /// Whether the Hessian's numerical rank equals `bound`.
    pub identity_holds: bool,
    /// `min_i,c p_ic` over the batch, see [`AssembledHessian::min_probability`].
    pub min_probability: f64,
    /// `max_i,c p_ic` over the batch.
    pub max_probability: f64,
    /// Wall-clock seconds to assemble the Hessian.
    pub assemble_seconds: f64,
    /// Wall-clock seconds of its eigendecomposition.
    pub eigen_seconds: f64,
}

/// Numerical rank of an assembled Hessian next to `(k − 1)·rank(X)` for its
/// batch `x` (`[n, d]`).
pub fn batch_rank(h: &AssembledHessian, x: &Tensor) -> Result<BatchRank> {
    let start = Instant::now();
    let eig = h.eigenvalues()?;
    let eigen_seconds = start.elapsed().as_secs_f64();
    let hessian = numerical_rank(&eig, h.full_dim());
    let xm = tensor_to_mat(x)?;
    let sv = singular_values(xm.as_ref())?;
    let x_rank = numerical_rank(&sv, xm.nrows().max(xm.ncols()));
    let bound = (h.classes - 1) * x_rank.rank;
    Ok(BatchRank {
        batch: h.batch,
        dim: h.full_dim(),
        active_pixels: h.pixels.len(),
        decomposed_dim: h.matrix.nrows(),
        identity_holds: hessian.rank == bound,
        hessian,
        x: x_rank,
        bound,
        min_probability: h.min_probability,
        max_probability: h.max_probability,
        assemble_seconds: h.seconds,
        eigen_seconds,
    })
}
