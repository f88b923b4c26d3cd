//! Your own candle-nn model, trained by Newton-CG with Gauss-Newton
//! curvature on MNIST (the bundled copy in `data/mnist`).
//!
//! ```sh
//! cargo run --example own_model_newton_cg            # 10000 rows, 10 iterations
//! cargo run --example own_model_newton_cg -- 500 2   # ROWS ITERATIONS
//! ```
//!
//! The model is any `Module` built from a `VarBuilder`; hessfree lays its
//! variables out as one flat vector, differentiates the loss twice through
//! candle for the curvature products, and writes the solution back into the
//! `VarMap`, where the model uses it as usual.

use hessfree::prelude::*;

fn model(vb: VarBuilder) -> candle_core::Result<candle_nn::Sequential> {
    Ok(candle_nn::seq()
        .add(candle_nn::linear(784, 64, vb.pp("hidden"))?)
        .add_fn(|x| x.tanh())
        .add(candle_nn::linear(64, 10, vb.pp("out"))?))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("usage: own_model_newton_cg [ROWS [ITERATIONS]]: {e}"))?;
    let rows = args.first().copied().unwrap_or(10_000);
    let iters = args.get(1).copied().unwrap_or(10) as u64;

    let splits = load_dir(&resolve_data_dir(None)?.path, MNIST_CLASSES)?;
    let rows = rows.min(splits.train.len());
    let train = splits.train.select(&(0..rows).collect::<Vec<_>>());
    let t = train.to_tensors(&Device::Cpu, DType::F32)?;
    let data = Batches::new(&t.images, &t.one_hot, Batches::DEFAULT_CHUNK_ROWS)?;

    let varmap = VarMap::new();
    let penalties = vec![Penalty::L2 { lam: 1e-4 }];
    let (objective, w0) = AutodiffObjective::from_varmap(&varmap, model, data, penalties)?;
    let objective = Arc::new(objective);
    let problem = HfProblem::full(objective.clone(), CurvatureKind::GaussNewton);
    let options = RunOptions {
        stop: StopRules {
            max_iters: Some(iters),
            ..StopRules::default()
        },
        ..RunOptions::default()
    };
    let solver = NewtonCg::new(NewtonCgConfig::default())?;
    let out = run_solver(problem, solver, w0, options)?;
    for r in &out.trace {
        println!(
            "iter {:>3}  loss {:.6}  |grad| {:.3e}  products {}",
            r.iter, r.objective, r.grad_norm, r.hvp_evals
        );
    }

    // The solution, back in the model's own variables.
    objective.store_into(&out.params, &varmap)?;
    let net = model(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let test = splits.test.to_tensors(&Device::Cpu, DType::F32)?;
    let predicted = net.forward(&test.images)?.argmax(1)?;
    let correct = predicted
        .eq(&test.labels)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    println!(
        "stopped: {}; test accuracy {correct:.4} after training on {rows} rows",
        out.stop
    );
    Ok(())
}
