//! Running a character model over a text one step at a time, keeping every layer's states and
//! the next-character predictions.

use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_model::CharLm;
use ember_model::ops::host_values;

/// How many characters of predictions the page keeps per position.
pub const TOP_K: usize = 5;

/// Steps run through Burn before their states are read back to the host at once: one read per
/// block instead of one per character.
const BLOCK: usize = 256;

/// One state of one layer (hidden or cell) at every position of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTrace {
    /// The layer, 0 at the bottom.
    pub layer: usize,
    /// `hidden` or `cell`.
    pub state: &'static str,
    /// The activations, unit-major: unit `u` at position `t` is `values[u * len + t]`.
    pub values: Vec<f32>,
}

/// What the model read and predicted at every position.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTrace {
    /// Every layer's hidden state, then (LSTM) its cell state, bottom layer first.
    pub states: Vec<StateTrace>,
    /// The `TOP_K` most likely next characters after each position: `(id, probability)`.
    pub top: Vec<[(usize, f32); TOP_K]>,
    /// The loss, in nats, of each character given the ones before it; `None` for the first.
    pub losses: Vec<Option<f32>>,
}

/// Runs `model` over `ids` from a zero state, as `ember eval` reads a text, with
/// [`CharLm::step`], keeping each layer's state after every character.
///
/// # Panics
/// If an id is outside the model's vocabulary (the caller encodes with the run's vocabulary).
pub fn trace(model: &CharLm, ids: &[usize], device: &Device) -> ModelTrace {
    let len = ids.len();
    let num_layers = model.rnn.num_layers();
    let d_hidden = model.rnn.d_hidden();
    let has_cell = model.rnn.cell().has_cell_state();
    let vocab_size = model.vocab_size();
    // Time-major while stepping: position t of layer k is row t of `hidden[k]`.
    let mut hidden = vec![Vec::with_capacity(len * d_hidden); num_layers];
    let mut cell = vec![Vec::with_capacity(if has_cell { len * d_hidden } else { 0 }); num_layers];
    let mut logits = Vec::with_capacity(len * vocab_size);
    let mut state = model.zero_state(1, device);
    for block in ids.chunks(BLOCK) {
        let mut block_hidden = vec![Vec::with_capacity(block.len()); num_layers];
        let mut block_cell = vec![Vec::with_capacity(block.len()); num_layers];
        let mut block_logits = Vec::with_capacity(block.len());
        for &id in block {
            let input = Tensor::<1, Int>::from_data(TensorData::new(vec![id as i64], [1]), device);
            let (step_logits, next) = model.step(input, state);
            for (k, layer) in next.layers.iter().enumerate() {
                block_hidden[k].push(layer.hidden.clone());
                if let Some(c) = &layer.cell {
                    block_cell[k].push(c.clone());
                }
            }
            block_logits.push(step_logits);
            state = next;
        }
        for k in 0..num_layers {
            hidden[k].extend(host_values(Tensor::cat(
                std::mem::take(&mut block_hidden[k]),
                0,
            )));
            if has_cell {
                cell[k].extend(host_values(Tensor::cat(
                    std::mem::take(&mut block_cell[k]),
                    0,
                )));
            }
        }
        logits.extend(host_values(Tensor::cat(block_logits, 0)));
    }
    let mut states = Vec::new();
    for k in 0..num_layers {
        states.push(StateTrace {
            layer: k,
            state: "hidden",
            values: unit_major(&hidden[k], len, d_hidden),
        });
        if has_cell {
            states.push(StateTrace {
                layer: k,
                state: "cell",
                values: unit_major(&cell[k], len, d_hidden),
            });
        }
    }
    let (top, losses) = predictions(&logits, ids, vocab_size);
    ModelTrace {
        states,
        top,
        losses,
    }
}

/// `[len, d]` row-major values as `[d, len]`.
fn unit_major(values: &[f32], len: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for t in 0..len {
        for u in 0..d {
            out[u * len + t] = values[t * d + u];
        }
    }
    out
}

/// The top-k next characters after every position and the loss of every character after the
/// first, from the logits after each position (`[len, vocab_size]`, row-major).
pub fn predictions(
    logits: &[f32],
    ids: &[usize],
    vocab_size: usize,
) -> (Vec<[(usize, f32); TOP_K]>, Vec<Option<f32>>) {
    let mut top = Vec::with_capacity(ids.len());
    let mut losses = vec![None; ids.len()];
    for (t, row) in logits.chunks(vocab_size).enumerate() {
        let log_probs = log_softmax(row);
        let mut order: Vec<usize> = (0..vocab_size).collect();
        order.sort_by(|&a, &b| log_probs[b].total_cmp(&log_probs[a]).then(a.cmp(&b)));
        let mut best = [(0, 0.0); TOP_K];
        for (slot, &id) in best.iter_mut().zip(&order) {
            *slot = (id, log_probs[id].exp() as f32);
        }
        top.push(best);
        if let Some(&next) = ids.get(t + 1) {
            losses[t + 1] = Some(-log_probs[next] as f32);
        }
    }
    (top, losses)
}

/// `log(softmax(row))`, in `f64` so that small probabilities keep their digits.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_total = total.ln() + max;
    row.iter().map(|&v| v as f64 - log_total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_model::{CellKind, CharLmConfig};

    /// Logits [0, ln 3] give probabilities 1/4 and 3/4: the top entry is id 1 with 0.75, and the
    /// loss of the next character (id 0) is ln 4.
    #[test]
    fn predictions_match_a_hand_computed_softmax() {
        let logits = [0.0, 3f32.ln(), 0.0, 3f32.ln()];
        let (top, losses) = predictions(&logits, &[1, 0], 2);
        assert_eq!(top[0][0].0, 1);
        assert!((top[0][0].1 - 0.75).abs() < 1e-6 && (top[0][1].1 - 0.25).abs() < 1e-6);
        assert_eq!(losses[0], None);
        assert!((losses[1].unwrap() - 4f32.ln()).abs() < 1e-6);
    }

    /// The traced states are those of the model's whole-sequence forward pass: the top layer's
    /// hidden state against `StackedRecurrent::forward`'s outputs, for every cell kind.
    #[test]
    fn the_trace_follows_the_sequence_forward_pass() {
        let device = Device::flex();
        for cell in CellKind::ALL {
            let model = CharLmConfig::new(6, cell, 4)
                .with_num_layers(2)
                .with_d_embed(3)
                .init(&device);
            let ids = [1, 4, 0, 5, 2, 2, 3];
            let traced = trace(&model, &ids, &device);
            let expected_states = if cell.has_cell_state() { 4 } else { 2 };
            assert_eq!(traced.states.len(), expected_states);
            let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            let input = Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &device);
            let embedded = model.embedding.as_ref().unwrap().forward(input);
            let (outputs, _) = model.rnn.forward(embedded, None);
            let expected = host_values(outputs.reshape([ids.len(), 4]));
            let top = traced.states.iter().rfind(|s| s.state == "hidden").unwrap();
            assert_eq!(top.layer, 1);
            for t in 0..ids.len() {
                for u in 0..4 {
                    let (a, e) = (top.values[u * ids.len() + t], expected[t * 4 + u]);
                    assert!((a - e).abs() < 1e-5, "{cell} t {t} unit {u}: {a} vs {e}");
                }
            }
            assert_eq!(traced.top.len(), ids.len());
        }
    }
}
