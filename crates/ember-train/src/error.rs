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
    /// The directory chosen for a new run holds a run already.
    #[error(
        "{}: already holds a run; pick another {option} (or resume it: `ember train --resume {}`)",
        dir.display(), dir.display()
    )]
    RunExists {
        /// The directory.
        dir: PathBuf,
        /// The command-line option that chose it.
        option: &'static str,
    },
    /// The directory chosen for a new run holds something other than a run.
    #[error(
        "{}: not empty, and it holds no run: a new run starts only in a new or empty \
         directory; pick another {option}",
        dir.display()
    )]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
        /// The command-line option that chose it.
        option: &'static str,
    },
    /// The loss or the gradient norm became NaN or infinite, or the loss exploded.
    #[error(
        "the {quantity} became {value}{} at step {step}; the run stops at its last good \
         checkpoint (lower optimizer.lr, set optimizer.grad_clip_norm, or set \
         train.on_divergence = \"rollback\")",
        limit.map(|l| format!(", more than three times its first value ({l:.4} is the limit)"))
            .unwrap_or_default()
    )]
    Diverged {
        /// The step at which it happened.
        step: u64,
        /// What went wrong: `loss`, `gradient norm` or `sum of absolute weights`.
        quantity: &'static str,
        /// The value.
        value: f64,
        /// For an exploding loss, the limit it passed: three times the run's first loss
        /// (char-rnn's rule).
        limit: Option<f64>,
    },
    /// The ranks of a data-parallel run no longer hold the same weights.
    #[error(
        "at step {step} the weights of rank(s) {differing:?} differ from rank 0's: the ranks no \
         longer train one model; the run stops at its last checkpoint"
    )]
    RanksDiverged {
        /// The step of the comparison.
        step: u64,
        /// The ranks whose weights differ from rank 0's.
        differing: Vec<usize>,
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
    /// A command's output path is not one it may write.
    #[error("{}: {message}", path.display())]
    Output {
        /// The path given.
        path: PathBuf,
        /// Why it is refused.
        message: String,
    },
    /// The command would need more memory than this process can have: refused before anything
    /// is allocated or created.
    #[error("{message}")]
    TooLarge {
        /// The estimate, in bytes.
        needed: u64,
        /// The memory available, in bytes.
        available: u64,
        /// The estimate by part, the limit that applies and what to change.
        message: String,
    },
    /// A line of `metrics.jsonl` other than the last is damaged.
    #[error("{path}: line {line} is damaged ({message}); remove or repair it")]
    Metrics {
        /// The metrics file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What the JSON reader said.
        message: String,
    },
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
