//! argmin's own solvers configured for hessfree: trust-region Newton-CG
//! (Steihaug) and L-BFGS.

use argmin::core::{
    IterState, KV, Problem, Solver, State, TerminationReason, TerminationStatus, TrustRegionRadius,
};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use argmin::solver::trustregion::{Steihaug, TrustRegion};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SolverError};
use crate::params::Params;
use crate::problem::CurvatureOperator;

/// Trust-region Newton-CG settings.
///
/// Two limits of argmin 0.11 that shape these defaults:
/// - `TrustRegion` only enlarges the radius when `|‖p‖ − radius| ≤ 10·ε_f64`,
///   an exact-equality test that the rounding of `‖p‖` in f32 (and in f64 at
///   large radii) rarely passes. The radius then rarely grows beyond its
///   start, so the start is generous here.
/// - `Steihaug` treats its `epsilon` both as the relative CG tolerance and as
///   an *absolute* threshold on ‖g‖ below which it returns a zero step, so a
///   fixed epsilon stalls the trust region once ‖g‖ < epsilon, and it has no
///   forcing sequence. [`ForcedSteihaug`] replaces that test with
///   `‖r‖ ≤ min(cg_rel_tol, √‖g‖)·‖g‖`, the forcing Newton-CG uses too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustRegionConfig {
    pub initial_radius: f64,
    pub max_radius: f64,
    /// Steps with reduction ratio ρ ≤ eta are rejected.
    pub eta: f64,
    /// Steihaug's CG stops at ‖r‖ ≤ min(tol, √‖g‖)·‖g‖.
    pub cg_rel_tol: f64,
    pub cg_max_iters: u64,
}

impl Default for TrustRegionConfig {
    fn default() -> Self {
        Self {
            initial_radius: 10.0,
            max_radius: 1e4,
            eta: 0.125,
            cg_rel_tol: 0.5,
            cg_max_iters: 250,
        }
    }
}

pub type TrustRegionSolver = TrustRegion<ForcedSteihaug, f64>;

/// argmin's Steihaug CG with a forcing sequence: it stops once
/// `‖r‖ ≤ η‖g‖` with `η = min(cg_rel_tol, √‖g‖)` (see [`TrustRegionConfig`]).
/// Steihaug's own epsilon is set to the smallest positive number so that its
/// absolute test never fires; this wrapper makes the relative test instead,
/// from the `‖r‖²` Steihaug stores as the state's cost.
#[derive(Clone)]
pub struct ForcedSteihaug {
    rel_tol: f64,
    max_iters: u64,
    radius: f64,
    /// `η·‖g‖` for the current outer iteration.
    threshold: f64,
    inner: Steihaug<Params, f64>,
}

impl TrustRegionRadius<f64> for ForcedSteihaug {
    fn set_radius(&mut self, radius: f64) {
        self.radius = radius;
    }
}

type SubState = IterState<Params, Params, (), CurvatureOperator, (), f64>;

impl<O> Solver<O, SubState> for ForcedSteihaug
where
    Steihaug<Params, f64>: Solver<O, SubState>,
{
    fn name(&self) -> &str {
        "Steihaug"
    }

    fn init(
        &mut self,
        problem: &mut Problem<O>,
        state: SubState,
    ) -> Result<(SubState, Option<KV>), argmin::core::Error> {
        let g_norm = match state.get_gradient() {
            Some(g) => argmin_math::ArgminL2Norm::<f64>::l2_norm(g),
            None => f64::NAN,
        };
        self.threshold = self.rel_tol.min(g_norm.sqrt()) * g_norm;
        self.inner = Steihaug::new()
            .with_epsilon(f64::MIN_POSITIVE)?
            .with_max_iters(self.max_iters);
        self.inner.set_radius(self.radius);
        self.inner.init(problem, state)
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<O>,
        state: SubState,
    ) -> Result<(SubState, Option<KV>), argmin::core::Error> {
        self.inner.next_iter(problem, state)
    }

    fn terminate(&mut self, state: &SubState) -> TerminationStatus {
        let inner = self.inner.terminate(state);
        if inner.terminated() {
            return inner;
        }
        // Steihaug stores ‖r‖² as the cost after each step.
        if state.get_iter() > 0 && state.get_cost().sqrt() <= self.threshold {
            return TerminationStatus::Terminated(TerminationReason::SolverConverged);
        }
        TerminationStatus::NotTerminated
    }
}

impl TrustRegionConfig {
    pub fn build(&self) -> Result<TrustRegionSolver> {
        let argmin = |e: argmin::core::Error| SolverError::Config(format!("trust region: {e}"));
        if !(self.cg_rel_tol > 0.0 && self.cg_rel_tol < 1.0) {
            return Err(SolverError::Config(format!(
                "trust-region CG tolerance must be in (0, 1), got {}",
                self.cg_rel_tol
            )));
        }
        let steihaug = ForcedSteihaug {
            rel_tol: self.cg_rel_tol,
            max_iters: self.cg_max_iters,
            radius: self.initial_radius,
            threshold: 0.0,
            inner: Steihaug::new(),
        };
        TrustRegion::new(steihaug)
            .with_radius(self.initial_radius)
            .and_then(|t| t.with_max_radius(self.max_radius))
            .and_then(|t| t.with_eta(self.eta))
            .map_err(argmin)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbfgsConfig {
    pub memory: usize,
    /// L-BFGS's own convergence test on ‖g‖ (the shared `grad_tol` stops too).
    pub grad_tol: f64,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        Self {
            memory: 10,
            grad_tol: 1e-12,
        }
    }
}

pub type LbfgsSolver = LBFGS<MoreThuenteLineSearch<Params, Params, f64>, Params, Params, f64>;

impl LbfgsConfig {
    pub fn build(&self) -> Result<LbfgsSolver> {
        if self.memory == 0 {
            return Err(SolverError::Config(
                "L-BFGS memory must be at least 1".into(),
            ));
        }
        LBFGS::new(MoreThuenteLineSearch::new(), self.memory)
            .with_tolerance_grad(self.grad_tol)
            .and_then(|l| l.with_tolerance_cost(0.0))
            .map_err(|e| SolverError::Config(format!("L-BFGS: {e}")))
    }
}

/// Only for reading argmin's `TrustRegion` (whose `serde1` derive needs its
/// subproblem serialisable): the settings, not the per-iteration CG state,
/// which `init` rebuilds every outer iteration.
impl Serialize for ForcedSteihaug {
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ForcedSteihaug", 2)?;
        st.serialize_field("rel_tol", &self.rel_tol)?;
        st.serialize_field("max_iters", &self.max_iters)?;
        st.end()
    }
}

type TrState = IterState<Params, Params, (), CurvatureOperator, (), f64>;

/// argmin's `TrustRegion` carries the radius, `f(x_k)` and `m_k(0)` between
/// iterations; the last two always equal the state's cost. The radius is
/// private with no getter, hence the read through serde (`serde1`) and the
/// rebuild through `with_radius`.
impl crate::run::Resumable<TrState> for TrustRegionSolver {
    fn save_state(
        &self,
        _: &mut crate::checkpoint::Snapshot,
    ) -> Result<crate::checkpoint::SolverState> {
        let value = serde_json::to_value(self)
            .map_err(|e| SolverError::Config(format!("trust region state: {e}")))?;
        let radius = value
            .get("radius")
            .and_then(|r| r.as_f64())
            .ok_or_else(|| {
                SolverError::Config(format!("trust region has no finite radius: {value}"))
            })?;
        Ok(crate::checkpoint::SolverState::TrustRegion {
            radius_bits: radius.to_bits(),
        })
    }

    /// Sets the saved radius, then runs `TrustRegion::init` on the saved
    /// point, gradient and cost: it only rebuilds the curvature operator at
    /// that point (deterministic) and takes `f(x_k) = m_k(0) =` the cost.
    fn resume(
        &mut self,
        problem: &mut Problem<crate::problem::HfProblem>,
        saved: &crate::checkpoint::Snapshot,
        state: TrState,
    ) -> Result<TrState> {
        let Some(crate::checkpoint::SolverState::TrustRegion { radius_bits }) = saved.meta.solver
        else {
            return Err(SolverError::Config(
                "the checkpoint has no trust-region state".into(),
            ));
        };
        if state.get_gradient().is_none() {
            return Err(SolverError::Config("the checkpoint has no gradient".into()));
        }
        let placeholder = TrustRegionConfig::default().build()?;
        let tr = std::mem::replace(self, placeholder);
        *self = tr
            .with_radius(f64::from_bits(radius_bits))
            .map_err(|e| SolverError::Config(format!("trust region: {e}")))?;
        let (state, _) = self.init(problem, state)?;
        Ok(state)
    }
}
