//! K-FAC's Kronecker factors and operators against what they approximate,
//! in f64 on tiny batches:
//! - for a single case, `A ⊗ G` of every layer is exactly the Gauss-Newton
//!   block `Jᵀ H_L J` of the dense matrix (assembled from the R-operator's
//!   products, not from the factors), for each loss; for several cases it
//!   is not, which shows the check can fail;
//! - the empirical factors of a single case are the gradient's outer product;
//! - Monte-Carlo factors converge to the exact expectation like `1/√S`;
//! - the damped inverse undoes the damped operator to about `κ·ε`.

use candle_core::{DType, Device, Tensor};
use faer::{Mat, Side};
use hessfree_model::linop::{assemble_dense, vec as fv};
use hessfree_model::{
    Activation, Batches, CurvatureKind, FisherTargets, Init, KroneckerFactors, LinOp, LossChoice,
    MlpObjective, Model, ModelSpec, Objective,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

/// The three losses, each on a network it fits: `(spec, inputs, outputs, loss)`.
const NETS: [(&str, usize, usize, LossChoice); 3] = [
    (
        "mlp:4:tanh,3:logistic",
        5,
        3,
        LossChoice::SoftmaxCrossEntropy,
    ),
    ("autoencoder:3,2", 5, 5, LossChoice::SigmoidCrossEntropy),
    ("mlp:4:softplus", 5, 2, LossChoice::SquaredError),
];

/// `n` cases of inputs in `[0, 1]`, with targets fit for `loss`: one-hot
/// labels, the inputs themselves (an autoencoder), or real values.
fn batch(n: usize, d: usize, k: usize, loss: LossChoice, seed: u64) -> R<Batches> {
    batch_in_chunks(n, d, k, loss, seed, 3)
}

/// [`batch`] in chunks of `chunk` rows.
fn batch_in_chunks(
    n: usize,
    d: usize,
    k: usize,
    loss: LossChoice,
    seed: u64,
    chunk: usize,
) -> R<Batches> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f64> = (0..n * d).map(|_| rng.random_range(0.0..1.0)).collect();
    let x = Tensor::from_vec(x, (n, d), &Device::Cpu)?;
    let y = match loss {
        LossChoice::SigmoidCrossEntropy => return Ok(Batches::reconstruction(&x, chunk)?),
        LossChoice::SoftmaxCrossEntropy => {
            let mut y = vec![0f64; n * k];
            for i in 0..n {
                y[i * k + rng.random_range(0..k)] = 1.0;
            }
            y
        }
        LossChoice::SquaredError => (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect(),
    };
    Ok(Batches::new(
        &x,
        &Tensor::from_vec(y, (n, k), &Device::Cpu)?,
        3,
    )?)
}

fn objective(spec: &str, d: usize, k: usize, loss: LossChoice, data: Batches) -> R<MlpObjective> {
    let model = Model::new(ModelSpec::parse(spec, Activation::Tanh)?, d, k)?;
    Ok(MlpObjective::new(model, data, vec![])?.with_loss(loss.build()))
}

/// A point away from saturation: Glorot weights and small biases.
fn point(obj: &MlpObjective, seed: u64) -> R<Tensor> {
    let w = obj
        .model()
        .init(Init::Glorot, seed, &Device::Cpu, DType::F64)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let jitter: Vec<f64> = (0..w.elem_count())
        .map(|_| rng.random_range(-0.1..0.1))
        .collect();
    Ok((w + Tensor::from_vec(jitter, obj.dim(), &Device::Cpu)?)?)
}

/// Each layer's `(offset, size)` in the flat parameters: `[W_l; b_l]`.
fn blocks(f: &KroneckerFactors) -> Vec<(usize, usize)> {
    let mut offset = 0;
    f.layers
        .iter()
        .map(|l| {
            let size = l.a.nrows() * l.g.nrows();
            offset += size;
            (offset - size, size)
        })
        .collect()
}

/// `‖X − Y‖_F / ‖Y‖_F` over the square block at `(o, o)` of size `s`.
fn block_error(x: &Mat<f64>, y: &Mat<f64>, (o, s): (usize, usize)) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for i in o..o + s {
        for j in o..o + s {
            num += (x[(i, j)] - y[(i, j)]).powi(2);
            den += y[(i, j)].powi(2);
        }
    }
    (num / den.max(1e-300)).sqrt()
}

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(11)
}

#[test]
fn for_one_case_every_layer_block_is_the_exact_gauss_newton_block() -> R<()> {
    for (spec, d, k, loss) in NETS {
        for (n, exact) in [(1, true), (6, false)] {
            let obj = objective(spec, d, k, loss, batch(n, d, k, loss, 5)?)?;
            let w = point(&obj, 2)?;
            let ggn = assemble_dense(
                obj.curvature(&w, CurvatureKind::GaussNewton)?.as_ref(),
                &Device::Cpu,
                DType::F64,
            )?;
            let f = obj.kronecker_factors(&w, FisherTargets::Exact, &mut rng())?;
            assert_eq!(
                f.dim(),
                obj.dim(),
                "{spec}: the blocks cover every parameter"
            );
            let kfac = assemble_dense(
                &f.operator(&Device::Cpu, DType::F64)?,
                &Device::Cpu,
                DType::F64,
            )?;
            let errors: Vec<f64> = blocks(&f)
                .into_iter()
                .map(|b| block_error(&kfac, &ggn, b))
                .collect();
            if exact {
                for (l, e) in errors.iter().enumerate() {
                    assert!(*e < 1e-12, "{spec}, {loss:?}, layer {l}: off by {e:e}");
                }
            } else {
                // Several cases: A ⊗ G is only an approximation, and a
                // check that could not tell would be worthless.
                let worst = errors.iter().cloned().fold(0.0, f64::max);
                assert!(
                    worst > 1e-3,
                    "{spec}: K-FAC exact for {n} cases? {errors:?}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn empirical_factors_of_one_case_are_the_gradients_outer_product() -> R<()> {
    for (spec, d, k, loss) in NETS {
        let obj = objective(spec, d, k, loss, batch(1, d, k, loss, 8)?)?;
        let w = point(&obj, 4)?;
        let (_, g) = obj.loss_and_grad(&w)?;
        let g = g.to_vec1::<f64>()?;
        let f = obj.kronecker_factors(&w, FisherTargets::Empirical, &mut rng())?;
        let kfac = assemble_dense(
            &f.operator(&Device::Cpu, DType::F64)?,
            &Device::Cpu,
            DType::F64,
        )?;
        let outer = Mat::from_fn(g.len(), g.len(), |i, j| g[i] * g[j]);
        for (l, b) in blocks(&f).into_iter().enumerate() {
            let e = block_error(&kfac, &outer, b);
            assert!(e < 1e-12, "{spec}, layer {l}: off by {e:e}");
        }
    }
    Ok(())
}

/// `‖G_MC − G‖_F / ‖G‖_F` over all layers' `G`; `A` must not depend on the targets.
fn g_error(mc: &KroneckerFactors, exact: &KroneckerFactors) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (m, e) in mc.layers.iter().zip(&exact.layers) {
        assert_eq!(m.a, e.a, "A is the same whatever the targets");
        num += (&m.g - &e.g).squared_norm_l2();
        den += e.g.squared_norm_l2();
    }
    (num / den).sqrt()
}

#[test]
fn monte_carlo_factors_converge_like_one_over_root_samples() -> R<()> {
    for (spec, d, k, loss) in NETS {
        let obj = objective(spec, d, k, loss, batch_in_chunks(64, d, k, loss, 3, 64)?)?;
        let w = point(&obj, 6)?;
        let exact = obj.kronecker_factors(&w, FisherTargets::Exact, &mut rng())?;
        let sizes = [2usize, 8, 32, 128];
        let seeds = 16;
        // Root-mean-square error over independent seeds at each S.
        let rms: Vec<f64> = sizes
            .iter()
            .map(|&samples| -> R<f64> {
                let mut sq = 0.0;
                for seed in 0..seeds {
                    let mut r = ChaCha8Rng::seed_from_u64(100 + seed);
                    let mc =
                        obj.kronecker_factors(&w, FisherTargets::MonteCarlo { samples }, &mut r)?;
                    sq += g_error(&mc, &exact).powi(2);
                }
                Ok((sq / seeds as f64).sqrt())
            })
            .collect::<R<_>>()?;
        // Least squares of log error on log S: a slope of −½ is 1/√S.
        let xs: Vec<f64> = sizes.iter().map(|&s| (s as f64).ln()).collect();
        let ys: Vec<f64> = rms.iter().map(|e| e.ln()).collect();
        let (mx, my) = (xs.iter().sum::<f64>() / 4.0, ys.iter().sum::<f64>() / 4.0);
        let slope = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
        assert!(
            (slope + 0.5).abs() < 0.15,
            "{spec}: error {rms:?} at S = {sizes:?}, slope {slope:.3}, expected −½"
        );
    }
    Ok(())
}

#[test]
fn the_damped_inverse_undoes_the_damped_operator() -> R<()> {
    let (spec, d, k, loss) = NETS[0];
    let obj = objective(spec, d, k, loss, batch(8, d, k, loss, 9)?)?;
    let w = point(&obj, 1)?;
    let f = obj.kronecker_factors(&w, FisherTargets::Exact, &mut rng())?;
    let eig = f.decompose()?;
    let dev = Device::Cpu;
    // Without damping, the decomposition rebuilds the factors themselves.
    let plain = assemble_dense(&f.operator(&dev, DType::F64)?, &dev, DType::F64)?;
    let rebuilt = assemble_dense(&eig.damped(0.0, &dev, DType::F64)?, &dev, DType::F64)?;
    let e = (&rebuilt - &plain).norm_l2() / plain.norm_l2();
    assert!(e < 1e-12, "Q S Qᵀ off by {e:e}");
    for gamma in [1e-6, 1e-3, 1e-1, 10.0] {
        let damped = eig.damped(gamma, &dev, DType::F64)?;
        let inverse = eig.inverse(gamma, &dev, DType::F64)?;
        let ev = assemble_dense(&damped, &dev, DType::F64)?
            .self_adjoint_eigenvalues(Side::Lower)
            .map_err(|e| anyhow::anyhow!("eigenvalues: {e:?}"))?;
        let kappa = ev.last().expect("eigenvalues") / ev[0];
        assert!(
            ev[0] > 0.0,
            "γ = {gamma}: the damped operator is positive definite"
        );
        let mut r = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..3 {
            let v: Vec<f64> = (0..obj.dim()).map(|_| r.random_range(-1.0..1.0)).collect();
            let v = Tensor::from_vec(v, obj.dim(), &dev)?;
            let back = inverse.apply(&damped.apply(&v)?)?;
            let err = fv::norm(&(&back - &v)?)? / fv::norm(&v)?;
            assert!(
                err <= 10.0 * kappa * f64::EPSILON,
                "γ = {gamma}: inverse·damped·v off by {err:e}, κ = {kappa:e}"
            );
        }
    }
    // The π split of the damping: (A + π√γ I) ⊗ (G + √γ/π I), block 0.
    let gamma = 0.25;
    let pi = eig.pis()[0];
    let l0 = &f.layers[0];
    let a = &l0.a + Mat::<f64>::identity(l0.a.nrows(), l0.a.nrows()) * faer::Scale(pi * 0.5);
    let g = &l0.g + Mat::<f64>::identity(l0.g.nrows(), l0.g.nrows()) * faer::Scale(0.5 / pi);
    let direct = hessfree_model::Kronecker::new(vec![(a, g)], &dev, DType::F64)?;
    let size = l0.a.nrows() * l0.g.nrows();
    let v = Tensor::from_vec(
        (0..obj.dim())
            .map(|i| (i as f64 * 0.37).sin())
            .collect::<Vec<_>>(),
        obj.dim(),
        &dev,
    )?;
    let want = direct.apply(&v.narrow(0, 0, size)?)?;
    let got = eig
        .damped(gamma, &dev, DType::F64)?
        .apply(&v)?
        .narrow(0, 0, size)?;
    let e = fv::norm(&(&got - &want)?)? / fv::norm(&want)?;
    assert!(e < 1e-12, "factored damping off by {e:e}");
    Ok(())
}

#[test]
fn factors_blend_as_a_moving_average() -> R<()> {
    let (spec, d, k, loss) = NETS[0];
    let obj = objective(spec, d, k, loss, batch(4, d, k, loss, 2)?)?;
    let f1 = obj.kronecker_factors(&point(&obj, 1)?, FisherTargets::Exact, &mut rng())?;
    let f2 = obj.kronecker_factors(&point(&obj, 2)?, FisherTargets::Exact, &mut rng())?;
    let mut avg = f1.clone();
    avg.blend(&f2, 0.75)?;
    for ((x, y), z) in f1.layers.iter().zip(&f2.layers).zip(&avg.layers) {
        let want = &x.g * faer::Scale(0.75) + &y.g * faer::Scale(0.25);
        assert!((&z.g - &want).norm_l2() <= 1e-15 * want.norm_l2());
    }
    assert!(avg.blend(&f2, 1.5).is_err());
    let other = objective("mlp:3", d, k, loss, batch(4, d, k, loss, 2)?)?;
    let f3 = other.kronecker_factors(&point(&other, 1)?, FisherTargets::Exact, &mut rng())?;
    let e = avg.blend(&f3, 0.5).unwrap_err().to_string();
    assert!(e.contains("two different networks"), "{e}");
    Ok(())
}

/// `(A ⊗ G + γI)⁻¹` as CG's preconditioner at a fixed point: the damped
/// Gauss-Newton system solved with it reaches the same solution as without
/// it, and it is the inverse of `A ⊗ G + γI`. (On networks this small,
/// plain CG already needs few steps and the block-diagonal K-FAC does not
/// reduce them; whether it helps on MNIST is measured in the reports.)
#[test]
fn the_shifted_inverse_preconditions_cg_on_the_gauss_newton_system() -> R<()> {
    use hessfree_model::{CgOptions, Damped, conjugate_gradient};
    use std::sync::Arc;
    for (spec, d, k, loss) in NETS {
        let obj = objective(spec, d, k, loss, batch_in_chunks(64, d, k, loss, 1, 64)?)?;
        let w = point(&obj, 5)?;
        let (_, g) = obj.loss_and_grad(&w)?;
        let lambda = 1e-2;
        let damped = Damped::new(obj.curvature(&w, CurvatureKind::GaussNewton)?, lambda);
        let f = obj.kronecker_factors(&w, FisherTargets::Exact, &mut rng())?;
        let shifted = f
            .decompose()?
            .shifted_inverse(lambda, &Device::Cpu, DType::F64)?;
        // It inverts A ⊗ G + γI.
        let kfac_damped = Damped::new(Arc::new(f.operator(&Device::Cpu, DType::F64)?), lambda);
        let back = shifted.apply(&kfac_damped.apply(&g)?)?;
        let e = fv::norm(&(&back - &g)?)? / fv::norm(&g)?;
        assert!(e < 1e-10, "{spec}: (A ⊗ G + γI)⁻¹ off by {e:e}");
        let opts = CgOptions::plain(1e-10, 2000);
        let plain = conjugate_gradient(&damped, &g, None, None, &opts)?;
        let pre = conjugate_gradient(&damped, &g, None, Some(&shifted), &opts)?;
        let e = fv::norm(&(&pre.x - &plain.x)?)? / fv::norm(&plain.x)?;
        assert!(
            e < 1e-7,
            "{spec}: preconditioned CG's solution off by {e:e}"
        );
    }
    Ok(())
}

/// The optimiser's Cholesky route to the factored inverse is the
/// eigenbasis route's matrix to rounding (`κ·ε`-sized).
#[test]
fn cholesky_and_eigen_factored_inverses_agree() -> R<()> {
    for (spec, d, k, loss) in NETS {
        let obj = objective(spec, d, k, loss, batch(7, d, k, loss, 3)?)?;
        let w = point(&obj, 2)?;
        let f = obj.kronecker_factors(&w, FisherTargets::Exact, &mut rng())?;
        let eig = f.decompose()?;
        for gamma in [1e-3, 1.0] {
            let a = assemble_dense(
                &f.factored_inverse(gamma, &Device::Cpu, DType::F64)?,
                &Device::Cpu,
                DType::F64,
            )?;
            let b = assemble_dense(
                &eig.inverse(gamma, &Device::Cpu, DType::F64)?,
                &Device::Cpu,
                DType::F64,
            )?;
            let tol = 100.0 * eig.condition_number(gamma) * f64::EPSILON;
            let rel = (&a - &b).norm_l2() / b.norm_l2();
            assert!(rel < tol, "{spec}, γ {gamma}: relative {rel:e} > {tol:e}");
        }
    }
    Ok(())
}
