//! Softmax regression (784 -> 10, bias included) on CPU: the gradient, the
//! Hessian-vector product and the Gauss-Newton product at n = 1000 and
//! n = 60000, in f32 and f64, for the unfused candle closed forms
//! (`SoftmaxObjective`) and the fused kernel (`hessfree_model::fused`) with
//! `X` in the compute dtype and as `u8`. Throughput is in samples per second.
//!
//! Benchmark ids: `cpu/softmax/{op}/{dtype}/n{n}/{variant}` where `op` is
//! - `grad`: loss and gradient;
//! - `hvp`: one product with the curvature operator at a fixed point, the
//!   softmax probabilities already computed (what every CG step pays);
//! - `hvp-cold`: probabilities and one product from scratch (what JAX's
//!   `jvp(grad)` computes);
//! - `ggn`: the Gauss-Newton product; for softmax regression it equals the
//!   Hessian, and both paths run the same code as `hvp`;
//!
//! and `variant` is
//! - `candle`: the unfused closed forms with candle matmuls over chunks of
//!   10000 rows (`common::CandleSoftmax`, the same code as the candle path of
//!   `SoftmaxObjective`);
//! - `objective`: `SoftmaxObjective` itself, through the `Objective` trait,
//!   with whichever kernel it is wired to (`grad` and `hvp` only);
//! - `fused-{f32,f64}`: the fused kernel, `X` in the compute dtype read in
//!   place from the batch's chunk tensors;
//! - `fused-u8`: the fused kernel, `X` as bytes (4x fewer than f32);
//! - `csr-u8`: the fused kernel over compressed rows of bytes (MNIST's X
//!   is 81% zeros), what `XStorage::Auto` picks for MNIST;
//! - `fused-u8/{level}`, `csr-u8/{level}` (`grad` and `hvp` only): the same
//!   at each SIMD level this CPU has (`scalar`, `avx2`, `avx512`, `neon`),
//!   for the ratios of level to level.
//!
//! `cpu/softmax/hvp-density/{dtype}/n10000/d{percent}/{u8,csr}/{level}`
//! (`density_sweep`) times the HVP on random bytes of 5% to 50% non-zeros,
//! dense bytes against compressed rows, at each level: where the two cross
//! is what `hessfree_model::csr::csr_max_density` is set from.
//!
//! The `fused-*` ids without a level run the best level the CPU has, or
//! `HESSFREE_SIMD` (`scalar`, `avx2`, ...) if set; the level is printed. The
//! `objective` ids run whatever `SoftmaxObjective` chooses (the best level).
//!
//! Built with `--features cuda`, `grad` and `hvp` also run on the first CUDA
//! device as `cuda/softmax/...` (see `softmax_cuda`), for `candle` and for the
//! CUDA kernels of the fused ops (`fused-{f32,f64}`, `fused-u8`, through
//! `hessfree_model::fused_ops::FusedOps`; `HESSFREE_CUDA_BLOCKS` sets their
//! blocks per launch).

mod common;

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hessfree_model::fused::{FusedSoftmax, SimdLevel, XStorage};
use hessfree_model::{CurvatureKind, Model, ModelSpec, Objective, SoftmaxObjective};

fn softmax(c: &mut Criterion) {
    for n in [1000usize, 60_000] {
        for dtype in [DType::F32, DType::F64] {
            bench_size(c, n, dtype);
        }
    }
}

fn bench_size(c: &mut Criterion, n: usize, dtype: DType) {
    let dt = common::dtype_name(dtype);
    let model = Model::new(ModelSpec::Softmax { bias: true }, 784, 10).expect("model");
    let obj =
        SoftmaxObjective::new(model, common::batches(n, dtype), Vec::new()).expect("objective");
    let candle = common::CandleSoftmax {
        data: obj.data(),
        model: obj.model().clone(),
    };
    let level = common::simd_level();
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "fused kernels: SIMD level {level} (this CPU has {:?})",
            SimdLevel::available()
        )
    });
    let with_level = |f: FusedSoftmax, level| f.with_simd_level(level).expect("SIMD level");
    let fused_float = with_level(
        FusedSoftmax::from_batches(obj.data(), XStorage::Float).expect("fused"),
        level,
    );
    let fused_u8 = with_level(
        FusedSoftmax::from_batches(obj.data(), XStorage::U8).expect("fused u8"),
        level,
    );
    let fused_csr = with_level(
        FusedSoftmax::from_batches(obj.data(), XStorage::Csr).expect("fused csr"),
        level,
    );
    let variants = [
        (format!("fused-{dt}"), &fused_float),
        ("fused-u8".to_string(), &fused_u8),
        ("csr-u8".to_string(), &fused_csr),
    ];
    // The byte kernels at every level, for `grad` and `hvp`.
    let per_level: Vec<(String, FusedSoftmax)> = SimdLevel::available()
        .into_iter()
        .flat_map(|l| {
            [
                (format!("fused-u8/{l}"), with_level(fused_u8.clone(), l)),
                (format!("csr-u8/{l}"), with_level(fused_csr.clone(), l)),
            ]
        })
        .collect();
    // A point with confident but not saturated probabilities, and a direction.
    let w = common::random(obj.dim(), 0.05, 1, dtype);
    let v = common::random(obj.dim(), 1.0, 2, dtype);
    let big = n >= 10_000;
    let time = if big {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(1)
    };

    let group_name = |op: &str| format!("cpu/softmax/{op}/{dt}/n{n}");

    let mut g = c.benchmark_group(group_name("grad"));
    g.throughput(Throughput::Elements(n as u64))
        .measurement_time(time);
    g.bench_function("candle", |b| b.iter(|| black_box(candle.loss_and_grad(&w))));
    g.bench_function("objective", |b| {
        b.iter(|| black_box(obj.loss_and_grad(&w).expect("grad")))
    });
    for (name, f) in variants
        .iter()
        .map(|(n, f)| (n, *f))
        .chain(per_level.iter().map(|(n, f)| (n, f)))
    {
        g.bench_function(name.as_str(), |b| {
            b.iter(|| black_box(f.loss_and_grad_flat(&w, true).expect("grad")))
        });
    }
    g.finish();

    for (op, kind) in [
        ("hvp", CurvatureKind::Hessian),
        ("ggn", CurvatureKind::GaussNewton),
    ] {
        let mut g = c.benchmark_group(group_name(op));
        g.throughput(Throughput::Elements(n as u64))
            .measurement_time(time);
        let probs = candle.probabilities(&w);
        g.bench_function("candle", |b| b.iter(|| black_box(candle.hvp(&probs, &v))));
        if kind == CurvatureKind::Hessian {
            let curv = obj.curvature(&w, kind).expect("curvature");
            g.bench_function("objective", |b| {
                b.iter(|| black_box(curv.apply(&v).expect("hvp")))
            });
        }
        let levels = per_level.iter().filter(|_| kind == CurvatureKind::Hessian);
        for (name, f) in variants
            .iter()
            .map(|(n, f)| (n, *f))
            .chain(levels.map(|(n, f)| (n, f)))
        {
            let p: Tensor = f.probabilities_flat(&w, true).expect("probabilities");
            g.bench_function(name.as_str(), |b| {
                b.iter(|| black_box(f.hvp_flat(&p, &v, true).expect("hvp")))
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group(group_name("hvp-cold"));
    g.throughput(Throughput::Elements(n as u64))
        .measurement_time(time);
    g.bench_function("candle", |b| {
        b.iter(|| black_box(candle.hvp(&candle.probabilities(&w), &v)))
    });
    for (name, f) in &variants {
        g.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let p = f.probabilities_flat(&w, true).expect("probabilities");
                black_box(f.hvp_flat(&p, &v, true).expect("hvp"))
            })
        });
    }
    g.finish();
}

/// The unfused candle path and the fused ops' CUDA kernels on the first CUDA
/// device, `cuda/softmax/{grad,hvp}/{dtype}/n{n}/{variant}`; the clock stops
/// after `Device::synchronize`. (`grad` returns the loss to the host, which
/// synchronises by itself.)
#[cfg(feature = "cuda")]
fn softmax_cuda(c: &mut Criterion) {
    use hessfree_model::Batches;
    use hessfree_model::fused::FusedProducts;
    use hessfree_model::fused_ops::FusedOps;
    let dev = match candle_core::Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("skipping the CUDA benches: {e}");
            return;
        }
    };
    let model = Model::new(ModelSpec::Softmax { bias: true }, 784, 10).expect("model");
    // The library reads no environment: `HESSFREE_CUDA_BLOCKS` (blocks per
    // launch, for a sweep) becomes `FusedOps::with_cuda_blocks`.
    let blocks = std::env::var("HESSFREE_CUDA_BLOCKS").ok().map(|v| {
        v.parse::<usize>()
            .unwrap_or_else(|e| panic!("HESSFREE_CUDA_BLOCKS={v:?}: {e}"))
    });
    for n in [1000usize, 60_000] {
        for dtype in [DType::F32, DType::F64] {
            let dt = common::dtype_name(dtype);
            let t = common::subset(n).to_tensors(&dev, dtype).expect("tensors");
            let data =
                Batches::new(&t.images, &t.one_hot, Batches::DEFAULT_CHUNK_ROWS).expect("batches");
            let candle = common::CandleSoftmax {
                data: &data,
                model: model.clone(),
            };
            let fused_float = FusedOps::from_batches(&data, XStorage::Float)
                .and_then(|f| f.with_cuda_blocks(blocks))
                .expect("fused ops");
            let fused_u8 = FusedOps::from_batches(&data, XStorage::U8)
                .and_then(|f| f.with_cuda_blocks(blocks))
                .expect("fused ops u8");
            let fused = [
                (format!("fused-{dt}"), &fused_float),
                ("fused-u8".to_string(), &fused_u8),
            ];
            let w = common::random(7850, 0.05, 1, dtype)
                .to_device(&dev)
                .expect("w");
            let v = common::random(7850, 1.0, 2, dtype)
                .to_device(&dev)
                .expect("v");
            let probs = candle.probabilities(&w);
            let p = fused_u8
                .probabilities_flat(&w, true)
                .expect("probabilities");
            let mut g = c.benchmark_group(format!("cuda/softmax/grad/{dt}/n{n}"));
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function("candle", |b| {
                b.iter(|| {
                    let out = candle.loss_and_grad(&w);
                    dev.synchronize().expect("synchronize");
                    black_box(out)
                })
            });
            for (name, f) in &fused {
                g.bench_function(name.as_str(), |b| {
                    b.iter(|| black_box(f.loss_and_grad_flat(&w, true).expect("grad")))
                });
            }
            g.finish();
            let mut g = c.benchmark_group(format!("cuda/softmax/hvp/{dt}/n{n}"));
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function("candle", |b| {
                b.iter(|| {
                    let out = candle.hvp(&probs, &v);
                    dev.synchronize().expect("synchronize");
                    black_box(out)
                })
            });
            for (name, f) in &fused {
                g.bench_function(name.as_str(), |b| {
                    b.iter(|| {
                        let out = f.hvp_flat(&p, &v, true).expect("hvp");
                        dev.synchronize().expect("synchronize");
                        black_box(out)
                    })
                });
            }
            g.finish();
        }
    }
}

/// The HVP on random `[10000, 784]` bytes of a given density, dense `u8`
/// against CSR, at each level: the crossover behind `csr_max_density`.
fn density_sweep(c: &mut Criterion) {
    use hessfree_model::csr::CsrU8;
    use hessfree_model::fused::{Targets, XData};
    use rand::{Rng, SeedableRng};
    let (n, d, k) = (10_000usize, 784usize, 10usize);
    for dtype in [DType::F32, DType::F64] {
        let dt = common::dtype_name(dtype);
        for percent in [5u32, 10, 20, 30, 40, 50] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(percent));
            let bytes: Vec<u8> = (0..n * d)
                .map(|_| {
                    if rng.random_range(0..100) < percent {
                        rng.random_range(1..=255)
                    } else {
                        0
                    }
                })
                .collect();
            let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
            let scale = 1.0 / 255.0;
            let make = |x: XData| {
                FusedSoftmax::new(x, Targets::Labels(labels.clone()), d, k, n).expect("fused")
            };
            let dense = make(XData::U8 {
                data: bytes.clone(),
                scale,
            });
            let csr = make(XData::Csr(
                CsrU8::from_dense(&bytes, d, scale).expect("csr"),
            ));
            let w = common::random(7850, 0.05, 1, dtype);
            let v = common::random(7850, 1.0, 2, dtype);
            let mut g = c.benchmark_group(format!("cpu/softmax/hvp-density/{dt}/n{n}/d{percent}"));
            g.throughput(Throughput::Elements(n as u64))
                .measurement_time(Duration::from_secs(1))
                .warm_up_time(Duration::from_millis(300));
            for level in SimdLevel::available() {
                for (name, f) in [("u8", &dense), ("csr", &csr)] {
                    let f = f.clone().with_simd_level(level).expect("level");
                    let p: Tensor = f.probabilities_flat(&w, true).expect("probabilities");
                    g.bench_function(format!("{name}/{level}"), |b| {
                        b.iter(|| black_box(f.hvp_flat(&p, &v, true).expect("hvp")))
                    });
                }
            }
            g.finish();
        }
    }
}

fn all(c: &mut Criterion) {
    softmax(c);
    density_sweep(c);
    #[cfg(feature = "cuda")]
    softmax_cuda(c);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = all
}
criterion_main!(benches);
