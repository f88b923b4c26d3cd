//! What the mini-batch solvers (SGD, Adam) share: their batches from one
//! [`BatchSampler`], the sampler's place in a checkpoint, and the refusal of
//! a non-finite batch gradient, so that both draw the same batches from the
//! same seed and fail the same way.

use argmin::core::{KV, Problem};
use argmin::kv;
use candle_core::Tensor;
use hessfree_data::{BatchSampler, SamplerState};
use hessfree_model::linop::vec;
use serde::{Deserialize, Serialize};

use crate::argmin_glue::{HfState, hf_problem};
use crate::error::{Result, SolverError};
use crate::problem::HfProblem;
use crate::schedule::LrSchedule;

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

/// What one mini-batch update starts from: the parameters taken out of
/// argmin's state, the scheduled rate, and the next batch's loss and
/// gradient at them.
pub(crate) struct BatchStep {
    pub w: Tensor,
    pub lr: f64,
    pub loss: f64,
    pub g: Tensor,
}

/// The start of update `steps + 1` of the solver `who`: the rate from
/// `schedule`, then the next batch of `sampler`. A non-finite loss or
/// gradient is [`SolverError::Diverged`], naming the update and the rate it
/// was to be made with, so no NaN step is taken.
pub(crate) fn next_step(
    problem: &Problem<HfProblem>,
    state: &mut HfState,
    sampler: Option<&mut BatchSampler>,
    who: &str,
    schedule: &LrSchedule,
    base_lr: f64,
    steps: u64,
) -> Result<BatchStep> {
    let prob = hf_problem(problem)?;
    let w = state
        .take_param()
        .ok_or_else(|| SolverError::Argmin("state lost its parameters".into()))?
        .0;
    let sampler =
        sampler.ok_or_else(|| SolverError::Argmin(format!("{who} was not initialised")))?;
    let lr = schedule.lr(base_lr, steps);
    let step = steps + 1;
    let batch = sampler.next_batch();
    let (loss, g) = prob.minibatch_loss_and_grad(&w, &batch)?;
    if !loss.is_finite() || !vec::all_finite(&g)? {
        return Err(SolverError::Diverged(format!(
            "the mini-batch loss or gradient became non-finite (loss {loss}) at step {step}; \
             lower the learning rate ({lr})"
        )));
    }
    Ok(BatchStep { w, lr, loss, g })
}

/// The rate for the trace, only when a schedule changes it: a constant rate
/// is in the settings already, and leaving it out keeps the traces of
/// unscheduled runs as they were.
pub(crate) fn step_size_kv(schedule: &LrSchedule, lr: f64) -> Option<KV> {
    (!schedule.is_constant()).then(|| kv!("step_size" => lr;))
}
