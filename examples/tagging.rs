//! Many-to-many: one label per input step, with a loss at every step, summed over the sequence
//! as the seed describes.
//!
//! The task: read a string of the letters `a`-`h` and tag every letter `n` if it is new in the
//! string so far, `s` if it was seen before. Tag `t` depends on everything up to step `t`, so the
//! hidden state must remember which letters it has met. Lines are `text<TAB>tags` (Ember's pair
//! reader); strings are 5 to 30 letters, 4,000 train and 1,000 others are held out.
//!
//! ```sh
//! cargo run --release --example tagging
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use ember_data::{PaddedBatch, TextPair, TokenVocab, Vocab, parse_pairs};
use ember_model::{CellKind, SequenceEncoderConfig, SequenceTaggerConfig, StepLoss};
use ember_train::{GradientStep, OptimizerConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to run.
pub struct Settings {
    /// Optimizer steps of 64 strings.
    pub steps: usize,
    /// Seeds the data, the weights and the shuffling.
    pub seed: u64,
}

/// What the tagger learned.
pub struct Report {
    /// Held-out accuracy over every real step.
    pub step_accuracy: f64,
    /// Held-out share of strings with every tag right.
    pub sequence_accuracy: f64,
    /// Held-out step accuracy of always answering the most common tag.
    pub majority_baseline: f64,
    /// Wall-clock training time in seconds.
    pub train_seconds: f64,
}

const LETTERS: &[u8] = b"abcdefgh";
const TAGS: [char; 2] = ['n', 's'];

fn generate(count: usize, rng: &mut ChaCha8Rng) -> String {
    let mut lines = String::new();
    for _ in 0..count {
        let len = rng.random_range(5..=30);
        let mut seen = [false; 8];
        let (mut text, mut tags) = (String::new(), String::new());
        for _ in 0..len {
            let letter = rng.random_range(0..LETTERS.len());
            text.push(LETTERS[letter] as char);
            tags.push(TAGS[usize::from(seen[letter])]);
            seen[letter] = true;
        }
        lines.push_str(&format!("{text}\t{tags}\n"));
    }
    lines
}

struct Tagged {
    tokens: Vec<Vec<usize>>,
    tags: Vec<Vec<usize>>,
}

fn encode(pairs: &[TextPair], vocab: &TokenVocab) -> Tagged {
    let mut tagged = Tagged {
        tokens: Vec::new(),
        tags: Vec::new(),
    };
    for pair in pairs {
        let tags: Vec<usize> = pair
            .target
            .chars()
            .map(|t| {
                TAGS.iter()
                    .position(|&known| known == t)
                    .expect("a known tag")
            })
            .collect();
        let tokens = vocab
            .encode(&pair.source)
            .expect("generated letters are in the vocabulary");
        assert_eq!(
            tokens.len(),
            tags.len(),
            "line {}: one tag per letter",
            pair.line
        );
        tagged.tokens.push(tokens);
        tagged.tags.push(tags);
    }
    tagged
}

/// Trains the tagger and measures it on the held-out strings.
pub fn run(settings: &Settings, device: &Device) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let vocab = TokenVocab::new(Vocab::new(LETTERS.iter().map(|&b| b as char)).unwrap());
    let read = |count, rng: &mut ChaCha8Rng, name: &str| {
        let pairs = parse_pairs(&generate(count, rng), Path::new(name))
            .expect("generated lines are well formed");
        encode(&pairs, &vocab)
    };
    let train = read(4000, &mut rng, "generated/train.tsv");
    let test = read(1000, &mut rng, "generated/test.tsv");

    let train_device = device.clone().autodiff();
    train_device.seed(settings.seed);
    let encoder = SequenceEncoderConfig::new(vocab.len(), CellKind::Lstm, 64).with_d_embed(16);
    let mut model = SequenceTaggerConfig::new(encoder, TAGS.len()).init(&train_device);
    let mut optimizer = GradientStep::new(&OptimizerConfig {
        lr: 5e-3,
        ..OptimizerConfig::default()
    });

    let started = Instant::now();
    let mut order: Vec<usize> = (0..train.tokens.len()).collect();
    for step in 0..settings.steps {
        let start = (step * 64) % order.len();
        if start < 64 {
            order.shuffle(&mut rng);
        }
        let rows = &order[start..(start + 64).min(order.len())];
        let tokens: Vec<&Vec<usize>> = rows.iter().map(|&i| &train.tokens[i]).collect();
        let tags: Vec<&Vec<usize>> = rows.iter().map(|&i| &train.tags[i]).collect();
        let batch = PaddedBatch::new(&tokens, TokenVocab::PAD);
        let tag_batch = PaddedBatch::new(&tags, 0);
        let loss = model.forward_loss(
            common::ids(&batch, &train_device),
            &batch.lengths,
            common::ids(&tag_batch, &train_device),
            StepLoss::Sum,
        );
        model = optimizer.apply(model, loss, step as u64).0;
    }
    let train_seconds = started.elapsed().as_secs_f64();

    let model = model.valid();
    let mut predicted: Vec<Vec<usize>> = Vec::new();
    for chunk in test.tokens.chunks(256) {
        let batch = PaddedBatch::new(chunk, TokenVocab::PAD);
        predicted.extend(model.predict(common::ids(&batch, device), &batch.lengths));
    }
    let flat_predicted: Vec<usize> = predicted.iter().flatten().copied().collect();
    let flat_expected: Vec<usize> = test.tags.iter().flatten().copied().collect();
    let whole = predicted
        .iter()
        .zip(&test.tags)
        .filter(|(p, e)| p == e)
        .count();
    Report {
        step_accuracy: common::accuracy(&flat_predicted, &flat_expected),
        sequence_accuracy: whole as f64 / test.tags.len() as f64,
        majority_baseline: common::majority_share(&flat_expected),
        train_seconds,
    }
}

#[allow(dead_code)]
fn main() {
    let report = run(
        &Settings {
            steps: 1500,
            seed: 11,
        },
        &Device::default(),
    );
    println!(
        "held-out per-step accuracy {:.3} (majority tag {:.3}), whole strings right {:.3}, \
         trained in {:.1} s",
        report.step_accuracy,
        report.majority_baseline,
        report.sequence_accuracy,
        report.train_seconds
    );
}
