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
            "sgd, adam, kfac, newton-cg, hf, trust-region, lbfgs, dense-newton",
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

/// An autoencoder with an Adam learning-rate grid: the grid's points are in
/// their table, the best one is continued to the full budget (its trace
/// goes on from the point's), the report carries reconstruction errors and
/// the reconstruction picture, and `report --check` regenerates it.
#[test]
fn autoencoder_with_a_grid_reports_reconstruction_errors() {
    let data = common::dataset();
    let out = data.path().join("ae");
    let res = xtask(&[
        "compare",
        "--model",
        "autoencoder:16,4",
        "--init",
        "sparse",
        "--curvature",
        "ggn",
        "--optimizers",
        "adam@lr=1e-3|1e-2,hf@curvature_batch=50,kfac@batch=50;stats_batch=20,hf@curvature_batch=50;preconditioner=kfac",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sgd-steps",
        "1000000",
        "--sgd-eval-every",
        "10",
        "--max-iters",
        "2",
        "--grid-time",
        "0.3",
        "--max-time",
        "1",
        "--grad-tol",
        "0",
        "--dtype",
        "f64",
        "--rationale",
        "a small shape for the test",
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "compare failed: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let runs = summary["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(&names[..2], ["adam@lr=1e-3", "adam@lr=1e-2"]);
    assert!(names[2].ends_with("(best of grid)"), "{names:?}");
    assert_eq!(names[3], "hf@curvature_batch=50");
    assert_eq!(runs[4]["settings"]["method"], "kfac");
    assert_eq!(runs[5]["settings"]["kfac_preconditioner"], "mc");
    for r in runs {
        assert!(
            r.get("test_accuracy").is_none(),
            "an autoencoder has no accuracy"
        );
        let train = r["train_error"].as_f64().unwrap();
        let test = r["test_error"].as_f64().unwrap();
        // 784 pixels in [0, 1]: the error per case is at most 784.
        assert!(
            train > 0.0 && train < 784.0 && test > 0.0 && test < 784.0,
            "{r}"
        );
    }
    assert_eq!(runs[0]["grid"], "adam@lr=1e-3|1e-2");
    assert_eq!(runs[2]["best_of"], "adam@lr=1e-3|1e-2");
    // The continued run is the chosen point's run, carried on: its
    // settings are the point's and its trace starts with the point's.
    let best = runs[2]["name"]
        .as_str()
        .unwrap()
        .trim_end_matches(" (best of grid)");
    let point = runs.iter().position(|r| r["name"] == best).unwrap();
    assert_eq!(runs[2]["settings"], runs[point]["settings"]);
    let point_objective = runs[point]["final_objective"].as_f64().unwrap();
    let other = runs[1 - point]["final_objective"].as_f64().unwrap();
    assert!(
        point_objective <= other,
        "the best point has the lowest objective"
    );
    assert!(runs[2]["iterations"].as_u64() > runs[point]["iterations"].as_u64());
    let csv = std::fs::read_to_string(out.join("trace.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",train_error,test_error")
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "## Why this problem\n\na small shape for the test",
        "## Learning-rate grids",
        "is at an edge of the grid",
        "train error",
        "reconstructions.png",
        "train_error_vs_time.svg",
        "test_error_vs_passes.svg",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }
    assert!(!md.contains("test_accuracy_vs_time.svg"));
    assert!(out.join("reconstructions.png").is_file());
    let check = xtask(&["report", "--check", out.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "report --check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn bad_grids_and_losses_are_refused_before_any_work() {
    let data = common::dataset();
    let dir = data.path().to_str().unwrap();
    for (args, expected) in [
        (
            vec!["--optimizers", "adam@lr=1e-3|1e-2"],
            "set one with --max-time",
        ),
        (
            vec![
                "--optimizers",
                "adam@lr=1e-3|1e-2;seed=1|2",
                "--max-time",
                "9",
            ],
            "only one override may list alternatives",
        ),
        (
            vec!["--optimizers", "adam@lr=1e-3|", "--max-time", "9"],
            "two or more non-empty values",
        ),
        (
            vec![
                "--optimizers",
                "adam@lr=1e-3|1e-2",
                "--max-time",
                "9",
                "--grid-time",
                "10",
            ],
            "exceeds the full budget",
        ),
        (vec!["--optimizers", "sgd,sgd"], "names the run `sgd` twice"),
        (
            vec![
                "--model",
                "autoencoder:16,4",
                "--loss",
                "softmax-cross-entropy",
            ],
            "does not fit the output layer",
        ),
        (vec!["--loss", "hinge"], "unknown loss `hinge`"),
        (vec!["--model", "mlp:99999999999"], "bytes available"),
        (
            vec!["--optimizers", "kfac"],
            "K-FAC factors the dense layers of MLPs and autoencoders",
        ),
        (
            vec!["--optimizers", "newton-cg", "--preconditioner", "kfac"],
            "`softmax` is softmax regression",
        ),
        (
            vec!["--preconditioner", "lbfgs"],
            "expected none, diag, kfac or kfac:TARGETS",
        ),
    ] {
        let out = data.path().join("never");
        let mut full = vec!["compare", "--data-dir", dir, "--out", out.to_str().unwrap()];
        full.extend(args.iter().copied());
        let res = xtask(&full);
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote output");
    }
}
