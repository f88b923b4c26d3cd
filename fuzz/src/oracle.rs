// The checks every fuzz target applies to one input, shared with the data
// crate's regression test (which includes this file with `#[path]`), so a
// committed crashing input is replayed against exactly what found it.
//
// What must hold for any byte string:
// - parsing never panics (libFuzzer reports a panic as a crash);
// - an error is a typed `DataError` whose message names the source;
// - a success is exact: the images have at least one row and column, the
//   pixel buffer matches the header, and re-encoding the result gives back
//   the (decompressed) input byte for byte. For gzip input, the reference
//   decoder must agree and the gzip stream (all its members) must end where
//   the input ends: bytes after it would be data the parser silently dropped.

use std::io::Read;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use hessfree_data::idx::{encode, read_images, read_labels};
use hessfree_data::{DataError, IdxKind};

/// The name the fuzz input goes by; every error message must contain it.
pub const SOURCE: &str = "fuzz-input.idx";

/// Parses `input` as an IDX images file and checks the outcome.
pub fn check_images(input: &[u8]) {
    match read_images(input, Path::new(SOURCE)) {
        Ok(img) => {
            assert!(img.rows > 0 && img.cols > 0, "accepted {img:?}");
            let expected = img
                .count
                .checked_mul(img.rows)
                .and_then(|n| n.checked_mul(img.cols));
            assert_eq!(Some(img.pixels.len()), expected, "pixel buffer size");
            let dims = [img.count, img.rows, img.cols].map(|d| u32::try_from(d).unwrap());
            check_exact(input, &encode(IdxKind::Images.magic(), &dims, &img.pixels));
        }
        Err(err) => check_error(&err),
    }
}

/// Parses `input` as an IDX labels file and checks the outcome.
pub fn check_labels(input: &[u8]) {
    match read_labels(input, Path::new(SOURCE)) {
        Ok(labels) => {
            let count = u32::try_from(labels.len()).unwrap();
            check_exact(input, &encode(IdxKind::Labels.magic(), &[count], &labels));
        }
        Err(err) => check_error(&err),
    }
}

/// Gzip-compresses `inner` and runs both parsers on the result, so that the
/// fuzzer explores the IDX format behind the gzip layer.
pub fn check_gzip_wrapped(inner: &[u8]) {
    let compressed = gzip(inner);
    check_images(&compressed);
    check_labels(&compressed);
}

/// Compresses `bytes` the way the IDX files are shipped.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut encoder, bytes).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

fn check_error(err: &DataError) {
    let msg = err.to_string();
    assert!(
        msg.contains(SOURCE),
        "error message does not name the source: {msg} ({err:?})"
    );
}

/// The parse succeeded with `encoded` as its re-encoding: that must be the
/// input itself, or for gzip input, exactly what the input decompresses to.
pub fn check_exact(input: &[u8], encoded: &[u8]) {
    if !input.starts_with(&[0x1f, 0x8b]) {
        assert!(
            input == encoded,
            "accepted bytes that do not re-encode to the input"
        );
        return;
    }
    // Concatenated members are one gzip stream, as `gunzip` reads them.
    let mut decoder = flate2::bufread::MultiGzDecoder::new(input);
    let mut decompressed = Vec::new();
    decoder
        .read_to_end(&mut decompressed)
        .expect("the parser accepted gzip input that the reference decoder rejects");
    assert!(
        decompressed == encoded,
        "accepted gzip input whose content does not re-encode to the decompressed input"
    );
    let rest = decoder.into_inner();
    assert!(
        rest.is_empty(),
        "accepted gzip input with {} bytes after the gzip stream",
        rest.len()
    );
}
