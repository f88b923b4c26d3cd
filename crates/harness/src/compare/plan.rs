//! The runs a comparison asks for: `--optimizers sgd,newton-cg@damping=1e-3`
//! turned into methods and problems, every value checked before any work.
//!
//! A run can override problem settings with `name@key=value;key=value`,
//! e.g. `sgd,sgd@init=normal:0.1,sgd@laplace=0.001`, which is how the
//! notebook's three SGD runs share one report.
//!
//! One override may list alternatives, `adam@lr=1e-4|3e-4|1e-3`: a grid.
//! Each point runs on the short `grid_time` budget, and the best one (the
//! lowest final objective) is then continued to the run's full budget, so
//! that a baseline's learning rate is chosen in the open.

use anyhow::{Context, Result, bail};
use hessfree_solvers::{
    AdamConfig, DenseNewtonConfig, KfacConfig, LbfgsConfig, NewtonCgConfig, RowBatches, SgdConfig,
    TrustRegionConfig,
};

use crate::experiment::ProblemSpec;
use crate::method::Method;

/// Newton-CG's settings from the command line. The damping left unset
/// depends on the model (convex softmax problems start lower), so it is
/// resolved per run.
#[derive(Clone, Debug)]
pub struct NewtonSettings {
    pub damping: Option<f64>,
    pub cg_max_iters: usize,
    pub cg_rel_tol: Option<f64>,
    pub preconditioner: bool,
    /// Newton-CG's CG preconditioned by K-FAC with these Fisher targets
    /// instead (`--preconditioner kfac`).
    pub kfac_preconditioner: Option<String>,
    pub warm_start: bool,
    pub cg_backtracking: bool,
    /// Rows per curvature mini-batch (Newton-CG: off when `None`; hf: its
    /// preset's size when `None`).
    pub curvature_batch: Option<usize>,
    /// Rows per gradient mini-batch (off when `None`: the full set).
    pub gradient_batch: Option<usize>,
}

impl NewtonSettings {
    fn config(&self, spec: &ProblemSpec) -> NewtonCgConfig {
        let defaults = if spec.model.starts_with("softmax") {
            NewtonCgConfig::convex()
        } else {
            NewtonCgConfig::default()
        };
        NewtonCgConfig {
            initial_damping: self.damping.unwrap_or(defaults.initial_damping),
            cg_max_iters: self.cg_max_iters,
            cg_rel_tol: self.cg_rel_tol,
            preconditioner: self.preconditioner,
            kfac_preconditioner: self.kfac_preconditioner.clone(),
            warm_start_decay: self.warm_start.then_some(0.95),
            cg_backtracking: self.cg_backtracking,
            curvature_batches: self.curvature_batch.map(|size| RowBatches {
                size,
                seed: spec.seed,
            }),
            gradient_batches: self.gradient_batches(spec),
            ..defaults
        }
    }

    /// hf: Martens' settings, which the Newton-CG flags leave alone except
    /// the damping and the curvature batch size; the batches are shuffled
    /// by the run's seed.
    fn martens(&self, spec: &ProblemSpec) -> NewtonCgConfig {
        let preset = NewtonCgConfig::martens();
        let size = self
            .curvature_batch
            .or(preset.curvature_batches.map(|b| b.size));
        NewtonCgConfig {
            initial_damping: self.damping.unwrap_or(preset.initial_damping),
            curvature_batches: size.map(|size| RowBatches {
                size,
                seed: spec.seed,
            }),
            gradient_batches: self.gradient_batches(spec),
            ..preset
        }
    }

    fn gradient_batches(&self, spec: &ProblemSpec) -> Option<RowBatches> {
        self.gradient_batch.map(|size| RowBatches {
            size,
            seed: spec.seed,
        })
    }
}

/// Every method's settings before a run's overrides.
#[derive(Clone, Debug)]
pub struct RunDefaults {
    /// The problem every run starts from.
    pub problem: ProblemSpec,
    pub sgd: SgdConfig,
    pub adam: AdamConfig,
    pub kfac: KfacConfig,
    pub newton: NewtonSettings,
    pub trust_region: TrustRegionConfig,
    pub lbfgs: LbfgsConfig,
    /// Rows the dense-Newton Hessian is assembled on (0: all).
    pub hessian_batch: usize,
    /// Iteration cap of every method except SGD.
    pub max_iters: u64,
    /// The iteration cap of the mini-batch methods (SGD, Adam, K-FAC).
    pub sgd_steps: u64,
    /// The mini-batch methods' trace interval (their full-batch objective
    /// costs a data pass).
    pub sgd_eval_every: u64,
    pub max_time: Option<f64>,
    /// Solver-time budget of each point of a grid.
    pub grid_time: f64,
}

/// Where a run sits in a learning-rate grid.
#[derive(Clone, Debug, PartialEq)]
pub struct GridPoint {
    /// The grid's token as written, e.g. `adam@lr=1e-4|1e-3`.
    pub grid: String,
    /// The budget the grid's best point is continued to.
    pub full_time: f64,
    /// Whether this is the grid's last point, after which the best is chosen.
    pub last: bool,
}

/// One requested run: its label, method and problem.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub label: String,
    pub method: Method,
    pub spec: ProblemSpec,
    pub max_iters: u64,
    /// This run's solver-time budget.
    pub max_time: Option<f64>,
    pub trace_every: u64,
    /// `Some` for a point of a learning-rate grid.
    pub grid: Option<GridPoint>,
    /// This run's checkpoint interval when checkpoints are on, in its own
    /// iterations (a mini-batch step is far cheaper than an HF iteration);
    /// `None`: `--checkpoint-every`.
    pub checkpoint_every: Option<u64>,
}

/// `lr` sets SGD's, Adam's or K-FAC's learning rate, whichever the run is
/// (K-FAC's only matters with `adaptive=false`); `damping` Newton-CG's, hf's
/// or K-FAC's initial damping; `momentum`, `adaptive`, `targets`,
/// `inverse_every`, `stats_every`, `batch`, `stats_batch` and `model_batch`
/// are K-FAC's; `preconditioner`
/// (`none`, `diag`, `kfac` or `kfac:TARGETS`) is Newton-CG's and hf's;
/// `trace_every` sets the run's trace interval (a K-FAC step costs many
/// SGD steps, so it wants a shorter one than `--sgd-eval-every`).
const OVERRIDES: &str = "init, l2, laplace, seed, curvature_dtype, hessian_fraction, lr, damping, \
     curvature_batch, gradient_batch, hessian_batch, max_time, checkpoint_every, momentum, adaptive, targets, \
     inverse_every, stats_every, batch, stats_batch, model_batch, preconditioner, trace_every";

/// The runs of a comma-separated `optimizers` list.
pub fn plan(optimizers: &str, defaults: &RunDefaults) -> Result<Vec<PlannedRun>> {
    if let Some(v) = defaults.max_time
        && !(v.is_finite() && v > 0.0)
    {
        bail!("--max-time must be a positive number, got {v}");
    }
    let mut planned = Vec::new();
    for token in optimizers
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if token.contains('|') {
            planned.extend(plan_grid(token, defaults)?);
        } else {
            planned.push(plan_one(token, defaults)?);
        }
    }
    let mut labels: Vec<&str> = planned.iter().map(|p| p.label.as_str()).collect();
    labels.sort_unstable();
    if let Some(w) = labels.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "--optimizers names the run `{}` twice; each run needs its own label",
            w[0]
        );
    }
    if planned.is_empty() {
        bail!(
            "--optimizers is empty; expected some of: {}",
            Method::CHOICES
        );
    }
    Ok(planned)
}

/// The points of a grid token such as `adam@lr=1e-4|1e-3;seed=2`: one run
/// per alternative, each on `grid_time`, the last marked so the runner
/// chooses and continues the best after it.
fn plan_grid(token: &str, defaults: &RunDefaults) -> Result<Vec<PlannedRun>> {
    let Some((name, overrides)) = token.split_once('@') else {
        bail!("grid `{token}`: alternatives go in an override, e.g. adam@lr=1e-4|1e-3");
    };
    let parts: Vec<&str> = overrides.split(';').collect();
    let listed: Vec<usize> = (0..parts.len())
        .filter(|&i| parts[i].contains('|'))
        .collect();
    let [at] = listed[..] else {
        bail!("grid `{token}`: only one override may list alternatives (a one-dimensional grid)");
    };
    let Some((key, values)) = parts[at].split_once('=') else {
        bail!("grid `{token}`: override `{}` is not key=value", parts[at]);
    };
    let values: Vec<&str> = values.split('|').map(str::trim).collect();
    if values.len() < 2 || values.iter().any(|v| v.is_empty()) {
        bail!("grid `{token}`: expected two or more non-empty values, like {key}=1e-4|1e-3");
    }
    let g = defaults.grid_time;
    if !(g.is_finite() && g > 0.0) {
        bail!("--grid-time must be a positive number of seconds, got {g}");
    }
    let mut points = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let mut point_parts = parts.clone();
        let kv = format!("{key}={value}");
        point_parts[at] = &kv;
        let point = format!("{name}@{}", point_parts.join(";"));
        let mut run = plan_one(&point, defaults).with_context(|| format!("grid `{token}`"))?;
        let Some(full_time) = run.max_time else {
            bail!(
                "grid `{token}`: its best point is continued to the run's full budget; \
                 set one with --max-time (or max_time=SECONDS in the token)"
            );
        };
        if g > full_time {
            bail!("grid `{token}`: --grid-time {g} s exceeds the full budget of {full_time} s");
        }
        run.max_time = Some(g);
        run.grid = Some(GridPoint {
            grid: token.to_string(),
            full_time,
            last: i + 1 == values.len(),
        });
        points.push(run);
    }
    Ok(points)
}

/// `none`, `diag` or `kfac[:TARGETS]` as (diagonal?, K-FAC's targets).
pub fn parse_preconditioner(value: &str) -> Result<(bool, Option<String>)> {
    Ok(match value {
        "none" => (false, None),
        "diag" => (true, None),
        "kfac" => (false, Some("mc".into())),
        other => match other.strip_prefix("kfac:") {
            Some(targets) => (false, Some(targets.to_string())),
            None => bail!(
                "unknown preconditioner `{other}`; expected none, diag, kfac or kfac:TARGETS \
                 (TARGETS: mc, mc:S, empirical, exact)"
            ),
        },
    })
}

fn plan_one(token: &str, defaults: &RunDefaults) -> Result<PlannedRun> {
    let (name, overrides) = token.split_once('@').unwrap_or((token, ""));
    let mut spec = defaults.problem.clone();
    let mut sgd = defaults.sgd.clone();
    let mut adam = defaults.adam.clone();
    let mut kfac = defaults.kfac.clone();
    let mut damping = None;
    let mut newton = defaults.newton.clone();
    let mut hessian_batch = defaults.hessian_batch;
    let mut max_time = defaults.max_time;
    let mut checkpoint_every = None;
    let mut preconditioner = None;
    let mut trace_every = None;
    for kv in overrides.split(';').filter(|s| !s.is_empty()) {
        let (key, value) = kv
            .split_once('=')
            .with_context(|| format!("override `{kv}` in `{token}` is not key=value"))?;
        let num = || -> Result<f64> {
            value
                .parse::<f64>()
                .with_context(|| format!("override `{kv}` in `{token}`: `{value}` is not a number"))
        };
        let positive = || -> Result<usize> {
            value
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("override `{kv}`: expected a positive integer"))
        };
        match key {
            "init" => spec.init = value.to_string(),
            "l2" => spec.l2 = num()?,
            "laplace" => spec.laplace = num()?,
            "seed" => {
                spec.seed = value
                    .parse()
                    .with_context(|| format!("override `{kv}`: expected an integer"))?;
                sgd.seed = spec.seed;
                adam.seed = spec.seed;
                kfac.seed = spec.seed;
            }
            "curvature_dtype" => spec.curvature_dtype = Some(value.to_string()),
            "hessian_fraction" => spec.hessian_fraction = num()?,
            "checkpoint_every" => checkpoint_every = Some(positive()? as u64),
            "lr" => {
                sgd.learning_rate = num()?;
                adam.learning_rate = sgd.learning_rate;
                kfac.learning_rate = sgd.learning_rate;
            }
            "momentum" => kfac.momentum = num()?,
            "preconditioner" => preconditioner = Some(parse_preconditioner(value)?),
            "adaptive" => {
                kfac.adaptive = value
                    .parse()
                    .with_context(|| format!("override `{kv}`: expected true or false"))?;
            }
            "targets" => kfac.targets = value.to_string(),
            "trace_every" => trace_every = Some(positive()? as u64),
            "inverse_every" | "stats_every" | "batch" | "stats_batch" | "model_batch" => {
                let n = positive()?;
                match key {
                    "inverse_every" => kfac.inverse_every = n as u64,
                    "stats_every" => kfac.stats_every = n as u64,
                    "batch" => kfac.batch_size = n,
                    "model_batch" => kfac.model_batch = Some(n),
                    _ => kfac.stats_batch = n,
                }
            }
            "damping" => damping = Some(num()?),
            "curvature_batch" => newton.curvature_batch = Some(positive()?),
            "gradient_batch" => newton.gradient_batch = Some(positive()?),
            "max_time" => {
                let v = num()?;
                if !(v.is_finite() && v > 0.0) {
                    bail!("override `{kv}` in `{token}`: max_time must be a positive number");
                }
                max_time = Some(v);
            }
            "hessian_batch" => {
                hessian_batch = value
                    .parse()
                    .with_context(|| format!("override `{kv}`: expected an integer"))?;
            }
            other => bail!("unknown override `{other}` in `{token}`; expected one of: {OVERRIDES}"),
        }
    }
    let method = match name {
        "sgd" => Method::Sgd(sgd),
        "adam" => Method::Adam(adam),
        "kfac" => {
            if let Some(d) = damping {
                kfac.damping = d;
            }
            // The factors do not see the penalty: K-FAC adds it to its damping.
            kfac.l2 = spec.l2;
            Method::Kfac(kfac)
        }
        "newton-cg" => {
            let mut c = newton.config(&spec);
            if let Some(d) = damping {
                c.initial_damping = d;
            }
            Method::NewtonCg(c)
        }
        "hf" => {
            let mut c = newton.martens(&spec);
            if let Some(d) = damping {
                c.initial_damping = d;
            }
            Method::Hf(c)
        }
        "trust-region" => Method::TrustRegion(defaults.trust_region.clone()),
        "lbfgs" => Method::Lbfgs(defaults.lbfgs.clone()),
        "dense-newton" => Method::DenseNewton(DenseNewtonConfig {
            hessian_batch: (hessian_batch > 0).then_some(hessian_batch),
            ..Default::default()
        }),
        other => bail!(
            "unknown optimizer `{other}`; expected one of: {}",
            Method::CHOICES
        ),
    };
    let mut method = method;
    if let Some((diagonal, kfac)) = preconditioner {
        match &mut method {
            Method::NewtonCg(c) | Method::Hf(c) => {
                c.preconditioner = diagonal;
                c.kfac_preconditioner = kfac;
            }
            _ => bail!("run `{token}`: `preconditioner` is an override of newton-cg and hf"),
        }
    }
    method
        .validate()
        .with_context(|| format!("run `{token}`"))?;
    if let Method::NewtonCg(c) | Method::Hf(c) = &method
        && (c.curvature_batches.is_some() || c.gradient_batches.is_some())
        && spec.hessian_fraction < 1.0
    {
        bail!(
            "run `{token}`: curvature and gradient batches cycle through the whole training \
             set; drop --hessian-fraction or the batches"
        );
    }
    let is_sgd = matches!(method, Method::Sgd(_) | Method::Adam(_) | Method::Kfac(_));
    Ok(PlannedRun {
        label: token.to_string(),
        method,
        spec,
        max_iters: if is_sgd {
            defaults.sgd_steps
        } else {
            defaults.max_iters
        },
        max_time,
        trace_every: trace_every.unwrap_or(if is_sgd { defaults.sgd_eval_every } else { 1 }),
        grid: None,
        checkpoint_every,
    })
}
