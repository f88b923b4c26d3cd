//! The one error type of the data crate.
//!
//! Every variant that comes from a file carries that file's path, and its
//! message says what was expected and what was found, so that a user who
//! points the loader at the wrong directory can fix it from the message alone.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::idx::IdxKind;
use crate::locate::DataDirSource;

/// Shorthand used throughout the crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// How users are told to point the loader elsewhere; kept in one place so
/// every message that needs it says the same thing.
pub(crate) const POINT_ELSEWHERE: &str =
    "point elsewhere with `--data-dir DIR` or the environment variable HESSFREE_DATA=DIR";

/// Everything that can go wrong while locating, reading, validating or
/// converting a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The operating system refused a read (permissions, a vanished file...).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A zero-byte file; usually an interrupted download.
    #[error("{}: file is empty, expected an {kind} file", path.display())]
    Empty {
        /// The empty file.
        path: PathBuf,
        /// The kind of file that was expected.
        kind: IdxKind,
    },

    /// The first four bytes are not the IDX magic number for this kind of file,
    /// e.g. an images file where labels were expected, or not IDX at all.
    #[error(
        "{}: wrong magic number {found:#010x}, expected {:#010x} ({kind})",
        path.display(),
        kind.magic()
    )]
    WrongMagic {
        /// The file that was read.
        path: PathBuf,
        /// The kind of file that was expected.
        kind: IdxKind,
        /// The first four bytes, read as a big-endian `u32`.
        found: u32,
    },

    /// The (decompressed) data ends before the header does.
    #[error(
        "{}: truncated header: {found} bytes, expected {expected} for an {kind} header",
        path.display()
    )]
    TruncatedHeader {
        /// The file that was read.
        path: PathBuf,
        /// The kind of file that was expected.
        kind: IdxKind,
        /// Header length in bytes that this kind needs.
        expected: usize,
        /// Bytes the (decompressed) data holds, fewer than `expected`.
        found: usize,
    },

    /// The (decompressed) data ends before the body the header promises.
    #[error(
        "{}: truncated body: the header promises {expected} bytes after it, found {found}",
        path.display()
    )]
    TruncatedBody {
        /// The file that was read.
        path: PathBuf,
        /// The kind of file that was expected.
        kind: IdxKind,
        /// Body length in bytes that the header's dimensions imply.
        expected: u64,
        /// Body bytes present after the header, fewer than `expected`.
        found: u64,
    },

    /// More bytes follow the body the header promises; the header and the
    /// data disagree, so neither can be trusted.
    #[error(
        "{}: trailing bytes: the header promises {expected} bytes after it, but more follow",
        path.display()
    )]
    TrailingBytes {
        /// The file that was read.
        path: PathBuf,
        /// The kind of file that was expected.
        kind: IdxKind,
        /// Body length in bytes that the header's dimensions imply.
        expected: u64,
    },

    /// The file starts like gzip but does not decompress to the end: cut off
    /// mid-way (an interrupted download) or corrupt.
    #[error(
        "{}: gzip stream is cut off or corrupt after {decompressed} decompressed bytes: {source}",
        path.display()
    )]
    Gzip {
        /// The file that was read.
        path: PathBuf,
        /// Decompressed bytes delivered before the stream failed.
        decompressed: u64,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },

    /// The header's dimensions multiply to more than [`crate::idx::MAX_BODY_BYTES`]
    /// (or overflow 64 bits). Rejected before anything is allocated, so a
    /// hostile or corrupt header cannot make the loader ask for terabytes.
    #[error(
        "{}: header dimensions {} claim {}, more than the 4 GiB limit",
        path.display(),
        DimsDisplay(dims),
        BytesDisplay(*bytes)
    )]
    TooLarge {
        /// The file that was read.
        path: PathBuf,
        /// The dimensions as the header lists them, after the magic number.
        dims: Vec<u32>,
        /// `None` when the product overflows `u64`.
        bytes: Option<u64>,
    },

    /// Images with no rows or no columns cannot feed a model.
    #[error(
        "{}: header claims {rows}x{cols} images, expected at least 1x1",
        path.display()
    )]
    ZeroSizedImages {
        /// The images file that was read.
        path: PathBuf,
        /// Rows per image that the header claims.
        rows: usize,
        /// Columns per image that the header claims.
        cols: usize,
    },

    /// The images file and the labels file of one split disagree on the
    /// number of samples.
    #[error(
        "{} holds {images} images but {} holds {labels} labels, expected the same count",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The split's images file.
        images_path: PathBuf,
        /// The split's labels file.
        labels_path: PathBuf,
        /// Number of images the images file holds.
        images: usize,
        /// Number of labels the labels file holds.
        labels: usize,
    },

    /// A label is not below the class count, e.g. loading a 26-class set
    /// with the default of 10 classes.
    #[error(
        "{}: label {label} at index {index} is out of range, expected a label below {classes}",
        path.display()
    )]
    LabelOutOfRange {
        /// The labels file that was read.
        path: PathBuf,
        /// Position of the first bad label in the file, counting from 0.
        index: usize,
        /// The first label that is out of range.
        label: u8,
        /// The class count the loader was given; labels must be below it.
        classes: u8,
    },

    /// Train and test images differ in shape, so one model cannot take both.
    #[error(
        "{} holds {}x{} images but {} holds {}x{} images, expected the same shape",
        train_path.display(), train.0, train.1,
        test_path.display(), test.0, test.1
    )]
    ShapeMismatch {
        /// The training images file.
        train_path: PathBuf,
        /// The test images file.
        test_path: PathBuf,
        /// `(rows, cols)` of the training images.
        train: (usize, usize),
        /// `(rows, cols)` of the test images.
        test: (usize, usize),
    },

    /// The data directory exists but lacks some of the four IDX files.
    #[error(
        "{}: missing {}; {POINT_ELSEWHERE}",
        dir.display(),
        missing.join(", ")
    )]
    MissingFiles {
        /// The data directory that was searched.
        dir: PathBuf,
        /// The file names that were looked for, one entry per missing file,
        /// e.g. `train-images-idx3-ubyte[.gz] (or train-images.idx3-ubyte[.gz])`.
        missing: Vec<String>,
    },

    /// The chosen data directory does not exist (or is not a directory).
    #[error("{}", DirNotFoundDisplay(looked))]
    DataDirNotFound {
        /// Every source in order of precedence, with the path it named
        /// (`None` where the flag or variable was not given). The first
        /// `Some` is the one that was used.
        looked: Vec<(DataDirSource, Option<PathBuf>)>,
    },

    /// `Dataset::new` got buffers that do not fit the stated shape.
    #[error("inconsistent dataset: {reason}")]
    InvalidDataset {
        /// Which check failed, with the numbers involved.
        reason: String,
    },

    /// A sub-sample that cannot be drawn, e.g. more samples than exist.
    #[error("invalid sub-sample: {reason}")]
    InvalidSubsample {
        /// What was asked for and what the population allows.
        reason: String,
    },

    /// A batch size of zero, or larger than the data set.
    #[error("invalid batch size {batch_size} for {len} samples, expected 1..={len}")]
    InvalidBatchSize {
        /// The batch size asked for.
        batch_size: usize,
        /// Number of samples to draw from.
        len: usize,
    },

    /// A checkpointed sampler state that does not fit its own sizes.
    #[error("invalid sampler state: {reason}")]
    InvalidSamplerState {
        /// Which field does not fit, and why.
        reason: String,
    },

    /// Pixels scaled to [0, 1] need a floating-point dtype.
    #[error("cannot convert pixels to {dtype:?}, expected a floating-point dtype")]
    NonFloatDtype {
        /// The non-floating-point dtype that was asked for.
        dtype: candle_core::DType,
    },

    /// candle failed to build a tensor (e.g. the device is unavailable).
    #[error("converting the dataset to tensors: {0}")]
    Tensor(#[from] candle_core::Error),
}

struct DimsDisplay<'a>(&'a [u32]);

impl fmt::Display for DimsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" x ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

struct BytesDisplay(Option<u64>);

impl fmt::Display for BytesDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(b) => write!(f, "{b} bytes"),
            None => f.write_str("more than 2^64 bytes (overflow)"),
        }
    }
}

struct DirNotFoundDisplay<'a>(&'a [(DataDirSource, Option<PathBuf>)]);

impl fmt::Display for DirNotFoundDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.0.iter().position(|(_, p)| p.is_some());
        f.write_str("data directory not found; looked at, in order of precedence:")?;
        for (i, (source, path)) in self.0.iter().enumerate() {
            match (path, used) {
                (None, _) => write!(f, "\n  {source}: not set")?,
                (Some(p), Some(u)) if u == i => {
                    write!(f, "\n  {source}: {} (does not exist)", p.display())?
                }
                (Some(p), _) => write!(
                    f,
                    "\n  {source}: {} (not used: overridden above)",
                    p.display()
                )?,
            }
        }
        write!(f, "\n{POINT_ELSEWHERE}")
    }
}
