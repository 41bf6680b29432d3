//! One-to-many: a fixed-size vector sets the hidden state, which then writes a sequence of its
//! own length. The vector describes a number from 0 to 999 (its hundreds, tens and units digits,
//! one-hot, 30 values); the generator spells it in English ("three hundred forty two"). A fifth
//! of the numbers are held out: the model has never seen them spelled.
//!
//! ```sh
//! cargo run --release --example one_to_many
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ember_data::{TokenVocab, Vocab};
use ember_model::{
    CellKind, ConditionedGenerator, ConditionedGeneratorConfig, DecodeConfig, SequenceDecoderConfig,
};
use ember_train::{GradientStep, OptimizerConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// What to run.
pub struct Settings {
    /// Optimizer steps of 64 numbers.
    pub steps: usize,
    /// Seeds the split, the weights and the shuffling.
    pub seed: u64,
}

/// What the generator learned.
pub struct Report {
    /// Held-out share of numbers spelled exactly right (greedy decoding).
    pub exact_match: f64,
    /// Held-out share of characters right, position by position, over the longer of the two.
    pub char_accuracy: f64,
    /// A few held-out numbers and what the model wrote for them.
    pub examples: Vec<(usize, String)>,
    /// Wall-clock training time in seconds.
    pub train_seconds: f64,
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// `n` (below 1000) in English words.
pub fn spell(n: usize) -> String {
    let below_hundred = |n: usize| match n {
        0..=19 => ONES[n].to_string(),
        _ if n % 10 == 0 => TENS[n / 10].to_string(),
        _ => format!("{} {}", TENS[n / 10], ONES[n % 10]),
    };
    match (n / 100, n % 100) {
        (0, rest) => below_hundred(rest),
        (hundreds, 0) => format!("{} hundred", ONES[hundreds]),
        (hundreds, rest) => format!("{} hundred {}", ONES[hundreds], below_hundred(rest)),
    }
}

/// The one-hot digits of `n`: `[hundreds (10), tens (10), units (10)]`.
fn features(numbers: &[usize], device: &Device) -> Tensor<2> {
    let mut values = vec![0.0f32; numbers.len() * 30];
    for (row, &n) in numbers.iter().enumerate() {
        for (place, digit) in [n / 100, n / 10 % 10, n % 10].into_iter().enumerate() {
            values[row * 30 + place * 10 + digit] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(values, [numbers.len(), 30]), device)
}

fn generate(
    model: &ConditionedGenerator,
    numbers: &[usize],
    config: &DecodeConfig,
    vocab: &TokenVocab,
    device: &Device,
) -> Vec<String> {
    numbers
        .chunks(256)
        .flat_map(|chunk| model.generate(features(chunk, device), config))
        .map(|h| {
            vocab
                .decode(h.ids)
                .expect("written ids are in the vocabulary")
        })
        .collect()
}

/// Trains the generator and measures it on the held-out numbers.
pub fn run(settings: &Settings, device: &Device) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut numbers: Vec<usize> = (0..1000).collect();
    numbers.shuffle(&mut rng);
    let (test, train) = numbers.split_at(200);
    let mut train = train.to_vec();
    let all_words: String = (0..1000).map(spell).collect::<Vec<_>>().join(" ");
    let vocab = TokenVocab::new(Vocab::from_text(&all_words).expect("a small vocabulary"));

    let train_device = device.clone().autodiff();
    train_device.seed(settings.seed);
    let decoder = SequenceDecoderConfig::new(vocab.len(), CellKind::Gru, 128).with_d_embed(16);
    let mut model = ConditionedGeneratorConfig::new(30, decoder).init(&train_device);
    let mut optimizer = GradientStep::new(&OptimizerConfig {
        lr: 5e-3,
        ..OptimizerConfig::default()
    });

    let started = Instant::now();
    for step in 0..settings.steps {
        let start = (step * 64) % train.len();
        if start < 64 {
            train.shuffle(&mut rng);
        }
        let rows = &train[start..(start + 64).min(train.len())];
        let targets: Vec<Vec<usize>> = rows
            .iter()
            .map(|&n| {
                vocab
                    .encode(&spell(n))
                    .expect("spelled with the vocabulary")
            })
            .collect();
        let (inputs, outputs) = TokenVocab::teacher_forcing(&targets);
        let loss = model.forward_loss(
            features(rows, &train_device),
            common::ids(&inputs, &train_device),
            common::ids(&outputs, &train_device),
            common::mask(&outputs, &train_device),
        );
        model = optimizer.apply(model, loss, step as u64).0;
    }
    let train_seconds = started.elapsed().as_secs_f64();

    let config = DecodeConfig::new(TokenVocab::BOS, TokenVocab::EOS, 40);
    let written = generate(&model.valid(), test, &config, &vocab, device);
    let expected: Vec<String> = test.iter().map(|&n| spell(n)).collect();
    let exact = written
        .iter()
        .zip(&expected)
        .filter(|(w, e)| w == e)
        .count();
    let (mut right, mut total) = (0usize, 0usize);
    for (w, e) in written.iter().zip(&expected) {
        let (w, e): (Vec<char>, Vec<char>) = (w.chars().collect(), e.chars().collect());
        total += w.len().max(e.len());
        right += w.iter().zip(&e).filter(|(a, b)| a == b).count();
    }
    Report {
        exact_match: exact as f64 / test.len() as f64,
        char_accuracy: right as f64 / total.max(1) as f64,
        examples: test.iter().copied().zip(written).take(5).collect(),
        train_seconds,
    }
}

#[allow(dead_code)]
fn main() {
    let report = run(
        &Settings {
            steps: 2000,
            seed: 3,
        },
        &Device::default(),
    );
    for (n, written) in &report.examples {
        println!("  {n:>3} -> {written}");
    }
    println!(
        "held-out numbers spelled exactly right {:.3} (characters right {:.3}; no held-out \
         number was seen in training, so copying a training answer scores 0), trained in {:.1} s",
        report.exact_match, report.char_accuracy, report.train_seconds
    );
}
