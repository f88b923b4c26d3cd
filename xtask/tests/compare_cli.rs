//! `cargo xtask compare` and `cargo xtask report --check` end to end, on a
//! small synthetic IDX data set written to a temporary directory.

mod common;

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env_remove("HESSFREE_DATA")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the xtask binary runs")
}

#[test]
fn compare_writes_a_complete_report_that_checks_clean() {
    let data = common::dataset();
    let out = data.path().join("report");
    let out_s = out.to_str().unwrap();
    let res = xtask(&[
        "compare",
        "--optimizers",
        "sgd,newton-cg",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--out",
        out_s,
        "--sgd-steps",
        "20",
        "--sgd-eval-every",
        "10",
        "--max-iters",
        "3",
        "--dtype",
        "f32",
        "--reference",
        "sgd=0.9",
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "compare failed: {stderr}");
    assert!(String::from_utf8_lossy(&res.stdout).contains("report.md"));

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["kind"], "compare");
    for key in [
        "host",
        "git_revision",
        "date",
        "command_line",
        "seed",
        "dataset",
        "device",
        "runs",
    ] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    assert!(summary["host"]["cores"].as_u64().unwrap() >= 1);
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        for key in [
            "name",
            "settings",
            "stop_reason",
            "iterations",
            "wall_seconds",
            "final_objective",
            "final_grad_norm",
            "train_accuracy",
            "test_accuracy",
            "grad_evals",
            "hvp_evals",
            "data_passes",
            "peak_memory_bytes",
        ] {
            assert!(run.get(key).is_some(), "run lacks {key}");
        }
        let acc = run["test_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    assert_eq!(runs[0]["iterations"], 20);
    assert_eq!(runs[0]["reference_test_accuracy"], 0.9);
    assert!(
        runs[1]["hvp_evals"].as_u64().unwrap() > 0,
        "newton-cg used HVPs"
    );
    // The classes are separable: Newton-CG fits the training set.
    assert!(runs[1]["train_accuracy"].as_f64().unwrap() > 0.9);

    let csv = std::fs::read_to_string(out.join("trace.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let sgd_rows = rows.iter().filter(|r| r.starts_with("sgd,")).count();
    let newton_rows = rows.iter().filter(|r| r.starts_with("newton-cg,")).count();
    assert_eq!(sgd_rows, 3, "SGD rows at steps 0, 10, 20");
    assert!(
        (2..=4).contains(&newton_rows),
        "{newton_rows} Newton-CG rows"
    );

    for svg in [
        "objective_vs_time.svg",
        "objective_vs_passes.svg",
        "test_accuracy_vs_time.svg",
        "grad_norm_vs_iter.svg",
    ] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
    }
    for png in ["weights_sgd.png", "weights_newton-cg.png"] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() > 28 * 10 && img.height() >= 28);
    }
    // The final parameters load back and evaluate.
    let eval = xtask(&[
        "eval",
        "--weights",
        out.join("weights_newton-cg.safetensors").to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let printed = String::from_utf8_lossy(&eval.stdout);
    let acc = format!("{:.4}", runs[1]["test_accuracy"].as_f64().unwrap());
    assert!(
        printed.contains(&acc),
        "eval printed {printed}, the summary says {acc}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Findings") && md.contains("cargo xtask compare"));

    // The committed-report check regenerates everything identically...
    let check = xtask(&["report", "--check", out_s]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // ...and notices a hand edit.
    std::fs::write(
        out.join("report.md"),
        md.replace("Findings", "Findings (edited)"),
    )
    .unwrap();
    let check = xtask(&["report", "--check", out_s]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("report.md"));
    // Regenerating repairs it.
    assert!(xtask(&["report", out_s]).status.success());
    assert!(xtask(&["report", "--check", out_s]).status.success());
}

#[test]
fn bad_flags_and_missing_data_fail_without_writing() {
    let data = common::dataset();
    let out = data.path().join("never");
    let out_s = out.to_str().unwrap();
    let dir = data.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--optimizers", "sgd,rmsprop"],
            "sgd, adam, newton-cg, hf, trust-region, lbfgs, dense-newton",
        ),
        (vec!["--model", "cnn"], "softmax-nobias"),
        (vec!["--init", "uniform"], "glorot"),
        (vec!["--dtype", "f16"], "f32, f64"),
        (vec!["--curvature", "fisher"], "hessian, ggn"),
        (vec!["--device", "tpu"], "cpu, cuda"),
        (vec!["--hessian-fraction", "1.5"], "(0, 1]"),
        (vec!["--sgd-lr", "-1"], "learning rate"),
        (vec!["--optimizers", "sgd@colour=red"], "init, l2, laplace"),
        (
            vec!["--optimizers", "sgd,newton-cg", "--damping", "-1"],
            "damping must be",
        ),
        (vec!["--max-time", "-5"], "--max-time must be"),
        (vec!["--l2", "-1"], "--l2 must be"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["compare", "--data-dir", dir, "--out", out_s];
        args.extend(&extra);
        let res = xtask(&args);
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
    // --max-iters 0 is refused by the parser itself.
    let res = xtask(&[
        "compare",
        "--max-iters",
        "0",
        "--data-dir",
        dir,
        "--out",
        out_s,
    ]);
    assert!(!res.status.success());
    assert!(!out.exists());

    let empty = tempfile::tempdir().unwrap();
    let res = xtask(&[
        "compare",
        "--data-dir",
        empty.path().to_str().unwrap(),
        "--out",
        out_s,
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(stderr.contains("train-images-idx3-ubyte"), "{stderr}");
    assert!(!out.exists());
}

/// On the CPU, for a given seed, thread count and dtype, two runs give the
/// same trace apart from the wall-time column.
#[test]
fn two_runs_give_identical_traces() {
    let data = common::dataset();
    let run = |name: &str| {
        let out = data.path().join(name);
        let res = xtask(&[
            "compare",
            "--optimizers",
            "sgd@init=normal:0.1,newton-cg,trust-region,lbfgs",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--sgd-steps",
            "30",
            "--sgd-eval-every",
            "10",
            "--sgd-momentum",
            "0.5",
            "--max-iters",
            "4",
            "--seed",
            "7",
        ]);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        common::trace_without_time(&out)
    };
    let a = run("a");
    let b = run("b");
    assert!(a.len() > 10);
    assert_eq!(a, b);
}
