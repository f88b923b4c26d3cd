//! Moving flat vectors between `Vec<f64>` (where the analysis does its
//! bookkeeping, in f64 whatever the model's dtype) and tensors (where the
//! operators live).

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::error::Result;
use hessfree_model::LinOp;

/// `A v` with `v` and the result as f64 slices; the product runs in `dtype`
/// on `device`.
pub(crate) fn apply_f64(
    op: &dyn LinOp,
    v: &[f64],
    device: &Device,
    dtype: DType,
) -> Result<Vec<f64>> {
    let t = Tensor::from_slice(v, v.len(), device)?.to_dtype(dtype)?;
    Ok(op.apply(&t)?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

pub(crate) fn dot(x: &[f64], y: &[f64]) -> f64 {
    // Four partial sums: vectorises and loses less to rounding than one.
    let mut acc = [0f64; 4];
    let chunks = x.len() / 4;
    for i in 0..chunks {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += x[4 * i + l] * y[4 * i + l];
        }
    }
    let mut tail = 0.0;
    for i in 4 * chunks..x.len() {
        tail += x[i] * y[i];
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

pub(crate) fn norm(x: &[f64]) -> f64 {
    dot(x, x).sqrt()
}

/// `y += a x`.
pub(crate) fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// A vector of independent ±1 entries.
pub(crate) fn rademacher(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
        .collect()
}

/// The unit round-off of a floating dtype (f64 for anything else).
pub(crate) fn dtype_eps(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f32::EPSILON as f64,
        DType::F16 => 9.77e-4,
        DType::BF16 => 7.81e-3,
        _ => f64::EPSILON,
    }
}
