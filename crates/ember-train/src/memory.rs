//! How much memory a command needs, estimated from the config before any tensor is allocated,
//! and how much the machine has: a model that cannot fit is refused with both figures and what
//! to change, instead of aborting half-way through an allocation (which no error handling can
//! catch) and leaving a broken run behind.

use std::path::Path;

use burn::tensor::Device;
use ember_model::CellKind;

use crate::TrainError;
use crate::config::{OptimizerKind, RunConfig, TaskKind};

/// Bytes of one `f32`, the type of every weight, gradient, optimizer moment and activation.
const FLOAT: f64 = 4.0;

/// What a command needs, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// The weights.
    pub parameters: f64,
    /// One gradient per weight (training only).
    pub gradients: f64,
    /// The optimizer's moments: two per weight for Adam, one for AdaGrad and RMSProp, one more
    /// with momentum, none for plain SGD.
    pub optimizer_state: f64,
    /// Copies of the weights made while stepping: the updated weights before the old ones are
    /// dropped, and the host kernels' packed copy.
    pub weight_copies: f64,
    /// The activations of one chunk (and, in training, their gradients).
    pub activations: f64,
    /// A checkpoint's record held in memory while it is read or written: the weights (and, in
    /// training, the optimizer's moments) as tensors and as serialized bytes.
    pub checkpoint: f64,
}

impl MemoryEstimate {
    /// The sum of the parts, in bytes.
    pub fn total(&self) -> f64 {
        self.parameters
            + self.gradients
            + self.optimizer_state
            + self.weight_copies
            + self.activations
            + self.checkpoint
    }

    /// What training `config` needs, for a vocabulary of `vocab_size` input symbols, `outputs`
    /// output classes and chunks of `positions` (batch size times steps) predictions. Peak
    /// resident memory measured here with the smoke config and Adam: `d_hidden` 1000, 569 MB
    /// against an estimate of 600 MB; 2000, 1.93 GB against 2.35 GB.
    pub fn training(
        config: &RunConfig,
        vocab_size: usize,
        outputs: usize,
        positions: usize,
    ) -> Self {
        let parameters = parameter_count(config, vocab_size, outputs) * FLOAT;
        let moments = match config.optimizer.kind {
            OptimizerKind::Adam => 2.0,
            OptimizerKind::Adagrad => 1.0,
            OptimizerKind::Rmsprop | OptimizerKind::Sgd => 0.0,
        } + f64::from(u8::from(
            config.optimizer.momentum > 0.0 && config.optimizer.kind != OptimizerKind::Adam,
        ));
        let optimizer_state = parameters * moments;
        MemoryEstimate {
            parameters,
            gradients: parameters,
            optimizer_state,
            weight_copies: 2.0 * parameters,
            activations: activation_floats(config, vocab_size, outputs, positions, true) * FLOAT,
            checkpoint: 2.0 * (parameters + optimizer_state),
        }
    }

    /// What running `config`'s model forward needs (sampling, evaluation, prediction), for
    /// chunks of `positions` predictions. Measured here (smoke config, `d_hidden` 2000): peak
    /// resident memory 950 MB sampling and evaluating alike, against an estimate of 991 MB.
    pub fn inference(
        config: &RunConfig,
        vocab_size: usize,
        outputs: usize,
        positions: usize,
    ) -> Self {
        let parameters = parameter_count(config, vocab_size, outputs) * FLOAT;
        MemoryEstimate {
            parameters,
            gradients: 0.0,
            optimizer_state: 0.0,
            weight_copies: 3.0 * parameters,
            activations: activation_floats(config, vocab_size, outputs, positions, false) * FLOAT,
            checkpoint: parameters,
        }
    }

    fn parts(&self) -> String {
        [
            ("parameters", self.parameters),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer_state),
            ("weight copies", self.weight_copies),
            ("activations of one chunk", self.activations),
            ("checkpoint record", self.checkpoint),
        ]
        .iter()
        .filter(|(_, bytes)| *bytes > 0.0)
        .map(|(name, bytes)| format!("{name} {}", human_bytes(*bytes)))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// The weights of a recurrent stack of `layers` layers: per layer and direction, the fused gate
/// weights of its input and of its hidden state and their two biases (PyTorch's layout).
fn stack_parameters(
    cell: CellKind,
    d_input: f64,
    d_hidden: f64,
    layers: usize,
    directions: f64,
) -> f64 {
    let gates = cell.num_gates() as f64 * d_hidden;
    (0..layers)
        .map(|k| {
            let d_in = if k == 0 {
                d_input
            } else {
                directions * d_hidden
            };
            directions * (gates * (d_in + d_hidden) + 2.0 * gates)
        })
        .sum()
}

/// The number of weights of `config`'s model (the sequence models' bridges and attention-free
/// decoders counted as their recurrent stacks and heads).
pub fn parameter_count(config: &RunConfig, vocab_size: usize, outputs: usize) -> f64 {
    let model = &config.model;
    let (vocab, hidden, embed) = (
        vocab_size as f64,
        model.d_hidden as f64,
        model.d_embed as f64,
    );
    let d_input = if model.d_embed == 0 { vocab } else { embed };
    let embedding = vocab * embed;
    let directions = match (config.task.kind, model.bidirectional) {
        (TaskKind::LanguageModel, _) | (_, false) => 1.0,
        (_, true) => 2.0,
    };
    let encoder =
        embedding + stack_parameters(model.cell, d_input, hidden, model.num_layers, directions);
    let head = |d_in: f64, classes: f64| d_in * classes + classes;
    match config.task.kind {
        TaskKind::LanguageModel => encoder + head(hidden, outputs as f64),
        TaskKind::Classify | TaskKind::Tag => encoder + head(directions * hidden, outputs as f64),
        TaskKind::Seq2seq => {
            let bridge = model.num_layers as f64 * directions * hidden * hidden * 2.0;
            let decoder = embedding
                + stack_parameters(model.cell, d_input, hidden, model.num_layers, 1.0)
                + head(hidden, outputs as f64);
            encoder + bridge + decoder
        }
    }
}

/// Floats alive for one chunk of `positions` predictions: per layer and direction the input
/// projections, the gate values, the hidden and cell vectors, and in training their gradients;
/// the embedded (or one-hot) inputs; the logits, their softmax and, in training, its gradient.
fn activation_floats(
    config: &RunConfig,
    vocab_size: usize,
    outputs: usize,
    positions: usize,
    training: bool,
) -> f64 {
    let model = &config.model;
    let hidden = model.d_hidden as f64;
    let gates = model.cell.num_gates() as f64;
    let directions = if model.bidirectional && config.task.kind != TaskKind::LanguageModel {
        2.0
    } else {
        1.0
    };
    let per_step = if training {
        (3.0 * gates + 4.0) * hidden
    } else {
        (gates + 2.0) * hidden
    };
    let stacks = if config.task.kind == TaskKind::Seq2seq {
        directions + 1.0
    } else {
        directions
    };
    let recurrent = stacks * model.num_layers as f64 * per_step;
    let inputs = if model.d_embed == 0 {
        vocab_size as f64
    } else {
        model.d_embed as f64
    };
    let head = if training { 3.0 } else { 2.0 } * outputs as f64;
    positions as f64 * (recurrent + inputs + head)
}

/// The memory this process may still take, and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct AvailableMemory {
    /// Bytes.
    pub bytes: f64,
    /// Which limit gives it: `MemAvailable` of `/proc/meminfo`, or a cgroup's limit less its use.
    pub source: String,
}

/// The memory available to this process: the least of `/proc/meminfo`'s `MemAvailable` and the
/// room left under every memory limit of its cgroup and the cgroup's ancestors (cgroup v2
/// `memory.max`, v1 `memory.limit_in_bytes`, less their usage without reclaimable page cache).
/// `None` where none of these can be read (not Linux).
pub fn available_memory() -> Option<AvailableMemory> {
    let mut best: Option<AvailableMemory> = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text))
        .map(|bytes| AvailableMemory {
            bytes,
            source: "MemAvailable in /proc/meminfo".into(),
        });
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for (root, group, files) in [
        ("/sys/fs/cgroup", cgroup_path(&own, true), CGROUP_V2),
        ("/sys/fs/cgroup/unified", cgroup_path(&own, true), CGROUP_V2),
        ("/sys/fs/cgroup/memory", cgroup_path(&own, false), CGROUP_V1),
    ] {
        let Some(group) = group else { continue };
        // Inside a container the group's path may not exist under the mount, whose root is then
        // the container's own group: every ancestor up to the mount is tried.
        let mut dir = Path::new(root).join(group.trim_start_matches('/'));
        loop {
            if let Some(bytes) = cgroup_room(&dir, files) {
                if best.as_ref().is_none_or(|b| bytes < b.bytes) {
                    best = Some(AvailableMemory {
                        bytes,
                        source: format!(
                            "the memory limit of cgroup {} less its use",
                            dir.display()
                        ),
                    });
                }
            }
            if dir == Path::new(root) || !dir.pop() {
                break;
            }
        }
    }
    best
}

/// A cgroup version's limit, usage and statistics files, and the statistic of reclaimable page
/// cache.
struct CgroupFiles {
    limit: &'static str,
    usage: &'static str,
    inactive_file: &'static str,
}

const CGROUP_V2: &CgroupFiles = &CgroupFiles {
    limit: "memory.max",
    usage: "memory.current",
    inactive_file: "inactive_file",
};

const CGROUP_V1: &CgroupFiles = &CgroupFiles {
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    inactive_file: "total_inactive_file",
};

/// The room left under the limit of the cgroup in `dir`, if it has one.
fn cgroup_room(dir: &Path, files: &CgroupFiles) -> Option<f64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let limit: f64 = read(files.limit)?.trim().parse().ok()?;
    // v1 writes "no limit" as a number near 2^63, v2 as "max" (which does not parse).
    if limit >= 2f64.powi(60) {
        return None;
    }
    let usage: f64 = read(files.usage)?.trim().parse().ok()?;
    let cache = read("memory.stat")
        .and_then(|stat| stat_value(&stat, files.inactive_file))
        .unwrap_or(0.0);
    Some((limit - (usage - cache).max(0.0)).max(0.0))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// The value of `key` in a `memory.stat` text.
fn stat_value(stat: &str, key: &str) -> Option<f64> {
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// This process's cgroup path from `/proc/self/cgroup`: the v2 line (`0::/path`) or the v1
/// line of the memory controller.
fn cgroup_path(proc_cgroup: &str, v2: bool) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = if v2 {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "memory")
        };
        wanted.then(|| path.to_string())
    })
}

/// Whether `device` computes in host memory (the CPU backends), where [`available_memory`] is
/// the figure that bounds it. A GPU's own memory is not read: Burn does not report its size.
fn is_host_device(device: &Device) -> bool {
    matches!(backend_name(device).as_str(), "flex" | "ndarray")
}

/// The backend `device` computes on, as Burn's cargo features name it: `flex`, `ndarray`,
/// `cuda`, `wgpu`, ...
pub fn backend_name(device: &Device) -> String {
    // `Device` is opaque outside Burn's dispatch crate; its debug form is `Device<Flex(..)>`,
    // `Device<Cube(Cuda(..))>` or, with autodiff, `Device<Autodiff { device: Flex(..), .. }>`.
    let debug = format!("{device:?}");
    let inner = debug
        .trim_start_matches("Device<")
        .trim_start_matches("Autodiff { device: ");
    let mut words = inner
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty());
    let first = words.next().unwrap_or("unknown");
    let name = match first {
        "Cube" => words.next().unwrap_or(first),
        _ => first,
    };
    name.to_lowercase()
}

/// Refuses a command whose `estimate` exceeds the memory available to this process on `device`
/// (a CPU backend; on a GPU the estimate is only logged). `what` names the command ("training
/// this model"), `advice` says what to change.
pub(crate) fn ensure_fits(
    estimate: &MemoryEstimate,
    device: &Device,
    what: &str,
    advice: impl FnOnce(&AvailableMemory) -> String,
) -> Result<(), TrainError> {
    let needed = estimate.total();
    log::info!(
        "{what} needs about {} ({})",
        human_bytes(needed),
        estimate.parts()
    );
    if !is_host_device(device) {
        return Ok(());
    }
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if needed <= available.bytes {
        return Ok(());
    }
    Err(TrainError::TooLarge {
        needed: needed as u64,
        available: available.bytes as u64,
        message: format!(
            "{what} needs about {} of memory ({}) but {} is available ({}); {}",
            human_bytes(needed),
            estimate.parts(),
            human_bytes(available.bytes),
            available.source,
            advice(&available)
        ),
    })
}

/// Refuses training `config` where it cannot fit, naming the largest `model.d_hidden` that would.
pub(crate) fn ensure_training_fits(
    config: &RunConfig,
    vocab_size: usize,
    outputs: usize,
    positions: usize,
    device: &Device,
) -> Result<(), TrainError> {
    let estimate = MemoryEstimate::training(config, vocab_size, outputs, positions);
    ensure_fits(&estimate, device, "training this model", |available| {
        let fits = |d_hidden: usize| {
            let mut smaller = config.clone();
            smaller.model.d_hidden = d_hidden;
            MemoryEstimate::training(&smaller, vocab_size, outputs, positions).total()
                <= available.bytes
        };
        let largest = largest_fitting(config.model.d_hidden, fits);
        let size = match largest {
            0 => "no `model.d_hidden` fits with the other settings".to_string(),
            d => format!("lower `model.d_hidden` to at most {d}"),
        };
        format!(
            "{size}, or lower `model.num_layers`, `data.batch_size` or `data.seq_len` (this \
             chunk is {positions} predictions), or free memory"
        )
    })
}

/// Refuses loading `config`'s model for sampling, evaluation or prediction where it cannot fit.
pub(crate) fn ensure_inference_fits(
    config: &RunConfig,
    vocab_size: usize,
    outputs: usize,
    positions: usize,
    device: &Device,
) -> Result<(), TrainError> {
    let estimate = MemoryEstimate::inference(config, vocab_size, outputs, positions);
    ensure_fits(&estimate, device, "loading this run's model", |_| {
        "free memory or use a machine with more (the model's size is fixed by its run)".into()
    })
}

/// The largest value in `1..=upper` for which `fits` holds, `fits` being monotone (true up to
/// some value, false after); 0 if it holds for none.
fn largest_fitting(upper: usize, fits: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, upper);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if fits(middle) {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    low
}

/// `bytes` in decimal units with one decimal: `25.6 GB`.
pub fn human_bytes(bytes: f64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0} bytes"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts of the PyTorch fixture models (tests/fixtures/torch/README.md: V 65, E 16,
    /// H 32, L 2): LSTM 65 * 16 + (128 * 48 + 256) + (128 * 64 + 256) + 32 * 65 + 65 = 18,033,
    /// GRU 14,321, tanh RNN 6,897.
    #[test]
    fn parameter_count_is_pytorchs() {
        let mut config = RunConfig::default();
        config.model.cell = CellKind::Lstm;
        config.model.num_layers = 2;
        config.model.d_hidden = 32;
        config.model.d_embed = 16;
        assert_eq!(parameter_count(&config, 65, 65), 18_033.0);
        config.model.cell = CellKind::Gru;
        assert_eq!(parameter_count(&config, 65, 65), 14_321.0);
        config.model.cell = CellKind::Rnn;
        assert_eq!(parameter_count(&config, 65, 65), 6_897.0);
    }

    /// The abort: `d_hidden = 200000` on the smoke config allocated one LSTM
    /// `weight_hh` of 4 * 200000 * 200000 floats, 640 GB; the estimate holds at least that.
    #[test]
    fn the_oversized_smoke_model_is_estimated_above_its_first_allocation() {
        let mut config = RunConfig::default();
        config.model.cell = CellKind::Lstm;
        config.model.num_layers = 2;
        config.model.d_hidden = 200_000;
        config.model.d_embed = 16;
        let estimate = MemoryEstimate::training(&config, 65, 65, 8 * 16);
        assert!(estimate.parameters >= 640e9, "{estimate:?}");
        assert!(estimate.total() > 4.0 * estimate.parameters);
    }

    #[test]
    fn meminfo_and_cgroup_files_parse() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(meminfo), Some(20_000_000.0 * 1024.0));
        let cgroup = "9:name=systemd:/\n4:memory:/jobs/a\n0::/user.slice/x\n";
        assert_eq!(cgroup_path(cgroup, true).as_deref(), Some("/user.slice/x"));
        assert_eq!(cgroup_path(cgroup, false).as_deref(), Some("/jobs/a"));
        let stat = "anon 5\ninactive_file 300\nactive_file 2\n";
        assert_eq!(stat_value(stat, "inactive_file"), Some(300.0));
        assert_eq!(stat_value(stat, "total_inactive_file"), None);
    }

    #[test]
    fn largest_fitting_finds_the_boundary() {
        assert_eq!(largest_fitting(200_000, |d| d <= 7_777), 7_777);
        assert_eq!(largest_fitting(10, |_| true), 10);
        assert_eq!(largest_fitting(10, |_| false), 0);
        assert_eq!(human_bytes(25.6e9), "25.6 GB");
        assert_eq!(human_bytes(640e9), "640.0 GB");
        assert_eq!(human_bytes(12.0), "12 bytes");
    }
}
