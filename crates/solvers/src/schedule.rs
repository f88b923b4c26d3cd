//! Learning-rate schedules for the first-order baselines (SGD and Adam),
//! in PyTorch's closed forms so that a schedule named here means what it
//! means in the papers the baselines are compared with.
//!
//! A schedule is a pure function of the configured rate and the number of
//! updates already made, so a resumed run needs only its step count to
//! continue with the same rates.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SolverError};

/// How the learning rate decays after the (optional) warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Decay {
    /// The configured rate throughout.
    #[default]
    Constant,
    /// Multiplied by `factor` after every `every` steps (PyTorch's `StepLR`).
    Step {
        /// Steps between decays; at least 1.
        every: u64,
        /// Multiplier per decay, in `(0, 1]`.
        factor: f64,
    },
    /// Multiplied by `gamma` after every step (PyTorch's `ExponentialLR`).
    Exponential {
        /// Multiplier per step, in `(0, 1]`.
        gamma: f64,
    },
    /// Half a cosine from the configured rate down to `floor` over `steps`
    /// steps, then `floor` (PyTorch's `CosineAnnealingLR` without its restart).
    Cosine {
        /// Length of the half cosine; at least 1.
        steps: u64,
        /// The final rate, finite, `>= 0` and at most the configured rate.
        floor: f64,
    },
}

/// A learning-rate schedule shared by [`crate::SgdConfig`] and
/// [`crate::AdamConfig`]: a linear warm-up over `warmup_steps` steps, then
/// [`Decay`] counted from the end of the warm-up.
///
/// The default is a constant rate, which serialises to nothing in a
/// solver's settings (`skip_serializing_if = "LrSchedule::is_constant"`):
/// the settings of a run written before schedules existed are unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// How the rate decays once the warm-up is over.
    #[serde(flatten)]
    pub decay: Decay,
    /// Steps of linear warm-up from `base / warmup_steps` up to `base`; 0 for none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_steps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LrSchedule {
    /// The forms [`FromStr`] accepts, for help and error messages.
    pub const CHOICES: &'static str = "constant, step:EVERY:FACTOR, exp:GAMMA, \
         cosine:STEPS[:FLOOR], any of them after `warmup:STEPS,` for a linear warm-up \
         (e.g. warmup:500,cosine:5000:1e-5)";

    /// The configured rate at every step, the default.
    pub const fn constant() -> Self {
        Self {
            decay: Decay::Constant,
            warmup_steps: 0,
        }
    }

    /// Whether every step uses the configured rate.
    pub fn is_constant(&self) -> bool {
        self.decay == Decay::Constant && self.warmup_steps == 0
    }

    /// The rate of the update made after `step` earlier updates (0 for the
    /// first), from the configured rate `base`. Meaningful for a schedule
    /// that passed [`LrSchedule::validate`]; a constant schedule returns
    /// `base` itself, so a run without a schedule is unchanged bit for bit.
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        if step < self.warmup_steps {
            // Up to the full rate at the last warm-up step, never a zero step.
            return base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let s = step - self.warmup_steps;
        match self.decay {
            Decay::Constant => base,
            Decay::Step { every, factor } => base * factor.powf((s / every.max(1)) as f64),
            Decay::Exponential { gamma } => base * gamma.powf(s as f64),
            Decay::Cosine { steps, floor } if s < steps => {
                floor + (base - floor) * 0.5 * (1.0 + (PI * s as f64 / steps as f64).cos())
            }
            Decay::Cosine { floor, .. } => floor,
        }
    }

    /// Checks the schedule against the rate it scales, naming the solver
    /// (`who`) in the error.
    pub fn validate(&self, who: &str, base: f64) -> Result<()> {
        self.check().map_err(|why| {
            SolverError::Config(format!("{who} learning-rate schedule `{self}`: {why}"))
        })?;
        if let Decay::Cosine { floor, .. } = self.decay
            && floor > base
        {
            return Err(SolverError::Config(format!(
                "{who} learning-rate schedule `{self}`: the cosine floor {floor} is above \
                 the learning rate {base}; annealing goes down to the floor"
            )));
        }
        Ok(())
    }

    /// What can be checked without the rate (parsing checks this much).
    fn check(&self) -> std::result::Result<(), String> {
        match self.decay {
            Decay::Constant => Ok(()),
            Decay::Step { every, factor } => {
                if every == 0 {
                    Err("step decay needs a period of at least 1 step".into())
                } else if !(factor.is_finite() && factor > 0.0 && factor <= 1.0) {
                    Err(format!(
                        "the step-decay factor must be in (0, 1], got {factor}"
                    ))
                } else {
                    Ok(())
                }
            }
            Decay::Exponential { gamma } => {
                if gamma.is_finite() && gamma > 0.0 && gamma <= 1.0 {
                    Ok(())
                } else {
                    Err(format!(
                        "the exponential decay rate must be in (0, 1], got {gamma}"
                    ))
                }
            }
            Decay::Cosine { steps, floor } => {
                if steps == 0 {
                    Err("cosine annealing needs at least 1 step".into())
                } else if !(floor.is_finite() && floor >= 0.0) {
                    Err(format!(
                        "the cosine floor must be finite and >= 0, got {floor}"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl fmt::Display for LrSchedule {
    /// The form [`LrSchedule::from_str`] reads; floats print in Rust's
    /// shortest exact form, so the text parses back to the same bits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.warmup_steps > 0 {
            write!(f, "warmup:{},", self.warmup_steps)?;
        }
        match self.decay {
            Decay::Constant => write!(f, "constant"),
            Decay::Step { every, factor } => write!(f, "step:{every}:{factor}"),
            Decay::Exponential { gamma } => write!(f, "exp:{gamma}"),
            Decay::Cosine { steps, floor } => write!(f, "cosine:{steps}:{floor}"),
        }
    }
}

impl FromStr for LrSchedule {
    type Err = SolverError;

    /// One of [`LrSchedule::CHOICES`]; the cosine floor defaults to 0.
    fn from_str(s: &str) -> Result<Self> {
        let unknown = || {
            SolverError::Config(format!(
                "unknown learning-rate schedule `{s}`; expected one of: {}",
                Self::CHOICES
            ))
        };
        let (warmup_steps, rest) = match s.strip_prefix("warmup:") {
            Some(rest) => {
                let (n, rest) = rest.split_once(',').ok_or_else(unknown)?;
                (n.parse().map_err(|_| unknown())?, rest)
            }
            None => (0, s),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let int = |p: &str| p.parse::<u64>().map_err(|_| unknown());
        let float = |p: &str| p.parse::<f64>().map_err(|_| unknown());
        let decay = match parts.as_slice() {
            ["constant"] => Decay::Constant,
            ["step", every, factor] => Decay::Step {
                every: int(every)?,
                factor: float(factor)?,
            },
            ["exp", gamma] => Decay::Exponential {
                gamma: float(gamma)?,
            },
            ["cosine", steps] => Decay::Cosine {
                steps: int(steps)?,
                floor: 0.0,
            },
            ["cosine", steps, floor] => Decay::Cosine {
                steps: int(steps)?,
                floor: float(floor)?,
            },
            _ => return Err(unknown()),
        };
        let schedule = Self {
            decay,
            warmup_steps,
        };
        schedule
            .check()
            .map_err(|why| SolverError::Config(format!("learning-rate schedule `{s}`: {why}")))?;
        Ok(schedule)
    }
}
