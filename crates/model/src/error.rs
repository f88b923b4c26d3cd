//! The one error type of the model crate.

use thiserror::Error;

/// Everything that can go wrong while building or evaluating a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A tensor operation failed (shapes, dtypes, the device).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A flat parameter vector that is not 1-D or has the wrong length.
    #[error("parameter vector has {found} entries, the layout `{layout}` expects {expected}")]
    ParamLength {
        /// The layout, as [`ParamLayout::describe`](crate::ParamLayout::describe) writes it.
        layout: String,
        /// Entries the layout holds.
        expected: usize,
        /// Entries the tensor holds.
        found: usize,
    },
    /// A view asked for a block the layout does not have.
    #[error("no parameter named `{name}`; this layout has: {available}")]
    UnknownParam {
        /// The name asked for.
        name: String,
        /// The layout's block names, comma-separated.
        available: String,
    },
    /// A model, curvature or kernel description that cannot be parsed or
    /// built, e.g. an unknown name or a zero size.
    #[error("invalid model specification: {0}")]
    Spec(String),
    /// Data that does not fit the model or itself: mismatched rows or
    /// dtypes, an empty batch, an index out of range.
    #[error("batch mismatch: {0}")]
    Batch(String),
    /// A combination this crate does not implement, e.g. compressed-row
    /// inputs on a GPU, or a double backward that candle gets wrong.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The processes of a data-parallel job disagree or cannot reach each
    /// other ([`crate::shard`]).
    #[error("across ranks: {0}")]
    Collective(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
