//! PyTorch character models in and out: a state dict of the reference or the
//! `word_language_model` layout becomes a run directory that sampling, evaluation and further
//! training read, and back.

use std::path::Path;

use burn::tensor::Device;
use ember_data::Corpus;
use ember_model::torch::{StateDict, TorchError, TorchLayout};
use ember_model::{CellKind, CharLm};

use crate::checkpoint::{CheckpointDir, Progress, write_atomically};
use crate::config::RunConfig;
use crate::memory::{MemoryEstimate, ensure_fits};
use crate::output::{check_output, write_output};
use crate::run_dir::{absolute, create_run_dir};
use crate::step::optimizer_for;
use crate::trainer::{CONFIG_FILE, VOCAB_FILE};
use crate::{Run, TrainError};

/// What [`import_torch`] made.
pub struct Imported {
    /// The model, as its run's one checkpoint holds it.
    pub model: CharLm,
    /// Its recurrence, read from the tensors.
    pub cell: CellKind,
    /// The layout the state dict was recognised as (after `renames`).
    pub layout: TorchLayout,
}

/// Makes a run directory `out` from a PyTorch state dict (`.safetensors` or `.pt`) of a
/// character model: `renames` (`(old prefix, new prefix)`) apply first, then a state dict of
/// the `word_language_model` layout is recognised; the result must be the reference layout,
/// `embedding`, `rnn` and `head`, of any number of layers and sizes. The cell is read from the
/// tensors (`cell`, where given, must match). The vocabulary is that of `vocab_text` (its
/// sorted distinct characters, as the model was trained with). The run's config records the
/// sizes read from the tensors and `vocab_text` as its corpus; its one checkpoint, at step 0,
/// holds the weights and a fresh optimizer, so `ember train --resume` fine-tunes it.
pub fn import_torch(
    state_dict_path: &Path,
    cell: Option<CellKind>,
    renames: &[(String, String)],
    vocab_text: &Path,
    out: &Path,
    device: &Device,
) -> Result<Imported, TrainError> {
    ensure_import_fits(state_dict_path, device)?;
    let mut state_dict = StateDict::read(state_dict_path)?;
    state_dict.rename_prefixes(renames);
    let layout = TorchLayout::detect(&state_dict);
    let state_dict = state_dict.into_reference(layout);
    let found = state_dict.cell_kind()?;
    let model = CharLm::from_state_dict(&state_dict, cell.unwrap_or(found), device)?;
    let cell = found;
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
    if let Some(key) = state_dict
        .tensors
        .iter()
        .find_map(|(key, t)| t.values.iter().any(|v| !v.is_finite()).then_some(key))
    {
        return Err(TrainError::Torch(TorchError::Format {
            path: state_dict_path.to_path_buf(),
            message: format!("`{key}` holds NaN or infinite values"),
        }));
    }
    config.data.path = absolute(vocab_text)?;

    let existed = out.exists();
    let lock = create_run_dir(out, "--out")?;
    let written = corpus
        .vocab
        .save(&out.join(VOCAB_FILE))
        .map_err(TrainError::from)
        .and_then(|()| {
            CheckpointDir::new(out).save(&model, &optimizer_for(&config), None, &Progress::start())
        })
        // The config goes last: a directory with a config is a run, so it must be complete.
        .and_then(|_| write_atomically(&out.join(CONFIG_FILE), config.to_toml().as_bytes()));
    if let Err(error) = written {
        // Nothing but this import wrote here (the directory was new or empty, and locked).
        let removed = if existed {
            std::fs::read_dir(out).and_then(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name() != "lock")
                    .try_for_each(|e| match e.file_type()?.is_dir() {
                        true => std::fs::remove_dir_all(e.path()),
                        false => std::fs::remove_file(e.path()),
                    })
            })
        } else {
            std::fs::remove_dir_all(out)
        };
        if let Err(e) = removed {
            log::warn!(
                "could not remove the partial import in {}: {e}",
                out.display()
            );
        }
        drop(lock);
        return Err(error);
    }
    Ok(Imported {
        model,
        cell,
        layout,
    })
}

/// Refuses a state dict too large to import in the memory available: its values are held
/// about four times at once (the file read, its `f32` values, the model, the checkpoint's
/// record), so four times the file's size is the estimate.
fn ensure_import_fits(state_dict_path: &Path, device: &Device) -> Result<(), TrainError> {
    let Ok(metadata) = std::fs::metadata(state_dict_path) else {
        // A missing file is reported by the reader, by name.
        return Ok(());
    };
    let bytes = metadata.len() as f64;
    // Measured here: a 193 MB state dict (LSTM 2x2000) peaked at 768 MB resident.
    let estimate = MemoryEstimate {
        parameters: bytes,
        gradients: 0.0,
        optimizer_state: 0.0,
        weight_copies: 2.0 * bytes,
        activations: 0.0,
        checkpoint: bytes,
    };
    ensure_fits(&estimate, device, "importing this state dict", |_| {
        "free memory or import on a machine with more".into()
    })
}

/// Writes the newest weights of the character-model run in `run_dir` as a PyTorch state dict of
/// `layout` (`.safetensors`), which `load_state_dict(strict=True)` of that layout's module
/// accepts.
pub fn export_torch(
    run_dir: &Path,
    out: &Path,
    layout: TorchLayout,
    device: &Device,
) -> Result<usize, TrainError> {
    check_output(out, false)?;
    let run = Run::open(run_dir, device)?;
    let state_dict = run.model.to_state_dict_in(layout);
    // A failed write (disk full, say) leaves neither a partial file nor a damaged `out`.
    write_output(out, &state_dict.to_safetensors_bytes(out)?, false)?;
    Ok(state_dict.tensors.len())
}
