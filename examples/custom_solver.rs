//! Your own argmin solver through hessfree's open runner: a heavy-ball
//! gradient descent with a decaying step, whose velocity and step count are
//! state of its own, on softmax regression over MNIST. The runner gives it
//! the trace, the stop rules and budgets, the interrupt flag and
//! checkpoints; implementing `Resumable` (save and restore its own state) is
//! all it takes.
//!
//! ```sh
//! cargo run --example custom_solver -- 2000 30                        # ROWS STEPS
//! cargo run --example custom_solver -- 2000 30 --interrupt-at 12 CKPT # stop at step 12
//! cargo run --example custom_solver -- 2000 30 --resume CKPT          # go on from there
//! ```
//!
//! The last line it prints is a checksum of the final parameters' bits: an
//! interrupted and resumed run prints the same one as an uninterrupted run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use argmin::core::{KV, Problem, Solver};
use argmin::kv;
use hessfree::model::linop::vec;
use hessfree::prelude::*;
use hessfree::solvers::argmin_glue::{hf_problem, init_state, param_device, take_point};
use hessfree::solvers::{
    Checkpointing, HfState, Params, Resumable, RunLabel, Snapshot, SolverState, run_solver,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize)]
struct MomentumConfig {
    lr: f64,
    mu: f64,
}

/// `v ← g + μv`, `w ← w − lr/(1 + k/10)·v` at step `k`.
struct Momentum {
    config: MomentumConfig,
    velocity: Option<Tensor>,
    steps: u64,
}

impl Solver<HfProblem, HfState> for Momentum {
    fn name(&self) -> &str {
        "momentum"
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

/// The solver's scalar state in a checkpoint; its velocity goes in as a tensor.
#[derive(Serialize, Deserialize)]
struct MomentumState {
    steps: u64,
}

impl Resumable<HfState> for Momentum {
    fn label(&self) -> RunLabel {
        RunLabel::new("momentum", &self.config)
    }

    fn save_state(&self, snap: &mut Snapshot) -> hessfree::solvers::Result<SolverState> {
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
    ) -> hessfree::solvers::Result<HfState> {
        let MomentumState { steps } = saved.solver_state("momentum")?;
        self.steps = steps;
        self.velocity = saved.get("velocity", &param_device(&state)?)?;
        Ok(state)
    }

    fn extras(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([("steps".to_string(), self.steps as f64)])
    }
}

fn main() -> anyhow::Result<()> {
    let usage = "usage: custom_solver ROWS STEPS [--interrupt-at K CKPT | --resume CKPT]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> anyhow::Result<usize> {
        let a = args.get(i).ok_or_else(|| anyhow::anyhow!("{usage}"))?;
        a.parse().map_err(|e| anyhow::anyhow!("{a}: {e}; {usage}"))
    };
    let (rows, steps) = (number(0)?, number(1)? as u64);
    let mut options = RunOptions {
        stop: StopRules {
            max_iters: Some(steps),
            grad_tol: None,
            ..StopRules::default()
        },
        ..RunOptions::default()
    };
    match args.get(2).map(String::as_str) {
        None => {}
        Some("--interrupt-at") => {
            let at = number(3)? as u64;
            let path =
                std::path::PathBuf::from(args.get(4).ok_or_else(|| anyhow::anyhow!("{usage}"))?);
            // Checkpoints go to a file (written atomically); the interrupt
            // flag, which Ctrl-C would set in a real program, is set here
            // once step `at` is recorded.
            options.checkpoint = Some(Checkpointing {
                every: 1,
                sink: Arc::new(move |snap: &Snapshot| {
                    let bytes = snap.encode()?;
                    hessfree::report::write_atomic(&path, bytes)
                        .map_err(|e| hessfree::solvers::SolverError::Config(e.to_string()))
                }),
            });
            let flag = Arc::new(AtomicBool::new(false));
            let set = flag.clone();
            options.interrupt = Some(flag);
            options.on_record = Some(Arc::new(move |r| {
                if r.iter >= at {
                    set.store(true, Ordering::SeqCst);
                }
            }));
        }
        Some("--resume") => {
            let path = args.get(3).ok_or_else(|| anyhow::anyhow!("{usage}"))?;
            let bytes = std::fs::read(path)?;
            let snap = Snapshot::decode(&bytes).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            options.resume = Some(Arc::new(snap));
        }
        Some(other) => anyhow::bail!("unknown argument {other}; {usage}"),
    }

    let splits = load_dir(&resolve_data_dir(None)?.path, MNIST_CLASSES)?;
    let rows = rows.min(splits.train.len());
    let t = splits
        .train
        .select(&(0..rows).collect::<Vec<_>>())
        .to_tensors(&Device::Cpu, DType::F64)?;
    let data = Batches::new(&t.images, &t.one_hot, Batches::DEFAULT_CHUNK_ROWS)?;
    let model =
        hessfree::model::Model::new(hessfree::model::ModelSpec::Softmax { bias: true }, 784, 10)?;
    let objective = hessfree::model::objective_for(&model, data, vec![Penalty::L2 { lam: 1e-4 }])?;
    let problem = HfProblem::full(objective, CurvatureKind::Hessian);
    let w0 = Tensor::zeros(model.layout().len(), DType::F64, &Device::Cpu)?;
    let solver = Momentum {
        config: MomentumConfig { lr: 0.5, mu: 0.9 },
        velocity: None,
        steps: 0,
    };
    let out = run_solver(problem, solver, w0, options)?;
    for r in &out.trace {
        println!(
            "iter {:>3}  loss {:.8}  |grad| {:.3e}",
            r.iter, r.objective, r.grad_norm
        );
    }
    println!("stopped: {} after {} steps", out.stop, out.extras["steps"]);
    // FNV-1a over the parameters' bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for x in out.params.to_vec1::<f64>()? {
        for b in x.to_bits().to_le_bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("parameters fnv1a {hash:016x}");
    Ok(())
}
