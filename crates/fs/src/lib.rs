//! The one atomic file writer of hessfree (weights, checkpoints, reports),
//! in a crate of its own below every other so that the model, the solvers
//! and the report crate can share it without depending on each other.
//!
//! A run can be interrupted (Ctrl-C, a CI timeout, a killed MPI rank) at any
//! moment, and a half-written `summary.json` or truncated weights file that
//! looks like a real one is worse than no file. So every file is written to
//! a temporary file in the destination directory, synced, and renamed over
//! the destination: a rename within one directory is atomic on POSIX file
//! systems, so readers see the old file or the complete new one, and a
//! failed write leaves no temporary file behind.

#![warn(missing_docs)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temporary files created by different threads of one
/// process; the process id distinguishes processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces (or creates) `path` with `bytes`. The parent
/// directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Atomically replaces (or creates) `path` with whatever `fill` writes into
/// a buffered writer on a temporary file next to `path`, for output produced
/// incrementally. If `fill` or any later step fails, the temporary file is
/// removed and `path` is left untouched. A path without a file name is an
/// [`io::ErrorKind::InvalidInput`] error.
pub fn write_atomic_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let temp = temp_path_for(path)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    let mut guard = TempGuard {
        path: temp,
        armed: true,
    };
    let mut writer = BufWriter::new(file);
    fill(&mut writer)?;
    let file: File = writer.into_inner().map_err(|e| e.into_error())?;
    // Without the fsync a crash shortly after the rename can leave a
    // zero-length file under the final name on some file systems.
    file.sync_all()?;
    drop(file);
    fs::rename(&guard.path, path)?;
    guard.armed = false;
    sync_parent_dir(path);
    Ok(())
}

/// `.{name}.tmp-{pid}-{counter}` in the same directory as `path`: the same
/// directory so the final rename never crosses a file system, hidden so a
/// leftover from a killed process does not look like a real file.
fn temp_path_for(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(temp_name),
        _ => PathBuf::from(temp_name),
    })
}

/// Makes the rename itself durable. Best effort: some file systems refuse to
/// open or sync a directory, and the data is already safely in the file.
fn sync_parent_dir(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// Removes the temporary file on every early return (and on unwinding).
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
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
    fn replaces_the_file_and_leaves_nothing_behind_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"a much longer original content").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // A non-empty directory in the way: the rename fails, and the
        // temporary file goes with it.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(write_atomic(&blocked, b"three").is_err());
        assert_eq!(dir_entries(dir.path()), ["blocked", "out.bin"]);
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
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
        assert!(err.to_string().contains("generator failed"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "original");
        assert_eq!(dir_entries(dir.path()), ["keep.txt"]);
    }

    #[test]
    fn concurrent_writers_use_distinct_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.txt");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || write_atomic(path, format!("writer {i}").as_bytes()).unwrap());
            }
        });
        let content = fs::read_to_string(&path).unwrap();
        assert!(content.starts_with("writer "), "{content}");
        assert_eq!(dir_entries(dir.path()), ["shared.txt"]);
    }
}
