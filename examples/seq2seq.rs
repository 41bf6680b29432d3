//! Sequence to sequence: sort the letters of a string ("hbdab" -> "abbdh"). The first letter of
//! the answer is the smallest of the whole input, so nothing can be written before everything is
//! read: the encoder reads the string, its summary starts the decoder, which writes the answer.
//! The two halves differ on purpose, to show they are separate and swappable: a bidirectional
//! LSTM encoder (2 x 96) and a GRU decoder (160), joined by a learned bridge. Strings are 3 to
//! 10 letters from `a`-`j`; 1,000 held-out strings were never seen in training. Decoded greedily
//! and by beam search.
//!
//! ```sh
//! cargo run --release --example seq2seq
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use ember_data::{PaddedBatch, TokenVocab, Vocab, parse_pairs};
use ember_model::{
    CellKind, DecodeConfig, Seq2Seq, Seq2SeqConfig, SequenceDecoderConfig, SequenceEncoderConfig,
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
    /// The beam width compared with greedy decoding.
    pub beam_width: usize,
}

/// What the model learned.
pub struct Report {
    /// Held-out share of strings sorted exactly right, greedy decoding.
    pub greedy_exact: f64,
    /// The same with beam search.
    pub beam_exact: f64,
    /// Held-out share already sorted: what answering with the input scores.
    pub copy_baseline: f64,
    /// A few held-out strings and the greedy answers.
    pub examples: Vec<(String, String)>,
    /// Wall-clock training time in seconds.
    pub train_seconds: f64,
}

const LETTERS: &[u8] = b"abcdefghij";

fn random_string(rng: &mut ChaCha8Rng) -> String {
    let len = rng.random_range(3..=10);
    (0..len)
        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
        .collect()
}

fn sorted(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.into_iter().collect()
}

/// `source<TAB>target` lines: `train` strings, then `test` others none of the first.
fn generate(train: usize, test: usize, rng: &mut ChaCha8Rng) -> (String, String) {
    let mut seen = HashSet::new();
    let mut lines = |count: usize, rng: &mut ChaCha8Rng| {
        let mut text = String::new();
        while text.lines().count() < count {
            let source = random_string(rng);
            if seen.insert(source.clone()) {
                text.push_str(&format!("{source}\t{}\n", sorted(&source)));
            }
        }
        text
    };
    let train_lines = lines(train, rng);
    (train_lines, lines(test, rng))
}

fn decode_all(
    model: &Seq2Seq,
    sources: &[Vec<usize>],
    config: &DecodeConfig,
    vocab: &TokenVocab,
    device: &Device,
) -> Vec<String> {
    sources
        .chunks(128)
        .flat_map(|chunk| {
            let batch = PaddedBatch::new(chunk, TokenVocab::PAD);
            model.decode(common::ids(&batch, device), &batch.lengths, config)
        })
        .map(|h| {
            vocab
                .decode(h.ids)
                .expect("written ids are in the vocabulary")
        })
        .collect()
}

/// Trains the sorter and measures it on the held-out strings.
pub fn run(settings: &Settings, device: &Device) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let (train_text, test_text) = generate(8000, 1000, &mut rng);
    let train = parse_pairs(&train_text, Path::new("generated/train.tsv")).unwrap();
    let test = parse_pairs(&test_text, Path::new("generated/test.tsv")).unwrap();
    let vocab = TokenVocab::new(Vocab::new(LETTERS.iter().map(|&b| b as char)).unwrap());
    let encode = |text: &str| {
        vocab
            .encode(text)
            .expect("generated letters are in the vocabulary")
    };
    let train_sources: Vec<Vec<usize>> = train.iter().map(|p| encode(&p.source)).collect();
    let train_targets: Vec<Vec<usize>> = train.iter().map(|p| encode(&p.target)).collect();
    let test_sources: Vec<Vec<usize>> = test.iter().map(|p| encode(&p.source)).collect();

    let train_device = device.clone().autodiff();
    train_device.seed(settings.seed);
    let encoder = SequenceEncoderConfig::new(vocab.len(), CellKind::Lstm, 96)
        .with_d_embed(16)
        .with_bidirectional(true);
    let decoder = SequenceDecoderConfig::new(vocab.len(), CellKind::Gru, 160).with_d_embed(16);
    let mut model = Seq2SeqConfig::new(encoder, decoder).init(&train_device);
    let mut optimizer = GradientStep::new(&OptimizerConfig {
        lr: 4e-3,
        ..OptimizerConfig::default()
    });

    let started = Instant::now();
    let mut order: Vec<usize> = (0..train.len()).collect();
    for step in 0..settings.steps {
        let start = (step * 64) % order.len();
        if start < 64 {
            order.shuffle(&mut rng);
        }
        let rows = &order[start..(start + 64).min(order.len())];
        let sources: Vec<&Vec<usize>> = rows.iter().map(|&i| &train_sources[i]).collect();
        let targets: Vec<&Vec<usize>> = rows.iter().map(|&i| &train_targets[i]).collect();
        let source = PaddedBatch::new(&sources, TokenVocab::PAD);
        let (inputs, outputs) = TokenVocab::teacher_forcing(&targets);
        let loss = model.forward_loss(
            common::ids(&source, &train_device),
            &source.lengths,
            common::ids(&inputs, &train_device),
            common::ids(&outputs, &train_device),
            common::mask(&outputs, &train_device),
        );
        model = optimizer.apply(model, loss, step as u64).0;
    }
    let train_seconds = started.elapsed().as_secs_f64();

    let model = model.valid();
    let expected: Vec<&str> = test.iter().map(|p| p.target.as_str()).collect();
    let exact = |written: &[String]| {
        let right = written
            .iter()
            .zip(&expected)
            .filter(|(w, e)| w == *e)
            .count();
        right as f64 / expected.len() as f64
    };
    let greedy_config = DecodeConfig::new(TokenVocab::BOS, TokenVocab::EOS, 16);
    let beam_config = greedy_config.clone().with_beam_width(settings.beam_width);
    let greedy = decode_all(&model, &test_sources, &greedy_config, &vocab, device);
    let beam = decode_all(&model, &test_sources, &beam_config, &vocab, device);
    let already_sorted = test.iter().filter(|p| p.source == p.target).count();
    Report {
        greedy_exact: exact(&greedy),
        beam_exact: exact(&beam),
        copy_baseline: already_sorted as f64 / test.len() as f64,
        examples: test
            .iter()
            .map(|p| p.source.clone())
            .zip(greedy)
            .take(5)
            .collect(),
        train_seconds,
    }
}

#[allow(dead_code)]
fn main() {
    let settings = Settings {
        steps: 3000,
        seed: 5,
        beam_width: 4,
    };
    let report = run(&settings, &Device::default());
    for (source, written) in &report.examples {
        println!("  {source:>10} -> {written}");
    }
    println!(
        "held-out exact match: greedy {:.3}, beam (width {}) {:.3}; answering with the input \
         scores {:.3}; trained in {:.1} s",
        report.greedy_exact,
        settings.beam_width,
        report.beam_exact,
        report.copy_baseline,
        report.train_seconds
    );
}
