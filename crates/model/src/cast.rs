//! An objective computed in one dtype and used in another: mixed precision.
//!
//! Newton-CG needs its loss, gradient and line search in the precision of
//! the answer (`f64`), but the curvature products inside CG only have to be
//! good to CG's relative tolerance, which the forcing sequence keeps at
//! `min(0.5, √‖g‖)` and never below about 1e-4 before the outer loop stops.
//! `f32` products are good to about 1e-7 relative, far inside that, and cost
//! half as much memory traffic. [`CastObjective`] wraps an objective built in
//! the cheap dtype (usually `f32`) so that the solver sees `outer`-dtype
//! tensors everywhere; only the operands cross the boundary.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::linop::LinOp;
use crate::objective::{CurvatureKind, Objective};
use crate::params::ParamLayout;

/// `inner` (computing in its own dtype) seen as an objective in `outer`.
pub struct CastObjective {
    inner: Arc<dyn Objective>,
    outer: DType,
}

impl CastObjective {
    /// `inner` seen in `outer`; `inner` itself when it already is.
    pub fn wrap(inner: Arc<dyn Objective>, outer: DType) -> Arc<dyn Objective> {
        if inner.dtype() == outer {
            return inner;
        }
        Arc::new(Self { inner, outer })
    }

    fn down(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(self.inner.dtype())?)
    }

    fn up(&self, t: Tensor) -> Result<Tensor> {
        Ok(t.to_dtype(self.outer)?)
    }
}

impl Objective for CastObjective {
    fn layout(&self) -> &ParamLayout {
        self.inner.layout()
    }

    fn device(&self) -> &Device {
        self.inner.device()
    }

    fn dtype(&self) -> DType {
        self.outer
    }

    fn num_samples(&self) -> usize {
        self.inner.num_samples()
    }

    fn loss(&self, w: &Tensor) -> Result<f64> {
        self.inner.loss(&self.down(w)?)
    }

    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let (f, g) = self.inner.loss_and_grad(&self.down(w)?)?;
        Ok((f, self.up(g)?))
    }

    fn curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        Ok(Arc::new(CastOp {
            inner: self.inner.curvature(&self.down(w)?, kind)?,
            inner_dtype: self.inner.dtype(),
            outer: self.outer,
        }))
    }

    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        self.up(self.inner.diag_curvature(&self.down(w)?)?)
    }

    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>> {
        Ok(Self::wrap(self.inner.subsample(indices)?, self.outer))
    }

    fn dense_curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<faer::Mat<f64>> {
        self.inner.dense_curvature(&self.down(w)?, kind)
    }

    fn kronecker_factors(
        &self,
        w: &Tensor,
        targets: crate::kfac::FisherTargets,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<crate::kfac::KroneckerFactors> {
        self.inner.kronecker_factors(&self.down(w)?, targets, rng)
    }

    fn kernel_name(&self) -> String {
        format!(
            "{} (inside {})",
            self.inner.kernel_name(),
            self.outer.as_str()
        )
    }
}

/// A curvature operator of the inner dtype applied to outer-dtype vectors.
struct CastOp {
    inner: Arc<dyn LinOp>,
    inner_dtype: DType,
    outer: DType,
}

impl LinOp for CastOp {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        let hv = self.inner.apply(&v.to_dtype(self.inner_dtype)?)?;
        Ok(hv.to_dtype(self.outer)?)
    }

    fn samples_per_apply(&self) -> usize {
        self.inner.samples_per_apply()
    }
}
