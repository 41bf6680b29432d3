//! Training on whole sequences, one per line: classification (many-to-one), tagging
//! (many-to-many) and sequence to sequence, through the same optimizer step, metrics, run loop
//! and checkpoints as the language model.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_data::{DataError, LabelSet, PaddedBatch, TokenVocab, Vocab, load_labelled, load_pairs};
use ember_model::{
    DecodeConfig, Seq2Seq, Seq2SeqConfig, SequenceClassifier, SequenceClassifierConfig,
    SequenceDecoderConfig, SequenceEncoderConfig, SequenceTagger, SequenceTaggerConfig, StepLoss,
    cross_entropy, length_mask,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{CheckpointDir, Progress, no_carried, write_atomically};
use crate::config::{RunConfig, TaskKind};
use crate::error::{expect_run, io_error};
use crate::memory::{backend_name, ensure_inference_fits, ensure_training_fits};
use crate::run::EVAL_CHUNK;
use crate::run_dir::{RunLock, absolute, continue_run, reopen_run, resume_checkpoint, start_run};
use crate::step::{GradientStep, optimizer_from};
use crate::trainer::{CONFIG_FILE, VOCAB_FILE, drawn};
use crate::{Evaluation, Ranks, TrainError, Training};

/// The class names (or tag characters) of a run, inside its directory.
pub const LABELS_FILE: &str = "labels.json";

/// What a line asks the model for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One class.
    Class(usize),
    /// One tag per source step.
    Tags(Vec<usize>),
    /// A sequence of token ids, without start or end marks.
    Sequence(Vec<usize>),
}

/// One line of a sequence dataset, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The input token ids.
    pub source: Vec<usize>,
    /// What the model should answer.
    pub target: Target,
}

/// The vocabularies of a sequence task: input (and, for seq2seq, output) characters, and the
/// class names or tag characters.
#[derive(Debug, Clone)]
pub struct TaskVocab {
    /// Characters, with pad, start and end ids in front.
    pub tokens: TokenVocab,
    /// Class names (`classify`) or tag characters (`tag`); empty for `seq2seq`.
    pub labels: LabelSet,
}

impl TaskVocab {
    /// Reads a run's vocabularies.
    pub fn load(run_dir: &Path) -> Result<Self, TrainError> {
        let tokens = TokenVocab::new(Vocab::load(&run_dir.join(VOCAB_FILE))?);
        let path = run_dir.join(LABELS_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let names: Vec<String> =
            serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                message: format!("not a labels file: {e}"),
            })?;
        Ok(TaskVocab {
            tokens,
            labels: LabelSet::new(names.iter().map(String::as_str)),
        })
    }

    fn save(&self, run_dir: &Path) -> Result<(), TrainError> {
        self.tokens.chars().save(&run_dir.join(VOCAB_FILE))?;
        let json = serde_json::to_string(self.labels.names()).expect("labels serialize");
        write_atomically(&run_dir.join(LABELS_FILE), json.as_bytes())
    }

    /// The ids of one input line; `origin` and `line` name it in errors.
    pub fn encode_line(
        &self,
        text: &str,
        origin: &Path,
        line: usize,
    ) -> Result<Vec<usize>, DataError> {
        if text.is_empty() {
            return Err(DataError::BadLine {
                path: origin.to_path_buf(),
                line,
                message: "the text is empty".into(),
            });
        }
        self.tokens.encode(text).map_err(|error| match error {
            DataError::UnknownChar { ch, position, .. } => DataError::BadLine {
                path: origin.to_path_buf(),
                line,
                message: format!(
                    "character {ch:?} at column {} is not in the run's vocabulary",
                    position + 1
                ),
            },
            other => other,
        })
    }
}

/// A sequence dataset split into training and validation lines (the last `val_fraction` of the
/// lines, as the language model holds out the end of its text).
pub struct SequenceData {
    /// The vocabularies.
    pub vocab: TaskVocab,
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub val: Vec<Example>,
}

impl SequenceData {
    /// Reads `config.data.path` for `config.task.kind`, with the given vocabularies or new ones.
    pub fn load(config: &RunConfig, vocab: Option<TaskVocab>) -> Result<Self, TrainError> {
        let path = &config.data.path;
        let lines: Vec<(usize, String, String)> = match config.task.kind {
            TaskKind::Classify => load_labelled(path)?
                .into_iter()
                .map(|e| (e.line, e.text, e.label))
                .collect(),
            TaskKind::Tag | TaskKind::Seq2seq => load_pairs(path)?
                .into_iter()
                .map(|p| (p.line, p.source, p.target))
                .collect(),
            TaskKind::LanguageModel => unreachable!("the language model reads a plain text"),
        };
        let kind = config.task.kind;
        let vocab = match vocab {
            Some(vocab) => vocab,
            None => {
                let mut chars: String = lines.iter().map(|l| l.1.as_str()).collect();
                if kind == TaskKind::Seq2seq {
                    chars.extend(lines.iter().map(|l| l.2.as_str()));
                }
                let labels = match kind {
                    TaskKind::Classify => LabelSet::new(lines.iter().map(|l| l.2.as_str())),
                    TaskKind::Tag => {
                        let tags: Vec<String> = lines
                            .iter()
                            .flat_map(|l| l.2.chars())
                            .map(String::from)
                            .collect();
                        LabelSet::new(tags.iter().map(String::as_str))
                    }
                    _ => LabelSet::new([]),
                };
                TaskVocab {
                    tokens: TokenVocab::new(Vocab::from_text(&chars)?),
                    labels,
                }
            }
        };
        let mut examples = Vec::with_capacity(lines.len());
        for (line, source, target) in &lines {
            let bad = |message: String| DataError::BadLine {
                path: path.clone(),
                line: *line,
                message,
            };
            let source_ids = vocab.encode_line(source, path, *line)?;
            let target = match kind {
                TaskKind::Classify => Target::Class(
                    vocab
                        .labels
                        .id(target)
                        .ok_or_else(|| bad(format!("label `{target}` is not one of the run's")))?,
                ),
                TaskKind::Tag => {
                    let tags = target
                        .chars()
                        .map(|c| {
                            vocab.labels.id(&c.to_string()).ok_or_else(|| {
                                bad(format!("tag {c:?} is not one of the run's tags"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if tags.len() != source_ids.len() {
                        return Err(bad(format!(
                            "{} tags for {} characters: give one tag per character",
                            tags.len(),
                            source_ids.len()
                        ))
                        .into());
                    }
                    Target::Tags(tags)
                }
                _ => Target::Sequence(vocab.encode_line(target, path, *line)?),
            };
            examples.push(Example {
                source: source_ids,
                target,
            });
        }
        let val_len = (examples.len() as f64 * config.data.val_fraction).round() as usize;
        let val = examples.split_off(examples.len() - val_len);
        if examples.is_empty() {
            return Err(TrainError::Config {
                origin: path.display().to_string(),
                message: format!(
                    "no training lines are left after holding out `data.val_fraction` = {}",
                    config.data.val_fraction
                ),
            });
        }
        Ok(SequenceData {
            vocab,
            train: examples,
            val,
        })
    }
}

/// The classes a sequence model's head chooses among: labels, or output tokens for seq2seq.
fn task_outputs(config: &RunConfig, vocab: &TaskVocab) -> usize {
    match config.task.kind {
        TaskKind::Seq2seq | TaskKind::LanguageModel => vocab.tokens.len(),
        TaskKind::Classify | TaskKind::Tag => vocab.labels.len(),
    }
}

/// Refuses training a sequence model where it cannot fit in memory: this rank's share of a
/// batch of the longest lines (source and target) is the chunk.
fn ensure_task_fits(
    config: &RunConfig,
    data: &SequenceData,
    device: &Device,
    ranks: &Ranks,
) -> Result<(), TrainError> {
    let longest = data
        .train
        .iter()
        .chain(&data.val)
        .map(|example| {
            example.source.len()
                + match &example.target {
                    Target::Class(_) => 1,
                    Target::Tags(tags) => tags.len(),
                    Target::Sequence(ids) => ids.len() + 1,
                }
        })
        .max()
        .unwrap_or(1);
    ensure_training_fits(
        config,
        data.vocab.tokens.len(),
        task_outputs(config, &data.vocab),
        ranks.share(config.data.batch_size).len() * longest,
        device,
    )
}

/// A model that learns one of the sequence tasks.
pub trait SequenceTask: Module + Sized {
    /// The task it learns.
    const KIND: TaskKind;

    /// A new model for a run's config.
    fn init(config: &RunConfig, vocab: &TaskVocab, device: &Device) -> Self;

    /// The mean loss of a batch.
    fn loss(&self, batch: &[&Example], config: &RunConfig, device: &Device) -> Tensor<1>;

    /// The number of terms [`loss`](Self::loss) averages over `batch`: its examples, unless
    /// the loss is a mean over steps. A data-parallel run weighs each rank's loss by it.
    fn loss_terms(batch: &[&Example], _config: &RunConfig) -> usize {
        batch.len()
    }

    /// The answers for a batch of inputs.
    fn predict(&self, sources: &[Vec<usize>], config: &RunConfig, device: &Device) -> Vec<Target>;
}

fn encoder_config(config: &RunConfig, vocab: &TaskVocab) -> SequenceEncoderConfig {
    let model = &config.model;
    SequenceEncoderConfig::new(vocab.tokens.len(), model.cell, model.d_hidden)
        .with_d_embed(model.d_embed)
        .with_num_layers(model.num_layers)
        .with_dropout(model.dropout)
        .with_bidirectional(model.bidirectional)
        .with_kernel(model.kernel)
}

fn padded<S: AsRef<[usize]>>(rows: &[S], device: &Device) -> (Tensor<2, Int>, PaddedBatch) {
    let batch = PaddedBatch::new(rows, TokenVocab::PAD);
    (ids_of(&batch, device), batch)
}

fn ids_of(batch: &PaddedBatch, device: &Device) -> Tensor<2, Int> {
    let shape = [batch.batch_size, batch.max_len];
    Tensor::from_data(TensorData::new(batch.ids.clone(), shape), device)
}

fn sources<'a>(batch: &[&'a Example]) -> Vec<&'a Vec<usize>> {
    batch.iter().map(|e| &e.source).collect()
}

impl SequenceTask for SequenceClassifier {
    const KIND: TaskKind = TaskKind::Classify;

    fn init(config: &RunConfig, vocab: &TaskVocab, device: &Device) -> Self {
        SequenceClassifierConfig::new(encoder_config(config, vocab), vocab.labels.len())
            .with_pooling(config.model.pooling)
            .init(device)
    }

    fn loss(&self, batch: &[&Example], _: &RunConfig, device: &Device) -> Tensor<1> {
        let (ids, padding) = padded(&sources(batch), device);
        let classes: Vec<i64> = batch
            .iter()
            .map(|e| match e.target {
                Target::Class(class) => class as i64,
                _ => unreachable!("a classification dataset holds classes"),
            })
            .collect();
        let classes = Tensor::from_data(TensorData::new(classes, [batch.len()]), device);
        cross_entropy(self.forward(ids, &padding.lengths), classes)
    }

    fn predict(&self, sources: &[Vec<usize>], _: &RunConfig, device: &Device) -> Vec<Target> {
        let (ids, padding) = padded(sources, device);
        let classes = SequenceClassifier::predict(self, ids, &padding.lengths);
        classes.into_iter().map(Target::Class).collect()
    }
}

impl SequenceTask for SequenceTagger {
    const KIND: TaskKind = TaskKind::Tag;

    fn init(config: &RunConfig, vocab: &TaskVocab, device: &Device) -> Self {
        SequenceTaggerConfig::new(encoder_config(config, vocab), vocab.labels.len()).init(device)
    }

    fn loss(&self, batch: &[&Example], config: &RunConfig, device: &Device) -> Tensor<1> {
        let (ids, padding) = padded(&sources(batch), device);
        let tags: Vec<&Vec<usize>> = batch
            .iter()
            .map(|e| match &e.target {
                Target::Tags(tags) => tags,
                _ => unreachable!("a tagging dataset holds tags"),
            })
            .collect();
        let (tags, _) = padded(&tags, device);
        self.forward_loss(ids, &padding.lengths, tags, config.task.step_loss)
    }

    fn loss_terms(batch: &[&Example], config: &RunConfig) -> usize {
        match config.task.step_loss {
            StepLoss::Sum => batch.len(),
            StepLoss::Mean => batch.iter().map(|e| e.source.len()).sum(),
        }
    }

    fn predict(&self, sources: &[Vec<usize>], _: &RunConfig, device: &Device) -> Vec<Target> {
        let (ids, padding) = padded(sources, device);
        let tags = SequenceTagger::predict(self, ids, &padding.lengths);
        tags.into_iter().map(Target::Tags).collect()
    }
}

impl SequenceTask for Seq2Seq {
    const KIND: TaskKind = TaskKind::Seq2seq;

    fn init(config: &RunConfig, vocab: &TaskVocab, device: &Device) -> Self {
        let model = &config.model;
        let decoder = SequenceDecoderConfig::new(vocab.tokens.len(), model.cell, model.d_hidden)
            .with_d_embed(model.d_embed)
            .with_num_layers(model.num_layers)
            .with_dropout(model.dropout)
            .with_kernel(model.kernel);
        Seq2SeqConfig::new(encoder_config(config, vocab), decoder).init(device)
    }

    fn loss(&self, batch: &[&Example], _: &RunConfig, device: &Device) -> Tensor<1> {
        let (source, padding) = padded(&sources(batch), device);
        let targets: Vec<&Vec<usize>> = batch
            .iter()
            .map(|e| match &e.target {
                Target::Sequence(ids) => ids,
                _ => unreachable!("a pair dataset holds sequences"),
            })
            .collect();
        let (inputs, outputs) = TokenVocab::teacher_forcing(&targets);
        let mask = length_mask(&outputs.lengths, outputs.max_len, device);
        self.forward_loss(
            source,
            &padding.lengths,
            ids_of(&inputs, device),
            ids_of(&outputs, device),
            mask,
        )
    }

    /// Every target token and its end mark.
    fn loss_terms(batch: &[&Example], _: &RunConfig) -> usize {
        batch
            .iter()
            .map(|e| match &e.target {
                Target::Sequence(ids) => ids.len() + 1,
                _ => unreachable!("a pair dataset holds sequences"),
            })
            .sum()
    }

    fn predict(&self, sources: &[Vec<usize>], config: &RunConfig, device: &Device) -> Vec<Target> {
        let (source, padding) = padded(sources, device);
        let decode =
            DecodeConfig::new(TokenVocab::BOS, TokenVocab::EOS, config.task.max_output_len)
                .with_beam_width(config.task.beam_width);
        self.decode(source, &padding.lengths, &decode)
            .into_iter()
            .map(|h| Target::Sequence(h.ids))
            .collect()
    }
}

/// How much of `predicted` matches `expected`: `(right, out of)`; a class or a whole output
/// sequence counts once, tags count one per step.
pub fn score(predicted: &Target, expected: &Target) -> (usize, usize) {
    match (predicted, expected) {
        (Target::Tags(p), Target::Tags(e)) => {
            (p.iter().zip(e).filter(|(a, b)| a == b).count(), e.len())
        }
        (p, e) => (usize::from(p == e), 1),
    }
}

/// A sequence model, its optimizer and its dataset, in a run directory.
pub struct TaskTrainer<M: SequenceTask> {
    config: RunConfig,
    run_dir: PathBuf,
    device: Device,
    model: M,
    optimizer: GradientStep,
    data: SequenceData,
    /// The epoch whose line order is `epoch_order`, drawn once per epoch, not per batch.
    order_epoch: Option<u64>,
    epoch_order: Vec<usize>,
    progress: Progress,
    checkpoints: CheckpointDir,
    ranks: Ranks,
    /// Held by the rank that writes the run's files.
    _lock: Option<RunLock>,
}

impl<M: SequenceTask> TaskTrainer<M> {
    /// Starts a new run in `run_dir` (created; it must not hold a run already).
    pub fn create(config: RunConfig, run_dir: &Path, device: &Device) -> Result<Self, TrainError> {
        Self::create_on(config, run_dir, device, Ranks::single())
    }

    /// [`create`](Self::create) for one rank of a data-parallel run: every rank calls it with
    /// the same arguments; rank 0 alone makes the run directory and writes into it. Each
    /// batch's examples are shared among the ranks.
    pub fn create_on(
        mut config: RunConfig,
        run_dir: &Path,
        device: &Device,
        ranks: Ranks,
    ) -> Result<Self, TrainError> {
        let data = SequenceData::load(&config, None)?;
        ranks.ensure_shares(config.data.batch_size, "examples per batch")?;
        ensure_task_fits(&config, &data, device, &ranks)?;
        config.data.path = absolute(&config.data.path)?;
        let lock = start_run(run_dir, &ranks, &config, |dir| data.vocab.save(dir))?;
        let train_device = device.clone().autodiff();
        train_device.seed(config.train.seed);
        let model = drawn(M::init(&config, &data.vocab, &train_device));
        Ok(TaskTrainer {
            optimizer: GradientStep::new(&config.optimizer),
            checkpoints: CheckpointDir::new(run_dir),
            run_dir: run_dir.to_path_buf(),
            device: device.clone(),
            model,
            data,
            order_epoch: None,
            epoch_order: Vec::new(),
            progress: Progress {
                backend: Some(backend_name(device)),
                ..Progress::start()
            },
            config,
            ranks,
            _lock: lock,
        })
    }

    /// Reopens the run in `run_dir` at its newest intact checkpoint.
    pub fn resume(
        run_dir: &Path,
        overrides: &[String],
        device: &Device,
    ) -> Result<Self, TrainError> {
        Self::resume_on(run_dir, overrides, device, Ranks::single())
    }

    /// [`resume`](Self::resume) for one rank of a data-parallel run, on any number of ranks.
    pub fn resume_on(
        run_dir: &Path,
        overrides: &[String],
        device: &Device,
        ranks: Ranks,
    ) -> Result<Self, TrainError> {
        let (lock, config) = reopen_run(run_dir, overrides, ranks.is_primary())?;
        let vocab = TaskVocab::load(run_dir)?;
        let data = SequenceData::load(&config, Some(vocab))?;
        ranks.ensure_shares(config.data.batch_size, "examples per batch")?;
        ensure_task_fits(&config, &data, device, &ranks)?;
        let train_device = device.clone().autodiff();
        // Seeded as `create` seeds it, so a run with no checkpoint yet restarts as it began.
        train_device.seed(config.train.seed);
        let template = drawn(M::init(&config, &data.vocab, &train_device));
        let checkpoint = resume_checkpoint(
            run_dir,
            &config,
            template,
            optimizer_from(&config.optimizer),
            &train_device,
            no_carried,
        )?;
        continue_run(run_dir, &ranks, &config, checkpoint.progress.step)?;
        Ok(TaskTrainer {
            optimizer: GradientStep::with_optimizer(&config.optimizer, checkpoint.optimizer),
            checkpoints: CheckpointDir::new(run_dir),
            run_dir: run_dir.to_path_buf(),
            device: device.clone(),
            model: checkpoint.model,
            data,
            order_epoch: None,
            epoch_order: Vec::new(),
            progress: Progress {
                backend: Some(backend_name(device)),
                ..checkpoint.progress
            },
            config,
            ranks,
            _lock: lock,
        })
    }

    fn batches_per_epoch(&self) -> u64 {
        self.data.train.len().div_ceil(self.config.data.batch_size) as u64
    }

    /// The training lines of `step`: each epoch reads the lines in its own seeded order, so a
    /// resumed run draws the batches an uninterrupted one would.
    fn batch_lines(&mut self, step: u64) -> Vec<usize> {
        let epoch = step / self.batches_per_epoch();
        if self.order_epoch != Some(epoch) {
            self.epoch_order = (0..self.data.train.len()).collect();
            self.epoch_order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                self.config.train.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
            self.order_epoch = Some(epoch);
        }
        let index = (step % self.batches_per_epoch()) as usize;
        let size = self.config.data.batch_size;
        self.epoch_order
            .iter()
            .skip(index * size)
            .take(size)
            .copied()
            .collect()
    }
}

/// A sequence run's config and vocabularies.
fn open_run(run_dir: &Path) -> Result<(RunConfig, TaskVocab), TrainError> {
    expect_run(run_dir)?;
    let config = RunConfig::load(&run_dir.join(CONFIG_FILE), &[])?;
    Ok((config, TaskVocab::load(run_dir)?))
}

impl<M: SequenceTask> Training for TaskTrainer<M> {
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
        self.progress.step / self.batches_per_epoch()
    }

    fn train_step(&mut self) -> Result<(f64, f64), TrainError> {
        let step = self.progress.step;
        let train_device = self.device.clone().autodiff();
        train_device.seed(
            self.config
                .train
                .seed
                .wrapping_add(step.wrapping_mul(0x9E37_79B9))
                .wrapping_add((self.ranks.rank() as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
        );
        let lines = self.batch_lines(step);
        let batch: Vec<&Example> = lines.iter().map(|&i| &self.data.train[i]).collect();
        let chars: usize = batch.iter().map(|e| e.source.len()).sum();
        // This rank's share of the batch; the last batch of an epoch may leave a rank none.
        let mine = &batch[self.ranks.share(batch.len())];
        let loss = (!mine.is_empty()).then(|| self.model.loss(mine, &self.config, &train_device));
        let weight = M::loss_terms(mine, &self.config) as f64
            / M::loss_terms(&batch, &self.config).max(1) as f64;
        let (model, loss_value, grad_norm) =
            self.optimizer
                .apply_shared(self.model.clone(), loss, weight, &self.ranks, step)?;
        self.model = model;
        self.progress.step += 1;
        self.progress.chars_seen += chars as u64;
        Ok((loss_value, grad_norm))
    }

    fn evaluate(&self) -> Option<Evaluation> {
        if self.data.val.is_empty() {
            return None;
        }
        let model = self.model.valid();
        let (mut loss, mut loss_terms, mut right, mut total) = (0.0, 0, 0, 0);
        let mine = &self.data.val[self.ranks.share(self.data.val.len())];
        for batch in mine.chunks(self.config.data.batch_size) {
            let batch: Vec<&Example> = batch.iter().collect();
            // Weighted by the terms each batch's mean is over, so that the result is the mean
            // over the whole split however it is cut into batches and ranks.
            let terms = M::loss_terms(&batch, &self.config);
            loss += model
                .loss(&batch, &self.config, &self.device)
                .into_scalar::<f64>()
                * terms as f64;
            loss_terms += terms;
            let sources: Vec<Vec<usize>> = batch.iter().map(|e| e.source.clone()).collect();
            for (predicted, example) in model
                .predict(&sources, &self.config, &self.device)
                .iter()
                .zip(&batch)
            {
                let (r, t) = score(predicted, &example.target);
                right += r;
                total += t;
            }
        }
        let mut sums = [loss, loss_terms as f64, right as f64, total as f64];
        self.ranks.sum(&mut sums);
        Some(Evaluation {
            loss: sums[0] / sums[1].max(1.0),
            accuracy: Some(sums[2] / sums[3].max(1.0)),
        })
    }

    fn ranks(&self) -> &Ranks {
        &self.ranks
    }

    fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        self.ranks
            .check_same_weights(&self.model, self.progress.step)?;
        if !self.ranks.is_primary() {
            return Ok(self.checkpoints.step_dir(self.progress.step));
        }
        self.checkpoints.save_and_prune(
            &self.model,
            self.optimizer.optimizer(),
            None,
            &self.progress,
            self.config.train.keep_checkpoints,
        )
    }
}

/// A finished (or running) sequence run, opened to answer new inputs.
pub struct TaskRun<M: SequenceTask> {
    /// Its resolved config.
    pub config: RunConfig,
    /// Its vocabularies.
    pub vocab: TaskVocab,
    /// The weights of its newest intact checkpoint, on a device without autodiff.
    pub model: M,
    /// The longest input line [`answer`](Self::answer) takes, in characters: the model reads a
    /// line whole, and its memory grows by about 2 KB per character.
    pub max_line_chars: usize,
}

/// The default of [`TaskRun::max_line_chars`]: about 200 MB of activations.
pub const MAX_LINE_CHARS: usize = 100_000;

impl<M: SequenceTask> TaskRun<M> {
    /// Opens `run_dir`.
    pub fn open(run_dir: &Path, device: &Device) -> Result<Self, TrainError> {
        let (config, vocab) = open_run(run_dir)?;
        // Input lines are not known yet: a batch of lines of `EVAL_CHUNK` characters.
        ensure_inference_fits(
            &config,
            vocab.tokens.len(),
            task_outputs(&config, &vocab),
            config.data.batch_size * EVAL_CHUNK,
            device,
        )?;
        let template = M::init(&config, &vocab, device);
        let checkpoint = CheckpointDir::new(run_dir).load_latest(
            template,
            optimizer_from(&config.optimizer),
            device,
            no_carried,
        )?;
        Ok(TaskRun {
            config,
            vocab,
            model: checkpoint.model,
            max_line_chars: MAX_LINE_CHARS,
        })
    }

    /// The answer to every line of `text` (`origin` names it in errors), as text: the class
    /// name, the tag string, or the output sequence.
    pub fn answer(
        &self,
        text: &str,
        origin: &Path,
        device: &Device,
    ) -> Result<Vec<String>, TrainError> {
        let mut sources = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let chars = line.chars().count();
            if chars > self.max_line_chars {
                return Err(DataError::BadLine {
                    path: origin.to_path_buf(),
                    line: index + 1,
                    message: format!(
                        "{chars} characters, more than the {} a line may have (the model reads \
                         a line whole, about 2 KB of memory per character; raise it with \
                         --max-line-chars)",
                        self.max_line_chars
                    ),
                }
                .into());
            }
            sources.push(self.vocab.encode_line(line, origin, index + 1)?);
        }
        let mut answers = Vec::with_capacity(sources.len());
        for chunk in sources.chunks(self.config.data.batch_size.max(1)) {
            for target in self.model.predict(chunk, &self.config, device) {
                answers.push(match target {
                    Target::Class(class) => {
                        self.vocab.labels.name(class).unwrap_or("?").to_string()
                    }
                    Target::Tags(tags) => tags
                        .iter()
                        .map(|&t| self.vocab.labels.name(t).unwrap_or("?"))
                        .collect(),
                    Target::Sequence(ids) => self.vocab.tokens.decode(ids)?,
                });
            }
        }
        Ok(answers)
    }
}
