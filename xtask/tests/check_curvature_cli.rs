//! `cargo xtask check-curvature` end to end, through the built binary: the
//! quick mode needs no data files, passes, prints the whole table, and works
//! without `CANDLE_GRAD_DO_NOT_DETACH` in the environment (the binary sets it).

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env_remove("CANDLE_GRAD_DO_NOT_DETACH")
        .env_remove("HESSFREE_DATA")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the xtask binary runs")
}

/// The table's data rows: `(dtype, ok)` of each, read from the right, since
/// model and check names contain spaces.
fn table_rows(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("model ") && (l.ends_with(" ok") || l.ends_with(" FAIL")))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().rev().take(4).collect();
            (cols[3].to_string(), cols[0].to_string())
        })
        .collect()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn quick_check_passes_and_prints_every_check() {
    let out = xtask(&["check-curvature", "--quick"]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "check-curvature --quick failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for header in ["model", "check", "dtype", "rel. error", "tolerance", "ok"] {
        assert!(stdout.contains(header), "table header `{header}` missing");
    }
    for model in [
        "softmax + L2(1e-2)",
        "softmax + Laplacian(1e-3, 14x14)",
        "softmax + bias",
        "MLP 196-32-10 tanh",
        "MLP 196-32-10 logistic, sigmoid CE",
        "MLP 196-32-10 softplus, squared error",
        "autoencoder 196-16-8-16-196, sigmoid CE on the inputs",
    ] {
        assert!(stdout.contains(model), "model `{model}` missing:\n{stdout}");
    }
    for check in [
        "gradient vs FD of loss",
        "Hv vs FD of gradient",
        "Hv vs dense H v",
        "GGNv vs dense JᵀH_LJ v",
        "H[:,S] vs FD columns",
        "GGN[S,S] vs FD-J JᵀH_LJ",
        "symmetry of H",
        "symmetry of GGN",
        "Hv vs double backward",
        "GGNv vs double backward",
        "gradient vs f64",
        "Hv vs f64 Hv",
        "K-FAC (1 case) vs FD-J JᵀH_LJ",
        "K-FAC MC error slope vs −½",
        "K-FAC inverse·damped v vs v",
    ] {
        assert!(stdout.contains(check), "check `{check}` missing:\n{stdout}");
    }
    // Both precisions' tolerances are printed.
    assert!(
        stdout.contains("1e-6") && stdout.contains("1e-3"),
        "{stdout}"
    );
    // Eight models, eight checks each, in two precisions, and three K-FAC
    // checks (f64) for each of the four networks.
    assert!(
        stdout.contains("140 of 140 checks within tolerance"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // Every data row of the table ends in `ok`.
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 140, "{stdout}");
    assert!(rows.iter().all(|(_, ok)| ok == "ok"), "{stdout}");
    assert_eq!(rows.iter().filter(|(d, _)| d == "f64").count(), 76);
    assert_eq!(rows.iter().filter(|(d, _)| d == "f32").count(), 64);
}

#[test]
fn dtype_flag_selects_the_precision() {
    let out = xtask(&["check-curvature", "--quick", "--dtype", "f32"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("64 of 64 checks within tolerance"),
        "{stdout}"
    );
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 64, "{stdout}");
    assert!(rows.iter().all(|(d, _)| d == "f32"), "{stdout}");
}

#[test]
fn bad_flags_are_named() {
    let out = xtask(&["check-curvature", "--quick", "--dtype", "f16"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("f16") && stderr.contains("both"),
        "{stderr}"
    );

    let out = xtask(&["check-curvature", "--quick", "--batch", "0"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--batch"), "{stderr}");

    let missing = std::env::temp_dir().join("hessfree-no-such-data-dir");
    let out = xtask(&[
        "check-curvature",
        "--data-dir",
        missing.to_str().expect("utf-8 temp path"),
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("hessfree-no-such-data-dir"), "{stderr}");
}
