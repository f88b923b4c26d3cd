//! K-FAC against the exact Gauss-Newton matrix on an MLP small enough to
//! assemble: the eigenvalues of both, how far apart they are (relative
//! Frobenius error, split into what dropping the cross-layer blocks costs
//! and what the Kronecker factorisation of each block costs), and what
//! K-FAC is worth as CG's preconditioner (the condition number it leaves).
//!
//! Every matrix is assembled from the operator the solvers use: the GGN
//! from `Objective::dense_curvature`, K-FAC from
//! `KroneckerFactors::operator` (a `LinOp`) by `assemble_dense`.

use std::time::Instant;

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use hessfree_analysis::{
    SpdPreconditioner, block_diagonal, damped_condition_dense, descending_eigenvalues,
    jacobi_condition, relative_frobenius,
};
use hessfree_data::{Dataset, MNIST_CLASSES};
use hessfree_model::linop::assemble_dense;
use hessfree_model::{
    Activation, Batches, CurvatureKind, FisherTargets, Init, Model, ModelSpec, Objective,
    objective_for,
};

use super::schema::{Approximation, KfacPoint, KfacStudy, PreconditionedRow};
use super::{Plan, optimum_mlp, tensors};

/// How many eigenvalues the record keeps per matrix: every one of the
/// first 50 by rank, then log-spaced ranks to the last (the figure's x
/// axis is logarithmic; the full lists would be most of `summary.json`).
const KEPT_RANKS: usize = 200;

/// The study at Glorot initialisation and after SGD.
pub(super) fn kfac_study(train: &Dataset, test: &Dataset, plan: &Plan) -> Result<KfacStudy> {
    let start = Instant::now();
    let model = Model::new(
        ModelSpec::mlp(&plan.kfac_hidden, Activation::Tanh),
        784,
        MNIST_CLASSES as usize,
    )?;
    let (x, y) = tensors(train, plan.kfac_samples, DType::F64)?;
    let obj = objective_for(
        &model,
        Batches::new(&x, &y, Batches::DEFAULT_CHUNK_ROWS)?,
        vec![],
    )?;
    let blocks = layer_sizes(&model);
    let w_init = model.init(Init::Glorot, plan.rank.seed, &Device::Cpu, DType::F64)?;
    let (w_sgd, trained) = optimum_mlp(train, test, &model, plan)?;
    let mut points = Vec::new();
    for (key, point, w, training) in [
        ("init", "Glorot initialisation".to_string(), w_init, None),
        (
            "sgd",
            "the weights SGD reached".to_string(),
            w_sgd.to_dtype(DType::F64)?,
            Some(trained),
        ),
    ] {
        tracing::info!(point = key, "K-FAC against the Gauss-Newton matrix");
        let mut p = kfac_point(obj.as_ref(), &w, &blocks, plan)?;
        p.key = key.into();
        p.point = point;
        p.training = training;
        p.figure = format!("kfac_eigenvalues_{key}.svg");
        points.push(p);
    }
    Ok(KfacStudy {
        model: format!(
            "MLP 784-{}-10 tanh",
            plan.kfac_hidden
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join("-")
        ),
        samples: x.dim(0)?,
        dim: obj.dim(),
        blocks,
        dampings: plan.kfac_dampings.clone(),
        points,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Parameters per layer (weights and bias), input side first: the blocks
/// K-FAC keeps.
fn layer_sizes(model: &Model) -> Vec<usize> {
    let params = model.layout().params();
    params
        .chunks(2)
        .map(|wb| wb.iter().map(|p| p.len()).sum())
        .collect()
}

fn kfac_point(obj: &dyn Objective, w: &Tensor, blocks: &[usize], plan: &Plan) -> Result<KfacPoint> {
    let (dev, dt) = (Device::Cpu, DType::F64);
    let ggn = obj.dense_curvature(w, CurvatureKind::GaussNewton)?;
    let ggn_values = descending_eigenvalues(ggn.as_ref())?;
    let block = block_diagonal(ggn.as_ref(), blocks)?;
    let mut rng = ChaCha8Rng::seed_from_u64(plan.rank.seed ^ 0x4FAC);
    let exact = obj.kronecker_factors(w, FisherTargets::Exact, &mut rng)?;
    let factored: Vec<usize> = exact
        .layers
        .iter()
        .map(|l| l.a.nrows() * l.g.nrows())
        .collect();
    ensure!(
        factored == blocks,
        "K-FAC's blocks {factored:?} are not the layers' parameter counts {blocks:?}"
    );
    let kfac = assemble_dense(&exact.operator(&dev, dt)?, &dev, dt)?;
    let mc = obj.kronecker_factors(w, FisherTargets::MonteCarlo { samples: 1 }, &mut rng)?;
    let kfac_mc = assemble_dense(&mc.operator(&dev, dt)?, &dev, dt)?;

    let mut approximations = vec![Approximation {
        name: "block-diagonal GGN (cross-layer blocks dropped)".into(),
        relative_frobenius: relative_frobenius(block.as_ref(), ggn.as_ref())?,
        vs_block_diagonal: None,
        eigenvalues: kept(&descending_eigenvalues(block.as_ref())?),
    }];
    for (name, m) in [
        ("K-FAC, exact expectation over targets", &kfac),
        ("K-FAC, Monte-Carlo (1 target per case)", &kfac_mc),
    ] {
        approximations.push(Approximation {
            name: name.into(),
            relative_frobenius: relative_frobenius(m.as_ref(), ggn.as_ref())?,
            vs_block_diagonal: Some(relative_frobenius(m.as_ref(), block.as_ref())?),
            eigenvalues: kept(&descending_eigenvalues(m.as_ref())?),
        });
    }
    // The preconditioner hessfree's `--preconditioner kfac[:TARGETS]`
    // applies, (A ⊗ G + γI)⁻¹, from each kind of factors.
    let (by_kfac, by_mc) = (
        SpdPreconditioner::new(kfac.as_ref())?,
        SpdPreconditioner::new(kfac_mc.as_ref())?,
    );
    let mut preconditioned = Vec::new();
    for &gamma in &plan.kfac_dampings {
        preconditioned.push(PreconditionedRow {
            damping: gamma,
            none: damped_condition_dense(&ggn_values, gamma)?,
            jacobi: jacobi_condition(ggn.as_ref(), gamma)?,
            kfac: by_kfac.condition_of(ggn.as_ref(), gamma)?,
            kfac_mc: by_mc.condition_of(ggn.as_ref(), gamma)?,
        });
    }
    Ok(KfacPoint {
        key: String::new(),
        point: String::new(),
        training: None,
        figure: String::new(),
        ggn_largest: ggn_values[0],
        ggn_trace: (0..ggn.nrows()).map(|i| ggn[(i, i)]).sum(),
        ggn_eigenvalues: kept(&ggn_values),
        approximations,
        preconditioned,
    })
}

/// `(rank, eigenvalue)` at the ranks [`KEPT_RANKS`] describes, 1-based.
fn kept(values: &[f64]) -> Vec<(usize, f64)> {
    let n = values.len();
    let mut ranks: Vec<usize> = (1..=n.min(50)).collect();
    if n > 50 {
        let steps = KEPT_RANKS - 50;
        let ratio = (n as f64 / 50.0).powf(1.0 / steps as f64);
        for s in 1..=steps {
            let r = (50.0 * ratio.powi(s as i32)).round() as usize;
            if r > *ranks.last().unwrap_or(&0) {
                ranks.push(r.min(n));
            }
        }
        if ranks.last() != Some(&n) {
            ranks.push(n);
        }
    }
    ranks.into_iter().map(|r| (r, values[r - 1])).collect()
}

#[cfg(test)]
mod tests {
    use super::kept;

    #[test]
    fn kept_ranks_start_dense_and_end_at_the_last() {
        let values: Vec<f64> = (0..3210).map(|i| 1.0 / (i + 1) as f64).collect();
        let k = kept(&values);
        assert!(k.len() <= 201, "{}", k.len());
        assert_eq!(&k[..3], &[(1, 1.0), (2, 0.5), (3, 1.0 / 3.0)]);
        assert_eq!(k.last().map(|p| p.0), Some(3210));
        assert!(k.windows(2).all(|p| p[0].0 < p[1].0));
        assert_eq!(kept(&values[..7]).len(), 7);
    }
}
