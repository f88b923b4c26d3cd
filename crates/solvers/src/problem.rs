//! The optimisation problem handed to argmin: a full-batch objective for
//! the loss and gradient, an objective for curvature (the same one, or a
//! fixed sub-sample of it), and shared cost counters.

use std::sync::Arc;

use argmin::core::{CostFunction, Gradient, Hessian};
use argmin_math::ArgminDot;
use candle_core::Tensor;
use hessfree_model::{CurvatureKind, LinOp, Objective};

use crate::argmin_params::Params;
use crate::error::{Result, SolverError};
use crate::trace::Counters;

/// What every solver here optimises: the full-batch objective for loss and gradient,
/// a curvature objective (possibly a sub-sample) for products, and the cost counters.
pub struct HfProblem {
    objective: Arc<dyn Objective>,
    curvature_objective: Arc<dyn Objective>,
    kind: CurvatureKind,
    counters: Arc<Counters>,
}

impl HfProblem {
    /// `curvature_objective` is usually `objective.subsample(...)` or `objective` itself.
    pub fn new(
        objective: Arc<dyn Objective>,
        curvature_objective: Arc<dyn Objective>,
        kind: CurvatureKind,
    ) -> Self {
        Self {
            objective,
            curvature_objective,
            kind,
            counters: Arc::new(Counters::default()),
        }
    }

    /// Full-batch curvature.
    pub fn full(objective: Arc<dyn Objective>, kind: CurvatureKind) -> Self {
        Self::new(objective.clone(), objective, kind)
    }

    /// The full-batch objective: loss, gradient and the trace.
    pub fn objective(&self) -> &Arc<dyn Objective> {
        &self.objective
    }

    /// The objective curvature products are taken on (a sub-sample, or the objective itself).
    pub fn curvature_objective(&self) -> &Arc<dyn Objective> {
        &self.curvature_objective
    }

    /// Which curvature the products are of.
    pub fn kind(&self) -> CurvatureKind {
        self.kind
    }

    /// The counters every evaluation and product of this problem adds to.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Training samples in the full batch, the unit of a data pass.
    pub fn num_samples(&self) -> usize {
        self.objective.num_samples()
    }

    /// The full-batch objective, counted as one loss evaluation.
    pub fn loss(&self, w: &Tensor) -> Result<f64> {
        self.counters.loss(self.objective.num_samples());
        Ok(self.objective.loss(w)?)
    }

    /// The full-batch objective and gradient, counted as one gradient evaluation.
    pub fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        self.counters.grad(self.objective.num_samples());
        Ok(self.objective.loss_and_grad(w)?)
    }

    /// The gradient of a mini-batch (rows `indices`), counted by its size.
    pub fn minibatch_loss_and_grad(&self, w: &Tensor, indices: &[usize]) -> Result<(f64, Tensor)> {
        self.counters.grad(indices.len());
        let batch = self.objective.subsample(indices)?;
        Ok(batch.loss_and_grad(w)?)
    }

    /// The training rows `indices` as a problem of their own that counts
    /// into these counters: `objective.subsample(indices)`, with its
    /// curvature on the same rows of the curvature objective (one
    /// sub-sample when the two are one objective; otherwise the curvature
    /// keeps its own dtype). Refused when the curvature objective is a fixed
    /// sub-sample, whose row numbers are not the training set's.
    pub fn rows(&self, indices: &[usize]) -> Result<HfProblem> {
        let n = self.objective.num_samples();
        let m = self.curvature_objective.num_samples();
        if m != n {
            return Err(SolverError::Config(format!(
                "rows of the {n} training samples were asked for, but the curvature objective \
                 is a fixed sub-sample of {m}"
            )));
        }
        let objective = self.objective.subsample(indices)?;
        let curvature_objective = if Arc::ptr_eq(&self.objective, &self.curvature_objective) {
            objective.clone()
        } else {
            self.curvature_objective.subsample(indices)?
        };
        Ok(HfProblem {
            objective,
            curvature_objective,
            kind: self.kind,
            counters: self.counters.clone(),
        })
    }

    /// The curvature operator at `w`; every product it makes is counted.
    pub fn curvature(&self, w: &Tensor) -> Result<CurvatureOperator> {
        self.counters.touch(self.curvature_objective.num_samples());
        let op = self.curvature_objective.curvature(w, self.kind)?;
        Ok(CurvatureOperator {
            op,
            counters: self.counters.clone(),
        })
    }

    /// The diagonal preconditioner estimate at `w` on the curvature sample.
    pub fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        self.counters.touch(self.curvature_objective.num_samples());
        Ok(self.curvature_objective.diag_curvature(w)?)
    }

    /// Raises (and clears) an error recorded inside a trait call that
    /// could not return it ([`crate::argmin_params::defer_error`]).
    pub fn take_deferred(&self) -> Result<()> {
        match crate::argmin_params::take_deferred_error() {
            Some(msg) => Err(SolverError::Argmin(msg)),
            None => Ok(()),
        }
    }
}

/// A curvature operator that counts into the problem's counters. Cheap to
/// clone (argmin's trust region clones its "Hessian" every iteration).
#[derive(Clone)]
pub struct CurvatureOperator {
    op: Arc<dyn LinOp>,
    counters: Arc<Counters>,
}

impl LinOp for CurvatureOperator {
    fn dim(&self) -> usize {
        self.op.dim()
    }

    fn apply(&self, v: &Tensor) -> hessfree_model::Result<Tensor> {
        self.counters.hvp(self.op.samples_per_apply());
        self.op.apply(v)
    }

    fn samples_per_apply(&self) -> usize {
        self.op.samples_per_apply()
    }
}

/// argmin sees the curvature as a "Hessian" whose `dot` is the HVP. `dot`
/// cannot fail, so an error is recorded (the run raises it after the
/// iteration) and NaNs are returned, which no solver accepts.
impl ArgminDot<Params, Params> for CurvatureOperator {
    fn dot(&self, v: &Params) -> Params {
        match self.apply(&v.0) {
            Ok(hv) => Params(hv),
            Err(e) => {
                crate::argmin_params::defer_error(format!("Hessian-vector product failed: {e}"));
                Params(v.0.affine(0.0, f64::NAN).unwrap_or_else(|_| v.0.clone()))
            }
        }
    }
}

fn boxed(e: SolverError) -> argmin::core::Error {
    e.into()
}

impl CostFunction for HfProblem {
    type Param = Params;
    type Output = f64;

    /// A non-finite loss becomes +∞, so every argmin solver treats the
    /// point as infinitely bad (the trust region then shrinks its radius)
    /// instead of comparing NaNs.
    fn cost(&self, p: &Params) -> Result<f64, argmin::core::Error> {
        let f = self.loss(&p.0).map_err(boxed)?;
        Ok(if f.is_finite() { f } else { f64::INFINITY })
    }
}

impl Gradient for HfProblem {
    type Param = Params;
    type Gradient = Params;

    fn gradient(&self, p: &Params) -> Result<Params, argmin::core::Error> {
        let (_, g) = self.loss_and_grad(&p.0).map_err(boxed)?;
        Ok(Params(g))
    }
}

impl Hessian for HfProblem {
    type Param = Params;
    type Hessian = CurvatureOperator;

    fn hessian(&self, p: &Params) -> Result<CurvatureOperator, argmin::core::Error> {
        self.curvature(&p.0).map_err(boxed)
    }
}
