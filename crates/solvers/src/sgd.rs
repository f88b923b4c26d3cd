//! Mini-batch SGD with optional (heavy-ball) momentum, as in the notebook:
//! `w ← w − lr·(μ·v + g_batch)`, batches drawn like TF's `next_batch`.

use argmin::core::{KV, Problem, Solver, State};
use argmin::kv;
use candle_core::Tensor;
use hessfree_data::{BatchSampler, SamplerState};
use hessfree_model::linop::vec;
use serde::{Deserialize, Serialize};

use crate::argmin_glue::{HfState, hf_problem, param_device};
use crate::checkpoint::{Snapshot, SolverState};
use crate::error::{Result, SolverError};
use crate::params::Params;
use crate::problem::HfProblem;
use crate::run::{Resumable, RunLabel};

/// The checkpoint name of this solver's state and runs.
const NAME: &str = "sgd";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub learning_rate: f64,
    pub batch_size: usize,
    pub momentum: f64,
    pub seed: u64,
}

impl Default for SgdConfig {
    /// The notebook's settings: batch 100, learning rate 0.5, no momentum.
    fn default() -> Self {
        Self {
            learning_rate: 0.5,
            batch_size: 100,
            momentum: 0.0,
            seed: 0,
        }
    }
}

impl SgdConfig {
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
        Ok(())
    }
}

pub struct Sgd {
    config: SgdConfig,
    sampler: Option<BatchSampler>,
    velocity: Option<Tensor>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            sampler: None,
            velocity: None,
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
        let n = hf_problem(problem)?.num_samples();
        if self.config.batch_size > n {
            return Err(SolverError::Config(format!(
                "SGD batch size {} exceeds the {n} training samples",
                self.config.batch_size
            ))
            .into());
        }
        self.sampler = Some(
            BatchSampler::new(n, self.config.batch_size, self.config.seed)
                .map_err(SolverError::from)?,
        );
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
        let prob = hf_problem(problem)?;
        let w = state
            .take_param()
            .ok_or_else(|| SolverError::Argmin("state lost its parameters".into()))?
            .0;
        let sampler = self
            .sampler
            .as_mut()
            .ok_or_else(|| SolverError::Argmin("SGD was not initialised".into()))?;
        let batch = sampler.next_batch();
        let (loss, g) = prob.minibatch_loss_and_grad(&w, &batch)?;
        if !loss.is_finite() || !vec::all_finite(&g)? {
            return Err(SolverError::Diverged(format!(
                "the mini-batch loss or gradient became non-finite (loss {loss}) at step {}; \
                 lower the learning rate ({})",
                state.get_iter() + 1,
                self.config.learning_rate
            ))
            .into());
        }
        let direction = match (&self.velocity, self.config.momentum) {
            (Some(v), mu) if mu > 0.0 => vec::axpy(&g, mu, v)?,
            _ => g,
        };
        let w_new = vec::axpy(&w, -self.config.learning_rate, &direction)?;
        if self.config.momentum > 0.0 {
            self.velocity = Some(direction);
        }
        Ok((state.param(Params(w_new)).cost(loss), None))
    }
}

/// SGD's state in a checkpoint: the sampler's position (the velocity is the
/// tensor `velocity`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdState {
    pub sampler: Option<SamplerFields>,
}

/// [`hessfree_data::SamplerState`] field by field (it has no serde derive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerFields {
    pub len: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub epoch: u64,
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
        let SgdState { sampler } = saved.solver_state(NAME)?;
        let sampler = sampler
            .ok_or_else(|| SolverError::Config("the checkpoint has no SGD sampler".into()))?;
        let device = param_device(&state)?;
        self.sampler = Some(BatchSampler::restore(sampler.into())?);
        self.velocity = saved.get("velocity", &device)?;
        Ok(state)
    }
}
