//! The in-memory data set and its conversion to candle tensors.
//!
//! Pixels and labels stay `u8` until a model asks for tensors: MNIST's
//! training set is 47 MB as bytes and four times that as `f32`, and keeping
//! bytes means one loaded set can feed f32 and f64 experiments alike.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::batches::{SampleSize, subsample_indices};
use crate::error::{DataError, Result};
use crate::idx::{read_images_file, read_labels_file};
use crate::locate::{SplitFiles, find_files};

/// MNIST's class count, the default for [`load_dir`].
pub const MNIST_CLASSES: u8 = 10;

/// Images and labels of one split.
///
/// The fields are public for cheap read access; code that builds a
/// `Dataset` from parts should go through [`Dataset::new`], which checks
/// that they agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `len() * rows * cols` pixels, image after image, each row-major.
    pub images: Vec<u8>,
    /// One label per image, each below `classes`.
    pub labels: Vec<u8>,
    /// Height of each image in pixels.
    pub rows: usize,
    /// Width of each image in pixels.
    pub cols: usize,
    /// Number of classes; every label is below it.
    pub classes: u8,
}

/// The train and test splits of a data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Splits {
    /// The training split (60 000 samples for MNIST).
    pub train: Dataset,
    /// The test split (10 000 samples for MNIST).
    pub test: Dataset,
}

/// A data set as tensors on one device.
#[derive(Clone, Debug)]
pub struct TensorData {
    /// `[n, rows * cols]`, pixels scaled to [0, 1], in the requested dtype.
    pub images: Tensor,
    /// `[n, classes]`, one-hot, in the requested dtype.
    pub one_hot: Tensor,
    /// `[n]`, `u32`, for losses and accuracy that take class indices.
    pub labels: Tensor,
}

/// Pixel statistics of one split, as printed by `cargo xtask data-info`.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelStats {
    /// Mean pixel value, scaled to [0, 1].
    pub mean: f64,
    /// Fraction of all pixel values that are exactly zero.
    pub zero_fraction: f64,
    /// Number of pixel positions that are zero in every image. Their weights
    /// never see a gradient and lie in the Hessian's null space.
    pub always_zero_positions: usize,
    /// Pixel positions per image, the denominator of the above.
    pub positions: usize,
}

impl PixelStats {
    /// Fraction of pixel positions that are zero in every image.
    pub fn always_zero_fraction(&self) -> f64 {
        if self.positions == 0 {
            0.0
        } else {
            self.always_zero_positions as f64 / self.positions as f64
        }
    }
}

impl Dataset {
    /// Builds a data set from parts, checking that the buffer lengths fit the
    /// shape and that every label is below `classes`.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        rows: usize,
        cols: usize,
        classes: u8,
    ) -> Result<Self> {
        let invalid = |reason: String| Err(DataError::InvalidDataset { reason });
        if rows == 0 || cols == 0 {
            return invalid(format!("images are {rows}x{cols}, expected at least 1x1"));
        }
        let expected = rows
            .checked_mul(cols)
            .and_then(|p| p.checked_mul(labels.len()));
        if expected != Some(images.len()) {
            return invalid(format!(
                "{} pixels for {} labels of {rows}x{cols} images",
                images.len(),
                labels.len(),
            ));
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| **l >= classes) {
            return invalid(format!(
                "label {label} at index {index}, expected a label below {classes}"
            ));
        }
        Ok(Dataset {
            images,
            labels,
            rows,
            cols,
            classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set holds no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image, i.e. the model's input width.
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `i`, row-major.
    ///
    /// # Panics
    /// If `i >= self.len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let p = self.pixels_per_image();
        &self.images[i * p..(i + 1) * p]
    }

    /// How many samples carry each label, indexed by label.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; usize::from(self.classes)];
        for &label in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(label)) {
                *c += 1;
            }
        }
        counts
    }

    /// Which pixel positions are zero in every image.
    pub fn always_zero_mask(&self) -> Vec<bool> {
        let mut zero = vec![true; self.pixels_per_image()];
        for image in self.images.chunks_exact(self.pixels_per_image().max(1)) {
            for (z, &p) in zero.iter_mut().zip(image) {
                *z &= p == 0;
            }
        }
        zero
    }

    /// Mean pixel value, zero fraction and always-zero positions.
    pub fn pixel_stats(&self) -> PixelStats {
        let total = self.images.len();
        let sum: u64 = self.images.iter().map(|&p| u64::from(p)).sum();
        let zeros = self.images.iter().filter(|&&p| p == 0).count();
        let ratio = |num: f64| if total == 0 { 0.0 } else { num / total as f64 };
        PixelStats {
            mean: ratio(sum as f64 / 255.0),
            zero_fraction: ratio(zeros as f64),
            always_zero_positions: self.always_zero_mask().iter().filter(|&&z| z).count(),
            positions: self.pixels_per_image(),
        }
    }

    /// The samples at `indices`, in that order (repeats allowed).
    ///
    /// # Panics
    /// If an index is `>= self.len()`, like slice indexing.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.pixels_per_image());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            rows: self.rows,
            cols: self.cols,
            classes: self.classes,
        }
    }

    /// A deterministic subset of about `fraction * len()` samples, in their
    /// original order; see [`subsample_indices`].
    pub fn subsample(&self, fraction: f64, seed: u64) -> Result<Dataset> {
        let indices = subsample_indices(self.len(), SampleSize::Fraction(fraction), seed)?;
        Ok(self.select(&indices))
    }

    /// Converts to tensors on `device`: pixels as `pixel / 255` and one-hot
    /// labels in `dtype`, class indices as `u32`.
    ///
    /// The bytes cross to the device as `u8` and are converted there, which
    /// moves a quarter of the data an `f32` upload would. Scaling multiplies
    /// by `1/255` as TensorFlow's MNIST reader does, so f32 inputs match the
    /// notebook's bit for bit.
    pub fn to_tensors(&self, device: &Device, dtype: DType) -> Result<TensorData> {
        if !dtype.is_float() {
            return Err(DataError::NonFloatDtype { dtype });
        }
        let n = self.len();
        let images = Tensor::from_slice(&self.images, (n, self.pixels_per_image()), device)?
            .to_dtype(dtype)?
            .affine(1.0 / 255.0, 0.0)?;

        let classes = usize::from(self.classes);
        let mut one_hot = vec![0u8; n * classes];
        for (row, &label) in one_hot.chunks_exact_mut(classes.max(1)).zip(&self.labels) {
            if let Some(cell) = row.get_mut(usize::from(label)) {
                *cell = 1;
            }
        }
        let one_hot = Tensor::from_vec(one_hot, (n, classes), device)?.to_dtype(dtype)?;

        let labels: Vec<u32> = self.labels.iter().map(|&l| u32::from(l)).collect();
        let labels = Tensor::from_vec(labels, n, device)?;
        Ok(TensorData {
            images,
            one_hot,
            labels,
        })
    }
}

/// Loads one split from its images and labels files, checking that they
/// agree in count and that every label is below `classes`.
pub fn load_split(files: &SplitFiles, classes: u8) -> Result<Dataset> {
    let labels = read_labels_file(&files.labels)?;
    let images = read_images_file(&files.images)?;
    if images.count != labels.len() {
        return Err(DataError::CountMismatch {
            images_path: files.images.clone(),
            labels_path: files.labels.clone(),
            images: images.count,
            labels: labels.len(),
        });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| **l >= classes) {
        return Err(DataError::LabelOutOfRange {
            path: files.labels.clone(),
            index,
            label,
            classes,
        });
    }
    Ok(Dataset {
        images: images.pixels,
        labels,
        rows: images.rows,
        cols: images.cols,
        classes,
    })
}

/// Loads the train and test splits of an MNIST-shaped IDX data set
/// (MNIST, Fashion-MNIST, KMNIST, ...) from `dir`. Use [`MNIST_CLASSES`]
/// for `classes` unless the set has a different number of classes.
pub fn load_dir(dir: &Path, classes: u8) -> Result<Splits> {
    let start = Instant::now();
    let files = find_files(dir)?;
    let train = load_split(&files.train, classes)?;
    let test = load_split(&files.test, classes)?;
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(DataError::ShapeMismatch {
            train_path: files.train.images,
            test_path: files.test.images,
            train: (train.rows, train.cols),
            test: (test.rows, test.cols),
        });
    }
    tracing::info!(
        dir = %dir.display(),
        train = train.len(),
        test = test.len(),
        rows = train.rows,
        cols = train.cols,
        elapsed_ms = start.elapsed().as_millis() as u64,
        "loaded data set"
    );
    Ok(Splits { train, test })
}
