//! Many-to-one: which of four "languages" wrote a string, decided from the final hidden state.
//!
//! The languages are first-order Markov chains over the letters `a`-`h`: after a letter, language
//! `by-k` writes the letter `k` places later (cyclically) with probability 0.7, else any letter.
//! With `k` odd, every language uses every letter equally often, so the letters alone say nothing:
//! only their order does. Strings are 4 to 24 letters long and share padded batches. The data
//! goes through Ember's `label<TAB>text` reader; 4,000 strings train, 1,000 others are held out.
//!
//! ```sh
//! cargo run --release --example classify
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use ember_data::{LabelSet, LabelledText, PaddedBatch, TokenVocab, Vocab, parse_labelled};
use ember_model::{
    CellKind, Pooling, SequenceClassifier, SequenceClassifierConfig, SequenceEncoderConfig,
    cross_entropy,
};
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

/// What the classifier learned.
pub struct Report {
    /// Held-out accuracy.
    pub accuracy: f64,
    /// Held-out accuracy of always answering the most common held-out class.
    pub majority_baseline: f64,
    /// Wall-clock training time in seconds.
    pub train_seconds: f64,
}

const LETTERS: &[u8] = b"abcdefgh";
const STEPS_BY_LANGUAGE: [usize; 4] = [1, 3, 5, 7];

/// `count` lines of `label<TAB>text`.
fn generate(count: usize, rng: &mut ChaCha8Rng) -> String {
    let mut lines = String::new();
    for _ in 0..count {
        let language = rng.random_range(0..STEPS_BY_LANGUAGE.len());
        let step = STEPS_BY_LANGUAGE[language];
        let len = rng.random_range(4..=24);
        let mut letter = rng.random_range(0..LETTERS.len());
        let mut text = String::new();
        for _ in 0..len {
            text.push(LETTERS[letter] as char);
            letter = if rng.random::<f64>() < 0.7 {
                (letter + step) % LETTERS.len()
            } else {
                rng.random_range(0..LETTERS.len())
            };
        }
        lines.push_str(&format!("by-{step}\t{text}\n"));
    }
    lines
}

struct Encoded {
    tokens: Vec<Vec<usize>>,
    labels: Vec<usize>,
}

fn encode(examples: &[LabelledText], vocab: &TokenVocab, labels: &LabelSet) -> Encoded {
    Encoded {
        tokens: examples
            .iter()
            .map(|e| {
                vocab
                    .encode(&e.text)
                    .expect("generated letters are in the vocabulary")
            })
            .collect(),
        labels: examples
            .iter()
            .map(|e| labels.id(&e.label).expect("every label was seen"))
            .collect(),
    }
}

fn predict(model: &SequenceClassifier, tokens: &[Vec<usize>], device: &Device) -> Vec<usize> {
    tokens
        .chunks(256)
        .flat_map(|chunk| {
            let batch = PaddedBatch::new(chunk, TokenVocab::PAD);
            model.predict(common::ids(&batch, device), &batch.lengths)
        })
        .collect()
}

/// Trains the classifier and measures it on the held-out strings.
pub fn run(settings: &Settings, device: &Device) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let train = parse_labelled(&generate(4000, &mut rng), Path::new("generated/train.tsv"))
        .expect("generated lines are well formed");
    let test = parse_labelled(&generate(1000, &mut rng), Path::new("generated/test.tsv"))
        .expect("generated lines are well formed");
    let labels = LabelSet::new(train.iter().map(|e| e.label.as_str()));
    let vocab = TokenVocab::new(Vocab::new(LETTERS.iter().map(|&b| b as char)).unwrap());
    let train = encode(&train, &vocab, &labels);
    let test = encode(&test, &vocab, &labels);

    let train_device = device.clone().autodiff();
    train_device.seed(settings.seed);
    let encoder = SequenceEncoderConfig::new(vocab.len(), CellKind::Gru, 64).with_d_embed(16);
    let mut model = SequenceClassifierConfig::new(encoder, labels.len())
        .with_pooling(Pooling::Last)
        .init(&train_device);
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
        let classes: Vec<usize> = rows.iter().map(|&i| train.labels[i]).collect();
        let batch = PaddedBatch::new(&tokens, TokenVocab::PAD);
        let logits = model.forward(common::ids(&batch, &train_device), &batch.lengths);
        let loss = cross_entropy(logits, common::classes(&classes, &train_device));
        model = optimizer.apply(model, loss, step as u64).0;
    }
    let train_seconds = started.elapsed().as_secs_f64();

    let predicted = predict(&model.valid(), &test.tokens, device);
    Report {
        accuracy: common::accuracy(&predicted, &test.labels),
        majority_baseline: common::majority_share(&test.labels),
        train_seconds,
    }
}

#[allow(dead_code)]
fn main() {
    let report = run(
        &Settings {
            steps: 1500,
            seed: 7,
        },
        &Device::default(),
    );
    println!(
        "held-out accuracy {:.3} (majority class {:.3}; letters alone: chance), trained in {:.1} s",
        report.accuracy, report.majority_baseline, report.train_seconds
    );
}
