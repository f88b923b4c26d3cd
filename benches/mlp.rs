//! MLP 784-256-10 (tanh) on CPU, f32: the gradient, the exact HVP
//! (Pearlmutter's R-operator) and the Gauss-Newton product, at n = 1000 and
//! n = 60000. Throughput is in samples per second.
//!
//! Benchmark ids: `cpu/mlp/{op}/f32/n{n}/{variant}` where `op` is `grad`,
//! `hvp` or `ggn`, and `variant` is
//! - `cold`: from scratch at a new point (forward pass, then the product),
//!   comparable with JAX's `jvp(grad)`;
//! - `apply`: one more product with the curvature operator at a fixed point,
//!   its forward caches already built (what every CG step pays); n = 1000 only;
//! - `dense-cold`, `dense-apply`: the same with the first layer on candle's
//!   dense matmuls (`XStorage::Float`). `cold` and `apply` run what
//!   `MlpObjective::new` chooses, which for MNIST's bytes is the first layer
//!   over compressed rows.
//!
//! The deep autoencoders' gradient and Gauss-Newton product follow, in
//! `cpu/autoencoder/...` (see `autoencoder`).
//!
//! Built with `--features cuda`, `grad`, `hvp` and `ggn` (`cold`) also run on
//! the first CUDA device as `cuda/mlp/...` (see `mlp_cuda`).

mod common;

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hessfree_model::fused::XStorage;
use hessfree_model::{
    Activation, Batches, CurvatureKind, Init, MlpObjective, Model, ModelSpec, Objective,
    objective_for,
};

fn mlp(c: &mut Criterion) {
    let dtype = DType::F32;
    for n in [1000usize, 60_000] {
        let spec = ModelSpec::mlp(&[256], Activation::Tanh);
        let model = Model::new(spec, 784, 10).expect("model");
        let w = model
            .init(Init::Glorot, 1, &Device::Cpu, dtype)
            .expect("init");
        let obj = MlpObjective::new(model.clone(), common::batches(n, dtype), Vec::new())
            .expect("objective");
        let dense = MlpObjective::with_storage(
            model,
            common::batches(n, dtype),
            Vec::new(),
            XStorage::Float,
        )
        .expect("objective");
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| eprintln!("MLP kernels: {}", obj.kernel_name()));
        let variants = [("", &obj), ("dense-", &dense)];
        let v = common::random(obj.dim(), 0.05, 2, dtype);
        let big = n >= 10_000;
        let time = if big {
            Duration::from_secs(4)
        } else {
            Duration::from_secs(2)
        };
        let name = |op: &str| format!("cpu/mlp/{op}/f32/n{n}");

        let mut g = c.benchmark_group(name("grad"));
        g.throughput(Throughput::Elements(n as u64))
            .measurement_time(time);
        for (prefix, obj) in variants {
            g.bench_function(format!("{prefix}cold"), |b| {
                b.iter(|| black_box(obj.loss_and_grad(&w).expect("grad")))
            });
        }
        g.finish();

        for (op, kind) in [
            ("hvp", CurvatureKind::Hessian),
            ("ggn", CurvatureKind::GaussNewton),
        ] {
            let mut g = c.benchmark_group(name(op));
            g.throughput(Throughput::Elements(n as u64))
                .measurement_time(time);
            for (prefix, obj) in variants {
                g.bench_function(format!("{prefix}cold"), |b| {
                    b.iter(|| {
                        let op = obj.curvature(&w, kind).expect("curvature");
                        black_box(op.apply(&v).expect("product"))
                    })
                });
                if !big {
                    let op = obj.curvature(&w, kind).expect("curvature");
                    g.bench_function(format!("{prefix}apply"), |b| {
                        b.iter(|| black_box(op.apply(&v).expect("product")))
                    });
                }
            }
            g.finish();
        }
    }
}

/// The first layer's two products on MNIST's first 10000 images, 256
/// units, f32: `X W` and `Xᵀ D` over compressed rows against candle's
/// dense matmuls, `cpu/mlp/first-layer/f32/n10000/{csr,dense}/{xw,xtd}`.
fn first_layer(c: &mut Criterion) {
    use hessfree_model::csr::CsrU8;
    let n = 10_000;
    let ds = common::subset(n);
    let x = CsrU8::from_dense(&ds.images, 784, 1.0 / 255.0).expect("csr");
    let xd = common::batches(n, DType::F32).chunks()[0].0.clone();
    let w = common::random(784 * 256, 0.05, 1, DType::F32)
        .reshape((784, 256))
        .expect("w");
    let d = common::random(n * 256, 0.05, 2, DType::F32)
        .reshape((n, 256))
        .expect("d");
    let wv = w.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("w");
    let dv = d.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("d");
    let mut g = c.benchmark_group(format!("cpu/mlp/first-layer/f32/n{n}"));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("csr/xw", |b| {
        b.iter(|| black_box(x.matmul(&wv, 256).expect("xw")))
    });
    g.bench_function("dense/xw", |b| {
        b.iter(|| black_box(xd.matmul(&w).expect("xw")))
    });
    g.bench_function("csr/xtd", |b| {
        b.iter(|| black_box(x.t_matmul(&dv, 256, false).expect("xtd")))
    });
    g.bench_function("dense/xtd", |b| {
        b.iter(|| black_box(xd.t().and_then(|t| t.matmul(&d)).expect("xtd")))
    });
    g.finish();
}

/// The same products on the first CUDA device, `cuda/mlp/{op}/f32/n{n}/cold`;
/// the clock stops after `Device::synchronize`. Written without a GPU or
/// CUDA toolkit at hand: neither compiled nor run yet.
#[cfg(feature = "cuda")]
fn mlp_cuda(c: &mut Criterion) {
    let dev = match Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("skipping the CUDA benches: {e}");
            return;
        }
    };
    let dtype = DType::F32;
    for n in [1000usize, 60_000] {
        let spec = ModelSpec::mlp(&[256], Activation::Tanh);
        let model = Model::new(spec, 784, 10).expect("model");
        let w = model.init(Init::Glorot, 1, &dev, dtype).expect("init");
        let t = common::subset(n).to_tensors(&dev, dtype).expect("tensors");
        let data =
            Batches::new(&t.images, &t.one_hot, Batches::DEFAULT_CHUNK_ROWS).expect("batches");
        let obj = MlpObjective::new(model, data, Vec::new()).expect("objective");
        let v = common::random(obj.dim(), 0.05, 2, dtype)
            .to_device(&dev)
            .expect("v");
        let name = |op: &str| format!("cuda/mlp/{op}/f32/n{n}");
        let mut g = c.benchmark_group(name("grad"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("cold", |b| {
            b.iter(|| {
                let out = obj.loss_and_grad(&w).expect("grad");
                dev.synchronize().expect("synchronize");
                black_box(out)
            })
        });
        g.finish();
        for (op, kind) in [
            ("hvp", CurvatureKind::Hessian),
            ("ggn", CurvatureKind::GaussNewton),
        ] {
            let mut g = c.benchmark_group(name(op));
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function("cold", |b| {
                b.iter(|| {
                    let op = obj.curvature(&w, kind).expect("curvature");
                    let out = op.apply(&v).expect("product");
                    dev.synchronize().expect("synchronize");
                    black_box(out)
                })
            });
            g.finish();
        }
    }
}

/// Deep autoencoders at n = 1000, f32, sparse initialisation: the gradient
/// and the Gauss-Newton product, `cpu/autoencoder/{grad,ggn}/f32/n1000/{shape}/{variant}`
/// with `shape` `curves` (400-200-100-50-25-6 mirrored, the report's) or
/// `martens` (1000-500-250-30 mirrored, Martens' MNIST network, 2.8M
/// parameters), and `variant` `cold` or `apply` as for the MLP. Martens'
/// factor is `ggn/apply` against `grad/cold`: at most 2.
fn autoencoder(c: &mut Criterion) {
    let dtype = DType::F32;
    let n = 1000;
    for (shape, encoder) in [
        ("curves", vec![400, 200, 100, 50, 25, 6]),
        ("martens", vec![1000, 500, 250, 30]),
    ] {
        let model = Model::new(ModelSpec::Autoencoder { encoder }, 784, 0).expect("model");
        let w = model
            .init(Init::Sparse, 1, &Device::Cpu, dtype)
            .expect("init");
        let t = common::subset(n)
            .to_tensors(&Device::Cpu, dtype)
            .expect("tensors");
        let data =
            Batches::reconstruction(&t.images, Batches::DEFAULT_CHUNK_ROWS).expect("batches");
        let obj = objective_for(&model, data, Vec::new()).expect("objective");
        let v = common::random(obj.dim(), 0.05, 2, dtype);
        let name = |op: &str| format!("cpu/autoencoder/{op}/f32/n{n}/{shape}");

        let mut g = c.benchmark_group(name("grad"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("cold", |b| {
            b.iter(|| black_box(obj.loss_and_grad(&w).expect("grad")))
        });
        g.finish();

        let mut g = c.benchmark_group(name("ggn"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("cold", |b| {
            b.iter(|| {
                let op = obj
                    .curvature(&w, CurvatureKind::GaussNewton)
                    .expect("curvature");
                black_box(op.apply(&v).expect("product"))
            })
        });
        let op = obj
            .curvature(&w, CurvatureKind::GaussNewton)
            .expect("curvature");
        g.bench_function("apply", |b| {
            b.iter(|| black_box(op.apply(&v).expect("product")))
        });
        g.finish();
    }
}

fn all(c: &mut Criterion) {
    mlp(c);
    first_layer(c);
    autoencoder(c);
    #[cfg(feature = "cuda")]
    mlp_cuda(c);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = all
}
criterion_main!(benches);
