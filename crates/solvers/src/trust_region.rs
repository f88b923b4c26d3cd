//! Trust-region Newton-CG: argmin's Steihaug CG for the subproblem, inside
//! an outer loop that is argmin's `TrustRegion`, step for step, but owned
//! here. argmin keeps the radius private with no getter, and a checkpoint
//! needs the radius after an iteration (what argmin reports in its `KV` is the
//! radius *used* by it); holding the loop's three scalars here is what lets
//! the run be saved and resumed without reading argmin's solver through serde.

use argmin::core::{
    Executor, IterState, KV, OptimizationResult, Problem, Solver, State, TerminationReason,
    TerminationStatus, TrustRegionRadius,
};
use argmin::kv;
use argmin::solver::trustregion::{Steihaug, reduction_ratio};
use argmin_math::{ArgminAdd, ArgminDot, ArgminL2Norm, ArgminWeightedDot};
use serde::{Deserialize, Serialize};

use crate::argmin_glue::HfState;
use crate::argmin_params::Params;
use crate::checkpoint::{Snapshot, SolverState};
use crate::error::{Result, SolverError};
use crate::problem::{CurvatureOperator, HfProblem};
use crate::run::{Resumable, RunLabel};

/// The checkpoint name of this solver's state and runs.
const NAME: &str = "trust-region";

/// Trust-region Newton-CG settings.
///
/// Two limits of argmin 0.11 that shape these defaults:
/// - `TrustRegion` only enlarges the radius when `|‖p‖ − radius| ≤ 10·ε_f64`,
///   an exact-equality test that the rounding of `‖p‖` in f32 (and in f64 at
///   large radii) rarely passes. The radius then rarely grows beyond its
///   start, so the start is generous here. ([`TrustRegionNewtonCg`] keeps
///   that rule, so that its runs are argmin's.)
/// - `Steihaug` treats its `epsilon` both as the relative CG tolerance and as
///   an *absolute* threshold on ‖g‖ below which it returns a zero step, so a
///   fixed epsilon stalls the trust region once ‖g‖ < epsilon, and it has no
///   forcing sequence. [`ForcedSteihaug`] replaces that test with
///   `‖r‖ ≤ min(cg_rel_tol, √‖g‖)·‖g‖`, the forcing Newton-CG uses too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustRegionConfig {
    /// The radius of the first step; positive.
    pub initial_radius: f64,
    /// The radius never grows beyond this; positive.
    pub max_radius: f64,
    /// Steps with reduction ratio ρ ≤ eta are rejected.
    pub eta: f64,
    /// Steihaug's CG stops at ‖r‖ ≤ min(tol, √‖g‖)·‖g‖.
    pub cg_rel_tol: f64,
    /// Steihaug's CG iterations per outer iteration, at most.
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

impl TrustRegionConfig {
    /// The solver, refused for a setting out of the ranges above.
    pub fn build(&self) -> Result<TrustRegionNewtonCg> {
        let bad = |what: &str| Err(SolverError::Config(format!("trust region: {what}")));
        if !(self.cg_rel_tol > 0.0 && self.cg_rel_tol < 1.0) {
            return Err(SolverError::Config(format!(
                "trust-region CG tolerance must be in (0, 1), got {}",
                self.cg_rel_tol
            )));
        }
        if self.initial_radius.is_nan() || self.initial_radius <= 0.0 {
            return bad(&format!("radius must be > 0, got {}", self.initial_radius));
        }
        if self.max_radius.is_nan() || self.max_radius <= 0.0 {
            return bad(&format!(
                "maximum radius must be > 0, got {}",
                self.max_radius
            ));
        }
        if self.initial_radius > self.max_radius {
            return bad(&format!(
                "radius {} exceeds the maximum radius {}",
                self.initial_radius, self.max_radius
            ));
        }
        if !(0.0..0.25).contains(&self.eta) {
            return bad(&format!("eta must be in [0, 1/4), got {}", self.eta));
        }
        Ok(TrustRegionNewtonCg {
            config: self.clone(),
            subproblem: ForcedSteihaug {
                rel_tol: self.cg_rel_tol,
                max_iters: self.cg_max_iters,
                radius: self.initial_radius,
                threshold: 0.0,
                inner: Steihaug::new(),
            },
            radius: self.initial_radius,
            fxk: f64::NAN,
            mk0: f64::NAN,
        })
    }
}

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

/// The trust region with Steihaug CG; see the module documentation for why
/// the outer loop is here rather than argmin's `TrustRegion`.
#[derive(Clone)]
pub struct TrustRegionNewtonCg {
    config: TrustRegionConfig,
    subproblem: ForcedSteihaug,
    /// The radius for the next iteration.
    radius: f64,
    /// `f(x_k)` and the model's value `m_k(0)`: both the state's cost after
    /// `init` and every iteration, so a resume rebuilds them from it.
    fxk: f64,
    mk0: f64,
}

impl TrustRegionNewtonCg {
    /// The radius the next iteration will use.
    pub fn radius(&self) -> f64 {
        self.radius
    }
}

type TrState = HfState<CurvatureOperator>;

fn missing(what: &str) -> argmin::core::Error {
    SolverError::Argmin(format!("trust region: the state has no {what}")).into()
}

impl Solver<HfProblem, TrState> for TrustRegionNewtonCg {
    fn name(&self) -> &str {
        "Trust region"
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        mut state: TrState,
    ) -> Result<(TrState, Option<KV>), argmin::core::Error> {
        let param = state.take_param().ok_or_else(|| missing("parameters"))?;
        let grad = match state.take_gradient() {
            Some(g) => g,
            None => problem.gradient(&param)?,
        };
        let hessian = match state.take_hessian() {
            Some(h) => h,
            None => problem.hessian(&param)?,
        };
        let cost = state.get_cost();
        self.fxk = if cost.is_infinite() && cost.is_sign_positive() {
            problem.cost(&param)?
        } else {
            cost
        };
        self.mk0 = self.fxk;
        Ok((
            state
                .param(param)
                .cost(self.fxk)
                .gradient(grad)
                .hessian(hessian),
            None,
        ))
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        mut state: TrState,
    ) -> Result<(TrState, Option<KV>), argmin::core::Error> {
        let param = state.take_param().ok_or_else(|| missing("parameters"))?;
        let grad = state.take_gradient().ok_or_else(|| missing("gradient"))?;
        let hessian = state.take_hessian().ok_or_else(|| missing("curvature"))?;
        self.subproblem.set_radius(self.radius);
        let inner = problem.take_problem().ok_or_else(|| missing("problem"))?;
        let OptimizationResult {
            problem: sub_problem,
            state: mut sub_state,
            ..
        } = Executor::new(inner, self.subproblem.clone())
            .configure(|config| {
                config
                    .param(param.clone())
                    .gradient(grad.clone())
                    .hessian(hessian.clone())
            })
            .ctrlc(false)
            .run()?;
        let pk = sub_state.take_param().ok_or_else(|| missing("CG step"))?;
        problem.consume_problem(sub_problem);

        let new_param = pk.add(&param);
        let fxkpk = problem.cost(&new_param)?;
        let mkpk = self.fxk + pk.dot(&grad) + 0.5 * pk.weighted_dot(&hessian, &pk);
        let rho = reduction_ratio(self.fxk, fxkpk, self.mk0, mkpk);
        let pk_norm = pk.l2_norm();
        let used = self.radius;
        self.radius = if rho < 0.25 {
            0.25 * pk_norm
        } else if rho > 0.75 && (pk_norm - self.radius).abs() <= 10.0 * f64::EPSILON {
            self.config.max_radius.min(2.0 * self.radius)
        } else {
            self.radius
        };
        let state = if rho > self.config.eta {
            self.fxk = fxkpk;
            self.mk0 = fxkpk;
            let grad = problem.gradient(&new_param)?;
            let hessian = problem.hessian(&new_param)?;
            state
                .param(new_param)
                .cost(fxkpk)
                .gradient(grad)
                .hessian(hessian)
        } else {
            state
                .param(param)
                .cost(self.fxk)
                .gradient(grad)
                .hessian(hessian)
        };
        Ok((state, Some(kv!("radius" => used;))))
    }
}

/// The trust region's state in a checkpoint: the radius as f64 bits (its
/// `f(x_k)` and `m_k(0)` equal the state's cost and are rebuilt from it).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrustRegionState {
    /// The radius for the next step, as `f64::to_bits`, so it resumes exactly.
    pub radius_bits: u64,
}

impl Resumable<TrState> for TrustRegionNewtonCg {
    fn label(&self) -> RunLabel {
        RunLabel::new(NAME, &self.config)
    }

    fn save_state(&self, _: &mut Snapshot) -> Result<SolverState> {
        SolverState::new(
            NAME,
            &TrustRegionState {
                radius_bits: self.radius.to_bits(),
            },
        )
    }

    /// Sets the saved radius, then runs `init` on the saved point, gradient
    /// and cost: it only rebuilds the curvature operator at that point
    /// (deterministic) and takes `f(x_k) = m_k(0) =` the cost.
    fn resume(
        &mut self,
        problem: &mut Problem<HfProblem>,
        saved: &Snapshot,
        state: TrState,
    ) -> Result<TrState> {
        let TrustRegionState { radius_bits } = saved.solver_state(NAME)?;
        if state.get_gradient().is_none() {
            return Err(SolverError::Config("the checkpoint has no gradient".into()));
        }
        self.radius = f64::from_bits(radius_bits);
        let (state, _) = self.init(problem, state)?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use argmin::core::{Executor, OptimizationResult, State};
    use candle_core::{Device, Tensor};
    use hessfree_model::{Batches, CurvatureKind, Model, ModelSpec, Penalty, SoftmaxObjective};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn problem() -> HfProblem {
        let (n, d, k) = (40, 6, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut x = vec![0f64; n * d];
        let mut y = vec![0f64; n * k];
        for i in 0..n {
            let c = rng.random_range(0..k);
            y[i * k + c] = 1.0;
            for j in 0..d {
                x[i * d + j] = rng.random_range(0.0..1.0) + if j % k == c { 0.5 } else { 0.0 };
            }
        }
        let x = Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(y, (n, k), &Device::Cpu).unwrap();
        let model = Model::new(ModelSpec::Softmax { bias: true }, d, k).unwrap();
        let obj = SoftmaxObjective::new(
            model,
            Batches::new(&x, &y, 16).unwrap(),
            vec![Penalty::L2 { lam: 1e-3 }],
        )
        .unwrap();
        HfProblem::full(Arc::new(obj), CurvatureKind::Hessian)
    }

    /// The loop here replaced argmin's `TrustRegion` with nothing else
    /// changed: from a radius small enough to grow and shrink, both take the
    /// same steps, bit for bit.
    #[test]
    fn the_loop_is_argmins_trust_region_step_for_step() {
        let config = TrustRegionConfig {
            initial_radius: 0.05,
            ..Default::default()
        };
        let ours = config.build().unwrap();
        let theirs = argmin::solver::trustregion::TrustRegion::new(ours.subproblem.clone())
            .with_radius(config.initial_radius)
            .and_then(|t| t.with_max_radius(config.max_radius))
            .and_then(|t| t.with_eta(config.eta))
            .unwrap();
        let w0 = Tensor::zeros(21, candle_core::DType::F64, &Device::Cpu).unwrap();
        let ours: OptimizationResult<_, _, TrState> = Executor::new(problem(), ours)
            .configure(|s| s.param(Params(w0.clone())).max_iters(12))
            .run()
            .unwrap();
        let theirs: OptimizationResult<_, _, TrState> = Executor::new(problem(), theirs)
            .configure(|s| s.param(Params(w0)).max_iters(12))
            .run()
            .unwrap();
        let bits = |s: &TrState| -> Vec<u64> {
            let w = &s.get_param().unwrap().0;
            w.to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&ours.state), bits(&theirs.state));
        assert_eq!(
            ours.state.get_cost().to_bits(),
            theirs.state.get_cost().to_bits()
        );
        assert_ne!(
            ours.solver.radius(),
            config.initial_radius,
            "the radius moved"
        );
    }
}
