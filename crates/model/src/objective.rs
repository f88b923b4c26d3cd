//! The [`Objective`] trait: what every solver needs from a model and its data.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result};
use crate::kfac::{FisherTargets, KroneckerFactors};
use crate::linop::LinOp;
use crate::params::ParamLayout;

/// Which curvature matrix a solver multiplies by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurvatureKind {
    /// The exact Hessian ∇²f (indefinite for non-convex models).
    Hessian,
    /// The generalised Gauss-Newton matrix Jᵀ H_L J (positive semi-definite).
    GaussNewton,
}

impl CurvatureKind {
    /// The names [`FromStr`] accepts, for help and error messages.
    pub const CHOICES: &'static str = "hessian, ggn";
}

impl FromStr for CurvatureKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hessian" => Ok(Self::Hessian),
            "ggn" | "gauss-newton" => Ok(Self::GaussNewton),
            other => Err(ModelError::Spec(format!(
                "unknown curvature `{other}`; expected one of: {}",
                Self::CHOICES
            ))),
        }
    }
}

impl fmt::Display for CurvatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hessian => "hessian",
            Self::GaussNewton => "ggn",
        })
    }
}

/// A smooth objective over a fixed batch of data, as a function of the flat
/// parameter vector: `f(w) = mean_i CE(model(w, x_i), y_i) + penalties(w)`.
pub trait Objective: Send + Sync {
    /// How the flat parameter vector splits into the model's tensors.
    fn layout(&self) -> &ParamLayout;
    /// The device every tensor of the objective lives on.
    fn device(&self) -> &Device;
    /// The dtype of the tensors the objective takes and returns.
    fn dtype(&self) -> DType;
    /// Samples in the batch; one gradient touches all of them.
    fn num_samples(&self) -> usize;

    /// `f(w)`: the mean loss over the batch plus the penalties.
    fn loss(&self, w: &Tensor) -> Result<f64>;
    /// `f(w)` and its gradient `∇f(w)`, computed together.
    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)>;

    /// The curvature at `w` as an operator. The forward quantities it needs
    /// (softmax probabilities, activations) are computed once here, so each
    /// of the many products CG asks for costs only the linear passes.
    fn curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<Arc<dyn LinOp>>;

    /// A cheap positive diagonal approximation of the curvature at `w`, for
    /// preconditioning CG.
    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor>;

    /// The same objective over a subset of this batch's rows (indices into
    /// `0..num_samples()`), for sub-sampled curvature.
    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>>;

    /// Length of the flat parameter vector.
    fn dim(&self) -> usize {
        self.layout().len()
    }

    /// One exact Hessian-vector product. Prefer [`Objective::curvature`]
    /// when several products at the same `w` are needed.
    fn hvp(&self, w: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.curvature(w, CurvatureKind::Hessian)?.apply(v)
    }

    /// The curvature at `w` as a dense matrix. The default applies the
    /// operator to every unit vector (`dim` products): fine for tiny models.
    /// Softmax regression overrides it with the closed form.
    fn dense_curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<faer::Mat<f64>> {
        let op = self.curvature(w, kind)?;
        crate::linop::assemble_dense(op.as_ref(), self.device(), self.dtype())
    }

    /// One generalised Gauss-Newton product `Jᵀ H_L J v`.
    fn ggn_vp(&self, w: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.curvature(w, CurvatureKind::GaussNewton)?.apply(v)
    }

    /// The code that computes the products, as recorded in reports: the
    /// same numbers come from the same kernel, dtype and instruction set.
    fn kernel_name(&self) -> String {
        format!("candle {}", self.dtype().as_str())
    }

    /// K-FAC's Kronecker factors of every layer at `w` over this batch
    /// ([`crate::kfac`]; `rng` draws Monte-Carlo targets). Only objectives
    /// made of dense layers have them; the others refuse, so that K-FAC
    /// can be refused before any work (ask on a one-row [`Self::subsample`]).
    fn kronecker_factors(
        &self,
        _w: &Tensor,
        _targets: FisherTargets,
        _rng: &mut ChaCha8Rng,
    ) -> Result<KroneckerFactors> {
        Err(ModelError::Unsupported(format!(
            "K-FAC factors the dense layers of MLPs and autoencoders (`mlp:...`, \
             `autoencoder:...`, built by MlpObjective); this objective ({}) is not one",
            self.kernel_name()
        )))
    }
}

/// A batch of inputs and targets held in row chunks, so that a product
/// over 60000 samples never builds one giant intermediate tensor: every
/// data term is a sum over chunks.
///
/// The targets are what the model's loss compares its outputs with: one-hot
/// label rows for a classifier (softmax cross-entropy), and the inputs
/// themselves, scaled to `[0, 1]`, for an autoencoder (sigmoid
/// cross-entropy); [`Batches::reconstruction`] builds the latter.
#[derive(Clone, Debug)]
pub struct Batches {
    chunks: Vec<(Tensor, Tensor)>,
    rows: usize,
    inputs: usize,
    classes: usize,
}

impl Batches {
    /// Rows per chunk used unless a caller says otherwise.
    pub const DEFAULT_CHUNK_ROWS: usize = 10_000;

    /// `x`: `[n, inputs]`, `y`: `[n, classes]` one-hot (or any probability rows).
    pub fn new(x: &Tensor, y: &Tensor, chunk_rows: usize) -> Result<Self> {
        let (n, inputs) = x.dims2()?;
        let (ny, classes) = y.dims2()?;
        if n != ny {
            return Err(ModelError::Batch(format!(
                "{n} input rows but {ny} target rows"
            )));
        }
        if n == 0 {
            return Err(ModelError::Batch("the batch is empty".into()));
        }
        if x.dtype() != y.dtype() {
            return Err(ModelError::Batch(format!(
                "inputs are {:?} but targets are {:?}",
                x.dtype(),
                y.dtype()
            )));
        }
        let chunk_rows = chunk_rows.max(1);
        let mut chunks = Vec::new();
        for start in (0..n).step_by(chunk_rows) {
            let len = chunk_rows.min(n - start);
            chunks.push((
                x.narrow(0, start, len)?.contiguous()?,
                y.narrow(0, start, len)?.contiguous()?,
            ));
        }
        Ok(Self {
            chunks,
            rows: n,
            inputs,
            classes,
        })
    }

    /// An autoencoder's batch: `x` `[n, inputs]` is both the inputs and the
    /// targets, which must lie in `[0, 1]` (pixels divided by 255) for
    /// sigmoid cross-entropy to be a loss bounded below. The targets share
    /// the inputs' storage.
    pub fn reconstruction(x: &Tensor, chunk_rows: usize) -> Result<Self> {
        let batches = Self::new(x, x, chunk_rows)?;
        let (lo, hi) = (
            x.min_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            x.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        );
        if !(lo >= 0.0 && hi <= 1.0) {
            return Err(ModelError::Batch(format!(
                "an autoencoder's inputs are its targets and must lie in [0, 1] (pixels / 255), got values in [{lo}, {hi}]"
            )));
        }
        Ok(batches)
    }

    /// Number of samples over all chunks; at least 1.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width, the columns of `x`.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Target width, the columns of `y`: the classes, or an autoencoder's inputs.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The `(x, y)` chunks in row order.
    pub fn chunks(&self) -> &[(Tensor, Tensor)] {
        &self.chunks
    }

    /// Rows in each chunk but the last, which may hold fewer.
    pub fn chunk_rows(&self) -> usize {
        self.chunks.first().map_or(1, |c| c.0.dim(0).unwrap_or(1))
    }

    /// The device the data lives on.
    pub fn device(&self) -> &Device {
        self.chunks[0].0.device()
    }

    /// The dtype of inputs and targets (they share one).
    pub fn dtype(&self) -> DType {
        self.chunks[0].0.dtype()
    }

    /// The rows at `indices` (global, in `0..rows()`), in the same chunking.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.rows) {
            return Err(ModelError::Batch(format!(
                "sub-sample index {bad} is out of range for {} rows",
                self.rows
            )));
        }
        let device = self.device();
        let chunk_rows = self.chunk_rows();
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for (c, (x, y)) in self.chunks.iter().enumerate() {
            let lo = c * chunk_rows;
            let local: Vec<u32> = indices
                .iter()
                .filter(|&&i| i >= lo && i < lo + x.dim(0).unwrap_or(0))
                .map(|&i| (i - lo) as u32)
                .collect();
            if local.is_empty() {
                continue;
            }
            let idx = Tensor::from_vec(local.clone(), local.len(), device)?;
            xs.push(x.index_select(&idx, 0)?);
            ys.push(y.index_select(&idx, 0)?);
        }
        if xs.is_empty() {
            return Err(ModelError::Batch("the sub-sample is empty".into()));
        }
        Self::new(&Tensor::cat(&xs, 0)?, &Tensor::cat(&ys, 0)?, chunk_rows)
    }
}

/// Summed (not averaged) softmax cross-entropy of a chunk, computed stably
/// with log-sum-exp, and the softmax probabilities.
pub fn softmax_cross_entropy(logits: &Tensor, y: &Tensor) -> Result<(f64, Tensor)> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_p = shifted.broadcast_sub(&lse)?;
    let loss = (y * &log_p)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok((-loss, log_p.exp()?))
}

/// The same loss as a differentiable candle scalar (for the autodiff path).
pub fn softmax_cross_entropy_tensor(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_p = shifted.broadcast_sub(&lse)?;
    Ok((y * &log_p)?.sum_all()?.neg()?)
}

/// `H_L z` for each row: the softmax cross-entropy Hessian `diag(p) − p pᵀ`
/// applied to `z`, i.e. `p ⊙ z − p ⊙ (p·z)`.
pub fn softmax_curvature_product(p: &Tensor, z: &Tensor) -> Result<Tensor> {
    let pz = (p * z)?;
    let s = pz.sum_keepdim(D::Minus1)?;
    Ok((pz - p.broadcast_mul(&s)?)?)
}
