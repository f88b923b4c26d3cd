//! Running any solver under argmin's `Executor`, with one trace, one set of
//! stopping rules and one clock for all of them.
//!
//! [`Tracked`] wraps a solver: it times only the solver's own work (the
//! clock is paused while the trace is evaluated), records a [`TraceRecord`]
//! per iteration, enforces the [`StopRules`], honours an interrupt flag, and
//! turns a failing iteration into a stop with the last good parameters
//! instead of losing the whole run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use argmin::core::{
    Executor, IterState, KV, Problem, Solver, State, TerminationReason, TerminationStatus,
};
use candle_core::Tensor;
use hessfree_model::linop::vec;
use serde::{Deserialize, Serialize};

use crate::baselines::{LbfgsConfig, TrustRegionConfig};
use crate::checkpoint::{Snapshot, SnapshotMeta, SolverState};
use crate::dense_newton::{DenseNewton, DenseNewtonConfig};
use crate::error::{Result, SolverError};
use crate::newton_cg::{HfState, NewtonCg, NewtonCgConfig, hf_problem};
use crate::params::Params;
use crate::problem::HfProblem;
use crate::sgd::{Sgd, SgdConfig};
use crate::stop::{StopReason, StopRules};
use crate::trace::{Counts, TraceRecord};

/// Which optimiser to run, with its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    Sgd(SgdConfig),
    NewtonCg(NewtonCgConfig),
    TrustRegion(TrustRegionConfig),
    Lbfgs(LbfgsConfig),
    DenseNewton(DenseNewtonConfig),
}

impl Method {
    pub const CHOICES: &'static str = "sgd, newton-cg, trust-region, lbfgs, dense-newton";

    pub fn name(&self) -> &'static str {
        match self {
            Method::Sgd(_) => "sgd",
            Method::NewtonCg(_) => "newton-cg",
            Method::TrustRegion(_) => "trust-region",
            Method::Lbfgs(_) => "lbfgs",
            Method::DenseNewton(_) => "dense-newton",
        }
    }

    /// Checks the settings without running anything, so a harness can refuse
    /// a bad value before any work or output.
    pub fn validate(&self) -> Result<()> {
        match self {
            Method::Sgd(c) => c.validate(),
            Method::NewtonCg(c) => c.validate(),
            Method::TrustRegion(c) => c.build().map(|_| ()),
            Method::Lbfgs(c) => c.build().map(|_| ()),
            Method::DenseNewton(c) => DenseNewton::new(c.clone()).map(|_| ()),
        }
    }

    /// Whether the solver's state holds the full-batch objective and gradient
    /// (SGD's holds a mini-batch's, so its trace is evaluated separately).
    fn full_batch_state(&self) -> bool {
        !matches!(self, Method::Sgd(_))
    }

    /// Whether [`RunOptions::checkpoint`] and [`RunOptions::resume`] work for it.
    pub fn checkpointable(&self) -> bool {
        matches!(
            self,
            Method::Sgd(_) | Method::NewtonCg(_) | Method::TrustRegion(_)
        )
    }

    /// The settings as JSON: a checkpoint records them so that a resume
    /// with other settings is refused.
    fn fingerprint(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Test accuracy (or any score) of a parameter vector, for the trace.
pub type Evaluator = Arc<dyn Fn(&Tensor) -> Result<f64> + Send + Sync>;
/// Called with every new trace record (progress bars, logs).
pub type OnRecord = Arc<dyn Fn(&TraceRecord) + Send + Sync>;

#[derive(Clone, Default)]
pub struct RunOptions {
    pub stop: StopRules,
    /// Record a trace row every this many iterations (0 or 1: every one).
    pub trace_every: u64,
    /// Evaluate the test accuracy on every this many recorded iterations.
    pub test_every: u64,
    pub test_accuracy: Option<Evaluator>,
    pub on_record: Option<OnRecord>,
    /// Set to stop the run at the next iteration boundary (Ctrl-C).
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Hand a [`Snapshot`] to a sink every so many iterations, and once at the end.
    pub checkpoint: Option<Checkpointing>,
    /// Continue from this snapshot instead of starting at `w0`.
    pub resume: Option<Arc<Snapshot>>,
}

/// Where checkpoints go (a file writer in the harness; anything in tests).
pub type CheckpointSink = Arc<dyn Fn(&Snapshot) -> Result<()> + Send + Sync>;

#[derive(Clone)]
pub struct Checkpointing {
    /// Checkpoint after every this many outer iterations (0 behaves as 1).
    pub every: u64,
    pub sink: CheckpointSink,
}

/// A solver whose state between outer iterations can be saved and restored
/// exactly, so that a resumed run repeats the uninterrupted one bit for bit.
pub trait Resumable<St> {
    /// The solver's scalar state; its vectors are put into `snap`.
    fn save_state(&self, snap: &mut Snapshot) -> Result<SolverState>;

    /// Restores the state saved in `saved` and finishes `state` (which has
    /// the saved parameters, cost and, if saved, gradient) so that the next
    /// `next_iter` continues the run. Runs instead of `Solver::init`.
    fn resume(
        &mut self,
        problem: &mut Problem<HfProblem>,
        saved: &Snapshot,
        state: St,
    ) -> Result<St>;
}

pub(crate) fn unsupported(name: &str) -> SolverError {
    SolverError::Config(format!(
        "{name} cannot be checkpointed (its argmin state is not exposed); run it without --checkpoint-every"
    ))
}

impl Resumable<HfState> for crate::baselines::LbfgsSolver {
    fn save_state(&self, _: &mut Snapshot) -> Result<SolverState> {
        Err(unsupported("L-BFGS"))
    }
    fn resume(&mut self, _: &mut Problem<HfProblem>, _: &Snapshot, _: HfState) -> Result<HfState> {
        Err(unsupported("L-BFGS"))
    }
}

impl Resumable<HfState> for DenseNewton {
    fn save_state(&self, _: &mut Snapshot) -> Result<SolverState> {
        Err(unsupported("dense Newton"))
    }
    fn resume(&mut self, _: &mut Problem<HfProblem>, _: &Snapshot, _: HfState) -> Result<HfState> {
        Err(unsupported("dense Newton"))
    }
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct RunOutput {
    pub method: String,
    /// The last accepted parameters (never NaN: a failing step is not kept).
    pub params: Tensor,
    pub trace: Vec<TraceRecord>,
    pub stop: StopReason,
    pub counts: Counts,
    pub solver_seconds: f64,
    /// Solver-specific numbers (dense Newton's Hessian bytes, assembly time...).
    pub extras: BTreeMap<String, f64>,
}

/// Solver-specific numbers reported after a run.
pub trait Extras {
    fn extras(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
}

impl Extras for NewtonCg {
    fn extras(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([("final_damping".to_string(), self.damping())])
    }
}
impl Extras for Sgd {}
impl Extras for crate::baselines::TrustRegionSolver {}
impl Extras for crate::baselines::LbfgsSolver {}
impl Extras for DenseNewton {
    fn extras(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("hessian_bytes".to_string(), self.hessian_bytes as f64),
            ("assembly_seconds".to_string(), self.assembly_seconds),
            ("solve_seconds".to_string(), self.solve_seconds),
            ("eigen_fallbacks".to_string(), self.eigen_fallbacks as f64),
        ])
    }
}

type State_<H> = IterState<Params, Params, (), H, (), f64>;

pub struct Tracked<S> {
    inner: S,
    opts: RunOptions,
    full_batch_state: bool,
    solver_time: Duration,
    trace: Vec<TraceRecord>,
    stop: Option<StopReason>,
    last_good: Option<Tensor>,
    records: u64,
    /// Outer iterations done before this process (a resumed run): argmin's
    /// iteration counter restarts at 0 and has no setter, so the trace and
    /// the stopping rules add this instead.
    iter_offset: u64,
    method: String,
    settings: String,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, opts: RunOptions, full_batch_state: bool) -> Self {
        Self {
            inner,
            opts,
            full_batch_state,
            solver_time: Duration::ZERO,
            trace: Vec::new(),
            stop: None,
            last_good: None,
            records: 0,
            iter_offset: 0,
            method: String::new(),
            settings: String::new(),
        }
    }

    /// The run's state after outer iteration `iter`, as a checkpoint.
    fn snapshot<H>(&self, prob: &HfProblem, state: &State_<H>, iter: u64) -> Result<Snapshot>
    where
        S: Resumable<State_<H>>,
    {
        let mut snap = Snapshot {
            meta: SnapshotMeta {
                method: self.method.clone(),
                settings: self.settings.clone(),
                iter,
                finished: None,
                cost_bits: state.get_cost().to_bits(),
                counts: prob.counters().snapshot(),
                solver_seconds: self.solver_time.as_secs_f64(),
                records: self.records,
                trace: self.trace.clone(),
                extras: BTreeMap::new(),
                solver: None,
                tensors: Vec::new(),
            },
            tensors: BTreeMap::new(),
        };
        let w = state
            .get_param()
            .ok_or_else(|| SolverError::Argmin("state has no parameters".into()))?;
        snap.put("param", &w.0)?;
        if let Some(g) = state.get_gradient() {
            snap.put("gradient", &g.0)?;
        }
        snap.meta.solver = Some(self.inner.save_state(&mut snap)?);
        Ok(snap)
    }

    /// Takes over a snapshot's run: argmin's state, the solver's state, the
    /// counters, the clock and the trace.
    fn restore<H>(
        &mut self,
        problem: &mut Problem<HfProblem>,
        snap: &Snapshot,
        state: State_<H>,
    ) -> Result<State_<H>>
    where
        S: Resumable<State_<H>>,
    {
        let device = state
            .get_param()
            .map(|p| p.0.device().clone())
            .ok_or_else(|| SolverError::Argmin("no initial parameters".into()))?;
        let param = snap
            .get("param", &device)?
            .ok_or_else(|| SolverError::Config("the checkpoint has no parameters".into()))?;
        hf_problem(problem)?.objective().layout().check(&param)?;
        let mut state = state
            .param(Params(param.clone()))
            .cost(f64::from_bits(snap.meta.cost_bits));
        if let Some(g) = snap.get("gradient", &device)? {
            state = state.gradient(Params(g));
        }
        let state = self.inner.resume(problem, snap, state)?;
        let prob = hf_problem(problem)?;
        prob.take_deferred()?;
        // Whatever `resume` evaluated is not the run's work: the counters
        // continue from the checkpoint's.
        prob.counters().restore(snap.meta.counts);
        self.solver_time = Duration::from_secs_f64(snap.meta.solver_seconds);
        self.trace = snap.meta.trace.clone();
        self.records = snap.meta.records;
        self.iter_offset = snap.meta.iter;
        self.last_good = Some(param);
        Ok(state)
    }

    fn record<H>(
        &mut self,
        prob: &HfProblem,
        state: &State_<H>,
        kv: Option<&KV>,
        iter: u64,
    ) -> Result<()> {
        let w = state
            .get_param()
            .ok_or_else(|| SolverError::Argmin("state has no parameters".into()))?;
        let (objective, grad_norm) = match (self.full_batch_state, state.get_gradient()) {
            (true, Some(g)) => (state.get_cost(), vec::norm(&g.0)?),
            // Uncharged: the trace's own evaluation, not the solver's work.
            _ => {
                let (f, g) = prob.objective().loss_and_grad(&w.0)?;
                (f, vec::norm(&g)?)
            }
        };
        let test_every = self.opts.test_every.max(1);
        let test_accuracy = match &self.opts.test_accuracy {
            Some(eval) if self.records.is_multiple_of(test_every) => Some(eval(&w.0)?),
            _ => None,
        };
        let counts = prob.counters().snapshot();
        let get = |key: &str| kv.and_then(|kv| kv.get(key)).and_then(|v| v.get_float());
        let record = TraceRecord {
            iter,
            wall_seconds: self.solver_time.as_secs_f64(),
            objective,
            grad_norm,
            test_accuracy,
            grad_evals: counts.grad_evals,
            loss_evals: counts.loss_evals,
            hvp_evals: counts.hvp_evals,
            data_passes: counts.samples as f64 / prob.num_samples() as f64,
            damping: get("damping"),
            radius: get("radius"),
            cg_iters: get("cg_iters").map(|x| x as u64),
            step_size: get("step_size"),
        };
        self.records += 1;
        if let Some(cb) = &self.opts.on_record {
            cb(&record);
        }
        self.trace.push(record);
        Ok(())
    }

    /// The first stopping rule that fires, if any.
    fn check_rules(&self, prob: Option<&HfProblem>, iter: u64) -> Option<StopReason> {
        let iter = iter + self.iter_offset;
        if self
            .opts
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            return Some(StopReason::Interrupted);
        }
        let rules = &self.opts.stop;
        if let Some(last) = self.trace.last() {
            if rules.grad_tol.is_some_and(|tol| last.grad_norm <= tol) {
                return Some(StopReason::GradientTolerance);
            }
            if let (Some(tol), [.., prev, _]) = (rules.rel_decrease_tol, self.trace.as_slice())
                && prev.objective != last.objective
                && (prev.objective - last.objective).abs() / last.objective.abs().max(1.0) <= tol
            {
                return Some(StopReason::RelativeDecrease);
            }
        }
        if rules.max_iters.is_some_and(|m| iter >= m) {
            return Some(StopReason::MaxIterations);
        }
        if rules
            .max_seconds
            .is_some_and(|s| self.solver_time.as_secs_f64() >= s)
        {
            return Some(StopReason::WallTime);
        }
        if let Some(prob) = prob {
            let c = prob.counters().snapshot();
            if rules.max_hvps.is_some_and(|m| c.hvp_evals >= m) {
                return Some(StopReason::HvpBudget);
            }
            if rules.max_grad_evals.is_some_and(|m| c.grad_evals >= m) {
                return Some(StopReason::GradientBudget);
            }
            if rules
                .max_data_passes
                .is_some_and(|m| c.samples as f64 / prob.num_samples() as f64 >= m)
            {
                return Some(StopReason::DataPassBudget);
            }
        }
        None
    }
}

impl<S, H> Solver<HfProblem, State_<H>> for Tracked<S>
where
    S: Solver<HfProblem, State_<H>> + Resumable<State_<H>>,
    H: Clone,
{
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: State_<H>,
    ) -> Result<(State_<H>, Option<KV>), argmin::core::Error> {
        if let Some(snap) = self.opts.resume.clone() {
            return Ok((self.restore(problem, &snap, state)?, None));
        }
        let start = Instant::now();
        let (state, kv) = self.inner.init(problem, state)?;
        self.solver_time += start.elapsed();
        let prob = hf_problem(problem)?;
        prob.take_deferred()?;
        self.last_good = state.get_param().map(|p| p.0.clone());
        self.record(prob, &state, kv.as_ref(), 0)?;
        Ok((state, kv))
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: State_<H>,
    ) -> Result<(State_<H>, Option<KV>), argmin::core::Error> {
        let before = state.clone();
        let iter = state.get_iter() + 1 + self.iter_offset;
        let start = Instant::now();
        let result = self.inner.next_iter(problem, state);
        self.solver_time += start.elapsed();
        let prob = hf_problem(problem)?;
        let deferred = prob.take_deferred();
        let (state, kv) = match (result, deferred) {
            (Ok(ok), Ok(())) => ok,
            (Err(e), _) => {
                self.stop = Some(StopReason::Failed(format!("{:#}", SolverError::from(e))));
                return Ok((before, None));
            }
            (_, Err(e)) => {
                self.stop = Some(StopReason::Failed(e.to_string()));
                return Ok((before, None));
            }
        };
        // The last line of defence: no solver may hand back NaN parameters.
        match state.get_param() {
            Some(p) if vec::all_finite(&p.0)? => self.last_good = Some(p.0.clone()),
            _ => {
                self.stop = Some(StopReason::Failed(format!(
                    "{} produced non-finite parameters at iteration {iter}; kept the last finite ones",
                    self.inner.name()
                )));
                return Ok((before, None));
            }
        }
        let every = self.opts.trace_every.max(1);
        let at_limit = self.opts.stop.max_iters.is_some_and(|m| iter >= m);
        if iter.is_multiple_of(every) || at_limit {
            self.record(prob, &state, kv.as_ref(), iter)?;
        }
        if let Some(ck) = &self.opts.checkpoint
            && iter.is_multiple_of(ck.every.max(1))
        {
            (ck.sink)(&self.snapshot(prob, &state, iter)?)?;
        }
        Ok((state, kv))
    }

    fn terminate(&mut self, state: &State_<H>) -> TerminationStatus {
        if let Some(reason) = &self.stop {
            return TerminationStatus::Terminated(TerminationReason::SolverExit(
                reason.to_string(),
            ));
        }
        let inner = self.inner.terminate(state);
        if let TerminationStatus::Terminated(reason) = inner {
            self.stop = Some(StopReason::SolverConverged(reason.text().to_string()));
            return TerminationStatus::Terminated(reason);
        }
        if let Some(reason) = self.check_rules(None, state.get_iter()) {
            self.stop = Some(reason.clone());
            return TerminationStatus::Terminated(TerminationReason::SolverExit(
                reason.to_string(),
            ));
        }
        TerminationStatus::NotTerminated
    }
}

/// Budgets on counters need the problem, which `terminate` cannot see: the
/// wrapper checks them after each iteration through this problem-aware hook.
impl<S> Tracked<S> {
    fn check_budgets(&mut self, prob: &HfProblem, iter: u64) {
        if self.stop.is_none() {
            self.stop = self.check_rules(Some(prob), iter);
        }
    }
}

/// Runs `method` on `problem` from `w0`.
pub fn run(method: &Method, problem: HfProblem, w0: Tensor, opts: RunOptions) -> Result<RunOutput> {
    problem.objective().layout().check(&w0)?;
    if (opts.checkpoint.is_some() || opts.resume.is_some()) && !method.checkpointable() {
        return Err(unsupported(method.name()));
    }
    if let Some(snap) = &opts.resume {
        if snap.meta.method != method.name() || snap.meta.settings != method.fingerprint() {
            return Err(SolverError::Config(format!(
                "the checkpoint is of {} with settings {}, not of {} with settings {}",
                snap.meta.method,
                snap.meta.settings,
                method.name(),
                method.fingerprint()
            )));
        }
        // A finished run is not rerun: its result is in the checkpoint.
        if let Some(stop) = &snap.meta.finished {
            let params = snap
                .get("param", w0.device())?
                .ok_or_else(|| SolverError::Config("the checkpoint has no parameters".into()))?;
            problem.counters().restore(snap.meta.counts);
            return Ok(RunOutput {
                method: method.name().to_string(),
                params,
                trace: snap.meta.trace.clone(),
                stop: stop.clone(),
                counts: snap.meta.counts,
                solver_seconds: snap.meta.solver_seconds,
                extras: snap.meta.extras.clone(),
            });
        }
    }
    let full = method.full_batch_state();
    match method {
        Method::Sgd(c) => execute(method, Sgd::new(c.clone())?, problem, w0, opts, full),
        Method::NewtonCg(c) => execute(method, NewtonCg::new(c.clone())?, problem, w0, opts, full),
        Method::TrustRegion(c) => execute(method, c.build()?, problem, w0, opts, full),
        Method::Lbfgs(c) => execute(method, c.build()?, problem, w0, opts, full),
        Method::DenseNewton(c) => execute(
            method,
            DenseNewton::new(c.clone())?,
            problem,
            w0,
            opts,
            full,
        ),
    }
}

/// A thin layer so budget checks can see the problem after each iteration.
struct Budgeted<S>(Tracked<S>);

impl<S, H> Solver<HfProblem, State_<H>> for Budgeted<S>
where
    S: Solver<HfProblem, State_<H>> + Resumable<State_<H>>,
    H: Clone,
{
    fn name(&self) -> &str {
        self.0.name()
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: State_<H>,
    ) -> Result<(State_<H>, Option<KV>), argmin::core::Error> {
        let out = self.0.init(problem, state)?;
        self.0.check_budgets(hf_problem(problem)?, 0);
        Ok(out)
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: State_<H>,
    ) -> Result<(State_<H>, Option<KV>), argmin::core::Error> {
        let iter = state.get_iter() + 1;
        let out = self.0.next_iter(problem, state)?;
        self.0.check_budgets(hf_problem(problem)?, iter);
        Ok(out)
    }

    fn terminate(&mut self, state: &State_<H>) -> TerminationStatus {
        self.0.terminate(state)
    }
}

fn execute<S, H>(
    method: &Method,
    solver: S,
    problem: HfProblem,
    w0: Tensor,
    opts: RunOptions,
    full_batch_state: bool,
) -> Result<RunOutput>
where
    S: Solver<HfProblem, State_<H>> + Extras + Resumable<State_<H>>,
    H: Clone,
{
    let counters = problem.counters().clone();
    let checkpoint = opts.checkpoint.clone();
    let mut tracked = Tracked::new(solver, opts, full_batch_state);
    tracked.method = method.name().to_string();
    tracked.settings = method.fingerprint();
    let wrapped = Budgeted(tracked);
    let result = Executor::new(problem, wrapped)
        .configure(|s| s.param(Params(w0)))
        .timer(false)
        .run()
        .map_err(SolverError::from)?;
    let tracked = result.solver.0;
    let params = tracked
        .last_good
        .clone()
        .ok_or_else(|| SolverError::Argmin("the run ended without parameters".into()))?;
    let stop = tracked.stop.clone().unwrap_or(StopReason::MaxIterations);
    let out = RunOutput {
        method: method.name().to_string(),
        params,
        trace: tracked.trace.clone(),
        stop,
        counts: counters.snapshot(),
        solver_seconds: tracked.solver_time.as_secs_f64(),
        extras: tracked.inner.extras(),
    };
    // An interrupted run keeps its last periodic checkpoint to resume from;
    // any other end is final and recorded so that a resume does not rerun it.
    if let Some(ck) = checkpoint
        && out.stop != StopReason::Interrupted
    {
        (ck.sink)(&finished_snapshot(&tracked, &out)?)?;
    }
    Ok(out)
}

fn finished_snapshot<S>(tracked: &Tracked<S>, out: &RunOutput) -> Result<Snapshot> {
    let mut snap = Snapshot {
        meta: SnapshotMeta {
            method: tracked.method.clone(),
            settings: tracked.settings.clone(),
            iter: out.trace.last().map_or(0, |r| r.iter),
            finished: Some(out.stop.clone()),
            cost_bits: f64::NAN.to_bits(),
            counts: out.counts,
            solver_seconds: out.solver_seconds,
            records: tracked.records,
            trace: out.trace.clone(),
            extras: out.extras.clone(),
            solver: None,
            tensors: Vec::new(),
        },
        tensors: BTreeMap::new(),
    };
    snap.put("param", &out.params)?;
    Ok(snap)
}
