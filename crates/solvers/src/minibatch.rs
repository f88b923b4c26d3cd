//! What the mini-batch solvers (SGD, Adam) share: their batches from one
//! [`BatchSampler`], the sampler's place in a checkpoint, and the refusal of
//! a non-finite batch gradient, so that both draw the same batches from the
//! same seed and fail the same way.

use argmin::core::Problem;
use candle_core::Tensor;
use hessfree_data::{BatchSampler, SamplerState};
use hessfree_model::linop::vec;
use serde::{Deserialize, Serialize};

use crate::argmin_glue::hf_problem;
use crate::error::{Result, SolverError};
use crate::problem::HfProblem;

/// [`hessfree_data::SamplerState`] field by field (it has no serde derive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerFields {
    /// Samples drawn from: the training set's size.
    pub len: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Seed of the batch order.
    pub seed: u64,
    /// The epoch being drawn, counting from 0.
    pub epoch: u64,
    /// How far into the epoch's order the next batch starts.
    pub position: usize,
}

impl From<SamplerState> for SamplerFields {
    fn from(s: SamplerState) -> Self {
        Self {
            len: s.len,
            batch_size: s.batch_size,
            seed: s.seed,
            epoch: s.epoch,
            position: s.position,
        }
    }
}

impl From<SamplerFields> for SamplerState {
    fn from(s: SamplerFields) -> Self {
        Self {
            len: s.len,
            batch_size: s.batch_size,
            seed: s.seed,
            epoch: s.epoch,
            position: s.position,
        }
    }
}

/// A sampler at the start of epoch 0 over the problem's training samples;
/// a batch larger than the training set is refused naming the solver `who`.
pub(crate) fn start_sampler(
    problem: &Problem<HfProblem>,
    batch_size: usize,
    seed: u64,
    who: &str,
) -> Result<BatchSampler> {
    let n = hf_problem(problem)?.num_samples();
    if batch_size > n {
        return Err(SolverError::Config(format!(
            "{who} batch size {batch_size} exceeds the {n} training samples"
        )));
    }
    Ok(BatchSampler::new(n, batch_size, seed)?)
}

/// The sampler saved in a checkpoint by the solver `who`.
pub(crate) fn restore_sampler(saved: Option<SamplerFields>, who: &str) -> Result<BatchSampler> {
    let saved =
        saved.ok_or_else(|| SolverError::Config(format!("the checkpoint has no {who} sampler")))?;
    Ok(BatchSampler::restore(saved.into())?)
}

/// The loss and gradient of the next batch at `w`. A non-finite one is
/// [`SolverError::Diverged`], naming the update `step` (counting from 1)
/// and the rate `lr` it was to be made with, so no NaN step is taken.
pub(crate) fn next_batch_loss_and_grad(
    prob: &HfProblem,
    w: &Tensor,
    sampler: &mut BatchSampler,
    step: u64,
    lr: f64,
) -> Result<(f64, Tensor)> {
    let batch = sampler.next_batch();
    let (loss, g) = prob.minibatch_loss_and_grad(w, &batch)?;
    if !loss.is_finite() || !vec::all_finite(&g)? {
        return Err(SolverError::Diverged(format!(
            "the mini-batch loss or gradient became non-finite (loss {loss}) at step {step}; \
             lower the learning rate ({lr})"
        )));
    }
    Ok((loss, g))
}
