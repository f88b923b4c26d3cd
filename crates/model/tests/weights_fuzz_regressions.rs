//! Replays every weights seed (`fuzz/weights-seeds/`) and every weights
//! regression input (`fuzz/regressions/weights-*`) through the oracle of the
//! `weights` fuzz target, on stable Rust in the normal test suite. The oracle
//! file is included as is, so this checks exactly what the fuzzer checks,
//! and a counting allocator enforces the bound the fuzz runs set with
//! `-malloc_limit_mb`.
//!
//! The seeds are written by this test:
//! `HESSFREE_WRITE_FUZZ_SEEDS=1 cargo test -p hessfree-model --test weights_fuzz_regressions`.

#[path = "../../../fuzz/src/weights_oracle.rs"]
mod weights_oracle;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use hessfree_model::weights::to_bytes;
use hessfree_model::{Activation, Model, ModelSpec};
use weights_oracle::{Outcome, SOURCE, check_load, check_weights, with_fixed_header_length};

const WRITE_SEEDS_ENV: &str = "HESSFREE_WRITE_FUZZ_SEEDS";

/// The largest single allocation replaying one input may make. The fuzz runs
/// allow 32 MiB (`-malloc_limit_mb=32`) on inputs of at most 8 KiB; these
/// inputs are smaller still, so the bound is tighter: a header alone must
/// never buy a large buffer.
const MAX_ALLOCATION: usize = 4 << 20;

/// Records the largest allocation request of the current thread (tests run
/// on parallel threads, hence per thread).
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not tracked.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping touches only a `const`-initialised thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Both passes of the oracle on `bytes`, with the largest allocation they
/// made; a panic (an oracle failure) comes back as its message, and then the
/// allocation means nothing (printing a backtrace allocates megabytes).
fn replay(bytes: &[u8]) -> (Result<(Outcome, Option<Outcome>), String>, usize) {
    LARGEST.with(|l| l.set(0));
    let outcome = catch_unwind(AssertUnwindSafe(|| check_weights(bytes))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    });
    (outcome, LARGEST.with(|l| l.get()))
}

/// Parameters that exercise the encoding: signed zero, an f32 subnormal,
/// values of several magnitudes.
fn values(n: usize, dtype: DType) -> Tensor {
    let v: Vec<f64> = (0..n)
        .map(|i| match i {
            0 => -0.0,
            1 => f64::from(f32::MIN_POSITIVE) / 4.0,
            _ => (i as f64 - n as f64 / 2.0) * 10f64.powi(i as i32 % 5 - 2),
        })
        .collect();
    Tensor::from_vec(v, n, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("seed parameters")
}

/// Small valid files of every model kind, in both dtypes, written by the
/// real writer: file name, the model's spec as it prints, bytes.
fn seeds() -> Vec<(String, String, Vec<u8>)> {
    let cases = [
        ("softmax", ModelSpec::Softmax { bias: true }, 4, 3),
        ("softmax-nobias", ModelSpec::Softmax { bias: false }, 3, 2),
        (
            "mlp-tanh",
            ModelSpec::parse("mlp:4", Activation::Tanh).unwrap(),
            3,
            2,
        ),
        (
            "mlp-relu-2",
            ModelSpec::parse("mlp:3,2", Activation::Relu).unwrap(),
            2,
            3,
        ),
    ];
    let mut out = Vec::new();
    for (name, spec, inputs, classes) in cases {
        let model = Model::new(spec, inputs, classes).expect("seed model");
        for dtype in [DType::F32, DType::F64] {
            let w = values(model.layout().len(), dtype);
            let bytes = to_bytes(Path::new(SOURCE), &model, &w).expect("seed encodes");
            out.push((
                format!("{name}-{dtype:?}.safetensors").to_lowercase(),
                model.spec().to_string(),
                bytes,
            ));
        }
    }
    out
}

/// Every regular, non-hidden file in `dir` whose name starts with
/// `prefix`, sorted by name.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && !n.starts_with('.'))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn committed_seeds_match_the_writer_and_round_trip() {
    let dir = fuzz_dir().join("weights-seeds");
    if std::env::var_os(WRITE_SEEDS_ENV).is_some() {
        fs::create_dir_all(&dir).expect("create seed dir");
        for (name, _, bytes) in seeds() {
            fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
    let expected = seeds();
    assert_eq!(
        files(&dir, "").len(),
        expected.len(),
        "unexpected files in {}",
        dir.display()
    );
    for (name, spec, bytes) in expected {
        let path = dir.join(&name);
        let on_disk = fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "seed {} missing ({e}); regenerate with {WRITE_SEEDS_ENV}=1",
                path.display()
            )
        });
        assert!(
            on_disk == bytes,
            "{} differs from what the writer writes now",
            path.display()
        );
        // A valid file exercises the oracle's success branch.
        match check_load(&bytes) {
            Outcome::Ok(model) => assert_eq!(model, spec, "{name}"),
            Outcome::Err(why) => panic!("seed {name} is refused: {why}"),
        }
        // The header length the writer puts there is the repaired one.
        assert!(
            with_fixed_header_length(&bytes).is_some_and(|b| b == bytes),
            "{name}: the header length is not the JSON header's length"
        );
    }
}

#[test]
fn every_seed_and_regression_passes_the_oracle() {
    let mut inputs = files(&fuzz_dir().join("weights-seeds"), "");
    inputs.extend(files(&fuzz_dir().join("regressions"), "weights-"));
    assert!(inputs.len() > seeds().len(), "no weights regressions found");
    let mut failures = Vec::new();
    for path in &inputs {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Several times: two of the findings were errors that changed from
        // one load of the same bytes to the next, which the oracle sees as
        // the F64 and F32 loads disagreeing half of the time.
        let mut first = None;
        for _ in 0..8 {
            let (outcome, largest) = replay(&bytes);
            match outcome {
                Err(msg) => {
                    failures.push(format!("{}: {msg}", path.display()));
                    break;
                }
                Ok(_) if largest > MAX_ALLOCATION => {
                    failures.push(format!(
                        "{}: allocated {largest} bytes at once, more than {MAX_ALLOCATION}",
                        path.display()
                    ));
                    break;
                }
                Ok(outcome) => match &first {
                    None => first = Some(outcome),
                    Some(f) if *f != outcome => {
                        failures.push(format!(
                            "{}: {f:?} once, {outcome:?} another time",
                            path.display()
                        ));
                        break;
                    }
                    Some(_) => {}
                },
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs fail the weights oracle:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

/// Every truncation and every single-bit flip of each seed: a truncation is
/// refused as corrupt, and every flip passes the oracle whichever way it
/// goes (a flip in the data may well still load).
#[test]
fn damaged_seeds_pass_the_oracle() {
    for (name, _, bytes) in seeds() {
        for len in 0..bytes.len() {
            match check_load(&bytes[..len]) {
                Outcome::Ok(_) => panic!("{name} cut to {len} bytes was accepted"),
                Outcome::Err(why) => assert!(
                    why.contains("not a valid safetensors file"),
                    "{name} cut to {len} bytes: {why}"
                ),
            }
        }
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let (outcome, largest) = replay(&b);
            if let Err(msg) = outcome {
                panic!("{name} with bit {bit} flipped: {msg}");
            }
            assert!(
                largest <= MAX_ALLOCATION,
                "{name} with bit {bit} flipped allocated {largest} bytes at once"
            );
        }
    }
}
