//! The MLP's first layer over compressed rows against candle's dense
//! matmuls: loss, gradient, exact Hessian and Gauss-Newton products, the
//! diagonal preconditioner and a subsampled objective, in f32 and f64, on
//! pixel data with empty rows and empty columns.

use candle_core::{DType, Device, Tensor};
use hessfree_model::fused::XStorage;
use hessfree_model::linop::vec as fv;
use hessfree_model::{
    Activation, Batches, CurvatureKind, Init, MlpObjective, Model, ModelSpec, Objective, Penalty,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

/// `k/255` pixels, about 20% non-zero; every sixth row and columns 0 and 7
/// empty. Chunks of 13 rows, so the sums run over chunks too.
fn pixels(n: usize, d: usize, k: usize, dtype: DType) -> R<Batches> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut bytes = vec![0u8; n * d];
    for i in 0..n {
        for j in 0..d {
            if i % 6 != 0 && j != 0 && j != 7 && rng.random_bool(0.2) {
                bytes[i * d + j] = rng.random_range(1..=255);
            }
        }
    }
    let mut y = vec![0f64; n * k];
    for i in 0..n {
        y[i * k + rng.random_range(0..k)] = 1.0;
    }
    let dev = Device::Cpu;
    let x = Tensor::from_slice(&bytes, (n, d), &dev)?
        .to_dtype(dtype)?
        .affine(1.0 / 255.0, 0.0)?;
    let y = Tensor::from_vec(y, (n, k), &dev)?.to_dtype(dtype)?;
    Ok(Batches::new(&x, &y, 13)?)
}

fn rel(a: &Tensor, b: &Tensor) -> R<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    Ok(fv::norm(&(&a - &b)?)? / fv::norm(&b)?.max(1e-300))
}

#[test]
fn csr_first_layer_matches_dense() -> R<()> {
    let (n, d, k) = (70, 30, 4);
    for dtype in [DType::F64, DType::F32] {
        let eps = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
        for activation in [Activation::Tanh, Activation::Relu] {
            let model = Model::new(ModelSpec::mlp(&[9, 5], activation), d, k)?;
            let data = pixels(n, d, k, dtype)?;
            let pen = vec![Penalty::L2 { lam: 0.01 }];
            let dense = MlpObjective::with_storage(
                model.clone(),
                data.clone(),
                pen.clone(),
                XStorage::Float,
            )?;
            let csr = MlpObjective::with_storage(
                model.clone(),
                data.clone(),
                pen.clone(),
                XStorage::Csr,
            )?;
            assert_eq!(dense.input_storage(), None);
            assert_eq!(csr.input_storage(), Some("csr-u8"));
            assert!(
                csr.kernel_name().contains("csr-u8"),
                "{}",
                csr.kernel_name()
            );
            let auto = MlpObjective::with_storage(model.clone(), data, pen, XStorage::Auto)?;
            assert_eq!(auto.input_storage(), Some("csr-u8"), "sparse pixels");

            let what = format!("{dtype:?} {activation}");
            let w = model.init(Init::Glorot, 4, &Device::Cpu, dtype)?;
            let (ld, gd) = dense.loss_and_grad(&w)?;
            let (ls, gs) = csr.loss_and_grad(&w)?;
            assert!(((ls - ld) / ld).abs() < eps, "{what}: loss {ls} vs {ld}");
            assert!(((csr.loss(&w)? - ld) / ld).abs() < eps, "{what}: loss()");
            // The loss-only pass (no backward) and the gradient's pass agree
            // to the bit, so line searches and the trace see one function.
            assert_eq!(csr.loss(&w)?.to_bits(), ls.to_bits(), "{what}: loss() bits");
            assert!(
                rel(&gs, &gd)? < eps,
                "{what}: gradient {:e}",
                rel(&gs, &gd)?
            );
            let v = model.init(Init::Glorot, 5, &Device::Cpu, dtype)?;
            for kind in [CurvatureKind::Hessian, CurvatureKind::GaussNewton] {
                let hd = dense.curvature(&w, kind)?.apply(&v)?;
                let hs = csr.curvature(&w, kind)?.apply(&v)?;
                assert!(rel(&hs, &hd)? < eps, "{what} {kind}: {:e}", rel(&hs, &hd)?);
            }
            let dd = dense.diag_curvature(&w)?;
            let ds = csr.diag_curvature(&w)?;
            assert!(
                rel(&ds, &dd)? < eps,
                "{what}: diagonal {:e}",
                rel(&ds, &dd)?
            );
            // Column 0 is empty: its first-layer weights (the first row of
            // layer0.weight [d, 9]) get the penalty's gradient alone.
            let g = gs.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let w64 = w.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for (g, w) in g[..9].iter().zip(&w64[..9]) {
                assert!(
                    (g - 0.01 * w).abs() <= eps * w.abs(),
                    "{what}: {g} vs {}",
                    0.01 * w
                );
            }
            let idx: Vec<usize> = (0..n).step_by(3).collect();
            let sd = dense.subsample(&idx)?;
            let ss = csr.subsample(&idx)?;
            assert!(ss.kernel_name().contains("csr-u8"));
            let (_, a) = sd.loss_and_grad(&w)?;
            let (_, b) = ss.loss_and_grad(&w)?;
            assert!(rel(&b, &a)? < eps, "{what}: subsampled gradient");
        }
    }
    Ok(())
}

#[test]
fn csr_needs_pixel_bytes() -> R<()> {
    let model = Model::new(ModelSpec::mlp(&[3], Activation::Tanh), 4, 2)?;
    let x = Tensor::new(&[[0.5f32, 0.1, 0.0, 0.3]], &Device::Cpu)?;
    let y = Tensor::new(&[[1f32, 0.0]], &Device::Cpu)?;
    let data = Batches::new(&x, &y, 8)?;
    let e = MlpObjective::with_storage(model.clone(), data.clone(), vec![], XStorage::Csr)
        .err()
        .expect("0.1 is not k/255")
        .to_string();
    assert!(e.contains("k/255"), "{e}");
    let auto = MlpObjective::with_storage(model, data, vec![], XStorage::Auto)?;
    assert_eq!(auto.input_storage(), None);
    Ok(())
}
