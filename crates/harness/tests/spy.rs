//! Spy plots of assembled softmax Hessians: each pixel is dark exactly where
//! the matrix (or the block it stands for) has a non-zero, in both orders.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use hessfree_analysis::assemble_softmax_data_hessian;
use hessfree_data::{Dataset, find_files, load_split};
use hessfree_harness::hessian::{HessianOrder, hessian_spy_mask};
use hessfree_model::{Batches, Init, Model, ModelSpec, Penalty, SoftmaxObjective};

type R<T> = anyhow::Result<T>;

const DEV: Device = Device::Cpu;

/// The bundled MNIST test split, loaded once.
fn mnist_test() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let files = find_files(&dir).expect("bundled MNIST files");
        load_split(&files.test, 10).expect("bundled MNIST test split")
    })
}

/// Rows `rows` of MNIST test, cropped to the `side x side` centre patch
/// (so that the Hessian is small enough to assemble), as `(x, one_hot)`.
fn mnist_crop(rows: &[usize], side: usize) -> R<(Tensor, Tensor)> {
    let data = mnist_test();
    let off = (28 - side) / 2;
    let mut x = Vec::with_capacity(rows.len() * side * side);
    let mut y = vec![0f64; rows.len() * 10];
    for (i, &r) in rows.iter().enumerate() {
        let img = data.image(r);
        for a in 0..side {
            for b in 0..side {
                x.push(img[(off + a) * 28 + off + b] as f64 / 255.0);
            }
        }
        y[i * 10 + data.labels[r] as usize] = 1.0;
    }
    Ok((
        Tensor::from_vec(x, (rows.len(), side * side), &DEV)?,
        Tensor::from_vec(y, (rows.len(), 10), &DEV)?,
    ))
}

fn softmax_obj(
    x: &Tensor,
    y: &Tensor,
    bias: bool,
    penalties: Vec<Penalty>,
) -> R<(Model, SoftmaxObjective)> {
    let model = Model::new(ModelSpec::Softmax { bias }, x.dim(1)?, 10)?;
    let obj = SoftmaxObjective::new(model.clone(), Batches::new(x, y, 64)?, penalties)?;
    Ok((model, obj))
}

#[test]
fn spy_pixels_match_the_zero_pattern() -> R<()> {
    // 36 pixels x 10 classes = 360; three images leave dead pixels.
    let rows = [3usize, 10, 44];
    let (x, y) = mnist_crop(&rows, 6)?;
    let (model, obj) = softmax_obj(&x, &y, false, vec![])?;
    for init in [Init::Zeros, Init::TruncatedNormal { std: 0.1 }] {
        let w = model.init(init, 1, &DEV, DType::F64)?;
        let h = assemble_softmax_data_hessian(&obj, &w, true)?;
        assert!(h.pixels.len() < 36, "the crop should have dead pixels");
        let full = h.to_full();
        let nz = |r: usize, c: usize| full[(r, c)] != 0.0;
        for order in [HessianOrder::PixelMajor, HessianOrder::ClassMajor] {
            let idx = |i: usize| order.flat_index(i, 36, 10);
            // Downsampled: each pixel dark iff its block has a non-zero.
            let mask = hessian_spy_mask(&h, order, 100)?;
            assert_eq!((mask.width(), mask.height()), (100, 100));
            let png = image::load_from_memory(&mask.to_png()?)?.to_luma8();
            for py in 0..100 {
                for px in 0..100 {
                    let (rs, cs) = mask.block(py, px).unwrap();
                    let any = rs.clone().any(|r| cs.clone().any(|c| nz(idx(r), idx(c))));
                    assert_eq!(mask.is_dark(py, px), any, "{order:?} ({py},{px})");
                    let luma = png.get_pixel(px as u32, py as u32).0[0];
                    assert_eq!(luma == 0, any);
                }
            }
            // Full resolution: one pixel per entry.
            let mask = hessian_spy_mask(&h, order, 360)?;
            let png = image::load_from_memory(&mask.to_png()?)?.to_luma8();
            for r in 0..360 {
                for c in 0..360 {
                    assert_eq!(
                        png.get_pixel(c as u32, r as u32).0[0] == 0,
                        nz(idx(r), idx(c))
                    );
                }
            }
            // A dead pixel's rows are white across the plot.
            let dead = (0..36).find(|j| !h.pixels.contains(j)).unwrap();
            let row = match order {
                HessianOrder::PixelMajor => dead * 10,
                HessianOrder::ClassMajor => dead,
            };
            assert!((0..360).all(|c| !mask.is_dark(row, c)));
        }
        // Random weights do not fill in zeros: same pattern at both inits.
        let w0 = model.init(Init::Zeros, 0, &DEV, DType::F64)?;
        let h0 = assemble_softmax_data_hessian(&obj, &w0, true)?.to_full();
        for i in 0..360 {
            for j in 0..360 {
                assert_eq!(h0[(i, j)] != 0.0, nz(i, j));
            }
        }
    }
    Ok(())
}
