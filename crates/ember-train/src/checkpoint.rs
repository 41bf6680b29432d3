//! Checkpoints: written whole into a temporary directory, then renamed into place, so a crash
//! during a save never leaves a broken checkpoint under a checkpoint's name.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor, TensorData};
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
}

impl Progress {
    /// Where a new run starts.
    pub fn start() -> Self {
        Progress {
            step: 0,
            cursor: Cursor::default(),
            best: None,
            chars_seen: 0,
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

    fn step_dir(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:08}"))
    }

    /// The steps of the complete checkpoints, oldest first.
    pub fn steps(&self) -> Vec<u64> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut steps: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
            .collect();
        steps.sort_unstable();
        steps
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
            });
        }
        fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        let final_dir = self.step_dir(progress.step);
        if final_dir.is_dir() {
            // A step's state follows from the previous one, so the checkpoint on disk already
            // holds it (a stop right after a scheduled save); rewriting it would only open a
            // window in which that step has no checkpoint.
            return Ok(final_dir);
        }
        let partial = self
            .root
            .join(format!(".partial-step-{:08}", progress.step));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(io_error(&partial))?;
        }
        fs::create_dir(&partial).map_err(io_error(&partial))?;
        let written = Self::write_checkpoint(&partial, model, optimizer, carried, progress)
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
            carried_state_dict(carried).write_safetensors(&carried_path)?;
            sync_file(&carried_path)?;
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

    /// Checks the files of the checkpoint of `step` against their recorded checksums.
    pub(crate) fn verify_step(&self, step: u64) -> Result<(), TrainError> {
        Self::verify(&self.step_dir(step))
    }

    /// Checks every file of the checkpoint in `dir` against its recorded checksum. A checkpoint
    /// written before checksums were recorded passes unchecked.
    fn verify(dir: &Path) -> Result<(), TrainError> {
        let checksums_path = dir.join(CHECKSUMS_FILE);
        let json = match fs::read_to_string(&checksums_path) {
            Ok(json) => json,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(&checksums_path)(e)),
        };
        let damaged = |path: &Path, message: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let checksums: BTreeMap<String, u32> =
            serde_json::from_str(&json).map_err(|e| damaged(&checksums_path, e.to_string()))?;
        for (file, expected) in checksums {
            let path = dir.join(&file);
            let bytes = fs::read(&path).map_err(io_error(&path))?;
            if crc32fast::hash(&bytes) != expected {
                return Err(damaged(
                    &path,
                    "damaged: its checksum differs from the one recorded when it was written"
                        .into(),
                ));
            }
        }
        Ok(())
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

    /// Where a run resumes: its newest intact checkpoint, or, for a run stopped before its
    /// first checkpoint, step 0 with `template` and `optimizer` as they are (the caller draws
    /// `template` from the run's seed, as the run first did). A run whose checkpoints are all
    /// damaged is an error, never a silent restart.
    pub fn resume_point<M: Module>(
        &self,
        template: M,
        optimizer: ModuleOptimizer,
        device: &Device,
        carried: CarriedLoader<M>,
    ) -> Result<Checkpoint<M>, TrainError> {
        if self.steps().is_empty() {
            log::warn!(
                "{} has no checkpoint yet: starting the run from step 0",
                self.root.display()
            );
            return Ok(Checkpoint {
                model: template,
                optimizer,
                carried: None,
                progress: Progress::start(),
            });
        }
        self.load_latest(template, optimizer, device, carried)
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
        let mut last_error = None;
        for step in self.steps().into_iter().rev() {
            match self.load(step, template.clone(), optimizer.clone(), device, carried) {
                Ok(checkpoint) => return Ok(checkpoint),
                Err(e) => {
                    log::warn!("skipping checkpoint at step {step}: {e}");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| TrainError::NoCheckpoint(self.root.clone())))
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
        Self::verify(dir)?;
        let progress_path = dir.join(PROGRESS_FILE);
        let json = fs::read_to_string(&progress_path).map_err(io_error(&progress_path))?;
        let progress: Progress =
            serde_json::from_str(&json).map_err(|e| damaged(&progress_path, e.to_string()))?;

        let model_path = dir.join(MODEL_FILE);
        let record =
            ModuleRecord::load(&model_path).map_err(|e| damaged(&model_path, e.to_string()))?;
        let model = template
            .try_load_record(record)
            .map_err(|e| TrainError::Mismatch {
                path: model_path.clone(),
                message: format!("does not fit this run's model: {e}"),
            })?;

        let optimizer_path = dir.join(OPTIMIZER_FILE);
        let optimizer = optimizer
            .load(&optimizer_path)
            .map_err(|e| damaged(&optimizer_path, e.to_string()))?;

        let carried_path = dir.join(CARRIED_FILE);
        let carried = if carried_path.exists() {
            let state_dict = StateDict::read(&carried_path)?;
            carried(&state_dict, &model, device).map_err(|m| damaged(&carried_path, m))?
        } else {
            None
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
        let steps = self.steps();
        let cut = steps.len().saturating_sub(keep);
        for &step in &steps[..cut] {
            if Some(step) != also_keep {
                let dir = self.step_dir(step);
                fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
        }
        // Only the process holding the run's lock writes here, and its own save is complete:
        // a partial directory left now was cut off by a crash, and no checkpoint needs it.
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.filter_map(|e| e.ok()) {
                if entry.file_name().to_string_lossy().starts_with(".partial-") {
                    let path = entry.path();
                    fs::remove_dir_all(&path).map_err(io_error(&path))?;
                }
            }
        }
        Ok(())
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
    write_synced(&temporary, bytes)?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    // A bare file name's parent is the empty path: the current directory.
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new(".")),
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let mut file = fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_file(path: &Path) -> Result<(), TrainError> {
    match fs::File::open(path) {
        Ok(file) => file.sync_all().map_err(io_error(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
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
