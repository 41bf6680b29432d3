//! Run directories: made and locked by one process before anything is written into them, and
//! reopened for resuming only under the same lock and with the same meaning.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use fs2::FileExt;

use crate::checkpoint::{CarriedLoader, Checkpoint, CheckpointDir, write_atomically};
use crate::config::RunConfig;
use crate::error::{expect_run, io_error};
use crate::output::refuse_inside_run;
use crate::trainer::{CONFIG_FILE, METRICS_FILE, MetricsRecord, truncate_metrics};
use crate::{Ranks, TrainError};

const LOCK_FILE: &str = "lock";

/// The lock on a run directory: while a process holds it, no other trains in, imports into or
/// starts a run in that directory. Released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Makes `dir` the directory of a new run, locked by this process: created if absent, or an
/// existing empty one (a `lock` left by an earlier process aside). A directory that holds a
/// run, anything else, or another process's lock, or that lies inside another run, is refused;
/// `option` names the command-line option that chose `dir` in that error.
pub(crate) fn create_run_dir(dir: &Path, option: &'static str) -> Result<RunLock, TrainError> {
    refuse_run(dir, option)?;
    refuse_inside_run(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_error(dir)(e)),
        _ => {}
    }
    let lock = lock_run_dir(dir)?;
    // Checked again under the lock: another process may have started a run here since the
    // first check, and released its lock already.
    refuse_run(dir, option)?;
    let entries = fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        if entry.map_err(io_error(dir))?.file_name() != LOCK_FILE {
            return Err(TrainError::NotEmpty {
                dir: dir.to_path_buf(),
                option,
            });
        }
    }
    Ok(lock)
}

fn refuse_run(dir: &Path, option: &'static str) -> Result<(), TrainError> {
    match fs::symlink_metadata(dir.join(CONFIG_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(TrainError::RunExists {
            dir: dir.to_path_buf(),
            option,
        }),
    }
}

fn lock_run_dir(run_dir: &Path) -> Result<RunLock, TrainError> {
    let path = run_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.try_lock_exclusive()
        .map_err(|_| TrainError::Locked(run_dir.to_path_buf()))?;
    Ok(RunLock { _file: file })
}

/// Makes `run_dir` a new run as rank 0 of `ranks` does: creates and locks it (see
/// [`create_run_dir`]), writes what `save` writes (the vocabulary) and then `config`. Other ranks
/// write nothing and hold no lock.
pub(crate) fn start_run(
    run_dir: &Path,
    ranks: &Ranks,
    config: &RunConfig,
    save: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<Option<RunLock>, TrainError> {
    if !ranks.is_primary() {
        return Ok(None);
    }
    let lock = create_run_dir(run_dir, "--run-dir")?;
    save(run_dir)?;
    write_atomically(&run_dir.join(CONFIG_FILE), config.to_toml().as_bytes())?;
    Ok(Some(lock))
}

/// What rank 0 of a reopened run writes before training on from `step`: the metrics lines past
/// it dropped (they are logged again) and the config with its overrides.
pub(crate) fn continue_run(
    run_dir: &Path,
    ranks: &Ranks,
    config: &RunConfig,
    step: u64,
) -> Result<(), TrainError> {
    if ranks.is_primary() {
        truncate_metrics(&run_dir.join(METRICS_FILE), step)?;
        write_atomically(&run_dir.join(CONFIG_FILE), config.to_toml().as_bytes())?;
    }
    Ok(())
}

/// A run reopened for more training: its lock, and its config with `overrides` applied, which
/// may change how it trains but not what its checkpoints mean ([`RunConfig::meaning_changes`]).
/// A `data.path` relative to the directory the run was started in is resolved here.
/// `lock` false reopens it for reading alone (a data-parallel rank other than 0, whose rank 0
/// holds the lock).
pub(crate) fn reopen_run(
    run_dir: &Path,
    overrides: &[String],
    lock: bool,
) -> Result<(Option<RunLock>, RunConfig), TrainError> {
    expect_run(run_dir)?;
    let lock = if lock {
        Some(lock_run_dir(run_dir)?)
    } else {
        None
    };
    let config_path = run_dir.join(CONFIG_FILE);
    let saved = RunConfig::load(&config_path, &[])?;
    let mut config = RunConfig::load(&config_path, overrides)?;
    let changed = config.meaning_changes(&saved);
    if !changed.is_empty() {
        return Err(TrainError::Config {
            origin: "--set".into(),
            message: format!(
                "a resumed run keeps its [data], [model] and [task], which say what its \
                 checkpoints mean: {}; only [train], [optimizer], {} may change",
                changed.join(", "),
                RunConfig::REOPENABLE.join(", ")
            ),
        });
    }
    if !config.data.path.exists() && config.data.path.is_relative() {
        let here = std::env::current_dir().unwrap_or_default();
        return Err(TrainError::Config {
            origin: config_path.display().to_string(),
            message: format!(
                "`data.path` = {:?} is relative to the directory the run was started in, and \
                 there is no such file from {}: resume from that directory, or give \
                 --set data.path=\"/absolute/path\"",
                config.data.path,
                here.display()
            ),
        });
    }
    config.data.path = absolute(&config.data.path)?;
    Ok((lock, config))
}

/// `path` made absolute from the working directory, so that a run can be resumed from anywhere.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, TrainError> {
    std::path::absolute(path).map_err(io_error(path))
}

/// Where a reopened run goes on: its newest intact checkpoint, loaded into `template` (see
/// [`CheckpointDir::load_latest`]), or step 0 with `template` and `optimizer` as they are only
/// when the run verifiably never reached a checkpoint: no step listed, and no metrics line
/// beyond the first scheduled checkpoint (a kill before that one finished). Anything else is an
/// error; nothing is truncated or rewritten before this returns.
pub(crate) fn resume_checkpoint<M: Module>(
    run_dir: &Path,
    config: &RunConfig,
    template: M,
    optimizer: ModuleOptimizer,
    device: &Device,
    carried: CarriedLoader<M>,
) -> Result<Checkpoint<M>, TrainError> {
    let checkpoints = CheckpointDir::new(run_dir);
    if !checkpoints.steps()?.is_empty() {
        return checkpoints.load_latest(template, optimizer, device, carried);
    }
    let metrics_path = run_dir.join(METRICS_FILE);
    let logged = match fs::read_to_string(&metrics_path) {
        Ok(text) => text
            .lines()
            .filter_map(|line| serde_json::from_str::<MetricsRecord>(line).ok())
            .map(|record| record.step)
            .max(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&metrics_path)(e)),
    };
    let first_checkpoint = config.train.checkpoint_every.min(config.train.steps);
    if let Some(step) = logged.filter(|&step| step > first_checkpoint) {
        return Err(TrainError::Checkpoint {
            path: run_dir.join("checkpoints"),
            message: format!(
                "no checkpoint, yet {METRICS_FILE} records step {step}: the checkpoints were \
                 lost, and starting the run over would discard its history (move the run \
                 aside to start over)"
            ),
        });
    }
    log::warn!(
        "{} has no checkpoint yet: starting the run from step 0",
        run_dir.display()
    );
    Ok(Checkpoint::fresh(template, optimizer))
}
