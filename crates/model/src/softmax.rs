//! Softmax regression with closed-form gradient and curvature products.
//!
//! With `Z = XW + b` and `P = softmax(Z)`, the loss is linear-then-CE, so the
//! Gauss-Newton matrix *is* the Hessian, and one product costs two thin
//! matrix products: `R = H_L(XV + v_b)`, then `XᵀR / n`.
//!
//! On the CPU these run by default in the fused kernel of [`crate::fused`]
//! (one pass over `X`, `X` kept as bytes when it is exactly `k/255`); on CUDA
//! in the same scheme's CUDA kernel, through the candle ops of
//! [`crate::fused_ops`]. [`SoftmaxKernel::Candle`] selects the candle
//! matmuls, which every device runs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::fused::{FusedProducts, FusedSoftmax, SimdLevel, XStorage, simd_level};
use crate::fused_ops::FusedOps;
use crate::linop::LinOp;
use crate::model::{Model, ModelSpec};
use crate::objective::{
    Batches, CurvatureKind, Objective, softmax_cross_entropy, softmax_curvature_product,
};
use crate::params::ParamLayout;
use crate::regularizer::{Penalty, Regularizer};

/// Which code computes the data term's loss, gradient and curvature products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxKernel {
    /// Candle matmuls over the batch's chunks, on any device.
    Candle,
    /// The fused CPU kernel ([`crate::fused`]) on host memory, storing `X`
    /// as `storage` says. CPU only.
    Fused(XStorage),
    /// The fused kernels as candle ops on the batch's device
    /// ([`crate::fused_ops`]): the CUDA kernel on a GPU (with the `cuda`
    /// feature), the CPU kernel on the CPU.
    FusedOps(XStorage),
}

impl SoftmaxKernel {
    /// `Fused(Auto)` on the CPU, `FusedOps(Auto)` on CUDA, `Candle`
    /// elsewhere: the fastest kernel each device has.
    pub fn default_for(device: &Device) -> Self {
        match device {
            Device::Cpu => Self::Fused(XStorage::Auto),
            Device::Cuda(_) => Self::FusedOps(XStorage::Auto),
            _ => Self::Candle,
        }
    }
}

/// Which family of kernels computes softmax regression's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelChoice {
    /// The fused kernel where the device has one (CPU, CUDA), else candle.
    #[default]
    Auto,
    /// The fused kernel; an error on a device that has none.
    Fused,
    /// Candle's matmuls.
    Candle,
}

impl KernelChoice {
    /// The names [`FromStr`](std::str::FromStr) accepts, for help and error messages.
    pub const CHOICES: &'static str = "auto, fused, candle";
}

impl std::str::FromStr for KernelChoice {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "fused" => Ok(Self::Fused),
            "candle" => Ok(Self::Candle),
            other => Err(ModelError::Spec(format!(
                "unknown kernel `{other}`; expected one of: {}",
                Self::CHOICES
            ))),
        }
    }
}

/// How softmax regression's products are computed. Every choice is made
/// here, by the caller, so that it can be recorded with the results; the
/// defaults pick the fastest path the device and CPU have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOptions {
    /// Which family of kernels; resolved per device by [`KernelOptions::kernel_for`].
    pub kernel: KernelChoice,
    /// How the fused kernel stores `X`.
    pub storage: XStorage,
    /// The fused CPU kernel's instruction set; `None`: the best the CPU has.
    pub simd: Option<SimdLevel>,
    /// Thread blocks of the CUDA kernels; `None`: twice the multiprocessors.
    /// Results repeat bit for bit for a given count.
    pub cuda_blocks: Option<usize>,
}

impl KernelOptions {
    /// The kernel these options select on `device`; `Fused` on a device
    /// without a fused kernel is refused.
    pub fn kernel_for(&self, device: &Device) -> Result<SoftmaxKernel> {
        let kernel = match (self.kernel, SoftmaxKernel::default_for(device)) {
            (KernelChoice::Candle, _) => SoftmaxKernel::Candle,
            (KernelChoice::Fused, SoftmaxKernel::Candle) => {
                return Err(ModelError::Unsupported(format!(
                    "the fused softmax kernel runs on the CPU and CUDA, not on {device:?}"
                )));
            }
            (_, SoftmaxKernel::Fused(_)) => SoftmaxKernel::Fused(self.storage),
            (_, SoftmaxKernel::FusedOps(_)) => SoftmaxKernel::FusedOps(self.storage),
            (KernelChoice::Auto, SoftmaxKernel::Candle) => SoftmaxKernel::Candle,
        };
        Ok(kernel)
    }
}

/// Softmax regression over a batch, `mean_i CE(softmax(x_i W (+ b)), y_i)`
/// plus penalties, with closed-form gradient and curvature products (its
/// Gauss-Newton matrix is its Hessian).
pub struct SoftmaxObjective {
    model: Model,
    data: Batches,
    reg: Arc<Regularizer>,
    kernel: SoftmaxKernel,
    /// The instruction set and CUDA block count the fused kernels run with.
    options: KernelOptions,
    /// Present unless `kernel` is `Candle`.
    fused: Option<Arc<dyn FusedProducts>>,
}

impl SoftmaxObjective {
    /// The objective with the default [`KernelOptions`].
    pub fn new(model: Model, data: Batches, penalties: Vec<Penalty>) -> Result<Self> {
        Self::with_options(model, data, penalties, &KernelOptions::default())
    }

    /// The objective with its kernel chosen by `options`. Errors unless
    /// `model` is softmax regression whose shapes fit `data`, on an invalid
    /// penalty, and when `options` ask for a kernel the device lacks.
    pub fn with_options(
        model: Model,
        data: Batches,
        penalties: Vec<Penalty>,
        options: &KernelOptions,
    ) -> Result<Self> {
        if !matches!(model.spec(), ModelSpec::Softmax { .. }) {
            return Err(ModelError::Spec(format!(
                "SoftmaxObjective needs a softmax model, got {}",
                model.spec()
            )));
        }
        check_shapes(&model, &data)?;
        let kernel = options.kernel_for(data.device())?;
        let reg = Regularizer::new(penalties, model.layout(), data.device(), data.dtype())?;
        Self {
            model,
            data,
            reg: Arc::new(reg),
            kernel: SoftmaxKernel::Candle,
            options: *options,
            fused: None,
        }
        .with_kernel(kernel)
    }

    /// The same objective computed by `kernel` (`Fused` needs the CPU;
    /// `FusedOps` a CPU, or CUDA with the `cuda` feature).
    pub fn with_kernel(mut self, kernel: SoftmaxKernel) -> Result<Self> {
        self.fused = match kernel {
            SoftmaxKernel::Candle => None,
            SoftmaxKernel::Fused(storage) => {
                let level = self.options.simd.unwrap_or_else(simd_level);
                Some(Arc::new(FusedSoftmax::from_batches_at(
                    &self.data, storage, level,
                )?))
            }
            SoftmaxKernel::FusedOps(storage) => Some(Arc::new(
                FusedOps::from_batches(&self.data, storage)?
                    .with_cuda_blocks(self.options.cuda_blocks)?,
            )),
        };
        self.kernel = kernel;
        Ok(self)
    }

    /// The kernel computing the data term.
    pub fn kernel(&self) -> SoftmaxKernel {
        self.kernel
    }

    /// The fused kernel's view of the batch, when a fused kernel is in use.
    pub fn fused(&self) -> Option<&Arc<dyn FusedProducts>> {
        self.fused.as_ref()
    }

    /// The softmax-regression model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The batch the objective averages over.
    pub fn data(&self) -> &Batches {
        &self.data
    }

    /// The penalties added to the data term.
    pub fn regularizer(&self) -> &Arc<Regularizer> {
        &self.reg
    }

    /// Weight matrix and optional bias views.
    fn wb(&self, w: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let mut layers = self.model.layers(w)?;
        Ok(layers.remove(0))
    }

    /// The softmax probabilities of every chunk at `w`.
    pub fn probabilities(&self, w: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(f) = &self.fused {
            let p = f.probabilities_flat(w, self.model.has_bias())?;
            return split_rows(&p, &self.data);
        }
        let (weight, bias) = self.wb(w)?;
        self.data
            .chunks()
            .iter()
            .map(|(x, y)| Ok(softmax_cross_entropy(&logits(x, &weight, bias.as_ref())?, y)?.1))
            .collect()
    }
}

/// Checks that the model and the batch agree on inputs, classes, device and dtype.
pub(crate) fn check_shapes(model: &Model, data: &Batches) -> Result<()> {
    if data.inputs() != model.inputs() || data.classes() != model.classes() {
        return Err(ModelError::Batch(format!(
            "the model takes {} inputs and {} classes, the batch has {} and {}",
            model.inputs(),
            model.classes(),
            data.inputs(),
            data.classes()
        )));
    }
    Ok(())
}

/// Splits `[rows, k]` into the batch's row chunks (views, no copy).
fn split_rows(p: &Tensor, data: &Batches) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(data.chunks().len());
    let mut start = 0;
    for (x, _) in data.chunks() {
        let rows = x.dim(0)?;
        out.push(p.narrow(0, start, rows)?);
        start += rows;
    }
    Ok(out)
}

fn logits(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let z = x.matmul(weight)?;
    Ok(match bias {
        Some(b) => z.broadcast_add(b)?,
        None => z,
    })
}

/// Packs per-layer weight/bias gradients into the flat layout.
fn pack(layout: &ParamLayout, gw: Tensor, gb: Option<Tensor>) -> Result<Tensor> {
    let mut parts = vec![gw];
    parts.extend(gb);
    layout.flatten(&parts)
}

impl Objective for SoftmaxObjective {
    fn layout(&self) -> &ParamLayout {
        self.model.layout()
    }

    fn device(&self) -> &Device {
        self.data.device()
    }

    fn dtype(&self) -> DType {
        self.data.dtype()
    }

    fn num_samples(&self) -> usize {
        self.data.rows()
    }

    fn loss(&self, w: &Tensor) -> Result<f64> {
        if let Some(f) = &self.fused {
            let (penalty, _) = self.reg.value_and_grad(w)?;
            return Ok(f.loss_flat(w, self.model.has_bias())? + penalty);
        }
        let (weight, bias) = self.wb(w)?;
        let mut total = 0.0;
        for (x, y) in self.data.chunks() {
            total += softmax_cross_entropy(&logits(x, &weight, bias.as_ref())?, y)?.0;
        }
        let (penalty, _) = self.reg.value_and_grad(w)?;
        Ok(total / self.data.rows() as f64 + penalty)
    }

    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        if let Some(f) = &self.fused {
            let (loss, grad) = f.loss_and_grad_flat(w, self.model.has_bias())?;
            let (penalty, pgrad) = self.reg.value_and_grad(w)?;
            return Ok((loss + penalty, (grad + pgrad)?));
        }
        let (weight, bias) = self.wb(w)?;
        let n = self.data.rows() as f64;
        let mut total = 0.0;
        let mut gw = weight.zeros_like()?;
        let mut gb = bias.as_ref().map(|b| b.zeros_like()).transpose()?;
        for (x, y) in self.data.chunks() {
            let (loss, p) = softmax_cross_entropy(&logits(x, &weight, bias.as_ref())?, y)?;
            total += loss;
            let r = (p - y)?;
            gw = (gw + x.t()?.matmul(&r)?)?;
            if let Some(g) = gb.as_mut() {
                *g = (&*g + r.sum(0)?)?;
            }
        }
        let grad = pack(self.layout(), gw, gb)?.affine(1.0 / n, 0.0)?;
        let (penalty, pgrad) = self.reg.value_and_grad(w)?;
        Ok((total / n + penalty, (grad + pgrad)?))
    }

    fn curvature(&self, w: &Tensor, _kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        // The model is linear in w, so the Hessian and the GGN coincide.
        let (fused, probabilities) = match &self.fused {
            Some(f) => {
                let p = f.probabilities_flat(w, self.model.has_bias())?;
                let chunks = split_rows(&p, &self.data)?;
                (Some((f.clone(), p)), chunks)
            }
            None => (None, self.probabilities(w)?),
        };
        let chunks = self
            .data
            .chunks()
            .iter()
            .zip(probabilities)
            .map(|((x, _), p)| (x.clone(), p))
            .collect();
        Ok(Arc::new(SoftmaxCurvature {
            layout: self.layout().clone(),
            bias: self.model.has_bias(),
            chunks,
            rows: self.data.rows(),
            reg: self.reg.clone(),
            fused,
        }))
    }

    /// The exact diagonal of the Gauss-Newton matrix (= Hessian here):
    /// `(X∘X)ᵀ (P∘(1−P)) / n` for the weights, plus the penalty's diagonal.
    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        let probabilities = self.probabilities(w)?;
        let mut dw: Option<Tensor> = None;
        let mut db: Option<Tensor> = None;
        for ((x, _), p) in self.data.chunks().iter().zip(probabilities) {
            let a = (&p * (1.0 - &p)?)?;
            let cw = x.sqr()?.t()?.matmul(&a)?;
            let cb = a.sum(0)?;
            dw = Some(match dw {
                None => cw,
                Some(d) => (d + cw)?,
            });
            db = Some(match db {
                None => cb,
                Some(d) => (d + cb)?,
            });
        }
        let (Some(dw), Some(db)) = (dw, db) else {
            return Err(ModelError::Batch("the batch is empty".into()));
        };
        let gb = self.model.has_bias().then_some(db);
        let diag = pack(self.layout(), dw, gb)?.affine(1.0 / self.data.rows() as f64, 0.0)?;
        Ok((diag + self.reg.diagonal()?)?)
    }

    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>> {
        let sub = Self {
            model: self.model.clone(),
            data: self.data.select(indices)?,
            reg: self.reg.clone(),
            kernel: SoftmaxKernel::Candle,
            options: self.options,
            fused: None,
        };
        Ok(Arc::new(sub.with_kernel(self.kernel)?))
    }

    fn kernel_name(&self) -> String {
        match &self.fused {
            Some(f) => format!("{}, {}", f.describe(), self.dtype().as_str()),
            None => format!("candle {}", self.dtype().as_str()),
        }
    }

    /// The closed form (block Gram matrices), far cheaper than `dim` products.
    fn dense_curvature(&self, w: &Tensor, _kind: CurvatureKind) -> Result<faer::Mat<f64>> {
        crate::dense::assemble_softmax_hessian(self, w)
    }
}

/// The softmax-regression Hessian at a fixed point, summed over row chunks.
pub struct SoftmaxCurvature {
    layout: ParamLayout,
    bias: bool,
    /// `(X_chunk, P_chunk)` pairs.
    chunks: Vec<(Tensor, Tensor)>,
    rows: usize,
    reg: Arc<Regularizer>,
    /// The fused kernel and the probabilities `[rows, k]`, when in use.
    fused: Option<(Arc<dyn FusedProducts>, Tensor)>,
}

impl SoftmaxCurvature {
    /// The chunks' inputs and probabilities, for fused kernels and dense assembly.
    pub fn chunks(&self) -> &[(Tensor, Tensor)] {
        &self.chunks
    }
}

impl LinOp for SoftmaxCurvature {
    fn dim(&self) -> usize {
        self.layout.len()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        if let Some((f, p)) = &self.fused {
            let hv = f.hvp_flat(p, v, self.bias)?;
            if self.reg.is_empty() {
                return Ok(hv);
            }
            return Ok((hv + self.reg.apply_q(v)?)?);
        }
        let vw = self.layout.view(v, "layer0.weight")?;
        let vb = if self.bias {
            Some(self.layout.view(v, "layer0.bias")?)
        } else {
            None
        };
        let mut hw = vw.zeros_like()?;
        let mut hb = vb.as_ref().map(|b| b.zeros_like()).transpose()?;
        for (x, p) in &self.chunks {
            let z = logits(x, &vw, vb.as_ref())?;
            let r = softmax_curvature_product(p, &z)?;
            hw = (hw + x.t()?.matmul(&r)?)?;
            if let Some(h) = hb.as_mut() {
                *h = (&*h + r.sum(0)?)?;
            }
        }
        let hv = pack(&self.layout, hw, hb)?.affine(1.0 / self.rows as f64, 0.0)?;
        if self.reg.is_empty() {
            return Ok(hv);
        }
        Ok((hv + self.reg.apply_q(v)?)?)
    }

    fn samples_per_apply(&self) -> usize {
        self.rows
    }
}
