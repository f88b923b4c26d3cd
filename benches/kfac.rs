//! One K-FAC step against one gradient on the same 1000 rows, f32, on two
//! networks: the MLP 784-256-10 (tanh, Glorot) and the deep autoencoder of
//! the K-FAC report, 400-200-100-50-25-6 mirrored (logistic, sparse
//! initialisation). The cost targets: at most 1.5 gradients with
//! fixed learning rate and momentum, at most 3 adaptive, with the factors'
//! statistics on a 250-row sub-batch and the inverses amortised over
//! T = 20 steps; adaptive also with its quadratic model's two Gauss-Newton
//! products on the same 250 rows (`model_batch`), and both with the factors
//! updated every 5th step (`stats_every`).
//!
//! The ratio depends on the layer shapes. The MLP's gradient is cheap for
//! its size (its first layer reads sparse pixels), while the preconditioner
//! multiplies dense factors (785² by 785×256 every step): the worst case
//! for the ratio. The autoencoder's gradient is dominated by dense layers,
//! as the paper's cost estimate assumes.
//!
//! A step is timed as the difference of whole runs of two lengths divided
//! by the difference in steps, so that the runner's start-up and the
//! trace's two evaluations cancel (over a difference of only 20 MLP steps
//! the per-step figure varied by ±25% between runs). Benchmark ids:
//! `cpu/kfac/f32/n1000/{net}/grad` and
//! `cpu/kfac/f32/n1000/{net}/{fixed,adaptive,adaptive-model250,fixed-stats5,adaptive-model250-stats5}/steps{N}`,
//! with `net` `mlp256` (N = 20, 80) or `curves` (N = 5, 25).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{Criterion, criterion_group, criterion_main};
use hessfree_model::{
    Activation, Batches, CurvatureKind, Init, Model, ModelSpec, Objective, Penalty, objective_for,
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
    let mlp = Model::new(ModelSpec::mlp(&[256], Activation::Tanh), 784, 10).expect("model");
    let curves = Model::new(
        ModelSpec::Autoencoder {
            encoder: vec![400, 200, 100, 50, 25, 6],
        },
        784,
        0,
    )
    .expect("model");
    let images = common::subset(n)
        .to_tensors(&Device::Cpu, dtype)
        .expect("tensors")
        .images;
    let reconstruction =
        Batches::reconstruction(&images, Batches::DEFAULT_CHUNK_ROWS).expect("batches");
    let nets = [
        (
            "mlp256",
            mlp,
            Init::Glorot,
            common::batches(n, dtype),
            [20u64, 80],
        ),
        ("curves", curves, Init::Sparse, reconstruction, [5, 25]),
    ];
    for (net, model, init, data, counts) in nets {
        let w = model.init(init, 1, &Device::Cpu, dtype).expect("init");
        let obj: Arc<dyn Objective> =
            objective_for(&model, data, vec![Penalty::L2 { lam: 1e-4 }]).expect("objective");
        let mut g = c.benchmark_group(format!("cpu/kfac/f32/n{n}/{net}"));
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
            for count in counts {
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
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = kfac
}
criterion_main!(benches);
