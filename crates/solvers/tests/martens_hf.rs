//! Hessian-free as Martens runs it: curvature mini-batches that walk one
//! shuffle of the training rows, CG iterates kept from 5 on, the preset's
//! settings refused or accepted as they should be, a run with curvature
//! batches stopped by a budget and resumed bit for bit, convergence on a
//! small least-squares problem, and non-finite steps still rejected; and
//! the option of gradients on large batches, with the curvature batch
//! inside each.

mod common;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use common::runs::{bits, collecting, untimed};
use common::{LeastSquares, Quadratic, t};
use hessfree_data::permutation;
use hessfree_model::cg::{CgOptions, CgStop, conjugate_gradient, save_points};
use hessfree_model::{CurvatureKind, LinOp, Objective, ParamLayout};
use hessfree_solvers::newton_cg::NewtonCgState;
use hessfree_solvers::{
    HfProblem, NewtonCg, NewtonCgConfig, RowBatches, RunOptions, RunOutput, StopReason, StopRules,
    run_solver,
};

type R<T> = anyhow::Result<T>;

/// A least-squares problem that records the rows each sub-sample is made of.
struct Recording {
    inner: LeastSquares,
    asked: Arc<Mutex<Vec<Vec<usize>>>>,
}

impl Objective for Recording {
    fn layout(&self) -> &ParamLayout {
        self.inner.layout()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn num_samples(&self) -> usize {
        self.inner.num_samples()
    }
    fn loss(&self, w: &Tensor) -> hessfree_model::Result<f64> {
        self.inner.loss(w)
    }
    fn loss_and_grad(&self, w: &Tensor) -> hessfree_model::Result<(f64, Tensor)> {
        self.inner.loss_and_grad(w)
    }
    fn curvature(&self, w: &Tensor, kind: CurvatureKind) -> hessfree_model::Result<Arc<dyn LinOp>> {
        self.inner.curvature(w, kind)
    }
    fn diag_curvature(&self, w: &Tensor) -> hessfree_model::Result<Tensor> {
        self.inner.diag_curvature(w)
    }
    fn subsample(&self, indices: &[usize]) -> hessfree_model::Result<Arc<dyn Objective>> {
        self.asked.lock().unwrap().push(indices.to_vec());
        self.inner.subsample(indices)
    }
}

fn iters(max_iters: u64) -> RunOptions {
    RunOptions {
        stop: StopRules {
            grad_tol: None,
            max_iters: Some(max_iters),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn batches(size: usize, seed: u64) -> Option<RowBatches> {
    Some(RowBatches { size, seed })
}

/// Martens' settings with batches of `size` rows (his preset's 15000 is
/// MNIST-sized).
fn martens(size: usize, seed: u64) -> NewtonCgConfig {
    NewtonCgConfig {
        curvature_batches: batches(size, seed),
        ..NewtonCgConfig::martens()
    }
}

/// A run from a fixed start on the 12-row fixture, with the rows of every
/// sub-sample it asked for and the solver state of every periodic
/// checkpoint (with its iteration), for the batch tests.
struct RecordedRun {
    out: RunOutput,
    asked: Vec<Vec<usize>>,
    states: Vec<(u64, NewtonCgState)>,
}

fn recorded_run(config: NewtonCgConfig, max_iters: u64) -> R<RecordedRun> {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let objective = Arc::new(Recording {
        inner: LeastSquares::fixture(12, 3),
        asked: asked.clone(),
    });
    let (ck, saved) = collecting(1);
    let out = run_solver(
        HfProblem::full(objective, CurvatureKind::GaussNewton),
        NewtonCg::new(config)?,
        t(&[0.3, -0.2, 0.1]),
        RunOptions {
            checkpoint: Some(ck),
            ..iters(max_iters)
        },
    )?;
    let states = saved
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.meta.finished.is_none())
        .map(|s| Ok((s.meta.iter, s.solver_state("newton-cg")?)))
        .collect::<R<_>>()?;
    let asked = asked.lock().unwrap().clone();
    Ok(RecordedRun { out, asked, states })
}

#[test]
fn curvature_batches_visit_every_row_once_per_cycle_in_the_shuffled_order() -> R<()> {
    let config = NewtonCgConfig {
        curvature_batches: batches(5, 7),
        ..NewtonCgConfig::default()
    };
    let RecordedRun { out, asked, states } = recorded_run(config, 7)?;
    assert_eq!(out.stop, StopReason::MaxIterations);

    assert_eq!(asked.len(), 7, "one curvature batch per outer iteration");
    assert!(asked.iter().all(|b| b.len() == 5));
    let order = permutation(12, 7, 0);
    assert_ne!(order, (0..12).collect::<Vec<_>>(), "the rows are shuffled");
    // The batches are consecutive blocks of one shuffle, wrapping round:
    // 35 rows drawn are the shuffle, twice over, and 11 rows of a third time.
    let drawn: Vec<usize> = asked.concat();
    let expected: Vec<usize> = (0..35).map(|j| order[j % 12]).collect();
    assert_eq!(drawn, expected);
    for cycle in drawn.chunks(12).filter(|c| c.len() == 12) {
        let mut rows = cycle.to_vec();
        rows.sort_unstable();
        assert_eq!(rows, (0..12).collect::<Vec<_>>(), "each row once per cycle");
    }

    // The cursor after k iterations is 5k mod 12, in every checkpoint.
    let positions: Vec<(u64, Option<usize>)> = states
        .iter()
        .map(|(iter, state)| (*iter, state.curvature_batch_position))
        .collect();
    let expected: Vec<(u64, Option<usize>)> =
        (1..=6).map(|k| (k, Some((5 * k as usize) % 12))).collect();
    assert_eq!(positions[..6], expected[..]);
    Ok(())
}

/// A diagonal operator, for CG on its own.
struct Diag(Tensor);

impl LinOp for Diag {
    fn dim(&self) -> usize {
        self.0.elem_count()
    }
    fn apply(&self, v: &Tensor) -> hessfree_model::Result<Tensor> {
        Ok((v * &self.0)?)
    }
    fn samples_per_apply(&self) -> usize {
        0
    }
}

#[test]
fn cg_keeps_martens_iterates_from_five() -> R<()> {
    // conjgrad_1.m: inext = 5, inext ← 1.3·inext, kept when i = ⌈inext⌉
    // (5·1.3³ = 10.985, so 11 follows 9).
    assert_eq!(
        save_points(Some(5), 250),
        [5, 7, 9, 11, 15, 19, 25, 32, 41, 54, 69, 90, 117, 152, 197]
    );
    assert_eq!(NewtonCgConfig::martens().cg_first_save, Some(5));
    assert_eq!(NewtonCgConfig::default().cg_first_save, None);

    let a = Diag(Tensor::new(
        (1..=50).map(|i| i as f64).collect::<Vec<_>>(),
        &Device::Cpu,
    )?);
    let b = Tensor::ones(50, DType::F64, &Device::Cpu)?;
    let opts = |first_save| CgOptions {
        max_iters: 30,
        rel_tol: 0.0,
        progress_eps: None,
        keep_iterates: true,
        first_save,
    };
    let kept = |first_save| -> R<Vec<usize>> {
        let out = conjugate_gradient(&a, &b, None, None, &opts(first_save))?;
        assert_eq!((out.stop, out.iters), (CgStop::MaxIters, 30));
        Ok(out.iterates.iter().map(|i| i.iter).collect())
    };
    // The final iterate is always kept too.
    assert_eq!(kept(Some(5))?, [5, 7, 9, 11, 15, 19, 25, 30]);
    // The default is unchanged.
    assert_eq!(kept(None)?, [1, 2, 3, 4, 6, 8, 11, 15, 20, 26, 30]);
    Ok(())
}

#[test]
fn martens_preset_and_its_settings_are_checked() -> R<()> {
    let m = NewtonCgConfig::martens();
    assert!(m.validate().is_ok());
    assert_eq!(m.initial_damping, 45.0);
    assert_eq!((m.cg_max_iters, m.cg_progress_eps), (250, Some(5e-4)));
    assert_eq!(m.warm_start_decay, Some(0.95));
    assert!(m.preconditioner && m.preconditioner_exponent == 0.75);
    assert!(m.rho_on_curvature_batch && m.warm_start_from_final);
    assert_eq!(m.curvature_batches.map(|b| b.size), Some(15_000));

    // Off, the new settings are not in the JSON: older reports' settings
    // and checkpoint labels stay byte for byte what they were.
    let json = serde_json::to_string(&NewtonCgConfig::default())?;
    for key in [
        "curvature_batches",
        "rho_on_curvature_batch",
        "cg_first_save",
        "warm_start_from_final",
    ] {
        assert!(!json.contains(key), "{key} in {json}");
        assert!(serde_json::to_string(&m)?.contains(key));
    }
    let back: NewtonCgConfig = serde_json::from_str(&json)?;
    assert_eq!(back, NewtonCgConfig::default());

    let refused = |c: NewtonCgConfig, says: &str| {
        let err = NewtonCg::new(c).err().expect(says).to_string();
        assert!(err.contains(says), "{err:?} should say {says:?}");
    };
    refused(
        NewtonCgConfig {
            curvature_batches: None,
            ..m.clone()
        },
        "rho on the curvature batch needs curvature batches",
    );
    refused(martens(0, 0), "curvature batch size must be at least 1");
    // Settings no run could use, each refused by name before any work.
    for (bad, says) in [
        (
            NewtonCgConfig {
                initial_damping: 1e-14,
                ..NewtonCgConfig::default()
            },
            "damping 0.00000000000001 must lie between the min damping",
        ),
        (
            NewtonCgConfig {
                armijo_c: 1.0,
                ..NewtonCgConfig::default()
            },
            "Armijo constant must be in (0, 1), got 1",
        ),
        (
            NewtonCgConfig {
                max_failures: 0,
                ..NewtonCgConfig::default()
            },
            "max failures must be at least 1",
        ),
        (
            NewtonCgConfig {
                preconditioner_exponent: f64::NAN,
                ..NewtonCgConfig::default()
            },
            "preconditioner exponent must be finite and >= 0, got NaN",
        ),
        (
            NewtonCgConfig {
                warm_start_decay: Some(1.5),
                ..NewtonCgConfig::default()
            },
            "warm-start decay must be in (0, 1], got 1.5",
        ),
    ] {
        refused(bad, says);
    }
    refused(
        NewtonCgConfig {
            cg_first_save: Some(0),
            ..m.clone()
        },
        "the first kept CG iterate must be at least 1",
    );

    // Against the problem, before any step: a batch larger than the data,
    // and a fixed curvature sub-sample, whose rows are not the data's.
    let ls = Arc::new(LeastSquares::fixture(10, 3));
    let err = run_solver(
        HfProblem::full(ls.clone(), CurvatureKind::GaussNewton),
        NewtonCg::new(m)?,
        t(&[0.0; 3]),
        iters(3),
    )
    .expect_err("15000 rows of 10");
    assert!(
        err.to_string()
            .contains("curvature batch size 15000 exceeds the 10 training samples"),
        "{err}"
    );
    let fixed = ls.subsample(&[0, 2, 4, 6])?;
    let err = run_solver(
        HfProblem::new(ls, fixed, CurvatureKind::GaussNewton),
        NewtonCg::new(martens(3, 0))?,
        t(&[0.0; 3]),
        iters(3),
    )
    .expect_err("batches of a fixed sub-sample");
    assert!(err.to_string().contains("fixed sub-sample of 4"), "{err}");
    Ok(())
}

#[test]
fn gradient_batches_walk_the_shuffle_and_hold_each_curvature_batch() -> R<()> {
    let config = NewtonCgConfig {
        gradient_batches: batches(8, 7),
        curvature_batches: batches(3, 99),
        ..NewtonCgConfig::default()
    };
    let RecordedRun { out, asked, states } = recorded_run(config, 5)?;
    assert_eq!(out.stop, StopReason::MaxIterations);

    // Each iteration asks for its gradient batch, then for the curvature
    // batch: the first 3 of those 8 rows (the curvature seed is unused).
    assert_eq!(asked.len(), 10, "two sub-samples per outer iteration");
    let order = permutation(12, 7, 0);
    for (k, pair) in asked.chunks(2).enumerate() {
        let expected: Vec<usize> = (0..8).map(|j| order[(8 * k + j) % 12]).collect();
        assert_eq!(pair[0], expected, "gradient batch {k}");
        assert_eq!(pair[1], expected[..3], "curvature batch {k}");
    }

    // The state holds batch values, so the trace evaluates the full
    // objective itself: its last record is the full loss at the result.
    let last = out.trace.last().expect("a trace");
    assert_eq!(
        last.objective,
        LeastSquares::fixture(12, 3).loss(&out.params)?
    );
    // One full gradient at the start, then one batch gradient of 8 rows
    // per iteration, and no other gradient.
    assert_eq!(out.counts.grad_evals, 6);

    let positions: Vec<(Option<usize>, Option<usize>)> = states
        .iter()
        .map(|(_, state)| {
            (
                state.gradient_batch_position,
                state.curvature_batch_position,
            )
        })
        .collect();
    assert_eq!(
        positions[..4],
        [
            (Some(8), None),
            (Some(4), None),
            (Some(0), None),
            (Some(8), None)
        ]
    );
    Ok(())
}

#[test]
fn hf_with_gradient_batches_stopped_by_a_budget_resumes_bit_for_bit() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(40, 4));
    let config = NewtonCgConfig {
        gradient_batches: batches(16, 5),
        ..martens(7, 3)
    };
    let full = hf_run(&ls, &config, iters(10))?;
    assert_eq!(full.stop, StopReason::MaxIterations);
    assert!(full.trace[10].objective < full.trace[0].objective);

    let (ck, saved) = collecting(2);
    let stopped = hf_run(
        &ls,
        &config,
        RunOptions {
            checkpoint: Some(ck),
            ..iters(7)
        },
    )?;
    assert_eq!(stopped.trace.last().map(|r| r.iter), Some(7));
    let last = saved
        .lock()
        .unwrap()
        .iter()
        .rfind(|s| s.meta.finished.is_none())
        .expect("a periodic checkpoint")
        .clone();
    assert_eq!(last.meta.iter, 6);
    let state: NewtonCgState = last.solver_state("newton-cg")?;
    // Six batches of 16 from 40 rows: 96 drawn, 16 into the third cycle.
    assert_eq!(state.gradient_batch_position, Some(16));
    assert_eq!(state.curvature_batch_position, None);

    let resumed = hf_run(
        &ls,
        &config,
        RunOptions {
            resume: Some(Arc::new(last.clone())),
            ..iters(10)
        },
    )?;
    assert_eq!(bits(&resumed.params), bits(&full.params));
    assert_eq!(untimed(&resumed), untimed(&full));
    assert_eq!(resumed.counts, full.counts);

    // A gradient batch of every row is the full set in a shuffled order:
    // the same trajectory as full gradients, to rounding in the sums.
    let plain = NewtonCgConfig {
        gradient_batches: None,
        curvature_batches: None,
        rho_on_curvature_batch: false,
        ..config.clone()
    };
    let whole = hf_run(
        &ls,
        &NewtonCgConfig {
            gradient_batches: batches(40, 5),
            ..plain.clone()
        },
        iters(6),
    )?;
    let reference = hf_run(&ls, &plain, iters(6))?;
    assert_eq!(whole.trace.len(), reference.trace.len());
    for (a, b) in whole.trace.iter().zip(&reference.trace) {
        let rel = (a.objective - b.objective).abs() / b.objective.abs();
        assert!(
            rel < 1e-12,
            "iter {}: {} vs {}",
            a.iter,
            a.objective,
            b.objective
        );
    }
    // Full gradients and an Armijo search: every accepted step descends.
    assert!(
        reference
            .trace
            .windows(2)
            .all(|p| p[1].objective < p[0].objective)
    );

    let err = hf_run(
        &ls,
        &NewtonCgConfig {
            gradient_batches: batches(50, 5),
            ..config
        },
        iters(1),
    )
    .expect_err("gradient batches larger than the data");
    assert!(
        err.to_string()
            .contains("gradient batch size 50 exceeds the 40"),
        "{err}"
    );
    Ok(())
}

fn hf_run(ls: &Arc<LeastSquares>, config: &NewtonCgConfig, opts: RunOptions) -> R<RunOutput> {
    Ok(run_solver(
        HfProblem::full(ls.clone(), CurvatureKind::GaussNewton),
        NewtonCg::new(config.clone())?,
        t(&[0.3, -0.2, 0.1, 0.5]),
        opts,
    )?)
}

#[test]
fn hf_with_curvature_batches_stopped_by_a_budget_resumes_bit_for_bit() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(40, 4));
    let config = martens(7, 3);
    let full = hf_run(&ls, &config, iters(12))?;
    assert_eq!(full.method, "newton-cg");
    assert_eq!(full.stop, StopReason::MaxIterations);
    assert_eq!(full.trace.len(), 13);
    assert!(full.trace[12].objective < full.trace[0].objective);

    let (ck, saved) = collecting(2);
    let budget = full.trace[7].grad_evals;
    let stopped = hf_run(
        &ls,
        &config,
        RunOptions {
            checkpoint: Some(ck),
            stop: StopRules {
                max_grad_evals: Some(budget),
                ..iters(12).stop
            },
            ..Default::default()
        },
    )?;
    assert_eq!(stopped.stop, StopReason::GradientBudget);
    assert_eq!(stopped.trace.last().map(|r| r.iter), Some(7));
    let saved = saved.lock().unwrap().clone();
    let last = saved
        .iter()
        .rfind(|s| s.meta.finished.is_none())
        .expect("a periodic checkpoint")
        .clone();
    assert_eq!(last.meta.iter, 6);
    assert!(last.tensors.contains_key("previous"));
    let state: NewtonCgState = last.solver_state("newton-cg")?;
    // Six batches of 7 from 40 rows: 42 drawn, the cursor 2 into the second cycle.
    assert_eq!(state.curvature_batch_position, Some(2));

    let resumed = hf_run(
        &ls,
        &config,
        RunOptions {
            resume: Some(Arc::new(last.clone())),
            ..iters(12)
        },
    )?;
    assert_eq!(resumed.stop, full.stop);
    assert_eq!(bits(&resumed.params), bits(&full.params));
    assert_eq!(untimed(&resumed), untimed(&full));
    assert_eq!(resumed.counts, full.counts);
    assert_eq!(resumed.extras, full.extras);

    // Another shuffle is another run: refused, naming both seeds.
    let err = hf_run(
        &ls,
        &martens(7, 4),
        RunOptions {
            resume: Some(Arc::new(last)),
            ..iters(12)
        },
    )
    .expect_err("a resume with another batch seed");
    let msg = err.to_string();
    assert!(
        msg.contains(r#""seed":3"#) && msg.contains(r#""seed":4"#),
        "{msg}"
    );
    Ok(())
}

/// The least-squares minimiser from the normal equations XᵀX w = Xᵀy,
/// solved by Gaussian elimination.
fn least_squares_solution(ls: &LeastSquares) -> Vec<f64> {
    let d = ls.x[0].len();
    let mut m = vec![vec![0.0; d + 1]; d];
    for (row, y) in ls.x.iter().zip(&ls.y) {
        for (mi, xi) in m.iter_mut().zip(row) {
            for (mij, xj) in mi.iter_mut().zip(row) {
                *mij += xi * xj;
            }
            mi[d] += xi * y;
        }
    }
    for c in 0..d {
        let p = (c..d)
            .max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))
            .unwrap();
        m.swap(c, p);
        let pivot = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *x -= f * p;
                }
            }
        }
    }
    m.iter()
        .enumerate()
        .map(|(i, row)| row[d] / row[i])
        .collect()
}

fn to_tolerance(grad_tol: f64, max_iters: u64) -> RunOptions {
    RunOptions {
        stop: StopRules {
            grad_tol: Some(grad_tol),
            max_iters: Some(max_iters),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Curvature on batches of a quarter of the rows (Martens' `numchunks = 4`).
#[test]
fn hf_with_curvature_batches_converges_on_least_squares() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(60, 4));
    let xstar = least_squares_solution(&ls);
    let all: Vec<usize> = (0..60).collect();
    let fstar = common::least_squares_grad(&ls.x, &ls.y, &all, &xstar).0;

    // With ρ on the full objective the damping follows the true reduction,
    // and the run converges to the minimiser.
    let config = NewtonCgConfig {
        rho_on_curvature_batch: false,
        ..martens(15, 1)
    };
    let out = hf_run(&ls, &config, to_tolerance(1e-9, 300))?;
    assert_eq!(out.stop, StopReason::GradientTolerance, "{}", out.stop);
    let w = out.params.to_vec1::<f64>()?;
    for (wi, xi) in w.iter().zip(&xstar) {
        assert!((wi - xi).abs() < 1e-6, "{w:?} vs {xstar:?}");
    }
    assert!(
        out.trace
            .windows(2)
            .all(|p| p[1].objective <= p[0].objective)
    );
    // Every product is on a batch of 15 rows. The samples touched are the
    // full gradients and losses, the preconditioner's full diagonal and the
    // batch's forward pass each iteration, and 15 per product.
    let c = out.counts;
    let iterations = out.trace.len() as u64 - 1;
    assert!(c.hvp_evals > iterations);
    assert_eq!(
        c.samples,
        60 * (c.grad_evals + c.loss_evals + iterations) + 15 * (iterations + c.hvp_evals),
        "{c:?} over {iterations} iterations"
    );

    // With the whole preset, ρ on the curvature batch: the batch's loss
    // change is the full one's far from the minimiser, so most of the gap
    // closes; near it the batch's gradient no longer matches the full one,
    // ρ is noise and λ grows, so it is not run to a tight tolerance here.
    let out = hf_run(&ls, &martens(15, 1), to_tolerance(1e-9, 100))?;
    let (f0, f) = (out.trace[0].objective, out.trace.last().unwrap().objective);
    assert!(
        f - fstar < 0.01 * (f0 - fstar),
        "f {f}, f* {fstar}, f0 {f0}"
    );
    Ok(())
}

/// f = ½‖w‖² − (1, 1)·w, NaN beyond ‖w‖ > 1.2, while the minimiser (1, 1)
/// has norm 1.41: every step towards it that lands past the edge must be
/// shortened or dropped, never taken.
#[test]
fn hf_rejects_non_finite_steps() -> R<()> {
    let mut q = Quadratic::new(&[1.0, 1.0], &[1.0, 1.0]);
    q.nan_radius = 1.2;
    let config = NewtonCgConfig {
        initial_damping: 1e-6,
        ..martens(1, 0)
    };
    let out = run_solver(
        HfProblem::full(Arc::new(q), CurvatureKind::GaussNewton),
        NewtonCg::new(config.clone())?,
        t(&[0.0, 0.0]),
        iters(20),
    )?;
    match &out.stop {
        StopReason::MaxIterations => {}
        StopReason::Failed(msg) => assert!(msg.contains("rejected"), "{msg}"),
        other => panic!("expected the cap or a failure, got {other}"),
    }
    let w = out.params.to_vec1::<f64>()?;
    assert!(w.iter().all(|x| x.is_finite()), "{w:?}");
    assert!((w[0] * w[0] + w[1] * w[1]).sqrt() <= 1.2, "{w:?}");
    assert!(out.trace.iter().all(|r| r.objective.is_finite()));
    // The full first step lands at (1, 1), in the NaN region: the line
    // search shortens it, and ρ there (−∞) raises λ.
    let first = &out.trace[1];
    assert!(first.step_size.unwrap() < 1.0, "{first:?}");
    assert!(first.objective < out.trace[0].objective);
    assert!(out.trace[2].damping.unwrap() > config.initial_damping);
    Ok(())
}
