//! The one error type of the analysis crate.

use thiserror::Error;

/// Everything that can go wrong in an analysis.
#[derive(Debug, Error)]
pub enum AnalysisError {
    /// The objective or operator failed (a product, a loss, a shape).
    #[error(transparent)]
    Model(#[from] hessfree_model::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// faer's eigendecomposition or SVD did not converge.
    #[error("eigendecomposition of a {dim}x{dim} matrix failed: {message}")]
    Eigen {
        /// Order of the matrix (for an SVD, its larger dimension).
        dim: usize,
        /// faer's error, as text.
        message: String,
    },
    /// An argument that cannot work (too few probes, a zero start vector or
    /// one of the wrong length) or a non-finite product; the message says which.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A model this analysis does not cover, e.g. the assembled rank study
    /// on a model with a bias.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;
