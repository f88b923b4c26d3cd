//! Stopping rules shared by every solver, and why a run stopped.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Budgets and tolerances. `None` disables a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopRules {
    /// Stop when ‖∇f‖ ≤ this.
    pub grad_tol: Option<f64>,
    /// Stop when |f_prev − f| / max(|f|, 1) ≤ this after an accepted step.
    pub rel_decrease_tol: Option<f64>,
    /// Stop after this many outer iterations.
    pub max_iters: Option<u64>,
    /// Stop once the solver's own time reaches this many seconds.
    pub max_seconds: Option<f64>,
    /// Stop once this many curvature-vector products are spent.
    pub max_hvps: Option<u64>,
    /// Stop once this many gradients are evaluated.
    pub max_grad_evals: Option<u64>,
    /// Stop once the samples touched reach this many passes over the
    /// training set.
    pub max_data_passes: Option<f64>,
}

impl Default for StopRules {
    fn default() -> Self {
        Self {
            grad_tol: Some(1e-6),
            rel_decrease_tol: None,
            max_iters: Some(100),
            max_seconds: None,
            max_hvps: None,
            max_grad_evals: None,
            max_data_passes: None,
        }
    }
}

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `‖∇f‖` fell to [`StopRules::grad_tol`].
    GradientTolerance,
    /// The relative decrease fell to [`StopRules::rel_decrease_tol`].
    RelativeDecrease,
    /// [`StopRules::max_iters`] reached.
    MaxIterations,
    /// [`StopRules::max_seconds`] reached.
    WallTime,
    /// [`StopRules::max_hvps`] reached.
    HvpBudget,
    /// [`StopRules::max_grad_evals`] reached.
    GradientBudget,
    /// [`StopRules::max_data_passes`] reached.
    DataPassBudget,
    /// The solver itself declared convergence (e.g. L-BFGS's own tests).
    SolverConverged(String),
    /// The interrupt flag was set (Ctrl-C); the run can resume from its last checkpoint.
    Interrupted,
    /// The run failed; the message says why. Parameters are the last good ones.
    Failed(String),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GradientTolerance => f.write_str("gradient norm below tolerance"),
            Self::RelativeDecrease => f.write_str("relative objective decrease below tolerance"),
            Self::MaxIterations => f.write_str("maximum iterations"),
            Self::WallTime => f.write_str("wall-time budget"),
            Self::HvpBudget => f.write_str("HVP budget"),
            Self::GradientBudget => f.write_str("gradient-evaluation budget"),
            Self::DataPassBudget => f.write_str("data-pass budget"),
            Self::SolverConverged(why) => write!(f, "solver converged ({why})"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl StopReason {
    /// A short machine-friendly tag for tables and JSON consumers.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::GradientTolerance => "grad_tol",
            Self::RelativeDecrease => "rel_decrease",
            Self::MaxIterations => "max_iters",
            Self::WallTime => "max_time",
            Self::HvpBudget => "hvp_budget",
            Self::GradientBudget => "grad_budget",
            Self::DataPassBudget => "data_pass_budget",
            Self::SolverConverged(_) => "solver_converged",
            Self::Interrupted => "interrupted",
            Self::Failed(_) => "failed",
        }
    }
}
