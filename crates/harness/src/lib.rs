//! hessfree's experiments and the reports made from them, for `cargo xtask`
//! (not published): the layer above the library crates that turns names and
//! numbers on a command line into runs, and runs into files.
//!
//! - [`experiment`]: one problem on a data set ([`ProblemSpec`] →
//!   [`Experiment`]);
//! - [`method`]: the solvers by name ([`Method`]), the command line's table;
//! - [`compare`]: runs side by side, the comparison report's schema, its
//!   renderer and its check;
//! - [`hessian`]: the Hessian study, its schema, renderer and check;
//! - [`curvature_check`]: gradients and curvature products against finite
//!   differences, dense matrices and double backward;
//! - [`projection`]: a full HF run on a model too big to train here,
//!   projected from timed pieces and iterations;
//! - [`ranks`]: the processes of a data-parallel (MPI) job;
//! - [`scaling`]: the MPI scaling study, measured, modelled and projected;
//! - [`bench_report`]: the benchmark summary;
//! - [`provenance`]: where a report came from (CPU, revision, command).
//!
//! Every report here is a pure function of its committed data
//! (`summary.json`, `trace.csv`), so `--check` can regenerate and compare it
//! without rerunning an optimiser.

pub mod bench_report;
pub mod compare;
pub mod curvature_check;
pub mod experiment;
pub mod hessian;
pub mod method;
pub mod projection;
pub mod provenance;
pub mod ranks;
pub mod scaling;

pub use experiment::{Experiment, ProblemSpec};
pub use method::{Method, run};
