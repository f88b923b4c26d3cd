//! The smallest eigenvalue of a softmax-regression Hessian, certified by a
//! bracket from two cheap bounds instead of a decomposition: the notebook's
//! "never full rank" becomes a number once a penalty is added.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::spectrum::{
    laplacian_gram_extremes, laplacian_smoothest_mode, rayleigh_quotient, shift_direction,
};
use hessfree_model::{CurvatureKind, Objective, Penalty, SoftmaxObjective};

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
    /// The penalties the bound is for, joined by ` + `; `"none"` without any.
    pub penalty: String,
    /// Which direction gave the upper bound.
    pub direction: String,
    /// Weyl's lower bound `λ_min(Q)`: 0 when there is a bias or no penalty.
    pub lower: f64,
    /// The Rayleigh quotient along `direction`, from one product.
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
