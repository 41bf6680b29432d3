//! Training Ember's character models: the run config, the truncated-BPTT loop, atomic
//! checkpoints that resume exactly, evaluation and loss plots.
#![warn(missing_docs)]

mod checkpoint;
pub mod clip;
mod config;
mod error;
pub mod fused;
pub mod inspect;
mod plot;
mod pytorch;
mod run;
mod step;
mod task;
mod trainer;
mod training;

pub use checkpoint::{
    CarriedLoader, Checkpoint, CheckpointDir, Progress, char_lm_carried, no_carried,
    write_atomically,
};
pub use config::{
    DataConfig, DivergencePolicy, Kernel, ModelConfig, OptimizerConfig, OptimizerKind, RunConfig,
    TaskConfig, TaskKind, TrainConfig,
};
pub use error::TrainError;
pub use inspect::Inspection;
pub use plot::{plot_curves, plot_losses};
pub use pytorch::{export_torch, import_torch};
pub use run::{EvalReport, Run};
pub use step::{GradientStep, optimizer_for};
pub use task::{
    Example, LABELS_FILE, SequenceData, SequenceTask, Target, TaskRun, TaskTrainer, TaskVocab,
    score,
};
pub use trainer::{
    CONFIG_FILE, METRICS_FILE, MetricsRecord, RunOutcome, Trainer, VOCAB_FILE, chunk_tensors,
    mean_loss, model_config,
};
pub use training::{Evaluation, Training};
