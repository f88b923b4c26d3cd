//! JSON records (`summary.json`) written atomically.
//!
//! The JSON record is the source every report is regenerated from, so it is
//! pretty-printed (reviewable diffs) and ends in a newline (POSIX text file).
//! serde_json writes non-finite floats as `null`; callers that need to keep a
//! NaN should record it some other way.

use std::path::Path;

use serde::Serialize;

use crate::error::{ReportError, Result};
use crate::fs::write_atomic;

/// Serialises `value` as pretty-printed JSON with a trailing newline.
pub fn to_json_pretty<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

/// Writes `value` to `path` as pretty-printed JSON, atomically.
pub fn write_json<T: Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    let text = to_json_pretty(value).map_err(|source| ReportError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pretty_json_with_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        let value = serde_json::json!({"name": "sgd", "acc": 0.915, "bad": f64::NAN});
        write_json(&path, &value).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"));
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["name"], "sgd");
        assert!(back["bad"].is_null());
    }
}
