//! Adam against a plain reference written here (scalar loops over the same
//! batches), bias correction and schedule included; its settings refused
//! when out of range; a non-finite batch stopping it before any NaN step;
//! and a run stopped by a budget and resumed from its checkpoint ending bit
//! for bit where an uninterrupted run does.

mod common;

use std::sync::Arc;

use argmin::core::Executor;
use common::runs::{bits, close, collecting, untimed};
use common::{LeastSquares, Quadratic, least_squares_grad, t};
use hessfree_data::BatchSampler;
use hessfree_model::CurvatureKind;
use hessfree_solvers::adam::AdamState;
use hessfree_solvers::{
    Adam, AdamConfig, Decay, HfProblem, LrSchedule, Params, RunOptions, RunOutput, SolverError,
    StopReason, StopRules, run_solver,
};

type R<T> = anyhow::Result<T>;

const W0: [f64; 4] = [0.3, -0.2, 0.1, 0.5];

fn problem(ls: &Arc<LeastSquares>) -> HfProblem {
    HfProblem::full(ls.clone(), CurvatureKind::Hessian)
}

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

fn adam_run(ls: &Arc<LeastSquares>, config: &AdamConfig, opts: RunOptions) -> R<RunOutput> {
    Ok(run_solver(
        problem(ls),
        Adam::new(config.clone())?,
        t(&W0),
        opts,
    )?)
}

/// torch.optim.Adam, written out: the iterate after each of `n` updates,
/// with the rate of update `k` (from 0) given by `lr_at(k)`.
fn reference_adam(
    ls: &LeastSquares,
    c: &AdamConfig,
    n: usize,
    lr_at: impl Fn(usize) -> f64,
) -> Vec<Vec<f64>> {
    let mut sampler = BatchSampler::new(ls.rows(), c.batch_size, c.seed).unwrap();
    let mut w = W0.to_vec();
    let mut m = vec![0.0; w.len()];
    let mut v = vec![0.0; w.len()];
    let mut out = Vec::new();
    for k in 0..n {
        let (_, g) = least_squares_grad(&ls.x, &ls.y, &sampler.next_batch(), &w);
        let step = (k + 1) as i32;
        for j in 0..w.len() {
            m[j] = c.beta1 * m[j] + (1.0 - c.beta1) * g[j];
            v[j] = c.beta2 * v[j] + (1.0 - c.beta2) * g[j] * g[j];
            let m_hat = m[j] / (1.0 - c.beta1.powi(step));
            let v_hat = v[j] / (1.0 - c.beta2.powi(step));
            w[j] -= lr_at(k) * m_hat / (v_hat.sqrt() + c.eps);
        }
        out.push(w.clone());
    }
    out
}

fn assert_matches_reference(
    ls: &Arc<LeastSquares>,
    config: &AdamConfig,
    reference: &[Vec<f64>],
) -> R<()> {
    for (k, expected) in reference.iter().enumerate() {
        let out = adam_run(ls, config, steps(k as u64 + 1))?;
        assert_eq!(out.stop, StopReason::MaxIterations);
        let got = out.params.to_vec1::<f64>()?;
        assert!(
            close(&got, expected, 1e-12),
            "after update {}: {got:?} vs the reference {expected:?}",
            k + 1
        );
    }
    Ok(())
}

#[test]
fn adam_with_pytorch_defaults_follows_the_reference_from_its_bias_corrected_first_step() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let config = AdamConfig {
        batch_size: 3,
        seed: 5,
        ..AdamConfig::default()
    };
    assert_eq!(
        (config.learning_rate, config.beta1, config.beta2, config.eps),
        (1e-3, 0.9, 0.999, 1e-8),
        "PyTorch's defaults"
    );
    // 6 updates of 3 from 10 samples: the batches cross an epoch.
    let reference = reference_adam(&ls, &config, 6, |_| 1e-3);
    assert_matches_reference(&ls, &config, &reference)?;

    // Bias-corrected, the first update moves every coordinate by
    // lr·g/(|g| + ε) ≈ lr against its gradient's sign; uncorrected it would
    // be (1−β₁)/√(1−β₂) ≈ 3.2 times that.
    let first = BatchSampler::new(10, 3, 5)?.next_batch();
    let (_, g) = least_squares_grad(&ls.x, &ls.y, &first, &W0);
    let w1 = adam_run(&ls, &config, steps(1))?.params.to_vec1::<f64>()?;
    for j in 0..4 {
        let moved = W0[j] - w1[j];
        let expected = 1e-3 * g[j] / (g[j].abs() + 1e-8);
        assert!(
            (moved - expected).abs() <= 1e-12 * expected.abs(),
            "coordinate {j}: moved {moved}, expected {expected}"
        );
        assert!((moved.abs() - 1e-3).abs() < 1e-6, "{moved}");
    }
    Ok(())
}

#[test]
fn adam_with_other_betas_and_a_warmed_up_cosine_schedule_follows_the_reference() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let config = AdamConfig {
        learning_rate: 0.05,
        beta1: 0.5,
        beta2: 0.9,
        eps: 1e-6,
        batch_size: 4,
        seed: 11,
        schedule: LrSchedule {
            decay: Decay::Cosine {
                steps: 4,
                floor: 0.01,
            },
            warmup_steps: 2,
        },
    };
    // Warm-up 0.025, 0.05; cosine 0.05 → 0.01 over updates 3 to 6; then the floor.
    let lr_at = |k: usize| match k {
        0 | 1 => 0.05 * (k + 1) as f64 / 2.0,
        2..=5 => 0.01 + 0.04 * 0.5 * (1.0 + (std::f64::consts::PI * (k - 2) as f64 / 4.0).cos()),
        _ => 0.01,
    };
    let reference = reference_adam(&ls, &config, 8, lr_at);
    assert_matches_reference(&ls, &config, &reference)?;

    // The scheduled rate is the trace's step size.
    let out = adam_run(&ls, &config, steps(8))?;
    let sizes: Vec<f64> = out.trace[1..]
        .iter()
        .map(|r| r.step_size.unwrap())
        .collect();
    let expected: Vec<f64> = (0..8).map(lr_at).collect();
    assert!(close(&sizes, &expected, 1e-15), "{sizes:?} vs {expected:?}");
    assert_eq!(out.trace[0].step_size, None);
    Ok(())
}

#[test]
fn adam_stopped_by_a_budget_resumes_bit_for_bit() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let config = AdamConfig {
        learning_rate: 0.02,
        batch_size: 3,
        seed: 2,
        schedule: "warmup:3,cosine:15:0.001".parse()?,
        ..AdamConfig::default()
    };
    let full = adam_run(&ls, &config, steps(25))?;
    assert_eq!(full.method, "adam");
    assert_eq!(full.stop, StopReason::MaxIterations);
    assert_eq!(full.trace.len(), 26, "iteration 0 and 25 updates");
    assert_eq!(full.counts.grad_evals, 25, "one batch gradient per update");
    assert!(full.trace[25].objective < full.trace[0].objective);

    // A batch gradient per update: a budget of 7 stops it after update 7.
    let (ck, saved) = collecting(3);
    let stopped = adam_run(
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
    assert!(last.tensors.contains_key("first_moment"));
    assert!(last.tensors.contains_key("second_moment"));
    let state: AdamState = last.solver_state("adam")?;
    assert_eq!(state.steps, 6);
    // 18 samples drawn from 10: the second epoch, 8 in.
    let sampler = state.sampler.expect("the sampler's place");
    assert_eq!((sampler.epoch, sampler.position), (1, 8));

    let resumed = adam_run(
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

    // Other betas are another run: refused, naming both settings.
    let err = adam_run(
        &ls,
        &AdamConfig {
            beta2: 0.99,
            ..config.clone()
        },
        RunOptions {
            resume: Some(Arc::new(last)),
            ..steps(25)
        },
    )
    .expect_err("a resume with other betas");
    let msg = err.to_string();
    assert!(
        msg.contains(r#""beta2":0.999"#) && msg.contains(r#""beta2":0.99,"#),
        "{msg}"
    );
    Ok(())
}

#[test]
fn adam_refuses_settings_out_of_range_naming_them() {
    let ok = AdamConfig::default();
    assert!(ok.validate().is_ok());
    let cases = [
        (
            AdamConfig {
                learning_rate: 0.0,
                ..ok.clone()
            },
            "Adam learning rate must be finite and > 0, got 0",
        ),
        (
            AdamConfig {
                learning_rate: -1e-3,
                ..ok.clone()
            },
            "Adam learning rate must be finite and > 0, got -0.001",
        ),
        (
            AdamConfig {
                learning_rate: f64::NAN,
                ..ok.clone()
            },
            "Adam learning rate must be finite and > 0, got NaN",
        ),
        (
            AdamConfig {
                learning_rate: f64::INFINITY,
                ..ok.clone()
            },
            "Adam learning rate must be finite and > 0, got inf",
        ),
        (
            AdamConfig {
                beta1: 1.0,
                ..ok.clone()
            },
            "Adam beta1 must be in [0, 1), got 1",
        ),
        (
            AdamConfig {
                beta1: -0.1,
                ..ok.clone()
            },
            "Adam beta1 must be in [0, 1), got -0.1",
        ),
        (
            AdamConfig {
                beta2: 1.5,
                ..ok.clone()
            },
            "Adam beta2 must be in [0, 1), got 1.5",
        ),
        (
            AdamConfig {
                beta2: f64::NAN,
                ..ok.clone()
            },
            "Adam beta2 must be in [0, 1), got NaN",
        ),
        (
            AdamConfig {
                eps: 0.0,
                ..ok.clone()
            },
            "Adam eps must be finite and > 0, got 0",
        ),
        (
            AdamConfig {
                eps: -1e-8,
                ..ok.clone()
            },
            "Adam eps must be finite and > 0, got -0.00000001",
        ),
        (
            AdamConfig {
                batch_size: 0,
                ..ok.clone()
            },
            "Adam batch size must be at least 1",
        ),
        (
            AdamConfig {
                schedule: LrSchedule {
                    decay: Decay::Step {
                        every: 0,
                        factor: 0.5,
                    },
                    warmup_steps: 0,
                },
                ..ok.clone()
            },
            "Adam learning-rate schedule `step:0:0.5`: step decay needs a period of at least 1 step",
        ),
        (
            AdamConfig {
                schedule: "cosine:100:0.01".parse().unwrap(),
                ..ok.clone()
            },
            "the cosine floor 0.01 is above the learning rate 0.001",
        ),
    ];
    for (config, expected) in cases {
        let err = config.validate().expect_err(expected).to_string();
        assert!(err.contains(expected), "{err:?} should say {expected:?}");
        // The solver is never built from them either.
        let built = Adam::new(config).err().map(|e| e.to_string());
        assert_eq!(built.as_deref(), Some(err.as_str()));
    }
    // Betas of 0 are allowed (no averaging), as in PyTorch.
    assert!(
        AdamConfig {
            beta1: 0.0,
            beta2: 0.0,
            ..ok
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn adam_refuses_a_batch_larger_than_the_training_set_before_any_step() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let config = AdamConfig {
        batch_size: 11,
        ..AdamConfig::default()
    };
    let err = adam_run(&ls, &config, steps(5)).expect_err("batch 11 of 10 samples");
    assert!(
        err.to_string()
            .contains("Adam batch size 11 exceeds the 10 training samples"),
        "{err}"
    );
    Ok(())
}

/// NaN beyond ‖w‖ > 1 while the minimiser is at (5, 5): Adam walks out of
/// the valid ball at a rate of ~0.3 per coordinate and update.
fn poisoned() -> HfProblem {
    let mut q = Quadratic::new(&[1.0, 1.0], &[5.0, 5.0]);
    q.nan_radius = 1.0;
    HfProblem::full(Arc::new(q), CurvatureKind::Hessian)
}

#[test]
fn a_non_finite_batch_stops_adam_as_diverged_without_taking_the_step() -> R<()> {
    let config = AdamConfig {
        learning_rate: 0.3,
        batch_size: 1,
        ..AdamConfig::default()
    };
    let origin = || t(&[0.0, 0.0]);
    // Updates 1 to 3 reach ‖w‖ ≈ 1.27, where the loss is NaN: update 4
    // evaluates it there and must refuse to step.
    let out = run_solver(poisoned(), Adam::new(config.clone())?, origin(), steps(50))?;
    match &out.stop {
        StopReason::Failed(msg) => {
            assert!(msg.starts_with("the run diverged:"), "{msg}");
            assert!(msg.contains("at step 4"), "{msg}");
            assert!(msg.contains("lower the learning rate (0.3)"), "{msg}");
        }
        other => panic!("expected a divergence, got {other}"),
    }
    assert_eq!(out.trace.last().map(|r| r.iter), Some(3));
    assert_eq!(out.counts.grad_evals, 4, "the refused batch was evaluated");
    let three = run_solver(poisoned(), Adam::new(config.clone())?, origin(), steps(3))?;
    assert_eq!(three.stop, StopReason::MaxIterations);
    assert_eq!(
        bits(&out.params),
        bits(&three.params),
        "no step taken after"
    );
    assert!(out.params.to_vec1::<f64>()?.iter().all(|x| x.is_finite()));

    // Under argmin's own executor the error is the solver's Diverged.
    let run = Executor::new(poisoned(), Adam::new(config)?)
        .configure(|s| s.param(Params(origin())).max_iters(50))
        .run();
    match run.map_err(SolverError::from) {
        Err(SolverError::Diverged(msg)) => assert!(msg.contains("at step 4"), "{msg}"),
        Err(other) => panic!("expected Diverged, got {other}"),
        Ok(_) => panic!("a NaN batch was accepted"),
    }
    Ok(())
}

#[test]
fn adam_settings_serialise_with_the_schedule_left_out_when_constant() -> R<()> {
    let json = serde_json::to_string(&AdamConfig::default())?;
    assert_eq!(
        json,
        r#"{"learning_rate":0.001,"beta1":0.9,"beta2":0.999,"eps":1e-8,"batch_size":100,"seed":0}"#
    );
    assert_eq!(
        serde_json::from_str::<AdamConfig>(&json)?,
        AdamConfig::default()
    );
    let scheduled = AdamConfig {
        schedule: "exp:0.99".parse()?,
        ..AdamConfig::default()
    };
    let json = serde_json::to_string(&scheduled)?;
    assert!(
        json.ends_with(r#""seed":0,"schedule":{"kind":"exponential","gamma":0.99}}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<AdamConfig>(&json)?, scheduled);
    Ok(())
}
