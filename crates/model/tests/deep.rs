//! Deep models: MLPs with a different activation in every layer and Martens'
//! autoencoder. Their gradient, exact Hessian (R-operator) and Gauss-Newton
//! products against finite differences and double backward, in f64 on tiny
//! batches; the spec strings; the sparse initialisation; the reconstruction
//! error; and the per-case squared gradients against a per-case loop.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hessfree_model::fused::XStorage;
use hessfree_model::linop::vec as fv;
use hessfree_model::weights::{from_bytes, to_bytes};
use hessfree_model::{
    Activation, AutodiffObjective, Batches, CurvatureKind, Hidden, Init, Loss, MlpObjective, Model,
    ModelSpec, Objective, ParamKind, Penalty, SigmoidCrossEntropy, load_weights, objective_for,
    save_weights,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

type R<T> = anyhow::Result<T>;

const TOL: f64 = 1e-6;

/// Two mixed MLPs that between them use every activation: four hidden
/// layers, then three.
const MIXED: [&str; 2] = [
    "mlp:6:logistic,5:tanh,4:relu,4:softplus",
    "mlp:5:linear,4:softplus,3:logistic",
];

/// `k/255` pixels, about half of them zero (so that compressed rows apply),
/// and one-hot labels of `k` classes; chunks of 5 rows so that every sum
/// also runs over chunks.
fn pixels(n: usize, d: usize, seed: u64) -> R<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bytes: Vec<u8> = (0..n * d)
        .map(|_| {
            if rng.random_bool(0.5) {
                rng.random_range(1..=255)
            } else {
                0
            }
        })
        .collect();
    Ok(Tensor::from_slice(&bytes, (n, d), &Device::Cpu)?
        .to_dtype(DType::F64)?
        .affine(1.0 / 255.0, 0.0)?)
}

fn classification(n: usize, d: usize, k: usize, seed: u64) -> R<Batches> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1000);
    let mut y = vec![0f64; n * k];
    for i in 0..n {
        y[i * k + rng.random_range(0..k)] = 1.0;
    }
    let y = Tensor::from_vec(y, (n, k), &Device::Cpu)?;
    Ok(Batches::new(&pixels(n, d, seed)?, &y, 5)?)
}

fn random_vec(dim: usize, seed: u64) -> R<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    Ok(Tensor::from_vec(v, dim, &Device::Cpu)?)
}

fn rel(a: &Tensor, b: &Tensor) -> R<f64> {
    Ok(fv::norm(&(a - b)?)? / fv::norm(b)?.max(1e-300))
}

/// A starting point with every unit away from its kink and saturation:
/// N(0, 0.5²) weights and small non-zero biases.
fn point(model: &Model, seed: u64) -> R<Tensor> {
    let w = model.init(
        Init::TruncatedNormal { std: 0.5 },
        seed,
        &Device::Cpu,
        DType::F64,
    )?;
    Ok((w + random_vec(model.layout().len(), seed + 7)?.affine(0.1, 0.0)?)?)
}

/// The same network and loss by candle's double backward.
fn autodiff(model: &Model, data: Batches, loss: Arc<dyn Loss>) -> R<AutodiffObjective> {
    let m = model.clone();
    Ok(AutodiffObjective::new(
        model.layout().clone(),
        Arc::new(move |w: &Tensor, x: &Tensor| {
            m.logits(w, x)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        }),
        data,
        vec![],
    )?
    .with_loss(loss))
}

/// Gradient against central differences of the loss, exact Hessian
/// products against central differences of the gradient, both curvatures
/// against double backward, and the Gauss-Newton matrix symmetric and
/// positive semi-definite on random vectors.
fn check_products(model: &Model, data: Batches, what: &str) -> R<()> {
    let obj = objective_for(model, data.clone(), vec![])?;
    let auto = autodiff(model, data, model.natural_loss())?;
    let w = point(model, 3)?;
    let (loss, g) = obj.loss_and_grad(&w)?;
    let (auto_loss, auto_g) = auto.loss_and_grad(&w)?;
    assert!(
        (loss - auto_loss).abs() < 1e-12 * loss.abs(),
        "{what}: loss"
    );
    assert!(rel(&g, &auto_g)? < 1e-12, "{what}: gradient vs autodiff");
    let h = 1e-5;
    for s in 0..3 {
        let v = random_vec(obj.dim(), 10 + s)?;
        let fd = (obj.loss(&fv::axpy(&w, h, &v)?)? - obj.loss(&fv::axpy(&w, -h, &v)?)?) / (2.0 * h);
        let an = fv::dot(&g, &v)?;
        let err = (fd - an).abs() / an.abs().max(1e-12);
        assert!(err < TOL, "{what}: gradient vs finite differences {err:e}");
    }
    let v = random_vec(obj.dim(), 20)?;
    let hv = obj.curvature(&w, CurvatureKind::Hessian)?.apply(&v)?;
    let (_, gp) = obj.loss_and_grad(&fv::axpy(&w, h, &v)?)?;
    let (_, gm) = obj.loss_and_grad(&fv::axpy(&w, -h, &v)?)?;
    let fd = ((gp - gm)? / (2.0 * h))?;
    let err = rel(&hv, &fd)?;
    assert!(err < TOL, "{what}: HVP vs finite differences {err:e}");
    for kind in [CurvatureKind::Hessian, CurvatureKind::GaussNewton] {
        let ours = obj.curvature(&w, kind)?.apply(&v)?;
        let theirs = auto.curvature(&w, kind)?.apply(&v)?;
        let err = rel(&ours, &theirs)?;
        assert!(
            err < 1e-10,
            "{what} {kind}: R-operator vs double backward {err:e}"
        );
    }
    let ggn = obj.curvature(&w, CurvatureKind::GaussNewton)?;
    let vs: Vec<Tensor> = (0..4)
        .map(|s| random_vec(obj.dim(), 30 + s))
        .collect::<R<_>>()?;
    let gvs: Vec<Tensor> = vs.iter().map(|v| ggn.apply(v)).collect::<Result<_, _>>()?;
    for (i, (vi, gvi)) in vs.iter().zip(&gvs).enumerate() {
        let q = fv::dot(vi, gvi)?;
        assert!(
            q >= -1e-12 * fv::norm(vi)? * fv::norm(gvi)?,
            "{what}: vᵀGv = {q:e} < 0"
        );
        for (vj, gvj) in vs.iter().zip(&gvs).skip(i + 1) {
            let (a, b) = (fv::dot(vj, gvi)?, fv::dot(vi, gvj)?);
            let sym = (a - b).abs() / (fv::norm(vj)? * fv::norm(gvi)?);
            assert!(sym < 1e-12, "{what}: GGN asymmetry {sym:e}");
        }
    }
    Ok(())
}

#[test]
fn mixed_activation_mlps_have_exact_products() -> R<()> {
    for spec in MIXED {
        let model = Model::new(ModelSpec::parse(spec, Activation::Tanh)?, 7, 3)?;
        check_products(&model, classification(13, 7, 3, 1)?, spec)?;
    }
    Ok(())
}

#[test]
fn autoencoder_has_exact_products_with_sigmoid_cross_entropy() -> R<()> {
    let model = Model::new(
        ModelSpec::parse("autoencoder:8,4,2", Activation::Relu)?,
        12,
        10,
    )?;
    assert_eq!(model.natural_loss().name(), "sigmoid-cross-entropy");
    let data = Batches::reconstruction(&pixels(13, 12, 2)?, 5)?;
    check_products(&model, data.clone(), "autoencoder:8,4,2")?;
    // objective_for picks the loss: the same numbers as an explicit one.
    let w = point(&model, 4)?;
    let explicit = MlpObjective::new(model.clone(), data.clone(), vec![])?
        .with_loss(Arc::new(SigmoidCrossEntropy));
    let by_model = objective_for(&model, data, vec![])?;
    assert_eq!(explicit.loss(&w)?, by_model.loss(&w)?);
    Ok(())
}

#[test]
fn autoencoder_shape_and_layers() -> R<()> {
    let spec = ModelSpec::parse("autoencoder:8,4,2", Activation::Tanh)?;
    let model = Model::new(spec, 12, 10)?;
    assert_eq!(model.classes(), 12, "the outputs reconstruct the inputs");
    assert!(model.is_autoencoder());
    let acts: Vec<(usize, Activation)> = model
        .hidden_layers()
        .iter()
        .map(|h| (h.width, h.activation))
        .collect();
    use Activation::{Linear, Logistic};
    assert_eq!(
        acts,
        [
            (8, Logistic),
            (4, Logistic),
            (2, Linear),
            (4, Logistic),
            (8, Logistic)
        ]
    );
    let widths = [12, 8, 4, 2, 4, 8, 12];
    let expect: usize = widths.windows(2).map(|p| p[0] * p[1] + p[1]).sum();
    assert_eq!(model.layout().len(), expect);
    assert_eq!(model.layout().spec("layer5.weight")?.shape, vec![8, 12]);
    // Martens' MNIST autoencoder.
    let big = Model::new(
        ModelSpec::parse("autoencoder:1000,500,250,30", Activation::Tanh)?,
        784,
        10,
    )?;
    let w: Vec<usize> = big.hidden_layers().iter().map(|h| h.width).collect();
    assert_eq!(w, [1000, 500, 250, 30, 250, 500, 1000]);
    assert_eq!(big.classes(), 784);
    Ok(())
}

/// The first layer over compressed rows, whatever its activation, agrees
/// with dense matmuls: here the autoencoder's logistic first layer and a
/// linear one.
#[test]
fn compressed_rows_feed_any_first_layer() -> R<()> {
    let x = pixels(13, 12, 5)?;
    for (spec, data) in [
        ("autoencoder:8,4,2", Batches::reconstruction(&x, 5)?),
        (
            "mlp:5:linear,4:softplus,3:logistic",
            classification(13, 12, 3, 5)?,
        ),
    ] {
        let model = Model::new(ModelSpec::parse(spec, Activation::Tanh)?, 12, 3)?;
        let pen = vec![Penalty::L2 { lam: 0.01 }];
        let dense =
            MlpObjective::with_storage(model.clone(), data.clone(), pen.clone(), XStorage::Float)?;
        let csr = MlpObjective::with_storage(model.clone(), data, pen, XStorage::Csr)?;
        assert_eq!(csr.input_storage(), Some("csr-u8"));
        let w = point(&model, 6)?;
        let v = random_vec(model.layout().len(), 7)?;
        assert!((dense.loss(&w)? - csr.loss(&w)?).abs() < 1e-12 * dense.loss(&w)?);
        assert!(rel(&csr.loss_and_grad(&w)?.1, &dense.loss_and_grad(&w)?.1)? < 1e-12);
        for kind in [CurvatureKind::Hessian, CurvatureKind::GaussNewton] {
            let a = csr.curvature(&w, kind)?.apply(&v)?;
            let b = dense.curvature(&w, kind)?.apply(&v)?;
            assert!(rel(&a, &b)? < 1e-12, "{spec} {kind}");
        }
        let a = csr.per_example_squared_gradients(&w)?;
        let b = dense.per_example_squared_gradients(&w)?;
        assert!(rel(&a, &b)? < 1e-12, "{spec}: squared gradients");
    }
    Ok(())
}

/// A sub-sample of an objective over compressed rows gathers them from the
/// parent's chunks; it must be the objective built afresh on the selected
/// rows, to the bit: unsorted indices, a repeat, rows from every chunk.
#[test]
fn subsamples_gather_compressed_rows_exactly() -> R<()> {
    let x = pixels(13, 12, 15)?;
    let data = Batches::reconstruction(&x, 5)?;
    let model = Model::new(
        ModelSpec::parse("autoencoder:6,3", Activation::Tanh)?,
        12,
        12,
    )?;
    let full = MlpObjective::with_storage(model.clone(), data.clone(), vec![], XStorage::Csr)?;
    let w = point(&model, 16)?;
    let v = random_vec(model.layout().len(), 17)?;
    for indices in [
        vec![12, 0, 7, 3, 7, 11, 5],
        vec![4],
        (0..13).rev().collect(),
    ] {
        let sub = full.subsample(&indices)?;
        let fresh = MlpObjective::with_storage(
            model.clone(),
            data.select(&indices)?,
            vec![],
            XStorage::Csr,
        )?;
        assert_eq!(fresh.input_storage(), Some("csr-u8"));
        let (l1, g1) = sub.loss_and_grad(&w)?;
        let (l2, g2) = fresh.loss_and_grad(&w)?;
        assert_eq!(l1.to_bits(), l2.to_bits(), "{indices:?}: loss");
        assert_eq!(rel(&g1, &g2)?, 0.0, "{indices:?}: gradient");
        let a = sub.curvature(&w, CurvatureKind::GaussNewton)?.apply(&v)?;
        let b = fresh.curvature(&w, CurvatureKind::GaussNewton)?.apply(&v)?;
        assert_eq!(rel(&a, &b)?, 0.0, "{indices:?}: Gauss-Newton product");
    }
    Ok(())
}

/// `(1/n) Σ_i (∇ℓ_i)²` against a loop over one-row objectives, whose
/// gradient is exactly `∇ℓ_i`; penalties are not per case and stay out.
#[test]
fn per_example_squared_gradients_match_a_per_case_loop() -> R<()> {
    let n = 11;
    let cases: Vec<(Model, Batches)> = vec![
        (
            Model::new(ModelSpec::parse(MIXED[0], Activation::Tanh)?, 7, 3)?,
            classification(n, 7, 3, 8)?,
        ),
        (
            Model::new(ModelSpec::parse("autoencoder:6,3", Activation::Tanh)?, 7, 7)?,
            Batches::reconstruction(&pixels(n, 7, 9)?, 4)?,
        ),
    ];
    for (model, data) in cases {
        let obj = MlpObjective::new(model.clone(), data.clone(), vec![Penalty::L2 { lam: 0.1 }])?;
        let w = point(&model, 10)?;
        let squares = obj.per_example_squared_gradients(&w)?;
        let mut reference = w.zeros_like()?;
        for i in 0..n {
            let one = MlpObjective::new(model.clone(), data.select(&[i])?, vec![])?;
            let (_, g) = one.loss_and_grad(&w)?;
            reference = (reference + g.sqr()?)?;
        }
        let reference = reference.affine(1.0 / n as f64, 0.0)?;
        let err = rel(&squares, &reference)?;
        assert!(err < 1e-12, "{}: {err:e}", model.spec());
        // Without penalties it is the preconditioner's diagonal.
        let plain = MlpObjective::new(model.clone(), data, vec![])?;
        assert!(rel(&plain.diag_curvature(&w)?, &squares)? < 1e-14);
    }
    Ok(())
}

/// A plain loop over rows, layers and units, outside candle.
fn reference_reconstruction_error(model: &Model, w: &Tensor, x: &Tensor) -> R<f64> {
    let w = w.to_vec1::<f64>()?;
    let x = x.to_vec2::<f64>()?;
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let layout = model.layout();
    let mut total = 0.0;
    for row in &x {
        let mut a = row.clone();
        for l in 0..model.num_layers() {
            let wl = layout.spec(&format!("layer{l}.weight"))?;
            let bl = layout.spec(&format!("layer{l}.bias"))?;
            let (fan_in, fan_out) = (wl.shape[0], wl.shape[1]);
            let mut z: Vec<f64> = w[bl.range()].to_vec();
            for (j, zj) in z.iter_mut().enumerate() {
                for i in 0..fan_in {
                    *zj += a[i] * w[wl.offset + i * fan_out + j];
                }
            }
            a = match model.hidden_layers().get(l).map(|h| h.activation) {
                Some(Activation::Logistic) | None => z.into_iter().map(sigmoid).collect(),
                Some(Activation::Linear) => z,
                Some(other) => panic!("an autoencoder has no {other} layer"),
            };
        }
        total += a.iter().zip(row).map(|(o, t)| (o - t).powi(2)).sum::<f64>();
    }
    Ok(total / x.len() as f64)
}

#[test]
fn reconstruction_error_is_martens_squared_error() -> R<()> {
    let model = Model::new(
        ModelSpec::parse("autoencoder:6,4,2", Activation::Tanh)?,
        9,
        2,
    )?;
    let x = pixels(13, 9, 11)?;
    let w = point(&model, 12)?;
    let expect = reference_reconstruction_error(&model, &w, &x)?;
    for chunk in [1, 5, 100] {
        let got = model.reconstruction_error(&w, &x, chunk)?;
        assert!(
            (got - expect).abs() < 1e-12 * expect,
            "chunk {chunk}: {got} vs {expect}"
        );
    }
    // Each task refuses the other kind of model.
    let e = model
        .accuracy(&w, &x, &Tensor::zeros(13, DType::U32, &Device::Cpu)?, 5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("autoencoder") && e.contains("reconstruction_error"),
        "{e}"
    );
    let mlp = Model::new(ModelSpec::mlp(&[4], Activation::Tanh), 9, 3)?;
    let wm = mlp.init(Init::Glorot, 0, &Device::Cpu, DType::F64)?;
    let e = mlp
        .reconstruction_error(&wm, &x, 5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("classifier") && e.contains("autoencoder:"),
        "{e}"
    );
    let e = Batches::reconstruction(&x.affine(2.0, 0.0)?, 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[0, 1]"), "{e}");
    Ok(())
}

#[test]
fn sparse_init_gives_each_unit_fifteen_normal_weights() -> R<()> {
    let model = Model::new(
        ModelSpec::parse("mlp:20:logistic,10:tanh", Activation::Tanh)?,
        30,
        3,
    )?;
    let w = model
        .init(Init::Sparse, 5, &Device::Cpu, DType::F64)?
        .to_vec1::<f64>()?;
    assert_eq!(
        w,
        model
            .init(Init::Sparse, 5, &Device::Cpu, DType::F64)?
            .to_vec1::<f64>()?
    );
    assert_ne!(
        w,
        model
            .init(Init::Sparse, 6, &Device::Cpu, DType::F64)?
            .to_vec1::<f64>()?
    );
    for spec in model.layout().params() {
        let block = &w[spec.range()];
        if spec.kind == ParamKind::Bias {
            assert!(block.iter().all(|&b| b == 0.0), "{}", spec.name);
            continue;
        }
        let (fan_in, fan_out) = (spec.shape[0], spec.shape[1]);
        for j in 0..fan_out {
            let nz = (0..fan_in)
                .filter(|&i| block[i * fan_out + j] != 0.0)
                .count();
            assert_eq!(
                nz,
                Init::SPARSE_NONZEROS.min(fan_in),
                "{} unit {j}",
                spec.name
            );
        }
    }
    // Unit-variance draws: 15·(20 + 10) + 10·3 non-zeros in all.
    let nz: Vec<f64> = w.iter().copied().filter(|&x| x != 0.0).collect();
    assert_eq!(nz.len(), 15 * 30 + 10 * 3);
    let var = nz.iter().map(|x| x * x).sum::<f64>() / nz.len() as f64;
    assert!((var - 1.0).abs() < 0.2, "variance {var}");
    assert_eq!("sparse".parse::<Init>()?, Init::Sparse);
    assert_eq!(Init::Sparse.to_string(), "sparse");
    Ok(())
}

/// Glorot and the truncated normal draw from the same ChaCha8 stream in
/// the same order as before per-layer activations and the sparse init:
/// parameters are bit for bit what they were.
#[test]
fn existing_inits_are_unchanged() -> R<()> {
    let model = Model::new(ModelSpec::parse(MIXED[0], Activation::Tanh)?, 7, 3)?;
    let layout = model.layout();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut glorot = vec![0f64; layout.len()];
    for spec in layout
        .params()
        .iter()
        .filter(|p| p.kind == ParamKind::Weight)
    {
        let a = (6.0 / (spec.shape[0] + spec.shape[1]) as f64).sqrt();
        let u = Uniform::new_inclusive(-a, a)?;
        for x in &mut glorot[spec.range()] {
            *x = u.sample(&mut rng);
        }
    }
    let got = model
        .init(Init::Glorot, 9, &Device::Cpu, DType::F64)?
        .to_vec1::<f64>()?;
    assert_eq!(
        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        glorot.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let normal = Normal::new(0.0, 0.1)?;
    let mut trunc = vec![0f64; layout.len()];
    for spec in layout
        .params()
        .iter()
        .filter(|p| p.kind == ParamKind::Weight)
    {
        for x in &mut trunc[spec.range()] {
            *x = loop {
                let v: f64 = normal.sample(&mut rng);
                if v.abs() <= 0.2 {
                    break v;
                }
            };
        }
    }
    let got = model
        .init(
            Init::TruncatedNormal { std: 0.1 },
            9,
            &Device::Cpu,
            DType::F64,
        )?
        .to_vec1::<f64>()?;
    assert_eq!(
        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        trunc.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn spec_strings_keep_the_old_form_and_add_per_layer_ones() -> R<()> {
    use Activation::*;
    // The old strings parse and print exactly as before.
    let old = ModelSpec::parse("mlp:256", Tanh)?;
    assert_eq!(old, ModelSpec::mlp(&[256], Tanh));
    assert_eq!(old.to_string(), "mlp:256 (tanh)");
    let old = ModelSpec::parse("mlp:256,128", Relu)?;
    assert_eq!(old.to_string(), "mlp:256,128 (relu)");
    // Per layer; a layer without a suffix takes the default.
    let mixed = ModelSpec::parse("mlp:256:relu,128", Tanh)?;
    assert_eq!(
        mixed,
        ModelSpec::Mlp {
            hidden: vec![
                Hidden {
                    width: 256,
                    activation: Relu
                },
                Hidden {
                    width: 128,
                    activation: Tanh
                },
            ]
        }
    );
    assert_eq!(mixed.to_string(), "mlp:256:relu,128:tanh");
    assert_eq!(ModelSpec::parse("mlp:256:relu,128:tanh", Softplus)?, mixed);
    // Layers that all agree are the old form, whichever way they are written.
    assert_eq!(
        ModelSpec::parse("mlp:8:logistic,4:logistic", Tanh)?.to_string(),
        "mlp:8,4 (logistic)"
    );
    assert_eq!(
        ModelSpec::parse("autoencoder:1000,500,250,30", Tanh)?.to_string(),
        "autoencoder:1000,500,250,30"
    );
    for a in [Tanh, Relu, Softplus, Logistic, Linear] {
        assert_eq!(a.to_string().parse::<Activation>()?, a);
    }
    assert_eq!("sigmoid".parse::<Activation>()?, Logistic);

    // Every form round-trips through a weights file, and old files' spec
    // strings are what they were.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deep-tests");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    for (i, spec) in ["mlp:5,4 (tanh)", MIXED[0], MIXED[1], "autoencoder:6,3"]
        .into_iter()
        .enumerate()
    {
        let spec = match spec.split_once(" (") {
            Some((s, act)) => ModelSpec::parse(s, act.trim_end_matches(')').parse()?)?,
            None => ModelSpec::parse(spec, Tanh)?,
        };
        let model = Model::new(spec, 7, 3)?;
        let w = point(&model, i as u64)?;
        let path = dir.join(format!("{i}.safetensors"));
        save_weights(&path, &model, &w)?;
        let (back, w2) = load_weights(&path, &Device::Cpu, DType::F64)?;
        assert_eq!(back, model);
        assert_eq!(w2.to_vec1::<f64>()?, w.to_vec1::<f64>()?);
    }

    // An autoencoder's file names its inputs as its classes; another count
    // would load as a model that saves differently.
    let model = Model::new(ModelSpec::parse("autoencoder:6,3", Tanh)?, 7, 3)?;
    let bytes = to_bytes(Path::new("ae"), &model, &point(&model, 0)?)?;
    let (from, to) = (b"\"classes\":\"7\"", b"\"classes\":\"5\"");
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the header names the classes");
    let mut bytes = bytes;
    bytes[at..at + to.len()].copy_from_slice(to);
    let e = from_bytes(&bytes, Path::new("ae"), &Device::Cpu, DType::F64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("classes") && e.contains("7 (the inputs)"), "{e}");

    // Errors name the valid forms.
    for (bad, wants) in [
        ("cnn", vec!["softmax-nobias", "mlp:W1:ACT1", "autoencoder:"]),
        ("mlp:8:gelu", vec!["logistic", "linear", "8:gelu"]),
        ("mlp:0", vec!["positive", "mlp:256:relu,128:tanh"]),
        ("mlp:", vec!["positive"]),
        (
            "autoencoder:8,0",
            vec!["positive", "autoencoder:1000,500,250,30"],
        ),
        ("autoencoder:8:relu", vec!["positive"]),
    ] {
        let e = ModelSpec::parse(bad, Tanh).unwrap_err().to_string();
        for w in wants {
            assert!(e.contains(w), "`{bad}`: `{e}` lacks `{w}`");
        }
    }
    let e = "gelu".parse::<Activation>().unwrap_err().to_string();
    assert!(e.contains("logistic, linear"), "{e}");
    let e = "dense".parse::<Init>().unwrap_err().to_string();
    assert!(e.contains("sparse"), "{e}");
    Ok(())
}

/// Tolerance of a result on `device` in `dtype` against the CPU in f64:
/// reassociated sums in f64, rounding of the inputs and of every layer in
/// f32.
fn device_tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => 2e-4,
    }
}

/// The deep models on `device`, in f64 and f32, against the CPU in f64:
/// loss, gradient, Gauss-Newton and exact Hessian products, the per-case
/// squared gradients (the HF preconditioner) and the reconstruction error.
/// Three models cover the three losses: the autoencoder with sigmoid
/// cross-entropy, a mixed MLP with softmax cross-entropy and one with
/// squared error. 300 rows in chunks of 64, so that sums run over several
/// chunks and a partial one; each result must land on `device`.
fn check_deep_models_on(device: &Device) -> R<()> {
    let n = 300;
    let x = pixels(n, 12, 21)?;
    // `None`: the model's natural loss.
    let cases: Vec<(Model, Batches, Option<hessfree_model::SquaredError>)> = vec![
        (
            Model::new(
                ModelSpec::parse("autoencoder:8,4,2", Activation::Tanh)?,
                12,
                12,
            )?,
            Batches::reconstruction(&x, 64)?,
            None,
        ),
        (
            Model::new(ModelSpec::parse(MIXED[0], Activation::Tanh)?, 12, 3)?,
            classification(n, 12, 3, 22)?,
            None,
        ),
        (
            Model::new(ModelSpec::parse(MIXED[1], Activation::Tanh)?, 12, 3)?,
            classification(n, 12, 3, 23)?,
            Some(hessfree_model::SquaredError),
        ),
    ];
    for (model, data, loss) in cases {
        let spec = model.spec().to_string();
        let build = |data: Batches| -> R<MlpObjective> {
            let obj = MlpObjective::new(model.clone(), data, vec![Penalty::L2 { lam: 1e-3 }])?;
            Ok(match loss {
                Some(l) => obj.with_loss(Arc::new(l)),
                None => obj,
            })
        };
        let reference = build(data.clone())?;
        let w = point(&model, 24)?;
        let v = random_vec(model.layout().len(), 25)?;
        let (l_ref, g_ref) = reference.loss_and_grad(&w)?;
        let gn_ref = reference
            .curvature(&w, CurvatureKind::GaussNewton)?
            .apply(&v)?;
        let h_ref = reference.curvature(&w, CurvatureKind::Hessian)?.apply(&v)?;
        let sq_ref = reference.per_example_squared_gradients(&w)?;
        let recon_ref = model
            .is_autoencoder()
            .then(|| model.reconstruction_error(&w, &x, 64))
            .transpose()?;
        for dtype in [DType::F64, DType::F32] {
            let what = format!("{spec} on {device:?} in {dtype:?}");
            let t = device_tol(dtype);
            let on = |t: &Tensor| -> R<Tensor> { Ok(t.to_dtype(dtype)?.to_device(device)?) };
            let chunks: Vec<(Tensor, Tensor)> = data.chunks().to_vec();
            let xs = Tensor::cat(&chunks.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), 0)?;
            let ys = Tensor::cat(&chunks.iter().map(|c| c.1.clone()).collect::<Vec<_>>(), 0)?;
            let obj = build(Batches::new(&on(&xs)?, &on(&ys)?, 64)?)?;
            let (wd, vd) = (on(&w)?, on(&v)?);
            let back = |r: &Tensor| -> R<Tensor> {
                assert!(
                    r.device().same_device(device),
                    "{what}: result not on the device"
                );
                Ok(r.to_device(&Device::Cpu)?.to_dtype(DType::F64)?)
            };
            let (l, g) = obj.loss_and_grad(&wd)?;
            let e = ((l - l_ref) / l_ref).abs();
            assert!(e < t, "{what}: loss {l} vs {l_ref} ({e:e})");
            let e = rel(&back(&g)?, &g_ref)?;
            assert!(e < t, "{what}: gradient {e:e}");
            let gn = obj.curvature(&wd, CurvatureKind::GaussNewton)?.apply(&vd)?;
            let e = rel(&back(&gn)?, &gn_ref)?;
            assert!(e < t, "{what}: Gauss-Newton product {e:e}");
            let h = obj.curvature(&wd, CurvatureKind::Hessian)?.apply(&vd)?;
            let e = rel(&back(&h)?, &h_ref)?;
            assert!(e < t, "{what}: Hessian product {e:e}");
            let sq = obj.per_example_squared_gradients(&wd)?;
            let e = rel(&back(&sq)?, &sq_ref)?;
            assert!(e < t, "{what}: per-case squared gradients {e:e}");
            if let Some(r_ref) = recon_ref {
                let r = model.reconstruction_error(&wd, &on(&x)?, 64)?;
                let e = ((r - r_ref) / r_ref).abs();
                assert!(e < t, "{what}: reconstruction error {r} vs {r_ref} ({e:e})");
            }
        }
    }
    Ok(())
}

/// On the CPU this checks the f32 path against f64 (and f64 against itself
/// through a rebuilt objective); `gpu/check.sh` runs the CUDA twin below.
#[test]
fn deep_models_on_cpu_match_f64() -> R<()> {
    check_deep_models_on(&Device::Cpu)
}

/// With the `cuda` feature this needs a GPU: a missing device is a failure,
/// not a skip.
#[cfg(feature = "cuda")]
#[test]
fn deep_models_on_cuda_match_cpu() -> R<()> {
    check_deep_models_on(&Device::new_cuda(0)?)
}
