//! Armijo backtracking, shared by Newton-CG and dense Newton.

use candle_core::Tensor;
use hessfree_model::linop::vec;

use crate::error::Result;
use crate::problem::HfProblem;

/// Settings of [`armijo`]'s backtracking.
#[derive(Clone, Copy, Debug)]
pub struct Armijo {
    /// Sufficient-decrease constant: accept `α` once `f(w + αd) ≤ f + c·α·gᵀd`.
    pub c: f64,
    /// Factor `α` shrinks by after each rejected trial, starting from 1.
    pub shrink: f64,
    /// Trials after the full step before giving up.
    pub max_steps: usize,
}

/// The accepted step length and the objective there, or `None` when no
/// step length in `shrink^0 .. shrink^max_steps` gives a finite objective
/// with sufficient decrease `f(w + αd) ≤ f + c·α·gᵀd`.
pub fn armijo(
    prob: &HfProblem,
    w: &Tensor,
    d: &Tensor,
    f: f64,
    gd: f64,
    f_at_one: Option<f64>,
    ls: Armijo,
) -> Result<Option<(f64, f64)>> {
    let accept = |alpha: f64, fa: f64| fa.is_finite() && fa <= f + ls.c * alpha * gd;
    let mut alpha = 1.0;
    let mut fa = match f_at_one {
        Some(v) => v,
        None => prob.loss(&vec::axpy(w, 1.0, d)?)?,
    };
    for _ in 0..ls.max_steps {
        if accept(alpha, fa) {
            return Ok(Some((alpha, fa)));
        }
        alpha *= ls.shrink;
        fa = prob.loss(&vec::axpy(w, alpha, d)?)?;
    }
    Ok(accept(alpha, fa).then_some((alpha, fa)))
}
