//! One K-FAC step on the MLP 784-256-10 (tanh), f32, against one gradient
//! on the same 1000 rows: the cost targets (at most 1.5 gradients
//! with fixed learning rate and momentum, at most 3 adaptive), with the
//! factors' statistics on a 250-row sub-batch and the eigendecompositions
//! amortised over T = 20 steps; adaptive also with its quadratic model's
//! two Gauss-Newton products on the same 250 rows (`model_batch`), and both
//! with the factors updated every 5th step (`stats_every`).
//!
//! A step is timed as the difference of whole runs of 80 and 20 steps
//! divided by 60, so that the runner's start-up and the trace's two
//! evaluations cancel (over a difference of only 20 steps the per-step
//! figure varied by ±25% between runs). Benchmark ids: `cpu/kfac/f32/n1000/grad` and
//! `cpu/kfac/f32/n1000/{fixed,adaptive,adaptive-model250,fixed-stats5,adaptive-model250-stats5}/steps{20,80}`.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{Criterion, criterion_group, criterion_main};
use hessfree_model::{
    Activation, CurvatureKind, Init, MlpObjective, Model, ModelSpec, Objective, Penalty,
};
use hessfree_solvers::{HfProblem, Kfac, KfacConfig, RunOptions, StopRules, run_solver};

fn steps(n: u64) -> RunOptions {
    RunOptions {
        stop: StopRules {
            grad_tol: None,
            max_iters: Some(n),
            ..Default::default()
        },
        trace_every: 1_000_000,
        ..Default::default()
    }
}

fn kfac(c: &mut Criterion) {
    let n = 1000;
    let dtype = DType::F32;
    let model = Model::new(ModelSpec::mlp(&[256], Activation::Tanh), 784, 10).expect("model");
    let w = model
        .init(Init::Glorot, 1, &Device::Cpu, dtype)
        .expect("init");
    let obj = Arc::new(
        MlpObjective::new(
            model,
            common::batches(n, dtype),
            vec![Penalty::L2 { lam: 1e-4 }],
        )
        .expect("objective"),
    );
    let mut g = c.benchmark_group(format!("cpu/kfac/f32/n{n}"));
    g.measurement_time(Duration::from_secs(20)).sample_size(10);
    g.bench_function("grad", |b| {
        b.iter(|| black_box(obj.loss_and_grad(&w).expect("grad")))
    });
    for (mode, adaptive, model_batch, stats_every) in [
        ("fixed", false, None, 1),
        ("adaptive", true, None, 1),
        ("adaptive-model250", true, Some(250), 1),
        ("fixed-stats5", false, None, 5),
        ("adaptive-model250-stats5", true, Some(250), 5),
    ] {
        let config = KfacConfig {
            batch_size: n,
            stats_batch: 250,
            model_batch,
            stats_every,
            inverse_every: 20,
            adaptive,
            l2: 1e-4,
            ..KfacConfig::default()
        };
        for count in [20u64, 80] {
            g.bench_function(format!("{mode}/steps{count}"), |b| {
                b.iter(|| {
                    let out = run_solver(
                        HfProblem::full(obj.clone(), CurvatureKind::GaussNewton),
                        Kfac::new(config.clone()).expect("config"),
                        w.clone(),
                        steps(count),
                    )
                    .expect("run");
                    black_box(out.params)
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = kfac
}
criterion_main!(benches);
