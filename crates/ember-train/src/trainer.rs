//! The truncated-BPTT training loop.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_data::{Chunk, Corpus, Splits, StreamBatcher, Vocab};
use ember_model::{CharLm, CharLmConfig, LayerState, RecurrentState};
use serde::{Deserialize, Serialize};

use crate::Ranks;
use crate::checkpoint::{CheckpointDir, Progress, char_lm_carried, write_atomically};
use crate::config::RunConfig;
use crate::memory::{backend_name, ensure_training_fits};
use crate::metrics::read_metrics;
use crate::run_dir::{RunLock, absolute, continue_run, reopen_run, resume_checkpoint, start_run};
use crate::step::{GradientStep, optimizer_for};
use crate::{Evaluation, TrainError, Training};

/// The resolved config of a run, inside its directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The vocabulary of a run, inside its directory.
pub const VOCAB_FILE: &str = "vocab.json";
/// One JSON object per logged step, inside the run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Optimizer steps taken.
    pub step: u64,
    /// The training loss of this step's chunk, nats per character.
    pub loss: f64,
    /// The learning rate of this step.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training throughput since the previous record.
    pub chars_per_sec: f64,
    /// The validation loss, where evaluated at this step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    /// The validation accuracy of a sequence task, where evaluated (classes right, tags right,
    /// or outputs exactly right).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_accuracy: Option<f64>,
    /// The epoch of this step's chunk.
    pub epoch: u64,
    /// In a data-parallel run, the mean time per step since the previous record spent summing
    /// gradients across ranks, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allreduce_ms: Option<f64>,
}

/// What ended a call to [`Trainer::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// `train.steps` were reached.
    Finished,
    /// The stop flag was raised; a checkpoint was written.
    Interrupted,
}

/// A model, its optimizer and its data, in a run directory, trained chunk by chunk with the hidden
/// state of every stream carried across chunk boundaries and detached there.
pub struct Trainer {
    config: RunConfig,
    run_dir: PathBuf,
    device: Device,
    model: CharLm,
    optimizer: GradientStep,
    train: StreamBatcher,
    val: Option<StreamBatcher>,
    vocab: Vocab,
    progress: Progress,
    /// This rank's streams' state, carried into the next chunk.
    carried: Option<RecurrentState>,
    checkpoints: CheckpointDir,
    ranks: Ranks,
    /// Held by the rank that writes the run's files.
    _lock: Option<RunLock>,
}

impl Trainer {
    /// Starts a new run in `run_dir` (created; it must not hold a run already).
    pub fn create(config: RunConfig, run_dir: &Path, device: &Device) -> Result<Self, TrainError> {
        Self::create_on(config, run_dir, device, Ranks::single())
    }

    /// [`create`](Self::create) for one rank of a data-parallel run: every rank calls it with
    /// the same arguments; rank 0 alone makes the run directory and writes into it.
    pub fn create_on(
        mut config: RunConfig,
        run_dir: &Path,
        device: &Device,
        ranks: Ranks,
    ) -> Result<Self, TrainError> {
        let corpus = Corpus::load_with(&config.data.path, None, config.data.max_bytes)?;
        let streams = streams(&config, corpus)?;
        ranks.ensure_shares(config.data.batch_size, "streams")?;
        ensure_char_lm_fits(&config, streams.0.len(), device, &ranks)?;
        config.data.path = absolute(&config.data.path)?;
        let lock = start_run(run_dir, &ranks, &config, |dir| {
            streams.0.save(&dir.join(VOCAB_FILE)).map_err(Into::into)
        })?;

        let train_device = device.clone().autodiff();
        train_device.seed(config.train.seed);
        let model = drawn(model_config(&config, streams.0.len()).init(&train_device));
        let optimizer = optimizer_for(&config);
        let progress = Progress::start();
        Self::assemble(
            config, run_dir, device, streams, model, optimizer, progress, None, lock, ranks,
        )
    }

    /// Reopens the run in `run_dir` at its newest intact checkpoint; `overrides` may change
    /// `train.*` settings such as `train.steps`.
    pub fn resume(
        run_dir: &Path,
        overrides: &[String],
        device: &Device,
    ) -> Result<Self, TrainError> {
        Self::resume_on(run_dir, overrides, device, Ranks::single())
    }

    /// [`resume`](Self::resume) for one rank of a data-parallel run, on any number of ranks:
    /// the checkpoint holds every stream's state, and each rank takes its share. Rank 0 alone
    /// locks the run directory and writes into it; the others only read it.
    pub fn resume_on(
        run_dir: &Path,
        overrides: &[String],
        device: &Device,
        ranks: Ranks,
    ) -> Result<Self, TrainError> {
        let (lock, config) = reopen_run(run_dir, overrides, ranks.is_primary())?;
        let vocab = Vocab::load(&run_dir.join(VOCAB_FILE))?;
        let corpus = Corpus::load_with(&config.data.path, Some(vocab), config.data.max_bytes)?;
        let streams = streams(&config, corpus)?;
        ranks.ensure_shares(config.data.batch_size, "streams")?;
        ensure_char_lm_fits(&config, streams.0.len(), device, &ranks)?;
        let train_device = device.clone().autodiff();
        // Seeded as `create` seeds it, so a run with no checkpoint yet restarts as it began.
        train_device.seed(config.train.seed);
        let template = drawn(model_config(&config, streams.0.len()).init(&train_device));
        let checkpoint = resume_checkpoint(
            run_dir,
            &config,
            template,
            optimizer_for(&config),
            &train_device,
            char_lm_carried,
        )?;
        log::info!(
            "resuming {} at step {}",
            run_dir.display(),
            checkpoint.progress.step
        );
        continue_run(run_dir, &ranks, &config, checkpoint.progress.step)?;
        let streams_here = ranks.share(config.data.batch_size);
        let carried = checkpoint
            .carried
            .map(|state| state.map(|t| t.slice([streams_here.clone()])));
        Self::assemble(
            config,
            run_dir,
            device,
            streams,
            checkpoint.model,
            checkpoint.optimizer,
            checkpoint.progress,
            carried,
            lock,
            ranks,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: RunConfig,
        run_dir: &Path,
        device: &Device,
        (vocab, train, val): (Vocab, StreamBatcher, Option<StreamBatcher>),
        model: CharLm,
        optimizer: ModuleOptimizer,
        progress: Progress,
        carried: Option<RecurrentState>,
        lock: Option<RunLock>,
        ranks: Ranks,
    ) -> Result<Self, TrainError> {
        let progress = Progress {
            backend: Some(backend_name(device)),
            ..progress
        };
        Ok(Trainer {
            checkpoints: CheckpointDir::new(run_dir),
            optimizer: GradientStep::with_optimizer(&config.optimizer, optimizer),
            config,
            run_dir: run_dir.to_path_buf(),
            device: device.clone(),
            model,
            train,
            val,
            vocab,
            progress,
            carried,
            ranks,
            _lock: lock,
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.progress.step
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The model being trained.
    pub fn model(&self) -> &CharLm {
        &self.model
    }

    /// The learning rate at `step`: `lr * lr_decay ^ floor(step / lr_decay_every)`.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.optimizer.lr_at(step)
    }

    /// One optimizer step on the next chunk. Returns the chunk's loss and the gradient norm.
    ///
    /// In a data-parallel run each rank reads its share of the chunk's streams; the loss and the
    /// update are those of the whole chunk on every rank.
    pub fn train_step(&mut self) -> Result<(f64, f64), TrainError> {
        let train_device = self.device.clone().autodiff();
        let chunk = self.train.next_chunk(&mut self.progress.cursor);
        let step = self.progress.step;
        // Dropout draws from the device generator: seeding it from the step makes a resumed run
        // draw the same masks as an uninterrupted one, and from the rank gives each rank's
        // streams masks of their own.
        train_device.seed(
            self.config
                .train
                .seed
                .wrapping_add(step.wrapping_mul(0x9E37_79B9))
                .wrapping_add((self.ranks.rank() as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
        );
        let (batch_size, seq_len) = (chunk.batch_size, chunk.seq_len);
        let mine = chunk.rows(self.ranks.share(batch_size));
        let state = match self.carried.take() {
            Some(state) if !mine.starts_epoch => state.detach(),
            _ => self.model.zero_state(mine.batch_size, &train_device),
        };
        let (inputs, targets) = chunk_tensors(&mine, &train_device);
        let (loss, state) = self.model.forward_loss(inputs, targets, Some(state));
        let weight = mine.batch_size as f64 / batch_size as f64;
        let (model, loss_value, grad_norm) = self.optimizer.apply_shared(
            self.model.clone(),
            Some(loss),
            weight,
            &self.ranks,
            step,
        )?;
        self.model = model;
        self.carried = Some(state.detach());
        self.progress.step += 1;
        self.progress.chars_seen += (batch_size * seq_len) as u64;
        Ok((loss_value, grad_norm))
    }

    /// The mean validation loss (nats per character) over `train.eval_chunks` chunks of the
    /// validation streams, from a zero state, without gradients; the training state is untouched.
    pub fn evaluate(&self) -> Option<f64> {
        let val = self.val.as_ref()?;
        let limit = match self.config.train.eval_chunks {
            0 => usize::MAX,
            n => n,
        };
        let streams = self.ranks.share(val.batch_size());
        let (total, count) = loss_sum(
            &self.model.valid(),
            val.all_chunks()
                .take(limit)
                .map(|chunk| chunk.rows(streams.clone())),
            &self.device,
        );
        let mut sums = [total, count as f64];
        self.ranks.sum(&mut sums);
        Some(sums[0] / sums[1].max(1.0))
    }

    /// Writes a checkpoint of the current state and prunes old ones. In a data-parallel run
    /// every rank calls it: the ranks' weights are compared, rank 0 gathers every stream's
    /// state and writes the checkpoint, and every rank gets its path back.
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        self.ranks
            .check_same_weights(&self.model, self.progress.step)?;
        let carried = self.gathered_carried();
        if !self.ranks.is_primary() {
            return Ok(self.checkpoints.step_dir(self.progress.step));
        }
        self.checkpoints.save_and_prune(
            &self.model,
            self.optimizer.optimizer(),
            carried.as_ref(),
            &self.progress,
            self.config.train.keep_checkpoints,
        )
    }

    /// Every stream's carried state, in stream order: this rank's own, or all ranks' shares
    /// gathered (every rank must call it then).
    fn gathered_carried(&self) -> Option<RecurrentState> {
        if !self.ranks.is_distributed() {
            return self.carried.clone();
        }
        let any_carried = self.ranks.any(self.carried.is_some());
        if !any_carried {
            return None;
        }
        let (cell, layers, d_hidden) = (
            self.config.model.cell,
            self.config.model.num_layers,
            self.config.model.d_hidden,
        );
        let batch_size = self.config.data.batch_size;
        let local = self.carried.clone().unwrap_or_else(|| {
            self.model
                .zero_state(self.ranks.share(batch_size).len(), &self.device)
        });
        let mut bytes = Vec::new();
        for tensor in state_tensors(local) {
            let values = tensor.into_data().convert::<f32>();
            for value in values.as_slice::<f32>().expect("converted to f32") {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        let shares: Vec<Vec<Tensor<2>>> = self
            .ranks
            .all_gather(&bytes)
            .iter()
            .enumerate()
            .map(|(rank, bytes)| {
                let rows = self.ranks.share_of(rank, batch_size).len();
                let values: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                values
                    .chunks_exact(rows * d_hidden)
                    .map(|part| {
                        Tensor::from_data(
                            TensorData::new(part.to_vec(), [rows, d_hidden]),
                            &self.device,
                        )
                    })
                    .collect()
            })
            .collect();
        let per_layer = if cell.has_cell_state() { 2 } else { 1 };
        let joined = |index: usize| {
            Tensor::cat(shares.iter().map(|share| share[index].clone()).collect(), 0)
        };
        Some(RecurrentState {
            layers: (0..layers)
                .map(|layer| LayerState {
                    hidden: joined(layer * per_layer),
                    cell: (per_layer == 2).then(|| joined(layer * per_layer + 1)),
                })
                .collect(),
        })
    }
}

impl Training for Trainer {
    fn config(&self) -> &RunConfig {
        &self.config
    }

    fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn progress(&mut self) -> &mut Progress {
        &mut self.progress
    }

    fn lr_at(&self, step: u64) -> f64 {
        self.optimizer.lr_at(step)
    }

    fn epoch(&self) -> u64 {
        self.progress.cursor.epoch
    }

    fn train_step(&mut self) -> Result<(f64, f64), TrainError> {
        Trainer::train_step(self)
    }

    fn evaluate(&self) -> Option<Evaluation> {
        Trainer::evaluate(self).map(|loss| Evaluation {
            loss,
            accuracy: None,
        })
    }

    fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        Trainer::save_checkpoint(self)
    }

    fn ranks(&self) -> &Ranks {
        &self.ranks
    }
}

/// A state's tensors, layer by layer: the hidden vector, then the cell vector where there is one.
fn state_tensors(state: RecurrentState) -> Vec<Tensor<2>> {
    state
        .layers
        .into_iter()
        .flat_map(|layer| std::iter::once(layer.hidden).chain(layer.cell))
        .collect()
}

/// The run's vocabulary with its training and validation streams, made before anything is
/// written so that a corpus too short for a batch leaves no run directory behind.
fn streams(
    config: &RunConfig,
    corpus: Corpus,
) -> Result<(Vocab, StreamBatcher, Option<StreamBatcher>), TrainError> {
    let splits = Splits::by_fraction(
        corpus.len(),
        config.data.val_fraction,
        config.data.test_fraction,
    )?;
    let (batch_size, seq_len) = (config.data.batch_size, config.data.seq_len);
    let train = StreamBatcher::new(
        &corpus.ids[splits.train.clone()],
        batch_size,
        seq_len,
        "train",
    )?;
    let val = if splits.val.is_empty() {
        None
    } else {
        Some(StreamBatcher::new(
            &corpus.ids[splits.val.clone()],
            batch_size,
            seq_len,
            "validation",
        )?)
    };
    Ok((corpus.vocab, train, val))
}

/// Refuses training the character model of `config` over `vocab_size` characters where it
/// cannot fit in memory, before any of it is allocated.
fn ensure_char_lm_fits(
    config: &RunConfig,
    vocab_size: usize,
    device: &Device,
    ranks: &Ranks,
) -> Result<(), TrainError> {
    let positions = ranks.share(config.data.batch_size).len() * config.data.seq_len;
    ensure_training_fits(config, vocab_size, vocab_size, positions, device)
}

/// The config of the model a run trains.
pub fn model_config(config: &RunConfig, vocab_size: usize) -> CharLmConfig {
    CharLmConfig::new(vocab_size, config.model.cell, config.model.d_hidden)
        .with_num_layers(config.model.num_layers)
        .with_d_embed(config.model.d_embed)
        .with_dropout(config.model.dropout)
        .with_kernel(config.model.kernel)
}

/// `model` with every parameter drawn now, in declaration order. Burn draws a parameter's
/// initial values when it is first read, so without this the order in which a training step and
/// a checkpoint read them could give one seed two different models.
pub(crate) fn drawn<M: Module>(model: M) -> M {
    struct Draw;
    impl ModuleVisitor for Draw {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Draw);
    model
}

/// The chunk's ids as `[batch_size, seq_len]` tensors.
pub fn chunk_tensors(chunk: &Chunk, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [chunk.batch_size, chunk.seq_len];
    (
        Tensor::from_data(TensorData::new(chunk.inputs_i64(), shape), device),
        Tensor::from_data(TensorData::new(chunk.targets_i64(), shape), device),
    )
}

/// The mean next-character loss over `chunks`, read in order with the state carried between
/// them (reset where a chunk starts an epoch), weighting every prediction equally.
pub fn mean_loss(model: &CharLm, chunks: impl Iterator<Item = Chunk>, device: &Device) -> f64 {
    let (total, count) = loss_sum(model, chunks, device);
    total / count.max(1) as f64
}

/// The summed next-character loss over `chunks` and the number of predictions it sums, as
/// [`mean_loss`] reads them.
fn loss_sum(model: &CharLm, chunks: impl Iterator<Item = Chunk>, device: &Device) -> (f64, usize) {
    let mut state: Option<RecurrentState> = None;
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in chunks {
        if chunk.starts_epoch {
            state = None;
        }
        let (inputs, targets) = chunk_tensors(&chunk, device);
        let (loss, next) = model.forward_loss(inputs, targets, state.take());
        let loss = loss.into_scalar::<f64>();
        let predictions = chunk.batch_size * chunk.seq_len;
        total += loss * predictions as f64;
        count += predictions;
        state = Some(next);
    }
    (total, count)
}

/// Drops the metrics lines after `step`: an interrupted run may have logged steps its last
/// checkpoint does not hold, and the resumed run logs them again.
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let records = match read_metrics(path) {
        Ok(records) => records,
        Err(TrainError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    // A damaged last line (a write cut off) goes too, with a warning; damage before it stops
    // the resume rather than silently losing lines.
    let kept: String = records
        .into_iter()
        .filter(|(_, record)| record.step <= step)
        .map(|(line, _)| format!("{line}\n"))
        .collect();
    write_atomically(path, kept.as_bytes())
}
