//! Models, objectives and matrix-free curvature products on candle.
//!
//! The pieces, bottom up:
//! - [`ParamLayout`]: one flat parameter tensor with named views;
//! - [`Model`]: softmax regression, an MLP or a deep autoencoder, its logits,
//!   initialisations and natural loss;
//! - [`Regularizer`]: the L2 and Laplacian penalties, both quadratic forms;
//! - [`Objective`]: loss, gradient and curvature over a batch, implemented in
//!   closed form ([`SoftmaxObjective`]), by the R-operator ([`MlpObjective`])
//!   and by double backward for any candle model ([`AutodiffObjective`]);
//! - [`LinOp`]: the curvature as an operator that counts its own products;
//! - [`kfac`]: Kronecker-factored curvature of an MLP's dense layers and
//!   its damped inverse, as [`LinOp`]s;
//! - [`cg`]: preconditioned conjugate gradients on a [`LinOp`], the one CG
//!   that the solvers and the analysis both use.

#![warn(missing_docs)]

pub mod autodiff;
pub mod cast;
pub mod cg;
pub mod csr;
pub mod dense;
pub mod error;
pub mod fused;
#[cfg(feature = "cuda")]
mod fused_cuda;
pub mod fused_ops;
pub mod kfac;
pub mod linop;
pub mod loss;
pub mod mlp;
pub mod model;
pub mod objective;
pub mod params;
pub mod regularizer;
pub mod shard;
pub mod softmax;
pub mod weights;

use std::sync::Arc;

pub use autodiff::{AutodiffObjective, LogitsFn};
pub use cast::CastObjective;
pub use cg::{CgOptions, CgOutcome, CgStop, conjugate_gradient};
pub use error::{ModelError, Result};
pub use kfac::{
    FisherTargets, KfacEigen, Kronecker, KroneckerFactors, LayerFactors, ShiftedKroneckerInverse,
};
pub use linop::{Damped, Diagonal, LinOp, Sum};
pub use loss::{Loss, LossChoice, SigmoidCrossEntropy, SoftmaxCrossEntropy, SquaredError};
pub use mlp::MlpObjective;
pub use model::{Activation, Hidden, Init, Model, ModelSpec};
pub use objective::{Batches, CurvatureKind, Objective};
pub use params::{ParamKind, ParamLayout, ParamSpec};
pub use regularizer::{Penalty, Regularizer};
pub use shard::{Collective, CommCounts, CommStats, ShardedObjective, shard_range};
pub use softmax::{KernelChoice, KernelOptions, SoftmaxKernel, SoftmaxObjective};
pub use weights::{WEIGHTS_FILE, WeightsError, load_weights, load_weights_stored, save_weights};

/// Builds the objective that fits `model`: closed forms for softmax
/// regression, the R-operator for MLPs and autoencoders, each with its
/// [`Model::natural_loss`]; default kernels. An autoencoder's `data` must
/// hold its inputs as targets ([`Batches::reconstruction`]).
pub fn objective_for(
    model: &Model,
    data: Batches,
    penalties: Vec<Penalty>,
) -> Result<Arc<dyn Objective>> {
    objective_with(model, data, penalties, &KernelOptions::default())
}

/// [`objective_for`] with the kernels chosen by `kernels`. MLPs run on
/// candle's ops and take only `kernels.storage` (compressed rows for the
/// first layer, or not).
pub fn objective_with(
    model: &Model,
    data: Batches,
    penalties: Vec<Penalty>,
    kernels: &KernelOptions,
) -> Result<Arc<dyn Objective>> {
    objective_with_loss(model, data, penalties, kernels, None)
}

/// [`objective_with`] with the loss `loss` (checked by [`Model::loss`];
/// `None`: the model's natural loss).
pub fn objective_with_loss(
    model: &Model,
    data: Batches,
    penalties: Vec<Penalty>,
    kernels: &KernelOptions,
    loss: Option<LossChoice>,
) -> Result<Arc<dyn Objective>> {
    let loss = model.loss(loss)?;
    Ok(match model.spec() {
        ModelSpec::Softmax { .. } => Arc::new(SoftmaxObjective::with_options(
            model.clone(),
            data,
            penalties,
            kernels,
        )?),
        ModelSpec::Mlp { .. } | ModelSpec::Autoencoder { .. } => Arc::new(
            MlpObjective::with_storage(model.clone(), data, penalties, kernels.storage)?
                .with_loss(loss),
        ),
    })
}
