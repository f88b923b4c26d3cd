//! `cargo xtask eval` end to end, through the built binary, on the bundled
//! MNIST test split: zero weights give every class the same logit, arg-max
//! picks class 0, and 980 of the 10000 test digits are zeros.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use hessfree_model::{Model, ModelSpec, WEIGHTS_FILE, save_weights};

fn temp_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("eval-cli")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

fn eval(weights: &Path, extra: &[&str]) -> (Output, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("eval")
        .arg("--weights")
        .arg(weights)
        .arg("--data-dir")
        .arg(data_dir())
        .args(extra)
        .env_remove("HESSFREE_DATA")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the xtask binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn zero_softmax(dir: &Path, dtype: DType) -> PathBuf {
    let model = Model::new(ModelSpec::Softmax { bias: true }, 784, 10).unwrap();
    let w = Tensor::zeros(model.layout().len(), dtype, &Device::Cpu).unwrap();
    let path = dir.join(WEIGHTS_FILE);
    save_weights(&path, &model, &w).unwrap();
    path
}

#[test]
fn zero_softmax_weights_score_the_share_of_zeros() {
    let dir = temp_dir("zero");
    for (dtype, extra) in [
        (DType::F32, &[][..]),
        (DType::F64, &[][..]),
        (DType::F32, &["--dtype", "f64"][..]),
    ] {
        let path = zero_softmax(&dir, dtype);
        let (out, stdout, stderr) = eval(&path, extra);
        assert!(
            out.status.success(),
            "eval failed ({dtype:?} {extra:?})\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stdout.contains("test accuracy: 0.0980 (980/10000 correct)"),
            "{stdout}"
        );
        assert!(stdout.contains("model: softmax (784 inputs, 10 classes, 7850 parameters"));
        let shown = if extra.is_empty() { dtype } else { DType::F64 };
        assert!(stdout.contains(&format!("{shown:?})")), "{stdout}");
    }
}

#[test]
fn corrupt_or_missing_weights_exit_non_zero_without_panicking() {
    let dir = temp_dir("corrupt");
    let good = zero_softmax(&dir, DType::F32);
    let bytes = fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    fs::write(
        &garbage,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
    )
    .unwrap();
    let missing = dir.join("missing.safetensors");

    for (path, expected) in [
        (&truncated, "truncated or corrupt"),
        (&garbage, "truncated or corrupt"),
        (&missing, "cannot read weights"),
    ] {
        let (out, stdout, stderr) = eval(path, &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: expected exit code 1\nstdout:\n{stdout}\nstderr:\n{stderr}",
            path.display()
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            stderr.contains("error:") && stderr.contains(name) && stderr.contains(expected),
            "{name}: unclear message:\n{stderr}"
        );
        assert!(!stdout.contains("accuracy"), "{stdout}");
    }
}

#[test]
fn weights_for_another_input_size_are_refused() {
    let dir = temp_dir("shape");
    let model = Model::new(ModelSpec::Softmax { bias: false }, 196, 10).unwrap();
    let w = Tensor::zeros(model.layout().len(), DType::F32, &Device::Cpu).unwrap();
    let path = dir.join(WEIGHTS_FILE);
    save_weights(&path, &model, &w).unwrap();
    let (out, _, stderr) = eval(&path, &[]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("196 inputs") && stderr.contains("784 inputs"),
        "{stderr}"
    );
}
