//! Every solver of the command line's table against problems with known
//! answers, run through the open runner as the harness runs them.

// The solvers crate's test problems (one place for them).
#[path = "../../solvers/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{Quadratic, Rosenbrock, t};
use hessfree_harness::compare::{NewtonSettings, RunDefaults, plan};
use hessfree_harness::{Method, ProblemSpec, run};
use hessfree_model::{
    Batches, CurvatureKind, Model, ModelSpec, Objective, Penalty, SoftmaxObjective,
};
use hessfree_solvers::{
    AdamConfig, DenseNewtonConfig, HfProblem, KfacConfig, LbfgsConfig, NewtonCgConfig, RowBatches,
    RunOptions, SgdConfig, StopReason, StopRules, TrustRegionConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

fn all_methods() -> Vec<Method> {
    vec![
        Method::NewtonCg(NewtonCgConfig::default()),
        Method::TrustRegion(TrustRegionConfig::default()),
        Method::Lbfgs(LbfgsConfig::default()),
        Method::DenseNewton(DenseNewtonConfig::default()),
    ]
}

fn opts(grad_tol: f64, max_iters: u64) -> RunOptions {
    RunOptions {
        stop: StopRules {
            grad_tol: Some(grad_tol),
            max_iters: Some(max_iters),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn max_abs_diff(a: &Tensor, b: &[f64]) -> f64 {
    a.to_vec1::<f64>()
        .unwrap()
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn every_solver_finds_the_quadratic_minimiser() -> R<()> {
    let q = Arc::new(Quadratic::new(
        &[1.0, 3.0, 10.0, 40.0],
        &[1.0, -2.0, 0.5, 4.0],
    ));
    let xstar = q.minimiser();
    let w0 = t(&[0.0; 4]);
    for method in all_methods() {
        let out = run(
            &method,
            HfProblem::full(q.clone(), CurvatureKind::Hessian),
            w0.clone(),
            opts(1e-10, 200),
        )?;
        assert_eq!(
            out.stop,
            StopReason::GradientTolerance,
            "{}: {}",
            method.name(),
            out.stop
        );
        assert!(
            max_abs_diff(&out.params, &xstar) < 1e-8,
            "{}",
            method.name()
        );
        assert!(out.trace.len() >= 2 && out.trace[0].iter == 0);
        assert!(
            out.trace
                .windows(2)
                .all(|w| w[1].objective <= w[0].objective + 1e-15),
            "{}",
            method.name()
        );
    }
    // SGD on a deterministic gradient is gradient descent; lr < 2/λ_max converges.
    let sgd = Method::Sgd(SgdConfig {
        learning_rate: 0.045,
        batch_size: 1,
        momentum: 0.0,
        seed: 1,
        ..Default::default()
    });
    let out = run(
        &sgd,
        HfProblem::full(q.clone(), CurvatureKind::Hessian),
        w0,
        opts(1e-10, 5000),
    )?;
    assert_eq!(out.stop, StopReason::GradientTolerance, "{}", out.stop);
    assert!(max_abs_diff(&out.params, &xstar) < 1e-8);
    Ok(())
}

#[test]
fn trust_region_solves_rosenbrock() -> R<()> {
    let problem = HfProblem::full(Arc::new(Rosenbrock::new()), CurvatureKind::Hessian);
    let method = Method::TrustRegion(TrustRegionConfig {
        initial_radius: 1.0,
        cg_rel_tol: 1e-8,
        ..Default::default()
    });
    let out = run(&method, problem, t(&[-1.2, 1.0]), opts(1e-9, 500))?;
    assert_eq!(out.stop, StopReason::GradientTolerance, "{}", out.stop);
    assert!(
        max_abs_diff(&out.params, &[1.0, 1.0]) < 1e-7,
        "{:?}",
        out.params.to_vec1::<f64>()?
    );
    assert!(out.trace.iter().any(|r| r.radius.is_some()));
    // Newton-CG copes with Rosenbrock's indefinite regions too.
    let problem = HfProblem::full(Arc::new(Rosenbrock::new()), CurvatureKind::Hessian);
    let out = run(
        &Method::NewtonCg(NewtonCgConfig::default()),
        problem,
        t(&[-1.2, 1.0]),
        opts(1e-9, 500),
    )?;
    assert_eq!(out.stop, StopReason::GradientTolerance, "{}", out.stop);
    assert!(max_abs_diff(&out.params, &[1.0, 1.0]) < 1e-7);
    Ok(())
}

fn logistic(n: usize, bias: bool) -> R<SoftmaxObjective> {
    let (d, k) = (12, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut x = vec![0f64; n * d];
    let mut y = vec![0f64; n * k];
    for i in 0..n {
        let c = rng.random_range(0..k);
        y[i * k + c] = 1.0;
        for j in 0..d {
            x[i * d + j] = rng.random_range(0.0..1.0) + if j % k == c { 0.5 } else { 0.0 };
        }
    }
    let x = Tensor::from_vec(x, (n, d), &Device::Cpu)?;
    let y = Tensor::from_vec(y, (n, k), &Device::Cpu)?;
    let model = Model::new(ModelSpec::Softmax { bias }, d, k)?;
    Ok(SoftmaxObjective::new(
        model,
        Batches::new(&x, &y, 32)?,
        vec![Penalty::L2 { lam: 1e-2 }],
    )?)
}

#[test]
fn second_order_solvers_agree_on_a_tiny_logistic_problem() -> R<()> {
    let obj: Arc<dyn Objective> = Arc::new(logistic(90, true)?);
    let w0 = Tensor::zeros(obj.dim(), DType::F64, &Device::Cpu)?;
    let mut finals = Vec::new();
    for method in all_methods() {
        let problem = HfProblem::full(obj.clone(), CurvatureKind::GaussNewton);
        let out = run(&method, problem, w0.clone(), opts(1e-9, 300))?;
        assert_eq!(
            out.stop,
            StopReason::GradientTolerance,
            "{}: {}",
            method.name(),
            out.stop
        );
        finals.push((method.name(), obj.loss(&out.params)?, out));
    }
    let best = finals.iter().map(|f| f.1).fold(f64::INFINITY, f64::min);
    for (name, f, out) in &finals {
        assert!((f - best).abs() / best < 1e-12, "{name}: {f} vs {best}");
        let second_order = *name != "lbfgs";
        if second_order {
            assert!(
                out.counts.hvp_evals > 0 || *name == "dense-newton",
                "{name} counted no HVPs"
            );
        }
    }
    // Newton-CG converges in far fewer iterations than L-BFGS.
    let iters = |n: &str| {
        finals
            .iter()
            .find(|f| f.0 == n)
            .map(|f| f.2.trace.last().unwrap().iter)
            .unwrap()
    };
    assert!(
        iters("newton-cg") < iters("lbfgs"),
        "{} vs {}",
        iters("newton-cg"),
        iters("lbfgs")
    );
    Ok(())
}

#[test]
fn sub_sampled_curvature_still_converges() -> R<()> {
    let obj = Arc::new(logistic(120, true)?);
    let sub = obj.subsample(&(0..120).step_by(3).collect::<Vec<_>>())?;
    let problem = HfProblem::new(obj.clone(), sub, CurvatureKind::GaussNewton);
    let w0 = Tensor::zeros(obj.dim(), DType::F64, &Device::Cpu)?;
    let out = run(
        &Method::NewtonCg(NewtonCgConfig::default()),
        problem,
        w0,
        opts(1e-8, 200),
    )?;
    assert_eq!(out.stop, StopReason::GradientTolerance, "{}", out.stop);
    // Each HVP touched a third of the data.
    let full_passes = out.counts.grad_evals as f64 + out.counts.loss_evals as f64;
    assert!(
        out.trace.last().unwrap().data_passes
            < full_passes + out.counts.hvp_evals as f64 * 0.34 + 50.0
    );
    Ok(())
}

#[test]
fn preconditioned_newton_cg_converges_with_fewer_cg_steps_on_bad_scaling() -> R<()> {
    let q = Arc::new(Quadratic::new(&[1.0, 1e2, 1e4, 1e6], &[1.0, 1.0, 1.0, 1.0]));
    let w0 = t(&[0.0; 4]);
    let base = NewtonCgConfig {
        cg_rel_tol: Some(1e-10),
        cg_progress_eps: None,
        initial_damping: 1e-12,
        ..Default::default()
    };
    let plain = run(
        &Method::NewtonCg(base.clone()),
        HfProblem::full(q.clone(), CurvatureKind::Hessian),
        w0.clone(),
        opts(1e-9, 50),
    )?;
    let pre = Method::NewtonCg(NewtonCgConfig {
        preconditioner: true,
        preconditioner_exponent: 1.0,
        ..base
    });
    let pre = run(
        &pre,
        HfProblem::full(q.clone(), CurvatureKind::Hessian),
        w0,
        opts(1e-9, 50),
    )?;
    assert_eq!(pre.stop, StopReason::GradientTolerance);
    assert!(
        pre.counts.hvp_evals < plain.counts.hvp_evals,
        "{} vs {}",
        pre.counts.hvp_evals,
        plain.counts.hvp_evals
    );
    Ok(())
}

/// An objective that is NaN beyond ‖w‖ > 1.5 while the minimiser sits at
/// ‖w*‖ ≈ 1.41: steps that overshoot must be rejected, never accepted.
#[test]
fn nan_steps_are_rejected_and_parameters_stay_finite() -> R<()> {
    let mut q = Quadratic::new(&[0.01, 0.01], &[0.01, 0.01]);
    q.nan_radius = 1.5;
    let q = Arc::new(q);
    for method in [
        Method::NewtonCg(NewtonCgConfig {
            initial_damping: 1e-6,
            ..Default::default()
        }),
        Method::TrustRegion(TrustRegionConfig {
            initial_radius: 100.0,
            ..Default::default()
        }),
    ] {
        // From far on the other side a full Newton step (length ~2.8) leaves the valid ball.
        let w0 = t(&[-0.99, -0.99]);
        let out = run(
            &method,
            HfProblem::full(q.clone(), CurvatureKind::Hessian),
            w0,
            opts(1e-10, 200),
        )?;
        assert!(out.params.to_vec1::<f64>()?.iter().all(|x| x.is_finite()));
        assert!(
            out.trace.iter().all(|r| r.objective.is_finite()),
            "{}",
            method.name()
        );
        assert_eq!(
            out.stop,
            StopReason::GradientTolerance,
            "{}: {}",
            method.name(),
            out.stop
        );
        assert!(max_abs_diff(&out.params, &[1.0, 1.0]) < 1e-7);
    }
    // Always NaN away from the start: Newton-CG stops with a clear failure.
    let mut q = Quadratic::new(&[1.0, 1.0], &[5.0, 5.0]);
    q.nan_radius = 1e-3;
    let out = run(
        &Method::NewtonCg(NewtonCgConfig::default()),
        HfProblem::full(Arc::new(q), CurvatureKind::Hessian),
        t(&[0.0, 0.0]),
        opts(1e-10, 200),
    )?;
    match &out.stop {
        StopReason::Failed(msg) => assert!(msg.contains("rejected"), "{msg}"),
        other => panic!("expected a failure, got {other}"),
    }
    assert!(out.params.to_vec1::<f64>()?.iter().all(|x| x.is_finite()));
    Ok(())
}

#[test]
fn budgets_stop_runs_with_their_reason() -> R<()> {
    let q = Arc::new(Quadratic::new(
        &(1..=60).map(|i| i as f64).collect::<Vec<_>>(),
        &[1.0; 60],
    ));
    let w0 = Tensor::zeros(60, DType::F64, &Device::Cpu)?;
    let cases = [
        (
            StopRules {
                max_hvps: Some(5),
                ..Default::default()
            },
            StopReason::HvpBudget,
        ),
        (
            StopRules {
                max_grad_evals: Some(2),
                ..Default::default()
            },
            StopReason::GradientBudget,
        ),
        (
            StopRules {
                max_iters: Some(1),
                ..Default::default()
            },
            StopReason::MaxIterations,
        ),
        (
            StopRules {
                max_data_passes: Some(3.0),
                ..Default::default()
            },
            StopReason::DataPassBudget,
        ),
    ];
    let method = Method::NewtonCg(NewtonCgConfig {
        cg_rel_tol: Some(1e-12),
        cg_progress_eps: None,
        ..Default::default()
    });
    for (rules, reason) in cases {
        let rules = StopRules {
            grad_tol: Some(1e-14),
            max_iters: rules.max_iters.or(Some(100)),
            ..rules
        };
        let o = RunOptions {
            stop: rules,
            ..Default::default()
        };
        let out = run(
            &method,
            HfProblem::full(q.clone(), CurvatureKind::Hessian),
            w0.clone(),
            o,
        )?;
        assert_eq!(out.stop, reason);
    }
    Ok(())
}

#[test]
fn sgd_trace_is_evaluated_on_the_full_batch_every_k_steps() -> R<()> {
    let obj = Arc::new(logistic(200, false)?);
    let w0 = Tensor::zeros(obj.dim(), DType::F64, &Device::Cpu)?;
    let method = Method::Sgd(SgdConfig {
        learning_rate: 0.5,
        batch_size: 20,
        momentum: 0.9,
        seed: 3,
        ..Default::default()
    });
    let o = RunOptions {
        stop: StopRules {
            grad_tol: None,
            max_iters: Some(100),
            ..Default::default()
        },
        trace_every: 25,
        ..Default::default()
    };
    let out = run(
        &method,
        HfProblem::full(obj.clone(), CurvatureKind::Hessian),
        w0.clone(),
        o.clone(),
    )?;
    let iters: Vec<u64> = out.trace.iter().map(|r| r.iter).collect();
    assert_eq!(iters, vec![0, 25, 50, 75, 100]);
    assert_eq!(out.stop, StopReason::MaxIterations);
    let last = out.trace.last().unwrap();
    assert!(
        (last.objective - obj.loss(&out.params)?).abs() < 1e-12,
        "trace holds the full-batch objective"
    );
    assert!((last.data_passes - 100.0 * 20.0 / 200.0).abs() < 1e-12);
    assert!(last.objective < out.trace[0].objective);
    // Same seed, same run.
    let again = run(&method, HfProblem::full(obj, CurvatureKind::Hessian), w0, o)?;
    assert_eq!(again.params.to_vec1::<f64>()?, out.params.to_vec1::<f64>()?);
    Ok(())
}

/// `hf` is Newton-CG with Martens' settings: named and checkpointable as
/// its own entry, run by Newton-CG, and on a small logistic problem with
/// curvature on a quarter of the rows it closes most of the gap to the
/// optimum (ρ on the batch stops it short of a tight tolerance; the
/// solvers' tests run it to one with ρ on the full objective).
#[test]
fn hf_runs_newton_cg_with_martens_settings() -> R<()> {
    let config = NewtonCgConfig {
        curvature_batches: Some(RowBatches { size: 30, seed: 2 }),
        ..NewtonCgConfig::martens()
    };
    let hf = Method::Hf(config.clone());
    assert_eq!(hf.name(), "hf");
    assert!(hf.checkpointable() && hf.validate().is_ok());
    let json = serde_json::to_value(&hf)?;
    assert_eq!(json["method"], "hf");
    assert_eq!(json["curvature_batches"]["size"], 30);
    assert_eq!(serde_json::from_value::<Method>(json)?, hf);
    assert!(
        Method::Hf(NewtonCgConfig {
            curvature_batches: None,
            ..config
        })
        .validate()
        .is_err()
    );

    let obj: Arc<dyn Objective> = Arc::new(logistic(120, true)?);
    let w0 = Tensor::zeros(obj.dim(), DType::F64, &Device::Cpu)?;
    let best = run(
        &Method::NewtonCg(NewtonCgConfig::default()),
        HfProblem::full(obj.clone(), CurvatureKind::GaussNewton),
        w0.clone(),
        opts(1e-10, 200),
    )?;
    assert_eq!(best.stop, StopReason::GradientTolerance);
    let out = run(
        &hf,
        HfProblem::full(obj.clone(), CurvatureKind::GaussNewton),
        w0,
        opts(1e-10, 100),
    )?;
    assert_eq!(out.method, "newton-cg");
    let (f0, f, fstar) = (
        out.trace[0].objective,
        out.trace.last().unwrap().objective,
        obj.loss(&best.params)?,
    );
    assert!(f - fstar < 0.01 * (f0 - fstar), "{f} vs {fstar} from {f0}");
    Ok(())
}

fn run_defaults(curvature_batch: Option<usize>, hessian_fraction: f64) -> RunDefaults {
    RunDefaults {
        problem: ProblemSpec {
            model: "mlp:10".into(),
            curvature: "ggn".into(),
            hessian_fraction,
            seed: 9,
            ..Default::default()
        },
        sgd: SgdConfig::default(),
        adam: AdamConfig::default(),
        kfac: KfacConfig::default(),
        newton: NewtonSettings {
            damping: None,
            cg_max_iters: 250,
            cg_rel_tol: None,
            preconditioner: false,
            kfac_preconditioner: None,
            warm_start: true,
            cg_backtracking: true,
            curvature_batch,
            gradient_batch: None,
        },
        trust_region: TrustRegionConfig::default(),
        lbfgs: LbfgsConfig::default(),
        hessian_batch: 0,
        max_iters: 10,
        sgd_steps: 10,
        sgd_eval_every: 5,
        max_time: None,
        grid_time: 180.0,
    }
}

#[test]
fn the_command_line_plans_hf_and_curvature_batches() -> R<()> {
    let planned = plan("hf,hf@damping=3,newton-cg", &run_defaults(None, 1.0))?;
    let configs: Vec<&NewtonCgConfig> = planned
        .iter()
        .map(|p| match &p.method {
            Method::Hf(c) | Method::NewtonCg(c) => c,
            other => panic!("planned {}", other.name()),
        })
        .collect();
    assert_eq!(planned[0].method.name(), "hf");
    let preset = NewtonCgConfig::martens();
    assert_eq!(
        *configs[0],
        NewtonCgConfig {
            curvature_batches: Some(RowBatches {
                size: 15_000,
                seed: 9
            }),
            ..preset.clone()
        },
        "the preset, shuffled by the run's seed"
    );
    assert_eq!(configs[1].initial_damping, 3.0);
    assert_eq!(
        configs[2].curvature_batches, None,
        "newton-cg: off by default"
    );

    let planned = plan("hf,newton-cg", &run_defaults(Some(500), 1.0))?;
    for p in &planned {
        let (Method::Hf(c) | Method::NewtonCg(c)) = &p.method else {
            panic!("planned {}", p.method.name());
        };
        assert_eq!(
            c.curvature_batches,
            Some(RowBatches { size: 500, seed: 9 }),
            "{}",
            p.label
        );
    }
    assert_eq!(planned[1].method.name(), "newton-cg");

    // Batches cycle through every row: a fixed curvature sub-sample is refused.
    let err = plan("hf", &run_defaults(None, 0.5)).expect_err("hf with --hessian-fraction");
    assert!(format!("{err:#}").contains("--hessian-fraction"), "{err:#}");
    assert!(plan("newton-cg", &run_defaults(None, 0.5)).is_ok());

    // Gradient batches: an override of hf and newton-cg, shuffled by the
    // run's seed; the curvature batch must fit inside them.
    let planned = plan(
        "hf@gradient_batch=20000,newton-cg@gradient_batch=100",
        &run_defaults(None, 1.0),
    )?;
    for (p, size) in planned.iter().zip([20_000, 100]) {
        let (Method::Hf(c) | Method::NewtonCg(c)) = &p.method else {
            panic!("planned {}", p.method.name());
        };
        assert_eq!(c.gradient_batches, Some(RowBatches { size, seed: 9 }));
    }
    let err = plan("hf@gradient_batch=1000", &run_defaults(None, 1.0))
        .expect_err("a 15000-row curvature batch inside 1000-row gradient batches");
    assert!(format!("{err:#}").contains("cannot be larger"), "{err:#}");
    let err = plan("hf@gradient_batch=0", &run_defaults(None, 1.0)).expect_err("zero rows");
    assert!(format!("{err:#}").contains("positive integer"), "{err:#}");
    let err = plan("newton-cg@gradient_batch=100", &run_defaults(None, 0.5))
        .expect_err("gradient batches with a fixed curvature sub-sample");
    assert!(format!("{err:#}").contains("--hessian-fraction"), "{err:#}");
    Ok(())
}

#[test]
fn the_command_line_plans_kfac_and_its_preconditioner() -> R<()> {
    let planned = plan(
        "kfac,kfac@adaptive=false;lr=0.05;momentum=0.8;targets=empirical;batch=200;stats_batch=50;model_batch=100;stats_every=2;inverse_every=10;damping=3;trace_every=2,hf@preconditioner=kfac,newton-cg@preconditioner=kfac:exact,hf@preconditioner=none",
        &run_defaults(None, 1.0),
    )?;
    let Method::Kfac(k0) = &planned[0].method else {
        panic!("planned {}", planned[0].method.name())
    };
    // The factors do not see the penalty: it goes into K-FAC's damping.
    assert_eq!(
        *k0,
        KfacConfig {
            l2: 1e-4,
            ..KfacConfig::default()
        }
    );
    // A mini-batch method: the mini-batch step cap and trace interval.
    assert_eq!((planned[0].max_iters, planned[0].trace_every), (10, 5));
    assert_eq!(planned[1].trace_every, 2);
    let Method::Kfac(k1) = &planned[1].method else {
        panic!("planned {}", planned[1].method.name())
    };
    assert_eq!(
        *k1,
        KfacConfig {
            adaptive: false,
            learning_rate: 0.05,
            momentum: 0.8,
            targets: "empirical".into(),
            batch_size: 200,
            stats_batch: 50,
            model_batch: Some(100),
            stats_every: 2,
            inverse_every: 10,
            damping: 3.0,
            l2: 1e-4,
            ..KfacConfig::default()
        }
    );
    let newton = |i: usize| match &planned[i].method {
        Method::Hf(c) | Method::NewtonCg(c) => (c.preconditioner, c.kfac_preconditioner.clone()),
        other => panic!("planned {}", other.name()),
    };
    assert_eq!(newton(2), (false, Some("mc".into())));
    assert_eq!(newton(3), (false, Some("exact".into())));
    assert_eq!(newton(4), (false, None));
    assert!(
        NewtonCgConfig::martens().preconditioner,
        "hf's own default is the diagonal"
    );

    for (bad, says) in [
        ("sgd@preconditioner=kfac", "an override of newton-cg and hf"),
        (
            "hf@preconditioner=lbfgs",
            "expected none, diag, kfac or kfac:TARGETS",
        ),
        ("kfac@targets=fisher", "mc, mc:SAMPLES, empirical, exact"),
        ("kfac@adaptive=maybe", "expected true or false"),
        ("kfac@batch=0", "expected a positive integer"),
    ] {
        let err = format!("{:#}", plan(bad, &run_defaults(None, 1.0)).unwrap_err());
        assert!(err.contains(says), "{bad}: {err}");
    }
    Ok(())
}
