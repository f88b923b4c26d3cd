//! K-FAC through the runner: it trains a small MLP (adaptive and fixed
//! learning rate and momentum), a run stopped by a budget and resumed from
//! its checkpoint ends bit for bit where an uninterrupted one does (f64,
//! CPU), an objective without dense layers is refused before any step, and
//! K-FAC preconditions Newton-CG's CG.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::runs::{bits, collecting, untimed};
use common::{LeastSquares, t};
use hessfree_model::{
    Activation, Batches, CurvatureKind, Init, MlpObjective, Model, ModelSpec, Objective, Penalty,
};
use hessfree_solvers::kfac::KfacState;
use hessfree_solvers::{
    HfProblem, Kfac, KfacConfig, NewtonCg, NewtonCgConfig, RunOptions, RunOutput, StopReason,
    StopRules, run_solver,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

/// 240 cases of 6 inputs in [0, 1] and 3 classes given by a fixed linear
/// rule, so that a small MLP can fit them.
fn classification() -> R<Arc<MlpObjective>> {
    let (n, d, k) = (240, 6, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let m: Vec<f64> = (0..d * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut x = vec![0.0; n * d];
    let mut y = vec![0.0; n * k];
    for i in 0..n {
        for j in 0..d {
            x[i * d + j] = rng.random_range(0.0..1.0);
        }
        let score = |c: usize| (0..d).map(|j| x[i * d + j] * m[j * k + c]).sum::<f64>();
        let best = (0..k)
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .expect("classes");
        y[i * k + best] = 1.0;
    }
    let dev = Device::Cpu;
    let data = Batches::new(
        &Tensor::from_vec(x, (n, d), &dev)?,
        &Tensor::from_vec(y, (n, k), &dev)?,
        64,
    )?;
    let model = Model::new(ModelSpec::mlp(&[8], Activation::Tanh), d, k)?;
    Ok(Arc::new(MlpObjective::new(
        model,
        data,
        vec![Penalty::L2 { lam: 1e-4 }],
    )?))
}

fn config() -> KfacConfig {
    KfacConfig {
        batch_size: 60,
        stats_batch: 30,
        inverse_every: 4,
        damping_every: 2,
        l2: 1e-4,
        seed: 3,
        ..KfacConfig::default()
    }
}

fn steps(n: u64) -> RunOptions {
    RunOptions {
        stop: StopRules {
            grad_tol: None,
            max_iters: Some(n),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn run(obj: &Arc<MlpObjective>, c: &KfacConfig, opts: RunOptions) -> R<RunOutput> {
    let w0 = obj
        .model()
        .init(Init::Glorot, 1, &Device::Cpu, DType::F64)?;
    Ok(run_solver(
        HfProblem::full(obj.clone(), CurvatureKind::GaussNewton),
        Kfac::new(c.clone())?,
        w0,
        opts,
    )?)
}

#[test]
fn kfac_trains_a_small_mlp_adaptive_and_fixed() -> R<()> {
    let obj = classification()?;
    let mut samples = Vec::new();
    for c in [
        config(),
        KfacConfig {
            model_batch: Some(15),
            ..config()
        },
        KfacConfig {
            stats_every: 3,
            ..config()
        },
        KfacConfig {
            adaptive: false,
            learning_rate: 0.1,
            momentum: 0.5,
            ..config()
        },
    ] {
        let out = run(&obj, &c, steps(40))?;
        assert_eq!(out.method, "kfac");
        assert_eq!(out.stop, StopReason::MaxIterations);
        let (first, last) = (out.trace[0].objective, out.trace.last().unwrap().objective);
        assert!(
            last < 0.5 * first,
            "adaptive {} model_batch {:?}: objective {first} -> {last}",
            c.adaptive,
            c.model_batch
        );
        // Adaptive K-FAC takes two Gauss-Newton products per step (the
        // first step one), the fixed form none.
        let products = out.counts.hvp_evals;
        if c.adaptive {
            assert_eq!(products, 2 * 40 - 1, "products of adaptive K-FAC");
        } else {
            assert_eq!(products, 0, "fixed K-FAC takes no products");
        }
        assert_eq!(out.counts.grad_evals, 40, "one batch gradient per step");
        samples.push(out.counts.samples);
    }
    // The quadratic model on 15 of each batch's 60 rows: 45 rows fewer for
    // each step's forward pass at which the products linearise (40) and
    // for each of the 79 products.
    assert_eq!(
        samples[0] - samples[1],
        45 * (40 + 79),
        "samples {samples:?}"
    );
    // Factors at steps 0, 3, ..., 39 (14 of 40) on 30 rows each.
    assert_eq!(
        samples[0] - samples[2],
        30 * (40 - 14),
        "samples {samples:?}"
    );
    Ok(())
}

#[test]
fn kfac_stopped_by_a_budget_resumes_bit_for_bit() -> R<()> {
    let obj = classification()?;
    // Factors every step, and every 4th (so that the stop at step 6 falls
    // between two updates).
    for c in [
        config(),
        KfacConfig {
            stats_every: 4,
            ..config()
        },
    ] {
        resumes_bit_for_bit(&obj, c)?;
    }
    Ok(())
}

fn resumes_bit_for_bit(obj: &Arc<MlpObjective>, c: KfacConfig) -> R<()> {
    let obj = obj.clone();
    let full = run(&obj, &c, steps(15))?;
    let (ck, saved) = collecting(3);
    let stopped = run(
        &obj,
        &c,
        RunOptions {
            checkpoint: Some(ck),
            stop: StopRules {
                max_grad_evals: Some(7),
                ..steps(15).stop
            },
            ..Default::default()
        },
    )?;
    assert_eq!(stopped.stop, StopReason::GradientBudget);
    let saved = saved.lock().unwrap().clone();
    // Iteration 6: between two decompositions (every 4) and mid-epoch.
    let last = saved[1].clone();
    assert_eq!(last.meta.iter, 6);
    let state: KfacState = last.solver_state("kfac")?;
    assert_eq!(state.steps, 6);
    assert!(last.tensors.contains_key("kfac.average.layer0.a"));
    assert!(last.tensors.contains_key("kfac.decomposed.layer1.g"));
    assert!(last.tensors.contains_key("kfac.previous_update"));
    let resumed = run(
        &obj,
        &c,
        RunOptions {
            resume: Some(Arc::new(last.clone())),
            ..steps(15)
        },
    )?;
    assert_eq!(resumed.stop, full.stop);
    assert_eq!(bits(&resumed.params), bits(&full.params));
    assert_eq!(untimed(&resumed), untimed(&full));
    assert_eq!(resumed.counts, full.counts);

    // Other settings are another run.
    let err = run(
        &obj,
        &KfacConfig {
            inverse_every: 5,
            ..c
        },
        RunOptions {
            resume: Some(Arc::new(last)),
            ..steps(15)
        },
    )
    .expect_err("a resume with other settings");
    assert!(err.to_string().contains("inverse_every"), "{err}");
    Ok(())
}

#[test]
fn kfac_refuses_an_objective_without_dense_layers_before_any_step() -> R<()> {
    let ls = Arc::new(LeastSquares::fixture(10, 4));
    let err = run_solver(
        HfProblem::full(ls.clone(), CurvatureKind::Hessian),
        Kfac::new(KfacConfig {
            batch_size: 5,
            ..config()
        })?,
        t(&[0.1, 0.2, 0.3, 0.4]),
        steps(3),
    )
    .expect_err("no dense layers");
    let msg = err.to_string();
    assert!(
        msg.contains("K-FAC cannot run here") && msg.contains("MLPs and autoencoders"),
        "{msg}"
    );
    assert_eq!(ls.dim(), 4);
    Ok(())
}

#[test]
fn kfac_refuses_settings_out_of_range_naming_them() {
    for (c, what) in [
        (
            KfacConfig {
                stats_batch: 0,
                ..config()
            },
            "stats_batch",
        ),
        (
            KfacConfig {
                stats_every: 0,
                ..config()
            },
            "stats_every",
        ),
        (
            KfacConfig {
                model_batch: Some(0),
                ..config()
            },
            "model_batch",
        ),
        (
            KfacConfig {
                factor_decay: 1.0,
                ..config()
            },
            "factor_decay",
        ),
        (
            KfacConfig {
                targets: "fisher".into(),
                ..config()
            },
            "mc, mc:SAMPLES, empirical, exact",
        ),
        (
            KfacConfig {
                damping: 0.0,
                ..config()
            },
            "damping",
        ),
        (
            KfacConfig {
                adaptive: false,
                momentum: 1.0,
                ..config()
            },
            "momentum",
        ),
    ] {
        let err = Kfac::new(c).err().expect("refused").to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
}

/// Newton-CG on the same MLP with CG preconditioned by K-FAC (exact
/// factors, so the check is deterministic) against no preconditioner: both
/// converge, and the preconditioner is used (the products differ).
#[test]
fn kfac_preconditions_newton_cg() -> R<()> {
    let obj = classification()?;
    let w0 = obj
        .model()
        .init(Init::Glorot, 1, &Device::Cpu, DType::F64)?;
    let mut products = Vec::new();
    for kfac in [None, Some("exact".to_string())] {
        let config = NewtonCgConfig {
            kfac_preconditioner: kfac,
            cg_rel_tol: Some(1e-6),
            ..NewtonCgConfig::default()
        };
        let out = run_solver(
            HfProblem::full(obj.clone(), CurvatureKind::GaussNewton),
            NewtonCg::new(config)?,
            w0.clone(),
            steps(8),
        )?;
        let (first, last) = (out.trace[0].objective, out.trace.last().unwrap().objective);
        assert!(last < 0.5 * first, "objective {first} -> {last}");
        products.push(out.counts.hvp_evals);
    }
    assert_ne!(
        products[1], products[0],
        "the preconditioner changed nothing"
    );
    // A diagonal and K-FAC at once is refused, naming the choice.
    let err = NewtonCg::new(NewtonCgConfig {
        preconditioner: true,
        kfac_preconditioner: Some("mc".into()),
        ..NewtonCgConfig::default()
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("choose one preconditioner"), "{err}");
    Ok(())
}
