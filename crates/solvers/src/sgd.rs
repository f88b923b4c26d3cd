//! Mini-batch SGD with optional momentum, as in the notebook: heavy-ball
//! `w ← w − lr·(μ·v + g_batch)`, or Nesterov's in PyTorch's form; batches
//! drawn like TF's `next_batch`, the rate optionally scheduled.

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
pub use crate::minibatch::SamplerFields;
use crate::minibatch::{BatchStep, next_step, restore_sampler, start_sampler, step_size_kv};
use crate::problem::HfProblem;
use crate::run::{Resumable, RunLabel};
use crate::schedule::LrSchedule;

/// The checkpoint name of this solver's state and runs.
const NAME: &str = "sgd";

/// SGD's settings, recorded with every run; the defaults are the notebook's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// The base rate `lr` (before any schedule); finite and positive.
    pub learning_rate: f64,
    /// Samples per mini-batch, at most the training set.
    pub batch_size: usize,
    /// Momentum `μ` in `[0, 1)`; 0 is plain SGD.
    pub momentum: f64,
    /// Seed of the mini-batch order; the same seed gives the same batches.
    pub seed: u64,
    /// Nesterov's momentum instead of heavy-ball (needs `momentum > 0`).
    /// Left out of the JSON when off, like `schedule` when constant, so
    /// the settings of runs made before these fields existed are unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nesterov: bool,
    /// The learning-rate schedule; left out of the JSON when constant.
    #[serde(default, skip_serializing_if = "LrSchedule::is_constant")]
    pub schedule: LrSchedule,
}

impl Default for SgdConfig {
    /// The notebook's settings: batch 100, learning rate 0.5, no momentum.
    fn default() -> Self {
        Self {
            learning_rate: 0.5,
            batch_size: 100,
            momentum: 0.0,
            seed: 0,
            nesterov: false,
            schedule: LrSchedule::constant(),
        }
    }
}

impl SgdConfig {
    /// Checks every setting, naming the bad one in a [`SolverError::Config`].
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(SolverError::Config(format!(
                "SGD learning rate must be finite and > 0, got {}",
                self.learning_rate
            )));
        }
        if self.batch_size == 0 {
            return Err(SolverError::Config(
                "SGD batch size must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(SolverError::Config(format!(
                "SGD momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(SolverError::Config(
                "SGD Nesterov momentum needs a momentum in (0, 1), got 0".into(),
            ));
        }
        self.schedule.validate("SGD", self.learning_rate)
    }
}

/// Mini-batch SGD as an argmin solver over an [`HfProblem`], one batch per
/// iteration.
pub struct Sgd {
    config: SgdConfig,
    sampler: Option<BatchSampler>,
    /// PyTorch's momentum buffer `μ·buf + g`, which both kinds of momentum keep.
    velocity: Option<Tensor>,
    /// Updates made, which the schedule is a function of.
    steps: u64,
}

impl Sgd {
    /// SGD with `config`, refused if [`SgdConfig::validate`] refuses it.
    pub fn new(config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            sampler: None,
            velocity: None,
            steps: 0,
        })
    }

    /// Where the sampler is in its epochs (for checkpoints).
    pub fn sampler_state(&self) -> Option<SamplerState> {
        self.sampler.as_ref().map(|s| s.state())
    }
}

impl Solver<HfProblem, HfState> for Sgd {
    fn name(&self) -> &str {
        "SGD"
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
            "SGD",
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
            "SGD",
            &self.config.schedule,
            self.config.learning_rate,
            self.steps,
        )?;
        let mu = self.config.momentum;
        let buf = match &self.velocity {
            Some(v) if mu > 0.0 => vec::axpy(&g, mu, v)?,
            _ => g.clone(),
        };
        let direction = if self.config.nesterov {
            vec::axpy(&g, mu, &buf)?
        } else {
            buf.clone()
        };
        let w_new = vec::axpy(&w, -lr, &direction)?;
        if mu > 0.0 {
            self.velocity = Some(buf);
        }
        self.steps += 1;
        let kv = step_size_kv(&self.config.schedule, lr);
        Ok((state.param(Params(w_new)).cost(loss), kv))
    }
}

/// SGD's state in a checkpoint: the sampler's position and the updates made
/// (the momentum buffer is the tensor `velocity`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdState {
    /// The sampler's position; `None` if the solver was never initialised.
    pub sampler: Option<SamplerFields>,
    /// Absent from checkpoints written before schedules, whose runs had no
    /// use for it; left out at 0 so that those files re-encode unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub steps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Resumable<HfState> for Sgd {
    fn label(&self) -> RunLabel {
        RunLabel::new(NAME, &self.config)
    }

    /// The state holds a mini-batch's loss, so the trace evaluates the full one.
    fn full_batch_state(&self) -> bool {
        false
    }

    fn save_state(&self, snap: &mut Snapshot) -> Result<SolverState> {
        if let Some(v) = &self.velocity {
            snap.put("velocity", v)?;
        }
        SolverState::new(
            NAME,
            &SgdState {
                sampler: self.sampler_state().map(Into::into),
                steps: self.steps,
            },
        )
    }

    /// The sampler continues where it was in its epoch (same permutation,
    /// same position), which is what makes the batches after a resume the
    /// same as without one.
    fn resume(
        &mut self,
        _problem: &mut Problem<HfProblem>,
        saved: &Snapshot,
        state: HfState,
    ) -> Result<HfState> {
        let SgdState { sampler, steps } = saved.solver_state(NAME)?;
        let device = param_device(&state)?;
        self.sampler = Some(restore_sampler(sampler, "SGD")?);
        self.velocity = saved.get("velocity", &device)?;
        self.steps = steps;
        Ok(state)
    }
}
