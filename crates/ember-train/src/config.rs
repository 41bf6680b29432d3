//! The run configuration: what a TOML file under `configs/` holds.

use std::path::{Path, PathBuf};

use ember_model::CellKind;
use ember_model::ops::Kernel;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// A whole run: data, model, optimizer and schedule. Every field has a default, so a config file
/// names only what it changes; unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The corpus and how it is batched.
    pub data: DataConfig,
    /// The network.
    pub model: ModelConfig,
    /// The optimizer, clipping and learning-rate decay.
    pub optimizer: OptimizerConfig,
    /// Steps, evaluation and checkpoints.
    pub train: TrainConfig,
    /// What the network learns: the character language model, or a task on whole sequences.
    pub task: TaskConfig,
}

/// Which process shape a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Many-to-many next-character prediction over one long text, truncated BPTT.
    #[default]
    LanguageModel,
    /// Many-to-one: `label<TAB>text` lines, one class per text.
    Classify,
    /// Many-to-many: `text<TAB>tags` lines, one tag character per text character.
    Tag,
    /// Sequence to sequence: `source<TAB>target` lines.
    Seq2seq,
}

/// The widest beam `task.beam_width` may ask for: beam search rarely gains past a few dozen,
/// and memory grows with the width.
pub const MAX_BEAM_WIDTH: usize = 256;

/// `[task]`: what the network learns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// `language-model`, `classify`, `tag` or `seq2seq`.
    pub kind: TaskKind,
    /// `tag`: per-step losses summed over each sequence (`sum`, the seed's) or averaged (`mean`).
    pub step_loss: ember_model::StepLoss,
    /// `seq2seq`: beam width when predicting (1: greedy decoding; at most
    /// [`MAX_BEAM_WIDTH`]).
    pub beam_width: usize,
    /// `seq2seq`: the longest output written when predicting.
    pub max_output_len: usize,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            kind: TaskKind::LanguageModel,
            step_loss: ember_model::StepLoss::Mean,
            beam_width: 1,
            max_output_len: 100,
        }
    }
}

/// `[data]`: the corpus and how it is batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// The UTF-8 text to train on; relative paths are taken from the working directory.
    pub path: PathBuf,
    /// The fraction of the text, after the training part, held out for validation.
    pub val_fraction: f64,
    /// The fraction at the end held out for testing (never read by training).
    pub test_fraction: f64,
    /// The number of parallel streams per batch.
    pub batch_size: usize,
    /// The number of steps per chunk: how far back gradients flow (truncated BPTT).
    pub seq_len: usize,
    /// The largest corpus, in bytes, that a run reads; a larger file is refused before it is
    /// read (its ids take twice its size in memory).
    pub max_bytes: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: PathBuf::from("data/tinyshakespeare.txt"),
            val_fraction: 0.1,
            test_fraction: 0.0,
            batch_size: 32,
            seq_len: 64,
            max_bytes: 512 << 20,
        }
    }
}

/// `[model]`: the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The recurrence: `rnn`, `lstm` or `gru`.
    pub cell: CellKind,
    /// How many recurrent layers are stacked.
    pub num_layers: usize,
    /// The size of every layer's hidden state.
    pub d_hidden: usize,
    /// The size of the character embedding; 0 feeds one-hot vectors (the seed's choice).
    pub d_embed: usize,
    /// Dropout between recurrent layers, in `[0, 1)`.
    pub dropout: f64,
    /// `classify`, `tag` and the `seq2seq` encoder: also read every sequence backwards.
    pub bidirectional: bool,
    /// `classify`: `last` (the final state), `mean` or `max` over the steps.
    pub pooling: ember_model::Pooling,
    /// Which implementation of the recurrence runs: `auto` (the device's choice: host kernels
    /// on a CPU backend, Burn's primitives elsewhere) or `reference` (Burn's primitives always).
    pub kernel: Kernel,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            cell: CellKind::Lstm,
            num_layers: 2,
            d_hidden: 128,
            d_embed: 64,
            dropout: 0.0,
            bidirectional: false,
            pooling: ember_model::Pooling::Last,
            kernel: Kernel::Auto,
        }
    }
}

/// Which optimizer updates the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba, 2015).
    Adam,
    /// AdaGrad, the seed's optimizer.
    Adagrad,
    /// RMSProp, char-rnn's optimizer.
    Rmsprop,
    /// Stochastic gradient descent with momentum.
    Sgd,
}

/// `[optimizer]`: the optimizer, clipping and learning-rate decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `adam`, `adagrad`, `rmsprop` or `sgd`.
    pub kind: OptimizerKind,
    /// The learning rate at step 0.
    pub lr: f64,
    /// Rescale all gradients together when their global L2 norm exceeds this (0 turns it off).
    pub grad_clip_norm: f64,
    /// Clamp every gradient element to `[-v, v]` (0 turns it off); the seed clips at 5.
    pub grad_clip_value: f64,
    /// Multiply the learning rate by this every `lr_decay_every` steps (1 keeps it constant).
    pub lr_decay: f64,
    /// How many steps between learning-rate decays.
    pub lr_decay_every: usize,
    /// Momentum for `sgd` and `rmsprop`.
    pub momentum: f64,
    /// RMSProp's smoothing constant of the squared-gradient average.
    pub rmsprop_alpha: f64,
    /// Added to denominators for numerical stability (Adam, AdaGrad, RMSProp).
    pub epsilon: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 2e-3,
            grad_clip_norm: 5.0,
            grad_clip_value: 0.0,
            lr_decay: 1.0,
            lr_decay_every: 1000,
            momentum: 0.0,
            rmsprop_alpha: 0.95,
            epsilon: 1e-8,
        }
    }
}

/// What a run does when its loss or gradient norm becomes NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DivergencePolicy {
    /// Stop with an error naming the step; the last good checkpoint stays the newest.
    #[default]
    Stop,
    /// Go back to the last good checkpoint, scale `optimizer.lr` by `train.rollback_lr_factor`
    /// (saved in the run's config) and go on, at most `train.max_rollbacks` times.
    Rollback,
}

/// `train.kernel`: how the recurrent layers trained before the choice became the model's
/// (`model.kernel`). Still read from older configs and run directories, never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegacyKernel {
    /// Read as `model.kernel = "auto"`.
    Auto,
    /// Read as `model.kernel = "auto"`: the host kernels are the recurrence op's now.
    Fused,
    /// Read as `model.kernel = "reference"`.
    Plain,
}

/// `[train]`: steps, evaluation and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The total number of optimizer steps (one chunk each).
    pub steps: u64,
    /// Evaluate on the validation split every this many steps (0: never).
    pub eval_every: u64,
    /// Evaluate on at most this many validation chunks (0: all of them).
    pub eval_chunks: usize,
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// How many recent checkpoints to keep besides the best.
    pub keep_checkpoints: usize,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Seeds the weights and dropout: the same seed and config give the same run.
    pub seed: u64,
    /// What a NaN or infinite loss or gradient norm does: `stop` or `rollback`.
    pub on_divergence: DivergencePolicy,
    /// The factor, in (0, 1), that each rollback applies to `optimizer.lr`.
    pub rollback_lr_factor: f64,
    /// The most rollbacks one `ember train` makes before it stops.
    pub max_rollbacks: u32,
    /// Older configs' name for `model.kernel` (`auto`, `fused`, `plain`); read, never written.
    #[serde(skip_serializing)]
    pub kernel: Option<LegacyKernel>,
    /// The threads the recurrence kernels and Burn's CPU operations run on; 0: one per core.
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 2000,
            eval_every: 200,
            eval_chunks: 0,
            checkpoint_every: 200,
            keep_checkpoints: 3,
            log_every: 10,
            seed: 42,
            on_divergence: DivergencePolicy::Stop,
            rollback_lr_factor: 0.5,
            max_rollbacks: 3,
            kernel: None,
            threads: 0,
        }
    }
}

impl RunConfig {
    /// Reads a TOML config, applies `section.key=value` overrides, and checks every value.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::Config {
            origin: origin.to_string(),
            message,
        };
        // Deserializing the text itself keeps line numbers in the errors of the file's own keys.
        let from_file: RunConfig = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        // A config that the overrides make invalid is their error, not the file's.
        let blame_overrides = !overrides.is_empty() && from_file.validate().is_ok();
        let config = if overrides.is_empty() {
            from_file
        } else {
            let mut table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| bad(e.to_string()))?;
            for assignment in overrides {
                let origin = format!("--set {assignment}");
                let set_error = |message: String| TrainError::Config {
                    origin: origin.clone(),
                    message,
                };
                apply_override(&mut table, assignment).map_err(set_error)?;
                RunConfig::deserialize(toml::Value::Table(table.clone()))
                    .map_err(|e: toml::de::Error| set_error(e.to_string()))?;
            }
            RunConfig::deserialize(toml::Value::Table(table))
                .map_err(|e: toml::de::Error| bad(e.to_string()))?
        };
        let mut config = config;
        if let Some(legacy) = config.train.kernel.take() {
            config.model.kernel = match legacy {
                LegacyKernel::Plain => Kernel::Reference,
                LegacyKernel::Auto | LegacyKernel::Fused => Kernel::Auto,
            };
            log::warn!(
                "{origin}: `train.kernel` is now `model.kernel`; read as `model.kernel = \"{}\"`",
                config.model.kernel.name()
            );
        }
        config.validate().map_err(|message| {
            if blame_overrides {
                TrainError::Config {
                    origin: overrides
                        .iter()
                        .map(|assignment| format!("--set {assignment}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    message,
                }
            } else {
                bad(message)
            }
        })?;
        Ok(config)
    }

    /// The keys of `[data]`, `[model]` and `[task]` that a resumed run may change: where the
    /// text lies, how much of it may be read, which implementation runs the recurrence, and how
    /// a sequence run trains and decodes.
    pub const REOPENABLE: [&'static str; 6] = [
        "data.path",
        "model.kernel",
        "data.max_bytes",
        "task.step_loss",
        "task.beam_width",
        "task.max_output_len",
    ];

    /// The keys of `[data]`, `[model]` and `[task]` (besides [`REOPENABLE`](Self::REOPENABLE))
    /// whose value here differs from `saved`, each as `` `key` (saved -> new) ``: what a
    /// checkpoint means depends on them, so a resumed run may change none.
    pub fn meaning_changes(&self, saved: &RunConfig) -> Vec<String> {
        let table = |config: &RunConfig| -> toml::Table {
            config
                .to_toml()
                .parse()
                .expect("a serialized config parses")
        };
        let (new, old) = (table(self), table(saved));
        let mut changes = Vec::new();
        for section in ["data", "model", "task"] {
            let keys = |t: &toml::Table| t.get(section).and_then(|s| s.as_table()).cloned();
            let (new, old) = (
                keys(&new).unwrap_or_default(),
                keys(&old).unwrap_or_default(),
            );
            for (key, value) in &new {
                let name = format!("{section}.{key}");
                if Self::REOPENABLE.contains(&name.as_str()) {
                    continue;
                }
                if old.get(key) != Some(value) {
                    let before = old.get(key).map_or("absent".into(), |v| v.to_string());
                    changes.push(format!("`{name}` ({before} -> {value})"));
                }
            }
        }
        changes
    }

    /// The config as TOML, every value written out: itself a valid config file.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run config serializes to TOML")
    }

    /// Checks the values that types alone do not, naming the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |key: &str, value: usize| {
            if value == 0 {
                Err(format!("`{key}` must be at least 1, got 0"))
            } else {
                Ok(())
            }
        };
        let fraction = |key: &str, value: f64| {
            if value.is_finite() && (0.0..1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!("`{key}` must be in [0, 1), got {value}"))
            }
        };
        let non_negative = |key: &str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(format!("`{key}` must be a finite number >= 0, got {value}"))
            }
        };
        positive("data.batch_size", self.data.batch_size)?;
        positive("data.seq_len", self.data.seq_len)?;
        if self.data.max_bytes == 0 {
            return Err("`data.max_bytes` must be at least 1, got 0".into());
        }
        fraction("data.val_fraction", self.data.val_fraction)?;
        fraction("data.test_fraction", self.data.test_fraction)?;
        if self.data.val_fraction + self.data.test_fraction >= 1.0 {
            return Err(format!(
                "`data.val_fraction` + `data.test_fraction` must be below 1, got {}",
                self.data.val_fraction + self.data.test_fraction
            ));
        }
        positive("model.num_layers", self.model.num_layers)?;
        positive("model.d_hidden", self.model.d_hidden)?;
        fraction("model.dropout", self.model.dropout)?;
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
            return Err(format!(
                "`optimizer.lr` must be positive, got {}",
                self.optimizer.lr
            ));
        }
        non_negative("optimizer.grad_clip_norm", self.optimizer.grad_clip_norm)?;
        non_negative("optimizer.grad_clip_value", self.optimizer.grad_clip_value)?;
        if !(self.optimizer.lr_decay.is_finite()
            && self.optimizer.lr_decay > 0.0
            && self.optimizer.lr_decay <= 1.0)
        {
            return Err(format!(
                "`optimizer.lr_decay` must be in (0, 1], got {}",
                self.optimizer.lr_decay
            ));
        }
        positive("optimizer.lr_decay_every", self.optimizer.lr_decay_every)?;
        fraction("optimizer.momentum", self.optimizer.momentum)?;
        fraction("optimizer.rmsprop_alpha", self.optimizer.rmsprop_alpha)?;
        if !(self.optimizer.epsilon.is_finite() && self.optimizer.epsilon > 0.0) {
            return Err(format!(
                "`optimizer.epsilon` must be positive, got {}",
                self.optimizer.epsilon
            ));
        }
        if self.train.steps == 0 {
            return Err("`train.steps` must be at least 1, got 0".into());
        }
        positive(
            "train.checkpoint_every",
            self.train.checkpoint_every as usize,
        )?;
        positive("train.keep_checkpoints", self.train.keep_checkpoints)?;
        positive("train.log_every", self.train.log_every as usize)?;
        let factor = self.train.rollback_lr_factor;
        if !(factor > 0.0 && factor < 1.0) {
            return Err(format!(
                "`train.rollback_lr_factor` must be in (0, 1), got {factor}"
            ));
        }
        if self.task.kind != TaskKind::LanguageModel {
            positive("model.d_embed", self.model.d_embed)?;
        }
        if self.task.kind == TaskKind::LanguageModel && self.model.bidirectional {
            return Err(
                "`model.bidirectional` needs a whole-sequence task: a language model may not read the future"
                    .into(),
            );
        }
        positive("task.beam_width", self.task.beam_width)?;
        if self.task.beam_width > MAX_BEAM_WIDTH {
            return Err(format!(
                "`task.beam_width` must be at most {MAX_BEAM_WIDTH}, got {} (every beam keeps \
                 its own states and hypotheses: a million took 3.2 GB)",
                self.task.beam_width
            ));
        }
        positive("task.max_output_len", self.task.max_output_len)?;
        Ok(())
    }
}

/// Sets `section.key` in `table` to `value` (parsed as a TOML value, else taken as a string).
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (path, value) = assignment
        .split_once('=')
        .ok_or_else(|| "expected section.key=value".to_string())?;
    let (section, key) = path
        .trim()
        .split_once('.')
        .ok_or_else(|| format!("`{path}` is not of the form section.key"))?;
    let known = RunConfig::default()
        .to_toml()
        .parse::<toml::Table>()
        .expect("defaults parse");
    let Some(known_section) = known.get(section).and_then(|s| s.as_table()) else {
        return Err(format!("there is no section `[{section}]`"));
    };
    if !known_section.contains_key(key) {
        let keys: Vec<&str> = known_section.keys().map(String::as_str).collect();
        return Err(format!(
            "there is no key `{key}` in [{section}]; keys are: {}",
            keys.join(", ")
        ));
    }
    let value = value.trim();
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let section_table = entry
        .as_table_mut()
        .ok_or_else(|| format!("`{section}` in the config is not a section"))?;
    section_table.insert(key.to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunConfig, TrainError> {
        RunConfig::parse(text, "test.toml", &[])
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), RunConfig::default());
    }

    #[test]
    fn resolved_config_is_itself_a_valid_config() {
        let config = parse("[model]\ncell = \"gru\"\nd_hidden = 64\n").unwrap();
        assert_eq!(parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[model]\ncell = \"lstm\"\nhidden = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.toml") && err.contains("hidden") && err.contains("line 3"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_and_bad_cell_are_named() {
        let err = parse("[data]\nbatch_size = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = parse("[model]\ncell = \"transformer\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("transformer") && err.contains("lstm"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[data]\nseq_len = 0", "data.seq_len"),
            ("[data]\nbatch_size = 0", "data.batch_size"),
            (
                "[data]\nval_fraction = 0.7\ntest_fraction = 0.4",
                "data.val_fraction",
            ),
            ("[model]\ndropout = 1.0", "model.dropout"),
            ("[model]\nd_hidden = 0", "model.d_hidden"),
            ("[optimizer]\nlr = 0.0", "optimizer.lr"),
            ("[optimizer]\nlr = -1.0", "optimizer.lr"),
            ("[train]\nsteps = 0", "train.steps"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = parse("[data]\nbatch_size = -3").unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn overrides_apply_and_bad_paths_are_named() {
        let set = |s: &str| RunConfig::parse("", "test.toml", &[s.to_string()]);
        assert_eq!(set("train.steps=7").unwrap().train.steps, 7);
        assert_eq!(set("model.cell=gru").unwrap().model.cell, CellKind::Gru);
        assert_eq!(
            set("data.path=other.txt").unwrap().data.path,
            PathBuf::from("other.txt")
        );
        let err = set("train.stepz=7").unwrap_err().to_string();
        assert!(
            err.contains("--set train.stepz=7") && err.contains("stepz"),
            "{err}"
        );
        let err = set("nosuch.key=1").unwrap_err().to_string();
        assert!(err.contains("nosuch"), "{err}");
        assert!(set("steps").is_err());
        // A value of the right type that validation refuses is the override's error too, and an
        // override may mend a file that is invalid on its own.
        let err = set("data.val_fraction=1").unwrap_err().to_string();
        assert!(
            err.contains("--set data.val_fraction=1") && err.contains("val_fraction"),
            "{err}"
        );
        let invalid_file = "[data]\nval_fraction = 2.0\n";
        assert!(RunConfig::parse(invalid_file, "test.toml", &[]).is_err());
        let mended = ["data.val_fraction=0.2".to_string()];
        assert_eq!(
            RunConfig::parse(invalid_file, "test.toml", &mended)
                .unwrap()
                .data
                .val_fraction,
            0.2
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const KEYS: [&str; 12] = [
            "data.batch_size",
            "data.seq_len",
            "data.val_fraction",
            "model.cell",
            "model.d_hidden",
            "model.dropout",
            "optimizer.lr",
            "optimizer.kind",
            "train.steps",
            "train.seed",
            "train.on_divergence",
            "task.kind",
        ];

        proptest! {
            /// Whatever text a config file holds, parsing returns a config or an error naming
            /// the file; it never panics.
            #[test]
            fn any_text_parses_or_names_the_file(text in "\\PC{0,200}") {
                if let Err(err) = RunConfig::parse(&text, "fuzzed.toml", &[]) {
                    prop_assert!(err.to_string().contains("fuzzed.toml"), "{}", err);
                }
            }

            /// Text built from config-like pieces reaches the deserializer and the validation.
            #[test]
            fn config_like_text_parses_or_names_the_file(
                lines in proptest::collection::vec(
                    (
                        prop::sample::select(vec!["[data]", "[model]", "[optimizer]", "[train]", "[task]", ""]),
                        prop::sample::select(vec!["batch_size", "seq_len", "cell", "d_hidden", "lr", "steps", "dropout", "kind", "bogus"]),
                        prop::sample::select(vec!["0", "-1", "1", "0.5", "1e400", "\"lstm\"", "\"x\"", "true", "[1]", ""]),
                    ),
                    0..8,
                )
            ) {
                let text: String = lines
                    .iter()
                    .map(|(section, key, value)| format!("{section}\n{key} = {value}\n"))
                    .collect();
                if let Err(err) = RunConfig::parse(&text, "fuzzed.toml", &[]) {
                    prop_assert!(err.to_string().contains("fuzzed.toml"), "{}", err);
                }
            }

            /// Any `--set` assignment either applies, and the result passes validation, or is
            /// an error naming that assignment.
            #[test]
            fn any_override_applies_or_is_named(
                key in prop_oneof![
                    prop::sample::select(KEYS.to_vec()).prop_map(String::from),
                    "[a-z_.]{0,20}",
                ],
                value in "\\PC{0,12}",
            ) {
                let assignment = format!("{key}={value}");
                match RunConfig::parse("", "test.toml", std::slice::from_ref(&assignment)) {
                    Ok(config) => prop_assert!(config.validate().is_ok()),
                    Err(err) => {
                        let message = err.to_string();
                        prop_assert!(message.contains(&format!("--set {assignment}")), "{}", message);
                    }
                }
            }

            /// A valid config written by `to_toml` reads back equal.
            #[test]
            fn written_configs_read_back_equal(
                batch_size in 1usize..512,
                seq_len in 1usize..512,
                d_hidden in 1usize..2048,
                lr in 1e-6f64..1.0,
                steps in 1u64..1_000_000,
                seed: u64,
            ) {
                let mut config = RunConfig::default();
                config.data.batch_size = batch_size;
                config.data.seq_len = seq_len;
                config.model.d_hidden = d_hidden;
                config.optimizer.lr = lr;
                config.train.steps = steps;
                config.train.seed = seed;
                let text = config.to_toml();
                prop_assert_eq!(RunConfig::parse(&text, "written.toml", &[]).unwrap(), config);
            }
        }
    }
}
