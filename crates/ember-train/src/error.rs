use std::path::PathBuf;

/// Why training, a checkpoint or an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A config file or override is invalid.
    #[error("{origin}: {message}")]
    Config {
        /// The file, or the `--set` assignment.
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The corpus or vocabulary could not be used.
    #[error(transparent)]
    Data(#[from] ember_data::DataError),
    /// A checkpoint could not be read or written.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The directory holds no run (no `config.toml`).
    #[error("{0}: no run in this directory (it has no config.toml)")]
    NoRun(PathBuf),
    /// The run directory holds no usable checkpoint.
    #[error("{0}: no checkpoint to resume from")]
    NoCheckpoint(PathBuf),
    /// Another process is training in the run directory.
    #[error("{0}: another `ember train` holds this run directory's lock")]
    Locked(PathBuf),
    /// The run directory exists already and holds a run.
    #[error(
        "{0}: already holds a run; resume it with `ember train --resume {0}` or pick another --run-dir"
    )]
    RunExists(PathBuf),
    /// The loss or the gradient norm became NaN or infinite.
    #[error(
        "the {quantity} became {value} at step {step}; the run stops at its last good checkpoint \
         (lower optimizer.lr, set optimizer.grad_clip_norm, or set train.on_divergence = \"rollback\")"
    )]
    Diverged {
        /// The step at which it happened.
        step: u64,
        /// What became non-finite: `loss` or `gradient norm`.
        quantity: &'static str,
        /// The value.
        value: f64,
    },
    /// A checkpoint does not fit the run's model or vocabulary.
    #[error("{path}: {message}")]
    Mismatch {
        /// The checkpoint.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// A PyTorch state dict could not be used.
    #[error(transparent)]
    Torch(#[from] ember_model::torch::TorchError),
    /// The loss plot could not be drawn.
    #[error("plot {path}: {message}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Checks that `run_dir` holds a run, before anything is read from it or written into it.
pub(crate) fn expect_run(run_dir: &std::path::Path) -> Result<(), TrainError> {
    if run_dir.join(crate::CONFIG_FILE).is_file() {
        Ok(())
    } else {
        Err(TrainError::NoRun(run_dir.to_path_buf()))
    }
}

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
