//! The Lanczos process with full reorthogonalisation.
//!
//! `m` products with a symmetric operator `A` build an orthonormal basis
//! `Q_m` of the Krylov space `span{q, Aq, …, A^{m−1}q}` and the tridiagonal
//! `T_m = Q_mᵀ A Q_m`. The eigenvalues of `T_m` (Ritz values) approach the
//! extremal eigenvalues of `A` first. In floating point the plain three-term
//! recurrence loses orthogonality as soon as a Ritz value converges, and
//! ghost copies of it appear; keeping the basis and reorthogonalising every
//! new vector against all of it, twice (Gram–Schmidt twice is enough for
//! orthogonality to working precision), removes that problem at the cost of
//! `O(m·n)` memory and `O(m²·n)` flops, negligible next to the products for
//! the `m ≤ a few hundred` used here.
//!
//! The basis and the recurrence are kept in f64 on the CPU whatever the
//! operator's device and dtype; only the products run on the device.

use candle_core::{DType, Device};
use faer::{Mat, Side};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result};
use crate::util::{apply_f64, axpy, dot, dtype_eps, norm, rademacher};
use hessfree_model::LinOp;

/// One Ritz value with its error bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RitzValue {
    /// The Ritz value `θ`, an eigenvalue of `T_m`.
    pub value: f64,
    /// `max(|β_m s_{m,i}|, ε_dtype·‖T‖)`: `|β_m s_{m,i}| = ‖A y − θ y‖` for
    /// the Ritz vector `y`, so some eigenvalue of `A` lies within it of
    /// `value`; the floor is the attainable accuracy of products computed in
    /// the operator's dtype, below which the recurrence's residual means
    /// nothing.
    pub residual: f64,
    /// `min(residual, residual² / gap)`, with `gap` the distance to the
    /// nearest other Ritz value: the usual sharper estimate once the Ritz
    /// values have separated (an estimate, because the gap is to Ritz values
    /// rather than to the unknown eigenvalues).
    pub bound: f64,
}

/// What a Lanczos run produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LanczosResult {
    /// Diagonal of `T_m`.
    pub alphas: Vec<f64>,
    /// Off-diagonal of `T_m` (`m − 1` entries).
    pub betas: Vec<f64>,
    /// `β_m`, the norm of the part of `A q_m` outside the basis; 0 after a
    /// breakdown, when the Krylov space is invariant and the Ritz values are
    /// eigenvalues of `A`.
    pub residual_beta: f64,
    /// Eigenvalues of `T_m`, ascending, with their bounds.
    pub ritz: Vec<RitzValue>,
    /// Squared first components of the eigenvectors of `T_m`, in the order of
    /// `ritz`: the Gauss quadrature weights of the start vector's spectral
    /// measure (they sum to 1). Stochastic Lanczos quadrature uses them.
    pub weights: Vec<f64>,
    /// Whether the process stopped early because `β` vanished (relative to
    /// the running estimate of `‖T‖`).
    pub breakdown: bool,
    /// Products with `A` spent.
    pub products: usize,
}

impl LanczosResult {
    /// Steps taken (the size of `T_m`).
    pub fn steps(&self) -> usize {
        self.alphas.len()
    }

    /// The `k` largest Ritz values, largest first.
    pub fn largest(&self, k: usize) -> Vec<RitzValue> {
        self.ritz.iter().rev().take(k).copied().collect()
    }

    /// The `k` smallest Ritz values, smallest first.
    pub fn smallest(&self, k: usize) -> Vec<RitzValue> {
        self.ritz.iter().take(k).copied().collect()
    }

    /// `(θ_min, θ_max)`. Ritz values interlace the spectrum, so
    /// `λ_min ≤ θ_min` and `θ_max ≤ λ_max`: the span of the Ritz values is
    /// inside the true spectral interval.
    pub fn extremes(&self) -> (f64, f64) {
        let first = self.ritz.first().map_or(f64::NAN, |r| r.value);
        let last = self.ritz.last().map_or(f64::NAN, |r| r.value);
        (first, last)
    }
}

/// Lanczos from a seeded Rademacher start vector (normalised); at most
/// `steps` products, fewer after a breakdown or when `steps > dim`.
pub fn lanczos(
    op: &dyn LinOp,
    steps: usize,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<LanczosResult> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = rademacher(&mut rng, op.dim());
    lanczos_from(op, &start, steps, device, dtype)
}

/// Lanczos from a given start vector (any non-zero scale).
pub fn lanczos_from(
    op: &dyn LinOp,
    start: &[f64],
    steps: usize,
    device: &Device,
    dtype: DType,
) -> Result<LanczosResult> {
    let n = op.dim();
    if start.len() != n {
        return Err(AnalysisError::Invalid(format!(
            "Lanczos start vector has {} entries, the operator has dimension {n}",
            start.len()
        )));
    }
    if steps == 0 || n == 0 {
        return Err(AnalysisError::Invalid(format!(
            "Lanczos needs at least one step on a non-empty operator (steps {steps}, dim {n})"
        )));
    }
    let s = norm(start);
    if !(s.is_finite() && s > 0.0) {
        return Err(AnalysisError::Invalid(
            "Lanczos start vector is zero or not finite".into(),
        ));
    }
    let steps = steps.min(n);
    // β below this fraction of the running ‖T‖ estimate counts as zero: a
    // product computed in `dtype` is only good to about eps·‖A‖·√n.
    let breakdown_rel = 10.0 * (n as f64).sqrt() * dtype_eps(dtype);

    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(steps);
    basis.push(start.iter().map(|x| x / s).collect());
    let mut alphas = Vec::with_capacity(steps);
    let mut betas: Vec<f64> = Vec::with_capacity(steps);
    let mut t_norm = 0f64;
    let mut breakdown = false;
    let mut residual_beta = 0.0;
    let mut products = 0;

    for j in 0..steps {
        let q = &basis[j];
        let mut w = apply_f64(op, q, device, dtype)?;
        products += 1;
        if !w.iter().all(|x| x.is_finite()) {
            return Err(AnalysisError::Invalid(format!(
                "the operator returned a non-finite product at Lanczos step {j}"
            )));
        }
        let mut alpha = dot(q, &w);
        axpy(&mut w, -alpha, q);
        if j > 0 {
            axpy(&mut w, -betas[j - 1], &basis[j - 1]);
        }
        // Classical Gram–Schmidt against the whole basis, twice.
        for _ in 0..2 {
            let coeffs: Vec<f64> = basis.iter().map(|b| dot(b, &w)).collect();
            for (b, c) in basis.iter().zip(&coeffs) {
                axpy(&mut w, -c, b);
            }
            // The component along q_j is a correction to α_j.
            alpha += coeffs[j];
        }
        alphas.push(alpha);
        let beta = norm(&w);
        t_norm = t_norm.max(alpha.abs() + beta + if j > 0 { betas[j - 1] } else { 0.0 });
        if beta <= breakdown_rel * t_norm {
            breakdown = true;
            break;
        }
        if j + 1 == steps {
            residual_beta = beta;
            break;
        }
        betas.push(beta);
        basis.push(w.into_iter().map(|x| x / beta).collect());
    }

    let (values, vectors) = tridiagonal_eigen(&alphas, &betas)?;
    let m = values.len();
    let floor = dtype_eps(dtype) * t_norm;
    let ritz = (0..m)
        .map(|i| {
            let residual = (residual_beta * vectors[(m - 1, i)]).abs().max(floor);
            let gap = (0..m)
                .filter(|&l| l != i)
                .map(|l| (values[l] - values[i]).abs())
                .fold(f64::INFINITY, f64::min);
            let bound = if gap.is_finite() && gap > 0.0 {
                residual.min(residual * residual / gap)
            } else {
                residual
            };
            RitzValue {
                value: values[i],
                residual,
                bound,
            }
        })
        .collect();
    let weights = (0..m).map(|i| vectors[(0, i)].powi(2)).collect();
    Ok(LanczosResult {
        alphas,
        betas,
        residual_beta,
        ritz,
        weights,
        breakdown,
        products,
    })
}

/// Eigenvalues (ascending) and eigenvectors (columns) of the symmetric
/// tridiagonal matrix with diagonal `alphas` and off-diagonal `betas`.
pub fn tridiagonal_eigen(alphas: &[f64], betas: &[f64]) -> Result<(Vec<f64>, Mat<f64>)> {
    let m = alphas.len();
    if betas.len() + 1 != m {
        return Err(AnalysisError::Invalid(format!(
            "a {m}x{m} tridiagonal matrix needs {} off-diagonal entries, got {}",
            m.saturating_sub(1),
            betas.len()
        )));
    }
    let t = Mat::<f64>::from_fn(m, m, |i, j| {
        if i == j {
            alphas[i]
        } else if i == j + 1 {
            betas[j]
        } else if j == i + 1 {
            betas[i]
        } else {
            0.0
        }
    });
    let evd = t
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| AnalysisError::Eigen {
            dim: m,
            message: format!("{e:?}"),
        })?;
    let s = evd.S().column_vector();
    let values = (0..m).map(|i| s[i]).collect();
    Ok((values, evd.U().to_owned()))
}
