//! Checkpoints: written whole into a temporary directory, then renamed into place, so a crash
//! during a save never leaves a broken checkpoint under a checkpoint's name. Readers take every
//! file of a checkpoint into memory before decoding any of it, so a trainer pruning that
//! checkpoint meanwhile costs them a retry with a newer one, never a half-read model.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use ember_data::Cursor;
use ember_model::torch::{HostTensor, StateDict};
use ember_model::{CharLm, LayerState, RecurrentState};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::error::io_error;

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const CARRIED_FILE: &str = "carried_state.safetensors";
const PROGRESS_FILE: &str = "progress.json";
const CHECKSUMS_FILE: &str = "checksums.json";

/// Where training stands: everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// The next training chunk.
    pub cursor: Cursor,
    /// The lowest validation loss seen so far and its step.
    pub best: Option<(u64, f64)>,
    /// Training characters consumed, for throughput figures.
    pub chars_seen: u64,
    /// The loss of the run's first step: a language model whose loss passes three times this
    /// has diverged (char-rnn's rule). Absent from checkpoints written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_loss: Option<f64>,
    /// The backend that trained the run up to here (`flex`, `ndarray`, `cuda`, ...); absent in
    /// checkpoints written before it was recorded and in imported ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

impl<M> Checkpoint<M> {
    /// Where a new run starts: `model` as drawn from the run's seed and an optimizer without
    /// state.
    pub fn fresh(model: M, optimizer: ModuleOptimizer) -> Self {
        Checkpoint {
            model,
            optimizer,
            carried: None,
            progress: Progress::start(),
        }
    }
}

impl Progress {
    /// Where a new run starts.
    pub fn start() -> Self {
        Progress {
            step: 0,
            cursor: Cursor::default(),
            best: None,
            chars_seen: 0,
            first_loss: None,
            backend: None,
        }
    }
}

/// What a checkpoint restores.
pub struct Checkpoint<M = CharLm> {
    /// The model weights.
    pub model: M,
    /// The optimizer with its state.
    pub optimizer: ModuleOptimizer,
    /// The hidden state carried into the next chunk, if any.
    pub carried: Option<RecurrentState>,
    /// The counters.
    pub progress: Progress,
}

/// The checkpoints of a run directory.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
}

impl CheckpointDir {
    /// The checkpoints under `run_dir/checkpoints`.
    pub fn new(run_dir: &Path) -> Self {
        CheckpointDir {
            root: run_dir.join("checkpoints"),
        }
    }

    /// The directory of the checkpoint of `step`.
    pub(crate) fn step_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:08}"))
    }

    /// The steps of the complete checkpoints, oldest first; none when the run has no
    /// `checkpoints` directory yet. A directory that cannot be listed is an error, never taken
    /// for an empty one (a resume would then start the run over).
    pub fn steps(&self) -> Result<Vec<u64>, TrainError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.root)(e)),
        };
        let mut steps = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(&self.root))?;
            if let Some(step) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix("step-")?.parse().ok())
            {
                steps.push(step);
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    /// Writes a checkpoint atomically and returns its directory.
    pub fn save<M: Module>(
        &self,
        model: &M,
        optimizer: &ModuleOptimizer,
        carried: Option<&RecurrentState>,
        progress: &Progress,
    ) -> Result<PathBuf, TrainError> {
        let weight_sum = sum_abs_weights(model);
        if !weight_sum.is_finite() {
            // Checked here so that the newest checkpoint is always one training can go on from.
            return Err(TrainError::Diverged {
                step: progress.step,
                quantity: "sum of absolute weights",
                value: weight_sum,
                limit: None,
            });
        }
        fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        let final_dir = self.step_dir(progress.step);
        let damaged = match fs::symlink_metadata(&final_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            _ => match StepFiles::read(&final_dir) {
                // A step's state follows from the previous one, so an intact checkpoint of it
                // already holds it (a stop right after a scheduled save); rewriting it would
                // only open a window in which that step has no checkpoint.
                Ok(_) => return Ok(final_dir),
                Err(e) => Some(e),
            },
        };
        let partial = self
            .root
            .join(format!(".partial-step-{:08}", progress.step));
        remove_any(&partial)?;
        fs::create_dir(&partial).map_err(io_error(&partial))?;
        let written = Self::write_checkpoint(&partial, model, optimizer, carried, progress)
            .and_then(|()| match damaged {
                Some(error) => {
                    // Moved aside rather than deleted first, so that a crash between the two
                    // renames leaves the damaged copy, not nothing, for a human to look at.
                    log::warn!("replacing a damaged checkpoint: {error}");
                    let aside = self
                        .root
                        .join(format!(".damaged-step-{:08}", progress.step));
                    remove_any(&aside)?;
                    fs::rename(&final_dir, &aside).map_err(io_error(&final_dir))
                }
                None => Ok(()),
            })
            .and_then(|()| fs::rename(&partial, &final_dir).map_err(io_error(&final_dir)))
            .and_then(|()| sync_dir(&self.root));
        if let Err(error) = written {
            // Frees the space a failed write took (a full disk, say); older checkpoints are
            // untouched.
            let _ = fs::remove_dir_all(&partial);
            return Err(error);
        }
        log::info!("checkpoint {}", final_dir.display());
        Ok(final_dir)
    }

    fn write_checkpoint<M: Module>(
        partial: &Path,
        model: &M,
        optimizer: &ModuleOptimizer,
        carried: Option<&RecurrentState>,
        progress: &Progress,
    ) -> Result<(), TrainError> {
        let record_error = |path: &Path, e: burn::store::RecordError| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // Serialized in memory and written here, so that a full or read-only disk is reported
        // as the operating system's own error on the file.
        let model_path = partial.join(MODEL_FILE);
        let model_bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| record_error(&model_path, e))?;
        write_synced(&model_path, &model_bytes)?;
        let optimizer_path = partial.join(OPTIMIZER_FILE);
        let optimizer_bytes = optimizer
            .into_bytes()
            .map_err(|e| record_error(&optimizer_path, e))?;
        write_synced(&optimizer_path, &optimizer_bytes)?;
        if let Some(carried) = carried {
            let carried_path = partial.join(CARRIED_FILE);
            let bytes = carried_state_dict(carried).to_safetensors_bytes(&carried_path)?;
            write_synced(&carried_path, &bytes)?;
        }
        let progress_path = partial.join(PROGRESS_FILE);
        let json = serde_json::to_string_pretty(progress).expect("progress serializes");
        write_synced(&progress_path, json.as_bytes())?;

        // Checksums of the files as read back from the disk: a later bit flip or truncation
        // is caught before any of them is loaded.
        let mut checksums = BTreeMap::new();
        for file in [MODEL_FILE, OPTIMIZER_FILE, CARRIED_FILE, PROGRESS_FILE] {
            let path = partial.join(file);
            if path.exists() {
                let bytes = fs::read(&path).map_err(io_error(&path))?;
                checksums.insert(file.to_string(), crc32fast::hash(&bytes));
            }
        }
        let json = serde_json::to_string_pretty(&checksums).expect("checksums serialize");
        write_synced(&partial.join(CHECKSUMS_FILE), json.as_bytes())?;
        sync_dir(partial)
    }

    /// Writes a checkpoint atomically, then keeps only the newest `keep` and the step
    /// `progress.best` names; returns the new checkpoint's directory.
    pub fn save_and_prune<M: Module>(
        &self,
        model: &M,
        optimizer: &ModuleOptimizer,
        carried: Option<&RecurrentState>,
        progress: &Progress,
        keep: usize,
    ) -> Result<PathBuf, TrainError> {
        let dir = self.save(model, optimizer, carried, progress)?;
        self.prune(keep, progress.best.map(|(step, _)| step))?;
        Ok(dir)
    }

    /// The counters of the checkpoint of `step`, read without loading its tensors.
    pub fn progress(&self, step: u64) -> Result<Progress, TrainError> {
        let path = self.step_dir(step).join(PROGRESS_FILE);
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path,
            message: e.to_string(),
        })
    }

    /// Loads the newest checkpoint that loads completely, skipping (and reporting) damaged ones;
    /// `carried` rebuilds the carried hidden state from its tensors ([`char_lm_carried`] or
    /// [`no_carried`]).
    pub fn load_latest<M: Module>(
        &self,
        template: M,
        optimizer: ModuleOptimizer,
        device: &Device,
        carried: CarriedLoader<M>,
    ) -> Result<Checkpoint<M>, TrainError> {
        self.newest(|step| self.load(step, template.clone(), optimizer.clone(), device, carried))
            .map(|(_, checkpoint)| checkpoint)
    }

    /// The step and result of `load` on the newest checkpoint it accepts. Damaged checkpoints
    /// are skipped with a warning; one that a running trainer pruned while it was being read is
    /// skipped quietly, and the listing is read again if every listed one went that way (the
    /// trainer has written newer ones meanwhile).
    pub fn newest<T>(
        &self,
        mut load: impl FnMut(u64) -> Result<T, TrainError>,
    ) -> Result<(u64, T), TrainError> {
        let mut last_error = None;
        // A trainer checkpointing every step prunes faster than a slow reader reads; each
        // round needs it to have pruned the reader's newest step, so a few rounds suffice.
        for _round in 0..20 {
            let mut vanished = false;
            for step in self.steps()?.into_iter().rev() {
                match load(step) {
                    Ok(loaded) => return Ok((step, loaded)),
                    Err(e) if self.vanished(step) => {
                        log::debug!("checkpoint at step {step} was pruned while read: {e}");
                        vanished = true;
                    }
                    Err(e) => {
                        log::warn!("skipping checkpoint at step {step}: {e}");
                        last_error = Some(e);
                    }
                }
            }
            if !vanished {
                break;
            }
        }
        Err(last_error.unwrap_or_else(|| TrainError::NoCheckpoint(self.root.clone())))
    }

    /// Whether the checkpoint of `step` is gone (pruned by its trainer).
    fn vanished(&self, step: u64) -> bool {
        fs::symlink_metadata(self.step_dir(step))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

    /// Loads the checkpoint of `step` into `template` (a model of the run's architecture); see
    /// [`load_latest`](Self::load_latest) for `carried`.
    pub fn load<M: Module>(
        &self,
        step: u64,
        template: M,
        optimizer: ModuleOptimizer,
        device: &Device,
        carried: CarriedLoader<M>,
    ) -> Result<Checkpoint<M>, TrainError> {
        let dir = self.step_dir(step);
        decoding_guard(&dir, || {
            self.load_unguarded(&dir, template, optimizer, device, carried)
        })
    }

    fn load_unguarded<M: Module>(
        &self,
        dir: &Path,
        template: M,
        optimizer: ModuleOptimizer,
        device: &Device,
        carried: CarriedLoader<M>,
    ) -> Result<Checkpoint<M>, TrainError> {
        let damaged = |path: &Path, message: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let files = StepFiles::read(dir)?;
        let progress_path = dir.join(PROGRESS_FILE);
        let progress: Progress = serde_json::from_slice(&files.progress)
            .map_err(|e| damaged(&progress_path, e.to_string()))?;
        let model = files.model_into(template)?;

        let optimizer_path = dir.join(OPTIMIZER_FILE);
        let optimizer = optimizer
            .from_bytes(Bytes::from_bytes_vec(files.optimizer))
            .map_err(|e| damaged(&optimizer_path, e.to_string()))?;

        let carried_path = dir.join(CARRIED_FILE);
        let carried = match files.carried {
            Some(bytes) => {
                let state_dict = StateDict::from_safetensors_bytes(&bytes, &carried_path)?;
                carried(&state_dict, &model, device).map_err(|m| damaged(&carried_path, m))?
            }
            None => None,
        };
        Ok(Checkpoint {
            model,
            optimizer,
            carried,
            progress,
        })
    }

    /// Removes all but the newest `keep` checkpoints and `also_keep`.
    pub fn prune(&self, keep: usize, also_keep: Option<u64>) -> Result<(), TrainError> {
        let steps = self.steps()?;
        let cut = steps.len().saturating_sub(keep);
        for &step in &steps[..cut] {
            if Some(step) != also_keep {
                // Renamed away first, in one step: a reader sees the whole checkpoint or none
                // of it, never one whose files are being deleted one by one.
                let dir = self.step_dir(step);
                let doomed = self.root.join(format!(".pruned-step-{step:08}"));
                remove_any(&doomed)?;
                fs::rename(&dir, &doomed).map_err(io_error(&dir))?;
                fs::remove_dir_all(&doomed).map_err(io_error(&doomed))?;
            }
        }
        // Only the process holding the run's lock writes here, and its own save is complete:
        // a partial directory left now was cut off by a crash, and no checkpoint needs it; a
        // damaged one moved aside has been replaced.
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if [".partial-", ".damaged-", ".pruned-"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
                {
                    let path = entry.path();
                    fs::remove_dir_all(&path).map_err(io_error(&path))?;
                }
            }
        }
        Ok(())
    }
}

/// The files of one checkpoint, read whole into memory and checked against their checksums.
pub(crate) struct StepFiles {
    dir: PathBuf,
    model: Vec<u8>,
    optimizer: Vec<u8>,
    carried: Option<Vec<u8>>,
    progress: Vec<u8>,
}

impl StepFiles {
    /// Reads every file of the checkpoint in `dir`. A file that differs from the checksum
    /// recorded when it was written is an error naming it; a checkpoint without
    /// `checksums.json` (written before checksums were kept, or stripped of them) loads with a
    /// warning that it is unverified.
    pub(crate) fn read(dir: &Path) -> Result<Self, TrainError> {
        let read = |file: &str| {
            let path = dir.join(file);
            fs::read(&path).map_err(io_error(&path))
        };
        let checksums_path = dir.join(CHECKSUMS_FILE);
        let checksums: Option<BTreeMap<String, u32>> = match fs::read(&checksums_path) {
            Ok(json) => {
                Some(
                    serde_json::from_slice(&json).map_err(|e| TrainError::Checkpoint {
                        path: checksums_path.clone(),
                        message: format!("damaged: {e}"),
                    })?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(&checksums_path)(e)),
        };
        let files = StepFiles {
            dir: dir.to_path_buf(),
            model: read(MODEL_FILE)?,
            optimizer: read(OPTIMIZER_FILE)?,
            carried: match &checksums {
                Some(sums) if !sums.contains_key(CARRIED_FILE) => None,
                Some(_) => Some(read(CARRIED_FILE)?),
                None => match read(CARRIED_FILE) {
                    Err(TrainError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        None
                    }
                    other => Some(other?),
                },
            },
            progress: read(PROGRESS_FILE)?,
        };
        match checksums {
            Some(checksums) => files.verify(&checksums)?,
            None => log::warn!(
                "checkpoint {} has no {CHECKSUMS_FILE}: its files are unverified, and a damaged \
                 one may load without an error",
                dir.display()
            ),
        }
        Ok(files)
    }

    fn verify(&self, checksums: &BTreeMap<String, u32>) -> Result<(), TrainError> {
        for (file, &expected) in checksums {
            let bytes = match file.as_str() {
                MODEL_FILE => &self.model,
                OPTIMIZER_FILE => &self.optimizer,
                PROGRESS_FILE => &self.progress,
                CARRIED_FILE => self.carried.as_ref().expect("read when listed"),
                other => {
                    return Err(TrainError::Checkpoint {
                        path: self.dir.join(CHECKSUMS_FILE),
                        message: format!("damaged: it lists `{other}`, which no checkpoint has"),
                    });
                }
            };
            if crc32fast::hash(bytes) != expected {
                return Err(TrainError::Checkpoint {
                    path: self.dir.join(file),
                    message: "damaged: its checksum differs from the one recorded when it was \
                              written"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// The model weights, loaded into `template` (a model of the run's architecture).
    pub(crate) fn model_into<M: Module>(&self, template: M) -> Result<M, TrainError> {
        let path = self.dir.join(MODEL_FILE);
        let record =
            ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.model.clone())).map_err(|e| {
                TrainError::Checkpoint {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
        template
            .try_load_record(record)
            .map_err(|e| TrainError::Mismatch {
                path,
                message: format!("does not fit this run's model: {e}"),
            })
    }
}

/// Removes whatever is at `path`, if anything.
fn remove_any(path: &Path) -> Result<(), TrainError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(io_error(path)),
        Ok(_) => fs::remove_file(path).map_err(io_error(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

fn carried_state_dict(state: &RecurrentState) -> StateDict {
    let host = |tensor: &Tensor<2>| HostTensor {
        shape: tensor.dims().to_vec(),
        values: tensor
            .to_data()
            .try_into_vec_as::<f32>()
            .expect("float state converts to f32"),
    };
    let mut state_dict = StateDict::default();
    for (k, layer) in state.layers.iter().enumerate() {
        state_dict
            .tensors
            .insert(format!("hidden_l{k}"), host(&layer.hidden));
        if let Some(cell) = &layer.cell {
            state_dict.tensors.insert(format!("cell_l{k}"), host(cell));
        }
    }
    state_dict
}

/// Rebuilds a carried hidden state for model `M` from a checkpoint's tensors.
pub type CarriedLoader<M> = fn(&StateDict, &M, &Device) -> Result<Option<RecurrentState>, String>;

/// The [`CarriedLoader`] of models that carry no state between steps.
pub fn no_carried<M>(_: &StateDict, _: &M, _: &Device) -> Result<Option<RecurrentState>, String> {
    Ok(None)
}

/// The [`CarriedLoader`] of the character model, which carries its streams' state from chunk
/// to chunk.
pub fn char_lm_carried(
    state_dict: &StateDict,
    model: &CharLm,
    device: &Device,
) -> Result<Option<RecurrentState>, String> {
    carried_from_state_dict(state_dict, model, device).map(Some)
}

fn carried_from_state_dict(
    state_dict: &StateDict,
    model: &CharLm,
    device: &Device,
) -> Result<RecurrentState, String> {
    let d_hidden = model.rnn.d_hidden();
    let tensor = |key: &str| -> Result<Tensor<2>, String> {
        let host = state_dict
            .tensors
            .get(key)
            .ok_or_else(|| format!("missing `{key}`"))?;
        if host.shape.len() != 2 || host.shape[1] != d_hidden {
            return Err(format!(
                "`{key}` has shape {:?}, expected [_, {d_hidden}]",
                host.shape
            ));
        }
        let data = TensorData::new(host.values.clone(), [host.shape[0], d_hidden]);
        Ok(Tensor::from_data(data, device))
    };
    let has_cell = model.rnn.cell().has_cell_state();
    let layers = (0..model.rnn.num_layers())
        .map(|k| {
            Ok(LayerState {
                hidden: tensor(&format!("hidden_l{k}"))?,
                cell: if has_cell {
                    Some(tensor(&format!("cell_l{k}"))?)
                } else {
                    None
                },
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RecurrentState { layers })
}

/// Runs `decode` on the checkpoint in `dir`, turning a panic into an error naming `dir`: a file
/// damaged in a way its checksum cannot show (or written before checksums were kept) can reach
/// a Burn decoder that panics instead of returning an error (the checkpoint fuzz target found
/// one: a flipped dtype byte). The panic's own report is silenced while `decode` runs.
pub(crate) fn decoding_guard<T>(
    dir: &Path,
    decode: impl FnOnce() -> Result<T, TrainError>,
) -> Result<T, TrainError> {
    // The hook is process-wide: readers on several threads take turns, or one could restore
    // another's silent hook for good.
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = HOOK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode));
    std::panic::set_hook(report);
    result.unwrap_or_else(|payload| {
        let reason = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no reason given");
        Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("damaged: decoding it failed ({reason})"),
        })
    })
}

/// The sum of the absolute values of every weight: finite exactly when no weight is NaN or
/// infinite (or so large that the sum overflows, which is divergence too).
fn sum_abs_weights<M: Module>(model: &M) -> f64 {
    struct SumAbs(f64);
    impl ModuleVisitor for SumAbs {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 += param.val().abs().sum().into_scalar::<f64>();
        }
    }
    let mut visitor = SumAbs(0.0);
    model.visit(&mut visitor);
    visitor.0
}

/// Writes `bytes` to `path` through a temporary file and a rename, synced to disk.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    // A stale temporary (a crash) goes first; whatever it was, even a symlink, it is replaced,
    // never written through.
    remove_any(&temporary)?;
    if let Err(error) = write_synced(&temporary, bytes)
        .and_then(|()| fs::rename(&temporary, path).map_err(io_error(path)))
    {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    // A bare file name's parent is the empty path: the current directory.
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Writes `bytes` to a new file `path` (never through an existing one), synced to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_dir(path: &Path) -> Result<(), TrainError> {
    fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GradientStep, OptimizerConfig};
    use ember_model::{CellKind, CharLmConfig};

    fn model(device: &Device) -> CharLm {
        CharLmConfig::new(7, CellKind::Lstm, 4)
            .with_num_layers(2)
            .with_d_embed(3)
            .init(device)
    }

    fn saved(root: &Path, device: &Device) -> CheckpointDir {
        let lm = model(device);
        let state = lm.zero_state(2, device);
        let mut progress = Progress::start();
        progress.step = 1;
        let checkpoints = CheckpointDir::new(root);
        let step = GradientStep::new(&OptimizerConfig::default());
        checkpoints
            .save(&lm, step.optimizer(), Some(&state), &progress)
            .unwrap();
        checkpoints
    }

    fn load(checkpoints: &CheckpointDir, device: &Device) -> Result<Checkpoint, TrainError> {
        let optimizer = GradientStep::new(&OptimizerConfig::default())
            .optimizer()
            .clone();
        checkpoints.load(1, model(device), optimizer, device, char_lm_carried)
    }

    #[test]
    fn a_checkpoint_loads_as_saved_and_a_flipped_byte_is_caught_by_its_checksum() {
        let device = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = saved(dir.path(), &device);
        assert_eq!(load(&checkpoints, &device).unwrap().progress.step, 1);
        let model_path = checkpoints.step_dir(1).join(MODEL_FILE);
        let mut bytes = fs::read(&model_path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&model_path, bytes).unwrap();
        let err = load(&checkpoints, &device).err().unwrap().to_string();
        assert!(
            err.contains("model.bpk") && err.contains("checksum"),
            "{err}"
        );
    }

    /// The checkpoint fuzz target's first find: a byte of the model file's header that turns
    /// a tensor's dtype into I32 made Burn panic while loading.
    #[test]
    fn a_damaged_dtype_without_checksums_is_an_error_not_a_panic() {
        let device = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = saved(dir.path(), &device);
        fs::remove_file(checkpoints.step_dir(1).join(CHECKSUMS_FILE)).unwrap();
        let model_path = checkpoints.step_dir(1).join(MODEL_FILE);
        let mut bytes = fs::read(&model_path).unwrap();
        let offset = 0x496a % bytes.len();
        bytes[offset] = 0x49;
        fs::write(&model_path, bytes).unwrap();
        let err = load(&checkpoints, &device).err().unwrap().to_string();
        assert!(err.contains("step-00000001"), "{err}");
    }
}
