//! PyTorch character models in and out: a state dict of the reference layout becomes a run
//! directory that sampling, evaluation and further training read, and back.

use std::path::Path;

use burn::tensor::Device;
use ember_data::Corpus;
use ember_model::torch::StateDict;
use ember_model::{CellKind, CharLm};

use crate::checkpoint::{CheckpointDir, Progress, write_atomically};
use crate::config::RunConfig;
use crate::error::io_error;
use crate::step::optimizer_for;
use crate::trainer::{CONFIG_FILE, VOCAB_FILE, lock_run_dir};
use crate::{Run, TrainError};

/// Makes a run directory `out` from a PyTorch state dict (`.safetensors` or `.pt`) of the
/// reference layout: `embedding`, `rnn` (`cell`, any number of layers and sizes) and `head`, with
/// the vocabulary of `vocab_text` (its sorted distinct characters, as the model was trained
/// with). The run's config records the sizes read from the tensors and `vocab_text` as its
/// corpus; its one checkpoint, at step 0, holds the weights and a fresh optimizer, so
/// `ember train --resume` fine-tunes it. Returns the model.
pub fn import_torch(
    state_dict_path: &Path,
    cell: CellKind,
    vocab_text: &Path,
    out: &Path,
    device: &Device,
) -> Result<CharLm, TrainError> {
    if out.join(CONFIG_FILE).exists() {
        return Err(TrainError::RunExists(out.to_path_buf()));
    }
    let state_dict = StateDict::read(state_dict_path)?;
    let model = CharLm::from_state_dict(&state_dict, cell, device)?;
    let corpus = Corpus::load(vocab_text)?;
    if corpus.vocab.len() != model.vocab_size() {
        return Err(TrainError::Mismatch {
            path: state_dict_path.to_path_buf(),
            message: format!(
                "the model predicts {} characters but {} has {} distinct characters",
                model.vocab_size(),
                vocab_text.display(),
                corpus.vocab.len()
            ),
        });
    }
    let layer = &model.rnn.layers[0];
    let mut config = RunConfig::default();
    config.data.path = vocab_text.to_path_buf();
    config.model.cell = cell;
    config.model.num_layers = model.rnn.num_layers();
    config.model.d_hidden = model.rnn.d_hidden();
    config.model.d_embed = model.embedding.as_ref().map_or(0, |_| layer.d_input());
    config.model.dropout = 0.0;
    config.validate().map_err(|message| TrainError::Config {
        origin: state_dict_path.display().to_string(),
        message,
    })?;

    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let _lock = lock_run_dir(out)?;
    corpus.vocab.save(&out.join(VOCAB_FILE))?;
    CheckpointDir::new(out).save(&model, &optimizer_for(&config), None, &Progress::start())?;
    // The config goes last: a directory with a config is a run, so it must be complete.
    write_atomically(&out.join(CONFIG_FILE), config.to_toml().as_bytes())?;
    Ok(model)
}

/// Writes the newest weights of the character-model run in `run_dir` as a PyTorch state dict of
/// the reference layout (`.safetensors`), which `load_state_dict(strict=True)` accepts.
pub fn export_torch(run_dir: &Path, out: &Path, device: &Device) -> Result<usize, TrainError> {
    let run = Run::open(run_dir, device)?;
    let state_dict = run.model.to_state_dict();
    let partial = out.with_extension("safetensors.partial");
    // A failed write (disk full, say) leaves neither a partial file nor a damaged `out`.
    if let Err(error) = state_dict
        .write_safetensors(&partial)
        .map_err(TrainError::from)
        .and_then(|()| std::fs::rename(&partial, out).map_err(io_error(out)))
    {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    Ok(state_dict.tensors.len())
}
