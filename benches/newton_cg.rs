//! One damped Newton-CG outer iteration on the L2 problem of the solver
//! issue (softmax regression with bias, lam = 1e-4, f64, n = 60000): the
//! full gradient, the curvature operator, CG to the forcing tolerance, CG
//! backtracking and the line search. The iteration starts from the point
//! five iterations in, where CG does a representative amount of work.
//!
//! Benchmark id: `cpu/newton-cg/outer-iteration/f64/n60000`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use candle_core::DType;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hessfree_model::{CurvatureKind, Model, ModelSpec, Objective, Penalty, SoftmaxObjective};
use hessfree_solvers::{HfProblem, NewtonCg, NewtonCgConfig, RunOptions, StopRules, run_solver};

fn one_iteration(max_iters: u64) -> RunOptions {
    RunOptions {
        stop: StopRules {
            grad_tol: None,
            max_iters: Some(max_iters),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn newton_cg(c: &mut Criterion) {
    let n = 60_000;
    let model = Model::new(ModelSpec::Softmax { bias: true }, 784, 10).expect("model");
    let obj: Arc<dyn Objective> = Arc::new(
        SoftmaxObjective::new(
            model.clone(),
            common::batches(n, DType::F64),
            vec![Penalty::L2 { lam: 1e-4 }],
        )
        .expect("objective"),
    );
    let solver = || NewtonCg::new(NewtonCgConfig::default()).expect("settings");
    let w0 = model
        .init(
            hessfree_model::Init::Zeros,
            0,
            &candle_core::Device::Cpu,
            DType::F64,
        )
        .expect("init");
    let start = run_solver(
        HfProblem::full(obj.clone(), CurvatureKind::Hessian),
        solver(),
        w0,
        one_iteration(5),
    )
    .expect("warm-up run")
    .params;
    let mut group = c.benchmark_group("cpu/newton-cg/outer-iteration/f64");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("n{n}"), |b| {
        b.iter(|| {
            run_solver(
                HfProblem::full(obj.clone(), CurvatureKind::Hessian),
                solver(),
                start.clone(),
                one_iteration(1),
            )
            .expect("one iteration")
        })
    });
    group.finish();
}

criterion_group!(benches, newton_cg);
criterion_main!(benches);
