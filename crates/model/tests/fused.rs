//! The fused softmax-regression kernels against the unfused candle products:
//! loss, gradient, probabilities and HVP, with and without bias, f32 (1e-4
//! relative) and f64 (1e-10 relative), u8 against float storage and against
//! compressed rows (CSR), the candle
//! custom ops, every instruction set the CPU has (against the unfused
//! products and against each other), and bit-for-bit determinism across
//! repeated calls and thread counts at every level. `SoftmaxKernel::FusedOps` (the
//! same kernels as candle ops on the batch's device) is checked per device:
//! on the CPU always, on CUDA when built with the `cuda` feature.
//!
//! The reference is `unfused`: the candle closed forms written out here as
//! `SoftmaxObjective`'s candle path computes them, so that the check stays
//! meaningful if `SoftmaxObjective` itself is wired to the fused kernel.
//! `SoftmaxObjective` is compared as well, through the `Objective` trait.

use candle_core::{DType, Device, Tensor};
use hessfree_model::fused::{
    FusedSoftmax, SimdLevel, SoftmaxGradOp, SoftmaxHvpOp, SoftmaxProbsOp, Targets, XData, XStorage,
    simd_level,
};
use hessfree_model::linop::vec as fv;
use hessfree_model::objective::{softmax_cross_entropy, softmax_curvature_product};
use hessfree_model::{
    Batches, CurvatureKind, Model, ModelSpec, Objective, SoftmaxKernel, SoftmaxObjective,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

const TOL32: f64 = 1e-4;
const TOL64: f64 = 1e-10;

/// MNIST-like data: bytes with ~80% zeros (and a few dead columns), as
/// `k/255` in `dtype` exactly as the data crate scales them, one-hot labels.
struct Data {
    bytes: Vec<u8>,
    labels: Vec<u32>,
    x: Tensor,
    y: Tensor,
    n: usize,
    d: usize,
    k: usize,
}

fn data(n: usize, d: usize, k: usize, seed: u64, dtype: DType) -> R<Data> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = vec![0u8; n * d];
    for i in 0..n {
        for j in 3..d {
            if rng.random_bool(0.2) {
                bytes[i * d + j] = rng.random_range(1..=255);
            }
        }
    }
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
    let dev = Device::Cpu;
    let x = Tensor::from_slice(&bytes, (n, d), &dev)?
        .to_dtype(dtype)?
        .affine(1.0 / 255.0, 0.0)?;
    let mut y = vec![0f64; n * k];
    for (i, &l) in labels.iter().enumerate() {
        y[i * k + l as usize] = 1.0;
    }
    let y = Tensor::from_vec(y, (n, k), &dev)?.to_dtype(dtype)?;
    Ok(Data {
        bytes,
        labels,
        x,
        y,
        n,
        d,
        k,
    })
}

fn random(len: usize, scale: f64, seed: u64, dtype: DType) -> R<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..len).map(|_| rng.random_range(-scale..scale)).collect();
    Ok(Tensor::from_vec(v, len, &Device::Cpu)?.to_dtype(dtype)?)
}

fn rel(a: &Tensor, b: &Tensor) -> R<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    Ok(fv::norm(&(&a - &b)?)? / fv::norm(&b)?.max(1e-300))
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 { TOL64 } else { TOL32 }
}

/// The unfused objective over `data` (chunks of 37 rows, so the reference
/// sums over chunks too).
fn reference(data: &Data, bias: bool) -> R<SoftmaxObjective> {
    let model = Model::new(ModelSpec::Softmax { bias }, data.d, data.k)?;
    let batches = Batches::new(&data.x, &data.y, 37)?;
    Ok(SoftmaxObjective::new(model, batches, Vec::new())?)
}

/// The unfused candle closed forms over the objective's chunks:
/// `(mean loss, gradient, probabilities [n, k], HVP along v)`.
fn unfused(obj: &SoftmaxObjective, w: &Tensor, v: &Tensor) -> R<(f64, Tensor, Tensor, Tensor)> {
    let model = obj.model();
    let data = obj.data();
    let n = data.rows() as f64;
    let logits = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| -> R<Tensor> {
        let z = x.matmul(w)?;
        Ok(match b {
            Some(b) => z.broadcast_add(b)?,
            None => z,
        })
    };
    let pack = |gw: Tensor, gb: Option<Tensor>| -> R<Tensor> {
        let mut parts = vec![gw];
        parts.extend(gb);
        Ok(model.layout().flatten(&parts)?.affine(1.0 / n, 0.0)?)
    };
    let (ww, wb) = model.layers(w)?.remove(0);
    let (vw, vb) = model.layers(v)?.remove(0);
    let (mut total, mut probs) = (0.0, Vec::new());
    let mut gw = ww.zeros_like()?;
    let mut gb = wb.as_ref().map(|b| b.zeros_like()).transpose()?;
    let mut hw = vw.zeros_like()?;
    let mut hb = vb.as_ref().map(|b| b.zeros_like()).transpose()?;
    for (x, y) in data.chunks() {
        let (loss, p) = softmax_cross_entropy(&logits(x, &ww, wb.as_ref())?, y)?;
        total += loss;
        let r = (&p - y)?;
        gw = (gw + x.t()?.matmul(&r)?)?;
        if let Some(g) = gb.as_mut() {
            *g = (&*g + r.sum(0)?)?;
        }
        let r = softmax_curvature_product(&p, &logits(x, &vw, vb.as_ref())?)?;
        hw = (hw + x.t()?.matmul(&r)?)?;
        if let Some(h) = hb.as_mut() {
            *h = (&*h + r.sum(0)?)?;
        }
        probs.push(p);
    }
    Ok((
        total / n,
        pack(gw, gb)?,
        Tensor::cat(&probs, 0)?,
        pack(hw, hb)?,
    ))
}

/// Compares every fused product with the references at a random point.
fn check(
    fused: &FusedSoftmax,
    obj: &SoftmaxObjective,
    bias: bool,
    dtype: DType,
    seed: u64,
) -> R<()> {
    let dim = fused.dim(bias);
    let w = random(dim, 0.5, seed, dtype)?;
    let v = random(dim, 1.0, seed + 1, dtype)?;
    let t = tol(dtype);
    let what = format!(
        "{} storage, {dtype:?}, bias {bias}, {}",
        fused.storage_name(),
        fused.simd_level()
    );
    let close = |a: f64, b: f64| ((a - b) / b).abs() < t;

    let (l_ref, g_ref, p_ref, hv_ref) = unfused(obj, &w, &v)?;
    let (l, g) = fused.loss_and_grad_flat(&w, bias)?;
    assert!(close(l, l_ref), "{what}: loss {l} vs {l_ref}");
    let e = rel(&g, &g_ref)?;
    assert!(e < t, "{what}: gradient rel error {e:e}");
    let l_only = fused.loss_flat(&w, bias)?;
    assert!(close(l_only, l_ref), "{what}: loss {l_only} vs {l_ref}");

    let p = fused.probabilities_flat(&w, bias)?;
    let e = rel(&p, &p_ref)?;
    assert!(e < t, "{what}: probabilities rel error {e:e}");
    let (l2, g2, p2) = fused.loss_grad_probs_flat(&w, bias)?;
    assert_eq!(l2, l, "{what}: loss_grad_probs loss");
    assert_eq!(rel(&g2, &g)?, 0.0, "{what}: loss_grad_probs gradient");
    assert_eq!(rel(&p2, &p)?, 0.0, "{what}: loss_grad_probs probabilities");

    let hv = fused.hvp_flat(&p, &v, bias)?;
    let e = rel(&hv, &hv_ref)?;
    assert!(e < t, "{what}: HVP rel error {e:e}");
    eprintln!(
        "{what}: rel. error vs unfused: loss {:.1e}, gradient {:.1e}, probabilities {:.1e}, HVP {e:.1e}",
        ((l - l_ref) / l_ref).abs(),
        rel(&g, &g_ref)?,
        rel(&p, &p_ref)?,
    );

    // SoftmaxObjective, through the trait, agrees too.
    let (l_obj, g_obj) = obj.loss_and_grad(&w)?;
    assert!(close(l, l_obj), "{what}: objective loss {l_obj}");
    assert!(rel(&g, &g_obj)? < t, "{what}: objective gradient");
    let hv_obj = obj.curvature(&w, CurvatureKind::Hessian)?.apply(&v)?;
    assert!(rel(&hv, &hv_obj)? < t, "{what}: objective HVP");
    Ok(())
}

#[test]
fn fused_matches_unfused_f64_and_f32() -> R<()> {
    // d = 100 is not a multiple of any vector width (tails); n = 300 spans
    // two leaves and a partial block; k = 3 and 13 exercise class padding.
    for &(n, d, k) in &[(300, 100, 10), (130, 50, 3), (90, 40, 13), (70, 784, 10)] {
        for dtype in [DType::F64, DType::F32] {
            let data = data(n, d, k, 11, dtype)?;
            for bias in [true, false] {
                let obj = reference(&data, bias)?;
                for storage in [XStorage::Float, XStorage::U8, XStorage::Csr] {
                    let fused = FusedSoftmax::from_batches(obj.data(), storage)?;
                    check(&fused, &obj, bias, dtype, 3)?;
                }
            }
        }
    }
    Ok(())
}

/// Every level this CPU has against the unfused products, and against the
/// scalar level to rounding (FMA and the lanes' summation order differ).
#[test]
fn every_instruction_set_agrees() -> R<()> {
    let levels = SimdLevel::available();
    eprintln!(
        "SIMD levels on this CPU: {levels:?}, best {}",
        SimdLevel::best()
    );
    assert_eq!(levels[0], SimdLevel::Scalar);
    assert!(levels.contains(&SimdLevel::best()));
    assert_eq!(simd_level(), SimdLevel::best());
    for dtype in [DType::F64, DType::F32] {
        // d = 100: tails after the vectors at every width.
        let data = data(200, 100, 10, 5, dtype)?;
        let obj = reference(&data, true)?;
        let w = random(1010, 0.5, 9, dtype)?;
        let v = random(1010, 1.0, 10, dtype)?;
        let eps = if dtype == DType::F64 { 1e-13 } else { 1e-5 };
        for storage in [XStorage::U8, XStorage::Csr, XStorage::Float] {
            let mut results = Vec::new();
            for &level in &levels {
                let fused =
                    FusedSoftmax::from_batches(obj.data(), storage)?.with_simd_level(level)?;
                assert_eq!(fused.simd_level(), level);
                check(&fused, &obj, true, dtype, 9)?;
                let (l, g, p) = fused.loss_grad_probs_flat(&w, true)?;
                let hv = fused.hvp_flat(&p, &v, true)?;
                results.push((level, l, g, p, hv));
            }
            let (_, l0, g0, p0, h0) = &results[0];
            for (level, l, g, p, hv) in &results[1..] {
                let what = format!("{level} vs scalar, {dtype:?}, {storage:?}");
                assert!(((l - l0) / l0).abs() < eps, "{what}: loss {l} vs {l0}");
                for (name, a, b) in [
                    ("gradient", g, g0),
                    ("probabilities", p, p0),
                    ("HVP", hv, h0),
                ] {
                    let e = rel(a, b)?;
                    assert!(e < eps, "{what}: {name} rel. difference {e:e}");
                }
            }
        }
    }
    // A level the CPU lacks is refused, never run.
    let data = data(20, 30, 10, 1, DType::F32)?;
    let obj = reference(&data, true)?;
    for level in SimdLevel::ALL {
        if !level.is_available() {
            let e = FusedSoftmax::from_batches(obj.data(), XStorage::Auto)?
                .with_simd_level(level)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(level.name()) && e.contains("not available"),
                "{e}"
            );
        }
    }
    Ok(())
}

#[test]
fn simd_level_names_round_trip() -> R<()> {
    for level in SimdLevel::ALL {
        assert_eq!(level.to_string().parse::<SimdLevel>()?, level);
    }
    assert_eq!("x86-64-v3".parse::<SimdLevel>()?, SimdLevel::Avx2);
    assert_eq!("AVX512".parse::<SimdLevel>()?, SimdLevel::Avx512);
    let e = "sse2".parse::<SimdLevel>().unwrap_err().to_string();
    assert!(e.contains("sse2") && e.contains("avx2"), "{e}");
    Ok(())
}

#[test]
fn u8_and_float_storage_agree_to_rounding() -> R<()> {
    for dtype in [DType::F64, DType::F32] {
        let data = data(500, 784, 10, 7, dtype)?;
        let obj = reference(&data, true)?;
        let auto = FusedSoftmax::from_batches(obj.data(), XStorage::U8)?;
        assert_eq!(
            auto.storage_name(),
            "u8",
            "pixel data compresses losslessly"
        );
        assert_eq!(auto.x_bytes(), 500 * 784);
        let float = FusedSoftmax::from_batches(obj.data(), XStorage::Float)?;
        assert_eq!(float.x_bytes(), 500 * 784 * dtype.size_in_bytes());
        let bytes = FusedSoftmax::new(
            XData::U8 {
                data: data.bytes.clone(),
                scale: 1.0 / 255.0,
            },
            Targets::Labels(data.labels.clone()),
            784,
            10,
            500,
        )?;
        let w = random(7850, 0.5, 1, dtype)?;
        let v = random(7850, 1.0, 2, dtype)?;
        // Folding the 1/255 into Z and R only reorders roundings.
        let eps = if dtype == DType::F64 { 1e-13 } else { 1e-5 };
        let (la, ga, pa) = auto.loss_grad_probs_flat(&w, true)?;
        let (lf, gf, pf) = float.loss_grad_probs_flat(&w, true)?;
        let (lb, gb, pb) = bytes.loss_grad_probs_flat(&w, true)?;
        assert!(((la - lf) / lf).abs() < eps, "{dtype:?} loss {la} vs {lf}");
        assert_eq!(la, lb, "the same bytes give the same loss");
        assert!(
            rel(&ga, &gf)? < eps,
            "{dtype:?} gradient {:e}",
            rel(&ga, &gf)?
        );
        assert_eq!(rel(&ga, &gb)?, 0.0);
        assert!(rel(&pa, &pf)? < eps, "{dtype:?} probabilities");
        assert_eq!(rel(&pa, &pb)?, 0.0);
        let ha = auto.hvp_flat(&pa, &v, true)?;
        let hf = float.hvp_flat(&pf, &v, true)?;
        assert!(rel(&ha, &hf)? < eps, "{dtype:?} HVP {:e}", rel(&ha, &hf)?);
    }
    Ok(())
}

/// Compressed rows against dense bytes on data with empty rows (every
/// fifth, and the last) and empty columns (the first three, and one in the
/// middle), at every level the CPU has: the same sums in another order.
#[test]
fn csr_and_dense_u8_agree_with_empty_rows_and_columns() -> R<()> {
    let (n, d, k) = (301, 100, 10);
    for dtype in [DType::F64, DType::F32] {
        let mut data = data(n, d, k, 41, dtype)?;
        for i in 0..n {
            for j in 0..d {
                if i % 5 == 0 || i == n - 1 || j == 50 {
                    data.bytes[i * d + j] = 0;
                }
            }
        }
        data.x = Tensor::from_slice(&data.bytes, (n, d), &Device::Cpu)?
            .to_dtype(dtype)?
            .affine(1.0 / 255.0, 0.0)?;
        let eps = if dtype == DType::F64 { 1e-13 } else { 1e-5 };
        for bias in [true, false] {
            let obj = reference(&data, bias)?;
            let dim = obj.dim();
            let w = random(dim, 0.5, 3, dtype)?;
            let v = random(dim, 1.0, 4, dtype)?;
            for level in SimdLevel::available() {
                let dense =
                    FusedSoftmax::from_batches(obj.data(), XStorage::U8)?.with_simd_level(level)?;
                let csr = FusedSoftmax::from_batches(obj.data(), XStorage::Csr)?
                    .with_simd_level(level)?;
                assert_eq!(csr.storage_name(), "csr-u8");
                assert!(csr.x_bytes() < dense.x_bytes());
                check(&csr, &obj, bias, dtype, 5)?;
                let what = format!("{dtype:?}, bias {bias}, {level}");
                let (ld, gd, pd) = dense.loss_grad_probs_flat(&w, bias)?;
                let (ls, gs, ps) = csr.loss_grad_probs_flat(&w, bias)?;
                assert!(((ls - ld) / ld).abs() < eps, "{what}: loss {ls} vs {ld}");
                assert!(
                    ((csr.loss_flat(&w, bias)? - ld) / ld).abs() < eps,
                    "{what}: loss"
                );
                assert!(
                    rel(&gs, &gd)? < eps,
                    "{what}: gradient {:e}",
                    rel(&gs, &gd)?
                );
                assert!(rel(&ps, &pd)? < eps, "{what}: probabilities");
                assert!(
                    rel(&csr.probabilities_flat(&w, bias)?, &pd)? < eps,
                    "{what}"
                );
                let hd = dense.hvp_flat(&pd, &v, bias)?;
                let hs = csr.hvp_flat(&ps, &v, bias)?;
                assert!(rel(&hs, &hd)? < eps, "{what}: HVP {:e}", rel(&hs, &hd)?);
                // The empty column's weights get exactly zero gradient and
                // curvature.
                let gs = gs.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let hs = hs.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                for c in 0..k {
                    assert_eq!(gs[50 * k + c], 0.0, "{what}");
                    assert_eq!(hs[50 * k + c], 0.0, "{what}");
                }
            }
        }
    }
    Ok(())
}

/// `auto` picks compressed rows for sparse pixel data, dense bytes for
/// dense pixel data, and floats for anything else.
#[test]
fn auto_storage_follows_the_density() -> R<()> {
    // About 9% non-zeros: below every level's threshold.
    let mut sparse = data(50, 40, 10, 2, DType::F32)?;
    for row in sparse.bytes.chunks_mut(40).skip(1).step_by(2) {
        row.fill(0);
    }
    sparse.x = Tensor::from_slice(&sparse.bytes, (50, 40), &Device::Cpu)?
        .to_dtype(DType::F32)?
        .affine(1.0 / 255.0, 0.0)?;
    let obj = reference(&sparse, true)?;
    let auto = FusedSoftmax::from_batches(obj.data(), XStorage::Auto)?;
    assert_eq!(auto.storage_name(), "csr-u8");
    let mut dense = sparse;
    for b in dense.bytes.iter_mut() {
        *b = b.wrapping_add(1).max(1);
    }
    dense.x = Tensor::from_slice(&dense.bytes, (50, 40), &Device::Cpu)?
        .to_dtype(DType::F32)?
        .affine(1.0 / 255.0, 0.0)?;
    let obj = reference(&dense, true)?;
    let auto = FusedSoftmax::from_batches(obj.data(), XStorage::Auto)?;
    assert_eq!(auto.storage_name(), "u8");
    // In between (about 35% non-zeros), the level decides: compressed rows
    // where the level's threshold allows them.
    let mut mid = data(60, 50, 10, 3, DType::F32)?;
    for (t, b) in mid.bytes.iter_mut().enumerate() {
        *b = if t % 20 < 7 { (t % 255) as u8 + 1 } else { 0 };
    }
    mid.x = Tensor::from_slice(&mid.bytes, (60, 50), &Device::Cpu)?
        .to_dtype(DType::F32)?
        .affine(1.0 / 255.0, 0.0)?;
    let obj = reference(&mid, true)?;
    for level in SimdLevel::available() {
        let f = FusedSoftmax::from_batches_at(obj.data(), XStorage::Auto, level)?;
        assert_eq!(f.simd_level(), level);
        let want = if 0.35 <= hessfree_model::csr::csr_max_density(level) {
            "csr-u8"
        } else {
            "u8"
        };
        assert_eq!(f.storage_name(), want, "{level}");
    }
    let scalar = FusedSoftmax::from_batches_at(obj.data(), XStorage::Auto, SimdLevel::Scalar)?;
    assert_eq!(
        scalar.storage_name(),
        "csr-u8",
        "the scalar level gains most"
    );
    Ok(())
}

#[test]
fn any_alignment_of_x_gives_the_same_products() -> R<()> {
    // X's start in memory decides how many leading inputs are peeled off
    // before the aligned vector loads; every offset must agree.
    for dtype in [DType::F32, DType::F64] {
        let data = data(90, 784, 10, 31, dtype)?;
        let obj = reference(&data, true)?;
        let flat = data.x.flatten_all()?;
        let mut results = Vec::new();
        for off in [0usize, 1, 3, 8, 15] {
            let padded = Tensor::cat(&[Tensor::zeros(off, dtype, &Device::Cpu)?, flat.clone()], 0)?;
            let x = padded.narrow(0, off, 90 * 784)?.reshape((90, 784))?;
            let fused = FusedSoftmax::new(
                XData::Tensor {
                    tensor: x,
                    scale: 1.0,
                },
                Targets::Labels(data.labels.clone()),
                784,
                10,
                90,
            )?;
            check(&fused, &obj, true, dtype, 4)?;
            let w = random(7850, 0.5, 6, dtype)?;
            let (_, g, p) = fused.loss_grad_probs_flat(&w, true)?;
            results.push((g, p));
        }
        let eps = if dtype == DType::F64 { 1e-13 } else { 1e-5 };
        for (g, p) in &results[1..] {
            assert!(rel(g, &results[0].0)? < eps);
            assert!(rel(p, &results[0].1)? < eps);
        }
    }
    Ok(())
}

#[test]
fn soft_targets_match_unfused() -> R<()> {
    // Rows of a probability distribution, not one-hot: dense targets.
    let mut data = data(120, 60, 10, 21, DType::F64)?;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut y = vec![0f64; 120 * 10];
    for row in y.chunks_exact_mut(10) {
        for v in row.iter_mut() {
            *v = rng.random_range(0.0..1.0);
        }
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    data.y = Tensor::from_vec(y, (120, 10), &Device::Cpu)?;
    let obj = reference(&data, true)?;
    let fused = FusedSoftmax::from_batches(obj.data(), XStorage::Auto)?;
    check(&fused, &obj, true, DType::F64, 8)
}

#[test]
fn custom_ops_match_unfused() -> R<()> {
    for dtype in [DType::F64, DType::F32] {
        let data = data(150, 100, 10, 13, dtype)?;
        for bias in [true, false] {
            let obj = reference(&data, bias)?;
            let dim = obj.dim();
            let w = random(dim, 0.5, 5, dtype)?;
            let v = random(dim, 1.0, 6, dtype)?;
            let n = data.n as f64;
            let t = tol(dtype);
            let u8x = Tensor::from_slice(&data.bytes, (data.n, data.d), &Device::Cpu)?;
            let (l_ref, g_ref, p_ref, hv_ref) = unfused(&obj, &w, &v)?;
            for x in [&data.x, &u8x] {
                let grad_op = SoftmaxGradOp {
                    classes: 10,
                    bias,
                    x_scale: 1.0 / 255.0,
                    scale: 1.0 / n,
                    cuda_blocks: None,
                };
                let out = x.apply_op3_no_bwd(&data.y, &w, &grad_op)?;
                assert_eq!(out.dims(), &[dim + 1]);
                let g = out.narrow(0, 0, dim)?;
                assert!(rel(&g, &g_ref)? < t, "grad op {dtype:?} bias {bias}");
                let l = out
                    .narrow(0, dim, 1)?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?[0];
                assert!(
                    ((l - l_ref) / l_ref).abs() < t,
                    "grad op loss {l} vs {l_ref}"
                );
                // Labels as u32 give the same result as one-hot targets.
                let labels = Tensor::new(data.labels.as_slice(), &Device::Cpu)?;
                let out2 = x.apply_op3_no_bwd(&labels, &w, &grad_op)?;
                assert_eq!(rel(&out2, &out)?, 0.0);

                let probs_op = SoftmaxProbsOp {
                    classes: 10,
                    bias,
                    x_scale: 1.0 / 255.0,
                    cuda_blocks: None,
                };
                let p = x.apply_op2_no_bwd(&w, &probs_op)?;
                assert!(rel(&p, &p_ref)? < t);

                let hvp_op = SoftmaxHvpOp {
                    classes: 10,
                    bias,
                    x_scale: 1.0 / 255.0,
                    scale: 1.0 / n,
                    cuda_blocks: None,
                };
                let hv = x.apply_op3_no_bwd(&p, &v, &hvp_op)?;
                assert!(rel(&hv, &hv_ref)? < t, "hvp op {dtype:?} bias {bias}");
            }
        }
    }
    Ok(())
}

#[test]
fn bit_identical_across_runs_and_thread_counts() -> R<()> {
    // 5000 rows make a 16-leaf reduction tree.
    for dtype in [DType::F32, DType::F64] {
        let data = data(5000, 784, 10, 17, dtype)?;
        let obj = reference(&data, true)?;
        let w = random(7850, 0.5, 3, dtype)?;
        let v = random(7850, 1.0, 4, dtype)?;
        for (level, storage) in SimdLevel::available()
            .into_iter()
            .flat_map(|l| [(l, XStorage::U8), (l, XStorage::Csr)])
        {
            let fused = FusedSoftmax::from_batches(obj.data(), storage)?.with_simd_level(level)?;
            let run = |threads: usize| -> R<(f64, Vec<f64>, Vec<f64>)> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()?;
                pool.install(|| {
                    let (l, g, p) = fused.loss_grad_probs_flat(&w, true)?;
                    let hv = fused.hvp_flat(&p, &v, true)?;
                    let f = |t: &Tensor| -> R<Vec<f64>> {
                        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
                    };
                    Ok((l, f(&g)?, f(&hv)?))
                })
            };
            let first = run(2)?;
            assert_eq!(
                run(2)?,
                first,
                "{dtype:?}, {level}: same thread count, same bits"
            );
            for threads in [1, 3, 4] {
                assert_eq!(
                    run(threads)?,
                    first,
                    "{dtype:?}, {level}, {storage:?}: {threads} threads"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> R<()> {
    let data = data(20, 30, 10, 1, DType::F32)?;
    let obj = reference(&data, true)?;
    let fused = FusedSoftmax::from_batches(obj.data(), XStorage::Float)?;
    let short = random(100, 1.0, 1, DType::F32)?;
    let e = fused
        .loss_and_grad_flat(&short, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("310"), "{e}");
    let w = random(310, 1.0, 1, DType::F32)?;
    let p64 = random(200, 1.0, 1, DType::F64)?.reshape((20, 10))?;
    let e = fused.hvp_flat(&p64, &w, true).unwrap_err().to_string();
    assert!(e.contains("F64"), "{e}");
    // Non-pixel inputs cannot be stored as u8.
    let x = random(20 * 30, 1.0, 2, DType::F32)?.reshape((20, 30))?;
    let b = Batches::new(&x, &data.y, 8)?;
    assert!(FusedSoftmax::from_batches(&b, XStorage::U8).is_err());
    let e = FusedSoftmax::from_batches(&b, XStorage::Csr)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k/255") && e.contains("csr"), "{e}");
    let e = "sparse".parse::<XStorage>().unwrap_err().to_string();
    assert!(e.contains("sparse") && e.contains("csr"), "{e}");
    assert_eq!(
        FusedSoftmax::from_batches(&b, XStorage::Auto)?.storage_name(),
        "f32"
    );
    let e = FusedSoftmax::new(
        XData::U8 {
            data: vec![0; 60],
            scale: 1.0,
        },
        Targets::Labels(vec![0, 12]),
        30,
        10,
        2,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("label 12"), "{e}");
    Ok(())
}

/// `SoftmaxObjective` with `SoftmaxKernel::FusedOps` on `device` against the
/// unfused candle products on the CPU: loss, gradient, probabilities and HVP,
/// one-hot and soft targets, `u8` and float storage, with and without bias.
fn check_fused_ops_on(device: &Device) -> R<()> {
    // d = 100 and 40 are not multiples of a warp; 300 rows span several
    // blocks and a partial tile; k = 13 is not the MNIST class count.
    for &(n, d, k) in &[(300, 100, 10), (90, 40, 13), (70, 784, 10)] {
        for dtype in [DType::F64, DType::F32] {
            let mut data = data(n, d, k, 11, dtype)?;
            for soft in [false, true] {
                if soft {
                    let mut rng = ChaCha8Rng::seed_from_u64(4);
                    let mut y = vec![0f64; n * k];
                    for row in y.chunks_exact_mut(k) {
                        row.iter_mut().for_each(|v| *v = rng.random_range(0.0..1.0));
                        let s: f64 = row.iter().sum();
                        row.iter_mut().for_each(|v| *v /= s);
                    }
                    data.y = Tensor::from_vec(y, (n, k), &Device::Cpu)?.to_dtype(dtype)?;
                }
                for bias in [true, false] {
                    let cpu = reference(&data, bias)?;
                    let model = cpu.model().clone();
                    let batches =
                        Batches::new(&data.x.to_device(device)?, &data.y.to_device(device)?, 37)?;
                    let dim = cpu.dim();
                    let w = random(dim, 0.5, 3, dtype)?;
                    let v = random(dim, 1.0, 4, dtype)?;
                    let (l_ref, g_ref, p_ref, hv_ref) = unfused(&cpu, &w, &v)?;
                    let (wd, vd) = (w.to_device(device)?, v.to_device(device)?);
                    let t = tol(dtype);
                    for storage in [XStorage::Float, XStorage::U8] {
                        let what = format!(
                            "{device:?} {n}x{d}x{k} {dtype:?} {storage:?} bias {bias} soft {soft}"
                        );
                        let obj =
                            SoftmaxObjective::new(model.clone(), batches.clone(), Vec::new())?
                                .with_kernel(SoftmaxKernel::FusedOps(storage))?;
                        let (l, g) = obj.loss_and_grad(&wd)?;
                        assert!(g.device().same_device(device), "{what}: gradient device");
                        assert!(
                            ((l - l_ref) / l_ref).abs() < t,
                            "{what}: loss {l} vs {l_ref}"
                        );
                        let e = rel(&g.to_device(&Device::Cpu)?, &g_ref)?;
                        assert!(e < t, "{what}: gradient rel error {e:e}");
                        let l_only = obj.loss(&wd)?;
                        assert!(((l_only - l_ref) / l_ref).abs() < t, "{what}: loss only");
                        let p = Tensor::cat(&obj.probabilities(&wd)?, 0)?;
                        let e = rel(&p.to_device(&Device::Cpu)?, &p_ref)?;
                        assert!(e < t, "{what}: probabilities rel error {e:e}");
                        let hv = obj.curvature(&wd, CurvatureKind::Hessian)?.apply(&vd)?;
                        let e = rel(&hv.to_device(&Device::Cpu)?, &hv_ref)?;
                        assert!(e < t, "{what}: HVP rel error {e:e}");
                        // Bit-identical when repeated (fixed reduction order).
                        let hv2 = obj.curvature(&wd, CurvatureKind::Hessian)?.apply(&vd)?;
                        assert_eq!(rel(&hv2, &hv)?, 0.0, "{what}: repeated HVP");
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn fused_ops_on_cpu_match_unfused() -> R<()> {
    check_fused_ops_on(&Device::Cpu)
}

/// With the `cuda` feature this needs a GPU: a CUDA build is for checking
/// the CUDA kernel, so a missing device is a failure, not a skip.
#[cfg(feature = "cuda")]
#[test]
fn fused_ops_on_cuda_match_unfused() -> R<()> {
    let device = Device::new_cuda(0)?;
    check_fused_ops_on(&device)?;
    assert_eq!(
        SoftmaxKernel::default_for(&device),
        SoftmaxKernel::FusedOps(XStorage::Auto)
    );
    Ok(())
}

/// The CUDA kernels with other block counts (`FusedOps::with_cuda_blocks`;
/// `HESSFREE_CUDA_BLOCKS`, if set, adds one: the library reads no
/// environment) agree with the default count to rounding.
#[cfg(feature = "cuda")]
#[test]
fn fused_ops_on_cuda_block_counts_agree() -> R<()> {
    use hessfree_model::fused::FusedProducts;
    use hessfree_model::fused_ops::FusedOps;
    let device = Device::new_cuda(0)?;
    let mut counts = vec![1usize, 3, 1000];
    if let Ok(v) = std::env::var("HESSFREE_CUDA_BLOCKS") {
        counts.push(v.parse()?);
    }
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu);
    for dtype in [DType::F64, DType::F32] {
        let data = data(3000, 784, 10, 13, dtype)?;
        let batches = Batches::new(
            &data.x.to_device(&device)?,
            &data.y.to_device(&device)?,
            1000,
        )?;
        let w = random(7850, 0.5, 3, dtype)?.to_device(&device)?;
        let v = random(7850, 1.0, 4, dtype)?.to_device(&device)?;
        let base = FusedOps::from_batches(&batches, XStorage::Auto)?;
        assert_eq!(base.cuda_blocks(), None);
        let (l0, g0) = base.loss_and_grad_flat(&w, true)?;
        let p = base.probabilities_flat(&w, true)?;
        let h0 = base.hvp_flat(&p, &v, true)?;
        let eps = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        for &blocks in &counts {
            let what = format!("{dtype:?}, {blocks} blocks");
            let ops =
                FusedOps::from_batches(&batches, XStorage::Auto)?.with_cuda_blocks(Some(blocks))?;
            let (l, g) = ops.loss_and_grad_flat(&w, true)?;
            assert!(((l - l0) / l0).abs() < eps, "{what}: loss {l} vs {l0}");
            let e = rel(&cpu(&g)?, &cpu(&g0)?)?;
            assert!(e < eps, "{what}: gradient rel. difference {e:e}");
            let h = ops.hvp_flat(&p, &v, true)?;
            let e = rel(&cpu(&h)?, &cpu(&h0)?)?;
            assert!(e < eps, "{what}: HVP rel. difference {e:e}");
        }
        let zero = FusedOps::from_batches(&batches, XStorage::Auto)?.with_cuda_blocks(Some(0));
        assert!(zero.is_err(), "zero blocks are refused");
    }
    Ok(())
}
