//! The open runner with a solver it has never seen: a heavy-ball gradient
//! descent with a decaying step, defined here, whose velocity and step count
//! are state of its own. Through `run_solver` it gets the trace and the
//! budgets, and a run stopped by a budget and resumed from its checkpoint
//! ends bit for bit where an uninterrupted run does.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use argmin::core::{KV, Problem, Solver};
use argmin::kv;
use candle_core::{DType, Device, Tensor};
use common::Quadratic;
use hessfree_model::CurvatureKind;
use hessfree_model::linop::vec;
use hessfree_solvers::argmin_glue::{hf_problem, init_state, param_device, take_point};
use hessfree_solvers::{
    Checkpointing, HfProblem, HfState, Params, Resumable, RunLabel, RunOptions, RunOutput,
    Snapshot, SolverState, StopReason, StopRules, run_solver,
};
use serde::{Deserialize, Serialize};

type R<T> = anyhow::Result<T>;

#[derive(Clone, Debug, Serialize)]
struct MomentumConfig {
    lr: f64,
    mu: f64,
}

/// `v ← g + μv`, `w ← w − lr/(1 + k/10)·v` at step k.
struct Momentum {
    config: MomentumConfig,
    velocity: Option<Tensor>,
    steps: u64,
}

impl Momentum {
    fn new(lr: f64, mu: f64) -> Self {
        Self {
            config: MomentumConfig { lr, mu },
            velocity: None,
            steps: 0,
        }
    }
}

impl Solver<HfProblem, HfState> for Momentum {
    fn name(&self) -> &str {
        "momentum GD"
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        Ok((init_state(problem, state)?, None))
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        mut state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        let (w, g, _) = take_point(&mut state)?;
        let v = match &self.velocity {
            Some(v) => vec::axpy(&g, self.config.mu, v)?,
            None => g,
        };
        let lr = self.config.lr / (1.0 + self.steps as f64 / 10.0);
        let w = vec::axpy(&w, -lr, &v)?;
        let (f, g) = hf_problem(problem)?.loss_and_grad(&w)?;
        self.velocity = Some(v);
        self.steps += 1;
        Ok((
            state.param(Params(w)).gradient(Params(g)).cost(f),
            Some(kv!("step_size" => lr;)),
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct MomentumState {
    steps: u64,
}

impl Resumable<HfState> for Momentum {
    fn label(&self) -> RunLabel {
        RunLabel::new("momentum", &self.config)
    }

    fn save_state(&self, snap: &mut Snapshot) -> hessfree_solvers::Result<SolverState> {
        if let Some(v) = &self.velocity {
            snap.put("velocity", v)?;
        }
        SolverState::new("momentum", &MomentumState { steps: self.steps })
    }

    fn resume(
        &mut self,
        _: &mut Problem<HfProblem>,
        saved: &Snapshot,
        state: HfState,
    ) -> hessfree_solvers::Result<HfState> {
        let MomentumState { steps } = saved.solver_state("momentum")?;
        self.steps = steps;
        self.velocity = saved.get("velocity", &param_device(&state)?)?;
        Ok(state)
    }

    fn extras(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([("steps".to_string(), self.steps as f64)])
    }
}

fn problem() -> HfProblem {
    HfProblem::full(
        Arc::new(Quadratic::new(
            &[1.0, 4.0, 9.0, 0.5],
            &[1.0, -2.0, 3.0, 0.25],
        )),
        CurvatureKind::Hessian,
    )
}

fn w0() -> R<Tensor> {
    Ok(Tensor::zeros(4, DType::F64, &Device::Cpu)?)
}

fn options(max_grad_evals: Option<u64>) -> RunOptions {
    RunOptions {
        stop: StopRules {
            max_iters: Some(25),
            max_grad_evals,
            grad_tol: None,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Every checkpoint the run hands out, through the file format and back.
fn collecting(every: u64) -> (Checkpointing, Arc<Mutex<Vec<Snapshot>>>) {
    let saved = Arc::new(Mutex::new(Vec::new()));
    let sink = saved.clone();
    let ck = Checkpointing {
        every,
        sink: Arc::new(move |snap: &Snapshot| {
            let bytes = snap.encode()?;
            let back = Snapshot::decode(&bytes).map_err(hessfree_solvers::SolverError::Config)?;
            sink.lock().unwrap().push(back);
            Ok(())
        }),
    };
    (ck, saved)
}

fn bits(t: &Tensor) -> R<Vec<u64>> {
    Ok(t.to_vec1::<f64>()?.iter().map(|x| x.to_bits()).collect())
}

/// The trace without its clock, which differs from run to run.
fn untimed(out: &RunOutput) -> Vec<hessfree_solvers::TraceRecord> {
    out.trace
        .iter()
        .cloned()
        .map(|mut r| {
            r.wall_seconds = 0.0;
            r
        })
        .collect()
}

#[test]
fn a_custom_solver_stopped_by_a_budget_resumes_bit_for_bit() -> R<()> {
    let full = run_solver(problem(), Momentum::new(0.1, 0.5), w0()?, options(None))?;
    assert_eq!(full.method, "momentum");
    assert_eq!(full.stop, StopReason::MaxIterations);
    assert_eq!(full.trace.len(), 26, "iteration 0 and 25 steps");
    assert_eq!(full.trace[3].step_size, Some(0.1 / 1.2), "the solver's KV");
    assert_eq!(full.extras["steps"], 25.0);
    assert!(full.trace[25].objective < full.trace[0].objective);

    // The start and 7 steps use 8 gradients: the budget stops it at step 7.
    let (ck, saved) = collecting(3);
    let stopped = run_solver(
        problem(),
        Momentum::new(0.1, 0.5),
        w0()?,
        RunOptions {
            checkpoint: Some(ck),
            ..options(Some(8))
        },
    )?;
    assert_eq!(stopped.stop, StopReason::GradientBudget);
    assert_eq!(stopped.trace.last().map(|r| r.iter), Some(7));
    let saved = saved.lock().unwrap().clone();
    let iters: Vec<_> = saved
        .iter()
        .map(|s| (s.meta.iter, s.meta.finished.is_some()))
        .collect();
    assert_eq!(iters, [(3, false), (6, false), (7, true)]);
    let last = saved[1].clone();
    assert!(last.tensors.contains_key("velocity"));

    let resumed = run_solver(
        problem(),
        Momentum::new(0.1, 0.5),
        w0()?,
        RunOptions {
            resume: Some(Arc::new(last.clone())),
            ..options(None)
        },
    )?;
    assert_eq!(resumed.stop, full.stop);
    assert_eq!(bits(&resumed.params)?, bits(&full.params)?);
    assert_eq!(untimed(&resumed), untimed(&full));
    assert_eq!(resumed.counts, full.counts);
    assert_eq!(resumed.extras, full.extras);

    // The finished checkpoint is not rerun: it gives back the stopped result.
    let again = run_solver(
        problem(),
        Momentum::new(0.1, 0.5),
        w0()?,
        RunOptions {
            resume: Some(Arc::new(saved[2].clone())),
            ..options(None)
        },
    )?;
    assert_eq!(again.stop, StopReason::GradientBudget);
    assert_eq!(bits(&again.params)?, bits(&stopped.params)?);

    // Other settings are another run: refused, naming both.
    let err = run_solver(
        problem(),
        Momentum::new(0.2, 0.5),
        w0()?,
        RunOptions {
            resume: Some(Arc::new(last)),
            ..options(None)
        },
    )
    .expect_err("a resume with another learning rate");
    let msg = err.to_string();
    assert!(
        msg.contains(r#""lr":0.1"#) && msg.contains(r#""lr":0.2"#),
        "{msg}"
    );
    Ok(())
}
