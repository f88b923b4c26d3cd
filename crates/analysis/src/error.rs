use thiserror::Error;

/// Everything that can go wrong in an analysis.
#[derive(Debug, Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Model(#[from] hessfree_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("eigendecomposition of a {dim}x{dim} matrix failed: {message}")]
    Eigen { dim: usize, message: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;
