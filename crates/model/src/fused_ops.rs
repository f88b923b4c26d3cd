//! The fused softmax kernels as candle custom ops over tensors that live on
//! the batch's device.
//!
//! [`FusedSoftmax`](crate::fused::FusedSoftmax) keeps `X` in host memory and
//! calls the CPU kernel directly. [`FusedOps`] keeps `X` (as `u8` when that is
//! lossless), the labels and the probabilities as candle tensors and goes
//! through [`SoftmaxGradOp`], [`SoftmaxProbsOp`] and [`SoftmaxHvpOp`], so the
//! same objective runs the CUDA kernel (`fused_cuda.rs`) on a GPU and the CPU
//! kernel on the CPU. Nothing but the loss (one scalar per gradient) leaves
//! the device.

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::fused::{
    FusedProducts, SoftmaxGradOp, SoftmaxHvpOp, SoftmaxProbsOp, Targets, XStorage, batch_bytes,
    batch_targets,
};
use crate::objective::Batches;

/// A batch prepared for the fused candle ops, on the batch's device.
#[derive(Clone, Debug)]
pub struct FusedOps {
    /// `[rows, inputs]`: `u8` meaning `byte * x_scale`, or the batch's floats.
    x: Tensor,
    /// `[rows]` `u32` labels, or `[rows, classes]` targets in the batch's dtype.
    targets: Tensor,
    x_scale: f64,
    classes: usize,
    rows: usize,
    cuda_blocks: Option<usize>,
}

impl FusedOps {
    /// The batch behind an objective, stored as `storage` says. The checks
    /// (is `X` exactly `k/255`? are the targets one-hot?) run once on a host
    /// copy; the tensors are then uploaded to the batch's device.
    /// Compressed rows ([`XStorage::Csr`]) are the CPU kernels' alone: an
    /// error here; [`XStorage::Auto`] means dense `u8` or floats.
    pub fn from_batches(batches: &Batches, storage: XStorage) -> Result<Self> {
        if storage == XStorage::Csr {
            return Err(ModelError::Unsupported(
                "compressed-row inputs (csr) run in the CPU kernels only; \
                 on this device use --x-storage auto, u8 or float"
                    .into(),
            ));
        }
        let device = batches.device();
        let (rows, inputs, classes) = (batches.rows(), batches.inputs(), batches.classes());
        let (x, x_scale) = match batch_bytes(batches, storage)? {
            Some(bytes) => (
                Tensor::from_vec(bytes, (rows, inputs), device)?,
                1.0 / 255.0,
            ),
            None => {
                let chunks: Vec<&Tensor> = batches.chunks().iter().map(|(x, _)| x).collect();
                (Tensor::cat(&chunks, 0)?.contiguous()?, 1.0)
            }
        };
        let targets = match batch_targets(batches)? {
            Targets::Labels(labels) => Tensor::from_vec(labels, rows, device)?,
            Targets::Dense(dense) => {
                Tensor::from_vec(dense, (rows, classes), device)?.to_dtype(batches.dtype())?
            }
        };
        Ok(Self {
            x,
            targets,
            x_scale,
            classes,
            rows,
            cuda_blocks: None,
        })
    }

    /// CUDA blocks per launch of the pass kernels, instead of the default
    /// (twice the multiprocessors; `None` restores it). Only the CUDA
    /// kernels use it; an error if zero.
    pub fn with_cuda_blocks(mut self, blocks: Option<usize>) -> Result<Self> {
        if blocks == Some(0) {
            return Err(ModelError::Spec(
                "cuda_blocks must be positive, got 0".into(),
            ));
        }
        self.cuda_blocks = blocks;
        Ok(self)
    }

    /// The CUDA block count set by [`Self::with_cuda_blocks`].
    pub fn cuda_blocks(&self) -> Option<usize> {
        self.cuda_blocks
    }

    fn grad_op(&self, bias: bool) -> SoftmaxGradOp {
        SoftmaxGradOp {
            classes: self.classes,
            bias,
            x_scale: self.x_scale,
            scale: 1.0 / self.rows as f64,
            cuda_blocks: self.cuda_blocks,
        }
    }
}

impl FusedProducts for FusedOps {
    /// The gradient op's pass with the gradient dropped: the loss-only pass
    /// of the CPU kernel has no op of its own, and on a GPU the gradient's
    /// extra work is cheap next to the read of `X`.
    fn loss_flat(&self, theta: &Tensor, bias: bool) -> Result<f64> {
        Ok(self.loss_and_grad_flat(theta, bias)?.0)
    }

    fn loss_and_grad_flat(&self, theta: &Tensor, bias: bool) -> Result<(f64, Tensor)> {
        let theta = theta.contiguous()?;
        let dim = theta.elem_count();
        let out = self
            .x
            .apply_op3_no_bwd(&self.targets, &theta, &self.grad_op(bias))?;
        let loss = out.get(dim)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok((loss, out.narrow(0, 0, dim)?))
    }

    fn probabilities_flat(&self, theta: &Tensor, bias: bool) -> Result<Tensor> {
        let op = SoftmaxProbsOp {
            classes: self.classes,
            bias,
            x_scale: self.x_scale,
            cuda_blocks: self.cuda_blocks,
        };
        Ok(self.x.apply_op2_no_bwd(&theta.contiguous()?, &op)?)
    }

    fn hvp_flat(&self, p: &Tensor, v: &Tensor, bias: bool) -> Result<Tensor> {
        let op = SoftmaxHvpOp {
            classes: self.classes,
            bias,
            x_scale: self.x_scale,
            scale: 1.0 / self.rows as f64,
            cuda_blocks: self.cuda_blocks,
        };
        Ok(self
            .x
            .apply_op3_no_bwd(&p.contiguous()?, &v.contiguous()?, &op)?)
    }

    fn describe(&self) -> String {
        let place = if self.x.device().is_cuda() {
            "cuda"
        } else {
            "cpu"
        };
        format!("fused ops {place}, X as {}", self.x.dtype().as_str())
    }
}
