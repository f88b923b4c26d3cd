//! Quadratic penalties: L2 weight decay and the notebook's Laplacian smoothness.
//!
//! Both are quadratic forms `½ wᵀQw` with a constant Hessian `Q`, so one
//! product `Qw` gives the value (`½ w·Qw`), the gradient (`Qw`) and the HVP
//! (`Qv`). That is why the Laplacian penalty, whose Hessian TensorFlow could
//! not give the notebook, costs two 3x3 stencil passes here.

use std::fmt;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::linop::{LinOp, vec};
use crate::params::ParamLayout;

/// The notebook's 3x3 Laplacian kernel; it is symmetric under a half turn,
/// so the stencil with 'SAME' zero padding is a symmetric matrix (L = Lᵀ).
pub const LAPLACE_KERNEL: [[f64; 3]; 3] = [[0.5, 1.0, 0.5], [1.0, -6.0, 1.0], [0.5, 1.0, 0.5]];

/// One penalty term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Penalty {
    /// `(lam/2)·||W||²` over weights only; biases are never penalised.
    L2 {
        /// Strength, finite and `>= 0`.
        lam: f64,
    },
    /// `eps·Σ_k ||L W_k||²`, each column `W_k` of the first layer's weights
    /// seen as a `rows x cols` image.
    Laplacian {
        /// Strength, finite and `>= 0`.
        eps: f64,
        /// Image height; `rows * cols` must equal the first layer's inputs.
        rows: usize,
        /// Image width.
        cols: usize,
    },
}

impl fmt::Display for Penalty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Penalty::L2 { lam } => write!(f, "l2({lam})"),
            Penalty::Laplacian { eps, .. } => write!(f, "laplacian({eps})"),
        }
    }
}

/// The sum of the penalty terms of an objective, bound to a layout, device and dtype.
#[derive(Clone)]
pub struct Regularizer {
    terms: Vec<Penalty>,
    layout: ParamLayout,
    weight_mask: Tensor,
}

impl Regularizer {
    /// The sum of `terms`; errors on a negative or non-finite strength, or on
    /// a Laplacian image shape that does not match the first layer's inputs.
    pub fn new(
        terms: Vec<Penalty>,
        layout: &ParamLayout,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        for term in &terms {
            match *term {
                Penalty::L2 { lam } if !(lam.is_finite() && lam >= 0.0) => {
                    return Err(ModelError::Spec(format!(
                        "L2 strength must be finite and >= 0, got {lam}"
                    )));
                }
                Penalty::Laplacian { eps, rows, cols } => {
                    if !(eps.is_finite() && eps >= 0.0) {
                        return Err(ModelError::Spec(format!(
                            "Laplacian strength must be finite and >= 0, got {eps}"
                        )));
                    }
                    let fan_in = layout.spec("layer0.weight")?.shape[0];
                    if rows * cols != fan_in {
                        return Err(ModelError::Spec(format!(
                            "Laplacian penalty sees first-layer weights as {rows}x{cols} images, but the layer has {fan_in} inputs"
                        )));
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            terms,
            layout: layout.clone(),
            weight_mask: layout.weight_mask(device, dtype)?,
        })
    }

    /// No penalty: value, gradient and products are all zero.
    pub fn none(layout: &ParamLayout, device: &Device, dtype: DType) -> Result<Self> {
        Self::new(Vec::new(), layout, device, dtype)
    }

    /// The penalty terms, in the order given.
    pub fn terms(&self) -> &[Penalty] {
        &self.terms
    }

    /// Whether there are no penalty terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// `Q v`, the penalty's Hessian times `v` (and its gradient when `v = w`).
    pub fn apply_q(&self, v: &Tensor) -> Result<Tensor> {
        let mut acc = v.zeros_like()?;
        for term in &self.terms {
            acc = match *term {
                Penalty::L2 { lam } => vec::axpy(&acc, lam, &(v * &self.weight_mask)?)?,
                Penalty::Laplacian { eps, rows, cols } => {
                    let w0 = self.layout.view(v, "layer0.weight")?;
                    let once = stencil_columns(&w0, rows, cols, &LAPLACE_KERNEL)?;
                    let twice = stencil_columns(&once, rows, cols, &LAPLACE_KERNEL)?;
                    let block = self.layout.scatter("layer0.weight", &twice)?;
                    vec::axpy(&acc, 2.0 * eps, &block)?
                }
            };
        }
        Ok(acc)
    }

    /// `(½ w·Qw, Qw)`: the penalty and its gradient from one product.
    pub fn value_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        if self.terms.is_empty() {
            return Ok((0.0, w.zeros_like()?));
        }
        let qw = self.apply_q(w)?;
        Ok((0.5 * vec::dot(w, &qw)?, qw))
    }

    /// The exact diagonal of `Q`, for diagonal preconditioners.
    pub fn diagonal(&self) -> Result<Tensor> {
        let mut acc = self.weight_mask.zeros_like()?;
        for term in &self.terms {
            acc = match *term {
                Penalty::L2 { lam } => vec::axpy(&acc, lam, &self.weight_mask)?,
                Penalty::Laplacian { eps, rows, cols } => {
                    // diag(LᵀL)_i = Σ_o L_oi², i.e. the squared kernel applied to an all-ones image.
                    let ones = self
                        .layout
                        .view(&self.weight_mask, "layer0.weight")?
                        .ones_like()?;
                    let sq = LAPLACE_KERNEL.map(|row| row.map(|k| k * k));
                    let d = stencil_columns(&ones, rows, cols, &sq)?;
                    vec::axpy(&acc, 2.0 * eps, &self.layout.scatter("layer0.weight", &d)?)?
                }
            };
        }
        Ok(acc)
    }

    /// The penalty's Hessian as an operator, to add to a data term's curvature.
    pub fn hessian_op(self: &Arc<Self>) -> Arc<dyn LinOp> {
        self.clone()
    }
}

impl LinOp for Regularizer {
    fn dim(&self) -> usize {
        self.layout.len()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        self.apply_q(v)
    }

    fn samples_per_apply(&self) -> usize {
        0
    }
}

/// Applies a 3x3 stencil with 'SAME' zero padding to every column of `w`
/// (`[rows*cols, m]`), each seen as a row-major `rows x cols` image, as TF's
/// `conv2d(..., padding='SAME')` does. Nine shifted slices, so it runs on any
/// device and stays exact in f64.
pub fn stencil_columns(
    w: &Tensor,
    rows: usize,
    cols: usize,
    kernel: &[[f64; 3]; 3],
) -> Result<Tensor> {
    let m = w.dim(1)?;
    let images = w.t()?.reshape((m, rows, cols))?;
    let padded = images.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut out = images.zeros_like()?;
    for (a, krow) in kernel.iter().enumerate() {
        for (b, &k) in krow.iter().enumerate() {
            if k != 0.0 {
                let shifted = padded.narrow(1, a, rows)?.narrow(2, b, cols)?;
                out = (out + shifted.affine(k, 0.0)?)?;
            }
        }
    }
    Ok(out.reshape((m, rows * cols))?.t()?.contiguous()?)
}
