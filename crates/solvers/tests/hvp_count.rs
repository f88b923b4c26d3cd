//! Pins the number of curvature products a small deterministic Newton-CG
//! solve takes with the default settings for convex problems, so that a change to the defaults,
//! the forcing sequence, the damping or the CG rules that costs products is
//! caught here (a count, not a timing). The problems are scaled-down
//! versions of the two MNIST problems of the reports: L2-regularised softmax
//! regression, and the notebook's Laplacian penalty without L2.
//!
//! The fused kernel runs its scalar instruction set, which rounds the same on
//! every CPU, so the counts do not depend on the machine. If a change lowers
//! a count, update the pin and say why in the commit.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hessfree_model::fused::{SimdLevel, XStorage};
use hessfree_model::{
    Batches, CurvatureKind, KernelChoice, KernelOptions, Model, ModelSpec, Objective, Penalty,
    SoftmaxObjective,
};
use hessfree_solvers::{
    HfProblem, NewtonCg, NewtonCgConfig, RunOptions, StopReason, StopRules, run_solver,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

const SIDE: usize = 8;
const CLASSES: usize = 10;

/// `n` images of 8x8 pixels, each exactly `k/255` (so the kernel stores
/// them as bytes, as for MNIST), about 70% zeros, with a class-dependent blob.
fn images(n: usize) -> R<(Tensor, Tensor)> {
    let d = SIDE * SIDE;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut x = vec![0f64; n * d];
    let mut y = vec![0f64; n * CLASSES];
    for i in 0..n {
        let c = rng.random_range(0..CLASSES);
        y[i * CLASSES + c] = 1.0;
        for j in 0..d {
            let near = (j % CLASSES == c) || (j / SIDE == c % SIDE);
            let on = rng.random_range(0.0..1.0) < if near { 0.7 } else { 0.2 };
            if on {
                x[i * d + j] = f64::from(rng.random_range(1u8..=255)) * (1.0 / 255.0);
            }
        }
    }
    Ok((
        Tensor::from_vec(x, (n, d), &Device::Cpu)?,
        Tensor::from_vec(y, (n, CLASSES), &Device::Cpu)?,
    ))
}

fn hvps(bias: bool, penalties: Vec<Penalty>, w0_std: f64, grad_tol: f64) -> R<u64> {
    let (x, y) = images(2000)?;
    let model = Model::new(ModelSpec::Softmax { bias }, SIDE * SIDE, CLASSES)?;
    let kernels = KernelOptions {
        kernel: KernelChoice::Fused,
        storage: XStorage::U8,
        simd: Some(SimdLevel::Scalar),
        cuda_blocks: None,
    };
    let obj: Arc<dyn Objective> = Arc::new(SoftmaxObjective::with_options(
        model,
        Batches::new(&x, &y, 500)?,
        penalties,
        &kernels,
    )?);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let w0: Vec<f64> = (0..obj.dim())
        .map(|_| w0_std * rng.random_range(-1.0..1.0))
        .collect();
    let out = run_solver(
        HfProblem::full(obj, CurvatureKind::Hessian),
        NewtonCg::new(NewtonCgConfig::convex())?,
        Tensor::from_vec(w0, obj_dim(bias), &Device::Cpu)?.to_dtype(DType::F64)?,
        RunOptions {
            stop: StopRules {
                grad_tol: Some(grad_tol),
                max_iters: Some(200),
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    assert_eq!(out.stop, StopReason::GradientTolerance, "{}", out.stop);
    Ok(out.counts.hvp_evals)
}

fn obj_dim(bias: bool) -> usize {
    SIDE * SIDE * CLASSES + if bias { CLASSES } else { 0 }
}

#[test]
fn l2_softmax_solve_takes_the_pinned_number_of_products() -> R<()> {
    let count = hvps(true, vec![Penalty::L2 { lam: 1e-4 }], 0.0, 1e-8)?;
    println!("L2: {count} HVPs");
    assert_eq!(count, L2_PINNED, "HVPs of the L2 solve changed");
    Ok(())
}

#[test]
fn laplacian_softmax_solve_takes_the_pinned_number_of_products() -> R<()> {
    let laplace = Penalty::Laplacian {
        eps: 1e-3,
        rows: SIDE,
        cols: SIDE,
    };
    let count = hvps(false, vec![laplace], 0.1, 1e-7)?;
    println!("Laplacian: {count} HVPs");
    assert_eq!(count, LAPLACE_PINNED, "HVPs of the Laplacian solve changed");
    Ok(())
}

// With the earlier initial damping of 1e-2 these were 179 and 147.
const L2_PINNED: u64 = 119;
const LAPLACE_PINNED: u64 = 77;
