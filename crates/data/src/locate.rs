//! Finding the data: which directory, and which files inside it.
//!
//! The directory comes from, in order of precedence, an explicit path (the
//! harness's `--data-dir`), the environment variable [`DATA_DIR_ENV`], and
//! the `data/mnist` folder bundled with the workspace. A higher source that
//! is set but wrong is an error rather than a silent fall-through, so that a
//! typo in `--data-dir` never quietly trains on a different data set.
//!
//! Inside the directory the files may carry torchvision's names
//! (`train-images-idx3-ubyte[.gz]`) or the dotted variant some mirrors use
//! (`train-images.idx3-ubyte[.gz]`).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::idx::IdxKind;

/// Environment variable that overrides the default data directory.
pub const DATA_DIR_ENV: &str = "HESSFREE_DATA";

/// Where a data directory came from; reported in messages so users know
/// which knob to turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataDirSource {
    /// An explicit path, e.g. the harness's `--data-dir` flag.
    Flag,
    /// The [`DATA_DIR_ENV`] environment variable.
    Env,
    /// The workspace's bundled `data/mnist`.
    Default,
}

impl fmt::Display for DataDirSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataDirSource::Flag => f.write_str("--data-dir"),
            DataDirSource::Env => write!(f, "{DATA_DIR_ENV}"),
            DataDirSource::Default => f.write_str("default"),
        }
    }
}

/// A resolved, existing data directory and the source that chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    /// The directory; it existed when it was resolved.
    pub path: PathBuf,
    /// Where the path came from: the flag, the environment or the default.
    pub source: DataDirSource,
}

/// The workspace's bundled `data/mnist`, located from this crate's manifest
/// directory at compile time so it works whatever the current directory is.
pub fn default_data_dir() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    path.canonicalize().unwrap_or(path)
}

/// Picks the data directory: `flag`, else `$HESSFREE_DATA`, else the default.
pub fn resolve_data_dir(flag: Option<&Path>) -> Result<DataDir> {
    resolve_data_dir_with(flag, std::env::var_os(DATA_DIR_ENV))
}

/// [`resolve_data_dir`] with the environment variable's value passed in, so
/// that tests need not mutate the process environment. An empty value counts
/// as unset, as shells make it easy to export one by accident.
pub fn resolve_data_dir_with(flag: Option<&Path>, env: Option<OsString>) -> Result<DataDir> {
    let env = env.filter(|v| !v.is_empty()).map(PathBuf::from);
    let looked = vec![
        (DataDirSource::Flag, flag.map(Path::to_path_buf)),
        (DataDirSource::Env, env),
        (DataDirSource::Default, Some(default_data_dir())),
    ];
    let Some((source, Some(path))) = looked.iter().find(|(_, p)| p.is_some()).cloned() else {
        // The default is always `Some`.
        return Err(DataError::DataDirNotFound { looked });
    };
    if !path.is_dir() {
        return Err(DataError::DataDirNotFound { looked });
    }
    tracing::debug!(path = %path.display(), %source, "resolved data directory");
    Ok(DataDir { path, source })
}

/// Which half of the data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split, files prefixed `train`.
    Train,
    /// The test split, files prefixed `t10k`.
    Test,
}

impl Split {
    /// The file-name prefix MNIST uses for this split.
    pub const fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// The two files of one split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitFiles {
    /// The images file that was found, under one of its [`candidate_names`].
    pub images: PathBuf,
    /// The labels file that was found, under one of its [`candidate_names`].
    pub labels: PathBuf,
}

/// The four files of a data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFiles {
    /// The training split's files.
    pub train: SplitFiles,
    /// The test split's files.
    pub test: SplitFiles,
}

/// The names a file may have, most preferred first. Raw files come before
/// gzip because torchvision keeps both side by side and raw reads faster.
pub fn candidate_names(split: Split, kind: IdxKind) -> [String; 4] {
    let (stem, idx) = match kind {
        IdxKind::Images => ("images", "idx3"),
        IdxKind::Labels => ("labels", "idx1"),
    };
    let prefix = split.prefix();
    let dashed = format!("{prefix}-{stem}-{idx}-ubyte");
    let dotted = format!("{prefix}-{stem}.{idx}-ubyte");
    [
        dashed.clone(),
        format!("{dashed}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ]
}

/// Finds the four IDX files in `dir`, reporting every missing one at once.
pub fn find_files(dir: &Path) -> Result<DataFiles> {
    use IdxKind::{Images, Labels};

    let mut missing = Vec::new();
    let mut find = |split, kind| {
        let names = candidate_names(split, kind);
        let found = names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
        if found.is_none() {
            missing.push(format!("{}[.gz] (or {}[.gz])", names[0], names[2]));
        }
        found.unwrap_or_default()
    };
    let files = DataFiles {
        train: SplitFiles {
            images: find(Split::Train, Images),
            labels: find(Split::Train, Labels),
        },
        test: SplitFiles {
            images: find(Split::Test, Images),
            labels: find(Split::Test, Labels),
        },
    };
    if !missing.is_empty() {
        return Err(DataError::MissingFiles {
            dir: dir.to_path_buf(),
            missing,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_default() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = here.join("src");
        let from_flag = resolve_data_dir_with(Some(here), Some(src.clone().into())).unwrap();
        assert_eq!(from_flag.source, DataDirSource::Flag);
        assert_eq!(from_flag.path, here);
        let from_env = resolve_data_dir_with(None, Some(src.clone().into())).unwrap();
        assert_eq!((from_env.source, from_env.path), (DataDirSource::Env, src));
        let from_default = resolve_data_dir_with(None, Some(OsString::new())).unwrap();
        assert_eq!(from_default.source, DataDirSource::Default);
    }

    #[test]
    fn missing_dir_lists_every_source_and_the_way_out() {
        let bogus = Path::new("/nonexistent/hessfree-test-dir");
        let err = resolve_data_dir_with(None, Some(bogus.into())).unwrap_err();
        assert!(matches!(err, DataError::DataDirNotFound { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("--data-dir: not set"), "{msg}");
        assert!(
            msg.contains("HESSFREE_DATA: /nonexistent/hessfree-test-dir (does not exist)"),
            "{msg}"
        );
        assert!(msg.contains("default: "), "{msg}");
        assert!(msg.contains("--data-dir DIR"), "{msg}");
    }
}
