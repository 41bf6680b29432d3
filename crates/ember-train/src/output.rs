//! Files that commands write for the user (`export-torch --out`, a run's `loss.svg`): always
//! regular files, written whole or not at all, and never over a run's own files.

use std::path::Path;

use crate::TrainError;
use crate::checkpoint::write_atomically;
use crate::trainer::{CONFIG_FILE, VOCAB_FILE};

/// Refuses `path` as an output unless it is absent or a regular file (not a symlink, device,
/// FIFO or directory), and, unless `run_file` (the command writes a file of the run itself, as
/// `plot` writes `loss.svg`), unless it lies outside every run directory: an export over a
/// run's `config.toml` would destroy the run.
pub fn check_output(path: &Path, run_file: bool) -> Result<(), TrainError> {
    let refuse = |message: String| TrainError::Output {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refuse(
                "is a symbolic link; give the path of a regular file".into(),
            ));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(refuse(
                "exists and is not a regular file (a directory, device or FIFO)".into(),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(e.to_string())),
    }
    if run_file {
        return Ok(());
    }
    refuse_inside_run(path)
}

/// Refuses `path` if a directory above it holds a run: nothing but the run's own files may be
/// written there (a new run or an export inside a run would mix with it, or destroy it).
pub(crate) fn refuse_inside_run(path: &Path) -> Result<(), TrainError> {
    let refuse = |message: String| TrainError::Output {
        path: path.to_path_buf(),
        message,
    };
    let absolute = std::path::absolute(path).map_err(|e| refuse(e.to_string()))?;
    let parent = absolute.parent().unwrap_or(&absolute);
    // Both spellings: the one given, and the real one behind any symlinked directory.
    let real = std::fs::canonicalize(parent).ok();
    for dir in parent
        .ancestors()
        .chain(real.iter().flat_map(|r| r.ancestors()))
    {
        if dir.join(CONFIG_FILE).is_file() && dir.join(VOCAB_FILE).is_file() {
            return Err(refuse(format!(
                "lies inside the run directory {}; write it outside any run",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` once [`check_output`] accepts it, through a temporary file and a
/// rename: a failed write (a full disk) leaves whatever was there before.
pub fn write_output(path: &Path, bytes: &[u8], run_file: bool) -> Result<(), TrainError> {
    check_output(path, run_file)?;
    write_atomically(path, bytes)
}
