use thiserror::Error;

/// Everything that can go wrong while building or evaluating a model.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("parameter vector has {found} entries, the layout `{layout}` expects {expected}")]
    ParamLength {
        layout: String,
        expected: usize,
        found: usize,
    },
    #[error("no parameter named `{name}`; this layout has: {available}")]
    UnknownParam { name: String, available: String },
    #[error("invalid model specification: {0}")]
    Spec(String),
    #[error("batch mismatch: {0}")]
    Batch(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
