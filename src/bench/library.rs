//! `ember bench`'s library-path cases: models built from `ember-model`'s public API and trained
//! by the loop a user writes (`forward`, a loss, `loss.backward()`,
//! `GradientsParams::from_grads`, Burn's Adam `step`), so that they time whatever path the
//! models' own `forward` takes, with nothing of `ember train` around them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use ember_model::{
    CellKind, RecurrentState, Seq2SeqConfig, SequenceClassifierConfig, SequenceDecoderConfig,
    SequenceEncoderConfig, StackedRecurrent, StackedRecurrentConfig, cross_entropy, length_mask,
};
use serde::{Deserialize, Serialize};

use super::{LR, round3, steps_per_sec};

/// The character cases' vocabulary and embedding: those of the language-model cases.
const CHAR_VOCAB: usize = 65;
const CHAR_D_EMBED: usize = 64;
/// The task cases' sizes: those of `configs/classify-languages.toml` and
/// `configs/sort-letters.toml` (embedding 16, one GRU layer of 96), over 32 token ids.
const TASK_VOCAB: usize = 32;
const TASK_D_EMBED: usize = 16;
const NUM_CLASSES: usize = 4;

/// What a library case trains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Shape {
    /// An embedding, a `StackedRecurrent` and a linear head over characters, truncated BPTT
    /// with the state carried and detached between chunks.
    Stacked,
    /// `SequenceClassifier` on a right-padded batch of sequences of different lengths.
    Classifier,
    /// `Seq2Seq` with a bidirectional encoder, teacher-forced on padded sources and targets.
    Seq2Seq,
}

/// One library-path configuration to measure; its report's first fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LibraryCase {
    #[serde(rename = "model")]
    shape: Shape,
    cell: CellKind,
    num_layers: usize,
    d_hidden: usize,
    batch_size: usize,
    /// The chunk length of a character case, the padded length of a task case.
    seq_len: usize,
    /// A task case's shortest sequence; lengths run from it to `seq_len` across the batch.
    min_len: usize,
    /// Dropout between recurrent layers.
    dropout: f64,
}

impl LibraryCase {
    /// `lib-lstm-2x128-b32-s64`, `lib-lstm-2x256-drop0.25-b32-s64`,
    /// `lib-classifier-gru-1x96-b64-s24`.
    pub fn name(&self) -> String {
        let shape = match self.shape {
            Shape::Stacked => String::new(),
            Shape::Classifier => "classifier-".into(),
            Shape::Seq2Seq => "seq2seq-".into(),
        };
        let dropout = if self.dropout > 0.0 {
            format!("-drop{}", self.dropout)
        } else {
            String::new()
        };
        format!(
            "lib-{shape}{}-{}x{}{dropout}-b{}-s{}",
            self.cell, self.num_layers, self.d_hidden, self.batch_size, self.seq_len
        )
    }

    /// Every sequence's length: `min_len` to `seq_len` in turn down the batch, so that both
    /// sides of a comparison read the same batch (a character case's rows are all full).
    fn lengths(&self) -> Vec<usize> {
        let spread = self.seq_len - self.min_len + 1;
        (0..self.batch_size)
            .map(|row| self.min_len + row % spread)
            .collect()
    }

    /// Examples (task cases) or characters (character cases) one training step reads.
    fn items_per_step(&self) -> usize {
        match self.shape {
            Shape::Stacked => self.batch_size * self.seq_len,
            Shape::Classifier | Shape::Seq2Seq => self.batch_size,
        }
    }

    /// The arguments `bench/pytorch_baseline.py` takes for the same model, batch and loop.
    pub fn pytorch_args(&self, threads: usize) -> Vec<String> {
        let model = match self.shape {
            Shape::Stacked => "char",
            Shape::Classifier => "classifier",
            Shape::Seq2Seq => "seq2seq",
        };
        let mut args: Vec<String> = vec![
            "--model".into(),
            model.into(),
            "--cell".into(),
            self.cell.to_string(),
            "--layers".into(),
            self.num_layers.to_string(),
            "--hidden".into(),
            self.d_hidden.to_string(),
            "--batch".into(),
            self.batch_size.to_string(),
            "--seq".into(),
            self.seq_len.to_string(),
            "--dropout".into(),
            self.dropout.to_string(),
            "--threads".into(),
            threads.to_string(),
            "--no-sample".into(),
        ];
        if self.shape != Shape::Stacked {
            for (flag, value) in [
                ("--min-len", self.min_len),
                ("--vocab", TASK_VOCAB),
                ("--embed", TASK_D_EMBED),
                ("--classes", NUM_CLASSES),
            ] {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args
    }

    /// FLOPs of one training step's matrix products: forward `2·m·n·k` for each, and twice that
    /// backward (the gradients of both operands), over the recurrent layers (input and hidden
    /// products of every real step), the seq2seq bridge and the heads. Gate arithmetic, the
    /// embedding, the loss and the optimizer are not counted, nor padding steps: this is the
    /// work the model needs, the same count for Ember and PyTorch whatever either computes.
    fn flops_per_step(&self) -> f64 {
        let h = self.d_hidden;
        let layers = |d_input: usize, rows: usize| -> usize {
            (0..self.num_layers)
                .map(|k| {
                    let d_in = if k == 0 { d_input } else { h };
                    rows * 2 * (d_in + h) * self.cell.num_gates() * h
                })
                .sum()
        };
        let real_steps: usize = self.lengths().iter().sum();
        let forward = match self.shape {
            Shape::Stacked => {
                let rows = self.batch_size * self.seq_len;
                layers(CHAR_D_EMBED, rows) + rows * 2 * h * CHAR_VOCAB
            }
            Shape::Classifier => {
                layers(TASK_D_EMBED, real_steps) + self.batch_size * 2 * h * NUM_CLASSES
            }
            Shape::Seq2Seq => {
                // Both directions read the source; the decoder reads the start mark and the
                // target, one step more than the source, and predicts at each.
                let encoder = 2 * layers(TASK_D_EMBED, real_steps);
                let per_layer = if self.cell.has_cell_state() { 2 } else { 1 };
                let bridge = self.batch_size * 2 * (2 * h) * (self.num_layers * per_layer * h);
                let target_steps = real_steps + self.batch_size;
                let decoder =
                    layers(TASK_D_EMBED, target_steps) + target_steps * 2 * h * TASK_VOCAB;
                encoder + bridge + decoder
            }
        };
        3.0 * forward as f64
    }
}

/// The library cases: the language-model rows through `StackedRecurrent`, one with dropout
/// between layers, then the classifier and seq2seq at the shipped task configs' sizes.
pub fn cases() -> Vec<LibraryCase> {
    let stacked = |cell, d_hidden, dropout| LibraryCase {
        shape: Shape::Stacked,
        cell,
        num_layers: 2,
        d_hidden,
        batch_size: 32,
        seq_len: 64,
        min_len: 64,
        dropout,
    };
    let task = |shape, min_len, seq_len| LibraryCase {
        shape,
        cell: CellKind::Gru,
        num_layers: 1,
        d_hidden: 96,
        batch_size: 64,
        seq_len,
        min_len,
        dropout: 0.0,
    };
    vec![
        stacked(CellKind::Lstm, 128, 0.0),
        stacked(CellKind::Gru, 128, 0.0),
        stacked(CellKind::Rnn, 128, 0.0),
        stacked(CellKind::Lstm, 512, 0.0),
        stacked(CellKind::Lstm, 256, 0.25),
        // The lengths of `data/markov-languages.tsv` and of `data/sort-letters.tsv`.
        task(Shape::Classifier, 4, 24),
        task(Shape::Seq2Seq, 3, 10),
    ]
}

/// One library case's JSON line.
#[derive(Serialize, Deserialize)]
pub struct LibraryReport {
    case: String,
    #[serde(flatten)]
    config: LibraryCase,
    /// The threads of the pool Burn's CPU backend runs on (PyTorch is given as many).
    pub threads: usize,
    pub train_steps_per_sec: f64,
    /// Character cases: characters per second.
    train_chars_per_sec: Option<f64>,
    /// Task cases: sequences (examples) per second.
    train_examples_per_sec: Option<f64>,
    /// FLOPs of a step's matrix products, forward and backward, in units of 1e9.
    pub gflop_per_step: f64,
    train_gflop_per_sec: f64,
    /// The `gemm` crate's f32 product of two square matrices of `PEAK_SIZE` on `threads`
    /// threads: what this machine's cores multiply at best, measured in this process.
    peak_gflop_per_sec: f64,
    /// `train_gflop_per_sec` over `peak_gflop_per_sec`.
    fraction_of_peak: f64,
    /// Peak resident memory after training, before the peak product ran.
    pub peak_rss_mb: f64,
}

/// An embedding, a recurrent stack and a linear head: a character model as a user of the
/// library puts it together.
#[derive(Module, Debug)]
struct StackedLm {
    embedding: Embedding,
    rnn: StackedRecurrent,
    head: Linear,
}

impl StackedLm {
    fn forward_loss(
        &self,
        ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: Option<RecurrentState>,
    ) -> (Tensor<1>, RecurrentState) {
        let [batch_size, seq_len] = ids.dims();
        let (outputs, state) = self.rnn.forward(self.embedding.forward(ids), state);
        let logits = self
            .head
            .forward(outputs)
            .reshape([batch_size * seq_len, CHAR_VOCAB]);
        let loss = cross_entropy(logits, targets.reshape([batch_size * seq_len]));
        (loss, state)
    }
}

/// Training steps per second of `model` under Burn's Adam, for about `budget`.
fn train<M: Module>(mut model: M, budget: Duration, mut loss: impl FnMut(&M) -> Tensor<1>) -> f64 {
    let mut optimizer = AdamConfig::new().init();
    steps_per_sec(budget, || {
        let grads = GradientsParams::from_grads(loss(&model).backward(), &model);
        model = optimizer.step(LR, model.clone(), grads);
    })
}

fn random_ids(shape: [usize; 2], vocab: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<2>::random(shape, Distribution::Uniform(0.0, vocab as f64), device).int()
}

/// Steps per second of the character model of `case`, truncated BPTT as a user's loop runs it:
/// the state carried into the next chunk, detached.
fn train_stacked(case: &LibraryCase, device: &Device, budget: Duration) -> f64 {
    let model = StackedLm {
        embedding: EmbeddingConfig::new(CHAR_VOCAB, CHAR_D_EMBED).init(device),
        rnn: StackedRecurrentConfig::new(case.cell, CHAR_D_EMBED, case.d_hidden)
            .with_num_layers(case.num_layers)
            .with_dropout(case.dropout)
            .init(device),
        head: LinearConfig::new(case.d_hidden, CHAR_VOCAB).init(device),
    };
    let shape = [case.batch_size, case.seq_len];
    let ids = random_ids(shape, CHAR_VOCAB, device);
    let targets = random_ids(shape, CHAR_VOCAB, device);
    let mut state: Option<RecurrentState> = None;
    train(model, budget, |model| {
        let (loss, next) = model.forward_loss(ids.clone(), targets.clone(), state.take());
        state = Some(next.detach());
        loss
    })
}

/// Steps per second of the classifier of `case` on its padded batch.
fn train_classifier(case: &LibraryCase, device: &Device, budget: Duration) -> f64 {
    let model = SequenceClassifierConfig::new(task_encoder(case), NUM_CLASSES).init(device);
    let ids = random_ids([case.batch_size, case.seq_len], TASK_VOCAB, device);
    let labels = (0..case.batch_size).map(|row| (row % NUM_CLASSES) as i64);
    let labels = Tensor::from_data(TensorData::new(labels.collect(), [case.batch_size]), device);
    let lengths = case.lengths();
    train(model, budget, |model| {
        cross_entropy(model.forward(ids.clone(), &lengths), labels.clone())
    })
}

/// Steps per second of the seq2seq model of `case`, teacher-forced on its padded batch.
fn train_seq2seq(case: &LibraryCase, device: &Device, budget: Duration) -> f64 {
    let decoder = SequenceDecoderConfig::new(TASK_VOCAB, case.cell, case.d_hidden)
        .with_d_embed(TASK_D_EMBED)
        .with_num_layers(case.num_layers)
        .with_dropout(case.dropout);
    let encoder = task_encoder(case).with_bidirectional(true);
    let model = Seq2SeqConfig::new(encoder, decoder).init(device);
    let (batch_size, seq_len) = (case.batch_size, case.seq_len);
    let source = random_ids([batch_size, seq_len], TASK_VOCAB, device);
    // The start mark then the target, and the target then its end mark: one step more than the
    // source, real up to and including the end mark.
    let inputs = random_ids([batch_size, seq_len + 1], TASK_VOCAB, device);
    let targets = random_ids([batch_size, seq_len + 1], TASK_VOCAB, device);
    let lengths = case.lengths();
    let target_lengths: Vec<usize> = lengths.iter().map(|len| len + 1).collect();
    let mask = length_mask(&target_lengths, seq_len + 1, device);
    train(model, budget, |model| {
        model.forward_loss(
            source.clone(),
            &lengths,
            inputs.clone(),
            targets.clone(),
            mask.clone(),
        )
    })
}

/// Trains `case` for about `budget` on `device` (with autodiff), then measures the machine's
/// peak product.
fn measure(case: &LibraryCase, device: &Device, budget: Duration) -> LibraryReport {
    let device = device.clone().autodiff();
    device.seed(1);
    let steps_per_sec = match case.shape {
        Shape::Stacked => train_stacked(case, &device, budget),
        Shape::Classifier => train_classifier(case, &device, budget),
        Shape::Seq2Seq => train_seq2seq(case, &device, budget),
    };
    let peak_rss_mb = super::peak_rss_mb();

    let threads = rayon::current_num_threads();
    let peak = peak_gflop_per_sec(threads, budget / 4);
    let gflop_per_step = case.flops_per_step() / 1e9;
    let items = (case.items_per_step() as f64 * steps_per_sec).round();
    LibraryReport {
        case: case.name(),
        config: *case,
        threads,
        train_steps_per_sec: round3(steps_per_sec),
        train_chars_per_sec: (case.shape == Shape::Stacked).then_some(items),
        train_examples_per_sec: (case.shape != Shape::Stacked).then_some(items),
        gflop_per_step,
        train_gflop_per_sec: round3(gflop_per_step * steps_per_sec),
        peak_gflop_per_sec: round3(peak),
        fraction_of_peak: round3(gflop_per_step * steps_per_sec / peak),
        peak_rss_mb,
    }
}

/// The task cases' encoder: one token embedding and stack (or two, when bidirectional).
fn task_encoder(case: &LibraryCase) -> SequenceEncoderConfig {
    SequenceEncoderConfig::new(TASK_VOCAB, case.cell, case.d_hidden)
        .with_d_embed(TASK_D_EMBED)
        .with_num_layers(case.num_layers)
        .with_dropout(case.dropout)
}

/// The side of the square products that measure the machine's peak: large enough that packing
/// and threading costs vanish beside the arithmetic (2·2048³ FLOPs, 48 MB of operands).
const PEAK_SIZE: usize = 2048;

/// GFLOP/s of the `gemm` crate's f32 product of two `PEAK_SIZE` squares on `threads` threads,
/// the best of at least three for about `budget`.
///
/// `gemm` dispatches its kernels at run time among those compiled in: its AVX-512 kernels
/// need its `x86-v4` feature, which Burn's CPU backend does not turn on, so on an AVX-512
/// machine this is the peak of the AVX2 kernels that Burn's own products use.
fn peak_gflop_per_sec(threads: usize, budget: Duration) -> f64 {
    let n = PEAK_SIZE;
    let lhs = vec![1.0f32; n * n];
    let rhs = vec![0.5f32; n * n];
    let mut dst = vec![0.0f32; n * n];
    let stride = n as isize;
    let start = Instant::now();
    let mut best = 0.0f64;
    let mut products = 0;
    while products < 3 || start.elapsed() < budget {
        let one = Instant::now();
        // SAFETY: all three buffers hold `n * n` f32 in row-major order (column stride 1, row
        // stride `n`), which are the extents gemm reads and writes; `dst` aliases neither input.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                dst.as_mut_ptr(),
                1,
                stride,
                false,
                lhs.as_ptr(),
                1,
                stride,
                rhs.as_ptr(),
                1,
                stride,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        best = best.max(2.0 * (n * n * n) as f64 / one.elapsed().as_secs_f64() / 1e9);
        products += 1;
    }
    std::hint::black_box(&dst);
    best
}

/// Measures the library case `name` in this process and prints its JSON line; `None` when no
/// library case has that name.
pub fn run_case(name: &str, device: &Device, seconds: f64) -> Option<Result<()>> {
    let case = cases().into_iter().find(|c| c.name() == name)?;
    let report = measure(&case, device, Duration::from_secs_f64(seconds));
    Some(
        serde_json::to_string(&report)
            .context("writing a library case's report")
            .map(|line| println!("{line}")),
    )
}

/// What `bench/pytorch_baseline.py --no-sample` prints.
#[derive(Serialize, Deserialize)]
struct PytorchTrainReport {
    #[serde(rename(serialize = "pytorch_measured_version"))]
    torch: String,
    #[serde(rename(serialize = "pytorch_measured_threads"))]
    threads: usize,
    #[serde(rename(serialize = "pytorch_measured_train_steps_per_sec"))]
    train_steps_per_sec: f64,
    #[serde(rename(serialize = "pytorch_measured_peak_rss_mb"))]
    peak_rss_mb: f64,
}

/// PyTorch measured on a library case in the same run, and Ember's ratios to it.
#[derive(Serialize)]
struct PytorchMeasured {
    #[serde(flatten)]
    pytorch_measured: PytorchTrainReport,
    pytorch_measured_train_chars_per_sec: Option<f64>,
    pytorch_measured_train_examples_per_sec: Option<f64>,
    /// PyTorch's steps per second times the case's `gflop_per_step`.
    pytorch_measured_train_gflop_per_sec: f64,
    ratio_to_pytorch_measured_train: f64,
    /// Ember's peak resident memory over PyTorch's.
    ratio_to_pytorch_measured_rss: f64,
}

/// The fields to append to library case `case`'s report `ours`, from PyTorch's line `theirs`.
pub fn pytorch_fields(case: &LibraryCase, ours: &LibraryReport, theirs: &str) -> Result<String> {
    let torch: PytorchTrainReport = serde_json::from_str(theirs)
        .with_context(|| format!("reading the PyTorch baseline's report `{theirs}`"))?;
    let items = (case.items_per_step() as f64 * torch.train_steps_per_sec).round();
    let measured = PytorchMeasured {
        pytorch_measured_train_chars_per_sec: (case.shape == Shape::Stacked).then_some(items),
        pytorch_measured_train_examples_per_sec: (case.shape != Shape::Stacked).then_some(items),
        pytorch_measured_train_gflop_per_sec: round3(
            ours.gflop_per_step * torch.train_steps_per_sec,
        ),
        ratio_to_pytorch_measured_train: round3(
            ours.train_steps_per_sec / torch.train_steps_per_sec,
        ),
        ratio_to_pytorch_measured_rss: round3(ours.peak_rss_mb / torch.peak_rss_mb),
        pytorch_measured: torch,
    };
    Ok(serde_json::to_string(&measured)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str) -> LibraryCase {
        cases()
            .into_iter()
            .find(|c| c.name() == name)
            .expect("a library case of that name")
    }

    /// The names the README and `--filter` use.
    #[test]
    fn names() {
        let names: Vec<String> = cases().iter().map(LibraryCase::name).collect();
        assert_eq!(
            names,
            [
                "lib-lstm-2x128-b32-s64",
                "lib-gru-2x128-b32-s64",
                "lib-rnn-2x128-b32-s64",
                "lib-lstm-2x512-b32-s64",
                "lib-lstm-2x256-drop0.25-b32-s64",
                "lib-classifier-gru-1x96-b64-s24",
                "lib-seq2seq-gru-1x96-b64-s10",
            ]
        );
    }

    /// FLOP counts worked by hand, forward products times 3.
    #[test]
    fn flops_per_step() {
        // LSTM 2x128 on 32 x 64 = 2048 characters: layer 0 reads 64 inputs and 128 hidden into
        // 512 gates, layer 1 reads 128 + 128, the head 128 into 65:
        // 2048 * 2 * (192 * 512 + 256 * 512 + 128 * 65) = 973,602,816 forward.
        assert_eq!(
            case("lib-lstm-2x128-b32-s64").flops_per_step(),
            3.0 * 973_602_816.0
        );
        // The classifier: lengths 4..=24 cycled down 64 rows, three full cycles of 294 steps
        // and a last row of 4, 886 real steps; a GRU of 96 reading 16: 2 * (16 + 96) * 288 per
        // step; the head 64 * 2 * 96 * 4.
        let steps = 886;
        assert_eq!(
            case("lib-classifier-gru-1x96-b64-s24")
                .lengths()
                .iter()
                .sum::<usize>(),
            steps
        );
        assert_eq!(
            case("lib-classifier-gru-1x96-b64-s24").flops_per_step(),
            3.0 * (steps * 2 * 112 * 288 + 64 * 2 * 96 * 4) as f64
        );
        // Seq2seq: lengths 3..=10 cycled, 8 full cycles of 52 = 416 source steps; both directions
        // read them; the bridge maps 192 to 96; the decoder reads 416 + 64 steps and predicts 32
        // ids at each.
        let source = 416;
        assert_eq!(
            case("lib-seq2seq-gru-1x96-b64-s10")
                .lengths()
                .iter()
                .sum::<usize>(),
            source
        );
        let layer = 2 * 112 * 288;
        let forward =
            2 * source * layer + 64 * 2 * 192 * 96 + (source + 64) * (layer + 2 * 96 * 32);
        assert_eq!(
            case("lib-seq2seq-gru-1x96-b64-s10").flops_per_step(),
            3.0 * forward as f64
        );
    }
}
