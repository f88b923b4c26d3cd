//! SGD's momentum against a plain reference written here over the same
//! batches: heavy-ball exactly as before Nesterov's was added (bit for bit),
//! Nesterov's in PyTorch's form, with and without a schedule; its settings,
//! old and new, in JSON; a Nesterov run stopped by a budget resuming bit for
//! bit; and a non-finite batch stopping it before any NaN step.

mod common;

use std::sync::Arc;

use common::runs::{bits, close, collecting, untimed};
use common::{LeastSquares, Quadratic, least_squares_grad, t};
use hessfree_data::BatchSampler;
use hessfree_model::CurvatureKind;
use hessfree_solvers::sgd::SgdState;
use hessfree_solvers::{
    HfProblem, LrSchedule, RunLabel, RunOptions, RunOutput, Sgd, SgdConfig, StopReason, StopRules,
    run_solver,
};

type R<T> = anyhow::Result<T>;

const W0: [f64; 4] = [0.3, -0.2, 0.1, 0.5];

fn steps(max_iters: u64) -> RunOptions {
    RunOptions {
        stop: StopRules {
            grad_tol: None,
            max_iters: Some(max_iters),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn sgd_run(ls: &Arc<LeastSquares>, config: &SgdConfig, opts: RunOptions) -> R<RunOutput> {
    Ok(run_solver(
        HfProblem::full(ls.clone(), CurvatureKind::Hessian),
        Sgd::new(config.clone())?,
        t(&W0),
        opts,
    )?)
}

/// torch.optim.SGD without dampening or weight decay, written out:
/// `buf ← μ·buf + g` (`buf ← g` at first), `d = g + μ·buf` for Nesterov
/// and `d = buf` otherwise, `w ← w − lr·d`; the iterate after each update.
fn reference_sgd(
    ls: &LeastSquares,
    c: &SgdConfig,
    n: usize,
    lr_at: impl Fn(usize) -> f64,
) -> Vec<Vec<f64>> {
    let mut sampler = BatchSampler::new(ls.rows(), c.batch_size, c.seed).unwrap();
    let mu = c.momentum;
    let mut w = W0.to_vec();
    let mut buf: Option<Vec<f64>> = None;
    let mut out = Vec::new();
    for k in 0..n {
        let (_, g) = least_squares_grad(&ls.x, &ls.y, &sampler.next_batch(), &w);
        let b: Vec<f64> = match &buf {
            Some(b) if mu > 0.0 => (0..w.len()).map(|j| g[j] + mu * b[j]).collect(),
            _ => g.clone(),
        };
        let d: Vec<f64> = if c.nesterov {
            (0..w.len()).map(|j| g[j] + mu * b[j]).collect()
        } else {
            b.clone()
        };
        for j in 0..w.len() {
            w[j] -= lr_at(k) * d[j];
        }
        buf = Some(b);
        out.push(w.clone());
    }
    out
}

fn iterates(ls: &Arc<LeastSquares>, config: &SgdConfig, n: usize) -> R<Vec<Vec<f64>>> {
    (1..=n)
        .map(|k| {
            let out = sgd_run(ls, config, steps(k as u64))?;
            assert_eq!(out.stop, StopReason::MaxIterations);
            Ok(out.params.to_vec1::<f64>()?)
        })
        .collect()
}

fn as_bits(runs: &[Vec<f64>]) -> Vec<Vec<u64>> {
    runs.iter()
        .map(|w| w.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn heavy_ball_and_plain_sgd_are_bit_for_bit_what_they_were() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    for momentum in [0.9, 0.0] {
        let config = SgdConfig {
            learning_rate: 0.1,
            batch_size: 3,
            momentum,
            seed: 4,
            ..SgdConfig::default()
        };
        let got = iterates(&ls, &config, 8)?;
        let expected = reference_sgd(&ls, &config, 8, |_| 0.1);
        assert_eq!(as_bits(&got), as_bits(&expected), "momentum {momentum}");
    }
    Ok(())
}

#[test]
fn nesterov_follows_the_reference_and_differs_from_heavy_ball() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let config = SgdConfig {
        learning_rate: 0.1,
        batch_size: 3,
        momentum: 0.9,
        seed: 4,
        nesterov: true,
        ..SgdConfig::default()
    };
    let got = iterates(&ls, &config, 8)?;
    let expected = reference_sgd(&ls, &config, 8, |_| 0.1);
    for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(close(g, e, 1e-12), "update {}: {g:?} vs {e:?}", k + 1);
    }
    // Its first update is already (1 + μ) times heavy-ball's.
    let heavy = iterates(
        &ls,
        &SgdConfig {
            nesterov: false,
            ..config.clone()
        },
        1,
    )?;
    for j in 0..4 {
        let ratio = (W0[j] - got[0][j]) / (W0[j] - heavy[0][j]);
        assert!((ratio - 1.9).abs() < 1e-12, "coordinate {j}: {ratio}");
    }

    // With a step decay: halved after every 3 updates.
    let scheduled = SgdConfig {
        schedule: "step:3:0.5".parse()?,
        ..config
    };
    let got = iterates(&ls, &scheduled, 8)?;
    let expected = reference_sgd(&ls, &scheduled, 8, |k| 0.1 * 0.5f64.powi(k as i32 / 3));
    for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            close(g, e, 1e-12),
            "scheduled update {}: {g:?} vs {e:?}",
            k + 1
        );
    }
    let out = sgd_run(&ls, &scheduled, steps(8))?;
    let sizes: Vec<Option<f64>> = out.trace.iter().map(|r| r.step_size).collect();
    assert_eq!(
        sizes,
        [
            None,
            Some(0.1),
            Some(0.1),
            Some(0.1),
            Some(0.05),
            Some(0.05),
            Some(0.05),
            Some(0.025),
            Some(0.025)
        ]
    );
    Ok(())
}

#[test]
fn unscheduled_sgd_keeps_its_trace_without_step_sizes() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let out = sgd_run(
        &ls,
        &SgdConfig {
            learning_rate: 0.1,
            batch_size: 3,
            ..SgdConfig::default()
        },
        steps(4),
    )?;
    assert_eq!(out.trace.len(), 5);
    assert!(out.trace.iter().all(|r| r.step_size.is_none()));
    Ok(())
}

#[test]
fn nesterov_sgd_stopped_by_a_budget_resumes_bit_for_bit() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let config = SgdConfig {
        learning_rate: 0.1,
        batch_size: 3,
        momentum: 0.8,
        seed: 9,
        nesterov: true,
        schedule: "warmup:2,exp:0.95".parse()?,
    };
    let full = sgd_run(&ls, &config, steps(25))?;
    assert_eq!(full.method, "sgd");
    assert_eq!(full.stop, StopReason::MaxIterations);
    assert_eq!(full.trace.len(), 26);
    assert!(full.trace[25].objective < full.trace[0].objective);

    let (ck, saved) = collecting(3);
    let stopped = sgd_run(
        &ls,
        &config,
        RunOptions {
            checkpoint: Some(ck),
            stop: StopRules {
                max_grad_evals: Some(7),
                ..steps(25).stop
            },
            ..Default::default()
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
    let state: SgdState = last.solver_state("sgd")?;
    assert_eq!(state.steps, 6);

    let resumed = sgd_run(
        &ls,
        &config,
        RunOptions {
            resume: Some(Arc::new(last.clone())),
            ..steps(25)
        },
    )?;
    assert_eq!(resumed.stop, full.stop);
    assert_eq!(bits(&resumed.params), bits(&full.params));
    assert_eq!(untimed(&resumed), untimed(&full));
    assert_eq!(resumed.counts, full.counts);

    // Heavy-ball is another run: refused.
    let err = sgd_run(
        &ls,
        &SgdConfig {
            nesterov: false,
            ..config
        },
        RunOptions {
            resume: Some(Arc::new(last)),
            ..steps(25)
        },
    )
    .expect_err("a heavy-ball resume of a Nesterov run");
    assert!(err.to_string().contains(r#""nesterov":true"#), "{err}");
    Ok(())
}

#[test]
fn sgd_settings_without_nesterov_or_a_schedule_serialise_as_before() -> R<()> {
    let old = r#"{"learning_rate":0.5,"batch_size":100,"momentum":0.0,"seed":0}"#;
    assert_eq!(serde_json::to_string(&SgdConfig::default())?, old);
    assert_eq!(
        serde_json::from_str::<SgdConfig>(old)?,
        SgdConfig::default()
    );
    // Checkpoints of such runs still name the same settings.
    assert_eq!(
        RunLabel::new("sgd", &SgdConfig::default()).settings,
        r#"{"method":"sgd","learning_rate":0.5,"batch_size":100,"momentum":0.0,"seed":0}"#
    );

    let new = SgdConfig {
        momentum: 0.9,
        nesterov: true,
        schedule: "warmup:10,cosine:100:0.01".parse()?,
        ..SgdConfig::default()
    };
    let json = serde_json::to_string(&new)?;
    assert_eq!(
        json,
        r#"{"learning_rate":0.5,"batch_size":100,"momentum":0.9,"seed":0,"nesterov":true,"schedule":{"kind":"cosine","steps":100,"floor":0.01,"warmup_steps":10}}"#
    );
    assert_eq!(serde_json::from_str::<SgdConfig>(&json)?, new);

    // A checkpoint state written before schedules has no step count.
    let state: SgdState = serde_json::from_str(r#"{"sampler":null}"#)?;
    assert_eq!(state.steps, 0);
    Ok(())
}

#[test]
fn sgd_refuses_nesterov_without_momentum_and_bad_schedules() {
    let cases = [
        (
            SgdConfig {
                nesterov: true,
                ..SgdConfig::default()
            },
            "SGD Nesterov momentum needs a momentum in (0, 1), got 0",
        ),
        (
            SgdConfig {
                learning_rate: f64::NAN,
                nesterov: true,
                momentum: 0.9,
                ..SgdConfig::default()
            },
            "SGD learning rate must be finite and > 0, got NaN",
        ),
        (
            SgdConfig {
                schedule: LrSchedule {
                    decay: hessfree_solvers::Decay::Exponential { gamma: 1.5 },
                    warmup_steps: 0,
                },
                ..SgdConfig::default()
            },
            "SGD learning-rate schedule `exp:1.5`: the exponential decay rate must be in (0, 1], got 1.5",
        ),
        (
            SgdConfig {
                schedule: "cosine:10:0.6".parse().unwrap(),
                ..SgdConfig::default()
            },
            "the cosine floor 0.6 is above the learning rate 0.5",
        ),
        (
            SgdConfig {
                batch_size: 0,
                ..SgdConfig::default()
            },
            "SGD batch size must be at least 1",
        ),
    ];
    for (config, expected) in cases {
        let err = Sgd::new(config).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains(expected)),
            "{err:?} should say {expected:?}"
        );
    }
    assert!(
        SgdConfig {
            nesterov: true,
            momentum: 0.5,
            ..SgdConfig::default()
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn a_non_finite_batch_stops_nesterov_sgd_as_diverged_without_taking_the_step() -> R<()> {
    // NaN beyond ‖w‖ > 1; the minimiser is at (5, 5).
    let poisoned = || {
        let mut q = Quadratic::new(&[1.0, 1.0], &[5.0, 5.0]);
        q.nan_radius = 1.0;
        HfProblem::full(Arc::new(q), CurvatureKind::Hessian)
    };
    let config = SgdConfig {
        learning_rate: 0.1,
        batch_size: 1,
        momentum: 0.9,
        nesterov: true,
        ..SgdConfig::default()
    };
    let out = run_solver(
        poisoned(),
        Sgd::new(config.clone())?,
        t(&[0.0, 0.0]),
        steps(50),
    )?;
    let last = out.trace.last().map(|r| r.iter).expect("a trace");
    match &out.stop {
        StopReason::Failed(msg) => {
            assert!(msg.starts_with("the run diverged:"), "{msg}");
            assert!(msg.contains(&format!("at step {}", last + 1)), "{msg}");
            assert!(msg.contains("lower the learning rate (0.1)"), "{msg}");
        }
        other => panic!("expected a divergence, got {other}"),
    }
    assert!(last >= 1, "it took finite steps first");
    let before = run_solver(poisoned(), Sgd::new(config)?, t(&[0.0, 0.0]), steps(last))?;
    assert_eq!(
        bits(&out.params),
        bits(&before.params),
        "no step taken after"
    );
    assert!(out.params.to_vec1::<f64>()?.iter().all(|x| x.is_finite()));
    Ok(())
}
