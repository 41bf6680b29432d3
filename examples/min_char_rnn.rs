//! The seed's minimal character-level language model (Karpathy's min-char-rnn), on Ember: one
//! vanilla tanh RNN layer with biases, one-hot input, hidden 100, sequences of 50, AdaGrad at
//! learning rate 0.1 with gradients clipped to [-5, 5], the loss summed over each sequence, the
//! hidden state carried from one sequence to the next. It trains on a short poem
//! (`data/sonnet-18.txt`), prints the smoothed loss every 100 iterations, draws the loss curve
//! and samples 1000 characters from a starting letter.
//!
//! ```sh
//! cargo run --release --example min_char_rnn [ITERATIONS (default 20000)]
//! ```

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_data::Vocab;
use ember_model::{CellKind, CharLmConfig, RecurrentState, SampleConfig};
use ember_train::{GradientStep, OptimizerConfig, OptimizerKind, plot_curves};

/// The short poem the seed's model learns.
pub const POEM: &str = include_str!("../data/sonnet-18.txt");

/// What to run.
pub struct Settings {
    /// Training iterations (one sequence of 50 characters each).
    pub iterations: usize,
    /// Seeds the weights and the sampler.
    pub seed: u64,
    /// The letter sampling starts from.
    pub start: char,
    /// How many characters to sample.
    pub sample_len: usize,
    /// Where the loss curve goes (SVG), if anywhere.
    pub plot: Option<PathBuf>,
    /// Print the smoothed loss every this many iterations (0: never).
    pub print_every: usize,
}

/// What the run learned.
pub struct Report {
    /// The loss a uniform guess gives a sequence: `-ln(1 / vocab_size) * 50`.
    pub uniform_loss: f64,
    /// `(iteration, smoothed loss)` every 100 iterations, the seed's
    /// `smooth_loss = 0.999 * smooth_loss + 0.001 * loss`, starting at the uniform loss.
    pub smooth_losses: Vec<(usize, f64)>,
    /// The mean per-sequence loss of the last 100 iterations (unsmoothed).
    pub final_loss: f64,
    /// The sampled text, starting letter included.
    pub sample: String,
}

const HIDDEN: usize = 100;
const SEQ_LEN: usize = 50;

fn ids_tensor(ids: &[u16], device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    Tensor::from_data(TensorData::new(values, [1, ids.len()]), device)
}

/// Trains the seed's model on [`POEM`] and samples from it.
pub fn run(settings: &Settings, device: &Device) -> Report {
    let vocab = Vocab::from_text(POEM).expect("the poem has a small vocabulary");
    let ids = vocab
        .encode(POEM)
        .expect("every character is in the vocabulary");
    let train_device = device.clone().autodiff();
    train_device.seed(settings.seed);
    let mut model = CharLmConfig::new(vocab.len(), CellKind::Rnn, HIDDEN)
        .with_d_embed(0)
        .init(&train_device);
    let mut optimizer = GradientStep::new(&OptimizerConfig {
        kind: OptimizerKind::Adagrad,
        lr: 0.1,
        grad_clip_norm: 0.0,
        grad_clip_value: 5.0,
        epsilon: 1e-8,
        ..OptimizerConfig::default()
    });

    let uniform_loss = (vocab.len() as f64).ln() * SEQ_LEN as f64;
    let mut smooth_loss = uniform_loss;
    let mut smooth_losses = Vec::new();
    let mut recent_losses = std::collections::VecDeque::with_capacity(100);
    let mut position = 0;
    let mut state: Option<RecurrentState> = None;
    for iteration in 0..settings.iterations {
        // As the seed: back to the start of the text, with a fresh state, when a sequence and
        // its next-character targets no longer fit.
        if position + SEQ_LEN + 1 >= ids.len() {
            position = 0;
            state = None;
        }
        let inputs = ids_tensor(&ids[position..position + SEQ_LEN], &train_device);
        let targets = ids_tensor(&ids[position + 1..position + SEQ_LEN + 1], &train_device);
        let (mean_loss, next) = model.forward_loss(inputs, targets, state.take());
        // The seed sums the per-character losses of a sequence.
        let loss = mean_loss * SEQ_LEN as f64;
        let loss_value = loss.clone().into_scalar::<f64>();
        smooth_loss = 0.999 * smooth_loss + 0.001 * loss_value;
        if recent_losses.len() == 100 {
            recent_losses.pop_front();
        }
        recent_losses.push_back(loss_value);
        if iteration % 100 == 0 {
            smooth_losses.push((iteration, smooth_loss));
            if settings.print_every > 0 && iteration % settings.print_every == 0 {
                println!("iter {iteration}, loss: {smooth_loss:.6}");
            }
        }
        let (updated, _) = optimizer.apply(model, loss, iteration as u64);
        model = updated;
        state = Some(next.detach());
        position += SEQ_LEN;
    }

    if let Some(path) = &settings.plot {
        let points: Vec<(f64, f64)> = smooth_losses
            .iter()
            .map(|&(i, loss)| (i as f64, loss))
            .collect();
        if let Err(error) = plot_curves(
            &points,
            &[],
            "min-char-rnn: smoothed loss per sequence",
            path,
        ) {
            eprintln!("could not draw the loss curve: {error}");
        }
    }

    let start = vocab.id(settings.start).map_or(0, usize::from);
    let model = model.valid();
    let sampler = model
        .sampler(
            &[start],
            SampleConfig::new().with_seed(settings.seed),
            device,
        )
        .expect("a one-letter prefix from the vocabulary");
    let sample = vocab
        .decode(std::iter::once(start).chain(sampler.take(settings.sample_len)))
        .expect("sampled ids are in the vocabulary");
    Report {
        uniform_loss,
        smooth_losses,
        final_loss: recent_losses.iter().sum::<f64>() / recent_losses.len().max(1) as f64,
        sample,
    }
}

#[allow(dead_code)]
fn main() {
    let iterations = std::env::args()
        .nth(1)
        .map(|arg| {
            arg.parse()
                .unwrap_or_else(|_| panic!("ITERATIONS must be a whole number, got {arg:?}"))
        })
        .unwrap_or(20_000);
    let plot = Path::new("min-char-rnn-loss.svg").to_path_buf();
    let settings = Settings {
        iterations,
        seed: 1,
        start: 'S',
        sample_len: 1000,
        plot: Some(plot.clone()),
        print_every: 100,
    };
    let report = run(&settings, &Device::default());
    println!(
        "loss per sequence: {:.3} over the last 100 iterations (uniform guess {:.3})",
        report.final_loss, report.uniform_loss
    );
    println!("loss curve: {}", plot.display());
    println!("----\n{}\n----", report.sample);
}
