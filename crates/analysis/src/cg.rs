//! Conjugate gradients on a [`LinOp`], to count the iterations that a
//! Newton system `(H + λI) p = −g` needs.
//!
//! A plain CG from `x₀ = 0` with a fixed relative tolerance: the solvers
//! crate's CG with its Newton-specific rules (forcing term, progress rule,
//! backtracking iterates) switched off; its only job here is measurement.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result};
use hessfree_model::LinOp;
use hessfree_model::linop::vec;
use hessfree_solvers::{CgOptions as SolverCgOptions, CgStop};

/// When CG stops.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CgOptions {
    /// Stop when `‖b − Ax‖ ≤ rtol·‖b‖`.
    pub rtol: f64,
    pub max_iter: usize,
}

impl Default for CgOptions {
    fn default() -> Self {
        Self {
            rtol: 1e-6,
            max_iter: 1000,
        }
    }
}

/// What CG did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CgResult {
    #[serde(skip)]
    pub x: Option<Tensor>,
    /// Products with the operator (one per iteration).
    pub iterations: usize,
    pub converged: bool,
    /// Stopped because `pᵀAp ≤ 0`: the operator is not positive definite
    /// along the current search direction.
    pub negative_curvature: bool,
    /// `‖r_i‖/‖b‖` after each iteration, starting with 1 at `x₀ = 0`.
    pub relative_residuals: Vec<f64>,
}

/// Solves `A x = b` by CG from zero, with the solvers crate's CG (no
/// forcing term, no progress rule, no kept iterates: only the count matters).
pub fn conjugate_gradient(op: &dyn LinOp, b: &Tensor, opts: CgOptions) -> Result<CgResult> {
    if b.elem_count() != op.dim() {
        return Err(AnalysisError::Invalid(format!(
            "CG right-hand side has {} entries, the operator has dimension {}",
            b.elem_count(),
            op.dim()
        )));
    }
    let b_norm = vec::norm(b)?;
    if b_norm == 0.0 {
        return Ok(CgResult {
            x: Some(b.zeros_like()?),
            iterations: 0,
            converged: true,
            negative_curvature: false,
            relative_residuals: vec![0.0],
        });
    }
    let solver_opts = SolverCgOptions {
        max_iters: opts.max_iter,
        rel_tol: opts.rtol,
        progress_eps: None,
        keep_iterates: false,
    };
    let out = hessfree_solvers::conjugate_gradient(op, b, None, None, &solver_opts)
        .map_err(|e| AnalysisError::Invalid(format!("conjugate gradients: {e}")))?;
    let negative_curvature = out.stop == CgStop::NegativeCurvature;
    Ok(CgResult {
        x: Some(out.x),
        // A negative-curvature stop spent one more product, on the offending
        // direction, than the iterations it completed (residuals.len() − 1).
        iterations: if negative_curvature {
            out.residuals.len()
        } else {
            out.iters
        },
        converged: out.stop == CgStop::Residual,
        negative_curvature,
        relative_residuals: out.residuals.iter().map(|r| r / b_norm).collect(),
    })
}
