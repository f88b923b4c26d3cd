//! The checkpoint reader's oracle, shared by the fuzz target
//! `fuzz_targets/checkpoint.rs` and the stable regression test
//! `crates/solvers/tests/checkpoint_fuzz_regressions.rs` (which includes
//! this file with `#[path]`).
//!
//! `Snapshot::decode` is handed the bytes twice: as they are, and with the
//! trailing FNV-1a checksum recomputed over everything before it. Without the
//! second pass almost every mutation dies at the checksum and the JSON header
//! and payload parsers behind it are never reached.
//!
//! For each decode:
//! - it never panics (a panic is the fuzzer's crash);
//! - an `Err` is a non-empty message;
//! - an `Ok` snapshot lists every tensor once, re-encodes with
//!   `Snapshot::encode`, and those bytes decode to the same snapshot (vectors
//!   compared bit for bit, so NaN payloads count) and encode to the very same
//!   bytes again.

use hessfree_solvers::checkpoint::{Snapshot, fnv1a64};

/// The fixed part before the JSON header: magic, version, two lengths.
const FIXED: usize = 8 + 4 + 8 + 8;

/// What one input did, for the regression test to check expectations.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Decoded and round-tripped.
    Ok,
    /// Refused with this message.
    Err(String),
}

/// `bytes` with the last 8 bytes replaced by the checksum of the rest
/// (`None` when too short to carry a checksum).
pub fn with_fixed_checksum(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < FIXED + 8 {
        return None;
    }
    let body = bytes.len() - 8;
    let mut out = bytes.to_vec();
    out[body..].copy_from_slice(&fnv1a64(&bytes[..body]).to_le_bytes());
    Some(out)
}

/// Both passes: the raw bytes, then (if different) with a repaired checksum.
pub fn check_checkpoint(bytes: &[u8]) -> (Outcome, Option<Outcome>) {
    let raw = check_decode(bytes);
    let fixed = with_fixed_checksum(bytes)
        .filter(|f| f.as_slice() != bytes)
        .map(|f| check_decode(&f));
    (raw, fixed)
}

/// One decode and the oracle on its result.
pub fn check_decode(bytes: &[u8]) -> Outcome {
    match Snapshot::decode(bytes) {
        Err(why) => {
            assert!(!why.trim().is_empty(), "decode error with an empty message");
            Outcome::Err(why)
        }
        Ok(snap) => {
            assert_eq!(
                snap.meta.tensors.len(),
                snap.tensors.len(),
                "decode accepted a header listing a tensor twice: {:?}",
                snap.meta.tensors
            );
            let again = snap
                .encode()
                .unwrap_or_else(|e| panic!("decoded snapshot does not re-encode: {e}"));
            let back = Snapshot::decode(&again)
                .unwrap_or_else(|e| panic!("re-encoded snapshot does not decode: {e}"));
            assert_same(&snap, &back);
            let third = back
                .encode()
                .unwrap_or_else(|e| panic!("second re-encode failed: {e}"));
            assert!(third == again, "encode is not stable over decode");
            Outcome::Ok
        }
    }
}

/// Equality with vectors compared by bits; the header's tensor listing is
/// compared as a set of names with dtypes and lengths (the encoder writes it
/// in name order, a file may list it in any order).
fn assert_same(a: &Snapshot, b: &Snapshot) {
    let mut ma = a.meta.clone();
    let mut mb = b.meta.clone();
    ma.tensors.sort();
    mb.tensors.sort();
    assert_eq!(ma, mb, "header changed over encode/decode");
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>(),
        "tensor names changed over encode/decode"
    );
    for (name, (da, va)) in &a.tensors {
        let (db, vb) = &b.tensors[name];
        assert_eq!(da, db, "dtype of `{name}` changed over encode/decode");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(va),
            bits(vb),
            "values of `{name}` changed over encode/decode"
        );
    }
}
