//! Solvers on top of hessfree's objectives and curvature operators, run
//! through argmin's `Executor`: damped Newton-CG (our own argmin solver),
//! trust-region Newton-CG (argmin's `TrustRegion` + `Steihaug`), L-BFGS,
//! SGD and dense Newton, with one trace format and one set of stopping rules.

pub mod baselines;
pub mod cg;
pub mod checkpoint;
pub mod dense_newton;
pub mod error;
pub mod experiment;
pub mod line_search;
pub mod newton_cg;
pub mod params;
pub mod problem;
pub mod run;
pub mod sgd;
pub mod stop;
pub mod trace;

pub use baselines::{LbfgsConfig, TrustRegionConfig};
pub use cg::{CgOptions, CgOutcome, CgStop, conjugate_gradient};
pub use checkpoint::{Snapshot, SolverState};
pub use dense_newton::{DenseNewton, DenseNewtonConfig};
pub use error::{Result, SolverError};
pub use experiment::{Experiment, ProblemSpec};
pub use newton_cg::{NewtonCg, NewtonCgConfig};
pub use params::Params;
pub use problem::{CurvatureOperator, HfProblem};
pub use run::{
    CheckpointSink, Checkpointing, Evaluator, Method, OnRecord, Resumable, RunOptions, RunOutput,
    run,
};
pub use sgd::{Sgd, SgdConfig};
pub use stop::{StopReason, StopRules};
pub use trace::{Counters, Counts, TraceRecord};
