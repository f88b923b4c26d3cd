//! Running any solver under argmin's `Executor`, with one trace, one set of
//! stopping rules and one clock for all of them: [`run_solver`] takes any
//! argmin [`Solver`] that implements [`Resumable`], so a solver defined
//! outside this crate gets the same trace, budgets and checkpoints as ours.
//!
//! The runner wraps the solver: it times only the solver's own work (the
//! clock is paused while the trace is evaluated), records a [`TraceRecord`]
//! per iteration, enforces the [`StopRules`], honours an interrupt flag, and
//! turns a failing iteration into a stop with the last good parameters
//! instead of losing the whole run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use argmin::core::{Executor, KV, Problem, Solver, State, TerminationReason, TerminationStatus};
use candle_core::Tensor;
use hessfree_model::linop::vec;
use serde::Serialize;

use crate::argmin_glue::{HfState, hf_problem};
use crate::argmin_params::Params;
use crate::checkpoint::{Snapshot, SnapshotMeta, SolverState};
use crate::error::{Result, SolverError};
use crate::problem::HfProblem;
use crate::stop::{StopReason, StopRules};
use crate::trace::{Counts, Scores, TraceRecord};

/// Scores a parameter vector for the trace (test accuracy, reconstruction errors).
pub type Evaluator = Arc<dyn Fn(&Tensor) -> Result<Scores> + Send + Sync>;
/// Called with every new trace record (progress bars, logs).
pub type OnRecord = Arc<dyn Fn(&TraceRecord) + Send + Sync>;

/// How [`run_solver`] runs a solver: stopping rules, trace, checkpoints and resume.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// When to stop.
    pub stop: StopRules,
    /// Record a trace row every this many iterations (0 or 1: every one).
    pub trace_every: u64,
    /// Evaluate the scores on every this many recorded iterations.
    pub test_every: u64,
    /// Scores the parameters for the trace; `None` leaves the scores empty.
    pub scores: Option<Evaluator>,
    /// Called with every trace row as it is recorded.
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

/// When and where checkpoints are written.
#[derive(Clone)]
pub struct Checkpointing {
    /// Checkpoint after every this many outer iterations (0 behaves as 1).
    pub every: u64,
    /// Takes every checkpoint.
    pub sink: CheckpointSink,
}

/// Names a run in its checkpoints: a resume of another method or of other
/// settings is refused instead of silently mixing two runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLabel {
    /// The method's name, e.g. `"sgd"`.
    pub method: String,
    /// The settings as JSON.
    pub settings: String,
}

impl RunLabel {
    /// `settings`' fields (a struct) with `"method": method` in front: the
    /// JSON a `Method` of the harness serialises to, so checkpoints written
    /// before the runner was opened still match their settings.
    pub fn new<T: Serialize>(method: &str, settings: &T) -> Self {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            method: &'a str,
            #[serde(flatten)]
            settings: &'a T,
        }
        Self {
            method: method.to_string(),
            settings: serde_json::to_string(&Tagged { method, settings }).unwrap_or_default(),
        }
    }
}

/// What [`run_solver`] needs of an argmin [`Solver`] besides iterating: a
/// name for its checkpoints, its state between outer iterations saved and
/// restored exactly (so that a resumed run repeats the uninterrupted one bit
/// for bit), and the numbers it reports after a run.
pub trait Resumable<St> {
    /// The run's name and settings, checked against a checkpoint's on resume.
    fn label(&self) -> RunLabel;

    /// `false` makes [`run_solver`] refuse checkpoints and resumes before any
    /// work, for a solver whose state is out of reach (argmin's L-BFGS).
    fn checkpointable(&self) -> bool {
        true
    }

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

    /// Solver-specific numbers for [`RunOutput::extras`] (dense Newton's
    /// Hessian bytes, Newton-CG's final damping...).
    fn extras(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// Whether the state's cost and gradient are the full-batch objective's,
    /// which the trace then reuses; `false` (SGD's mini-batch values) makes
    /// the trace evaluate them, uncharged.
    fn full_batch_state(&self) -> bool {
        true
    }
}

/// The error for a checkpoint or resume of a solver that cannot save its state.
pub fn unsupported(name: &str) -> SolverError {
    SolverError::Config(format!(
        "{name} cannot be checkpointed (its argmin state is not exposed); run it without --checkpoint-every"
    ))
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The method's name, as in its [`RunLabel`].
    pub method: String,
    /// The last accepted parameters (never NaN: a failing step is not kept).
    pub params: Tensor,
    /// One row per recorded iteration, the starting point first.
    pub trace: Vec<TraceRecord>,
    /// Why the run ended.
    pub stop: StopReason,
    /// The problem's cost counters at the end.
    pub counts: Counts,
    /// The solver's own seconds, trace evaluation excluded.
    pub solver_seconds: f64,
    /// Solver-specific numbers (dense Newton's Hessian bytes, assembly time...).
    pub extras: BTreeMap<String, f64>,
}

/// The solver under the runner: it times only the solver's own work (the
/// clock is paused while the trace is evaluated), records the trace, and
/// turns a failing iteration into a stop with the last good parameters.
struct Tracked<S> {
    inner: S,
    opts: RunOptions,
    solver_time: Duration,
    trace: Vec<TraceRecord>,
    stop: Option<StopReason>,
    last_good: Option<Tensor>,
    records: u64,
    /// Outer iterations done before this process (a resumed run): argmin's
    /// iteration counter restarts at 0 and has no setter, so the trace and
    /// the stopping rules add this instead.
    iter_offset: u64,
    label: RunLabel,
}

impl<S> Tracked<S> {
    fn new(inner: S, opts: RunOptions, label: RunLabel) -> Self {
        Self {
            inner,
            opts,
            solver_time: Duration::ZERO,
            trace: Vec::new(),
            stop: None,
            last_good: None,
            records: 0,
            iter_offset: 0,
            label,
        }
    }

    /// The run's state after outer iteration `iter`, as a checkpoint.
    fn snapshot<H>(&self, prob: &HfProblem, state: &HfState<H>, iter: u64) -> Result<Snapshot>
    where
        S: Resumable<HfState<H>>,
    {
        let mut snap = Snapshot {
            meta: SnapshotMeta {
                method: self.label.method.clone(),
                settings: self.label.settings.clone(),
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
        state: HfState<H>,
    ) -> Result<HfState<H>>
    where
        S: Resumable<HfState<H>>,
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
        state: &HfState<H>,
        kv: Option<&KV>,
        iter: u64,
    ) -> Result<()>
    where
        S: Resumable<HfState<H>>,
    {
        let w = state
            .get_param()
            .ok_or_else(|| SolverError::Argmin("state has no parameters".into()))?;
        let (objective, grad_norm) = match (self.inner.full_batch_state(), state.get_gradient()) {
            (true, Some(g)) => (state.get_cost(), vec::norm(&g.0)?),
            // Uncharged: the trace's own evaluation, not the solver's work.
            _ => {
                let (f, g) = prob.objective().loss_and_grad(&w.0)?;
                (f, vec::norm(&g)?)
            }
        };
        let test_every = self.opts.test_every.max(1);
        let scores = match &self.opts.scores {
            Some(eval) if self.records.is_multiple_of(test_every) => eval(&w.0)?,
            _ => Scores::default(),
        };
        let counts = prob.counters().snapshot();
        let get = |key: &str| kv.and_then(|kv| kv.get(key)).and_then(|v| v.get_float());
        let record = TraceRecord {
            iter,
            wall_seconds: self.solver_time.as_secs_f64(),
            objective,
            grad_norm,
            test_accuracy: scores.test_accuracy,
            train_error: scores.train_error,
            test_error: scores.test_error,
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

impl<S, H> Solver<HfProblem, HfState<H>> for Tracked<S>
where
    S: Solver<HfProblem, HfState<H>> + Resumable<HfState<H>>,
    H: Clone,
{
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState<H>,
    ) -> Result<(HfState<H>, Option<KV>), argmin::core::Error> {
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
        state: HfState<H>,
    ) -> Result<(HfState<H>, Option<KV>), argmin::core::Error> {
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

    fn terminate(&mut self, state: &HfState<H>) -> TerminationStatus {
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

/// Runs `solver` on `problem` from `w0` under argmin's `Executor`, with the
/// trace, stopping rules, budgets, interrupt and checkpoints of `opts`. Any
/// argmin solver over [`HfState`] gets all of them by implementing
/// [`Resumable`].
pub fn run_solver<S, H>(
    problem: HfProblem,
    solver: S,
    w0: Tensor,
    opts: RunOptions,
) -> Result<RunOutput>
where
    S: Solver<HfProblem, HfState<H>> + Resumable<HfState<H>>,
    H: Clone,
{
    problem.objective().layout().check(&w0)?;
    let label = solver.label();
    if (opts.checkpoint.is_some() || opts.resume.is_some()) && !solver.checkpointable() {
        return Err(unsupported(&label.method));
    }
    if let Some(snap) = &opts.resume {
        if snap.meta.method != label.method || snap.meta.settings != label.settings {
            return Err(SolverError::Config(format!(
                "the checkpoint is of {} with settings {}, not of {} with settings {}",
                snap.meta.method, snap.meta.settings, label.method, label.settings
            )));
        }
        // A finished run is not rerun: its result is in the checkpoint.
        if let Some(stop) = &snap.meta.finished {
            let params = snap
                .get("param", w0.device())?
                .ok_or_else(|| SolverError::Config("the checkpoint has no parameters".into()))?;
            problem.counters().restore(snap.meta.counts);
            return Ok(RunOutput {
                method: label.method,
                params,
                trace: snap.meta.trace.clone(),
                stop: stop.clone(),
                counts: snap.meta.counts,
                solver_seconds: snap.meta.solver_seconds,
                extras: snap.meta.extras.clone(),
            });
        }
    }
    execute(solver, label, problem, w0, opts)
}

/// A thin layer so budget checks can see the problem after each iteration.
struct Budgeted<S>(Tracked<S>);

impl<S, H> Solver<HfProblem, HfState<H>> for Budgeted<S>
where
    S: Solver<HfProblem, HfState<H>> + Resumable<HfState<H>>,
    H: Clone,
{
    fn name(&self) -> &str {
        self.0.name()
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState<H>,
    ) -> Result<(HfState<H>, Option<KV>), argmin::core::Error> {
        let out = self.0.init(problem, state)?;
        self.0.check_budgets(hf_problem(problem)?, 0);
        Ok(out)
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState<H>,
    ) -> Result<(HfState<H>, Option<KV>), argmin::core::Error> {
        let iter = state.get_iter() + 1;
        let out = self.0.next_iter(problem, state)?;
        self.0.check_budgets(hf_problem(problem)?, iter);
        Ok(out)
    }

    fn terminate(&mut self, state: &HfState<H>) -> TerminationStatus {
        self.0.terminate(state)
    }
}

fn execute<S, H>(
    solver: S,
    label: RunLabel,
    problem: HfProblem,
    w0: Tensor,
    opts: RunOptions,
) -> Result<RunOutput>
where
    S: Solver<HfProblem, HfState<H>> + Resumable<HfState<H>>,
    H: Clone,
{
    let counters = problem.counters().clone();
    let checkpoint = opts.checkpoint.clone();
    let tracked = Tracked::new(solver, opts, label);
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
        method: tracked.label.method.clone(),
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
            method: tracked.label.method.clone(),
            settings: tracked.label.settings.clone(),
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
