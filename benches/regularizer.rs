//! The penalties' Hessian products on CPU (`Regularizer::apply_q`) for the
//! softmax-regression layout (784 x 10 weights + 10 biases): the Laplacian
//! penalty (two 3x3 stencil passes over each class's 28x28 weight image),
//! L2, and both, in f32 and f64. Throughput is in parameters per second
//! (there are no samples: the penalties do not touch the data).
//!
//! Benchmark ids: `cpu/regularizer/{penalty}/{dtype}`.

mod common;

use std::hint::black_box;

use candle_core::{DType, Device};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hessfree_model::{Model, ModelSpec, Penalty, Regularizer};

fn regularizer(c: &mut Criterion) {
    let model = Model::new(ModelSpec::Softmax { bias: true }, 784, 10).expect("model");
    let layout = model.layout();
    let laplacian = Penalty::Laplacian {
        eps: 1e-3,
        rows: 28,
        cols: 28,
    };
    let l2 = Penalty::L2 { lam: 1e-4 };
    for dtype in [DType::F32, DType::F64] {
        let v = common::random(layout.len(), 1.0, 3, dtype);
        let mut g = c.benchmark_group(format!("cpu/regularizer/hvp/{}", common::dtype_name(dtype)));
        g.throughput(Throughput::Elements(layout.len() as u64));
        for (name, terms) in [
            ("laplacian", vec![laplacian]),
            ("l2", vec![l2]),
            ("laplacian+l2", vec![laplacian, l2]),
        ] {
            let reg = Regularizer::new(terms, layout, &Device::Cpu, dtype).expect("regularizer");
            g.bench_function(name, |b| {
                b.iter(|| black_box(reg.apply_q(&v).expect("apply_q")))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = regularizer
}
criterion_main!(benches);
