//! The dense softmax-regression Hessian, for the analysis tools, the tests
//! and the dense-Newton baseline. Nothing else forms it.
//!
//! `H = (1/n) Σ_i A_i ⊗ x_i x_iᵀ` with `A_i = diag(p_i) − p_i p_iᵀ`. With
//! the flat index of `W[j, c]` being `j·k + c`, block `(c, c')` over pixels
//! is the Gram matrix `Xᵀ diag(A[:, c, c']) X / n`: 10x10 blocks of 784x784,
//! each a Gram matrix of the batch's pixels weighted by softmax curvature.

use candle_core::{DType, Tensor};
use faer::Mat;

use crate::error::Result;
use crate::linop::LinOp;
use crate::softmax::SoftmaxObjective;

/// Copies a 2-D tensor into a faer matrix (f64).
pub fn tensor_to_mat(t: &Tensor) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let rows = t.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(Mat::from_fn(r, c, |i, j| rows[i][j]))
}

/// The data term's Hessian of softmax regression at `w`, assembled in
/// closed form (penalty terms excluded; see [`assemble_softmax_hessian`]).
pub fn softmax_data_hessian(obj: &SoftmaxObjective, w: &Tensor) -> Result<Mat<f64>> {
    let k = obj.model().classes();
    let d = obj.model().inputs();
    let bias = obj.model().has_bias();
    let dim = d * k + if bias { k } else { 0 };
    let n = obj.data().rows() as f64;
    let mut h = Mat::<f64>::zeros(dim, dim);
    for ((x, _), p) in obj.data().chunks().iter().zip(obj.probabilities(w)?) {
        let x = tensor_to_mat(x)?;
        let p = tensor_to_mat(&p)?;
        let rows = x.nrows();
        for c in 0..k {
            for c2 in c..k {
                // a_i = A_i[c, c'] = δ_cc' p_ic − p_ic p_ic'
                let a: Vec<f64> = (0..rows)
                    .map(|i| if c == c2 { p[(i, c)] } else { 0.0 } - p[(i, c)] * p[(i, c2)])
                    .collect();
                let xa = Mat::from_fn(rows, d, |i, j| a[i] * x[(i, j)]);
                let block = x.transpose() * &xa;
                for j in 0..d {
                    for j2 in 0..d {
                        let v = block[(j, j2)] / n;
                        h[(j * k + c, j2 * k + c2)] += v;
                        if c != c2 {
                            h[(j * k + c2, j2 * k + c)] += v;
                        }
                    }
                }
                if bias {
                    let bc = d * k + c;
                    let bc2 = d * k + c2;
                    let sum_a: f64 = a.iter().sum();
                    h[(bc, bc2)] += sum_a / n;
                    if c != c2 {
                        h[(bc2, bc)] += sum_a / n;
                    }
                    for j in 0..d {
                        let xa_j: f64 = (0..rows).map(|i| x[(i, j)] * a[i]).sum::<f64>() / n;
                        h[(j * k + c, bc2)] += xa_j;
                        h[(bc2, j * k + c)] += xa_j;
                        if c != c2 {
                            h[(j * k + c2, bc)] += xa_j;
                            h[(bc, j * k + c2)] += xa_j;
                        }
                    }
                }
            }
        }
    }
    Ok(h)
}

/// The full Hessian at `w`: the closed-form data term plus the penalties'
/// constant Hessian (assembled column by column from its cheap product).
pub fn assemble_softmax_hessian(obj: &SoftmaxObjective, w: &Tensor) -> Result<Mat<f64>> {
    let mut h = softmax_data_hessian(obj, w)?;
    let reg = obj.regularizer();
    if !reg.is_empty() {
        let q = crate::linop::assemble_dense(reg.as_ref() as &dyn LinOp, w.device(), w.dtype())?;
        h += &q;
    }
    Ok(h)
}
