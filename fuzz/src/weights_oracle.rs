//! The weights reader's oracle, shared by the fuzz target
//! `fuzz_targets/weights.rs` and the stable regression test
//! `crates/model/tests/weights_fuzz_regressions.rs` (which includes this
//! file with `#[path]`).
//!
//! `weights::from_bytes` is handed the bytes twice: as they are, and with the
//! header length (the leading little-endian `u64`) recomputed to end where
//! the JSON header does. Without the second pass nearly every mutation that
//! inserts or deletes a byte in the header dies at the length check, and the
//! metadata and tensor checks behind it are rarely reached.
//!
//! For each pass, the bytes are loaded both as F64 and as F32, and:
//! - loading never panics (a panic is the fuzzer's crash);
//! - both loads fail, with the same error, or both succeed; except that the
//!   F32 load alone may refuse an F64 value beyond F32's range, and then its
//!   error names the value and place that the F64 load holds;
//! - an error is a typed `WeightsError` other than the I/O variants, whose
//!   message names the source and says more than that;
//! - a success is the same model both times, with finite parameters, and the
//!   F32 load is the F64 load rounded to F32;
//! - the parameters in the stored dtype re-save with `to_bytes`, those bytes
//!   load back to the same model with bit-identical parameters, and
//!   re-saving that gives the very same bytes again;
//! - the re-saved file holds what the input holds, as the plain
//!   `safetensors` crate reads them: the same tensors (dtype, shape and data
//!   byte for byte) and the same metadata values, except `layout`, whose
//!   prose the reader does not insist on (it checks only the
//!   orientation claim the note starts with). So the reader accepts no
//!   spelling of a value other than the one the writer would write.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use hessfree_model::Model;
use hessfree_model::weights::{WeightsError, from_bytes, to_bytes};
use safetensors::SafeTensors;

/// The name the fuzz input goes by; every error message must contain it.
pub const SOURCE: &str = "fuzz-input.safetensors";

/// What one pass did, for the regression test to check expectations.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded and round-tripped; the model as its spec prints.
    Ok(String),
    /// Refused with this message.
    Err(String),
}

/// `bytes` with the header length replaced by the length of the JSON value
/// that follows it, with the spaces after it up to a multiple of 8 bytes,
/// as the writer pads it (`None` when there is no complete JSON value).
pub fn with_fixed_header_length(bytes: &[u8]) -> Option<Vec<u8>> {
    let rest = bytes.get(8..)?;
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
    values.next()?.ok()?;
    let end = values.byte_offset();
    let padded = end.next_multiple_of(8);
    let n = match rest.get(end..padded) {
        Some(pad) if pad.iter().all(|&b| b == b' ') => padded,
        _ => end,
    } as u64;
    let mut out = bytes.to_vec();
    out[..8].copy_from_slice(&n.to_le_bytes());
    Some(out)
}

/// Both passes: the raw bytes, then (if different) with the header length
/// repaired.
pub fn check_weights(bytes: &[u8]) -> (Outcome, Option<Outcome>) {
    let raw = check_load(bytes);
    let fixed = with_fixed_header_length(bytes)
        .filter(|f| f.as_slice() != bytes)
        .map(|f| check_load(&f));
    (raw, fixed)
}

/// One pass: the loads and the oracle on their results.
pub fn check_load(bytes: &[u8]) -> Outcome {
    let path = Path::new(SOURCE);
    let as64 = from_bytes(bytes, path, &Device::Cpu, DType::F64);
    let as32 = from_bytes(bytes, path, &Device::Cpu, DType::F32);
    match (as64, as32) {
        (Err(e64), Err(e32)) => {
            check_error(&e64);
            assert_eq!(
                e64.to_string(),
                e32.to_string(),
                "the error depends on the dtype asked for"
            );
            Outcome::Err(e64.to_string())
        }
        (Ok((model, w64)), Ok((model32, w32))) => {
            assert_eq!(model, model32, "the model depends on the dtype asked for");
            assert_eq!(
                bits(&w32),
                bits(&w64.to_dtype(DType::F32).expect("F64 to F32")),
                "the F32 load is not the F64 load rounded"
            );
            assert_finite(&w32);
            check_round_trip(bytes, &model, w64, Some(w32))
        }
        // The one error that depends on the dtype: an F64 value that
        // overflows F32, reported where the F64 load has it.
        (Ok((model, w64)), Err(e32)) => {
            check_error(&e32);
            let WeightsError::OutOfRange {
                name,
                index,
                value,
                dtype,
                stored,
                ..
            } = &e32
            else {
                panic!("loading as F64 gave a model, as F32 the error: {e32}");
            };
            assert_eq!((dtype.as_str(), stored.as_str()), ("F32", "F64"), "{e32}");
            let spec = model
                .layout()
                .spec(name)
                .unwrap_or_else(|_| panic!("the error names no tensor of the model: {e32}"));
            assert!(*index < spec.len(), "{e32}");
            let held = values(&w64)[spec.offset + index];
            assert_eq!(
                held.to_bits(),
                value.to_bits(),
                "the error misreports the value: {e32}"
            );
            assert!(
                (held as f32).is_infinite(),
                "refused {held:e}, which F32 holds: {e32}"
            );
            check_round_trip(bytes, &model, w64, None)
        }
        (Err(e64), Ok(_)) => panic!("loading as F32 gave a model, as F64 the error: {e64}"),
    }
}

/// A file both loads accepted (`w32` is `None` where the F32 load refused
/// an overflow): its parameters in the stored dtype re-save and load back
/// exactly, and re-save to the same bytes again.
fn check_round_trip(bytes: &[u8], model: &Model, w64: Tensor, w32: Option<Tensor>) -> Outcome {
    let path = Path::new(SOURCE);
    assert_finite(&w64);
    let stored = stored_dtype(bytes);
    let w = match (stored, w32) {
        (DType::F32, Some(w32)) => w32,
        (DType::F32, None) => panic!("an F32 file does not load as F32"),
        _ => w64,
    };
    let again = to_bytes(path, model, &w)
        .unwrap_or_else(|e| panic!("an accepted file does not re-save: {e}"));
    let (model2, w2) = from_bytes(&again, path, &Device::Cpu, stored)
        .unwrap_or_else(|e| panic!("a re-saved file does not load: {e}"));
    assert_eq!(&model2, model, "the model changed over save/load");
    assert_eq!(bits(&w2), bits(&w), "parameters changed over save/load");
    let third = to_bytes(path, &model2, &w2).expect("second re-save");
    assert!(third == again, "to_bytes is not stable over from_bytes");
    assert_same_content(bytes, &again);
    Outcome::Ok(model.spec().to_string())
}

fn assert_finite(w: &Tensor) {
    let v = values(w);
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!(
            "accepted, but parameter {i} loaded as {:?} is {} (bits {:#x})",
            w.dtype(),
            v[i],
            bits(w)[i]
        );
    }
}

fn check_error(e: &WeightsError) {
    let msg = e.to_string();
    assert!(
        !matches!(e, WeightsError::Read { .. } | WeightsError::Write { .. }),
        "an I/O error from bytes in memory: {msg}"
    );
    let reason = msg
        .strip_prefix(SOURCE)
        .unwrap_or_else(|| panic!("error message does not start with the source: {msg}"));
    assert!(
        reason.trim_start_matches(':').trim().len() > 10,
        "error message names no problem: {msg}"
    );
}

/// The dtype the file's metadata names; only called on files that loaded,
/// so it is there and valid.
fn stored_dtype(bytes: &[u8]) -> DType {
    match metadata(bytes).get("dtype").map(String::as_str) {
        Some("F32") => DType::F32,
        Some("F64") => DType::F64,
        other => panic!("accepted a file whose metadata dtype is {other:?}"),
    }
}

fn metadata(bytes: &[u8]) -> HashMap<String, String> {
    let (_, header) = SafeTensors::read_metadata(bytes).expect("an accepted file's header reads");
    header.metadata().clone().unwrap_or_default()
}

/// The input and its re-saved form hold the same tensors and the same
/// metadata values (apart from the `layout` prose).
fn assert_same_content(input: &[u8], again: &[u8]) {
    let a = SafeTensors::deserialize(input).expect("an accepted file deserialises");
    let b = SafeTensors::deserialize(again).expect("a re-saved file deserialises");
    let mut names_a = a.names();
    let mut names_b = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "tensor names changed over load/save");
    for name in names_a {
        let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(ta.dtype(), tb.dtype(), "dtype of `{name}` changed");
        assert_eq!(ta.shape(), tb.shape(), "shape of `{name}` changed");
        assert!(ta.data() == tb.data(), "data of `{name}` changed");
    }
    let (mut ma, mut mb) = (metadata(input), metadata(again));
    let layout = ma.remove("layout").expect("an accepted file has a layout");
    assert!(
        layout.starts_with("weights are [in, out]"),
        "accepted layout {layout:?}"
    );
    mb.remove("layout");
    assert_eq!(
        ma, mb,
        "the reader accepted metadata the writer spells otherwise"
    );
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.to_vec1::<f64>())
        .expect("a loaded vector reads back")
}

fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .expect("F32 vector")
            .iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .expect("F64 vector")
            .iter()
            .map(|x| x.to_bits())
            .collect(),
        other => panic!("loaded as {other:?}, asked for F32 or F64"),
    }
}
