//! A generic objective over any candle model, with curvature by double backward.
//!
//! Use it for models that have no hand-written R-operator: a closure of the
//! flat parameter vector ([`AutodiffObjective::new`]) or a candle-nn model
//! built from a `VarMap` ([`AutodiffObjective::from_varmap`]), with any
//! [`Loss`]. Products come from differentiating candle's own gradient graph,
//! which has limits this objective deals with:
//!
//! - Candle drops the graph of every gradient (`detach`) unless the
//!   environment variable `CANDLE_GRAD_DO_NOT_DETACH` was set when the thread
//!   doing the backward pass first ran one. So this module sets the
//!   variable once, and every backward pass here runs on a fresh thread: the
//!   products are right whatever the caller's environment and whatever its
//!   threads did before. A fresh thread costs
//!   tens of microseconds, against milliseconds for a product.
//! - Double backward is only as right as candle's backward rules are
//!   differentiable. Known to be wrong in candle: `max_pool2d`,
//!   `upsample_nearest2d`, and `conv1d` on the CPU. Candle's graph cannot be
//!   inspected from outside, so instead the first curvature operator of an
//!   objective is checked: one exact product on a few rows, in `f64`,
//!   against central differences of the gradient. A disagreement refuses
//!   the model with an error ([`ModelError::Unsupported`]) instead of
//!   returning silent garbage.
//! - Each Gauss-Newton product needs two backward passes (the "double
//!   vjp" trick for `J v`, since candle has no forward mode), so it costs
//!   roughly twice an exact product.

use std::collections::HashMap;
use std::sync::{Arc, Once, OnceLock};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{ModelError, Result};
use crate::linop::LinOp;
use crate::loss::{Loss, SoftmaxCrossEntropy, sum_f64};
use crate::objective::{Batches, CurvatureKind, Objective};
use crate::params::{ParamKind, ParamLayout};
use crate::regularizer::{Penalty, Regularizer};

/// `outputs = f(w, x)`: any differentiable candle function of the flat
/// parameter vector and an input chunk (the logits, for softmax
/// cross-entropy).
pub type LogitsFn = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + Send + Sync;

/// A model's loss, gradient and curvature by candle's autodiff.
pub struct AutodiffObjective {
    layout: ParamLayout,
    logits: Arc<LogitsFn>,
    loss: Arc<dyn Loss>,
    data: Batches,
    reg: Arc<Regularizer>,
    /// The outcome of the double-backward check, shared with subsamples.
    verified: Arc<OnceLock<std::result::Result<(), String>>>,
}

impl AutodiffObjective {
    /// `logits(w, x)` over `data`, softmax cross-entropy (see
    /// [`Self::with_loss`] for another loss).
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
            loss: Arc::new(SoftmaxCrossEntropy),
            data,
            reg: Arc::new(reg),
            verified: Arc::default(),
        })
    }

    /// The same objective with `loss` in place of softmax cross-entropy.
    pub fn with_loss(mut self, loss: Arc<dyn Loss>) -> Self {
        self.loss = loss;
        self
    }

    /// A candle-nn model: `build` makes it from a `VarBuilder` (the usual
    /// `fn model(vb: VarBuilder) -> Result<impl Module>`), once on `varmap`
    /// to create and initialise its variables, then at every evaluation on
    /// views of the flat parameter vector. Returns the objective and the
    /// initial flat parameters: `varmap`'s variables in name order, each
    /// flattened row-major (names ending in `bias` are biases, which an L2
    /// penalty skips). [`Self::store_into`] writes a solution back.
    pub fn from_varmap<M, F>(
        varmap: &VarMap,
        build: F,
        data: Batches,
        penalties: Vec<Penalty>,
    ) -> Result<(Self, Tensor)>
    where
        M: Module,
        F: Fn(VarBuilder) -> candle_core::Result<M> + Send + Sync + 'static,
    {
        let (dtype, device) = (data.dtype(), data.device().clone());
        build(VarBuilder::from_varmap(varmap, dtype, &device))?;
        let vars = sorted_vars(varmap);
        if vars.is_empty() {
            return Err(ModelError::Spec(
                "the VarMap holds no variables after building the model".into(),
            ));
        }
        let layout = ParamLayout::new(vars.iter().map(|(name, v)| {
            let kind = if name.ends_with("bias") {
                ParamKind::Bias
            } else {
                ParamKind::Weight
            };
            (name.clone(), v.dims().to_vec(), kind)
        }));
        let flat: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().to_dtype(dtype)?.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        let w0 = Tensor::cat(&flat, 0)?;
        let views = layout.clone();
        let logits = Arc::new(move |w: &Tensor, x: &Tensor| {
            let named = views
                .params()
                .iter()
                .map(|p| {
                    let t = w
                        .narrow(0, p.offset, p.len())?
                        .reshape(p.shape.as_slice())?;
                    Ok((p.name.clone(), t))
                })
                .collect::<candle_core::Result<HashMap<_, _>>>()?;
            build(VarBuilder::from_tensors(named, w.dtype(), w.device()))?.forward(x)
        });
        Ok((Self::new(layout, logits, data, penalties)?, w0))
    }

    /// Writes flat parameters (as [`Self::from_varmap`] lays them out) into
    /// `varmap`'s variables, so that the model built on it computes with them.
    pub fn store_into(&self, w: &Tensor, varmap: &VarMap) -> Result<()> {
        self.layout.check(w)?;
        for (name, var) in sorted_vars(varmap) {
            let block = self.layout.view(w, &name)?;
            var.set(&block.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// The loss this objective uses.
    pub fn loss_fn(&self) -> &dyn Loss {
        self.loss.as_ref()
    }

    fn var(&self, w: &Tensor) -> Result<Var> {
        self.layout.check(w)?;
        Ok(Var::from_tensor(&w.detach())?)
    }

    /// The summed loss over `data` and its gradient (unscaled).
    fn sum_and_grad(&self, data: &Batches, w: &Tensor) -> Result<(f64, Tensor)> {
        let var = self.var(w)?;
        on_grad_thread(|| {
            let mut total = 0.0;
            let mut grad = w.zeros_like()?;
            for (x, y) in data.chunks() {
                let l = self.loss.sum(&(self.logits)(var.as_tensor(), x)?, y)?;
                total += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if let Some(g) = l.backward()?.get(var.as_tensor()) {
                    grad = (grad + g.detach())?;
                }
            }
            Ok((total, grad))
        })
    }

    /// The data term's curvature over `data` at `w`, divided by `n`.
    fn data_curvature(
        &self,
        data: &Batches,
        w: &Tensor,
        kind: CurvatureKind,
        n: f64,
    ) -> Result<AutodiffCurvature> {
        let var = self.var(w)?;
        let chunks = on_grad_thread(|| {
            let mut chunks = Vec::with_capacity(data.chunks().len());
            for (x, y) in data.chunks() {
                let out = (self.logits)(var.as_tensor(), x)?;
                chunks.push(match kind {
                    CurvatureKind::Hessian => {
                        // Keep the gradient *with its graph*; each product
                        // differentiates it again.
                        let l = (self.loss.sum(&out, y)? / n)?;
                        let g = l
                            .backward()?
                            .get(var.as_tensor())
                            .ok_or_else(not_detached_error)?
                            .clone();
                        ChunkGraph::Hessian { grad: g }
                    }
                    CurvatureKind::GaussNewton => {
                        // Jᵀu as a function of a dummy cotangent u; J v = ∂(v·Jᵀu)/∂u.
                        let u = Var::zeros(out.shape(), out.dtype(), out.device())?;
                        let s = (u.as_tensor() * &out)?.sum_all()?;
                        let jt_u = s
                            .backward()?
                            .get(var.as_tensor())
                            .ok_or_else(not_detached_error)?
                            .clone();
                        let z = out.detach();
                        ChunkGraph::GaussNewton { out, z, u, jt_u }
                    }
                });
            }
            Ok(chunks)
        })?;
        Ok(AutodiffCurvature {
            var,
            chunks,
            loss: self.loss.clone(),
            rows: n,
            reg: None,
        })
    }

    /// One exact product on the first rows, in `f64`, against central
    /// differences of the gradient; an error if they disagree.
    fn verify_double_backward(&self, w: &Tensor) -> Result<()> {
        let rows = self.data.rows().min(VERIFY_ROWS);
        let (x, y) = first_rows(&self.data, rows)?;
        let sub = Batches::new(&x.to_dtype(DType::F64)?, &y.to_dtype(DType::F64)?, rows)?;
        let w = w.to_dtype(DType::F64)?;
        let dim = self.layout.len();
        let v: Vec<f64> = (0..dim).map(|i| ((i as f64 + 1.0) * 0.618).sin()).collect();
        let v = Tensor::from_vec(v, dim, w.device())?;
        let hv = self
            .data_curvature(&sub, &w, CurvatureKind::Hessian, 1.0)?
            .apply(&v)?;
        let scale = w.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
        let h = 1e-5 * scale;
        let (_, gp) = self.sum_and_grad(&sub, &(&w + (&v * h)?)?)?;
        let (_, gm) = self.sum_and_grad(&sub, &(&w - (&v * h)?)?)?;
        let fd = ((gp - gm)? / (2.0 * h))?;
        let norm =
            |t: &Tensor| -> Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
        let err = norm(&(&hv - &fd)?)? / norm(&fd)?.max(norm(&hv)?).max(1e-300);
        if err.is_finite() && err < VERIFY_TOLERANCE {
            Ok(())
        } else {
            Err(ModelError::Unsupported(format!(
                "candle's double backward gives a Hessian product that disagrees with finite \
                 differences of the gradient (relative error {err:.2e} on {rows} rows in f64, \
                 expected below {VERIFY_TOLERANCE:e}): some op of this model has a backward \
                 rule candle cannot differentiate (known: max_pool2d, upsample_nearest2d, \
                 conv1d on the CPU). Use ops with differentiable backward rules, or an \
                 objective with a hand-written R-operator"
            )))
        }
    }
}

/// Rows of the double-backward check.
const VERIFY_ROWS: usize = 32;
/// Central differences with a step of 1e-5 in f64 agree with an exact
/// product to about 1e-9; a wrong backward rule is off by far more.
const VERIFY_TOLERANCE: f64 = 1e-5;

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn first_rows(data: &Batches, rows: usize) -> Result<(Tensor, Tensor)> {
    let (mut xs, mut ys, mut left) = (Vec::new(), Vec::new(), rows);
    for (x, y) in data.chunks() {
        if left == 0 {
            break;
        }
        let take = left.min(x.dim(0)?);
        xs.push(x.narrow(0, 0, take)?);
        ys.push(y.narrow(0, 0, take)?);
        left -= take;
    }
    Ok((Tensor::cat(&xs, 0)?, Tensor::cat(&ys, 0)?))
}

/// Runs `f`, which does backward passes, on a fresh thread that keeps the
/// graphs of gradients (see the module docs).
fn on_grad_thread<R: Send>(f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // SAFETY: written once, before the first backward pass of any
        // objective here; candle reads it only at the start of each new
        // thread's first backward pass. Set whatever the caller had: "0"
        // would only make every product fail.
        unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    });
    std::thread::scope(|s| {
        s.spawn(f).join().unwrap_or_else(|_| {
            Err(ModelError::Unsupported(
                "a backward pass panicked inside candle".into(),
            ))
        })
    })
}

fn not_detached_error() -> ModelError {
    ModelError::Unsupported(
        "double backward found no path back to the parameters: candle detached the gradient \
         (something reset CANDLE_GRAD_DO_NOT_DETACH after this objective set it)"
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
            total += sum_f64(self.loss.as_ref(), &(self.logits)(w, x)?, y)?;
        }
        Ok(total / self.data.rows() as f64 + self.reg.value_and_grad(w)?.0)
    }

    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let n = self.data.rows() as f64;
        let (total, grad) = self.sum_and_grad(&self.data, w)?;
        let (penalty, pgrad) = self.reg.value_and_grad(w)?;
        Ok((total / n + penalty, (grad.affine(1.0 / n, 0.0)? + pgrad)?))
    }

    fn curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        self.verified
            .get_or_init(|| {
                self.verify_double_backward(w).map_err(|e| match e {
                    ModelError::Unsupported(m) => m,
                    other => other.to_string(),
                })
            })
            .clone()
            .map_err(ModelError::Unsupported)?;
        let n = self.data.rows() as f64;
        let mut op = self.data_curvature(&self.data, w, kind, n)?;
        op.reg = Some(self.reg.clone());
        Ok(Arc::new(op))
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
            loss: self.loss.clone(),
            data: self.data.select(indices)?,
            reg: self.reg.clone(),
            verified: self.verified.clone(),
        }))
    }
}

enum ChunkGraph {
    Hessian {
        grad: Tensor,
    },
    GaussNewton {
        /// The outputs with their graph, and detached.
        out: Tensor,
        z: Tensor,
        u: Var,
        jt_u: Tensor,
    },
}

/// The curvature of an [`AutodiffObjective`] at a fixed point.
pub struct AutodiffCurvature {
    var: Var,
    chunks: Vec<ChunkGraph>,
    loss: Arc<dyn Loss>,
    /// The divisor of the mean.
    rows: f64,
    /// The penalty's quadratic part, if any (none for the check's operator).
    reg: Option<Arc<Regularizer>>,
}

impl LinOp for AutodiffCurvature {
    fn dim(&self) -> usize {
        self.var.elem_count()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        let w = self.var.as_tensor();
        let acc = on_grad_thread(|| {
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
                    ChunkGraph::GaussNewton { out, z, u, jt_u } => {
                        let t = (jt_u * v)?.sum_all()?;
                        let jv = t
                            .backward()?
                            .get(u.as_tensor())
                            .ok_or_else(not_detached_error)?
                            .detach();
                        let hjv = self
                            .loss
                            .output_curvature(z, &jv)?
                            .affine(1.0 / self.rows, 0.0)?;
                        let s = (hjv * out)?.sum_all()?;
                        s.backward()?
                            .get(w)
                            .ok_or_else(not_detached_error)?
                            .detach()
                    }
                };
                acc = (acc + part)?;
            }
            Ok(acc)
        })?;
        match &self.reg {
            Some(reg) if !reg.is_empty() => Ok((acc + reg.apply_q(v)?)?),
            _ => Ok(acc),
        }
    }

    fn samples_per_apply(&self) -> usize {
        self.rows as usize
    }
}
