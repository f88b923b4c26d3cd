//! `cargo xtask compare --checkpoint-every N` and `--resume DIR`, killing the
//! process for real: a run killed with SIGKILL after a checkpoint and then
//! resumed gives the same trace (apart from wall time) and the same final
//! weights file, byte for byte, as an uninterrupted run, on the CPU in f64.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hessfree_solvers::checkpoint;

/// The compare command line for one optimiser, long enough to be killed mid-run.
fn args(data: &Path, out: &Path, optimizer: &str) -> Vec<String> {
    [
        "compare",
        "--optimizers",
        optimizer,
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f64",
        "--init",
        "normal:0.1",
        "--seed",
        "3",
        "--sgd-steps",
        "600",
        "--sgd-eval-every",
        "3",
        "--sgd-momentum",
        "0.5",
        "--sgd-lr",
        "0.1",
        "--max-iters",
        "30",
        "--grad-tol",
        "0",
        "--checkpoint-every",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn xtask(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args)
        .env_remove("HESSFREE_DATA")
        .env("RUST_LOG", "warn");
    c
}

fn run_ok(args: &[String]) -> Output {
    let out = xtask(args).output().expect("the xtask binary runs");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The saved parameters' bit patterns.
fn weight_bits(path: &Path) -> Vec<u64> {
    let (_, w) = hessfree_model::load_weights_stored(path, &candle_core::Device::Cpu).unwrap();
    let v: Vec<f64> = w.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

fn ckpt(out: &Path, slug: &str) -> PathBuf {
    out.join("checkpoints").join(format!("{slug}.ckpt"))
}

/// Starts a run, waits until it has checkpointed iteration `min_iter` or a
/// later one, and SIGKILLs it; returns the iteration of the checkpoint left
/// behind. `min_iter` is past the start so that the solver state (trust
/// radius, damping, SGD velocity and epoch position) has moved from its
/// initial value and a resume that lost it would show.
fn kill_after_checkpoint(args: &[String], ckpt: &Path, min_iter: u64) -> u64 {
    let mut child = xtask(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the xtask binary starts");
    let start = Instant::now();
    loop {
        // A read can fail between the renames of an update; try again.
        if let Ok(snap) = checkpoint::read(ckpt)
            && snap.meta.iter >= min_iter
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before checkpointing iteration {min_iter}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // `Child::kill` is SIGKILL on Unix: no handler, no clean-up.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it was killed; make it longer"
    );
    let snap = checkpoint::read(ckpt).expect("the checkpoint left by the kill reads back");
    assert!(
        snap.meta.finished.is_none(),
        "the checkpoint is of a finished run"
    );
    assert!(snap.meta.iter >= min_iter && snap.meta.iter.is_multiple_of(2));
    snap.meta.iter
}

fn killed_and_resumed_run_matches_uninterrupted(optimizer: &str) {
    let data = common::dataset();
    let reference = data.path().join("reference");
    run_ok(&args(data.path(), &reference, optimizer));

    let out = data.path().join("killed");
    let min_iter = if optimizer == "sgd" { 100 } else { 10 };
    let iter = kill_after_checkpoint(
        &args(data.path(), &out, optimizer),
        &ckpt(&out, optimizer),
        min_iter,
    );
    let mut resume = args(data.path(), &out, optimizer);
    resume.extend(["--resume".to_string(), out.to_str().unwrap().to_string()]);
    run_ok(&resume);
    eprintln!("{optimizer}: killed at or after the checkpoint of iteration {iter}, resumed");

    let a = common::trace_without_time(&reference);
    assert!(a.len() > 5);
    assert_eq!(
        a,
        common::trace_without_time(&out),
        "{optimizer}: traces differ"
    );
    let weights = format!("weights_{optimizer}.safetensors");
    assert_eq!(
        weight_bits(&reference.join(&weights)),
        weight_bits(&out.join(&weights)),
        "{optimizer}: final weights differ"
    );
    // Not only the same numbers: the same file, header included.
    assert!(
        std::fs::read(reference.join(&weights)).unwrap()
            == std::fs::read(out.join(&weights)).unwrap(),
        "{optimizer}: the weights files differ although their tensors agree"
    );

    // A finished run is not rerun: resuming again reproduces the same report.
    run_ok(&resume);
    assert_eq!(a, common::trace_without_time(&out));
}

#[test]
fn sgd_killed_and_resumed_matches_uninterrupted() {
    killed_and_resumed_run_matches_uninterrupted("sgd");
}

#[test]
fn newton_cg_killed_and_resumed_matches_uninterrupted() {
    killed_and_resumed_run_matches_uninterrupted("newton-cg");
}

#[test]
fn trust_region_killed_and_resumed_matches_uninterrupted() {
    killed_and_resumed_run_matches_uninterrupted("trust-region");
}

/// A truncated checkpoint is refused, naming the file and its `.prev`; the
/// `.prev` checkpoint, moved into place, resumes to the same result.
#[test]
fn truncated_checkpoint_is_refused_and_prev_stays_usable() {
    let data = common::dataset();
    let out = data.path().join("run");
    let a = args(data.path(), &out, "newton-cg");
    run_ok(&a);
    let reference = common::trace_without_time(&out);
    let path = ckpt(&out, "newton-cg");
    let prev = checkpoint::prev_path(&path);
    assert!(prev.exists(), "no .prev checkpoint kept");

    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let mut resume = a.clone();
    resume.extend(["--resume".to_string(), out.to_str().unwrap().to_string()]);
    let res = xtask(&resume).output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "a truncated checkpoint was accepted");
    assert!(stderr.contains("refusing checkpoint"), "{stderr}");
    assert!(stderr.contains("newton-cg.ckpt"), "{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(stderr.contains(".prev"), "{stderr}");

    // One flipped bit is caught by the checksum.
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() - 100;
    corrupt[mid] ^= 1;
    std::fs::write(&path, &corrupt).unwrap();
    let res = xtask(&resume).output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(stderr.contains("checksum"), "{stderr}");

    // The earlier checkpoint, an unfinished one, continues the run.
    let snap = checkpoint::read(&prev).unwrap();
    assert!(snap.meta.finished.is_none());
    std::fs::rename(&prev, &path).unwrap();
    run_ok(&resume);
    assert_eq!(reference, common::trace_without_time(&out));
}

/// `--resume` of a directory that is not there is refused, naming it,
/// before any work; an existing directory without this run's checkpoint
/// starts the run afresh, as an uninterrupted run.
#[test]
fn resume_from_a_missing_dir_is_refused_and_an_empty_one_starts_afresh() {
    let data = common::dataset();
    let out = data.path().join("run");
    let missing = data.path().join("no-such-run");
    let mut a = args(data.path(), &out, "newton-cg");
    a.extend([
        "--resume".to_string(),
        missing.to_str().unwrap().to_string(),
    ]);
    let res = xtask(&a).output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "a missing --resume dir was accepted");
    assert!(
        stderr.contains(&format!("--resume {}: does not exist", missing.display())),
        "{stderr}"
    );
    assert!(!out.exists(), "wrote {}", out.display());

    let reference = data.path().join("reference");
    run_ok(&args(data.path(), &reference, "newton-cg"));
    let empty = data.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut a = args(data.path(), &out, "newton-cg");
    a.extend(["--resume".to_string(), empty.to_str().unwrap().to_string()]);
    run_ok(&a);
    assert_eq!(
        common::trace_without_time(&reference),
        common::trace_without_time(&out)
    );
}
