//! hessfree's solvers by name, with their settings: the table the command
//! line chooses from. Every entry runs through [`run_solver`], as a solver
//! of a user's own would; adding a solver to the library needs no entry
//! here, only adding it to the command line does.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use hessfree_solvers::{
    Adam, AdamConfig, DenseNewton, DenseNewtonConfig, HfProblem, Kfac, KfacConfig, LbfgsConfig,
    NewtonCg, NewtonCgConfig, Result, RunOptions, RunOutput, Sgd, SgdConfig, TrustRegionConfig,
    run_solver,
};

/// Which optimiser to run, with its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    Sgd(SgdConfig),
    Adam(AdamConfig),
    Kfac(KfacConfig),
    NewtonCg(NewtonCgConfig),
    /// Newton-CG with [`NewtonCgConfig::martens`]'s settings (the entry
    /// holds them, so a report records what ran).
    Hf(NewtonCgConfig),
    TrustRegion(TrustRegionConfig),
    Lbfgs(LbfgsConfig),
    DenseNewton(DenseNewtonConfig),
}

impl Method {
    pub const CHOICES: &'static str =
        "sgd, adam, kfac, newton-cg, hf, trust-region, lbfgs, dense-newton";

    pub fn name(&self) -> &'static str {
        match self {
            Method::Sgd(_) => "sgd",
            Method::Adam(_) => "adam",
            Method::Kfac(_) => "kfac",
            Method::NewtonCg(_) => "newton-cg",
            Method::Hf(_) => "hf",
            Method::TrustRegion(_) => "trust-region",
            Method::Lbfgs(_) => "lbfgs",
            Method::DenseNewton(_) => "dense-newton",
        }
    }

    /// Checks the settings without running anything, so a harness can refuse
    /// a bad value before any work or output.
    pub fn validate(&self) -> Result<()> {
        match self {
            Method::Sgd(c) => c.validate(),
            Method::Adam(c) => c.validate(),
            Method::Kfac(c) => c.validate(),
            Method::NewtonCg(c) | Method::Hf(c) => c.validate(),
            Method::TrustRegion(c) => c.build().map(|_| ()),
            Method::Lbfgs(c) => c.build().map(|_| ()),
            Method::DenseNewton(c) => DenseNewton::new(c.clone()).map(|_| ()),
        }
    }

    /// Whether the method needs K-FAC's Kronecker factors (K-FAC itself, or
    /// Newton-CG preconditioned by them), which only dense layers have.
    pub fn uses_kfac(&self) -> bool {
        match self {
            Method::Kfac(_) => true,
            Method::NewtonCg(c) | Method::Hf(c) => c.kfac_preconditioner.is_some(),
            _ => false,
        }
    }

    /// Whether [`RunOptions::checkpoint`] and [`RunOptions::resume`] work for
    /// it, known before any solver is built (the solvers' own
    /// `Resumable::checkpointable` says the same).
    pub fn checkpointable(&self) -> bool {
        matches!(
            self,
            Method::Sgd(_)
                | Method::Adam(_)
                | Method::Kfac(_)
                | Method::NewtonCg(_)
                | Method::Hf(_)
                | Method::TrustRegion(_)
        )
    }
}

/// Runs `method` on `problem` from `w0`.
pub fn run(method: &Method, problem: HfProblem, w0: Tensor, opts: RunOptions) -> Result<RunOutput> {
    match method {
        Method::Sgd(c) => run_solver(problem, Sgd::new(c.clone())?, w0, opts),
        Method::Adam(c) => run_solver(problem, Adam::new(c.clone())?, w0, opts),
        Method::Kfac(c) => run_solver(problem, Kfac::new(c.clone())?, w0, opts),
        Method::NewtonCg(c) | Method::Hf(c) => {
            run_solver(problem, NewtonCg::new(c.clone())?, w0, opts)
        }
        Method::TrustRegion(c) => run_solver(problem, c.build()?, w0, opts),
        Method::Lbfgs(c) => run_solver(problem, c.build()?, w0, opts),
        Method::DenseNewton(c) => run_solver(problem, DenseNewton::new(c.clone())?, w0, opts),
    }
}
