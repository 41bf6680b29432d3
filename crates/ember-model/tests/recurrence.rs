//! Whole-sequence forward against step-by-step, the truncated-BPTT cut, stream resets and
//! sampling, on both CPU backends.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use common::*;
use ember_model::{CellKind, CharLmConfig, SampleConfig, SampleError, StackedRecurrentConfig};

/// f32 through a 3-layer stack: per-step and whole-sequence runs do the same arithmetic in the
/// same order, so they agree to rounding.
const TOLERANCE: f64 = 1e-6;

#[test]
fn step_by_step_equals_whole_sequence() {
    for (backend, device) in devices() {
        for cell in CellKind::ALL {
            let rnn = StackedRecurrentConfig::new(cell, 5, 7)
                .with_num_layers(3)
                .init(&device);
            let input = Tensor::<3>::random([2, 6, 5], Distribution::Normal(0.0, 1.0), &device);
            let initial = rnn
                .zero_state(2, &device)
                .map(|t| t.random_like(Distribution::Uniform(-0.5, 0.5)));

            let (outputs, final_state) = rnn.forward(input.clone(), Some(initial.clone()));
            let mut state = initial;
            for t in 0..6 {
                let x_t = input.clone().slice([0..2, t..t + 1]).reshape([2, 5]);
                let (output, next) = rnn.step(x_t, state);
                state = next;
                let expected = outputs.clone().slice([0..2, t..t + 1]).reshape([2, 7]);
                assert_close(
                    &format!("{cell} on {backend}, step {t}"),
                    &values(output),
                    &values(expected),
                    TOLERANCE,
                );
            }
            assert_close(
                &format!("{cell} on {backend}, final hidden"),
                &values(state.hidden()),
                &values(final_state.hidden()),
                TOLERANCE,
            );
        }
    }
}

#[test]
fn char_lm_step_equals_forward() {
    for (backend, device) in devices() {
        for d_embed in [0, 4] {
            let model = CharLmConfig::new(9, CellKind::Lstm, 6)
                .with_num_layers(2)
                .with_d_embed(d_embed)
                .init(&device);
            let ids: Vec<i64> = vec![1, 4, 8, 0, 3, 3, 2, 7];
            let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 4]), &device);
            let (logits, _) = model.forward(input, None);
            let mut state = model.zero_state(2, &device);
            for t in 0..4 {
                let step_ids = vec![ids[t], ids[4 + t]];
                let step_ids = Tensor::<1, Int>::from_data(TensorData::new(step_ids, [2]), &device);
                let (step_logits, next) = model.step(step_ids, state);
                state = next;
                let expected = logits.clone().slice([0..2, t..t + 1]).reshape([2, 9]);
                assert_close(
                    &format!("d_embed {d_embed} on {backend}, step {t}"),
                    &values(step_logits),
                    &values(expected),
                    TOLERANCE,
                );
            }
        }
    }
}

/// After `detach`, the second chunk's loss sends no gradient into the first chunk's input; without
/// it, it does (the control that shows the test can fail).
#[test]
fn detach_cuts_the_gradient_between_chunks() {
    for (backend, device) in devices() {
        let device = device.autodiff();
        for cell in CellKind::ALL {
            let rnn = StackedRecurrentConfig::new(cell, 3, 4)
                .with_num_layers(2)
                .init(&device);
            for cut in [true, false] {
                let first =
                    Tensor::<3>::random([2, 3, 3], Distribution::Default, &device).require_grad();
                let second = Tensor::<3>::random([2, 3, 3], Distribution::Default, &device);
                let (_, state) = rnn.forward(first.clone(), None);
                let state = if cut { state.detach() } else { state };
                let (outputs, _) = rnn.forward(second, Some(state));
                let grads = outputs.sum().backward();
                let reached = first
                    .grad(&grads)
                    .map(|g| values(g).iter().map(|v| v.abs()).sum::<f64>())
                    .unwrap_or(0.0);
                if cut {
                    assert_eq!(
                        reached, 0.0,
                        "{cell} on {backend}: gradient crossed the cut"
                    );
                } else {
                    assert!(
                        reached > 0.0,
                        "{cell} on {backend}: no gradient without the cut"
                    );
                }
            }
        }
    }
}

#[test]
fn reset_streams_zeroes_only_the_chosen_rows() {
    let device = Device::flex();
    let rnn = StackedRecurrentConfig::new(CellKind::Lstm, 2, 3)
        .with_num_layers(2)
        .init(&device);
    let state = rnn.zero_state(3, &device).map(|t| t.ones_like());
    let state = state.reset_streams(&[false, true, false]);
    for layer in &state.layers {
        for tensor in [layer.hidden.clone(), layer.cell.clone().unwrap()] {
            assert_eq!(
                values(tensor),
                vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
            );
        }
    }
}

#[test]
fn sampling_is_reproducible_and_respects_its_options() {
    let device = Device::flex();
    let model = CharLmConfig::new(12, CellKind::Gru, 16)
        .with_d_embed(8)
        .init(&device)
        .valid();
    let draw = |config: SampleConfig| -> Vec<usize> {
        model
            .sampler(&[3, 1, 4], config, &device)
            .unwrap()
            .take(200)
            .collect()
    };
    let seeded = SampleConfig::new().with_seed(7);
    assert_eq!(draw(seeded.clone()), draw(seeded.clone()));
    assert_ne!(draw(seeded.clone()), draw(SampleConfig::new().with_seed(8)));

    // Greedy decoding ignores the seed.
    let greedy = |seed| draw(SampleConfig::new().with_argmax(true).with_seed(seed));
    assert_eq!(greedy(1), greedy(2));

    // Top-1 is greedy.
    assert_eq!(draw(SampleConfig::new().with_top_k(Some(1))), greedy(0));

    // Top-k keeps k candidates.
    let sampler = model
        .sampler(&[0], SampleConfig::new().with_top_k(Some(3)), &device)
        .unwrap();
    let nonzero = sampler.probabilities().iter().filter(|&&p| p > 0.0).count();
    assert_eq!(nonzero, 3);

    let err = |config: SampleConfig, prime: &[usize]| model.sampler(prime, config, &device).err();
    assert_eq!(err(SampleConfig::new(), &[]), Some(SampleError::EmptyPrime));
    assert!(matches!(
        err(SampleConfig::new(), &[1, 12]),
        Some(SampleError::IdOutOfVocab {
            id: 12,
            position: 1,
            ..
        })
    ));
    assert_eq!(
        err(SampleConfig::new().with_temperature(0.0), &[1]),
        Some(SampleError::BadTemperature(0.0))
    );
    assert!(matches!(
        err(SampleConfig::new().with_top_k(Some(13)), &[1]),
        Some(SampleError::BadTopK { top_k: 13, .. })
    ));
    assert!(matches!(
        err(SampleConfig::new().with_top_k(Some(0)), &[1]),
        Some(SampleError::BadTopK { top_k: 0, .. })
    ));
}
