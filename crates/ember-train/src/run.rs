//! A finished (or running) run, opened for sampling and evaluation.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use ember_data::{Corpus, StreamBatcher, Vocab};
use ember_model::CharLm;
use serde::Serialize;

use crate::TrainError;
use crate::checkpoint::{CheckpointDir, decoding_guard};
use crate::config::RunConfig;
use crate::error::expect_run;
use crate::trainer::{CONFIG_FILE, VOCAB_FILE, mean_loss, model_config};

/// A run directory's config, vocabulary and newest model weights.
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// Its resolved config.
    pub config: RunConfig,
    /// Its vocabulary.
    pub vocab: Vocab,
    /// The weights of its newest intact checkpoint, on a device without autodiff.
    pub model: CharLm,
    /// The step of that checkpoint.
    pub step: u64,
}

/// The figures `ember eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Mean cross-entropy per predicted character, in nats.
    pub loss: f64,
    /// The same in bits.
    pub bits_per_char: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// The number of characters predicted.
    pub chars: usize,
}

impl Run {
    /// Opens `dir`, loading the newest checkpoint that loads completely.
    pub fn open(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        expect_run(dir)?;
        let config = RunConfig::load(&dir.join(CONFIG_FILE), &[])?;
        let vocab = Vocab::load(&dir.join(VOCAB_FILE))?;
        let template = model_config(&config, vocab.len()).init(device);
        let checkpoints = CheckpointDir::new(dir);
        let mut last_error = None;
        for step in checkpoints.steps().into_iter().rev() {
            let path = dir.join(format!("checkpoints/step-{step:08}/model.bpk"));
            let step_dir = path.parent().expect("a checkpoint file has a directory");
            let loaded = decoding_guard(step_dir, || {
                checkpoints
                    .verify_step(step)
                    .and_then(|()| {
                        ModuleRecord::load(&path).map_err(|e| TrainError::Checkpoint {
                            path: path.clone(),
                            message: e.to_string(),
                        })
                    })
                    .and_then(|record| {
                        template
                            .clone()
                            .try_load_record(record)
                            .map_err(|e| TrainError::Mismatch {
                                path: path.clone(),
                                message: format!("does not fit the run's model: {e}"),
                            })
                    })
            });
            match loaded {
                Ok(model) => {
                    return Ok(Run {
                        dir: dir.to_path_buf(),
                        config,
                        vocab,
                        model,
                        step,
                    });
                }
                Err(e) => {
                    log::warn!("skipping checkpoint at step {step}: {e}");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| TrainError::NoCheckpoint(dir.to_path_buf())))
    }

    /// The mean next-character loss over the whole of `text_path`, read as one stream from a
    /// zero state in chunks of `chunk_len` characters.
    pub fn evaluate_file(
        &self,
        text_path: &Path,
        chunk_len: usize,
        device: &Device,
    ) -> Result<EvalReport, TrainError> {
        let corpus = Corpus::load_with_vocab(text_path, self.vocab.clone())?;
        let stream = StreamBatcher::new(&corpus.ids, 1, 1, &text_path.display().to_string())?;
        let stream = StreamBatcher::new(
            &corpus.ids,
            1,
            chunk_len.min(stream.stream_len() - 1).max(1),
            "text",
        )?;
        let loss = mean_loss(
            &self.model,
            stream.all_chunks(),
            device,
            self.config.uses_fused(),
        );
        Ok(EvalReport {
            loss,
            bits_per_char: loss / std::f64::consts::LN_2,
            perplexity: loss.exp(),
            chars: stream.stream_len() - 1,
        })
    }
}
