//! Shared set-up for the criterion benches: data, random vectors and the
//! criterion configuration.
//!
//! The data are the real MNIST training images from `data/mnist` (or
//! `$HESSFREE_DATA`) when they load, otherwise synthetic bytes with MNIST's
//! sparsity (about 19% non-zero pixels, the border always zero), so that the
//! benches run on any checkout. Which one was used is printed once.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::Criterion;
use hessfree_data::{Dataset, MNIST_CLASSES, load_dir, resolve_data_dir};
use hessfree_model::Batches;

/// The training split: real MNIST if it loads, synthetic otherwise.
pub fn train() -> &'static Dataset {
    static TRAIN: OnceLock<Dataset> = OnceLock::new();
    TRAIN.get_or_init(|| {
        let real = resolve_data_dir(None)
            .ok()
            .and_then(|dir| load_dir(&dir.path, MNIST_CLASSES).ok());
        match real {
            Some(splits) => {
                eprintln!(
                    "bench data: MNIST train split, {} images",
                    splits.train.len()
                );
                splits.train
            }
            None => {
                eprintln!("bench data: MNIST not found; synthetic 60000 x 784 bytes");
                synthetic(60_000)
            }
        }
    })
}

/// `n` 28x28 images of bytes with MNIST-like sparsity, deterministic.
pub fn synthetic(n: usize) -> Dataset {
    let mut rng = Rng(0x5eed);
    let mut images = vec![0u8; n * 784];
    for img in images.chunks_exact_mut(784) {
        for r in 4..24 {
            for c in 4..24 {
                if rng.next() % 100 < 37 {
                    img[r * 28 + c] = (rng.next() % 256) as u8;
                }
            }
        }
    }
    let labels = (0..n).map(|_| (rng.next() % 10) as u8).collect();
    Dataset::new(images, labels, 28, 28, 10).expect("synthetic data set")
}

/// The first `n` training images.
pub fn subset(n: usize) -> Dataset {
    let train = train();
    assert!(n <= train.len(), "asked for {n} rows of {}", train.len());
    train.select(&(0..n).collect::<Vec<_>>())
}

/// The first `n` images as an objective's batch (chunks of 10000 rows).
pub fn batches(n: usize, dtype: DType) -> Batches {
    let t = subset(n).to_tensors(&Device::Cpu, dtype).expect("tensors");
    Batches::new(&t.images, &t.one_hot, Batches::DEFAULT_CHUNK_ROWS).expect("batches")
}

/// Uniform values in `[-scale, scale)` from a fixed seed.
pub fn random(len: usize, scale: f64, seed: u64, dtype: DType) -> Tensor {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let v: Vec<f64> = (0..len)
        .map(|_| scale * (2.0 * (rng.next() >> 11) as f64 / (1u64 << 53) as f64 - 1.0))
        .collect();
    Tensor::from_vec(v, len, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("random tensor")
}

/// The SIMD level of the fused kernels' plain bench ids: `HESSFREE_SIMD`
/// (`scalar`, `avx2`, `avx512`, `neon`) if set, else the best this CPU has.
/// The library reads no environment variable; the benches map this one onto
/// `FusedSoftmax::with_simd_level`.
pub fn simd_level() -> hessfree_model::fused::SimdLevel {
    use hessfree_model::fused::SimdLevel;
    match std::env::var("HESSFREE_SIMD") {
        Ok(v) => {
            let level: SimdLevel = v.parse().unwrap_or_else(|e| panic!("HESSFREE_SIMD: {e}"));
            assert!(
                level.is_available(),
                "HESSFREE_SIMD={v}: this CPU has only {:?}",
                SimdLevel::available()
            );
            level
        }
        Err(_) => SimdLevel::best(),
    }
}

/// `"f32"` or `"f64"`.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Few samples and short measurement, so that all benches finish in minutes.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// Measurement time for a group whose single iteration takes `per_iter`.
pub fn measurement_for(per_iter: Duration) -> Duration {
    (per_iter * 12).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// xorshift64*: enough randomness for bench inputs, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Softmax regression's unfused closed forms, exactly as the candle path of
/// `SoftmaxObjective` computes them (per row chunk: `Z = XW + b`, log-softmax,
/// `Xᵀ(P − Y)`; for the HVP `Z = XV + v_b`, `R = P⊙Z − P⊙rowsum(P⊙Z)`,
/// `XᵀR`), written out here so that the `candle` benches measure that path
/// whichever kernel `SoftmaxObjective` itself is wired to.
pub struct CandleSoftmax<'a> {
    pub data: &'a Batches,
    pub model: hessfree_model::Model,
}

impl CandleSoftmax<'_> {
    fn wb(&self, theta: &Tensor) -> (Tensor, Option<Tensor>) {
        let mut layers = self.model.layers(theta).expect("layers");
        layers.remove(0)
    }

    fn logits(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let z = x.matmul(w).expect("matmul");
        match b {
            Some(b) => z.broadcast_add(b).expect("bias"),
            None => z,
        }
    }

    fn pack(&self, gw: Tensor, gb: Option<Tensor>) -> Tensor {
        let mut parts = vec![gw];
        parts.extend(gb);
        self.model
            .layout()
            .flatten(&parts)
            .and_then(|g| Ok(g.affine(1.0 / self.data.rows() as f64, 0.0)?))
            .expect("pack")
    }

    /// Mean cross-entropy and its gradient.
    pub fn loss_and_grad(&self, theta: &Tensor) -> (f64, Tensor) {
        use hessfree_model::objective::softmax_cross_entropy;
        let (w, b) = self.wb(theta);
        let mut total = 0.0;
        let mut gw = w.zeros_like().expect("zeros");
        let mut gb = b.as_ref().map(|b| b.zeros_like().expect("zeros"));
        for (x, y) in self.data.chunks() {
            let (loss, p) = softmax_cross_entropy(&Self::logits(x, &w, b.as_ref()), y).expect("ce");
            total += loss;
            let r = (p - y).expect("p - y");
            gw = (gw + x.t().and_then(|xt| xt.matmul(&r)).expect("xtr")).expect("add");
            if let Some(g) = gb.as_mut() {
                *g = (&*g + r.sum(0).expect("sum")).expect("add");
            }
        }
        (total / self.data.rows() as f64, self.pack(gw, gb))
    }

    /// The softmax probabilities, per chunk.
    pub fn probabilities(&self, theta: &Tensor) -> Vec<Tensor> {
        use hessfree_model::objective::softmax_cross_entropy;
        let (w, b) = self.wb(theta);
        self.data
            .chunks()
            .iter()
            .map(|(x, y)| {
                softmax_cross_entropy(&Self::logits(x, &w, b.as_ref()), y)
                    .expect("ce")
                    .1
            })
            .collect()
    }

    /// The Hessian product at the point whose probabilities are `probs`.
    pub fn hvp(&self, probs: &[Tensor], v: &Tensor) -> Tensor {
        use hessfree_model::objective::softmax_curvature_product;
        let (vw, vb) = self.wb(v);
        let mut hw = vw.zeros_like().expect("zeros");
        let mut hb = vb.as_ref().map(|b| b.zeros_like().expect("zeros"));
        for ((x, _), p) in self.data.chunks().iter().zip(probs) {
            let z = Self::logits(x, &vw, vb.as_ref());
            let r = softmax_curvature_product(p, &z).expect("curvature");
            hw = (hw + x.t().and_then(|xt| xt.matmul(&r)).expect("xtr")).expect("add");
            if let Some(h) = hb.as_mut() {
                *h = (&*h + r.sum(0).expect("sum")).expect("add");
            }
        }
        self.pack(hw, hb)
    }
}
