//! hessfree: matrix-free second-order optimisation on candle.
//!
//! The crates, bottom up: [`data`] (MNIST-shaped IDX data), [`model`] (objectives, losses, curvature operators and the one
//! CG), [`solvers`] (Newton-CG, trust region, L-BFGS, SGD, dense Newton on
//! argmin, with traces, stop rules and checkpoints through one runner,
//! [`solvers::run_solver`], open to solvers of your own), [`analysis`]
//! (spectra, traces, ranks; it depends on `model` only) and [`report`]
//! (plots and tables; it knows no model or solver type). [`prelude`] holds what a model of your own
//! needs; `examples/` shows it end to end.
//!
//! Newton-CG with Gauss-Newton curvature on your own candle-nn model
//! (`examples/own_model_newton_cg.rs` runs this on MNIST):
//!
//! ```no_run
//! use hessfree::prelude::*;
//!
//! fn model(vb: VarBuilder) -> candle_core::Result<candle_nn::Sequential> {
//!     Ok(candle_nn::seq()
//!         .add(candle_nn::linear(784, 64, vb.pp("hidden"))?)
//!         .add_fn(|x| x.tanh())
//!         .add(candle_nn::linear(64, 10, vb.pp("out"))?))
//! }
//!
//! # fn main() -> anyhow::Result<()> {
//! # let (x, y) = (Tensor::zeros((8, 784), DType::F32, &Device::Cpu)?, Tensor::zeros((8, 10), DType::F32, &Device::Cpu)?);
//! let data = Batches::new(&x, &y, 10_000)?; // inputs [n, 784], one-hot targets [n, 10]
//! let varmap = VarMap::new();
//! let (objective, w0) = AutodiffObjective::from_varmap(&varmap, model, data, vec![])?;
//! let problem = HfProblem::full(Arc::new(objective), CurvatureKind::GaussNewton);
//! let out = run_solver(problem, NewtonCg::new(NewtonCgConfig::default())?, w0, RunOptions::default())?;
//! println!("loss {} after {} iterations", out.trace.last().unwrap().objective, out.trace.len());
//! # Ok(()) }
//! ```
pub use hessfree_analysis as analysis;
pub use hessfree_data as data;
pub use hessfree_model as model;
pub use hessfree_report as report;
pub use hessfree_solvers as solvers;

/// What a model of your own needs: data in batches, an objective with a
/// loss, curvature operators, the solvers and their runner, and the
/// spectrum tools; plus the candle types they take.
pub mod prelude {
    pub use std::sync::Arc;

    pub use candle_core::{DType, Device, Module, Tensor};
    pub use candle_nn::{VarBuilder, VarMap};

    pub use hessfree_analysis::{hutchinson_trace, lanczos};
    pub use hessfree_data::{MNIST_CLASSES, load_dir, resolve_data_dir};
    pub use hessfree_model::{
        AutodiffObjective, Batches, CurvatureKind, LinOp, Loss, Objective, Penalty,
        SigmoidCrossEntropy, SoftmaxCrossEntropy, SquaredError,
    };
    pub use hessfree_solvers::{
        HfProblem, NewtonCg, NewtonCgConfig, RunOptions, RunOutput, Sgd, SgdConfig, StopRules,
        TrustRegionConfig, run_solver,
    };
}
