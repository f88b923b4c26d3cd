//! Why hessfree has its own Newton-CG: argmin's `NewtonCG` compares the
//! *squared* CG residual with a tolerance meant for the residual, so once
//! ‖g‖ < 0.5 its inner CG stops after a single step and the "Newton" step is
//! a scaled steepest-descent step.

mod common;

use std::sync::Arc;

use argmin::core::{Executor, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::newton::NewtonCG;
use common::{Quadratic, t};
use hessfree_model::CurvatureKind;
use hessfree_solvers::{
    HfProblem, NewtonCg, NewtonCgConfig, Params, RunOptions, StopRules, run_solver,
};

#[test]
fn argmin_newton_cg_takes_a_gradient_step_where_newton_needs_two_cg_steps() -> anyhow::Result<()> {
    // f = ½ wᵀ diag(1, 100) w − bᵀw with ‖b‖ < 0.5; the minimiser is (0.1, 0.001).
    let q = Arc::new(Quadratic::new(&[1.0, 100.0], &[0.1, 0.1]));
    let xstar = q.minimiser();
    let problem = HfProblem::full(q.clone(), CurvatureKind::Hessian);
    let counters = problem.counters().clone();
    let solver: NewtonCG<MoreThuenteLineSearch<Params, Params, f64>, f64> =
        NewtonCG::new(MoreThuenteLineSearch::new());
    let res = Executor::new(problem, solver)
        .configure(|s| s.param(Params(t(&[0.0, 0.0]))).max_iters(1))
        .run()?;
    let w = res.state.get_best_param().unwrap().0.to_vec1::<f64>()?;
    let err = ((w[0] - xstar[0]).powi(2) + (w[1] - xstar[1]).powi(2)).sqrt();
    // argmin's CG spends one product on the initial residual (at x0 = 0),
    // then one per step plus one more to test curvature: 3 products = one
    // CG step. Then a line search: far from the Newton point, which two CG
    // steps reach exactly.
    assert_eq!(
        counters.snapshot().hvp_evals,
        3,
        "argmin's CG stopped after one step"
    );
    assert!(
        err > 1e-2,
        "argmin's Newton-CG step landed at {w:?}, error {err}"
    );

    // hessfree's Newton-CG, one outer iteration, gets the exact minimiser.
    let ours = run_solver(
        HfProblem::full(q, CurvatureKind::Hessian),
        NewtonCg::new(NewtonCgConfig {
            initial_damping: 1e-12,
            cg_rel_tol: Some(1e-12),
            ..Default::default()
        })?,
        t(&[0.0, 0.0]),
        RunOptions {
            stop: StopRules {
                max_iters: Some(1),
                grad_tol: None,
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    let w = ours.params.to_vec1::<f64>()?;
    assert!(
        (w[0] - xstar[0]).abs() < 1e-10 && (w[1] - xstar[1]).abs() < 1e-10,
        "{w:?}"
    );
    Ok(())
}
