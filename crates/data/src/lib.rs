//! MNIST-shaped data for hessfree: IDX parsing, validation, tensors,
//! batches and sub-samples.
//!
//! The crate knows nothing of models or solvers. It turns a directory of IDX
//! files (MNIST, Fashion-MNIST or any set of the same shape, gzip or raw)
//! into [`Dataset`]s of bytes, checked so that a bad download fails with a
//! message naming the file instead of training on garbage; everything after
//! that (tensors, batches, sub-samples) is deterministic given a seed.
//!
//! ```no_run
//! use hessfree_data::{BatchSampler, MNIST_CLASSES, load_dir, resolve_data_dir};
//! use candle_core::{DType, Device};
//!
//! let dir = resolve_data_dir(None)?; // --data-dir > $HESSFREE_DATA > data/mnist
//! let splits = load_dir(&dir.path, MNIST_CLASSES)?;
//! let mut batches = BatchSampler::new(splits.train.len(), 100, 0)?;
//! let batch = splits.train.select(&batches.next_batch());
//! let tensors = batch.to_tensors(&Device::Cpu, DType::F32)?;
//! assert_eq!(tensors.images.dims(), &[100, 784]);
//! # Ok::<(), hessfree_data::DataError>(())
//! ```

#![warn(missing_docs)]

mod batches;
mod dataset;
mod error;
pub mod idx;
mod locate;

pub use batches::{BatchSampler, SampleSize, SamplerState, permutation, subsample_indices};
pub use dataset::{Dataset, MNIST_CLASSES, PixelStats, Splits, TensorData, load_dir, load_split};
pub use error::{DataError, Result};
pub use idx::{IdxImages, IdxKind};
pub use locate::{
    DATA_DIR_ENV, DataDir, DataDirSource, DataFiles, Split, SplitFiles, candidate_names,
    default_data_dir, find_files, resolve_data_dir, resolve_data_dir_with,
};
