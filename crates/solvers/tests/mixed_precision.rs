//! Mixed precision: an f64 Newton loop with f32 curvature products inside CG
//! ends at the all-f64 solution, because CG's relative tolerance (at least
//! about 1e-4 here) is far above f32 rounding (about 1e-7).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hessfree_model::{
    Batches, CastObjective, CurvatureKind, Model, ModelSpec, Objective, Penalty, objective_for,
};
use hessfree_solvers::{
    HfProblem, NewtonCg, NewtonCgConfig, RunOptions, StopReason, StopRules, run_solver,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

fn objective(dtype: DType) -> R<Arc<dyn Objective>> {
    let (n, d, k) = (600, 30, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut x = vec![0f64; n * d];
    let mut y = vec![0f64; n * k];
    for i in 0..n {
        let c = rng.random_range(0..k);
        y[i * k + c] = 1.0;
        for j in 0..d {
            x[i * d + j] =
                f64::from(rng.random_range(0u8..=255)) / 255.0 * if j % k == c { 1.0 } else { 0.6 };
        }
    }
    let x = Tensor::from_vec(x, (n, d), &Device::Cpu)?.to_dtype(dtype)?;
    let y = Tensor::from_vec(y, (n, k), &Device::Cpu)?.to_dtype(dtype)?;
    let model = Model::new(ModelSpec::Softmax { bias: true }, d, k)?;
    let penalties = vec![Penalty::L2 { lam: 1e-3 }];
    Ok(objective_for(
        &model,
        Batches::new(&x, &y, 200)?,
        penalties,
    )?)
}

fn solve(curvature: Arc<dyn Objective>) -> R<(f64, u64)> {
    let obj = objective(DType::F64)?;
    let w0 = Tensor::zeros(obj.dim(), DType::F64, &Device::Cpu)?;
    let out = run_solver(
        HfProblem::new(obj.clone(), curvature, CurvatureKind::Hessian),
        NewtonCg::new(NewtonCgConfig::default())?,
        w0,
        RunOptions {
            stop: StopRules {
                grad_tol: Some(1e-10),
                max_iters: Some(100),
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    assert_eq!(out.stop, StopReason::GradientTolerance, "{}", out.stop);
    Ok((obj.loss(&out.params)?, out.counts.hvp_evals))
}

#[test]
fn f32_curvature_inside_an_f64_solve_reaches_the_f64_optimum() -> R<()> {
    let (f64_only, _) = solve(objective(DType::F64)?)?;
    let mixed = CastObjective::wrap(objective(DType::F32)?, DType::F64);
    assert_eq!(mixed.dtype(), DType::F64);
    let (f_mixed, hvps) = solve(mixed)?;
    assert!(hvps > 0);
    let rel = (f_mixed - f64_only).abs() / f64_only.abs();
    assert!(
        rel < 1e-10,
        "mixed {f_mixed} vs f64 {f64_only}: relative gap {rel:e}"
    );
    Ok(())
}

#[test]
fn the_cast_operator_takes_and_returns_the_outer_dtype() -> R<()> {
    let exact = objective(DType::F64)?;
    let mixed = CastObjective::wrap(objective(DType::F32)?, DType::F64);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let w: Vec<f64> = (0..exact.dim())
        .map(|_| rng.random_range(-0.1..0.1))
        .collect();
    let v: Vec<f64> = (0..exact.dim())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let w = Tensor::from_vec(w, exact.dim(), &Device::Cpu)?;
    let v = Tensor::from_vec(v, exact.dim(), &Device::Cpu)?;
    let hv_exact = exact.curvature(&w, CurvatureKind::Hessian)?.apply(&v)?;
    let op = mixed.curvature(&w, CurvatureKind::Hessian)?;
    let hv = op.apply(&v)?;
    assert_eq!(hv.dtype(), DType::F64);
    let diff = (&hv - &hv_exact)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f64>()?;
    let norm = hv_exact.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    // f32 rounding, not f64's, and nothing worse.
    assert!(diff / norm < 1e-5, "relative error {:e}", diff / norm);
    assert!(diff / norm > 1e-12, "the products were not computed in f32");
    let (_, g) = mixed.loss_and_grad(&w)?;
    assert_eq!(g.dtype(), DType::F64);
    Ok(())
}
