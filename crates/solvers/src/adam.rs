//! Adam (Kingma & Ba) on mini-batches, exactly as `torch.optim.Adam`
//! without amsgrad or weight decay, with PyTorch's defaults: the baseline
//! most second-order papers are compared against. Batches come from the
//! same sampler as SGD's, so both see the same data for the same seed.
//!
//! At update `t` (from 1) with batch gradient `g` and scheduled rate `lr_t`:
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, and
//! `w ← w − lr_t·m̂/(√v̂ + ε)` with `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.

use argmin::core::{KV, Problem, Solver};
use argmin::kv;
use candle_core::Tensor;
use hessfree_data::{BatchSampler, SamplerState};
use hessfree_model::linop::vec;
use serde::{Deserialize, Serialize};

use crate::argmin_glue::{HfState, param_device};
use crate::argmin_params::Params;
use crate::checkpoint::{Snapshot, SolverState};
use crate::error::{Result, SolverError};
use crate::minibatch::{
    BatchStep, SamplerFields, next_step, restore_sampler, start_sampler, step_size_kv,
};
use crate::problem::HfProblem;
use crate::run::{Resumable, RunLabel};
use crate::schedule::LrSchedule;

/// The checkpoint name of this solver's state and runs.
const NAME: &str = "adam";

/// Adam's settings, recorded with every run; the defaults are PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// The base rate `lr` (before any schedule); finite and positive.
    pub learning_rate: f64,
    /// Decay of the first-moment average `m`, in `[0, 1)`.
    pub beta1: f64,
    /// Decay of the second-moment average `v`, in `[0, 1)`.
    pub beta2: f64,
    /// Added to `√v̂` in the denominator; finite and positive.
    pub eps: f64,
    /// Samples per mini-batch, at most the training set.
    pub batch_size: usize,
    /// Seed of the mini-batch order; SGD with the same seed and batch size
    /// sees the same batches.
    pub seed: u64,
    /// Left out of the JSON when constant, as in [`crate::SgdConfig`].
    #[serde(default, skip_serializing_if = "LrSchedule::is_constant")]
    pub schedule: LrSchedule,
}

impl Default for AdamConfig {
    /// PyTorch's defaults, on SGD's default batch of 100.
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            batch_size: 100,
            seed: 0,
            schedule: LrSchedule::constant(),
        }
    }
}

impl AdamConfig {
    /// Checks every setting, naming the bad one in a [`SolverError::Config`].
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(SolverError::Config(format!(
                "Adam learning rate must be finite and > 0, got {}",
                self.learning_rate
            )));
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(SolverError::Config(format!(
                    "Adam {name} must be in [0, 1), got {beta}"
                )));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(SolverError::Config(format!(
                "Adam eps must be finite and > 0, got {}",
                self.eps
            )));
        }
        if self.batch_size == 0 {
            return Err(SolverError::Config(
                "Adam batch size must be at least 1".into(),
            ));
        }
        self.schedule.validate("Adam", self.learning_rate)
    }
}

/// Adam as an argmin solver over an [`HfProblem`], one mini-batch per iteration.
pub struct Adam {
    config: AdamConfig,
    sampler: Option<BatchSampler>,
    /// The first and second moments; `None` before the first update, when
    /// both are zero.
    moments: Option<(Tensor, Tensor)>,
    /// Updates made: `t − 1` during update `t`.
    steps: u64,
}

impl Adam {
    /// Adam with `config`, refused if [`AdamConfig::validate`] refuses it.
    pub fn new(config: AdamConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            sampler: None,
            moments: None,
            steps: 0,
        })
    }

    /// Where the sampler is in its epochs (for checkpoints).
    pub fn sampler_state(&self) -> Option<SamplerState> {
        self.sampler.as_ref().map(|s| s.state())
    }
}

impl Solver<HfProblem, HfState> for Adam {
    fn name(&self) -> &str {
        "Adam"
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        self.sampler = Some(start_sampler(
            problem,
            self.config.batch_size,
            self.config.seed,
            "Adam",
        )?);
        Ok((
            state,
            Some(kv!("learning_rate" => self.config.learning_rate;)),
        ))
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        mut state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        let BatchStep { w, lr, loss, g } = next_step(
            problem,
            &mut state,
            self.sampler.as_mut(),
            "Adam",
            &self.config.schedule,
            self.config.learning_rate,
            self.steps,
        )?;
        let AdamConfig {
            beta1, beta2, eps, ..
        } = self.config;
        let g2 = g.sqr()?;
        let (m, v) = match &self.moments {
            Some((m, v)) => (
                vec::axpy(&m.affine(beta1, 0.0)?, 1.0 - beta1, &g)?,
                vec::axpy(&v.affine(beta2, 0.0)?, 1.0 - beta2, &g2)?,
            ),
            // β·0 + (1−β)·x is (1−β)·x exactly: no zero tensors needed.
            None => (g.affine(1.0 - beta1, 0.0)?, g2.affine(1.0 - beta2, 0.0)?),
        };
        let t = self.steps + 1;
        // PyTorch's arrangement: the first correction folded into the step,
        // the second into the denominator, √v̂ + ε = √v/√(1−β₂ᵗ) + ε.
        let bias1 = 1.0 - beta1.powf(t as f64);
        let bias2 = 1.0 - beta2.powf(t as f64);
        let denom = v.sqrt()?.affine(1.0 / bias2.sqrt(), eps)?;
        let w_new = vec::axpy(&w, -lr / bias1, &(&m / &denom)?)?;
        self.moments = Some((m, v));
        self.steps = t;
        let kv = step_size_kv(&self.config.schedule, lr);
        Ok((state.param(Params(w_new)).cost(loss), kv))
    }
}

/// Adam's state in a checkpoint: the sampler's position and the updates made
/// (the moments are the tensors `first_moment` and `second_moment`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamState {
    /// The sampler's position; `None` if the solver was never initialised.
    pub sampler: Option<SamplerFields>,
    /// Updates made; the bias corrections and the schedule depend on it.
    pub steps: u64,
}

impl Resumable<HfState> for Adam {
    fn label(&self) -> RunLabel {
        RunLabel::new(NAME, &self.config)
    }

    /// The state holds a mini-batch's loss, so the trace evaluates the full one.
    fn full_batch_state(&self) -> bool {
        false
    }

    fn save_state(&self, snap: &mut Snapshot) -> Result<SolverState> {
        if let Some((m, v)) = &self.moments {
            snap.put("first_moment", m)?;
            snap.put("second_moment", v)?;
        }
        SolverState::new(
            NAME,
            &AdamState {
                sampler: self.sampler_state().map(Into::into),
                steps: self.steps,
            },
        )
    }

    /// The sampler continues where it was in its epoch and the step count
    /// where it was, so the batches, bias corrections and scheduled rates
    /// after a resume are those of an uninterrupted run.
    fn resume(
        &mut self,
        _problem: &mut Problem<HfProblem>,
        saved: &Snapshot,
        state: HfState,
    ) -> Result<HfState> {
        let AdamState { sampler, steps } = saved.solver_state(NAME)?;
        let device = param_device(&state)?;
        self.sampler = Some(restore_sampler(sampler, "Adam")?);
        self.moments = match (
            saved.get("first_moment", &device)?,
            saved.get("second_moment", &device)?,
        ) {
            (Some(m), Some(v)) => Some((m, v)),
            (None, None) if steps == 0 => None,
            _ => {
                return Err(SolverError::Config(format!(
                    "the Adam checkpoint after {steps} updates lacks its moments"
                )));
            }
        };
        self.steps = steps;
        Ok(state)
    }
}
