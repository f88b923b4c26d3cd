use thiserror::Error;

#[derive(Debug, Error)]
pub enum SolverError {
    #[error(transparent)]
    Model(#[from] hessfree_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] hessfree_data::DataError),
    #[error("argmin: {0}")]
    Argmin(String),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("the run diverged: {0}")]
    Diverged(String),
    #[error("dense linear algebra failed: {0}")]
    Dense(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
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

pub type Result<T, E = SolverError> = std::result::Result<T, E>;
