//! Runs each library example on small data, as a user would run the built
//! binary (outside cargo, so without `.cargo/config.toml`'s environment),
//! and checks what it prints. `cargo test` builds the examples first.

use std::path::PathBuf;
use std::process::Command;

fn run_example(name: &str, args: &[&str]) -> String {
    // This test runs from target/<profile>/deps; examples sit beside it.
    let exe = std::env::current_exe().expect("test binary path");
    let path: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(name);
    let out = Command::new(&path)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CANDLE_GRAD_DO_NOT_DETACH")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The number after `key` on a line.
fn number_after(line: &str, key: &str) -> f64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    let token = rest.split_whitespace().next().expect("a number");
    token
        .trim_end_matches([',', ';'])
        .parse()
        .unwrap_or_else(|e| panic!("{token}: {e}"))
}

#[test]
fn own_model_newton_cg_trains() {
    let text = run_example("own_model_newton_cg", &["600", "3"]);
    let losses: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("iter"))
        .map(|l| number_after(l, "loss"))
        .collect();
    assert_eq!(losses.len(), 4, "{text}");
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "loss falls: {losses:?}"
    );
    let accuracy = text
        .lines()
        .find(|l| l.contains("test accuracy"))
        .map(|l| number_after(l, "test accuracy"))
        .expect("accuracy line");
    assert!(accuracy > 0.6, "test accuracy {accuracy} (chance is 0.1)");
}

#[test]
fn own_model_spectrum_reports_eigenvalues_and_trace() {
    let text = run_example("own_model_spectrum", &["200", "8"]);
    let top = text
        .lines()
        .find(|l| l.contains("top Hessian eigenvalues"))
        .map(|l| number_after(l, "steps):"))
        .expect("eigenvalue line");
    assert!(top > 0.0 && top.is_finite(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("trace ("))
        .expect("trace line");
    let trace = number_after(line, "probes):");
    assert!(trace.is_finite() && trace > 0.0, "{text}");
    // 8 Lanczos steps and 20 Hutchinson probes: one product each.
    let products = text
        .lines()
        .find(|l| l.contains("products used"))
        .map(|l| number_after(l, "used:"))
        .expect("products line");
    assert_eq!(products, 28.0, "{text}");
}

/// The last line's parameter checksum.
fn checksum(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("parameters fnv1a"))
        .unwrap_or_else(|| panic!("no checksum in:\n{text}"));
    line.trim_start_matches("parameters fnv1a ").to_string()
}

#[test]
fn custom_solver_interrupted_and_resumed_in_another_process_ends_bit_for_bit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ckpt = dir.path().join("momentum.ckpt");
    let ckpt = ckpt.to_str().expect("utf-8 path");
    let full = run_example("custom_solver", &["300", "15"]);
    assert!(
        full.contains("stopped: maximum iterations after 15 steps"),
        "{full}"
    );
    let cut = run_example("custom_solver", &["300", "15", "--interrupt-at", "6", ckpt]);
    assert!(cut.contains("stopped: interrupted after 6 steps"), "{cut}");
    assert_ne!(checksum(&cut), checksum(&full), "the cut run stopped early");
    let resumed = run_example("custom_solver", &["300", "15", "--resume", ckpt]);
    assert!(resumed.contains("after 15 steps"), "{resumed}");
    assert_eq!(
        checksum(&resumed),
        checksum(&full),
        "resumed:\n{resumed}\nfull:\n{full}"
    );
    // The resumed trace carries on from the checkpoint: its last row is
    // the uninterrupted run's.
    let tail = |t: &str| {
        t.lines()
            .rev()
            .find(|l| l.starts_with("iter"))
            .map(str::to_string)
    };
    assert_eq!(tail(&resumed), tail(&full));
}
