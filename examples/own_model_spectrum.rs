//! The Hessian spectrum of your own candle-nn model on MNIST: its largest
//! eigenvalues by Lanczos and its trace by Hutchinson's estimator, from
//! Hessian-vector products alone (the Hessian itself is never formed).
//!
//! ```sh
//! cargo run --example own_model_spectrum            # 2000 rows, 30 Lanczos steps
//! cargo run --example own_model_spectrum -- 300 10  # ROWS STEPS
//! ```

use hessfree::prelude::*;

fn model(vb: VarBuilder) -> candle_core::Result<candle_nn::Sequential> {
    Ok(candle_nn::seq()
        .add(candle_nn::linear(784, 32, vb.pp("hidden"))?)
        .add_fn(|x| x.tanh())
        .add(candle_nn::linear(32, 10, vb.pp("out"))?))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("usage: own_model_spectrum [ROWS [STEPS]]: {e}"))?;
    let rows = args.first().copied().unwrap_or(2000);
    let steps = args.get(1).copied().unwrap_or(30);

    let splits = load_dir(&resolve_data_dir(None)?.path, MNIST_CLASSES)?;
    let rows = rows.min(splits.train.len());
    let t = splits
        .train
        .select(&(0..rows).collect::<Vec<_>>())
        .to_tensors(&Device::Cpu, DType::F64)?;
    let data = Batches::new(&t.images, &t.one_hot, Batches::DEFAULT_CHUNK_ROWS)?;
    let varmap = VarMap::new();
    let (objective, w) = AutodiffObjective::from_varmap(&varmap, model, data, vec![])?;

    let hessian = objective.curvature(&w, CurvatureKind::Hessian)?;
    let spectrum = lanczos(hessian.as_ref(), steps, 0, &Device::Cpu, DType::F64)?;
    let top: Vec<String> = spectrum
        .ritz
        .iter()
        .rev()
        .take(5)
        .map(|r| format!("{:.4e}", r.value))
        .collect();
    println!(
        "{} parameters; top Hessian eigenvalues (Lanczos, {steps} steps): {}",
        objective.dim(),
        top.join(", ")
    );
    let trace = hutchinson_trace(hessian.as_ref(), 20, 1, &Device::Cpu, DType::F64)?;
    println!(
        "trace (Hutchinson, {} probes): {:.4e} ± {:.1e}, 95% interval [{:.4e}, {:.4e}]",
        trace.samples, trace.mean, trace.std_err, trace.ci95.0, trace.ci95.1
    );
    // One product per Lanczos step and per probe.
    println!(
        "Hessian-vector products used: {}",
        spectrum.alphas.len() + trace.samples
    );
    Ok(())
}
