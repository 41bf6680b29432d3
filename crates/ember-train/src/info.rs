//! What a run directory holds, read without loading a tensor: `ember info`, as char-rnn's
//! `inspect_checkpoint.lua` was.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use ember_data::Vocab;
use ember_model::{Seq2Seq, SequenceClassifier, SequenceTagger};

use crate::TrainError;
use crate::checkpoint::CheckpointDir;
use crate::config::{RunConfig, TaskKind};
use crate::error::{expect_run, io_error};
use crate::metrics::read_metrics;
use crate::task::{SequenceTask, TaskVocab};
use crate::trainer::{CONFIG_FILE, METRICS_FILE, MetricsRecord, VOCAB_FILE, model_config};

/// A run's description.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The run directory.
    pub dir: PathBuf,
    /// Its resolved config, as `config.toml` holds it.
    pub config_text: String,
    /// The same, parsed.
    pub config: RunConfig,
    /// The model's weights.
    pub parameters: usize,
    /// Every checkpoint, oldest first: its step and the bytes of its files.
    pub checkpoints: Vec<(u64, u64)>,
    /// The lowest validation loss logged and its step.
    pub best_val_loss: Option<(u64, f64)>,
    /// The highest validation accuracy logged and its step (sequence tasks).
    pub best_val_accuracy: Option<(u64, f64)>,
    /// The last logged step and its training loss.
    pub last_logged: Option<(u64, f64)>,
    /// The backend that wrote the newest checkpoint, where recorded.
    pub backend: Option<String>,
}

impl RunInfo {
    /// Reads the run in `dir`: its config, vocabulary (for the parameter count), metrics and
    /// the counters of its newest checkpoint. The model is not loaded: its size comes from the
    /// shapes of a template whose weights are never drawn.
    pub fn read(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        expect_run(dir)?;
        let config_path = dir.join(CONFIG_FILE);
        let config_text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let config = RunConfig::load(&config_path, &[])?;
        let parameters = match config.task.kind {
            TaskKind::LanguageModel => {
                let vocab = Vocab::load(&dir.join(VOCAB_FILE))?;
                model_config(&config, vocab.len()).init(device).num_params()
            }
            TaskKind::Classify => template_size::<SequenceClassifier>(dir, &config, device)?,
            TaskKind::Tag => template_size::<SequenceTagger>(dir, &config, device)?,
            TaskKind::Seq2seq => template_size::<Seq2Seq>(dir, &config, device)?,
        };
        let checkpoint_dir = CheckpointDir::new(dir);
        let checkpoints: Vec<(u64, u64)> = checkpoint_dir
            .steps()?
            .into_iter()
            .map(|step| {
                (
                    step,
                    dir_bytes(&dir.join(format!("checkpoints/step-{step:08}"))),
                )
            })
            .collect();
        let backend = checkpoints
            .last()
            .and_then(|&(step, _)| checkpoint_dir.progress(step).ok())
            .and_then(|progress| progress.backend);
        let metrics_path = dir.join(METRICS_FILE);
        let records = match metrics_path.exists() {
            true => read_metrics(&metrics_path)?,
            false => Vec::new(),
        };
        let best = |value: fn(&MetricsRecord) -> Option<f64>, better: fn(f64, f64) -> bool| {
            let mut best: Option<(u64, f64)> = None;
            for (_, record) in &records {
                if let Some(v) = value(record)
                    && best.is_none_or(|(_, b)| better(v, b))
                {
                    best = Some((record.step, v));
                }
            }
            best
        };
        Ok(RunInfo {
            dir: dir.to_path_buf(),
            best_val_loss: best(|r| r.val_loss, |a, b| a < b),
            best_val_accuracy: best(|r| r.val_accuracy, |a, b| a > b),
            last_logged: records.last().map(|(_, r)| (r.step, r.loss)),
            config_text,
            config,
            parameters,
            checkpoints,
            backend,
        })
    }
}

fn template_size<M: SequenceTask>(
    dir: &Path,
    config: &RunConfig,
    device: &Device,
) -> Result<usize, TrainError> {
    let vocab = TaskVocab::load(dir)?;
    Ok(M::init(config, &vocab, device).num_params())
}

/// The bytes of the files directly in `dir` (a checkpoint holds no subdirectories).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}
