//! Every example learns its task: each runs here with fewer steps than its `main` uses, and its
//! held-out figure must clear a threshold set well above the task's baseline.

use burn::tensor::Device;

#[path = "../examples/classify.rs"]
mod classify;
#[path = "../examples/min_char_rnn.rs"]
mod min_char_rnn;
#[path = "../examples/one_to_many.rs"]
mod one_to_many;
#[path = "../examples/seq2seq.rs"]
mod seq2seq;
#[path = "../examples/silly_network.rs"]
mod silly_network;
#[path = "../examples/tagging.rs"]
mod tagging;

/// The examples seed the device's generator before drawing their weights, and tests run in
/// parallel threads that share it: one example at a time keeps every run's draws its own, so the
/// figures below are the same on every run.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn device() -> (Device, std::sync::MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (Device::flex(), guard)
}

#[test]
fn silly_network_prints_the_seeds_numbers() {
    let outputs = silly_network::run(3, &device().0);
    for (t, (output, seed)) in outputs.iter().zip(silly_network::SEED_OUTPUTS).enumerate() {
        for (got, want) in output.iter().zip(seed) {
            // The seed printed 8 decimals of f64 arithmetic; Ember computes in f32.
            assert!(
                (got - want).abs() < 1e-6,
                "step {t}: {output:?} vs {seed:?}"
            );
        }
    }
    // The point of the demo: the same input, different answers.
    assert!((outputs[0][0] - outputs[1][0]).abs() > 0.1);
}

#[test]
fn min_char_rnn_learns_the_poem() {
    let device = device();
    let report = min_char_rnn::run(
        &min_char_rnn::Settings {
            iterations: 3000,
            seed: 1,
            start: 'S',
            sample_len: 200,
            plot: None,
            print_every: 0,
        },
        &device.0,
    );
    // A uniform guess costs ln(V) per character; 3000 iterations are ~250 passes over the
    // 620-character poem, enough to memorise much of it (loss ~0.1 of uniform here; the
    // example's 20000 reach ~1/50).
    eprintln!(
        "min_char_rnn: loss {} (uniform {})",
        report.final_loss, report.uniform_loss
    );
    assert!(
        report.final_loss < 0.3 * report.uniform_loss,
        "loss {} vs uniform {}",
        report.final_loss,
        report.uniform_loss
    );
    assert_eq!(report.sample.chars().count(), 201);
    assert!(report.sample.starts_with('S'));
    // The smoothed loss, as the seed logs it, falls.
    let first = report.smooth_losses.first().unwrap().1;
    let last = report.smooth_losses.last().unwrap().1;
    assert!(last < first, "smoothed loss {first} -> {last}");
}

#[test]
fn classify_beats_the_majority_class() {
    let device = device();
    let report = classify::run(
        &classify::Settings {
            steps: 600,
            seed: 7,
        },
        &device.0,
    );
    // Four balanced classes: the majority baseline is about 0.27, and letter counts alone are
    // at chance, so 0.75 means the order of the letters was learned (1500 steps reach ~0.98).
    assert!(
        report.majority_baseline < 0.35,
        "{}",
        report.majority_baseline
    );
    assert!(report.accuracy > 0.75, "accuracy {}", report.accuracy);
}

#[test]
fn tagging_beats_the_majority_tag() {
    let device = device();
    let report = tagging::run(
        &tagging::Settings {
            steps: 500,
            seed: 11,
        },
        &device.0,
    );
    // "seen" is the majority tag at about 0.61; remembering the letters met so far gives every
    // tag (1500 steps reach 1.000).
    assert!(
        report.majority_baseline < 0.7,
        "{}",
        report.majority_baseline
    );
    assert!(
        report.step_accuracy > 0.9,
        "per-step accuracy {}",
        report.step_accuracy
    );
}

#[test]
fn one_to_many_spells_unseen_numbers() {
    let device = device();
    let report = one_to_many::run(
        &one_to_many::Settings {
            steps: 800,
            seed: 3,
        },
        &device.0,
    );
    // No held-out number was spelled in training, so no answer can be copied: the baseline is
    // 0. Half of them right means the digits were composed into words (2000 steps reach ~0.98).
    eprintln!(
        "one_to_many: exact {} chars {}",
        report.exact_match, report.char_accuracy
    );
    assert!(
        report.exact_match > 0.5,
        "exact match {}",
        report.exact_match
    );
}

#[test]
fn seq2seq_sorts_unseen_strings_greedy_and_beam() {
    let device = device();
    let report = seq2seq::run(
        &seq2seq::Settings {
            steps: 600,
            seed: 5,
            beam_width: 3,
        },
        &device.0,
    );
    eprintln!(
        "seq2seq: greedy {} beam {} copy {}",
        report.greedy_exact, report.beam_exact, report.copy_baseline
    );
    // Answering with the input is right only for strings already sorted (~0.02); half right
    // exactly means the encoder's summary holds the letters' counts (1000 steps reach ~0.99).
    assert!(report.copy_baseline < 0.05, "{}", report.copy_baseline);
    assert!(report.greedy_exact > 0.5, "greedy {}", report.greedy_exact);
    assert!(report.beam_exact > 0.5, "beam {}", report.beam_exact);
}
