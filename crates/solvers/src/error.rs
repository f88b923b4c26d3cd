//! The one error type of the solvers crate.

use thiserror::Error;

/// Everything that can go wrong while setting up, running or checkpointing
/// a solver.
#[derive(Debug, Error)]
pub enum SolverError {
    /// The objective or a curvature product failed.
    #[error(transparent)]
    Model(#[from] hessfree_model::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A mini-batch sampler could not be built or restored.
    #[error(transparent)]
    Data(#[from] hessfree_data::DataError),
    /// argmin failed, or its state lacks something a solver put there;
    /// our own errors that passed through argmin come back as themselves.
    #[error("argmin: {0}")]
    Argmin(String),
    /// A setting out of range, or a checkpoint that cannot be read or does
    /// not fit the run; the message says which.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The loss or gradient became non-finite, or no step decreased the
    /// objective (not a descent direction, a failed line search, too many
    /// rejected steps).
    #[error("the run diverged: {0}")]
    Diverged(String),
    /// Dense Newton's eigendecomposition failed.
    #[error("dense linear algebra failed: {0}")]
    Dense(String),
    /// Writing a checkpoint failed.
    #[error("{context}: {source}")]
    Io {
        /// The file and the step that failed.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<argmin::core::Error> for SolverError {
    fn from(e: argmin::core::Error) -> Self {
        // Our own errors travel through argmin boxed; unwrap them again.
        match e.downcast::<SolverError>() {
            Ok(inner) => inner,
            Err(other) => SolverError::Argmin(format!("{other:#}")),
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = SolverError> = std::result::Result<T, E>;
