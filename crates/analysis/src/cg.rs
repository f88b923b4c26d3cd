//! Conjugate gradients on a [`LinOp`], to count the iterations that a
//! Newton system `(H + λI) p = −g` needs.
//!
//! This is a plain CG from `x₀ = 0`, the inner loop of Newton-CG without the
//! trust-region or forcing-term logic of the solvers crate; its only job here
//! is measurement. (If `hessfree-solvers` grows a CG with the same stopping
//! rule, this one can go.)

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result};
use hessfree_model::LinOp;
use hessfree_model::linop::vec;

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

/// Solves `A x = b` by CG from zero. Residual norms are tracked by the
/// recurrence (no extra products).
pub fn conjugate_gradient(op: &dyn LinOp, b: &Tensor, opts: CgOptions) -> Result<CgResult> {
    if b.elem_count() != op.dim() {
        return Err(AnalysisError::Invalid(format!(
            "CG right-hand side has {} entries, the operator has dimension {}",
            b.elem_count(),
            op.dim()
        )));
    }
    let b_norm = vec::norm(b)?;
    let mut result = CgResult {
        x: Some(b.zeros_like()?),
        iterations: 0,
        converged: false,
        negative_curvature: false,
        relative_residuals: vec![1.0],
    };
    if b_norm == 0.0 {
        result.converged = true;
        result.relative_residuals = vec![0.0];
        return Ok(result);
    }
    let mut x = b.zeros_like()?;
    let mut r = b.clone();
    let mut p = b.clone();
    let mut rr = b_norm * b_norm;
    while result.iterations < opts.max_iter {
        let ap = op.apply(&p)?;
        result.iterations += 1;
        let pap = vec::dot(&p, &ap)?;
        if pap.is_nan() || pap <= 0.0 {
            result.negative_curvature = true;
            break;
        }
        let alpha = rr / pap;
        x = vec::axpy(&x, alpha, &p)?;
        r = vec::axpy(&r, -alpha, &ap)?;
        let rr_new = vec::dot(&r, &r)?;
        let rel = rr_new.sqrt() / b_norm;
        result.relative_residuals.push(rel);
        if rel <= opts.rtol {
            result.converged = true;
            break;
        }
        p = vec::axpy(&r, rr_new / rr, &p)?;
        rr = rr_new;
    }
    result.x = Some(x);
    Ok(result)
}
