//! The dense softmax-regression Hessian (784 x 10 weights + 10 biases,
//! 7850² in f64) assembled in closed form on MNIST rows, against faer's f64
//! GEMM of the same shape on the same threads: the assembly is one
//! lower-half product `X̃ᵀ diag(a) X̃` (785 x rows x 785) per class pair, 55
//! of them, plus the row weighting and one scatter, so its rate in flop/s
//! is compared with the GEMM's. Throughput is in flops per second (criterion
//! prints it as elements).
//!
//! Benchmark ids: `cpu/dense/gemm/f64/n{rows}` (one full 785 x rows x 785
//! product) and `cpu/dense/assembly/f64/n{rows}` (the whole Hessian).

mod common;

use std::hint::black_box;
use std::time::Duration;

use candle_core::DType;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use hessfree_model::dense::softmax_data_hessian;
use hessfree_model::{Model, ModelSpec, Objective, SoftmaxObjective};

fn dense(c: &mut Criterion) {
    let (d, k) = (785usize, 10usize);
    let pairs = (k * (k + 1) / 2) as u64;
    for rows in [2000usize, 10_000] {
        let mut g = c.benchmark_group("cpu/dense");
        g.sample_size(10)
            .measurement_time(Duration::from_secs(if rows > 5000 { 30 } else { 8 }));
        let a = Mat::<f64>::from_fn(d, rows, |i, j| ((i * 7 + j * 13) % 17) as f64 / 17.0);
        let b = Mat::<f64>::from_fn(rows, d, |i, j| ((i * 5 + j * 3) % 11) as f64 / 11.0);
        let mut out = Mat::<f64>::zeros(d, d);
        g.throughput(Throughput::Elements(2 * (d * d * rows) as u64));
        g.bench_function(format!("gemm/f64/n{rows}"), |bch| {
            bch.iter(|| {
                matmul(
                    out.as_mut(),
                    Accum::Replace,
                    a.as_ref(),
                    b.as_ref(),
                    1.0,
                    Par::rayon(0),
                );
                black_box(&out);
            })
        });
        let model = Model::new(ModelSpec::Softmax { bias: true }, 784, k).expect("model");
        let obj = SoftmaxObjective::new(model, common::batches(rows, DType::F64), Vec::new())
            .expect("objective");
        let w = common::random(obj.dim(), 0.05, 1, DType::F64);
        // Half of a full product per pair: only the lower triangle is formed.
        g.throughput(Throughput::Elements(pairs * (d * d * rows) as u64));
        g.bench_function(format!("assembly/f64/n{rows}"), |bch| {
            bch.iter(|| black_box(softmax_data_hessian(&obj, &w).expect("assembly")))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = dense
}
criterion_main!(benches);
