//! The CUDA kernels of the fused softmax ops (`src/fused_cuda.cu`), run on
//! the CPU. g++ compiles them together with `cuda_emulation/emu.hpp`, which
//! stands in for CUDA's thread model (a thread per CUDA thread, barriers for
//! `__syncthreads` and warp shuffles), and `cuda_emulation/harness.cpp`,
//! which compares every kernel with a naive `f64` evaluation over three block
//! partitions. This checks the kernels' indexing, tiling and reductions on
//! machines without a GPU, in the specialisations `fused_cuda.rs` compiles;
//! it says nothing about speed or about CUDA's memory model.

use std::path::Path;
use std::process::Command;

/// Checks per case: the class-major weights, then 3 partitions x
/// (probabilities, 2 gradients, HVP).
const CHECKS: usize = 13;

fn run_case(name: &str, defines: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fused_cuda_emulated_{name}"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let mut cmd = Command::new(&cxx);
    cmd.args(["-std=c++20", "-O1", "-pthread"])
        .arg(format!("-I{}", dir.join("tests/cuda_emulation").display()))
        .arg(format!(
            "-DFUSED_CUDA_SOURCE=\"{}\"",
            dir.join("src/fused_cuda.cu").display()
        ));
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    cmd.arg(dir.join("tests/cuda_emulation/harness.cpp"))
        .arg("-o")
        .arg(&exe);
    let built = cmd.output().unwrap_or_else(|e| {
        panic!("could not run {cxx}; a C++20 compiler is needed to test the CUDA kernels on the CPU: {e}")
    });
    assert!(
        built.status.success(),
        "{name}: compiling the emulated kernels failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{name}: could not run {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{name}:\n{stdout}");
    assert!(
        run.status.success(),
        "{name}: the emulated CUDA kernels disagree with the reference:\n{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let passed = stdout.lines().filter(|l| l.ends_with(" ok")).count();
    assert_eq!(
        passed, CHECKS,
        "{name}: expected {CHECKS} passing checks:\n{stdout}"
    );
}

/// MNIST's shape with `u8` pixels, as the objective runs it in `f32`.
#[test]
fn u8_pixels_f32_mnist_shape() {
    run_case(
        "u8_f32",
        &[
            "XT=unsigned char",
            "T=float",
            "D=784",
            "K=10",
            "BIAS=1",
            "RW=4",
        ],
    );
}

/// The same in `f64`, with the two rows per warp `fused_cuda.rs` picks there.
#[test]
fn u8_pixels_f64_mnist_shape() {
    run_case(
        "u8_f64",
        &[
            "XT=unsigned char",
            "T=double",
            "D=784",
            "K=10",
            "BIAS=1",
            "RW=2",
        ],
    );
}

/// Float inputs, no bias, and a row length that is no multiple of a warp.
#[test]
fn f32_inputs_ragged_shape() {
    run_case(
        "f32_f32",
        &["XT=float", "T=float", "D=300", "K=3", "BIAS=0", "RW=4"],
    );
}

#[test]
fn f64_inputs_ragged_shape() {
    run_case(
        "f64_f64",
        &["XT=double", "T=double", "D=257", "K=13", "BIAS=1", "RW=2"],
    );
}

/// Rows shorter than a warp, and fewer rows than one tile.
#[test]
fn tiny_rows_and_batch() {
    run_case(
        "tiny",
        &[
            "XT=float", "T=float", "D=20", "K=4", "BIAS=1", "RW=4", "ROWS=7",
        ],
    );
}
