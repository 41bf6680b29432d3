//! The process shapes beyond the language model: many-to-one, many-to-many, one-to-many,
//! sequence to sequence and one-to-one, on both CPU backends. The central property: a
//! sequence's result does not depend on the padding its batch gave it.

mod common;

use burn::module::Param;
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::*;
use ember_model::{
    CellKind, ConditionedGeneratorConfig, DecodeConfig, Pooling, Seq2Seq, Seq2SeqConfig,
    SequenceClassifier, SequenceClassifierConfig, SequenceDecoderConfig, SequenceEncoderConfig,
    SequenceTaggerConfig, StepLoss, length_mask, masked_cross_entropy,
};

/// A sequence alone and the same sequence padded in a batch run the same arithmetic on its
/// real steps; the held state is blended with a 0/1 mask, which is exact, so only the
/// batched matmuls' summation order can differ.
const PADDING_TOLERANCE: f64 = 1e-5;

const VOCAB: usize = 11;

fn ids(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let width = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), width]), device)
}

/// Three sequences of lengths 7, 3, 5, right-padded to 9 with ids that are not the pad id, so a
/// leak of padding into a result would show.
fn padded_batch() -> (Vec<Vec<i64>>, Vec<usize>) {
    let rows = vec![
        vec![3, 4, 5, 6, 7, 8, 9, 10, 2],
        vec![5, 3, 8, 9, 9, 9, 9, 9, 9],
        vec![10, 4, 4, 7, 3, 1, 6, 2, 8],
    ];
    (rows, vec![7, 3, 5])
}

fn alone(rows: &[Vec<i64>], lengths: &[usize], row: usize) -> Vec<i64> {
    rows[row][..lengths[row]].to_vec()
}

fn encoders(cell: CellKind) -> Vec<(&'static str, SequenceEncoderConfig)> {
    let base = SequenceEncoderConfig::new(VOCAB, cell, 6)
        .with_d_embed(4)
        .with_num_layers(2);
    vec![
        ("unidirectional", base.clone()),
        ("bidirectional", base.with_bidirectional(true)),
    ]
}

#[test]
fn classifier_output_does_not_depend_on_padding() {
    let (rows, lengths) = padded_batch();
    for (backend, device) in devices() {
        for cell in CellKind::ALL {
            for (direction, encoder) in encoders(cell) {
                for pooling in [Pooling::Last, Pooling::Mean, Pooling::Max] {
                    let model = SequenceClassifierConfig::new(encoder.clone(), 3)
                        .with_pooling(pooling)
                        .init(&device);
                    let batched = model.forward(ids(&rows, &device), &lengths);
                    for row in 0..rows.len() {
                        let single = alone(&rows, &lengths, row);
                        let expected = model.forward(ids(&[single], &device), &[lengths[row]]);
                        let got = batched.clone().slice([row..row + 1, 0..3]);
                        assert_close(
                            &format!("{cell} {direction} {pooling:?} on {backend}, row {row}"),
                            &values(got),
                            &values(expected),
                            PADDING_TOLERANCE,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn tagger_output_does_not_depend_on_padding() {
    let (rows, lengths) = padded_batch();
    for (backend, device) in devices() {
        for cell in CellKind::ALL {
            for (direction, encoder) in encoders(cell) {
                let model = SequenceTaggerConfig::new(encoder, 4).init(&device);
                let (batched, _) = model.forward(ids(&rows, &device), &lengths);
                for row in 0..rows.len() {
                    let len = lengths[row];
                    let single = alone(&rows, &lengths, row);
                    let (expected, _) = model.forward(ids(&[single], &device), &[len]);
                    let got = batched.clone().slice([row..row + 1, 0..len, 0..4]);
                    assert_close(
                        &format!("{cell} {direction} tagger on {backend}, row {row}"),
                        &values(got),
                        &values(expected),
                        PADDING_TOLERANCE,
                    );
                }
            }
        }
    }
}

#[test]
fn step_losses_count_only_real_steps() {
    let device = Device::flex();
    let logits = Tensor::<3>::random(
        [2, 4, 5],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let targets = ids(&[vec![1, 2, 3, 4], vec![0, 1, 2, 3]], &device);
    let mask = length_mask(&[4, 2], 4, &device);
    let mean = masked_cross_entropy(
        logits.clone(),
        targets.clone(),
        mask.clone(),
        StepLoss::Mean,
    )
    .into_scalar::<f64>();
    let sum = masked_cross_entropy(logits.clone(), targets.clone(), mask, StepLoss::Sum)
        .into_scalar::<f64>();
    // 6 real steps in 2 sequences: the per-sequence sum is 3 times the per-step mean.
    assert!((sum - 3.0 * mean).abs() < 1e-5, "sum {sum}, mean {mean}");

    // By hand: -log softmax at each real step.
    let host = values(logits);
    let target_rows = [[1usize, 2, 3, 4], [0, 1, 2, 3]];
    let mut total = 0.0;
    for (b, len) in [(0usize, 4usize), (1, 2)] {
        for t in 0..len {
            let row = &host[(b * 4 + t) * 5..(b * 4 + t + 1) * 5];
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            total += lse - row[target_rows[b][t]];
        }
    }
    assert!(
        (mean - total / 6.0).abs() < 1e-5,
        "mean {mean}, by hand {}",
        total / 6.0
    );
}

fn seq2seq(encoder_cell: CellKind, decoder_cell: CellKind, device: &Device) -> Seq2Seq {
    // Different cells, sizes and depths on the two sides: the bridge joins them.
    let encoder = SequenceEncoderConfig::new(VOCAB, encoder_cell, 6)
        .with_d_embed(4)
        .with_bidirectional(true);
    let decoder = SequenceDecoderConfig::new(VOCAB, decoder_cell, 9)
        .with_d_embed(5)
        .with_num_layers(2);
    Seq2SeqConfig::new(encoder, decoder).init(device)
}

#[test]
fn beam_width_one_is_greedy_and_decoding_ignores_padding() {
    let (rows, lengths) = padded_batch();
    for (backend, device) in devices() {
        for (encoder_cell, decoder_cell) in [
            (CellKind::Lstm, CellKind::Gru),
            (CellKind::Gru, CellKind::Rnn),
            (CellKind::Rnn, CellKind::Lstm),
        ] {
            let what = format!("{encoder_cell} -> {decoder_cell} on {backend}");
            let model = seq2seq(encoder_cell, decoder_cell, &device);
            // An untrained decoder rarely picks the end mark, so sequences run to the limit.
            let config = DecodeConfig::new(0, 2, 12);
            let greedy = model.decode(ids(&rows, &device), &lengths, &config);
            let beams = model.beam_search(
                ids(&rows, &device),
                &lengths,
                &config.clone().with_beam_width(1),
            );
            for (row, (greedy, beam)) in greedy.iter().zip(&beams).enumerate() {
                assert_eq!(beam.len(), 1);
                assert_eq!(greedy.ids, beam[0].ids, "{what}, row {row}");
                assert_eq!(greedy.finished, beam[0].finished, "{what}, row {row}");
                assert!(
                    (greedy.log_prob - beam[0].log_prob).abs() < 1e-9,
                    "{what}, row {row}: {} vs {}",
                    greedy.log_prob,
                    beam[0].log_prob
                );

                let single = alone(&rows, &lengths, row);
                let decoded_alone = model.decode(ids(&[single], &device), &[lengths[row]], &config);
                assert_eq!(decoded_alone[0].ids, greedy.ids, "{what}, row {row} alone");
            }

            let wide = model.beam_search(ids(&rows, &device), &lengths, &config.with_beam_width(4));
            for (row, hypotheses) in wide.iter().enumerate() {
                assert_eq!(hypotheses.len(), 4, "{what}, row {row}");
                assert!(
                    hypotheses
                        .windows(2)
                        .all(|w| w[0].log_prob >= w[1].log_prob),
                    "{what}, row {row}: best first"
                );
                let distinct: std::collections::HashSet<_> =
                    hypotheses.iter().map(|h| h.ids.clone()).collect();
                assert_eq!(distinct.len(), 4, "{what}, row {row}: distinct hypotheses");
            }
        }
    }
}

#[test]
fn beam_log_probabilities_are_the_decoders_own() {
    // Re-score the best beam by teacher forcing: the sum of its steps' log-probabilities.
    let device = Device::flex();
    let model = seq2seq(CellKind::Gru, CellKind::Lstm, &device);
    let source = ids(&[vec![3, 4, 5, 6]], &device);
    let config = DecodeConfig::new(0, 2, 6).with_beam_width(3);
    let best = &model.beam_search(source.clone(), &[4], &config)[0][0];
    let mut inputs = vec![0i64];
    inputs.extend(best.ids.iter().map(|&id| id as i64));
    let mut targets: Vec<i64> = best.ids.iter().map(|&id| id as i64).collect();
    if best.finished {
        targets.push(2);
    } else {
        inputs.pop();
    }
    let len = targets.len();
    let logits = model.forward(source, &[4], ids(&[inputs], &device));
    let log_probs = values(burn::tensor::activation::log_softmax(logits, 2));
    let rescored: f64 = targets
        .iter()
        .enumerate()
        .map(|(t, &id)| log_probs[t * VOCAB + id as usize])
        .sum();
    assert_eq!(len, best.ids.len() + usize::from(best.finished));
    assert!(
        (rescored - best.log_prob).abs() < 1e-4,
        "beam {} vs teacher-forced {rescored}",
        best.log_prob
    );
}

#[test]
fn generator_state_comes_from_the_condition() {
    let device = Device::flex();
    for cell in CellKind::ALL {
        let decoder = SequenceDecoderConfig::new(VOCAB, cell, 5).with_num_layers(3);
        let generator = ConditionedGeneratorConfig::new(4, decoder).init(&device);
        let condition = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], [2, 4]),
            &device,
        );
        let state = generator.bridge.forward(condition.clone());
        assert_eq!(state.num_layers(), 3);
        assert_eq!(state.hidden().dims(), [3, 2, 5]);
        assert_eq!(state.cell().is_some(), cell.has_cell_state());
        // Different conditions start different states, so write different logits.
        let inputs = ids(&[vec![0, 3], vec![0, 3]], &device);
        let logits = values(generator.forward(condition, inputs));
        let (first, second) = logits.split_at(logits.len() / 2);
        assert!(
            first.iter().zip(second).any(|(a, b)| (a - b).abs() > 1e-4),
            "{cell}"
        );
    }
}

#[test]
#[should_panic(expected = "the generator's bridge must read the encoder's summary")]
fn seq2seq_halves_must_fit() {
    let device = Device::flex();
    let encoder = SequenceEncoderConfig::new(VOCAB, CellKind::Gru, 6).init(&device);
    let decoder = SequenceDecoderConfig::new(VOCAB, CellKind::Lstm, 8);
    let generator = ConditionedGeneratorConfig::new(7, decoder).init(&device);
    Seq2Seq::new(encoder, generator);
}

/// `head(tanh(embed(x) W_ih + b_ih + b_hh))`: the vanilla cell's one step from a zero state.
fn feed_forward(model: &SequenceClassifier, tokens: &[i64], device: &Device) -> Tensor<2> {
    let layer = &model.encoder.forward_rnn.layers[0];
    let embedded = model
        .encoder
        .embedding
        .forward(ids(&[tokens.to_vec()], device))
        .reshape([tokens.len(), 4]);
    let biases = layer.bias_ih.val() + layer.bias_hh.val();
    model.head.forward(tanh(
        embedded.matmul(layer.weight_ih.val()) + biases.unsqueeze(),
    ))
}

/// One-to-one: one step from a zero state is a feed-forward layer, and the recurrent weights
/// play no part in it.
#[test]
fn one_step_from_zero_is_feed_forward() {
    for (backend, device) in devices() {
        let encoder = SequenceEncoderConfig::new(VOCAB, CellKind::Rnn, 6).with_d_embed(4);
        let mut model = SequenceClassifierConfig::new(encoder, 3).init(&device);
        let one_step_each = ids(&[vec![5], vec![9]], &device);
        let logits = model.forward(one_step_each.clone(), &[1, 1]);
        let expected = feed_forward(&model, &[5, 9], &device);
        assert_close(
            &format!("one-to-one on {backend}"),
            &values(logits),
            &values(expected.clone()),
            1e-6,
        );

        let zeroed = model.encoder.forward_rnn.layers[0]
            .weight_hh
            .val()
            .zeros_like();
        model.encoder.forward_rnn.layers[0].weight_hh = Param::from_tensor(zeroed);
        let without_recurrence = model.forward(one_step_each, &[1, 1]);
        assert_close(
            &format!("one-to-one without W_hh on {backend}"),
            &values(without_recurrence),
            &values(expected),
            1e-6,
        );
    }
}
