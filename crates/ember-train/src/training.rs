//! The loop every Ember run goes through: steps, metrics lines, evaluation, checkpoints, stop.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::checkpoint::Progress;
use crate::config::{RunConfig, TaskKind};
use crate::error::io_error;
use crate::trainer::{METRICS_FILE, MetricsRecord, RunOutcome};
use crate::{Ranks, TrainError};

/// What an evaluation on the validation split measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The mean loss.
    pub loss: f64,
    /// The share right, for tasks with discrete answers.
    pub accuracy: Option<f64>,
}

/// A run being trained: the character model's truncated-BPTT [`Trainer`](crate::Trainer) or a
/// sequence task's [`TaskTrainer`](crate::TaskTrainer). [`run`](Self::run) is their one loop.
pub trait Training {
    /// The resolved configuration.
    fn config(&self) -> &RunConfig;
    /// The run directory.
    fn run_dir(&self) -> &Path;
    /// The counters, for the loop to record the best validation loss in.
    fn progress(&mut self) -> &mut Progress;
    /// The learning rate at `step`.
    fn lr_at(&self, step: u64) -> f64;
    /// The epoch the next step reads from.
    fn epoch(&self) -> u64;
    /// One optimizer step; returns its loss and the gradient norm before clipping.
    fn train_step(&mut self) -> Result<(f64, f64), TrainError>;
    /// Measures the model on the validation split, if there is one.
    fn evaluate(&self) -> Option<Evaluation>;
    /// Writes a checkpoint and prunes old ones (in a data-parallel run every rank calls it,
    /// rank 0 writes).
    fn save_checkpoint(&self) -> Result<PathBuf, TrainError>;
    /// This process's place among the ranks of the run.
    fn ranks(&self) -> &Ranks;

    /// Trains until `train.steps` or until `stop` is raised, logging metrics and writing
    /// checkpoints; `on_record` sees every metrics line as it is written.
    ///
    /// In a data-parallel run every rank runs this loop in step: `stop` raised on any rank
    /// stops them all after the same step, and rank 0 alone writes metrics and sees records.
    fn run(
        &mut self,
        stop: &AtomicBool,
        on_record: &mut dyn FnMut(&MetricsRecord),
    ) -> Result<RunOutcome, TrainError> {
        let train_config = self.config().train.clone();
        use_threads(train_config.threads);
        let metrics_path = self.run_dir().join(METRICS_FILE);
        let mut metrics = match self.ranks().is_primary() {
            true => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&metrics_path)
                    .map_err(io_error(&metrics_path))?,
            ),
            false => None,
        };
        let mut interval_start = Instant::now();
        let mut interval_chars = self.progress().chars_seen;
        while self.progress().step < train_config.steps {
            if self.ranks().any(stop.load(Ordering::SeqCst)) {
                self.save_checkpoint()?;
                return Ok(RunOutcome::Interrupted);
            }
            let next_step = self.progress().step;
            let lr = self.lr_at(next_step);
            let epoch = self.epoch();
            let (loss, grad_norm) = self.train_step()?;
            let step = self.progress().step;
            if self.config().task.kind == TaskKind::LanguageModel {
                // char-rnn's rule: a loss that climbs past three times its first value will
                // not come back. Per-character losses are comparable from step to step; a
                // sequence task's summed losses are not.
                let first = *self.progress().first_loss.get_or_insert(loss);
                if loss > 3.0 * first {
                    return Err(TrainError::Diverged {
                        step,
                        quantity: "loss",
                        value: loss,
                        limit: Some(3.0 * first),
                    });
                }
            }

            let evaluation = if train_config.eval_every > 0 && step % train_config.eval_every == 0 {
                self.evaluate()
            } else {
                None
            };
            if let Some(evaluation) = evaluation {
                let progress = self.progress();
                if progress.best.is_none_or(|(_, best)| evaluation.loss < best) {
                    progress.best = Some((step, evaluation.loss));
                }
            }
            if step % train_config.log_every == 0
                || evaluation.is_some()
                || step == train_config.steps
            {
                let seconds = interval_start.elapsed().as_secs_f64().max(1e-9);
                let chars_seen = self.progress().chars_seen;
                let record = MetricsRecord {
                    step,
                    loss,
                    lr,
                    grad_norm,
                    chars_per_sec: (chars_seen - interval_chars) as f64 / seconds,
                    val_loss: evaluation.map(|e| e.loss),
                    val_accuracy: evaluation.and_then(|e| e.accuracy),
                    epoch,
                    allreduce_ms: self
                        .ranks()
                        .take_reduce_time()
                        .map(|(mean, _)| mean.as_secs_f64() * 1e3),
                };
                interval_start = Instant::now();
                interval_chars = chars_seen;
                if let Some(metrics) = metrics.as_mut() {
                    let line = serde_json::to_string(&record).expect("metrics serialize");
                    writeln!(metrics, "{line}").map_err(io_error(&metrics_path))?;
                    metrics.flush().map_err(io_error(&metrics_path))?;
                    log::info!(
                        "step {step} loss {loss:.4} lr {lr:.2e} grad_norm {grad_norm:.3}{}{}",
                        record
                            .val_loss
                            .map(|v| format!(" val_loss {v:.4}"))
                            .unwrap_or_default(),
                        record
                            .val_accuracy
                            .map(|v| format!(" val_accuracy {v:.4}"))
                            .unwrap_or_default()
                    );
                    on_record(&record);
                }
            }
            if step % train_config.checkpoint_every == 0 || step == train_config.steps {
                self.save_checkpoint()?;
            }
        }
        Ok(RunOutcome::Finished)
    }
}

/// Sizes rayon's global pool, which the recurrence kernels and Burn's CPU backends share, to
/// `threads` (0 leaves rayon's default, one per core). The pool is sized once per process: a
/// later, different request is logged and ignored.
fn use_threads(threads: usize) {
    if threads == 0 {
        return;
    }
    if rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .is_err()
        && rayon::current_num_threads() != threads
    {
        log::warn!(
            "`train.threads = {threads}` is ignored: this process already runs on {} threads",
            rayon::current_num_threads()
        );
    }
}
