//! What every solver here shares with argmin: the state type, the problem
//! inside argmin's wrapper, and the start and unpacking of a full-batch
//! state. A leaf: it knows no solver and no runner, so that solvers and the
//! runner can both depend on it without depending on each other.

use argmin::core::{IterState, Problem, State};
use candle_core::Tensor;
use hessfree_model::linop::vec;

use crate::argmin_params::Params;
use crate::error::{Result, SolverError};
use crate::problem::HfProblem;

/// argmin's state over a flat parameter vector; `H` is the Hessian slot
/// (the trust region keeps its curvature operator there, the others nothing).
pub type HfState<H = ()> = IterState<Params, Params, (), H, (), f64>;

/// The problem inside argmin's wrapper; every solver here needs it.
pub fn hf_problem(problem: &Problem<HfProblem>) -> Result<&HfProblem> {
    problem
        .problem
        .as_ref()
        .ok_or_else(|| SolverError::Argmin("the problem was taken out of argmin's wrapper".into()))
}

/// Starts a state-based solver: full loss and gradient at the initial point.
pub fn init_state<H>(
    problem: &mut Problem<HfProblem>,
    mut state: HfState<H>,
) -> Result<HfState<H>> {
    let w = state
        .take_param()
        .ok_or_else(|| SolverError::Argmin("no initial parameters".into()))?;
    let (f, g) = hf_problem(problem)?.loss_and_grad(&w.0)?;
    if !f.is_finite() || !vec::all_finite(&g)? {
        return Err(SolverError::Diverged(format!(
            "the objective or its gradient is not finite at the starting point (f = {f})"
        )));
    }
    Ok(state.param(w).gradient(Params(g)).cost(f))
}

/// Takes the point, gradient and cost out of a full-batch state.
pub fn take_point<H>(state: &mut HfState<H>) -> Result<(Tensor, Tensor, f64)> {
    let f = state.get_cost();
    let w = state
        .take_param()
        .ok_or_else(|| SolverError::Argmin("state lost its parameters".into()))?;
    let g = state
        .take_gradient()
        .ok_or_else(|| SolverError::Argmin("state lost its gradient".into()))?;
    Ok((w.0, g.0, f))
}

/// The device of the state's parameters, where a resumed solver puts its vectors.
pub fn param_device<H>(state: &HfState<H>) -> Result<candle_core::Device> {
    state
        .get_param()
        .map(|p| p.0.device().clone())
        .ok_or_else(|| SolverError::Argmin("no parameters to resume from".into()))
}
