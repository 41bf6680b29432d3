#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod checkpoint;
pub mod clip;
mod collective;
mod config;
mod error;
mod info;
pub mod inspect;
mod memory;
mod metrics;
mod output;
mod plot;
mod pytorch;
mod run;
mod run_dir;
mod step;
mod task;
mod trainer;
mod training;

pub use checkpoint::{
    CarriedLoader, Checkpoint, CheckpointDir, Progress, char_lm_carried, no_carried,
    write_atomically,
};
pub use collective::{Collective, Ranks};
pub use config::{
    DataConfig, DivergencePolicy, LegacyKernel, MAX_BEAM_WIDTH, ModelConfig, OptimizerConfig,
    OptimizerKind, RunConfig, TaskConfig, TaskKind, TrainConfig,
};
pub use error::TrainError;
pub use info::RunInfo;
pub use inspect::Inspection;
pub use memory::{
    AvailableMemory, MemoryEstimate, available_memory, backend_name, human_bytes, parameter_count,
};
pub use metrics::read_metrics;
pub use output::{check_output, write_output};
pub use plot::{plot_curves, plot_losses};
pub use pytorch::{Imported, export_torch, import_torch};
pub use run::{EVAL_CHUNK, EvalReport, Run};
pub use run_dir::RunLock;
pub use step::{GradientStep, optimizer_for};
pub use task::{
    Example, LABELS_FILE, MAX_LINE_CHARS, SequenceData, SequenceTask, Target, TaskRun, TaskTrainer,
    TaskVocab, score,
};
pub use trainer::{
    CONFIG_FILE, METRICS_FILE, MetricsRecord, RunOutcome, Trainer, VOCAB_FILE, chunk_tensors,
    mean_loss, model_config,
};
pub use training::{Evaluation, Training};
