//! argmin's L-BFGS with its More-Thuente line search, configured for
//! hessfree.

use argmin::core::{KV, Problem, Solver, TerminationStatus};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use serde::{Deserialize, Serialize};

use crate::argmin_glue::HfState;
use crate::argmin_params::Params;
use crate::checkpoint::{Snapshot, SolverState};
use crate::error::{Result, SolverError};
use crate::problem::HfProblem;
use crate::run::{Resumable, RunLabel, unsupported};

/// L-BFGS's settings, recorded with every run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LbfgsConfig {
    /// Correction pairs kept (the history length `m`); at least 1.
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

type Inner = LBFGS<MoreThuenteLineSearch<Params, Params, f64>, Params, Params, f64>;

/// argmin's L-BFGS with the settings it was built from, which a run's label
/// names (argmin's solver does not give them back).
pub struct Lbfgs {
    config: LbfgsConfig,
    inner: Inner,
}

impl LbfgsConfig {
    /// The solver, refused for a memory of 0 or a tolerance argmin rejects.
    pub fn build(&self) -> Result<Lbfgs> {
        if self.memory == 0 {
            return Err(SolverError::Config(
                "L-BFGS memory must be at least 1".into(),
            ));
        }
        let inner = LBFGS::new(MoreThuenteLineSearch::new(), self.memory)
            .with_tolerance_grad(self.grad_tol)
            .and_then(|l| l.with_tolerance_cost(0.0))
            .map_err(|e| SolverError::Config(format!("L-BFGS: {e}")))?;
        Ok(Lbfgs {
            config: self.clone(),
            inner,
        })
    }
}

impl Solver<HfProblem, HfState> for Lbfgs {
    fn name(&self) -> &str {
        Solver::<HfProblem, HfState>::name(&self.inner)
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        self.inner.init(problem, state)
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        self.inner.next_iter(problem, state)
    }

    fn terminate(&mut self, state: &HfState) -> TerminationStatus {
        Solver::<HfProblem, HfState>::terminate(&mut self.inner, state)
    }
}

/// argmin keeps L-BFGS's history private, so a run cannot be saved.
impl Resumable<HfState> for Lbfgs {
    fn label(&self) -> RunLabel {
        RunLabel::new("lbfgs", &self.config)
    }

    fn checkpointable(&self) -> bool {
        false
    }

    fn save_state(&self, _: &mut Snapshot) -> Result<SolverState> {
        Err(unsupported("L-BFGS"))
    }

    fn resume(&mut self, _: &mut Problem<HfProblem>, _: &Snapshot, _: HfState) -> Result<HfState> {
        Err(unsupported("L-BFGS"))
    }
}
