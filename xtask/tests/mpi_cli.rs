//! `mpirun -np N xtask compare` (the `mpi` feature, OpenMPI from
//! scripts/install-mpi.sh) against one process, on a small synthetic IDX
//! set in f64:
//! - for 1, 2 and 3 ranks, Newton-CG, the trust region and SGD give the
//!   single-process trace to 1e-12 relative;
//! - a job killed under `-np 2` after a checkpoint and resumed under
//!   `-np 2` gives the uninterrupted job's trace and weights;
//! - a rank that dies ends the job, naming the rank, with no report;
//! - a command that runs in one process refuses several ranks.
//!
//! More ranks than this machine's 2 cores: oversubscribed, ranks yield
//! when idle, and shared-memory single copy is off (sandboxes forbid it).
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hessfree_solvers::checkpoint;

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
        "60",
        "--sgd-batch",
        "32",
        "--sgd-eval-every",
        "3",
        "--sgd-momentum",
        "0.5",
        "--sgd-lr",
        "0.1",
        "--max-iters",
        "12",
        "--grad-tol",
        "1e-9",
        "--laplace",
        "1e-3",
        "--l2",
        "1e-2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `xtask ARGS` in one process, or under `mpirun -np N`.
fn command(ranks: Option<usize>, args: &[String]) -> Command {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let mut c = match ranks {
        None => Command::new(xtask),
        Some(n) => {
            let mut c = Command::new("mpirun");
            c.args(["-np", &n.to_string(), xtask]);
            c
        }
    };
    c.args(args)
        .env_remove("HESSFREE_DATA")
        .env("RUST_LOG", "warn")
        // One thread per rank, as a data-parallel job would run.
        .env("RAYON_NUM_THREADS", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn run_ok(ranks: Option<usize>, args: &[String]) -> Output {
    let out = command(ranks, args)
        .output()
        .expect("mpirun (scripts/install-mpi.sh) and the xtask binary run");
    assert!(
        out.status.success(),
        "compare under {ranks:?} ranks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The trace's numbers without wall time, per row: `(run, numbers)`.
fn trace(dir: &Path) -> Vec<(String, Vec<Option<f64>>)> {
    std::fs::read_to_string(dir.join("trace.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let numbers = f[1..]
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, x)| x.parse().ok())
                .collect();
            (f[0].to_string(), numbers)
        })
        .collect()
}

/// Column of the gradient norm in [`trace`]'s numbers.
const GRAD_NORM: usize = 2;

/// Every number of the two traces to 1e-12 relative; the gradient norm
/// relative to its run's first (largest) value. Near a minimum ‖∇f‖ is a
/// small difference of large terms: the ranks add the same terms in
/// another order, so ∇f is good to a rounding of its terms' scale, not of
/// ‖∇f‖ (measured: 2.4e-11 of ‖∇f‖ = 2.6e-7, 3e-16 of the first ‖∇f‖).
///
/// The runs stop at ‖∇f‖ < 1e-9 (`args`): further on, the objective moves
/// by less than the rounding of its sums, and a solver's accept or reject
/// decisions are decided by the order the terms were added in, as they
/// would be by a change of thread count in one process.
fn assert_traces_close(a: &Path, b: &Path, what: &str) {
    let (a, b) = (trace(a), trace(b));
    assert!(a.len() > 5, "{what}: the trace has only {} rows", a.len());
    assert_eq!(a.len(), b.len(), "{what}: trace lengths differ");
    let mut scale = 0.0f64;
    for (row, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.0, y.0, "{what}: row {row}");
        assert_eq!(x.1.len(), y.1.len());
        if row == 0 || a[row - 1].0 != x.0 {
            scale = 0.0;
        }
        for (col, (p, q)) in x.1.iter().zip(&y.1).enumerate() {
            match (p, q) {
                (Some(p), Some(q)) => {
                    let mut of = p.abs().max(q.abs());
                    if col == GRAD_NORM {
                        scale = scale.max(of);
                        of = scale;
                    }
                    let rel = (p - q).abs() / of.max(1e-300);
                    assert!(
                        rel <= 1e-12 || p == q,
                        "{what}: row {row} column {col}: {p} vs {q} (relative {rel:e})"
                    );
                }
                (None, None) => {}
                _ => panic!("{what}: row {row} column {col}: {p:?} vs {q:?}"),
            }
        }
    }
}

#[test]
fn one_two_and_three_ranks_give_the_single_process_trace() {
    let data = common::dataset();
    for optimizer in ["newton-cg", "trust-region", "sgd"] {
        let single = data.path().join(format!("single-{optimizer}"));
        run_ok(None, &args(data.path(), &single, optimizer));
        for n in 1..=3 {
            let out = data.path().join(format!("np{n}-{optimizer}"));
            run_ok(Some(n), &args(data.path(), &out, optimizer));
            assert_traces_close(&single, &out, &format!("{optimizer}, -np {n}"));
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                    .unwrap();
            let comm = &summary["runs"][0]["communication"];
            assert_eq!(comm["ranks"], n, "{optimizer}: {comm}");
            assert!(comm["allreduces"].as_u64().unwrap() > 10, "{comm}");
            assert_eq!(
                comm["bytes"].as_u64().unwrap() > 0,
                n > 1,
                "{optimizer} -np {n}: {comm}"
            );
        }
    }
}

#[test]
fn killed_and_resumed_under_two_ranks_matches_uninterrupted() {
    let data = common::dataset();
    for optimizer in ["newton-cg", "sgd"] {
        let mut base = args(data.path(), Path::new("unused"), optimizer);
        let set = |a: &mut Vec<String>, flag: &str, value: &str| {
            let i = a.iter().position(|x| x == flag).unwrap();
            a[i + 1] = value.to_string();
        };
        // Long enough to be killed mid-run.
        set(&mut base, "--max-iters", "200");
        set(&mut base, "--grad-tol", "0");
        set(&mut base, "--sgd-steps", "3000");
        base.extend(["--checkpoint-every".into(), "2".into()]);
        let with_out = |out: &Path| {
            let mut a = base.clone();
            set(&mut a, "--out", out.to_str().unwrap());
            a
        };
        let reference = data.path().join(format!("reference-{optimizer}"));
        run_ok(Some(2), &with_out(&reference));

        let out = data.path().join(format!("killed-{optimizer}"));
        let ckpt = out.join("checkpoints").join(format!("{optimizer}.ckpt"));
        let min_iter = if optimizer == "sgd" { 200 } else { 10 };
        let mut child = command(Some(2), &with_out(&out))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Ok(snap) = checkpoint::read(&ckpt)
                && snap.meta.iter >= min_iter
            {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{optimizer}: the job ended before checkpointing iteration {min_iter}"
            );
            assert!(start.elapsed() < Duration::from_secs(300));
            std::thread::sleep(Duration::from_millis(1));
        }
        // SIGKILL to mpirun: its ranks lose their launcher and end too.
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
        assert!(
            !out.join("report.md").exists(),
            "{optimizer}: a killed job left a report"
        );
        let mut resume = with_out(&out);
        resume.extend(["--resume".into(), out.to_str().unwrap().into()]);
        run_ok(Some(2), &resume);
        assert_traces_close(&reference, &out, &format!("{optimizer} resumed"));
        let weights = format!("weights_{optimizer}.safetensors");
        assert!(
            std::fs::read(reference.join(&weights)).unwrap()
                == std::fs::read(out.join(&weights)).unwrap(),
            "{optimizer}: the resumed job's weights differ"
        );
    }
}

/// The pid of the xtask process that is rank `rank` of a job, from its
/// environment (OpenMPI sets OMPI_COMM_WORLD_RANK).
fn rank_pid(rank: usize, out: &Path) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains(out.to_str().unwrap()) || cmdline.starts_with("mpirun") {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_rank_that_dies_ends_the_job_naming_it_and_leaves_no_report() {
    let data = common::dataset();
    let out = data.path().join("dies");
    let mut a = args(data.path(), &out, "newton-cg");
    for (flag, value) in [("--max-iters", "100000"), ("--grad-tol", "0")] {
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = value.into();
    }
    let child = command(Some(2), &a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let pid = loop {
        if let Some(pid) = rank_pid(1, &out) {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "rank 1 not found"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let it reach its iterations, then kill rank 1 only.
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let res = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "the job succeeded without rank 1");
    assert!(
        stderr.contains("rank 1"),
        "mpirun does not name the dead rank: {stderr}"
    );
    assert!(!out.join("report.md").exists(), "a partial report was left");
    assert!(
        !out.join("summary.json").exists(),
        "a partial summary was left"
    );
}

#[test]
fn a_failing_job_names_the_rank_and_single_process_commands_refuse() {
    let data = common::dataset();
    let out = data.path().join("bad");
    let res = command(Some(2), &args(data.path(), &out, "newton-cg,nonsense"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        stderr.contains("of 2 failed") && stderr.contains("nonsense"),
        "{stderr}"
    );

    let mut kfac = args(data.path(), &out, "kfac");
    kfac.extend(["--model".into(), "mlp:8".into()]);
    let res = command(Some(2), &kfac).output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        stderr.contains("runs in one process, and this job has 2 MPI ranks"),
        "{stderr}"
    );

    let res = command(Some(2), &["data-info".to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        stderr.contains("`data-info` runs in one process"),
        "{stderr}"
    );
    assert!(!out.join("report.md").exists());
}
