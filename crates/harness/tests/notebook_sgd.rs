//! The notebook's SGD runs on the bundled MNIST: 1000 steps, batch 100,
//! learning rate 0.5, softmax regression without bias or penalty. It
//! reported 0.9123 test accuracy from zero and 0.9146 from a
//! truncated-normal(0.1) start.

use std::sync::Arc;

use candle_core::Device;
use hessfree_data::{MNIST_CLASSES, default_data_dir, load_dir};
use hessfree_harness::{Experiment, Method, ProblemSpec};
use hessfree_solvers::{RunOptions, SgdConfig, StopReason, StopRules};

fn sgd_test_accuracy(init: &str, seed: u64) -> anyhow::Result<f64> {
    let splits = load_dir(&default_data_dir(), MNIST_CLASSES)?;
    let spec = ProblemSpec {
        model: "softmax-nobias".into(),
        l2: 0.0,
        init: init.into(),
        seed,
        dtype: "f32".into(),
        ..Default::default()
    };
    let exp = Arc::new(Experiment::prepare(
        spec,
        &splits.train,
        &splits.test,
        &Device::Cpu,
    )?);
    let method = Method::Sgd(SgdConfig {
        seed,
        ..SgdConfig::default()
    });
    let opts = RunOptions {
        stop: StopRules {
            grad_tol: None,
            max_iters: Some(1000),
            ..Default::default()
        },
        trace_every: 1000,
        ..Default::default()
    };
    let out = exp.run(&method, opts)?;
    assert_eq!(out.stop, StopReason::MaxIterations);
    assert_eq!(out.counts.grad_evals, 1000);
    Ok(exp.test_accuracy(&out.params)?)
}

#[test]
fn sgd_reproduces_the_notebook_from_zero_and_from_truncated_normal() -> anyhow::Result<()> {
    let zero = sgd_test_accuracy("zero", 0)?;
    assert!(zero >= 0.91, "zero init: {zero}");
    let normal = sgd_test_accuracy("normal:0.1", 0)?;
    assert!(
        (0.90..0.94).contains(&normal),
        "truncated-normal init: {normal}"
    );
    Ok(())
}
