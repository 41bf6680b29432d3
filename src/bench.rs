//! `ember bench`: training and sampling throughput of the character model, one JSON line per
//! case, with `burn::nn::Lstm` measured in the same run as the baseline and the PyTorch figures
//! of the speed issue beside it; then the library-path cases of `library`. Each case runs in a
//! child process of its own, so its peak resident memory is its own; with `--pytorch`, PyTorch
//! runs the same case in a child of its own right after, so that the ratio to it holds on a noisy
//! machine.

mod library;
mod recurrence;
#[cfg(feature = "mpi")]
pub mod scaling;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, LstmConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use ember_model::ops::Kernel;
use ember_model::{CellKind, CharLm, CharLmConfig, SampleConfig};
use serde::{Deserialize, Serialize};

const VOCAB: usize = 65;
const D_EMBED: usize = 64;
/// Adam's learning rate in every case, Ember's and PyTorch's.
const LR: f64 = 2e-3;

/// One configuration to measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    cell: CellKind,
    num_layers: usize,
    d_hidden: usize,
    batch_size: usize,
    seq_len: usize,
    /// PyTorch 2.15 on this machine's kind, 2 threads (the speed issue's table): train, sample.
    pytorch: Option<(f64, f64)>,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}-{}x{}-b{}-s{}",
            self.cell, self.num_layers, self.d_hidden, self.batch_size, self.seq_len
        )
    }
}

/// The speed issue's four reference rows, then the torch-rnn grid.
pub fn cases() -> Vec<Case> {
    let reference = |cell, d_hidden, train, sample| Case {
        cell,
        num_layers: 2,
        d_hidden,
        batch_size: 32,
        seq_len: 64,
        pytorch: Some((train, sample)),
    };
    let mut cases = vec![
        reference(CellKind::Lstm, 128, 146_000.0, 5_500.0),
        reference(CellKind::Gru, 128, 63_000.0, 11_200.0),
        reference(CellKind::Rnn, 128, 166_000.0, 15_000.0),
        reference(CellKind::Lstm, 512, 12_400.0, 690.0),
    ];
    for num_layers in 1..=3 {
        for d_hidden in [64, 128, 256, 512] {
            cases.push(Case {
                cell: CellKind::Lstm,
                num_layers,
                d_hidden,
                batch_size: 50,
                seq_len: 50,
                pytorch: None,
            });
        }
    }
    cases
}

#[derive(Serialize, Deserialize)]
struct Report {
    case: String,
    cell: String,
    num_layers: usize,
    d_hidden: usize,
    batch_size: usize,
    seq_len: usize,
    /// Training as `ember train` runs it: Burn's autodiff and Adam over the model, whose
    /// recurrence op runs the host kernels on a CPU backend.
    train_chars_per_sec: f64,
    /// The model's kernel setting `train_chars_per_sec` measured (`auto`).
    train_kernel: String,
    sample_chars_per_sec: f64,
    /// Megabytes of weights a sampling step reads: every `W_hh`, every `W_ih` but the bottom
    /// layer's (its projection of each character is computed once), one projected row and the head.
    sample_weight_mb: f64,
    /// How fast this machine reads that many bytes, measured here on the sampler's threads, each
    /// reading its share over and over.
    sample_read_gb_per_sec: f64,
    /// Sampling's ceiling where it is bound by reading the weights: the read speed over the
    /// weights' size, one read per character.
    sample_bound_chars_per_sec: f64,
    /// `sample_chars_per_sec` over that ceiling.
    sample_fraction_of_bound: f64,
    /// Peak resident memory after training and sampling, before the baselines ran.
    peak_rss_mb: f64,
    /// The same model and loop with `kernel = "reference"`: the recurrence composed of Burn's
    /// tensor primitives.
    baseline_plain_train_chars_per_sec: Option<f64>,
    /// Training throughput over the reference composition's.
    ratio_to_plain: Option<f64>,
    /// `burn::nn::Lstm` stacked, same sizes and loop (LSTM cases only).
    baseline_burn_lstm_train_chars_per_sec: Option<f64>,
    /// Ember's training throughput over the baseline's.
    ratio_to_burn_lstm: Option<f64>,
    pytorch_train_chars_per_sec: Option<f64>,
    pytorch_sample_chars_per_sec: Option<f64>,
    ratio_to_pytorch_train: Option<f64>,
    ratio_to_pytorch_sample: Option<f64>,
}

/// The stack `burn::nn::Lstm` gives, used the plain way: the baseline Ember's cells must beat.
#[derive(Module, Debug)]
struct BurnLstmLm {
    embedding: Embedding,
    layers: Vec<burn::nn::Lstm>,
    head: Linear,
}

impl BurnLstmLm {
    fn new(case: &Case, device: &Device) -> Self {
        BurnLstmLm {
            embedding: EmbeddingConfig::new(VOCAB, D_EMBED).init(device),
            layers: (0..case.num_layers)
                .map(|k| {
                    let d_input = if k == 0 { D_EMBED } else { case.d_hidden };
                    LstmConfig::new(d_input, case.d_hidden, true).init(device)
                })
                .collect(),
            head: LinearConfig::new(case.d_hidden, VOCAB).init(device),
        }
    }

    fn loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        let mut x = self.embedding.forward(ids);
        for layer in &self.layers {
            x = layer.forward(x, None).0;
        }
        CharLm::loss(self.head.forward(x), targets)
    }
}

/// Runs `step` for about `budget` after two warm-up calls; returns steps per second.
fn steps_per_sec(budget: Duration, mut step: impl FnMut()) -> f64 {
    step();
    step();
    let start = Instant::now();
    let mut steps = 0u32;
    while steps < 3 || start.elapsed() < budget {
        step();
        steps += 1;
    }
    f64::from(steps) / start.elapsed().as_secs_f64()
}

fn random_ids(case: &Case, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [case.batch_size, case.seq_len];
    let ids = Tensor::<2>::random(shape, Distribution::Uniform(0.0, VOCAB as f64), device).int();
    let targets =
        Tensor::<2>::random(shape, Distribution::Uniform(0.0, VOCAB as f64), device).int();
    (ids, targets)
}

fn measure(case: &Case, device: &Device, budget: Duration) -> Report {
    let train_device = device.clone().autodiff();
    train_device.seed(1);
    let chars = (case.batch_size * case.seq_len) as f64;

    let new_model = |kernel| {
        train_device.seed(1);
        CharLmConfig::new(VOCAB, case.cell, case.d_hidden)
            .with_num_layers(case.num_layers)
            .with_d_embed(D_EMBED)
            .with_kernel(kernel)
            .init(&train_device)
    };
    let (ids, targets) = random_ids(case, &train_device);
    // Truncated BPTT as training runs it: the state carried and detached between chunks.
    let plain_train = |model: &mut CharLm| {
        let mut optimizer = AdamConfig::new().init();
        let mut state = None;
        chars
            * steps_per_sec(budget, || {
                let (loss, next) = model.forward_loss(ids.clone(), targets.clone(), state.take());
                let grads = GradientsParams::from_grads(loss.backward(), &*model);
                *model = optimizer.step(LR, model.clone(), grads);
                state = Some(next.detach());
            })
    };
    let mut model = new_model(Kernel::Auto);
    let train = plain_train(&mut model);
    let valid = model.valid();
    let mut sampler = valid
        .sampler(&[0], SampleConfig::new().with_seed(1), device)
        .expect("a valid prime");
    let sample = steps_per_sec(budget / 2, || {
        sampler.next();
    });
    let weight_bytes = sample_weight_bytes(case);
    let read_bytes_per_sec = read_speed(weight_bytes, sampler.threads(), budget / 4);
    let bound = read_bytes_per_sec / weight_bytes as f64;
    drop(sampler);
    let peak_rss_mb = peak_rss_mb();
    let plain = plain_train(&mut new_model(Kernel::Reference));

    let baseline = (case.cell == CellKind::Lstm).then(|| {
        let mut model = BurnLstmLm::new(case, &train_device);
        let mut optimizer = AdamConfig::new().init();
        chars
            * steps_per_sec(budget, || {
                let loss = model.loss(ids.clone(), targets.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optimizer.step(LR, model.clone(), grads);
            })
    });

    let pytorch = case.pytorch;
    Report {
        case: case.name(),
        cell: case.cell.to_string(),
        num_layers: case.num_layers,
        d_hidden: case.d_hidden,
        batch_size: case.batch_size,
        seq_len: case.seq_len,
        train_chars_per_sec: train.round(),
        train_kernel: Kernel::Auto.name().into(),
        sample_chars_per_sec: sample.round(),
        sample_weight_mb: round3(weight_bytes as f64 / 1e6),
        sample_read_gb_per_sec: round3(read_bytes_per_sec / 1e9),
        sample_bound_chars_per_sec: bound.round(),
        sample_fraction_of_bound: round3(sample / bound),
        peak_rss_mb,
        baseline_plain_train_chars_per_sec: Some(plain.round()),
        ratio_to_plain: Some(round3(train / plain)),
        baseline_burn_lstm_train_chars_per_sec: baseline.map(f64::round),
        ratio_to_burn_lstm: baseline.map(|b| round3(train / b)),
        pytorch_train_chars_per_sec: pytorch.map(|p| p.0),
        pytorch_sample_chars_per_sec: pytorch.map(|p| p.1),
        ratio_to_pytorch_train: pytorch.map(|p| round3(train / p.0)),
        ratio_to_pytorch_sample: pytorch.map(|p| round3(sample / p.1)),
    }
}

/// Bytes of weights one sampling step of `case`'s model reads.
fn sample_weight_bytes(case: &Case) -> usize {
    let h = case.d_hidden;
    let gates = case.cell.num_gates() * h;
    let recurrent = case.num_layers * h * gates;
    let inputs = (case.num_layers - 1) * h * gates + gates;
    let head = (h + 1) * VOCAB;
    (recurrent + inputs + head) * size_of::<f32>()
}

/// Bytes per second that `threads` threads read together, each going over and over its own
/// share of `bytes`, for about `budget`.
fn read_speed(bytes: usize, threads: usize, budget: Duration) -> f64 {
    let share = (bytes / size_of::<f32>()).div_ceil(threads);
    let buffers: Vec<Vec<f32>> = (0..threads).map(|_| vec![1.0; share]).collect();
    let start = Instant::now();
    let passes: Vec<u32> = std::thread::scope(|scope| {
        let readers: Vec<_> = buffers
            .iter()
            .map(|buffer| {
                scope.spawn(move || {
                    let mut passes = 0;
                    while passes < 3 || start.elapsed() < budget {
                        std::hint::black_box(sum(std::hint::black_box(buffer)));
                        passes += 1;
                    }
                    passes
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join().expect("a reader thread"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let read: u64 = passes
        .iter()
        .map(|&p| u64::from(p) * (share * 4) as u64)
        .sum();
    read as f64 / seconds
}

/// A sum in 32 independent lanes, so that the adds keep up with the loads.
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 32];
    let chunks = values.chunks_exact(32);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// This process's peak resident memory (Linux `VmHWM`), in MB; 0 where unknown.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(round3(kb / 1024.0))
        })
        .unwrap_or(0.0)
}

/// Measures one case in this process and prints its JSON line.
pub fn run_case(name: &str, device: &Device, seconds: f64) -> Result<()> {
    if let Some(case) = recurrence::cases().into_iter().find(|c| c.name() == name) {
        let report = recurrence::measure(&case, device, seconds)?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let Some(case) = cases().into_iter().find(|c| c.name() == name) else {
        return library::run_case(name, device, seconds).unwrap_or_else(|| {
            Err(crate::usage(format!(
                "no bench case `{name}`; cases: {}",
                case_names().join(", ")
            )))
        });
    };
    let report = measure(&case, device, Duration::from_secs_f64(seconds));
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The PyTorch side of a case, measured by `bench/pytorch_baseline.py`.
const PYTORCH_BASELINE: &str = include_str!("../bench/pytorch_baseline.py");

/// What `bench/pytorch_baseline.py` prints.
#[derive(Serialize, Deserialize)]
struct PytorchReport {
    /// The version of `torch` measured.
    #[serde(rename(serialize = "pytorch_measured_version"))]
    torch: String,
    #[serde(rename(serialize = "pytorch_measured_train_chars_per_sec"))]
    train_chars_per_sec: f64,
    #[serde(rename(serialize = "pytorch_measured_sample_chars_per_sec"))]
    sample_chars_per_sec: f64,
    #[serde(rename(serialize = "pytorch_measured_peak_rss_mb"))]
    peak_rss_mb: f64,
}

/// PyTorch measured on a case in the same run, and Ember's ratios to it.
#[derive(Serialize)]
struct PytorchMeasured {
    #[serde(flatten)]
    pytorch_measured: PytorchReport,
    ratio_to_pytorch_measured_train: f64,
    ratio_to_pytorch_measured_sample: f64,
    /// Ember's peak resident memory over PyTorch's.
    ratio_to_pytorch_measured_rss: f64,
}

/// Every case's name, the language-model cases first, the GPU recurrence cases last.
fn case_names() -> Vec<String> {
    let library = library::cases();
    let library = library.iter().map(library::LibraryCase::name);
    let recurrence = recurrence::cases();
    let recurrence = recurrence.iter().map(recurrence::RecurrenceCase::name);
    cases()
        .iter()
        .map(Case::name)
        .chain(library)
        .chain(recurrence)
        .collect()
}

/// The arguments of `bench/pytorch_baseline.py` for a language-model case.
fn pytorch_args(case: &Case) -> Vec<String> {
    [
        ("--cell", case.cell.to_string()),
        ("--layers", case.num_layers.to_string()),
        ("--hidden", case.d_hidden.to_string()),
        ("--batch", case.batch_size.to_string()),
        ("--seq", case.seq_len.to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect()
}

/// Runs case `name` through PyTorch with `python`, the script on its standard input and `args`
/// after it; returns the line the script printed last.
fn measure_pytorch(python: &Path, name: &str, args: &[String], seconds: f64) -> Result<String> {
    let mut child = Command::new(python)
        .arg("-")
        .args(args)
        .args(["--seconds", &seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting --pytorch {}", python.display()))?;
    child
        .stdin
        .take()
        .context("the PyTorch child's input")?
        .write_all(PYTORCH_BASELINE.as_bytes())
        .context("sending the PyTorch baseline script")?;
    let output = child
        .wait_with_output()
        .context("running the PyTorch baseline")?;
    if !output.status.success() {
        bail!(
            "--pytorch {} failed on case {name} (is torch installed for it?): {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().last().unwrap_or_default().to_string())
}

/// The fields to append to language-model case `ours` from PyTorch's line `theirs`.
fn pytorch_fields(ours: &str, theirs: &str) -> Result<String> {
    let ours: Report = serde_json::from_str(ours).context("reading a bench case's report")?;
    let torch: PytorchReport = serde_json::from_str(theirs)
        .with_context(|| format!("reading the PyTorch baseline's report `{theirs}`"))?;
    let measured = PytorchMeasured {
        ratio_to_pytorch_measured_train: round3(
            ours.train_chars_per_sec / torch.train_chars_per_sec,
        ),
        ratio_to_pytorch_measured_sample: round3(
            ours.sample_chars_per_sec / torch.sample_chars_per_sec,
        ),
        ratio_to_pytorch_measured_rss: round3(ours.peak_rss_mb / torch.peak_rss_mb),
        pytorch_measured: torch,
    };
    Ok(serde_json::to_string(&measured)?)
}

/// Measures every case (or those whose name contains `filter`), each in a child process, and
/// PyTorch on each with `pytorch`, an interpreter with `torch`. With `rounds` above one, each
/// case and its baseline run that many times in turn, and the case's line is the round whose
/// ratio to PyTorch is the median, with every round's ratio beside it: on a shared machine one
/// round's two measurements can meet different loads.
pub fn run_all(
    filter: Option<&str>,
    device: &Device,
    device_name: Option<&str>,
    seconds: f64,
    pytorch: Option<&Path>,
    rounds: usize,
) -> Result<()> {
    let exe = std::env::current_exe().context("finding the ember binary")?;
    // A GPU backend runs the recurrence cases, a CPU backend the others.
    let on_gpu = ember_model::ops::has_device_kernels(device);
    let selected: Vec<String> = case_names()
        .into_iter()
        .filter(|name| name.starts_with("recurrence-") == on_gpu)
        .filter(|name| filter.is_none_or(|f| name.contains(f)))
        .collect();
    if selected.is_empty() {
        return Err(crate::usage(format!(
            "no bench case matches `{}`",
            filter.unwrap_or_default()
        )));
    }
    for name in selected {
        let lines = (0..rounds.max(1))
            .map(|_| measure_round(&exe, device_name, &name, seconds, pytorch))
            .collect::<Result<Vec<String>>>()?;
        println!("{}", median_round(lines)?);
    }
    Ok(())
}

/// The keys of a line's ratio to PyTorch that [`median_round`] orders rounds by: training, or
/// for a GPU recurrence case the forward and backward pass.
const RATIO_KEYS: [&str; 2] = [
    "ratio_to_pytorch_measured_train",
    "ratio_to_pytorch_forward_backward",
];

/// Of the rounds of one case, the line whose ratio to PyTorch is the median (the lower of the
/// two middle ones for an even count), with `rounds` and every round's ratio, in order, appended.
/// One round's line is returned as it is.
fn median_round(mut lines: Vec<String>) -> Result<String> {
    if lines.len() == 1 {
        return Ok(lines.remove(0));
    }
    let reports = lines
        .iter()
        .map(|line| serde_json::from_str(line).context("reading a bench round's report"))
        .collect::<Result<Vec<serde_json::Value>>>()?;
    let key = RATIO_KEYS
        .into_iter()
        .find(|key| reports[0][key].is_f64())
        .with_context(|| {
            format!(
                "a bench round's report has no ratio to PyTorch: {}",
                lines[0]
            )
        })?;
    let ratios = reports
        .iter()
        .map(|report| {
            report[key]
                .as_f64()
                .with_context(|| format!("a bench round's report has no `{key}`: {report}"))
        })
        .collect::<Result<Vec<f64>>>()?;
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
    let line = &lines[order[(order.len() - 1) / 2]];
    let Some(fields) = line.strip_suffix('}') else {
        bail!("a bench case's report `{line}` is not a JSON object");
    };
    Ok(format!(
        "{fields},\"rounds\":{},\"{key}_rounds\":{}}}",
        lines.len(),
        serde_json::to_string(&ratios)?
    ))
}

/// One round of the case `name`: its child's line, with PyTorch's figures and the ratios to
/// them appended when `pytorch` is given.
fn measure_round(
    exe: &Path,
    device_name: Option<&str>,
    name: &str,
    seconds: f64,
    pytorch: Option<&Path>,
) -> Result<String> {
    let mut command = std::process::Command::new(exe);
    if let Some(device) = device_name {
        command.args(["--device", device]);
    }
    let output = command
        .args(["bench", "--case", name, "--seconds", &seconds.to_string()])
        .output()
        .context("running a bench case")?;
    if !output.status.success() {
        bail!(
            "bench case {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.trim();
    let Some(python) = pytorch else {
        return Ok(line.to_string());
    };
    let gpu_case = recurrence::cases().into_iter().find(|c| c.name() == name);
    let lm_case = cases().into_iter().find(|c| c.name() == name);
    let extra = match (lm_case, gpu_case) {
        (None, Some(case)) => {
            let args = case.pytorch_args();
            let with = |tf32: &str| {
                let mut args = args.clone();
                args.extend(["--tf32".to_string(), tf32.to_string()]);
                measure_pytorch(python, name, &args, seconds)
            };
            recurrence::pytorch_fields(line, &with("0")?, &with("1")?)?
        }
        (Some(case), _) => {
            let theirs = measure_pytorch(python, name, &pytorch_args(&case), seconds)?;
            pytorch_fields(line, &theirs)?
        }
        (None, None) => {
            let case = library::cases()
                .into_iter()
                .find(|c| c.name() == name)
                .context("a library case of a listed name")?;
            let ours: library::LibraryReport =
                serde_json::from_str(line).context("reading a bench case's report")?;
            let args = case.pytorch_args(ours.threads);
            let theirs = measure_pytorch(python, name, &args, seconds)?;
            library::pytorch_fields(&case, &ours, &theirs)?
        }
    };
    // The case's own line, its fields in order, with PyTorch's appended.
    let (Some(ours), Some(extra)) = (line.strip_suffix('}'), extra.strip_prefix('{')) else {
        bail!("a bench case's report `{line}` is not a JSON object");
    };
    Ok(format!("{ours},{extra}"))
}
