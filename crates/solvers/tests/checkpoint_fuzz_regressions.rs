//! Replays every checkpoint seed (`fuzz/checkpoint-seeds/`) and every
//! checkpoint regression input (`fuzz/regressions/checkpoint-*`) through the
//! oracle of the `checkpoint` fuzz target, on stable Rust in the normal test
//! suite. The oracle file is included as is, so this checks exactly what the
//! fuzzer checks.
//!
//! The seeds are written by this test:
//! `HESSFREE_WRITE_CHECKPOINT_SEEDS=1 cargo test -p hessfree-solvers --test checkpoint_fuzz_regressions`.

#[path = "../../../fuzz/src/checkpoint_oracle.rs"]
mod checkpoint_oracle;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::DType;
use checkpoint_oracle::{Outcome, check_checkpoint, check_decode, with_fixed_checksum};
use hessfree_solvers::checkpoint::{Snapshot, SnapshotMeta, SolverState};
use hessfree_solvers::newton_cg::NewtonCgState;
use hessfree_solvers::sgd::{SamplerFields, SgdState};
use hessfree_solvers::trust_region::TrustRegionState;
use hessfree_solvers::{Counts, StopReason, TraceRecord};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Words of which every refusal must name at least one: the problem itself.
const PROBLEMS: &[&str] = &[
    "truncated",
    "bad magic",
    "format version",
    "checksum mismatch",
    "bad header",
    "unknown dtype",
    "runs past the payload",
    "payload length does not match",
    "listed twice",
];

fn assert_names_problem(what: &str, why: &str) {
    assert!(
        PROBLEMS.iter().any(|p| why.contains(p)),
        "{what}: error message names no known problem: {why:?}"
    );
}

fn record(iter: u64) -> TraceRecord {
    TraceRecord {
        iter,
        wall_seconds: 0.125 * iter as f64,
        objective: std::f64::consts::LN_10 / (1.0 + iter as f64),
        grad_norm: 0.1 / (1.0 + iter as f64),
        test_accuracy: Some(0.1 * iter as f64),
        train_error: None,
        test_error: None,
        grad_evals: iter + 1,
        loss_evals: 2 * iter,
        hvp_evals: 10 * iter,
        data_passes: 1.5 * iter as f64,
        damping: Some(1.0 / 3.0),
        radius: None,
        cg_iters: Some(7),
        step_size: None,
    }
}

fn meta(method: &str, solver: Option<SolverState>, finished: Option<StopReason>) -> SnapshotMeta {
    SnapshotMeta {
        method: method.into(),
        settings: r#"{"max_iters":3,"seed":7}"#.into(),
        iter: 2,
        finished,
        cost_bits: std::f64::consts::LN_2.to_bits(),
        counts: Counts {
            grad_evals: 3,
            loss_evals: 4,
            hvp_evals: 20,
            samples: 640,
        },
        solver_seconds: 0.25,
        records: 3,
        trace: (0..3).map(record).collect(),
        extras: BTreeMap::from([("lambda".to_string(), 1e-3)]),
        solver,
        tensors: Vec::new(),
    }
}

/// Three small checkpoints, one per solver kind, made by the real encoder.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut newton = Snapshot {
        meta: meta(
            "newton-cg",
            Some(
                SolverState::new(
                    "newton-cg",
                    &NewtonCgState {
                        damping_bits: 0.5f64.to_bits(),
                        failures: 1,
                        curvature_batch_position: None,
                        gradient_batch_position: None,
                    },
                )
                .expect("state serialises"),
            ),
            None,
        ),
        tensors: BTreeMap::new(),
    };
    newton.tensors.insert(
        "param".into(),
        (DType::F64, vec![0.5, -1.25, 3.0, 0.0, -0.0, 1e-300]),
    );
    newton.tensors.insert(
        "gradient".into(),
        (
            DType::F64,
            vec![1e-3, -2e-3, 0.0, 4.0, f64::MIN_POSITIVE, 7.0],
        ),
    );
    newton
        .tensors
        .insert("previous".into(), (DType::F64, vec![0.0; 6]));

    let mut sgd = Snapshot {
        meta: meta(
            "sgd",
            Some(
                SolverState::new(
                    "sgd",
                    &SgdState {
                        sampler: Some(SamplerFields {
                            len: 16,
                            batch_size: 4,
                            seed: 42,
                            epoch: 1,
                            position: 8,
                        }),
                        steps: 0,
                    },
                )
                .expect("state serialises"),
            ),
            None,
        ),
        tensors: BTreeMap::new(),
    };
    sgd.tensors
        .insert("param".into(), (DType::F32, vec![0.5, -0.25, 0.125, 1.0]));
    sgd.tensors.insert(
        "velocity".into(),
        (DType::F32, vec![0.0, 0.015_625, -0.5, 2.0]),
    );

    let mut tr = Snapshot {
        meta: meta(
            "trust-region",
            Some(
                SolverState::new(
                    "trust-region",
                    &TrustRegionState {
                        radius_bits: f64::INFINITY.to_bits(),
                    },
                )
                .expect("state serialises"),
            ),
            Some(StopReason::Failed("objective is NaN".into())),
        ),
        tensors: BTreeMap::new(),
    };
    tr.meta.extras.clear();
    tr.meta.trace.truncate(1);
    tr.tensors.insert(
        "param".into(),
        (DType::F64, vec![f64::NAN, f64::INFINITY, -1.0]),
    );

    [
        ("newton-cg-f64", newton),
        ("sgd-f32", sgd),
        ("trust-region-finished", tr),
    ]
    .into_iter()
    .map(|(name, s)| (name, s.encode().expect("seed encodes")))
    .collect()
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn committed_seeds_match_the_encoder_and_round_trip() {
    let dir = fuzz_dir().join("checkpoint-seeds");
    if std::env::var_os("HESSFREE_WRITE_CHECKPOINT_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("create seed dir");
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(format!("{name}.ckpt")), bytes).expect("write seed");
        }
    }
    let committed = files(&dir, "");
    assert_eq!(
        committed.len(),
        3,
        "expected the three seeds in {}",
        dir.display()
    );
    for (name, bytes) in seeds() {
        let path = dir.join(format!("{name}.ckpt"));
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            bytes,
            "{} differs from what the encoder writes now",
            path.display()
        );
        assert_eq!(check_decode(&bytes), Outcome::Ok, "{name}");
        // A seed written by the encoder comes back byte for byte.
        let snap = Snapshot::decode(&bytes).expect("seed decodes");
        assert_eq!(snap.encode().expect("re-encode"), bytes, "{name}");
    }
}

#[test]
fn every_seed_and_regression_passes_the_oracle() {
    let mut inputs = files(&fuzz_dir().join("checkpoint-seeds"), "");
    inputs.extend(files(&fuzz_dir().join("regressions"), "checkpoint-"));
    assert!(inputs.len() >= 3);
    for path in inputs {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let what = path.display().to_string();
        let (raw, fixed) = check_checkpoint(&bytes);
        for outcome in std::iter::once(raw).chain(fixed) {
            if let Outcome::Err(why) = outcome {
                assert_names_problem(&what, &why);
            }
        }
    }
}

/// Every truncation and every single-bit flip of each seed: the raw bytes
/// must be refused with the right reason (length or checksum), and the
/// checksum-repaired flips must pass the oracle either way.
#[test]
fn damaged_seeds_are_refused_for_the_right_reason() {
    for (name, bytes) in seeds() {
        for len in 0..bytes.len() {
            match check_decode(&bytes[..len]) {
                Outcome::Ok => panic!("{name} cut to {len} bytes was accepted"),
                Outcome::Err(why) => {
                    assert_names_problem(name, &why);
                    assert!(
                        why.contains("truncated") || why.contains("bad magic"),
                        "{name} cut to {len} bytes: {why}"
                    );
                }
            }
        }
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let (raw, fixed) = check_checkpoint(&b);
            match raw {
                Outcome::Ok => panic!("{name} with bit {bit} flipped was accepted"),
                Outcome::Err(why) => assert_names_problem(name, &why),
            }
            if let Some(Outcome::Err(why)) = fixed {
                assert_names_problem(name, &why);
            }
        }
        let mut padded = bytes.clone();
        padded.push(0);
        match check_decode(&padded) {
            Outcome::Err(why) => assert!(why.contains("truncated or padded"), "{why}"),
            Outcome::Ok => panic!("{name} with a byte appended was accepted"),
        }
        let repaired = with_fixed_checksum(&bytes).expect("long enough");
        assert_eq!(
            repaired, bytes,
            "{name}: the encoder's checksum is FNV-1a 64"
        );
    }
}
