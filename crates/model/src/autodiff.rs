//! A generic objective over any candle model, with curvature by double backward.
//!
//! Use it for models that have no hand-written R-operator. Products come
//! from differentiating candle's own gradient graph, which has limits:
//!
//! - Candle detaches gradients from their graph unless the environment
//!   variable `CANDLE_GRAD_DO_NOT_DETACH` is set (to anything but `0`/`false`)
//!   before the calling thread's first backward pass. This workspace sets it
//!   for `cargo run`/`cargo test` in `.cargo/config.toml`. When it is missing,
//!   the first product fails with [`ModelError::Unsupported`] rather than
//!   returning zeros.
//! - Double backward is only as right as candle's backward rules are
//!   differentiable. Checked in this crate's tests against the R-operator and
//!   finite differences: `matmul`, `broadcast_add/sub/mul`, `add/sub/mul/div`,
//!   `affine`, `exp`, `log`, `tanh`, `sqr`, `neg`, `recip`, `sum`/`sum_keepdim`,
//!   `narrow`, `reshape`, `t`/`transpose`, `relu` (second derivative 0).
//!   Known to be silently wrong in candle: `max_pool2d`, `upsample_nearest2d`,
//!   and `conv1d` on the CPU. Do not use them with this objective.
//! - Each Gauss-Newton product needs two backward passes (the "double
//!   vjp" trick for `J v`, since candle has no forward mode), so it costs
//!   roughly twice an exact product by the R-operator.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{ModelError, Result};
use crate::linop::{Counter, LinOp};
use crate::objective::{
    Batches, CurvatureKind, Objective, softmax_cross_entropy_tensor, softmax_curvature_product,
};
use crate::params::ParamLayout;
use crate::regularizer::{Penalty, Regularizer};

/// `logits = f(w, x)`: any differentiable candle function of the flat
/// parameter vector and an input chunk.
pub type LogitsFn = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

pub struct AutodiffObjective {
    layout: ParamLayout,
    logits: Arc<LogitsFn>,
    data: Batches,
    reg: Arc<Regularizer>,
}

impl AutodiffObjective {
    pub fn new(
        layout: ParamLayout,
        logits: Arc<LogitsFn>,
        data: Batches,
        penalties: Vec<Penalty>,
    ) -> Result<Self> {
        let reg = Regularizer::new(penalties, &layout, data.device(), data.dtype())?;
        Ok(Self {
            layout,
            logits,
            data,
            reg: Arc::new(reg),
        })
    }

    fn var(&self, w: &Tensor) -> Result<Var> {
        self.layout.check(w)?;
        Ok(Var::from_tensor(&w.detach())?)
    }
}

fn not_detached_error() -> ModelError {
    ModelError::Unsupported(
        "double backward found no path back to the parameters: candle detached the gradient. \
         Set CANDLE_GRAD_DO_NOT_DETACH=1 before the first backward pass of this thread \
         (cargo run/test in this workspace do so through .cargo/config.toml)"
            .into(),
    )
}

impl Objective for AutodiffObjective {
    fn layout(&self) -> &ParamLayout {
        &self.layout
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
        let mut total = 0.0;
        for (x, y) in self.data.chunks() {
            let l = softmax_cross_entropy_tensor(&(self.logits)(w, x)?, y)?;
            total += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(total / self.data.rows() as f64 + self.reg.value_and_grad(w)?.0)
    }

    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let var = self.var(w)?;
        let n = self.data.rows() as f64;
        let mut total = 0.0;
        let mut grad = w.zeros_like()?;
        for (x, y) in self.data.chunks() {
            let l = softmax_cross_entropy_tensor(&(self.logits)(var.as_tensor(), x)?, y)?;
            total += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let grads = l.backward()?;
            if let Some(g) = grads.get(var.as_tensor()) {
                grad = (grad + g.detach())?;
            }
        }
        let (penalty, pgrad) = self.reg.value_and_grad(w)?;
        Ok((total / n + penalty, (grad.affine(1.0 / n, 0.0)? + pgrad)?))
    }

    fn curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        let var = self.var(w)?;
        let n = self.data.rows() as f64;
        let mut chunks = Vec::with_capacity(self.data.chunks().len());
        for (x, y) in self.data.chunks() {
            let logits = (self.logits)(var.as_tensor(), x)?;
            let cache = match kind {
                CurvatureKind::Hessian => {
                    // Keep the gradient *with its graph*; each product differentiates it again.
                    let l = (softmax_cross_entropy_tensor(&logits, y)? / n)?;
                    let grads = l.backward()?;
                    let g = grads
                        .get(var.as_tensor())
                        .ok_or_else(not_detached_error)?
                        .clone();
                    ChunkGraph::Hessian { grad: g }
                }
                CurvatureKind::GaussNewton => {
                    // Jᵀu as a function of a dummy cotangent u; J v = ∂(v·Jᵀu)/∂u.
                    let u = Var::zeros(logits.shape(), logits.dtype(), logits.device())?;
                    let s = (u.as_tensor() * &logits)?.sum_all()?;
                    let jt_u = s
                        .backward()?
                        .get(var.as_tensor())
                        .ok_or_else(not_detached_error)?
                        .clone();
                    let p = candle_nn::ops::softmax_last_dim(&logits.detach())?;
                    ChunkGraph::GaussNewton { logits, u, jt_u, p }
                }
            };
            chunks.push(cache);
        }
        Ok(Arc::new(AutodiffCurvature {
            var,
            chunks,
            rows: self.data.rows(),
            reg: self.reg.clone(),
            counter: Counter::default(),
        }))
    }

    /// The Hessian's diagonal is not available from double backward without
    /// `dim` products, so this returns the penalty's diagonal plus the
    /// squared gradient scaled by `n` (a one-sample empirical Fisher bound).
    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        let (_, g) = self.loss_and_grad(w)?;
        let fisher = g.sqr()?.affine(self.data.rows() as f64, 0.0)?;
        Ok((fisher + self.reg.diagonal()?)?)
    }

    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>> {
        Ok(Arc::new(Self {
            layout: self.layout.clone(),
            logits: self.logits.clone(),
            data: self.data.select(indices)?,
            reg: self.reg.clone(),
        }))
    }
}

enum ChunkGraph {
    Hessian {
        grad: Tensor,
    },
    GaussNewton {
        logits: Tensor,
        u: Var,
        jt_u: Tensor,
        p: Tensor,
    },
}

pub struct AutodiffCurvature {
    var: Var,
    chunks: Vec<ChunkGraph>,
    rows: usize,
    reg: Arc<Regularizer>,
    counter: Counter,
}

impl LinOp for AutodiffCurvature {
    fn dim(&self) -> usize {
        self.var.elem_count()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        self.counter.tick();
        let w = self.var.as_tensor();
        let mut acc = v.zeros_like()?;
        for chunk in &self.chunks {
            let part = match chunk {
                ChunkGraph::Hessian { grad } => {
                    let gv = (grad * v)?.sum_all()?;
                    gv.backward()?
                        .get(w)
                        .ok_or_else(not_detached_error)?
                        .detach()
                }
                ChunkGraph::GaussNewton { logits, u, jt_u, p } => {
                    let t = (jt_u * v)?.sum_all()?;
                    let jv = t
                        .backward()?
                        .get(u.as_tensor())
                        .ok_or_else(not_detached_error)?
                        .detach();
                    let hjv =
                        softmax_curvature_product(p, &jv)?.affine(1.0 / self.rows as f64, 0.0)?;
                    let s = (hjv * logits)?.sum_all()?;
                    s.backward()?
                        .get(w)
                        .ok_or_else(not_detached_error)?
                        .detach()
                }
            };
            acc = (acc + part)?;
        }
        if self.reg.is_empty() {
            return Ok(acc);
        }
        Ok((acc + self.reg.apply_q(v)?)?)
    }

    fn samples_per_apply(&self) -> usize {
        self.rows
    }

    fn applications(&self) -> usize {
        self.counter.get()
    }
}
