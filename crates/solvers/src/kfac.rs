//! K-FAC (Martens & Grosse 2015) on mini-batches: the natural-gradient
//! direction under the Kronecker-factored Fisher of [`hessfree_model::kfac`].
//!
//! Iteration `k` on batch `B` (gradient `g` of the penalised objective):
//! 1. factors `A`, `G` of each layer on the first rows of `B` (a sub-batch,
//!    as the paper's statistics are), blended into moving averages with
//!    decay `min(1 − 1/(k+1), factor_decay)`;
//! 2. every `inverse_every` iterations, a snapshot of the averages, whose
//!    damped inverse (Cholesky, per factor) is rebuilt only when the
//!    snapshot or the damping changes;
//! 3. `Δ = −F̂⁻¹ g` with factored Tikhonov damping `γ = λ + η` split by π
//!    (`η` the L2 penalty, `λ` the adapted damping);
//! 4. the update `δ = αΔ + μδ₀` (`δ₀` the previous update): `α`, `μ`
//!    either fixed, or (adaptive, kfac-jax's default) the minimiser of the
//!    quadratic model `M(δ) = gᵀδ + ½δᵀ(C + λI)δ` over that plane, with `C`
//!    the Gauss-Newton matrix of `B` (two products per iteration);
//! 5. adaptive only: every `damping_every` iterations, `λ` moves by
//!    Levenberg-Marquardt from `ρ = (h(w+δ) − h(w)) / M(δ)` on `B`:
//!    `×ω` above ¾, `÷ω` below ¼, `ω = (19/20)^damping_every`.
//!
//! A non-finite batch loss or gradient stops the run with a reason; a
//! non-finite update is not taken: the damping rises and the iteration
//! keeps its point.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use argmin::core::{KV, Problem, Solver, State};
use argmin::kv;
use candle_core::{Device, Tensor};
use hessfree_data::{BatchSampler, SamplerState};
use hessfree_model::linop::vec;
use hessfree_model::{FisherTargets, Kronecker, KroneckerFactors, LayerFactors, LinOp};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::argmin_glue::{HfState, hf_problem, param_device};
use crate::argmin_params::Params;
use crate::checkpoint::{Snapshot, SolverState};
use crate::error::{Result, SolverError};
use crate::minibatch::{SamplerFields, restore_sampler, start_sampler};
use crate::problem::HfProblem;
use crate::run::{Resumable, RunLabel};

/// The checkpoint name of this solver's state and runs.
const NAME: &str = "kfac";

/// K-FAC's settings, recorded with every run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KfacConfig {
    /// Samples per mini-batch (gradient and, adaptive, the quadratic model).
    pub batch_size: usize,
    /// Rows of each batch the factors' statistics use: its first rows, all
    /// of them when the batch is smaller.
    pub stats_batch: usize,
    /// Rows of each batch the adaptive mode's quadratic model takes its two
    /// Gauss-Newton products on: its first rows; all of them when `None`
    /// (the default) or when the batch is smaller. The gradient terms of the model and the
    /// loss behind `ρ` stay on the whole batch. The paper computes these
    /// products on a subset of the mini-batch; on a quarter of it a step
    /// costs about two gradients less (`benches/kfac.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_batch: Option<usize>,
    /// Where the `G` factors' gradients come from: `mc` (the Monte-Carlo
    /// Fisher), `mc:S`, `empirical` or `exact` ([`FisherTargets`]).
    pub targets: String,
    /// Upper bound on the moving averages' decay, in `[0, 1)`.
    pub factor_decay: f64,
    /// Iterations between eigendecompositions of the factors.
    pub inverse_every: u64,
    /// Iterations between updates of the factors' moving averages (1: every
    /// step, the paper's choice; kfac-jax's `curvature_update_period`).
    /// Each update costs about as much as a gradient on `stats_batch` rows
    /// plus the `A` factors' products, so this trades fresh statistics for
    /// a cheaper step.
    #[serde(default = "every_step", skip_serializing_if = "is_every_step")]
    pub stats_every: u64,
    /// The initial damping `λ`; finite and positive.
    pub damping: f64,
    /// The L2 penalty `η` of the objective, added to the factored damping
    /// (the factors do not see the penalty).
    pub l2: f64,
    /// Learning rate and momentum from the quadratic model (`true`), or the
    /// fixed `learning_rate` and `momentum`, with `λ` fixed.
    pub adaptive: bool,
    /// Iterations between Levenberg-Marquardt adjustments of `λ` (adaptive).
    pub damping_every: u64,
    /// `α` when not adaptive.
    pub learning_rate: f64,
    /// `μ` when not adaptive, in `[0, 1)`.
    pub momentum: f64,
    /// Seed of the batch order and of the Monte-Carlo targets.
    pub seed: u64,
}

fn every_step() -> u64 {
    1
}

fn is_every_step(n: &u64) -> bool {
    *n == 1
}

impl Default for KfacConfig {
    /// The paper's choices where they carry over (ε ≤ 0.95, T₃ = 20,
    /// T₁ = 5, ω₁ = (19/20)^T₁), an initial λ of 1, batches of 1000 with
    /// statistics on a quarter of each.
    fn default() -> Self {
        Self {
            batch_size: 1000,
            stats_batch: 250,
            model_batch: None,
            targets: "mc".into(),
            factor_decay: 0.95,
            inverse_every: 20,
            stats_every: 1,
            damping: 1.0,
            l2: 0.0,
            adaptive: true,
            damping_every: 5,
            learning_rate: 1e-2,
            momentum: 0.9,
            seed: 0,
        }
    }
}

impl KfacConfig {
    /// Checks every setting, naming the bad one in a [`SolverError::Config`].
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(SolverError::Config(format!("K-FAC {msg}")));
        if self.batch_size == 0 || self.stats_batch == 0 || self.model_batch == Some(0) {
            return bad(format!(
                "batch_size, stats_batch and model_batch must be at least 1, got {}, {} and {}",
                self.batch_size,
                self.stats_batch,
                self.model_batch.unwrap_or(self.batch_size)
            ));
        }
        self.fisher_targets()?;
        if !(0.0..1.0).contains(&self.factor_decay) {
            return bad(format!(
                "factor_decay must be in [0, 1), got {}",
                self.factor_decay
            ));
        }
        if self.inverse_every == 0 || self.damping_every == 0 || self.stats_every == 0 {
            return bad("inverse_every, damping_every and stats_every must be at least 1".into());
        }
        if !(self.damping.is_finite() && self.damping > 0.0) {
            return bad(format!(
                "damping must be finite and > 0, got {}",
                self.damping
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad(format!("l2 must be finite and >= 0, got {}", self.l2));
        }
        if !self.adaptive {
            if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
                return bad(format!(
                    "learning rate must be finite and > 0, got {}",
                    self.learning_rate
                ));
            }
            if !(0.0..1.0).contains(&self.momentum) {
                return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
            }
        }
        Ok(())
    }

    /// [`Self::targets`] parsed.
    pub fn fisher_targets(&self) -> Result<FisherTargets> {
        Ok(self.targets.parse()?)
    }
}

/// Where this process's K-FAC steps spent their time, in seconds (a
/// resumed run counts from its resume; timings are not state). Reported as
/// the run's extras, so that one run's own interleaved steps give the cost
/// of a step in gradients, free of the drift between separate timings.
#[derive(Clone, Debug, Default)]
struct PhaseSeconds {
    steps: u64,
    /// The mini-batch loss and gradient.
    gradient: f64,
    /// The factors' statistics and moving averages.
    factors: f64,
    /// Rebuilding the damped inverse.
    inverse: f64,
    /// `Δ = −F̂⁻¹g` and the update from it.
    direction: f64,
    /// Adaptive: the quadratic model's Gauss-Newton products.
    model: f64,
    /// Taking the step and, adaptive, the loss after it for `ρ`.
    damping: f64,
}

impl PhaseSeconds {
    /// The names, as the run's extras and the reports know them.
    fn extras(&self) -> BTreeMap<String, f64> {
        [
            ("timed_steps", self.steps as f64),
            ("gradient_seconds", self.gradient),
            ("factor_seconds", self.factors),
            ("inverse_seconds", self.inverse),
            ("direction_seconds", self.direction),
            ("model_seconds", self.model),
            ("damping_seconds", self.damping),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Seconds since `t`, and `t` reset to now.
fn lap(t: &mut Instant) -> f64 {
    let now = Instant::now();
    let s = (now - *t).as_secs_f64();
    *t = now;
    s
}

/// K-FAC as an argmin solver over an [`HfProblem`], one mini-batch per
/// iteration.
pub struct Kfac {
    config: KfacConfig,
    sampler: Option<BatchSampler>,
    rng: ChaCha8Rng,
    /// The moving averages.
    factors: Option<KroneckerFactors>,
    /// The averages the current inverse is made from, refreshed every
    /// `inverse_every` steps (kept in checkpoints, so that a resume
    /// rebuilds exactly the same inverse).
    decomposed: Option<KroneckerFactors>,
    /// The damped inverse of `decomposed` and the `γ` it was built for:
    /// rebuilt only when either changes (every `inverse_every` steps, or
    /// when the damping adapts), not at every step.
    inverse: Option<(f64, Arc<Kronecker>)>,
    /// The previous update `δ₀`.
    previous: Option<Tensor>,
    damping: f64,
    steps: u64,
    seconds: PhaseSeconds,
}

impl Kfac {
    /// K-FAC with `config`, refused if [`KfacConfig::validate`] refuses it.
    pub fn new(config: KfacConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x4B_FAC0),
            damping: config.damping,
            config,
            sampler: None,
            factors: None,
            decomposed: None,
            inverse: None,
            previous: None,
            steps: 0,
            seconds: PhaseSeconds::default(),
        })
    }

    /// The damping `λ` now.
    pub fn damping(&self) -> f64 {
        self.damping
    }

    fn gamma(&self) -> f64 {
        self.damping + self.config.l2
    }

    /// Where the sampler is in its epochs (for checkpoints).
    pub fn sampler_state(&self) -> Option<SamplerState> {
        self.sampler.as_ref().map(|s| s.state())
    }

    /// Steps 1 and 2: the factors on the batch's first rows, averaged (every
    /// `stats_every` steps), and their decomposition when it is due.
    fn update_factors(&mut self, prob: &HfProblem, w: &Tensor, batch: &[usize]) -> Result<()> {
        if self.factors.is_some() && !self.steps.is_multiple_of(self.config.stats_every) {
            return self.refresh_decomposition();
        }
        let rows = &batch[..self.config.stats_batch.min(batch.len())];
        prob.counters().touch(rows.len());
        let new = prob.objective().subsample(rows)?.kronecker_factors(
            w,
            self.config.fisher_targets()?,
            &mut self.rng,
        )?;
        match &mut self.factors {
            None => self.factors = Some(new),
            Some(avg) => {
                let decay = (1.0 - 1.0 / (self.steps + 1) as f64).min(self.config.factor_decay);
                avg.blend(&new, decay)?;
            }
        }
        self.refresh_decomposition()
    }

    /// Takes the averages the inverse is made from when it is due.
    fn refresh_decomposition(&mut self) -> Result<()> {
        if self.steps.is_multiple_of(self.config.inverse_every) || self.decomposed.is_none() {
            self.decomposed = self.factors.clone();
            self.inverse = None;
        }
        Ok(())
    }

    /// The damped inverse at the current `γ`, from the cache when it holds it.
    fn damped_inverse(&mut self, g: &Tensor) -> Result<Arc<Kronecker>> {
        let gamma = self.gamma();
        if let Some((at, inverse)) = &self.inverse
            && at.to_bits() == gamma.to_bits()
        {
            return Ok(inverse.clone());
        }
        let factors = self
            .decomposed
            .as_ref()
            .expect("factors taken before updating");
        let inverse = Arc::new(factors.factored_inverse(gamma, g.device(), g.dtype())?);
        self.inverse = Some((gamma, inverse.clone()));
        Ok(inverse)
    }

    /// Step 4: `δ`, and the model's prediction `M(δ)` when adaptive.
    fn update(
        &mut self,
        prob: &HfProblem,
        w: &Tensor,
        g: &Tensor,
        batch: &[usize],
    ) -> Result<(Tensor, Option<f64>)> {
        let mut t = Instant::now();
        let inverse = self.damped_inverse(g)?;
        self.seconds.inverse += lap(&mut t);
        let delta = inverse.apply(g)?.affine(-1.0, 0.0)?;
        if !self.config.adaptive {
            let step = match &self.previous {
                Some(d0) => vec::axpy(
                    &delta.affine(self.config.learning_rate, 0.0)?,
                    self.config.momentum,
                    d0,
                )?,
                None => delta.affine(self.config.learning_rate, 0.0)?,
            };
            self.seconds.direction += lap(&mut t);
            return Ok((step, None));
        }
        self.seconds.direction += lap(&mut t);
        let c = prob
            .rows(
                &batch[..self
                    .config
                    .model_batch
                    .unwrap_or(usize::MAX)
                    .min(batch.len())],
            )?
            .curvature(w)?;
        let lambda = self.damping;
        // (C + λI) applied, and its quadratic forms.
        let cd = vec::axpy(&c.apply(&delta)?, lambda, &delta)?;
        let a11 = vec::dot(&delta, &cd)?;
        let b1 = vec::dot(g, &delta)?;
        let solved = match &self.previous {
            Some(d0) => {
                let c0 = vec::axpy(&c.apply(d0)?, lambda, d0)?;
                let (a12, a22, b2) = (vec::dot(&delta, &c0)?, vec::dot(d0, &c0)?, vec::dot(g, d0)?);
                let det = a11 * a22 - a12 * a12;
                let alpha = (-b1 * a22 + b2 * a12) / det;
                let mu = (-b2 * a11 + b1 * a12) / det;
                (det > 0.0 && alpha.is_finite() && mu.is_finite()).then_some((
                    alpha,
                    mu,
                    0.5 * (b1 * alpha + b2 * mu),
                ))
            }
            None => None,
        };
        let out = match (solved, &self.previous) {
            (Some((alpha, mu, m)), Some(d0)) => {
                (vec::axpy(&delta.affine(alpha, 0.0)?, mu, d0)?, Some(m))
            }
            // The first update, or a degenerate plane: along Δ alone.
            _ => {
                let alpha = -b1 / a11;
                (delta.affine(alpha, 0.0)?, Some(0.5 * b1 * alpha))
            }
        };
        self.seconds.model += lap(&mut t);
        Ok(out)
    }
}

impl Solver<HfProblem, HfState> for Kfac {
    fn name(&self) -> &str {
        "K-FAC"
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        check_factorable(hf_problem(problem)?, &state)?;
        self.sampler = Some(start_sampler(
            problem,
            self.config.batch_size,
            self.config.seed,
            "K-FAC",
        )?);
        Ok((state, Some(kv!("damping" => self.damping;))))
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
        let batch = self
            .sampler
            .as_mut()
            .ok_or_else(|| SolverError::Argmin("K-FAC was not initialised".into()))?
            .next_batch();
        let step_no = self.steps + 1;
        let mut t = Instant::now();
        let (loss, g) = prob.minibatch_loss_and_grad(&w, &batch)?;
        self.seconds.gradient += lap(&mut t);
        if !loss.is_finite() || !vec::all_finite(&g)? {
            return Err(SolverError::Diverged(format!(
                "the mini-batch loss or gradient became non-finite (loss {loss}) at K-FAC step \
                 {step_no} (damping {})",
                self.damping
            ))
            .into());
        }
        self.update_factors(prob, &w, &batch)?;
        self.seconds.factors += lap(&mut t);
        let (delta, predicted) = self.update(prob, &w, &g, &batch)?;
        let mut t = Instant::now();
        let mut rho = None;
        let mut taken = vec::all_finite(&delta)?;
        let mut w_new = if taken {
            vec::axpy(&w, 1.0, &delta)?
        } else {
            w.clone()
        };
        if !taken {
            // Not taken: more damping, same point.
            self.damping *= 2.0;
        } else if let Some(m) = predicted
            && self.steps.is_multiple_of(self.config.damping_every)
        {
            let after = prob.rows(&batch)?.loss(&w_new)?;
            let r = (after - loss) / m;
            let omega = (19.0f64 / 20.0).powf(self.config.damping_every as f64);
            if !after.is_finite() || r < 0.25 {
                self.damping /= omega;
            } else if r > 0.75 {
                self.damping *= omega;
            }
            rho = Some(r);
            if !after.is_finite() {
                // A step whose loss is not finite is not taken.
                taken = false;
                w_new = w;
            }
        }
        self.previous = taken.then_some(delta);
        self.steps = step_no;
        self.seconds.damping += lap(&mut t);
        self.seconds.steps += 1;
        let mut kv = kv!("damping" => self.damping;);
        if let Some(r) = rho {
            kv = kv.merge(kv!("rho" => r;));
        }
        Ok((state.param(Params(w_new)).cost(loss), Some(kv)))
    }
}

/// Refuses, before any work, an objective whose layers K-FAC cannot factor,
/// by asking for the factors of one row.
fn check_factorable(prob: &HfProblem, state: &HfState) -> Result<()> {
    let w = state
        .get_param()
        .ok_or_else(|| SolverError::Argmin("K-FAC started without parameters".into()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    prob.objective()
        .subsample(&[0])?
        .kronecker_factors(&w.0, FisherTargets::Empirical, &mut rng)
        .map(|_| ())
        .map_err(|e| SolverError::Config(format!("K-FAC cannot run here: {e}")))
}

/// K-FAC's scalar state in a checkpoint; the factors, the averages the
/// decomposition was made from, and `δ₀` are tensors of the snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KfacState {
    /// The sampler's position; `None` if never initialised.
    pub sampler: Option<SamplerFields>,
    /// Iterations made.
    pub steps: u64,
    /// The damping `λ`.
    pub damping: f64,
    /// The Monte-Carlo generator's seed.
    pub rng_seed: [u8; 32],
    /// The generator's position in its stream.
    pub rng_word_pos: u128,
    /// Each layer's `(d_in + 1, d_out)`.
    pub layers: Vec<(usize, usize)>,
}

fn put_factors(snap: &mut Snapshot, prefix: &str, f: &KroneckerFactors) -> Result<()> {
    for (l, layer) in f.layers.iter().enumerate() {
        for (name, m) in [("a", &layer.a), ("g", &layer.g)] {
            let v: Vec<f64> = (0..m.nrows())
                .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
                .collect();
            let n = v.len();
            snap.put(
                &format!("{prefix}.layer{l}.{name}"),
                &Tensor::from_vec(v, n, &Device::Cpu)?,
            )?;
        }
    }
    Ok(())
}

fn get_factors(
    saved: &Snapshot,
    prefix: &str,
    layers: &[(usize, usize)],
) -> Result<Option<KroneckerFactors>> {
    let mut out = Vec::new();
    for (l, &(da, dg)) in layers.iter().enumerate() {
        let get = |name: &str, d: usize| -> Result<Option<faer::Mat<f64>>> {
            let Some(t) = saved.get(&format!("{prefix}.layer{l}.{name}"), &Device::Cpu)? else {
                return Ok(None);
            };
            let v = t.to_vec1::<f64>()?;
            if v.len() != d * d {
                return Err(SolverError::Config(format!(
                    "the K-FAC checkpoint's {prefix} factor {name} of layer {l} has {} entries, \
                     expected {}",
                    v.len(),
                    d * d
                )));
            }
            Ok(Some(faer::Mat::from_fn(d, d, |i, j| v[i * d + j])))
        };
        match (get("a", da)?, get("g", dg)?) {
            (Some(a), Some(g)) => out.push(LayerFactors { a, g }),
            _ => return Ok(None),
        }
    }
    Ok((!layers.is_empty()).then_some(KroneckerFactors { layers: out }))
}

impl Resumable<HfState> for Kfac {
    fn label(&self) -> RunLabel {
        RunLabel::new(NAME, &self.config)
    }

    /// The state holds a mini-batch's loss, so the trace evaluates the full one.
    fn full_batch_state(&self) -> bool {
        false
    }

    fn save_state(&self, snap: &mut Snapshot) -> Result<SolverState> {
        let layers = self
            .factors
            .as_ref()
            .map(|f| {
                f.layers
                    .iter()
                    .map(|l| (l.a.nrows(), l.g.nrows()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(f) = &self.factors {
            put_factors(snap, "kfac.average", f)?;
        }
        if let Some(f) = &self.decomposed {
            put_factors(snap, "kfac.decomposed", f)?;
        }
        if let Some(d0) = &self.previous {
            snap.put("kfac.previous_update", d0)?;
        }
        SolverState::new(
            NAME,
            &KfacState {
                sampler: self.sampler_state().map(Into::into),
                steps: self.steps,
                damping: self.damping,
                rng_seed: self.rng.get_seed(),
                rng_word_pos: self.rng.get_word_pos(),
                layers,
            },
        )
    }

    /// Everything an uninterrupted run would hold at this point: the batch
    /// order, the generator's position, the averages, the decomposition
    /// (rebuilt from the same averages it was made from), `δ₀` and `λ`.
    fn resume(
        &mut self,
        problem: &mut Problem<HfProblem>,
        saved: &Snapshot,
        state: HfState,
    ) -> Result<HfState> {
        check_factorable(hf_problem(problem)?, &state)?;
        let s: KfacState = saved.solver_state(NAME)?;
        let device = param_device(&state)?;
        self.sampler = Some(restore_sampler(s.sampler, "K-FAC")?);
        self.rng = ChaCha8Rng::from_seed(s.rng_seed);
        self.rng.set_word_pos(s.rng_word_pos);
        self.steps = s.steps;
        self.damping = s.damping;
        self.factors = get_factors(saved, "kfac.average", &s.layers)?;
        self.decomposed = get_factors(saved, "kfac.decomposed", &s.layers)?;
        self.inverse = None;
        if self.steps > 0 && (self.factors.is_none() || self.decomposed.is_none()) {
            return Err(SolverError::Config(format!(
                "the K-FAC checkpoint after {} steps lacks its factors",
                self.steps
            )));
        }
        self.previous = saved.get("kfac.previous_update", &device)?;
        Ok(state)
    }

    fn extras(&self) -> BTreeMap<String, f64> {
        let mut out = self.seconds.extras();
        out.insert("final_damping".to_string(), self.damping);
        out
    }
}
