//! Solvers on top of hessfree's objectives and curvature operators, run
//! through argmin's `Executor`: damped Newton-CG (our own argmin solver),
//! trust-region Newton-CG (argmin's `Steihaug` in a loop of our own), L-BFGS,
//! SGD, Adam, K-FAC and dense Newton, with one trace format and one set of stopping
//! rules.

#![warn(missing_docs)]

pub mod adam;
pub mod argmin_glue;
pub mod argmin_params;
pub mod checkpoint;
pub mod dense_newton;
pub mod error;
pub mod kfac;
pub mod lbfgs;
pub mod line_search;
pub mod minibatch;
pub mod newton_cg;
pub mod problem;
pub mod run;
pub mod schedule;
pub mod sgd;
pub mod stop;
pub mod trace;
pub mod trust_region;

pub use adam::{Adam, AdamConfig};
pub use argmin_glue::HfState;
pub use argmin_params::Params;
pub use checkpoint::{Snapshot, SolverState};
pub use dense_newton::{DenseNewton, DenseNewtonConfig};
pub use error::{Result, SolverError};
pub use kfac::{Kfac, KfacConfig};
pub use lbfgs::{Lbfgs, LbfgsConfig};
pub use newton_cg::{NewtonCg, NewtonCgConfig, RowBatches};
pub use problem::{CurvatureOperator, HfProblem};
pub use run::{
    CheckpointSink, Checkpointing, Evaluator, OnRecord, Resumable, RunLabel, RunOptions, RunOutput,
    run_solver,
};
pub use schedule::{Decay, LrSchedule};
pub use sgd::{Sgd, SgdConfig};
pub use stop::{StopReason, StopRules};
pub use trace::{Counters, Counts, Scores, TraceRecord};
pub use trust_region::{TrustRegionConfig, TrustRegionNewtonCg};
