//! The recurrence as a composition of Burn's tensor primitives: what every backend without host
//! kernels runs (GPUs among them), and the oracle the host kernels are tested against.

use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, tanh};

use crate::{CellKind, LayerState};

/// One step from an already projected input.
///
/// # Shapes
/// - projected: `[batch_size, G * d_hidden]`, `x W_ih + b_ih`
/// - weight_hh: `[d_hidden, G * d_hidden]`; bias_hh: `[G * d_hidden]`
/// - state and result: `[batch_size, d_hidden]` per tensor
pub fn step(
    cell: CellKind,
    projected: Tensor<2>,
    weight_hh: Tensor<2>,
    bias_hh: Tensor<1>,
    state: LayerState,
) -> LayerState {
    let hidden_projected = state.hidden.clone().matmul(weight_hh) + bias_hh.unsqueeze();
    match cell {
        CellKind::Rnn => LayerState {
            hidden: tanh(projected + hidden_projected),
            cell: None,
        },
        CellKind::Lstm => {
            let [i, f, g, o] = chunks(projected + hidden_projected);
            let previous_cell = state.cell.expect("an LSTM state has a cell vector");
            let cell = sigmoid(f) * previous_cell + sigmoid(i) * tanh(g);
            LayerState {
                hidden: sigmoid(o) * tanh(cell.clone()),
                cell: Some(cell),
            }
        }
        CellKind::Gru => {
            let [x_r, x_z, x_n] = chunks(projected);
            let [h_r, h_z, h_n] = chunks(hidden_projected);
            let reset = sigmoid(x_r + h_r);
            let update = sigmoid(x_z + h_z);
            let candidate = tanh(x_n + reset * h_n);
            // h = (1 - z) * n + z * h_prev, written as n + z * (h_prev - n): one product fewer.
            let hidden = candidate.clone() + update * (state.hidden - candidate);
            LayerState { hidden, cell: None }
        }
    }
}

/// Every step of a chunk, one [`step`] after another; see [`super::recurrence`] for the shapes.
pub fn recurrence(
    cell: CellKind,
    projected: Tensor<3>,
    weight_hh: Tensor<2>,
    bias_hh: Tensor<1>,
    state: LayerState,
    mask: Option<Tensor<2>>,
) -> (Tensor<3>, LayerState) {
    let [seq_len, batch_size, d_gates] = projected.dims();
    let mut state = state;
    let mut outputs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        let step_projected = projected
            .clone()
            .slice([t..t + 1, 0..batch_size, 0..d_gates])
            .reshape([batch_size, d_gates]);
        let next = step(
            cell,
            step_projected,
            weight_hh.clone(),
            bias_hh.clone(),
            state.clone(),
        );
        state = match &mask {
            Some(mask) => {
                let step_mask = mask
                    .clone()
                    .slice([t..t + 1, 0..batch_size])
                    .reshape([batch_size, 1]);
                hold_on_padding(next, state, step_mask)
            }
            None => next,
        };
        outputs.push(state.hidden.clone());
    }
    (Tensor::stack(outputs, 0), state)
}

/// `next` where `mask` is 1, `previous` where it is 0, row by row.
fn hold_on_padding(next: LayerState, previous: LayerState, mask: Tensor<2>) -> LayerState {
    let blend =
        |next: Tensor<2>, previous: Tensor<2>| previous.clone() + (next - previous) * mask.clone();
    LayerState {
        hidden: blend(next.hidden, previous.hidden),
        cell: match (next.cell, previous.cell) {
            (Some(next), Some(previous)) => Some(blend(next, previous)),
            _ => None,
        },
    }
}

/// Splits fused gates `[batch, N * d_hidden]` into their `N` blocks.
fn chunks<const N: usize>(gates: Tensor<2>) -> [Tensor<2>; N] {
    gates
        .chunk(N, 1)
        .try_into()
        .unwrap_or_else(|_| unreachable!("the gate width is a multiple of {N}"))
}
