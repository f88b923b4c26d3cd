//! Every curvature identity the solvers rely on, checked against finite
//! differences and dense matrices on small problems (f64: 1e-6 relative;
//! f32 against f64: 1e-3 relative).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use faer::Mat;
use hessfree_model::dense::{assemble_softmax_hessian, tensor_to_mat};
use hessfree_model::linop::{assemble_dense, vec as fv};
use hessfree_model::regularizer::{LAPLACE_KERNEL, stencil_columns};
use hessfree_model::{
    Activation, AutodiffObjective, Batches, CurvatureKind, Damped, Init, LinOp, Model, ModelSpec,
    Objective, Penalty, SoftmaxObjective, objective_for,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

const TOL64: f64 = 1e-6;
const TOL32: f64 = 1e-3;

/// Pixel-like data: values in [0,1], with `dead` columns that are zero in every row.
fn data(n: usize, d: usize, k: usize, dead: usize, seed: u64, dtype: DType) -> R<Batches> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = vec![0f64; n * d];
    for i in 0..n {
        for j in dead..d {
            if rng.random_bool(0.6) {
                x[i * d + j] = rng.random_range(0.0..1.0);
            }
        }
    }
    let mut y = vec![0f64; n * k];
    for i in 0..n {
        y[i * k + rng.random_range(0..k)] = 1.0;
    }
    let dev = Device::Cpu;
    let x = Tensor::from_vec(x, (n, d), &dev)?.to_dtype(dtype)?;
    let y = Tensor::from_vec(y, (n, k), &dev)?.to_dtype(dtype)?;
    // Small chunks so every test also exercises the sum over chunks.
    Ok(Batches::new(&x, &y, 7)?)
}

fn random_vec(dim: usize, scale: f64, seed: u64, dtype: DType) -> R<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..dim).map(|_| rng.random_range(-scale..scale)).collect();
    Ok(Tensor::from_vec(v, dim, &Device::Cpu)?.to_dtype(dtype)?)
}

fn rel(a: &Tensor, b: &Tensor) -> R<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    Ok(fv::norm(&(&a - &b)?)? / fv::norm(&b)?.max(1e-300))
}

fn mat_vec(m: &Mat<f64>, v: &Tensor) -> R<Tensor> {
    let v = v.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let out: Vec<f64> = (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|j| m[(i, j)] * v[j]).sum())
        .collect();
    Ok(Tensor::from_vec(out, m.nrows(), &Device::Cpu)?)
}

/// Central differences of the gradient along v: (g(w+hv) − g(w−hv)) / 2h.
fn fd_hvp(obj: &dyn Objective, w: &Tensor, v: &Tensor) -> R<Tensor> {
    let h = 1e-5;
    let (_, gp) = obj.loss_and_grad(&fv::axpy(w, h, v)?)?;
    let (_, gm) = obj.loss_and_grad(&fv::axpy(w, -h, v)?)?;
    Ok(((gp - gm)? / (2.0 * h))?)
}

/// Gradient checked against central differences of the loss along random directions.
fn check_gradient(obj: &dyn Objective, w: &Tensor, seed: u64) -> R<()> {
    let (_, g) = obj.loss_and_grad(w)?;
    for s in 0..3 {
        let v = random_vec(obj.dim(), 1.0, seed + s, DType::F64)?;
        let h = 1e-5;
        let fd = (obj.loss(&fv::axpy(w, h, &v)?)? - obj.loss(&fv::axpy(w, -h, &v)?)?) / (2.0 * h);
        let an = fv::dot(&g, &v)?;
        let err = (fd - an).abs() / an.abs().max(1e-12);
        assert!(
            err < TOL64,
            "gradient vs finite differences: {err:e} (fd {fd}, analytic {an})"
        );
    }
    Ok(())
}

fn check_hvp(obj: &dyn Objective, w: &Tensor, kind: CurvatureKind, seed: u64) -> R<Arc<dyn LinOp>> {
    let op = obj.curvature(w, kind)?;
    let v = random_vec(obj.dim(), 1.0, seed, DType::F64)?;
    let u = random_vec(obj.dim(), 1.0, seed + 100, DType::F64)?;
    let hv = op.apply(&v)?;
    let hu = op.apply(&u)?;
    let sym = (fv::dot(&u, &hv)? - fv::dot(&v, &hu)?).abs() / (fv::norm(&u)? * fv::norm(&hv)?);
    assert!(sym < 1e-10, "symmetry u·Hv vs v·Hu: {sym:e}");
    if kind == CurvatureKind::Hessian {
        let err = rel(&hv, &fd_hvp(obj, w, &v)?)?;
        assert!(
            err < TOL64,
            "HVP vs finite differences of the gradient: {err:e}"
        );
    }
    Ok(op)
}

fn softmax(n: usize, bias: bool, penalties: Vec<Penalty>, dtype: DType) -> R<SoftmaxObjective> {
    let model = Model::new(ModelSpec::Softmax { bias }, 16, 4)?;
    Ok(SoftmaxObjective::new(
        model,
        data(n, 16, 4, 3, 1, dtype)?,
        penalties,
    )?)
}

fn laplace16() -> Penalty {
    Penalty::Laplacian {
        eps: 0.3,
        rows: 4,
        cols: 4,
    }
}

#[test]
fn softmax_gradient_hvp_and_dense_agree() -> R<()> {
    for (bias, penalties) in [
        (true, vec![]),
        (false, vec![]),
        (true, vec![Penalty::L2 { lam: 0.01 }]),
        (false, vec![laplace16()]),
        (true, vec![Penalty::L2 { lam: 0.01 }, laplace16()]),
    ] {
        let obj = softmax(23, bias, penalties.clone(), DType::F64)?;
        let w = obj.model().init(
            Init::TruncatedNormal { std: 0.5 },
            3,
            &Device::Cpu,
            DType::F64,
        )?;
        check_gradient(&obj, &w, 10)?;
        let op = check_hvp(&obj, &w, CurvatureKind::Hessian, 20)?;
        let dense = assemble_softmax_hessian(&obj, &w)?;
        let by_units = assemble_dense(op.as_ref(), &Device::Cpu, DType::F64)?;
        let diff = (&dense - &by_units).norm_l2() / dense.norm_l2();
        assert!(
            diff < TOL64,
            "closed-form dense vs unit-vector assembly ({penalties:?}, bias {bias}): {diff:e}"
        );
        let v = random_vec(obj.dim(), 1.0, 5, DType::F64)?;
        let err = rel(&op.apply(&v)?, &mat_vec(&dense, &v)?)?;
        assert!(err < TOL64, "HVP vs dense H v: {err:e}");
        // Softmax regression is linear in w, so the GGN is the Hessian.
        let ggn = obj.ggn_vp(&w, &v)?;
        assert!(rel(&ggn, &op.apply(&v)?)? < 1e-12);
        // The preconditioner diagonal is the dense matrix's diagonal.
        let diag = obj.diag_curvature(&w)?.to_vec1::<f64>()?;
        for (i, d) in diag.iter().enumerate() {
            assert!(
                (d - dense[(i, i)]).abs() <= 1e-9 * (1.0 + dense[(i, i)].abs()),
                "diag[{i}]"
            );
        }
    }
    Ok(())
}

#[test]
fn f32_products_match_f64() -> R<()> {
    let o64 = softmax(
        40,
        true,
        vec![Penalty::L2 { lam: 0.01 }, laplace16()],
        DType::F64,
    )?;
    let o32 = softmax(
        40,
        true,
        vec![Penalty::L2 { lam: 0.01 }, laplace16()],
        DType::F32,
    )?;
    let w = o64
        .model()
        .init(Init::Glorot, 1, &Device::Cpu, DType::F64)?;
    let v = random_vec(o64.dim(), 1.0, 2, DType::F64)?;
    let (l64, g64) = o64.loss_and_grad(&w)?;
    let (l32, g32) = o32.loss_and_grad(&w.to_dtype(DType::F32)?)?;
    assert!((l64 - l32).abs() / l64 < TOL32);
    assert!(rel(&g32, &g64)? < TOL32);
    let h64 = o64.hvp(&w, &v)?;
    let h32 = o32.hvp(&w.to_dtype(DType::F32)?, &v.to_dtype(DType::F32)?)?;
    assert!(rel(&h32, &h64)? < TOL32);

    let m = Model::new(ModelSpec::mlp(&[5], Activation::Tanh), 16, 4)?;
    let m64 = objective_for(&m, data(30, 16, 4, 2, 4, DType::F64)?, vec![])?;
    let m32 = objective_for(&m, data(30, 16, 4, 2, 4, DType::F32)?, vec![])?;
    let w = m.init(Init::Glorot, 2, &Device::Cpu, DType::F64)?;
    let v = random_vec(m64.dim(), 1.0, 3, DType::F64)?;
    for kind in [CurvatureKind::Hessian, CurvatureKind::GaussNewton] {
        let a = m64.curvature(&w, kind)?.apply(&v)?;
        let b = m32
            .curvature(&w.to_dtype(DType::F32)?, kind)?
            .apply(&v.to_dtype(DType::F32)?)?;
        assert!(rel(&b, &a)? < TOL32, "{kind}");
    }
    Ok(())
}

/// The notebook's "rank ≈ 9n": at W = 0 every sample has the same softmax
/// curvature A = (I − 11ᵀ/k)/k, so H = A ⊗ XᵀX/n and rank H = (k−1)·rank X.
#[test]
fn rank_at_zero_is_nine_times_rank_of_x() -> R<()> {
    for n in [1usize, 5, 10] {
        let model = Model::new(ModelSpec::Softmax { bias: false }, 30, 10)?;
        let batch = data(n, 30, 10, 4, 7 + n as u64, DType::F64)?;
        let x = tensor_to_mat(&Tensor::cat(
            &batch
                .chunks()
                .iter()
                .map(|c| c.0.clone())
                .collect::<Vec<_>>(),
            0,
        )?)?;
        let obj = SoftmaxObjective::new(model.clone(), batch, vec![])?;
        let w = model.init(Init::Zeros, 0, &Device::Cpu, DType::F64)?;
        let h = assemble_softmax_hessian(&obj, &w)?;
        let rank_h = numerical_rank(&h);
        let gram = x.transpose() * &x;
        let rank_x = numerical_rank(&gram);
        assert_eq!(rank_x, n, "random rows are independent");
        assert_eq!(rank_h, 9 * rank_x, "n = {n}");
    }
    Ok(())
}

fn numerical_rank(m: &Mat<f64>) -> usize {
    let eig = m
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .expect("symmetric eigenvalues");
    let max = eig.iter().fold(0f64, |a, &b| a.max(b.abs()));
    let tol = max * m.nrows() as f64 * f64::EPSILON * 10.0;
    eig.iter().filter(|&&e| e.abs() > tol).count()
}

/// The Laplacian penalty's Hessian is 2·eps·LᵀL with L the 3x3 stencil matrix.
#[test]
fn laplacian_hvp_is_dense_two_eps_lt_l() -> R<()> {
    let (rows, cols, eps) = (5usize, 6usize, 0.7);
    let d = rows * cols;
    // Explicit stencil matrix with zero padding.
    let mut l = Mat::<f64>::zeros(d, d);
    for r in 0..rows {
        for c in 0..cols {
            for (a, krow) in LAPLACE_KERNEL.iter().enumerate() {
                for (b, &k) in krow.iter().enumerate() {
                    let (rr, cc) = (r as i64 + a as i64 - 1, c as i64 + b as i64 - 1);
                    if rr >= 0 && cc >= 0 && (rr as usize) < rows && (cc as usize) < cols {
                        l[(r * cols + c, rr as usize * cols + cc as usize)] += k;
                    }
                }
            }
        }
    }
    let q = (l.transpose() * &l) * faer::Scale(2.0 * eps);
    let model = Model::new(ModelSpec::Softmax { bias: true }, d, 3)?;
    let reg = hessfree_model::Regularizer::new(
        vec![Penalty::Laplacian { eps, rows, cols }],
        model.layout(),
        &Device::Cpu,
        DType::F64,
    )?;
    let v = random_vec(model.layout().len(), 1.0, 9, DType::F64)?;
    let qv = reg.apply_q(&v)?.to_vec1::<f64>()?;
    let vw = model.layout().view(&v, "layer0.weight")?;
    let vw = tensor_to_mat(&vw)?;
    let expected = &q * &vw; // each class column is one image
    for j in 0..d {
        for c in 0..3 {
            let got = qv[j * 3 + c];
            assert!((got - expected[(j, c)]).abs() < 1e-10 * (1.0 + expected[(j, c)].abs()));
        }
    }
    for c in 0..3 {
        assert_eq!(qv[d * 3 + c], 0.0, "biases are not penalised");
    }
    // The stencil itself matches L.
    let once = tensor_to_mat(&stencil_columns(
        &model.layout().view(&v, "layer0.weight")?,
        rows,
        cols,
        &LAPLACE_KERNEL,
    )?)?;
    assert!((&once - &(&l * &vw)).norm_l2() < 1e-12);
    // Value = eps·Σ||L w_k||² = ½ wᵀQw.
    let (val, _) = reg.value_and_grad(&v)?;
    let lw = &l * &vw;
    let expect_val = eps * lw.squared_norm_l2();
    assert!((val - expect_val).abs() < 1e-10 * expect_val);
    Ok(())
}

fn mlp(
    activation: Activation,
    penalties: Vec<Penalty>,
) -> R<(Model, Arc<dyn Objective>, AutodiffObjective)> {
    let model = Model::new(ModelSpec::mlp(&[6, 5], activation), 16, 4)?;
    let batch = data(19, 16, 4, 2, 11, DType::F64)?;
    let obj = objective_for(&model, batch.clone(), penalties.clone())?;
    let m2 = model.clone();
    let auto = AutodiffObjective::new(
        model.layout().clone(),
        Arc::new(move |w: &Tensor, x: &Tensor| {
            m2.logits(w, x)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        }),
        batch,
        penalties,
    )?;
    Ok((model, obj, auto))
}

#[test]
fn mlp_r_operator_matches_finite_differences_and_double_backward() -> R<()> {
    for activation in [Activation::Tanh, Activation::Softplus, Activation::Relu] {
        let (model, obj, auto) = mlp(activation, vec![Penalty::L2 { lam: 0.05 }])?;
        let w = model.init(Init::Glorot, 5, &Device::Cpu, DType::F64)?;
        check_gradient(obj.as_ref(), &w, 30)?;
        let (_, g) = obj.loss_and_grad(&w)?;
        let (_, g_auto) = auto.loss_and_grad(&w)?;
        assert!(rel(&g_auto, &g)? < 1e-12);
        if activation != Activation::Relu {
            // FD across ReLU kinks is not meaningful; the autodiff check below covers it.
            check_hvp(obj.as_ref(), &w, CurvatureKind::Hessian, 40)?;
        }
        for kind in [CurvatureKind::Hessian, CurvatureKind::GaussNewton] {
            let v = random_vec(obj.dim(), 1.0, 50, DType::F64)?;
            let r_op = obj.curvature(&w, kind)?.apply(&v)?;
            let double = auto.curvature(&w, kind)?.apply(&v)?;
            let err = rel(&double, &r_op)?;
            assert!(
                err < TOL64,
                "{activation} {kind}: R-operator vs double backward {err:e}"
            );
        }
        check_hvp(obj.as_ref(), &w, CurvatureKind::GaussNewton, 60)?;
    }
    Ok(())
}

/// GGN against the explicit Jᵀ H_L J, with J from central differences of the logits.
#[test]
fn mlp_ggn_matches_dense_jt_hl_j() -> R<()> {
    let (model, obj, _) = mlp(Activation::Tanh, vec![])?;
    let w = model.init(Init::Glorot, 8, &Device::Cpu, DType::F64)?;
    let batch = data(19, 16, 4, 2, 11, DType::F64)?;
    let x = Tensor::cat(
        &batch
            .chunks()
            .iter()
            .map(|c| c.0.clone())
            .collect::<Vec<_>>(),
        0,
    )?;
    let (n, k, dim) = (19usize, 4usize, obj.dim());
    let h = 1e-6;
    let mut jac = Mat::<f64>::zeros(n * k, dim);
    let mut e = vec![0f64; dim];
    for j in 0..dim {
        e[j] = h;
        let ej = Tensor::from_slice(&e, dim, &Device::Cpu)?;
        let zp = model
            .logits(&(&w + &ej)?, &x)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let zm = model
            .logits(&(&w - &ej)?, &x)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        for i in 0..n * k {
            jac[(i, j)] = (zp[i] - zm[i]) / (2.0 * h);
        }
        e[j] = 0.0;
    }
    let p = candle_nn::ops::softmax_last_dim(&model.logits(&w, &x)?)?.to_vec2::<f64>()?;
    let mut hl = Mat::<f64>::zeros(n * k, n * k);
    for i in 0..n {
        for a in 0..k {
            for b in 0..k {
                let delta = if a == b { p[i][a] } else { 0.0 };
                hl[(i * k + a, i * k + b)] = (delta - p[i][a] * p[i][b]) / n as f64;
            }
        }
    }
    let ggn = jac.transpose() * &hl * &jac;
    let dense_op = assemble_dense(
        obj.curvature(&w, CurvatureKind::GaussNewton)?.as_ref(),
        &Device::Cpu,
        DType::F64,
    )?;
    let err = (&ggn - &dense_op).norm_l2() / ggn.norm_l2();
    assert!(err < TOL64, "GGN vs dense Jᵀ H_L J: {err:e}");
    // The GGN is positive semi-definite; the exact Hessian of an MLP need not be.
    let eig = dense_op
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(
        eig.iter()
            .all(|&l| l > -1e-10 * eig.last().copied().unwrap_or(1.0))
    );
    Ok(())
}

#[test]
fn subsampled_and_damped_operators() -> R<()> {
    let obj = softmax(30, true, vec![Penalty::L2 { lam: 0.1 }], DType::F64)?;
    let w = obj
        .model()
        .init(Init::Glorot, 2, &Device::Cpu, DType::F64)?;
    let idx = [0usize, 3, 8, 9, 17, 29];
    let sub = obj.subsample(&idx)?;
    assert_eq!(sub.num_samples(), 6);
    let v = random_vec(obj.dim(), 1.0, 4, DType::F64)?;
    // Build the same six rows directly.
    let full = data(30, 16, 4, 3, 1, DType::F64)?;
    let direct = SoftmaxObjective::new(
        obj.model().clone(),
        full.select(&idx)?,
        vec![Penalty::L2 { lam: 0.1 }],
    )?;
    assert!(rel(&sub.hvp(&w, &v)?, &direct.hvp(&w, &v)?)? < 1e-12);
    assert!(obj.subsample(&[30]).is_err(), "out-of-range index");

    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let damped = Damped::new(op.clone(), 0.25);
    let expect = fv::axpy(&op.apply(&v)?, 0.25, &v)?;
    assert!(rel(&damped.apply(&v)?, &expect)? < 1e-12);
    assert_eq!(damped.samples_per_apply(), 30);
    Ok(())
}

#[test]
fn data_set_operator_does_not_depend_on_chunking() -> R<()> {
    let b = data(50, 16, 4, 1, 3, DType::F64)?;
    let x = Tensor::cat(
        &b.chunks().iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        0,
    )?;
    let y = Tensor::cat(
        &b.chunks().iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        0,
    )?;
    let m = Model::new(ModelSpec::mlp(&[8], Activation::Tanh), 16, 4)?;
    let one = objective_for(&m, Batches::new(&x, &y, 50)?, vec![])?;
    let many = objective_for(&m, Batches::new(&x, &y, 6)?, vec![])?;
    let w = m.init(Init::Glorot, 1, &Device::Cpu, DType::F64)?;
    let v = random_vec(one.dim(), 1.0, 2, DType::F64)?;
    assert!(rel(&many.hvp(&w, &v)?, &one.hvp(&w, &v)?)? < 1e-12);
    assert!((many.loss(&w)? - one.loss(&w)?).abs() < 1e-12);
    Ok(())
}

#[test]
fn accuracy_counts_argmax_hits() -> R<()> {
    let m = Model::new(ModelSpec::Softmax { bias: false }, 2, 2)?;
    // W = I: predicts the larger coordinate.
    let w = Tensor::new(&[1f64, 0., 0., 1.], &Device::Cpu)?;
    let x = Tensor::new(&[[1f64, 0.], [0., 1.], [2., 1.], [0., 3.]], &Device::Cpu)?;
    let labels = Tensor::new(&[0u32, 1, 1, 1], &Device::Cpu)?;
    assert_eq!(m.accuracy(&w, &x, &labels, 3)?, 0.75);
    Ok(())
}
