//! `cargo xtask eval --weights F`: the test accuracy of saved weights.
//!
//! The model is rebuilt from the file's metadata, so the command needs no
//! other flag; the data is the test split of the usual data directory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::Args;
use hessfree_data::{MNIST_CLASSES, find_files, load_split, resolve_data_dir};
use hessfree_model::{load_weights, load_weights_stored};

use crate::DataDirArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A `weights.safetensors` file written by a run (or by
    /// `hessfree_model::save_weights`).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,

    #[command(flatten)]
    pub data: DataDirArgs,

    /// Evaluate in this dtype instead of the one stored in the file.
    #[arg(long, value_name = "f32|f64", value_parser = parse_dtype)]
    pub dtype: Option<DType>,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f64" => Ok(DType::F64),
        other => Err(format!("unsupported dtype `{other}`; expected f32 or f64")),
    }
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let device = Device::Cpu;
    let (model, w) = match args.dtype {
        Some(dtype) => load_weights(&args.weights, &device, dtype)?,
        None => load_weights_stored(&args.weights, &device)?,
    };
    let dtype = w.dtype();

    let dir = resolve_data_dir(args.data.data_dir.as_deref())?;
    // Only the test split is read; `find_files` still insists on all four.
    let test = &load_split(&find_files(&dir.path)?.test, MNIST_CLASSES)?;
    let inputs = test.rows * test.cols;
    if inputs != model.inputs() || usize::from(test.classes) != model.classes() {
        bail!(
            "{}: the weights are for {} inputs and {} classes, but the test set in {} has {}x{} = {inputs} inputs and {} classes",
            args.weights.display(),
            model.inputs(),
            model.classes(),
            dir.path.display(),
            test.rows,
            test.cols,
            test.classes
        );
    }
    let data = test.to_tensors(&device, dtype)?;
    let accuracy = model
        .accuracy(&w, &data.images, &data.labels, 10_000)
        .context("evaluating the model")?;
    let correct = (accuracy * test.len() as f64).round() as usize;
    println!("weights: {}", args.weights.display());
    println!(
        "model: {} ({} inputs, {} classes, {} parameters, {dtype:?})",
        model.spec(),
        model.inputs(),
        model.classes(),
        model.layout().len()
    );
    println!("data: {} (from {})", dir.path.display(), dir.source);
    println!(
        "test accuracy: {accuracy:.4} ({correct}/{} correct)",
        test.len()
    );
    Ok(())
}
