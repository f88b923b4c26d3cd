//! Report files go through hessfree's one atomic writer
//! ([`hessfree_fs::write_atomic_with`]): a reader, or a later `--check`,
//! never sees a half-written report. This module only adds directory
//! creation and errors that name the file.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::error::{ReportError, Result};

/// Creates `dir` and any missing parents; succeeds if it already exists as a
/// directory.
pub fn ensure_dir(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    fs::create_dir_all(dir).map_err(|e| ReportError::io("create directory", dir, e))?;
    // create_dir_all succeeds on an existing directory but also, on some
    // platforms, reports odd errors for an existing file; check explicitly so
    // the caller learns the real problem.
    if !dir.is_dir() {
        return Err(ReportError::io(
            "create directory",
            dir,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            ),
        ));
    }
    Ok(())
}

/// Atomically replaces (or creates) `path` with `bytes`.
///
/// The parent directory must exist; see [`ensure_dir`].
pub fn write_atomic(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    let bytes = bytes.as_ref();
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Atomically replaces (or creates) `path` with whatever `fill` writes; on
/// any failure `path` is left untouched and no temporary file remains.
pub fn write_atomic_with<F>(path: impl AsRef<Path>, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let path = path.as_ref();
    hessfree_fs::write_atomic_with(path, fill).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidInput && path.file_name().is_none() {
            ReportError::invalid(format!("writing {}", path.display()), e.to_string())
        } else {
            ReportError::io("write", path, e)
        }
    })
}

/// Writes each rendered `(file name, bytes)` into `dir` (created if
/// missing), each atomically.
pub fn write_rendered(dir: impl AsRef<Path>, files: &[(String, Vec<u8>)]) -> Result<()> {
    let dir = dir.as_ref();
    ensure_dir(dir)?;
    for (name, bytes) in files {
        write_atomic(dir.join(name), bytes)?;
    }
    Ok(())
}

/// The rendered files that `dir` lacks or holds with other bytes, as
/// messages naming each (empty: the directory is current).
pub fn stale_files(dir: impl AsRef<Path>, files: &[(String, Vec<u8>)]) -> Vec<String> {
    let dir = dir.as_ref();
    let mut stale = Vec::new();
    for (name, bytes) in files {
        let path = dir.join(name);
        match fs::read(&path) {
            Ok(on_disk) if &on_disk == bytes => {}
            Ok(_) => stale.push(format!(
                "{} differs from what its data produce",
                path.display()
            )),
            Err(_) => stale.push(format!("{} is missing", path.display())),
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_new_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write_atomic(&path, b"hello").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(dir_entries(dir.path()), vec!["out.txt".to_string()]);
    }

    #[test]
    fn replaces_existing_content_entirely() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        fs::write(&path, "a much longer original content").unwrap();
        write_atomic(&path, "short").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "short");
        assert_eq!(dir_entries(dir.path()), vec!["out.txt".to_string()]);
    }

    #[test]
    fn failing_writer_keeps_old_file_and_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.txt");
        fs::write(&path, "original").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("generator failed"))
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("keep.txt"), "{msg}");
        assert!(msg.contains("generator failed"), "{msg}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "original");
        assert_eq!(dir_entries(dir.path()), vec!["keep.txt".to_string()]);
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("out.svg");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(matches!(err, ReportError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn read_only_directory_is_an_error_naming_the_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
        let path = locked.join("out.json");
        let result = write_atomic(&path, b"{}");
        // Root ignores directory permissions; only assert where they apply.
        let probe = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(locked.join("probe"));
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        if probe.is_err() {
            let err = result.unwrap_err();
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            assert!(dir_entries(&locked).is_empty());
        }
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        let err = write_atomic("/", b"x").unwrap_err();
        assert!(matches!(err, ReportError::InvalidInput { .. }), "{err:?}");
    }

    #[test]
    fn writing_onto_a_directory_fails_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inner"), "x").unwrap();
        let err = write_atomic(&target, b"x").unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
        assert_eq!(dir_entries(dir.path()), vec!["sub".to_string()]);
    }

    #[test]
    fn ensure_dir_creates_nested_and_rejects_files() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        ensure_dir(&nested).unwrap();
        assert!(nested.is_dir());
        ensure_dir(&nested).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = ensure_dir(&file).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }

    #[test]
    fn concurrent_writers_use_distinct_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.txt");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || write_atomic(path, format!("writer {i}")).unwrap());
            }
        });
        let content = fs::read_to_string(&path).unwrap();
        assert!(content.starts_with("writer "), "{content}");
        assert_eq!(dir_entries(dir.path()), vec!["shared.txt".to_string()]);
    }
}
