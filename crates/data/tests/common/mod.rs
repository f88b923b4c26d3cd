//! Small synthetic IDX data sets written into temporary directories, so the
//! loader can be tested on every layout and every kind of damage without
//! shipping fixture files.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use hessfree_data::IdxKind;
use hessfree_data::idx::encode;

/// How the four files are named and stored.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub gzip: bool,
    /// `train-images.idx3-ubyte` instead of `train-images-idx3-ubyte`.
    pub dotted: bool,
}

pub const LAYOUTS: [Layout; 4] = [
    Layout {
        gzip: true,
        dotted: false,
    },
    Layout {
        gzip: false,
        dotted: false,
    },
    Layout {
        gzip: true,
        dotted: true,
    },
    Layout {
        gzip: false,
        dotted: true,
    },
];

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// The file name for one split's images or labels in `layout`.
pub fn file_name(prefix: &str, kind: IdxKind, layout: Layout) -> String {
    let (stem, idx) = match kind {
        IdxKind::Images => ("images", "idx3"),
        IdxKind::Labels => ("labels", "idx1"),
    };
    let sep = if layout.dotted { '.' } else { '-' };
    let gz = if layout.gzip { ".gz" } else { "" };
    format!("{prefix}-{stem}{sep}{idx}-ubyte{gz}")
}

/// Writes `bytes` (gzipped if the layout says so) and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8], layout: Layout) -> PathBuf {
    let path = dir.join(name);
    let data = if layout.gzip {
        gzip(bytes)
    } else {
        bytes.to_vec()
    };
    std::fs::write(&path, data).expect("temp dir is writable");
    path
}

/// A deterministic synthetic split: `n` images of `rows x cols` where
/// image i's pixel j is `(i * 31 + j * 7) % 256`, and label i is
/// `i % classes`.
pub fn synthetic(n: usize, rows: usize, cols: usize, classes: u8) -> (Vec<u8>, Vec<u8>) {
    let pixels = (0..n * rows * cols)
        .map(|k| {
            let (i, j) = (k / (rows * cols), k % (rows * cols));
            ((i * 31 + j * 7) % 256) as u8
        })
        .collect();
    let labels = (0..n).map(|i| (i % usize::from(classes)) as u8).collect();
    (pixels, labels)
}

pub fn images_file(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    encode(
        IdxKind::Images.magic(),
        &[n as u32, rows as u32, cols as u32],
        pixels,
    )
}

pub fn labels_file(labels: &[u8]) -> Vec<u8> {
    encode(IdxKind::Labels.magic(), &[labels.len() as u32], labels)
}

/// Writes a complete, valid data set of `train` + `test` samples.
pub fn write_dataset(
    dir: &Path,
    layout: Layout,
    train: usize,
    test: usize,
    rows: usize,
    cols: usize,
    classes: u8,
) {
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let (pixels, labels) = synthetic(n, rows, cols, classes);
        write(
            dir,
            &file_name(prefix, IdxKind::Images, layout),
            &images_file(n, rows, cols, &pixels),
            layout,
        );
        write(
            dir,
            &file_name(prefix, IdxKind::Labels, layout),
            &labels_file(&labels),
            layout,
        );
    }
}
