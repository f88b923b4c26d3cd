//! Kronecker-factored curvature (K-FAC, Martens & Grosse 2015) for the
//! dense layers of an MLP or autoencoder.
//!
//! Layer `l` computes `z = ā θ` with `ā = [a, 1]` (its input with a ones
//! column, so that the bias is the last row of `θ = [W; b]`, exactly how
//! the parameter layout stores `W_l` then `b_l`). One case's gradient of the
//! block is `ā gᵀ`, `g = ∂ℓ/∂z`, so the block of the Fisher (or
//! Gauss-Newton) matrix is `(1/n) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ)`, which K-FAC
//! approximates by `A ⊗ G` with `A = (1/n) Σ ā āᵀ` and `G = (1/n) Σ g gᵀ`:
//! exact for a single case, and block-diagonal across layers.
//!
//! Row-major `vec` of a block `V` `[d_in + 1, d_out]` gives
//! `(A ⊗ G) vec(V) = vec(A V G)`, so every product here is two small matrix
//! products per layer, and inverses are inverses of the factors.

use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use faer::{Mat, Side};

use crate::error::{ModelError, Result};
use crate::linop::LinOp;

/// Where the `g` of the `G` factors come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FisherTargets {
    /// Back-propagated from targets drawn from the model's predictive
    /// distribution, `samples` draws per case (the Monte-Carlo Fisher,
    /// K-FAC's default; for these losses the Fisher is the Gauss-Newton
    /// matrix).
    MonteCarlo {
        /// Draws per case, at least 1.
        samples: usize,
    },
    /// Back-propagated from the true targets (the empirical Fisher).
    Empirical,
    /// The expectation the Monte-Carlo draws estimate, computed exactly by
    /// back-propagating a square root of the loss's Hessian: one backward
    /// pass per output (10 for MNIST's classes, 784 for an autoencoder), so
    /// meant for checks and small outputs.
    Exact,
}

impl FisherTargets {
    /// The forms [`FisherTargets::from_str`] accepts.
    pub const CHOICES: &'static str = "mc, mc:SAMPLES, empirical, exact";
}

impl FromStr for FisherTargets {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            ModelError::Spec(format!(
                "unknown Fisher targets `{s}`; expected one of: {}",
                Self::CHOICES
            ))
        };
        match s {
            "mc" => Ok(Self::MonteCarlo { samples: 1 }),
            "empirical" => Ok(Self::Empirical),
            "exact" => Ok(Self::Exact),
            _ => {
                let samples = s
                    .strip_prefix("mc:")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(bad)?;
                Ok(Self::MonteCarlo { samples })
            }
        }
    }
}

impl std::fmt::Display for FisherTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MonteCarlo { samples: 1 } => f.write_str("mc"),
            Self::MonteCarlo { samples } => write!(f, "mc:{samples}"),
            Self::Empirical => f.write_str("empirical"),
            Self::Exact => f.write_str("exact"),
        }
    }
}

/// One dense layer's factors.
#[derive(Clone, Debug)]
pub struct LayerFactors {
    /// `A = E[ā āᵀ]`, `(d_in + 1)²`, the bias's ones column last.
    pub a: Mat<f64>,
    /// `G = E[g gᵀ]`, `d_out²`.
    pub g: Mat<f64>,
}

/// Every layer's factors, input side first.
#[derive(Clone, Debug)]
pub struct KroneckerFactors {
    /// One entry per dense layer.
    pub layers: Vec<LayerFactors>,
}

impl KroneckerFactors {
    /// Parameters covered: `Σ (d_in + 1) d_out`.
    pub fn dim(&self) -> usize {
        self.layers.iter().map(|l| l.a.nrows() * l.g.nrows()).sum()
    }

    /// `self ← decay·self + (1 − decay)·new`, the moving average K-FAC keeps
    /// over mini-batches.
    pub fn blend(&mut self, new: &Self, decay: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(ModelError::Spec(format!(
                "a moving average's decay must lie in [0, 1], got {decay}"
            )));
        }
        if self.layers.len() != new.layers.len()
            || self
                .layers
                .iter()
                .zip(&new.layers)
                .any(|(x, y)| x.a.nrows() != y.a.nrows() || x.g.nrows() != y.g.nrows())
        {
            return Err(ModelError::Spec(
                "cannot average factors of two different networks".into(),
            ));
        }
        // In place, column by column: a fresh 785² matrix per step costs
        // more in allocation and page faults than the arithmetic.
        let mix = |x: &mut Mat<f64>, y: &Mat<f64>| {
            for j in 0..x.ncols() {
                let ys = y.col_as_slice(j);
                for (xi, yi) in x.col_as_slice_mut(j).iter_mut().zip(ys) {
                    *xi = decay * *xi + (1.0 - decay) * yi;
                }
            }
        };
        for (x, y) in self.layers.iter_mut().zip(&new.layers) {
            mix(&mut x.a, &y.a);
            mix(&mut x.g, &y.g);
        }
        Ok(())
    }

    /// `A ⊗ G`, block-diagonal over the layers, as an operator on the flat
    /// parameters (`device`, `dtype`: those of the vectors it will see).
    pub fn operator(&self, device: &Device, dtype: DType) -> Result<Kronecker> {
        let blocks = self
            .layers
            .iter()
            .map(|l| Ok((l.a.clone(), l.g.clone())))
            .collect::<Result<Vec<_>>>()?;
        Kronecker::new(blocks, device, dtype)
    }

    /// The eigendecomposition of every factor, from which damped operators
    /// and their inverses follow for any damping without another one.
    pub fn decompose(&self) -> Result<KfacEigen> {
        let eig = |m: &Mat<f64>, what: &str, l: usize| -> Result<(Mat<f64>, Vec<f64>)> {
            let e = m.self_adjoint_eigen(Side::Lower).map_err(|e| {
                ModelError::Unsupported(format!(
                    "the eigendecomposition of layer {l}'s {what} factor failed: {e:?}"
                ))
            })?;
            let s = (0..m.nrows()).map(|i| e.S()[i].max(0.0)).collect();
            Ok((e.U().to_owned(), s))
        };
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(l, f)| {
                let (qa, sa) = eig(&f.a, "A", l)?;
                let (qg, sg) = eig(&f.g, "G", l)?;
                let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
                Ok(LayerEigen {
                    qa,
                    sa,
                    qg,
                    sg,
                    pi: pi_correction(mean(&f_diag(&f.a)), mean(&f_diag(&f.g))),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KfacEigen { layers })
    }
}

impl KroneckerFactors {
    /// `(A + π√γ I)⁻¹ ⊗ (G + √γ/π I)⁻¹`, the factored Tikhonov inverse, by
    /// Cholesky: what the K-FAC optimiser needs at each new `γ`, for about
    /// `n³/3 + n³` per factor where an eigendecomposition costs several
    /// times that. The eigenbasis ([`Self::decompose`]) is for the exactly
    /// shifted preconditioner and for spectra; both give the same matrix
    /// ([`KfacEigen::inverse`]) to rounding.
    pub fn factored_inverse(&self, gamma: f64, device: &Device, dtype: DType) -> Result<Kronecker> {
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(ModelError::Spec(format!(
                "K-FAC's damping must be finite and > 0 for an inverse, got {gamma}"
            )));
        }
        let root = gamma.sqrt();
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        let blocks = self
            .layers
            .iter()
            .enumerate()
            .map(|(l, f)| {
                let pi = pi_correction(mean(&f_diag(&f.a)), mean(&f_diag(&f.g)));
                Ok((
                    shifted_inverse_by_cholesky(&f.a, pi * root, "A", l)?,
                    shifted_inverse_by_cholesky(&f.g, root / pi, "G", l)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Kronecker::new(blocks, device, dtype)
    }
}

/// `(M + shift·I)⁻¹` for a positive semi-definite `M` and `shift > 0`.
fn shifted_inverse_by_cholesky(m: &Mat<f64>, shift: f64, what: &str, l: usize) -> Result<Mat<f64>> {
    use faer::linalg::solvers::DenseSolveCore;
    let n = m.nrows();
    let shifted = Mat::from_fn(n, n, |i, j| m[(i, j)] + if i == j { shift } else { 0.0 });
    let llt = shifted.llt(Side::Lower).map_err(|e| {
        ModelError::Unsupported(format!(
            "the Cholesky factorisation of layer {l}'s damped {what} factor failed: {e:?}"
        ))
    })?;
    Ok(llt.inverse())
}

fn f_diag(m: &Mat<f64>) -> Vec<f64> {
    (0..m.nrows()).map(|i| m[(i, i)]).collect()
}

/// Martens & Grosse's π (their eq. 10 with the trace norm):
/// `√((tr A / dim A) / (tr G / dim G))`, which splits the damping between
/// the factors so that neither is swamped; 1 when either trace is 0.
fn pi_correction(mean_a: f64, mean_g: f64) -> f64 {
    let pi = (mean_a / mean_g).sqrt();
    if pi.is_finite() && pi > 0.0 { pi } else { 1.0 }
}

/// One layer's factors as `Q diag(s) Qᵀ`, and its π.
#[derive(Clone, Debug)]
struct LayerEigen {
    qa: Mat<f64>,
    sa: Vec<f64>,
    qg: Mat<f64>,
    sg: Vec<f64>,
    pi: f64,
}

/// The factors' eigendecompositions (K-FAC recomputes them every few steps).
#[derive(Clone, Debug)]
pub struct KfacEigen {
    layers: Vec<LayerEigen>,
}

impl KfacEigen {
    /// Each layer's π, input side first.
    pub fn pis(&self) -> Vec<f64> {
        self.layers.iter().map(|l| l.pi).collect()
    }

    /// The condition number of [`Self::damped`]`(γ)`: the eigenvalues of
    /// `L ⊗ R` are the products of those of `L` and `R`.
    pub fn condition_number(&self, gamma: f64) -> f64 {
        let root = gamma.max(0.0).sqrt();
        let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
        for l in &self.layers {
            let range = |s: &[f64], shift: f64| {
                let lo = s.iter().copied().fold(f64::INFINITY, f64::min) + shift;
                let hi = s.iter().copied().fold(0.0, f64::max) + shift;
                (lo, hi)
            };
            let (a_lo, a_hi) = range(&l.sa, l.pi * root);
            let (g_lo, g_hi) = range(&l.sg, root / l.pi);
            lo = lo.min(a_lo * g_lo);
            hi = hi.max(a_hi * g_hi);
        }
        hi / lo
    }

    /// `(A + π√γ I) ⊗ (G + √γ/π I)`: factored Tikhonov damping by `γ`.
    pub fn damped(&self, gamma: f64, device: &Device, dtype: DType) -> Result<Kronecker> {
        self.map(gamma, |s, shift| s + shift, device, dtype)
    }

    /// The inverse of [`Self::damped`]: `(A + π√γ I)⁻¹ ⊗ (G + √γ/π I)⁻¹`.
    pub fn inverse(&self, gamma: f64, device: &Device, dtype: DType) -> Result<Kronecker> {
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(ModelError::Spec(format!(
                "K-FAC's damping must be finite and > 0 for an inverse, got {gamma}"
            )));
        }
        self.map(gamma, |s, shift| 1.0 / (s + shift), device, dtype)
    }

    /// `(A ⊗ G + γI)⁻¹`: the K-FAC matrix damped by exactly `γ` (not split
    /// between the factors), through the eigenvectors of both factors:
    /// `V ↦ Q_A [(Q_Aᵀ V Q_G) ⊘ (s_A s_Gᵀ + γ)] Q_Gᵀ`. What CG wants as a
    /// preconditioner for `C + γI`: the factored form adds `√γ·(πI ⊗ G +
    /// A ⊗ I/π)`, which there outweighs the damping it stands for.
    pub fn shifted_inverse(
        &self,
        gamma: f64,
        device: &Device,
        dtype: DType,
    ) -> Result<ShiftedKroneckerInverse> {
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(ModelError::Spec(format!(
                "K-FAC's damping must be finite and > 0 for an inverse, got {gamma}"
            )));
        }
        let to_tensor = |m: &Mat<f64>| mat_tensor(m, device, dtype);
        let mut offset = 0;
        let mut blocks = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let (da, dg) = (l.sa.len(), l.sg.len());
            let scale = Mat::from_fn(da, dg, |i, j| 1.0 / (l.sa[i] * l.sg[j] + gamma));
            blocks.push((
                to_tensor(&l.qa)?,
                to_tensor(&l.qg)?,
                to_tensor(&scale)?,
                offset,
            ));
            offset += da * dg;
        }
        Ok(ShiftedKroneckerInverse {
            blocks,
            dim: offset,
        })
    }

    fn map(
        &self,
        gamma: f64,
        f: impl Fn(f64, f64) -> f64,
        device: &Device,
        dtype: DType,
    ) -> Result<Kronecker> {
        let root = gamma.max(0.0).sqrt();
        let rebuild = |q: &Mat<f64>, s: &[f64], shift: f64| {
            let scaled = Mat::from_fn(q.nrows(), q.ncols(), |i, j| q[(i, j)] * f(s[j], shift));
            &scaled * q.transpose()
        };
        let blocks = self
            .layers
            .iter()
            .map(|l| {
                Ok((
                    rebuild(&l.qa, &l.sa, l.pi * root),
                    rebuild(&l.qg, &l.sg, root / l.pi),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Kronecker::new(blocks, device, dtype)
    }
}

/// A faer matrix as a row-major tensor on `device` in `dtype`.
fn mat_tensor(m: &Mat<f64>, device: &Device, dtype: DType) -> Result<Tensor> {
    let v: Vec<f64> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect();
    Ok(Tensor::from_vec(v, (m.nrows(), m.ncols()), device)?.to_dtype(dtype)?)
}

/// Refuses a vector that is not 1-D of the blocks' total length `dim`.
fn check_len(v: &Tensor, dim: usize, blocks: usize) -> Result<()> {
    if v.dims() != [dim] {
        return Err(ModelError::ParamLength {
            layout: format!("{blocks} Kronecker blocks"),
            expected: dim,
            found: v.elem_count(),
        });
    }
    Ok(())
}

/// A block-diagonal operator whose block `l` is `L_l ⊗ R_l`, applied as
/// `V ↦ L V R` on the block reshaped to `[rows of L, rows of R]`.
pub struct Kronecker {
    /// `(L, R, offset)` per block, on the device.
    blocks: Vec<(Tensor, Tensor, usize)>,
    dim: usize,
}

impl Kronecker {
    /// `blocks` of symmetric `(L, R)` pairs, laid out one after another.
    pub fn new(blocks: Vec<(Mat<f64>, Mat<f64>)>, device: &Device, dtype: DType) -> Result<Self> {
        let to_tensor = |m: &Mat<f64>| mat_tensor(m, device, dtype);
        let mut offset = 0;
        let mut out = Vec::with_capacity(blocks.len());
        for (l, r) in &blocks {
            out.push((to_tensor(l)?, to_tensor(r)?, offset));
            offset += l.nrows() * r.nrows();
        }
        Ok(Self {
            blocks: out,
            dim: offset,
        })
    }
}

impl LinOp for Kronecker {
    fn dim(&self) -> usize {
        self.dim
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        check_len(v, self.dim, self.blocks.len())?;
        let parts = self
            .blocks
            .iter()
            .map(|(l, r, offset)| {
                let (rows, cols) = (l.dim(0)?, r.dim(0)?);
                let block = v.narrow(0, *offset, rows * cols)?.reshape((rows, cols))?;
                Ok(l.matmul(&block)?.matmul(r)?.flatten_all()?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The factors hold the data already: a product touches none.
    fn samples_per_apply(&self) -> usize {
        0
    }
}

/// [`KfacEigen::shifted_inverse`] as an operator.
pub struct ShiftedKroneckerInverse {
    /// `(Q_A, Q_G, 1 / (s_A s_Gᵀ + γ), offset)` per block, on the device.
    blocks: Vec<(Tensor, Tensor, Tensor, usize)>,
    dim: usize,
}

impl LinOp for ShiftedKroneckerInverse {
    fn dim(&self) -> usize {
        self.dim
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        check_len(v, self.dim, self.blocks.len())?;
        let parts = self
            .blocks
            .iter()
            .map(|(qa, qg, scale, offset)| {
                let (rows, cols) = scale.dims2()?;
                let block = v.narrow(0, *offset, rows * cols)?.reshape((rows, cols))?;
                let rotated = qa.t()?.matmul(&block)?.matmul(qg)?;
                Ok(qa
                    .matmul(&(rotated * scale)?)?
                    .matmul(&qg.t()?)?
                    .flatten_all()?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn samples_per_apply(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() -> Result<()> {
        for s in ["mc", "mc:8", "empirical", "exact"] {
            assert_eq!(s.parse::<FisherTargets>()?.to_string(), s);
        }
        for bad in ["mc:0", "mc:x", "fisher", ""] {
            let e = bad.parse::<FisherTargets>().unwrap_err().to_string();
            assert!(e.contains("mc, mc:SAMPLES, empirical, exact"), "{e}");
        }
        Ok(())
    }

    /// `L V R` is `(L ⊗ R) vec(V)` with row-major `vec`.
    #[test]
    fn a_block_applies_the_kronecker_product() -> Result<()> {
        let l = Mat::from_fn(2, 2, |i, j| [[2.0, 1.0], [1.0, 3.0]][i][j]);
        let r = Mat::from_fn(3, 3, |i, j| if i == j { 1.0 + i as f64 } else { 0.5 });
        let op = Kronecker::new(vec![(l.clone(), r.clone())], &Device::Cpu, DType::F64)?;
        let v: Vec<f64> = (0..6).map(|i| (i as f64 - 2.5) * 0.7).collect();
        let out = op
            .apply(&Tensor::from_slice(&v, 6, &Device::Cpu)?)?
            .to_vec1::<f64>()?;
        for i in 0..2 {
            for j in 0..3 {
                let mut want = 0.0;
                for k in 0..2 {
                    for m in 0..3 {
                        want += l[(i, k)] * r[(j, m)] * v[k * 3 + m];
                    }
                }
                assert!((out[i * 3 + j] - want).abs() < 1e-14);
            }
        }
        Ok(())
    }
}
