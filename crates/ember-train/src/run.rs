//! A finished (or running) run, opened for sampling and evaluation.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use ember_data::{Corpus, StreamBatcher, Vocab};
use ember_model::CharLm;
use serde::Serialize;

use crate::TrainError;
use crate::checkpoint::{CheckpointDir, StepFiles, decoding_guard};
use crate::config::RunConfig;
use crate::error::expect_run;
use crate::memory::ensure_inference_fits;
use crate::trainer::{CONFIG_FILE, VOCAB_FILE, mean_loss, model_config};

/// The characters `ember eval` reads per chunk.
pub const EVAL_CHUNK: usize = 256;

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
    /// `exp(loss)`; `None` (JSON `null`, with `perplexity_note` saying why) where it exceeds
    /// the largest `f64`.
    pub perplexity: Option<f64>,
    /// Why `perplexity` is missing, where it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity_note: Option<String>,
    /// The number of characters predicted.
    pub chars: usize,
}

impl Run {
    /// Opens `dir`, loading the newest checkpoint that loads completely.
    pub fn open(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        expect_run(dir)?;
        let config = RunConfig::load(&dir.join(CONFIG_FILE), &[])?;
        let vocab = Vocab::load(&dir.join(VOCAB_FILE))?;
        // A chunk of `ember eval`'s length; sampling steps one character at a time.
        ensure_inference_fits(&config, vocab.len(), vocab.len(), EVAL_CHUNK, device)?;
        let template = model_config(&config, vocab.len()).init(device);
        let (step, model) = CheckpointDir::new(dir).newest(|step| {
            let step_dir = CheckpointDir::new(dir).step_dir(step);
            decoding_guard(&step_dir, || {
                StepFiles::read(&step_dir).and_then(|files| files.model_into(template.clone()))
            })
        })?;
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
            vocab,
            model,
            step,
        })
    }

    /// The mean next-character loss over the whole of `text_path`, read as one stream from a
    /// zero state in chunks of `chunk_len` characters; `on_progress(done, total)` sees the
    /// characters predicted so far after every chunk.
    pub fn evaluate_file(
        &self,
        text_path: &Path,
        chunk_len: usize,
        device: &Device,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<EvalReport, TrainError> {
        let corpus = Corpus::load_with_vocab(text_path, self.vocab.clone())?;
        let stream = StreamBatcher::new(&corpus.ids, 1, 1, &text_path.display().to_string())?;
        let chars = stream.stream_len() - 1;
        let chunk_len = chunk_len.min(chars).max(1);
        let stream = StreamBatcher::new(&corpus.ids, 1, chunk_len, "text")?;
        let total = chars;
        let chunks = stream.all_chunks().enumerate().map(|(index, chunk)| {
            on_progress(index * chunk_len, total);
            chunk
        });
        let loss = mean_loss(&self.model, chunks, device);
        on_progress(total, total);
        if !loss.is_finite() {
            return Err(TrainError::Checkpoint {
                path: self
                    .dir
                    .join("checkpoints")
                    .join(format!("step-{:08}", self.step)),
                message: format!("its model's loss on {} is {loss}", text_path.display()),
            });
        }
        let perplexity = Some(loss.exp()).filter(|p| p.is_finite());
        Ok(EvalReport {
            loss,
            bits_per_char: loss / std::f64::consts::LN_2,
            perplexity,
            perplexity_note: perplexity
                .is_none()
                .then(|| "exp(loss) is larger than the largest 64-bit float".into()),
            chars,
        })
    }
}
