//! The time loop of one shard of the batch, forward and backward side by side: the streams of a
//! shard carry their own state through the chunk, so shards run on separate threads without
//! meeting until the chunk ends. [`super`] cuts the batch and the tape into shards.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::{
    RecurrenceGradients, RecurrenceInputs, RecurrenceShape, TapeParts, split_tape, split_tape_mut,
    write_rows,
};
use crate::activation::{add_into, tanh};
use crate::cells::{gru_step, gru_step_backward, lstm_step, lstm_step_backward};
use crate::matmul::{Operand, matmul};
use crate::tile::{self, Packed, Right};
use crate::{CellKind, dispatch_simd, pool};

/// `next = previous + m (next - previous)`, row by row: the padding mask's hold.
#[inline(always)]
fn hold_on_padding(next: &mut [f32], previous: &[f32], mask: &[f32], h: usize) {
    for ((next_row, previous_row), &m) in next
        .chunks_exact_mut(h)
        .zip(previous.chunks_exact(h))
        .zip(mask)
    {
        for (n, &p) in next_row.iter_mut().zip(previous_row) {
            *n = p + (*n - p) * m;
        }
    }
}

dispatch_simd!(
    pub(super) forward_shard,
    forward_shard_avx512,
    forward_shard_avx2,
    forward_shard_portable,
    (shape: RecurrenceShape, inputs: &RecurrenceInputs<'_>, rows: Range<usize>, tape: &mut [f32], outputs: &mut [&mut [MaybeUninit<f32>]]) -> ()
);

/// The forward pass of the streams `rows`, into their own tape and their rows of every step's
/// outputs (`outputs[t]`), each of which it writes.
#[inline(always)]
fn forward_shard_portable(
    shape: RecurrenceShape,
    inputs: &RecurrenceInputs<'_>,
    rows: Range<usize>,
    tape: &mut [f32],
    outputs: &mut [&mut [MaybeUninit<f32>]],
) {
    let (steps, batch, h, g) = (
        shape.seq_len,
        shape.batch_size,
        shape.d_hidden,
        shape.d_gates(),
    );
    let count = rows.len();
    let width = count * h;
    let TapeParts {
        hiddens,
        cells,
        gates,
        per_step,
    } = split_tape_mut(shape, count, tape);
    let state_rows = rows.start * h..rows.end * h;
    hiddens[..width].copy_from_slice(&inputs.hidden[state_rows.clone()]);
    if shape.cell == CellKind::Lstm {
        cells[..width].copy_from_slice(&inputs.cell[state_rows]);
    }
    // GRU: a step's hidden projection, kept apart from the input's for the reset gate to scale.
    let mut hidden_projection = match shape.cell {
        CellKind::Gru => pool::scratch(count * g),
        _ => Vec::new(),
    };
    // Read once per step: packed once per chunk (a library product would pack it every step).
    let weight_hh = Packed::new(inputs.weight_hh, (g, 1), h, g);
    for t in 0..steps {
        let step_gates = &mut gates[t * count * g..(t + 1) * count * g];
        let projected_rows = (t * batch + rows.start) * g..(t * batch + rows.end) * g;
        step_gates.copy_from_slice(&inputs.projected[projected_rows]);
        let (done, rest) = hiddens.split_at_mut((t + 1) * width);
        let previous = &done[t * width..];
        let next = &mut rest[..width];
        let recurrent = |out: &mut [f32]| {
            let weight_hh = Right::Packed(&weight_hh);
            tile::matmul((count, h, g), previous, (h, 1), weight_hh, true, out);
        };
        match shape.cell {
            CellKind::Rnn => {
                for row in step_gates.chunks_exact_mut(g) {
                    add_into(row, inputs.bias_hh);
                }
                recurrent(step_gates);
                for (out, pre) in next.iter_mut().zip(step_gates.iter_mut()) {
                    *pre = tanh(*pre);
                    *out = *pre;
                }
            }
            CellKind::Lstm => {
                for row in step_gates.chunks_exact_mut(g) {
                    add_into(row, inputs.bias_hh);
                }
                recurrent(step_gates);
                let (done, rest) = cells.split_at_mut((t + 1) * width);
                lstm_step(
                    step_gates,
                    &done[t * width..],
                    &mut rest[..width],
                    &mut per_step[t * width..(t + 1) * width],
                    next,
                    h,
                );
            }
            CellKind::Gru => {
                for row in hidden_projection.chunks_exact_mut(g) {
                    row.copy_from_slice(inputs.bias_hh);
                }
                recurrent(&mut hidden_projection);
                gru_step(
                    step_gates,
                    &hidden_projection,
                    previous,
                    &mut per_step[t * width..(t + 1) * width],
                    next,
                    h,
                );
            }
        }
        if let Some(mask) = inputs.mask {
            let step_mask = &mask[t * batch + rows.start..t * batch + rows.end];
            hold_on_padding(next, previous, step_mask, h);
            if shape.cell == CellKind::Lstm {
                let (done, rest) = cells.split_at_mut((t + 1) * width);
                hold_on_padding(&mut rest[..width], &done[t * width..], step_mask, h);
            }
        }
        write_rows(outputs[t], next);
    }
    pool::recycle(hidden_projection);
}

/// The arguments of [`backward`](super::backward) that every shard reads whole.
pub(super) struct BackwardArguments<'a> {
    pub weight_hh: &'a [f32],
    pub mask: Option<&'a [f32]>,
    pub d_outputs: &'a [f32],
    pub d_hidden: &'a [f32],
    pub d_cell: &'a [f32],
}

dispatch_simd!(
    pub(super) backward_shard,
    backward_shard_avx512,
    backward_shard_avx2,
    backward_shard_portable,
    (shape: RecurrenceShape, arguments: &BackwardArguments<'_>, tape: &[f32], rows: Range<usize>, projected: &mut [&mut [MaybeUninit<f32>]]) -> RecurrenceGradients
);

/// The backward pass of the streams `rows` from their tape: their gradients of the projected
/// inputs, into their rows of every step's (`projected[t]`, each of which it writes), of the
/// initial state, and their part of the weights' (the result's `projected` is empty).
#[inline(always)]
fn backward_shard_portable(
    shape: RecurrenceShape,
    arguments: &BackwardArguments<'_>,
    tape: &[f32],
    rows: Range<usize>,
    projected: &mut [&mut [MaybeUninit<f32>]],
) -> RecurrenceGradients {
    let (steps, batch, h, g) = (
        shape.seq_len,
        shape.batch_size,
        shape.d_hidden,
        shape.d_gates(),
    );
    let count = rows.len();
    let width = count * h;
    let lstm = shape.cell == CellKind::Lstm;
    let gru = shape.cell == CellKind::Gru;
    let TapeParts {
        hiddens,
        cells,
        gates,
        per_step,
    } = split_tape(shape, count, tape);
    let state_rows = rows.start * h..rows.end * h;
    let from_state = |d_state: &[f32]| match d_state.is_empty() {
        true => vec![0.0; width],
        false => d_state[state_rows.clone()].to_vec(),
    };
    // The gradients arriving at the current step's new hidden and cell vectors.
    let mut d_hidden = from_state(arguments.d_hidden);
    let mut d_cell = if lstm {
        from_state(arguments.d_cell)
    } else {
        Vec::new()
    };
    // On padding: the part of a state's gradient that passes straight to the previous state.
    let mut held_hidden = vec![0.0; width];
    let mut held_cell = vec![0.0; if lstm { width } else { 0 }];
    let mut d_projected = pool::scratch(steps * count * g);
    // GRU: the gradient of the hidden projection, which differs from the input projection's in
    // the candidate block (the reset gate scales it); the others share one.
    let mut d_hidden_projection = if gru {
        pool::scratch(steps * count * g)
    } else {
        Vec::new()
    };
    // W_hh^T, read once per step.
    let weight_hh_t = Packed::new(arguments.weight_hh, (1, g), g, h);
    for t in (0..steps).rev() {
        let output_rows = (t * batch + rows.start) * h..(t * batch + rows.end) * h;
        add_into(&mut d_hidden, &arguments.d_outputs[output_rows]);
        let step_mask = arguments
            .mask
            .map(|mask| &mask[t * batch + rows.start..t * batch + rows.end]);
        if let Some(step_mask) = step_mask {
            split_held(&mut d_hidden, &mut held_hidden, step_mask, h);
            if lstm {
                split_held(&mut d_cell, &mut held_cell, step_mask, h);
            }
        }
        let span = t * width..(t + 1) * width;
        let gate_span = t * count * g..(t + 1) * count * g;
        let d_gates = &mut d_projected[gate_span.clone()];
        let step_gates = &gates[gate_span.clone()];
        match shape.cell {
            CellKind::Rnn => {
                for ((d, &out), &dh) in d_gates.iter_mut().zip(step_gates).zip(&d_hidden) {
                    *d = dh * (1.0 - out * out);
                }
            }
            CellKind::Lstm => lstm_step_backward(
                step_gates,
                &cells[span.clone()],
                &per_step[span.clone()],
                &d_hidden,
                &mut d_cell,
                d_gates,
                h,
            ),
            CellKind::Gru => gru_step_backward(
                step_gates,
                &per_step[span.clone()],
                &hiddens[span.clone()],
                &mut d_hidden,
                d_gates,
                &mut d_hidden_projection[gate_span.clone()],
                h,
            ),
        }
        // dL/dh_{t-1} = (gradient of the hidden projection) W_hh^T, plus the GRU's direct part.
        let d_recurrent = if gru {
            &d_hidden_projection[gate_span]
        } else {
            &d_projected[gate_span]
        };
        tile::matmul(
            (count, g, h),
            d_recurrent,
            (g, 1),
            Right::Packed(&weight_hh_t),
            gru,
            &mut d_hidden,
        );
        if step_mask.is_some() {
            add_into(&mut d_hidden, &held_hidden);
            if lstm {
                add_into(&mut d_cell, &held_cell);
            }
        }
        write_rows(
            projected[t],
            &d_projected[t * count * g..(t + 1) * count * g],
        );
    }
    let d_recurrent_all = if gru {
        &d_hidden_projection
    } else {
        &d_projected
    };
    // W_hh' = H_prev^T dG over every step at once.
    let mut weight_hh = vec![0.0; h * g];
    matmul(
        (h, steps * count, g),
        Operand::transposed(&hiddens[..steps * width], h),
        Operand::rows(d_recurrent_all, g),
        false,
        &mut weight_hh,
    );
    let mut bias_hh = vec![0.0; g];
    for row in d_recurrent_all.chunks_exact(g) {
        add_into(&mut bias_hh, row);
    }
    pool::recycle(d_hidden_projection);
    pool::recycle(d_projected);
    RecurrenceGradients {
        projected: Vec::new(),
        weight_hh,
        bias_hh,
        hidden: d_hidden,
        cell: d_cell,
    }
}

/// Splits a state's gradient on a masked step: `held = (1 - m) d` goes straight to the previous
/// state, `d = m d` to the step's new state.
#[inline(always)]
fn split_held(d: &mut [f32], held: &mut [f32], mask: &[f32], h: usize) {
    for ((d_row, held_row), &m) in d
        .chunks_exact_mut(h)
        .zip(held.chunks_exact_mut(h))
        .zip(mask)
    {
        for (d, held) in d_row.iter_mut().zip(held_row.iter_mut()) {
            *held = (1.0 - m) * *d;
            *d *= m;
        }
    }
}
