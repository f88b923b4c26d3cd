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
    tensor_to_mat_scaled(t, 1.0)
}

/// `scale · t` as a faer matrix (f64), in one pass over the tensor's own
/// precision: a separate f64 copy, or a separate scaling pass, of a 785²
/// K-FAC factor costs more in memory traffic than the conversion itself.
pub fn tensor_to_mat_scaled(t: &Tensor, scale: f64) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let flat: Vec<f64> = if t.dtype() == DType::F32 {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        v.into_iter().map(|x| scale * f64::from(x)).collect()
    } else {
        let mut v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if scale != 1.0 {
            v.iter_mut().for_each(|x| *x *= scale);
        }
        v
    };
    // faer's own row-major-to-column-major copy, blocked for the cache.
    Ok(faer::MatRef::from_row_major_slice(&flat, r, c).to_owned())
}

/// The data term's Hessian of softmax regression at `w`, assembled in
/// closed form (penalty terms excluded; see [`assemble_softmax_hessian`]).
///
/// With `x̃_i = [x_i, 1]` (the bias as one more input), block `(c, c')` is
/// `X̃ᵀ diag(a) X̃ / n` with `a_i = δ_cc' p_ic − p_ic p_ic'`: one matrix
/// product per class pair on weighted rows, of which only the lower half is
/// computed since every block is symmetric. That is `k(k+1)/2 · n · (d+1)²`
/// multiply-adds (55 · 60000 · 785² ≈ 2 TFLOP for MNIST), done by faer's
/// GEMM kernels on every core; the scatter into the parameter layout
/// (`W[j, c]` at `j·k + c`, bias `c` at `d·k + c`) is one pass over `H`.
pub fn softmax_data_hessian(obj: &SoftmaxObjective, w: &Tensor) -> Result<Mat<f64>> {
    use faer::linalg::matmul::triangular::{BlockStructure, matmul};
    use faer::{Accum, Par};

    let k = obj.model().classes();
    let d = obj.model().inputs();
    let bias = obj.model().has_bias();
    let da = d + usize::from(bias);
    let n = obj.data().rows() as f64;
    // Lower halves of the Gram blocks, for c ≤ c' in row-major pair order.
    let pairs: Vec<(usize, usize)> = (0..k).flat_map(|c| (c..k).map(move |c2| (c, c2))).collect();
    let mut blocks = vec![Mat::<f64>::zeros(da, da); pairs.len()];
    let par = Par::rayon(0);
    for ((x, _), p) in obj.data().chunks().iter().zip(obj.probabilities(w)?) {
        let rows = x.dim(0)?;
        let xv = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let pv = p.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let xa = Mat::from_fn(rows, da, |i, j| if j < d { xv[i * d + j] } else { 1.0 });
        let mut weighted = Mat::<f64>::zeros(rows, da);
        for (&(c, c2), block) in pairs.iter().zip(&mut blocks) {
            let a: Vec<f64> = (0..rows)
                .map(|i| {
                    let (pc, pc2) = (pv[i * k + c], pv[i * k + c2]);
                    if c == c2 { pc - pc * pc } else { -pc * pc2 }
                })
                .collect();
            for j in 0..da {
                let (src, dst) = (xa.col(j), weighted.col_mut(j));
                for ((o, &x), &ai) in dst.iter_mut().zip(src.iter()).zip(&a) {
                    *o = ai * x;
                }
            }
            matmul(
                block.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Add,
                xa.transpose(),
                BlockStructure::Rectangular,
                weighted.as_ref(),
                BlockStructure::Rectangular,
                1.0 / n,
                par,
            );
        }
    }
    let dim = d * k + if bias { k } else { 0 };
    let index = |j: usize, c: usize| if j < d { j * k + c } else { d * k + c };
    let mut h = Mat::<f64>::zeros(dim, dim);
    for (&(c, c2), block) in pairs.iter().zip(&blocks) {
        for j2 in 0..da {
            for j in j2..da {
                let v = block[(j, j2)];
                h[(index(j, c), index(j2, c2))] = v;
                h[(index(j2, c), index(j, c2))] = v;
                h[(index(j, c2), index(j2, c))] = v;
                h[(index(j2, c2), index(j, c))] = v;
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
