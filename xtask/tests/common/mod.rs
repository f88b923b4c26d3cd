//! A small synthetic MNIST-shaped IDX data set shared by the xtask tests.
#![allow(dead_code)]

use std::path::Path;

use hessfree_data::idx::encode;

/// 28x28 images whose class shows as a bright band in row `2 + 2·label`,
/// plus a little shared noise so classes overlap somewhat.
pub fn write_split(dir: &Path, prefix: &str, n: usize) {
    let mut pixels = vec![0u8; n * 784];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let label = (i * 7 % 10) as u8;
        labels[i] = label;
        let row = 2 + 2 * label as usize;
        for c in 4..24 {
            pixels[i * 784 + row * 28 + c] = 200 + (i % 50) as u8;
        }
        pixels[i * 784 + 14 * 28 + (i % 28)] = 90;
    }
    std::fs::write(
        dir.join(format!("{prefix}-images-idx3-ubyte")),
        encode(0x803, &[n as u32, 28, 28], &pixels),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{prefix}-labels-idx1-ubyte")),
        encode(0x801, &[n as u32], &labels),
    )
    .unwrap();
}

/// Train and test splits of the given sizes in `dir`.
pub fn write_dataset(dir: &Path, train: usize, test: usize) {
    write_split(dir, "train", train);
    write_split(dir, "t10k", test);
}

/// A temporary directory with 300 training and 100 test images.
pub fn dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 300, 100);
    dir
}

/// The trace without its wall-time column.
pub fn trace_without_time(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("trace.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(2);
            f.join(",")
        })
        .collect()
}
