//! Every kind of damaged or misplaced input gets its own typed error, whose
//! message names the file; none panics.

mod common;

use std::path::Path;

use common::{
    LAYOUTS, Layout, file_name, gzip, images_file, labels_file, synthetic, write, write_dataset,
};
use hessfree_data::idx::{encode, read_images, read_images_file, read_labels_file};
use hessfree_data::{DataError, IdxKind, MNIST_CLASSES, load_dir};

const RAW: Layout = Layout {
    gzip: false,
    dotted: false,
};
const GZ: Layout = Layout {
    gzip: true,
    dotted: false,
};

/// Asserts that the message mentions `path` (by its file name at least) and
/// returns it for further checks.
fn message_naming(err: &DataError, path: &Path) -> String {
    let msg = err.to_string();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 test file name");
    assert!(msg.contains(name), "message does not name {name}: {msg}");
    msg
}

#[test]
fn wrong_magic_number() {
    for layout in [RAW, GZ] {
        let dir = tempfile::tempdir().unwrap();
        // A labels file where the images should be: the most likely mix-up.
        let name = file_name("train", IdxKind::Images, layout);
        let path = write(dir.path(), &name, &labels_file(&[1, 2, 3]), layout);
        let err = read_images_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::WrongMagic {
                    found: 0x0801,
                    kind: IdxKind::Images,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = message_naming(&err, &path);
        assert!(
            msg.ends_with(": wrong magic number 0x00000801, expected 0x00000803 (IDX images)"),
            "{msg}"
        );
    }
}

#[test]
fn not_idx_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train-labels-idx1-ubyte",
        b"<!DOCTYPE html>",
        RAW,
    );
    let err = read_labels_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::WrongMagic {
                kind: IdxKind::Labels,
                ..
            }
        ),
        "{err:?}"
    );
    message_naming(&err, &path);
}

#[test]
fn truncated_header() {
    for layout in [RAW, GZ] {
        let dir = tempfile::tempdir().unwrap();
        let full = images_file(2, 3, 3, &[0; 18]);
        let path = write(dir.path(), "train-images-idx3-ubyte", &full[..10], layout);
        let err = read_images_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TruncatedHeader {
                    expected: 16,
                    found: 10,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = message_naming(&err, &path);
        assert!(msg.contains("10 bytes, expected 16"), "{msg}");
    }
}

#[test]
fn truncated_header_shorter_than_the_magic_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "t10k-labels-idx1-ubyte", &[0, 0, 8], RAW);
    let err = read_labels_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TruncatedHeader {
                expected: 8,
                found: 3,
                ..
            }
        ),
        "{err:?}"
    );
    message_naming(&err, &path);
}

#[test]
fn truncated_body() {
    for layout in [RAW, GZ] {
        let dir = tempfile::tempdir().unwrap();
        let full = images_file(2, 3, 3, &[9; 18]);
        let path = write(
            dir.path(),
            "train-images-idx3-ubyte",
            &full[..full.len() - 5],
            layout,
        );
        let err = read_images_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TruncatedBody {
                    expected: 18,
                    found: 13,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = message_naming(&err, &path);
        assert!(
            msg.contains("promises 18 bytes after it, found 13"),
            "{msg}"
        );
    }
}

#[test]
fn trailing_bytes() {
    for layout in [RAW, GZ] {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = labels_file(&[1, 2, 3]);
        bytes.push(b'\n');
        let path = write(dir.path(), "train-labels-idx1-ubyte", &bytes, layout);
        let err = read_labels_file(&path).unwrap_err();
        assert!(
            matches!(err, DataError::TrailingBytes { expected: 3, .. }),
            "{err:?}"
        );
        message_naming(&err, &path);
    }
}

#[test]
fn image_and_label_counts_differ() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), GZ, 6, 4, 2, 2, 10);
    // Replace the test labels with one label too many.
    let labels_path = write(
        dir.path(),
        &file_name("t10k", IdxKind::Labels, GZ),
        &labels_file(&[0, 1, 2, 3, 4]),
        GZ,
    );
    let err = load_dir(dir.path(), MNIST_CLASSES).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 4,
                labels: 5,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = message_naming(&err, &labels_path);
    assert!(
        msg.contains("t10k-images-idx3-ubyte.gz holds 4 images"),
        "{msg}"
    );
    assert!(msg.contains("holds 5 labels"), "{msg}");
}

#[test]
fn label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), RAW, 6, 4, 2, 2, 10);
    let labels_path = write(
        dir.path(),
        &file_name("train", IdxKind::Labels, RAW),
        &labels_file(&[0, 1, 2, 3, 10, 5]),
        RAW,
    );
    let err = load_dir(dir.path(), MNIST_CLASSES).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 4,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = message_naming(&err, &labels_path);
    assert!(msg.contains("label 10 at index 4"), "{msg}");
    assert!(msg.contains("below 10"), "{msg}");
}

#[test]
fn gzip_stream_cut_off_mid_way() {
    let (pixels, _) = synthetic(50, 28, 28, 10);
    let compressed = gzip(&images_file(50, 28, 28, &pixels));
    // Cut inside the gzip header, inside the deflate data, and inside the
    // 8-byte trailer: each is a different place for the decoder to notice.
    for cut in [5, compressed.len() / 2, compressed.len() - 3] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte.gz");
        std::fs::write(&path, &compressed[..cut]).unwrap();
        let err = read_images_file(&path).unwrap_err();
        assert!(
            matches!(err, DataError::Gzip { .. }),
            "cut at {cut}: {err:?}"
        );
        let msg = message_naming(&err, &path);
        assert!(msg.contains("gzip stream is cut off or corrupt"), "{msg}");
    }
}

#[test]
fn gzip_with_corrupt_checksum() {
    let mut compressed = gzip(&labels_file(&[1, 2, 3]));
    let crc_at = compressed.len() - 8;
    compressed[crc_at] ^= 0xff;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-labels-idx1-ubyte.gz");
    std::fs::write(&path, &compressed).unwrap();
    let err = read_labels_file(&path).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    message_naming(&err, &path);
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "train-images-idx3-ubyte.gz", &[], RAW);
    let err = read_images_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Empty {
                kind: IdxKind::Images,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = message_naming(&err, &path);
    assert!(
        msg.contains("file is empty, expected an IDX images file"),
        "{msg}"
    );
}

#[test]
fn empty_gzip_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "train-labels-idx1-ubyte.gz", &[], GZ);
    let err = read_labels_file(&path).unwrap_err();
    assert!(
        matches!(err, DataError::TruncatedHeader { found: 0, .. }),
        "{err:?}"
    );
    message_naming(&err, &path);
}

#[test]
fn directory_without_the_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), "not MNIST").unwrap();
    let err = load_dir(dir.path(), MNIST_CLASSES).unwrap_err();
    let DataError::MissingFiles { missing, .. } = &err else {
        panic!("expected MissingFiles, got {err:?}");
    };
    assert_eq!(missing.len(), 4);
    let msg = message_naming(&err, dir.path());
    for name in [
        "train-images-idx3-ubyte[.gz] (or train-images.idx3-ubyte[.gz])",
        "train-labels-idx1-ubyte[.gz]",
        "t10k-images-idx3-ubyte[.gz]",
        "t10k-labels-idx1-ubyte[.gz]",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    assert!(
        msg.contains("--data-dir") && msg.contains("HESSFREE_DATA"),
        "{msg}"
    );
}

#[test]
fn directory_with_only_some_files_lists_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), GZ, 3, 2, 2, 2, 10);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let err = load_dir(dir.path(), MNIST_CLASSES).unwrap_err();
    let DataError::MissingFiles { missing, .. } = &err else {
        panic!("expected MissingFiles, got {err:?}");
    };
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].starts_with("t10k-labels-idx1-ubyte[.gz]"),
        "{missing:?}"
    );
}

#[test]
fn header_dims_overflow() {
    for layout in [RAW, GZ] {
        let dir = tempfile::tempdir().unwrap();
        let header = encode(
            IdxKind::Images.magic(),
            &[u32::MAX, u32::MAX, u32::MAX],
            &[],
        );
        let path = write(dir.path(), "train-images-idx3-ubyte", &header, layout);
        let err = read_images_file(&path).unwrap_err();
        assert!(
            matches!(err, DataError::TooLarge { bytes: None, .. }),
            "{err:?}"
        );
        let msg = message_naming(&err, &path);
        assert!(
            msg.contains("4294967295 x 4294967295 x 4294967295"),
            "{msg}"
        );
        assert!(msg.contains("overflow") && msg.contains("4 GiB"), "{msg}");
    }
}

#[test]
fn header_claims_more_than_4_gib() {
    // 70000 images of 256x256 is 4.59e9 bytes, just over the limit, behind
    // a file of a few bytes: the loader must refuse before allocating.
    let dir = tempfile::tempdir().unwrap();
    let header = encode(IdxKind::Images.magic(), &[70_000, 256, 256], &[1, 2, 3]);
    let path = write(dir.path(), "train-images-idx3-ubyte", &header, RAW);
    let err = read_images_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooLarge {
                bytes: Some(4_587_520_000),
                ..
            }
        ),
        "{err:?}"
    );
    let msg = message_naming(&err, &path);
    assert!(
        msg.contains("claim 4587520000 bytes, more than the 4 GiB limit"),
        "{msg}"
    );
}

#[test]
fn header_claims_a_lot_but_file_is_short() {
    // Within the limit, so accepted up front, but the body is missing: the
    // error must come from the data running out, with no 4 GiB allocation.
    let dir = tempfile::tempdir().unwrap();
    let header = encode(IdxKind::Images.magic(), &[65_536, 256, 256], &[1, 2, 3]);
    let path = write(dir.path(), "train-images-idx3-ubyte", &header, RAW);
    let err = read_images_file(&path).unwrap_err();
    assert!(
        matches!(err, DataError::TruncatedBody { found: 3, .. }),
        "{err:?}"
    );
    message_naming(&err, &path);
}

#[test]
fn zero_sized_images() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode(IdxKind::Images.magic(), &[5, 0, 28], &[]);
    let path = write(dir.path(), "train-images-idx3-ubyte", &bytes, RAW);
    let err = read_images_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ZeroSizedImages {
                rows: 0,
                cols: 28,
                ..
            }
        ),
        "{err:?}"
    );
    message_naming(&err, &path);
}

#[test]
fn train_and_test_shapes_differ() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), RAW, 4, 2, 3, 3, 10);
    let (pixels, _) = synthetic(2, 4, 4, 10);
    let path = write(
        dir.path(),
        "t10k-images-idx3-ubyte",
        &images_file(2, 4, 4, &pixels),
        RAW,
    );
    let err = load_dir(dir.path(), MNIST_CLASSES).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ShapeMismatch {
                train: (3, 3),
                test: (4, 4),
                ..
            }
        ),
        "{err:?}"
    );
    message_naming(&err, &path);
}

#[test]
fn unreadable_path_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-file");
    let err = read_labels_file(&path).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    message_naming(&err, &path);
}

#[test]
fn reader_errors_carry_the_given_name() {
    let err = read_images(&[0u8, 0, 8, 1][..], Path::new("<stdin>")).unwrap_err();
    assert!(
        err.to_string().starts_with("<stdin>: wrong magic number"),
        "{err}"
    );
}

#[test]
fn every_layout_reports_damage_the_same_way() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), layout, 3, 2, 2, 2, 10);
        let name = file_name("train", IdxKind::Images, layout);
        let path = write(dir.path(), &name, &labels_file(&[0]), layout);
        let err = load_dir(dir.path(), MNIST_CLASSES).unwrap_err();
        assert!(
            matches!(err, DataError::WrongMagic { .. }),
            "{layout:?}: {err:?}"
        );
        message_naming(&err, &path);
    }
}
