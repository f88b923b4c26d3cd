//! The crate's error type.
//!
//! Every failure names what the crate was doing and, where a file is
//! involved, which file: a report that fails to write is usually read by
//! someone looking at a CI log, and "permission denied" alone does not say
//! which of twenty output files was the problem.

use std::path::PathBuf;

/// The result type used throughout this crate.
pub type Result<T, E = ReportError> = std::result::Result<T, E>;

/// Why producing a report file (or the bytes for one) failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file-system operation failed. `action` says which step (for example
    /// "create temporary file for" or "rename into place"), `path` is the file
    /// the caller asked for (not the temporary one, which never survives).
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// The step that failed, phrased to follow "cannot".
        action: &'static str,
        /// The file the caller asked for.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The input cannot be turned into the requested output: a zero-sized
    /// image, a pixel buffer of the wrong length, a CSV row with the wrong
    /// number of fields. `what` names the artefact being built.
    #[error("{what}: {reason}")]
    InvalidInput {
        /// The artefact being built, for the message.
        what: String,
        /// What is wrong with the input.
        reason: String,
    },

    /// plotters failed while drawing a chart. `what` names the chart (its
    /// title) so the message points at the figure that failed.
    #[error("drawing {what}: {message}")]
    Plot {
        /// The chart, by its title (or "untitled plot").
        what: String,
        /// plotters' error, as text.
        message: String,
    },

    /// The image crate failed to encode a PNG (in memory, before any file is
    /// touched).
    #[error("encoding {what} as PNG: {source}")]
    Encode {
        /// The image being encoded, for the message.
        what: String,
        /// The image crate's error.
        #[source]
        source: image::ImageError,
    },

    /// serde_json failed to serialise a value destined for `path`.
    #[error("serialising JSON for {path}: {source}")]
    Json {
        /// The file the JSON was meant for; nothing was written to it.
        path: PathBuf,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

impl ReportError {
    /// Shorthand for [`ReportError::InvalidInput`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`ReportError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
