//! Losses of a network's outputs, each with the curvature a Gauss-Newton
//! product needs.
//!
//! Convention, for every loss and every objective built on one: the loss of
//! a batch is the **mean over cases of the sum over outputs**,
//! `f = (1/n) Σ_i ℓ(z_i, y_i)` with `ℓ` summed over the outputs of case `i`.
//! [`Loss::sum`] returns the numerator `Σ_i ℓ(z_i, y_i)`; objectives divide
//! by `n`, so that chunked and sharded sums add up to the same mean.
//!
//! The Gauss-Newton matrix of `f` is `(1/n) Σ_i J_iᵀ H_ℓ(z_i) J_i` with `H_ℓ`
//! the Hessian of `ℓ` in the outputs `z`. Each loss here is convex in `z`
//! (a matching loss for its output non-linearity), so `H_ℓ` is positive
//! semi-definite and so is the Gauss-Newton matrix. [`Loss::output_curvature`]
//! applies `H_ℓ(z_i)` row by row.

use candle_core::{DType, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;

/// A loss of the outputs `z` `[n, outputs]` against targets `y` of the same
/// shape.
pub trait Loss: Send + Sync + std::fmt::Debug {
    /// The name reports use (`softmax-cross-entropy`, ...).
    fn name(&self) -> &'static str;

    /// `Σ_i ℓ(z_i, y_i)` as a differentiable candle scalar, so that
    /// backward (and double backward) passes run through it.
    fn sum(&self, z: &Tensor, y: &Tensor) -> Result<Tensor>;

    /// `H_ℓ(z_i) u_i` for every row `i`: the loss's Hessian in the outputs,
    /// at `z` (detached by the caller), applied to `u` `[n, outputs]`.
    fn output_curvature(&self, z: &Tensor, u: &Tensor) -> Result<Tensor>;

    /// `Σ_i ℓ(z_i, y_i)` and `∂ℓ/∂z` row by row, for the hand-written
    /// backward passes (the MLP's R-operator): each loss here is matched to
    /// its output non-linearity, so the gradient is "prediction − target".
    fn value_and_output_gradient(&self, z: &Tensor, y: &Tensor) -> Result<(f64, Tensor)>;

    /// `∂ℓ(z_i, ŷ_i)/∂z` row by row for targets `ŷ_i` drawn from the
    /// model's predictive distribution at `z` (a class from the softmax, a
    /// Bernoulli pixel, `z + N(0, I)`). Its outer products average to
    /// `H_ℓ(z_i)` over the draws: the Monte-Carlo Fisher K-FAC samples.
    fn sampled_output_gradient(&self, z: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor>;

    /// Matrices `B_c` `[n, outputs]`, one per output `c`, whose rows give
    /// `Σ_c B_c,i B_c,iᵀ = H_ℓ(z_i)`: a square root of the loss's Hessian,
    /// so that back-propagating each `B_c` gives the exact expectation
    /// [`Self::sampled_output_gradient`] estimates.
    fn output_curvature_factor(&self, z: &Tensor) -> Result<Vec<Tensor>>;
}

/// Each row of `z` as `f64`s, with its shape.
fn host_rows(z: &Tensor) -> Result<(usize, usize, Vec<f64>)> {
    let (n, k) = z.dims2()?;
    let v = z.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok((n, k, v))
}

/// `v` `[n, k]` on `like`'s device and in its dtype.
fn like_tensor(v: Vec<f64>, n: usize, k: usize, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, (n, k), like.device())?.to_dtype(like.dtype())?)
}

/// `e_c` as an `[n, k]` matrix of one-hot rows, in `like`'s dtype and device.
fn unit_column(n: usize, k: usize, c: usize, like: &Tensor) -> Result<Tensor> {
    let mut v = vec![0.0; n * k];
    for i in 0..n {
        v[i * k + c] = 1.0;
    }
    like_tensor(v, n, k, like)
}

/// Softmax over the outputs, then cross-entropy against target
/// distributions (one-hot for labels): `ℓ = −Σ_c y_c log softmax(z)_c`.
/// `H_ℓ = diag(p) − p pᵀ` with `p = softmax(z)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxCrossEntropy;

impl Loss for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy"
    }

    fn sum(&self, z: &Tensor, y: &Tensor) -> Result<Tensor> {
        crate::objective::softmax_cross_entropy_tensor(z, y)
    }

    fn output_curvature(&self, z: &Tensor, u: &Tensor) -> Result<Tensor> {
        let p = candle_nn::ops::softmax_last_dim(z)?;
        crate::objective::softmax_curvature_product(&p, u)
    }

    fn value_and_output_gradient(&self, z: &Tensor, y: &Tensor) -> Result<(f64, Tensor)> {
        let (loss, p) = crate::objective::softmax_cross_entropy(z, y)?;
        Ok((loss, (p - y)?))
    }

    fn sampled_output_gradient(&self, z: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let p = candle_nn::ops::softmax_last_dim(z)?;
        let (n, k, mut g) = host_rows(&p)?;
        for row in g.chunks_exact_mut(k) {
            // The class whose cumulative probability first passes u; the
            // last one if rounding leaves the total just under u.
            let u: f64 = rng.random();
            let mut total = 0.0;
            let mut class = k - 1;
            for (c, &pc) in row.iter().enumerate() {
                total += pc;
                if u < total {
                    class = c;
                    break;
                }
            }
            row[class] -= 1.0;
        }
        like_tensor(g, n, k, z)
    }

    fn output_curvature_factor(&self, z: &Tensor) -> Result<Vec<Tensor>> {
        // diag(p) − p pᵀ = Σ_c p_c (e_c − p)(e_c − p)ᵀ.
        let p = candle_nn::ops::softmax_last_dim(z)?;
        let (n, k) = p.dims2()?;
        (0..k)
            .map(|c| {
                let root = p.narrow(1, c, 1)?.sqrt()?;
                Ok((unit_column(n, k, c, &p)? - &p)?.broadcast_mul(&root)?)
            })
            .collect()
    }
}

/// A logistic sigmoid on each output, then Bernoulli cross-entropy against
/// targets in `[0, 1]`: `ℓ = Σ_c softplus(z_c) − y_c z_c`, which is
/// `−y log σ(z) − (1−y) log(1−σ(z))` written so that it never takes the log
/// of a rounded-off 0. `H_ℓ = diag(σ(z)(1 − σ(z)))`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SigmoidCrossEntropy;

impl Loss for SigmoidCrossEntropy {
    fn name(&self) -> &'static str {
        "sigmoid-cross-entropy"
    }

    fn sum(&self, z: &Tensor, y: &Tensor) -> Result<Tensor> {
        // softplus(z) = max(z, 0) + log(1 + exp(−|z|)), stable for any z.
        let softplus = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
        Ok((softplus - (y * z)?)?.sum_all()?)
    }

    fn output_curvature(&self, z: &Tensor, u: &Tensor) -> Result<Tensor> {
        let s = candle_nn::ops::sigmoid(z)?;
        let w = (&s * (1.0 - &s)?)?;
        Ok((w * u)?)
    }

    fn value_and_output_gradient(&self, z: &Tensor, y: &Tensor) -> Result<(f64, Tensor)> {
        let g = (candle_nn::ops::sigmoid(z)? - y)?;
        Ok((sum_f64(self, z, y)?, g))
    }

    fn sampled_output_gradient(&self, z: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let s = candle_nn::ops::sigmoid(z)?;
        let (n, k, mut g) = host_rows(&s)?;
        for x in &mut g {
            let u: f64 = rng.random();
            if u < *x {
                *x -= 1.0;
            }
        }
        like_tensor(g, n, k, z)
    }

    fn output_curvature_factor(&self, z: &Tensor) -> Result<Vec<Tensor>> {
        // diag(σ(1 − σ)) = Σ_c σ_c(1 − σ_c) e_c e_cᵀ.
        let s = candle_nn::ops::sigmoid(z)?;
        let root = (&s * (1.0 - &s)?)?.sqrt()?;
        let (n, k) = s.dims2()?;
        (0..k)
            .map(|c| Ok((unit_column(n, k, c, &s)? * &root)?))
            .collect()
    }
}

/// Squared error for linear outputs: `ℓ = ½ Σ_c (z_c − y_c)²`, so that the
/// gradient is the residual. `H_ℓ = I`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SquaredError;

impl Loss for SquaredError {
    fn name(&self) -> &'static str {
        "squared-error"
    }

    fn sum(&self, z: &Tensor, y: &Tensor) -> Result<Tensor> {
        Ok(((z - y)?.sqr()?.sum_all()? * 0.5)?)
    }

    fn output_curvature(&self, _z: &Tensor, u: &Tensor) -> Result<Tensor> {
        Ok(u.clone())
    }

    fn value_and_output_gradient(&self, z: &Tensor, y: &Tensor) -> Result<(f64, Tensor)> {
        Ok((sum_f64(self, z, y)?, (z - y)?))
    }

    fn sampled_output_gradient(&self, z: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        // ŷ = z + ε, so ∂ℓ/∂z = z − ŷ = −ε.
        let (n, k) = z.dims2()?;
        let g = (0..n * k)
            .map(|_| {
                let e: f64 = StandardNormal.sample(rng);
                -e
            })
            .collect::<Vec<f64>>();
        like_tensor(g, n, k, z)
    }

    fn output_curvature_factor(&self, z: &Tensor) -> Result<Vec<Tensor>> {
        let (n, k) = z.dims2()?;
        (0..k).map(|c| unit_column(n, k, c, z)).collect()
    }
}

/// A loss named on the command line (`--loss`), before it is checked
/// against a model's output layer ([`crate::Model::loss`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossChoice {
    /// [`SoftmaxCrossEntropy`].
    SoftmaxCrossEntropy,
    /// [`SigmoidCrossEntropy`].
    SigmoidCrossEntropy,
    /// [`SquaredError`].
    SquaredError,
}

impl LossChoice {
    /// The names [`LossChoice::from_str`](std::str::FromStr) accepts.
    pub const CHOICES: &'static str = "softmax-cross-entropy, sigmoid-cross-entropy, squared-error";

    /// The loss itself.
    pub fn build(self) -> std::sync::Arc<dyn Loss> {
        match self {
            Self::SoftmaxCrossEntropy => std::sync::Arc::new(SoftmaxCrossEntropy),
            Self::SigmoidCrossEntropy => std::sync::Arc::new(SigmoidCrossEntropy),
            Self::SquaredError => std::sync::Arc::new(SquaredError),
        }
    }
}

impl std::str::FromStr for LossChoice {
    type Err = crate::ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "softmax-cross-entropy" | "softmax-ce" => Ok(Self::SoftmaxCrossEntropy),
            "sigmoid-cross-entropy" | "sigmoid-ce" => Ok(Self::SigmoidCrossEntropy),
            "squared-error" => Ok(Self::SquaredError),
            other => Err(crate::ModelError::Spec(format!(
                "unknown loss `{other}`; expected one of: {}",
                Self::CHOICES
            ))),
        }
    }
}

/// The summed loss as an `f64`, from [`Loss::sum`].
pub fn sum_f64(loss: &dyn Loss, z: &Tensor, y: &Tensor) -> Result<f64> {
    Ok(loss
        .sum(z, y)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    /// `H_ℓ u` from [`Loss::output_curvature`] against double backward of
    /// [`Loss::sum`], and the loss against its closed form, for each loss.
    #[test]
    fn output_curvature_is_the_hessian_of_the_sum() -> Result<()> {
        let dev = Device::Cpu;
        let z0 = Tensor::new(&[[0.3f64, -1.2, 2.0], [-0.5, 0.1, 4.0]], &dev)?;
        let y = Tensor::new(&[[0.0f64, 1.0, 0.0], [0.2, 0.3, 0.5]], &dev)?;
        let u = Tensor::new(&[[1.0f64, -2.0, 0.5], [0.3, 0.7, -1.1]], &dev)?;
        let losses: [&dyn Loss; 3] = [&SoftmaxCrossEntropy, &SigmoidCrossEntropy, &SquaredError];
        for loss in losses {
            // Finite differences of the gradient along u (the gradient by
            // backward, which is first order only).
            let grad = |z: &Tensor| -> Result<Tensor> {
                let v = Var::from_tensor(z)?;
                let l = loss.sum(v.as_tensor(), &y)?;
                Ok(l.backward()?.get(v.as_tensor()).expect("grad").clone())
            };
            let h = 1e-5;
            let gp = grad(&(&z0 + (&u * h)?)?)?;
            let gm = grad(&(&z0 - (&u * h)?)?)?;
            let fd = ((gp - gm)? / (2.0 * h))?;
            let hu = loss.output_curvature(&z0, &u)?;
            let (value, g) = loss.value_and_output_gradient(&z0, &y)?;
            assert!(
                (value - sum_f64(loss, &z0, &y)?).abs() < 1e-13,
                "{}",
                loss.name()
            );
            let ge = (&g - grad(&z0)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(ge < 1e-14, "{}: output gradient off by {ge:e}", loss.name());
            let err = (&fd - &hu)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(err < 1e-7, "{}: H u off by {err:e}", loss.name());
        }
        Ok(())
    }

    /// `Σ_c B_c B_cᵀ u = H_ℓ u` row by row, and the sampled gradients'
    /// outer products average to the same `H_ℓ` (to Monte-Carlo error).
    #[test]
    fn curvature_factors_and_samples_reproduce_the_output_hessian() -> Result<()> {
        use rand::SeedableRng;
        let dev = Device::Cpu;
        let z = Tensor::new(&[[0.3f64, -1.2, 2.0], [-0.5, 0.1, 1.0]], &dev)?;
        let u = Tensor::new(&[[1.0f64, -2.0, 0.5], [0.3, 0.7, -1.1]], &dev)?;
        let losses: [&dyn Loss; 3] = [&SoftmaxCrossEntropy, &SigmoidCrossEntropy, &SquaredError];
        for loss in losses {
            let hu = loss.output_curvature(&z, &u)?;
            let mut from_factor = u.zeros_like()?;
            for b in loss.output_curvature_factor(&z)? {
                let bu = (&b * &u)?.sum_keepdim(1)?;
                from_factor = (from_factor + b.broadcast_mul(&bu)?)?;
            }
            let err = (&from_factor - &hu)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(err < 1e-14, "{}: B Bᵀ u off by {err:e}", loss.name());
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let draws = 20_000;
            let mut mean = u.zeros_like()?;
            for _ in 0..draws {
                let g = loss.sampled_output_gradient(&z, &mut rng)?;
                let gu = (&g * &u)?.sum_keepdim(1)?;
                mean = (mean + g.broadcast_mul(&gu)?)?;
            }
            let mean = (mean / draws as f64)?;
            let err = (&mean - &hu)?.abs()?.max_all()?.to_scalar::<f64>()?;
            // Entries of H u are O(1); the standard error at 20000 draws
            // is about 0.01.
            assert!(err < 0.06, "{}: sampled g gᵀ u off by {err:e}", loss.name());
        }
        Ok(())
    }

    #[test]
    fn closed_forms_of_the_values() -> Result<()> {
        let dev = Device::Cpu;
        // Closed forms of the values.
        let z = Tensor::new(&[[0.5f64, -2.0]], &dev)?;
        let t = Tensor::new(&[[1.0f64, 0.0]], &dev)?;
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let bce = -(sig(0.5).ln()) - (1.0 - sig(-2.0)).ln();
        assert!((sum_f64(&SigmoidCrossEntropy, &z, &t)? - bce).abs() < 1e-14);
        assert!((sum_f64(&SquaredError, &z, &t)? - 0.5 * (0.25 + 4.0)).abs() < 1e-15);
        let lse = (0.5f64.exp() + (-2.0f64).exp()).ln();
        assert!((sum_f64(&SoftmaxCrossEntropy, &z, &t)? - (lse - 0.5)).abs() < 1e-14);
        // Large logits stay finite.
        let big = Tensor::new(&[[800.0f64, -800.0]], &dev)?;
        assert!(sum_f64(&SigmoidCrossEntropy, &big, &t)?.is_finite());
        Ok(())
    }
}
