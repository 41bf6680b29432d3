//! One recurrent layer over a chunk of steps: the forward pass and backpropagation through time.
//!
//! Layouts are time-major and row-major: a chunk's projected inputs are
//! `[seq_len, batch_size, G * d_hidden]`, its outputs `[seq_len, batch_size, d_hidden]`, with
//! the `G` gate blocks of [`CellKind`] in PyTorch's order. `W_hh` is `[d_hidden, G * d_hidden]`,
//! as `ember-model` stores it (the transpose of PyTorch's `weight_hh_l{k}`).
//!
//! A padding mask (`[seq_len, batch_size]`, 1 on a row's real steps, 0 on padding) blends every
//! new state with the previous one, `s_t = s_{t-1} + m_t (s~_t - s_{t-1})`: a row's state holds
//! still on padding, and its output there is the state it holds.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use crate::activation::add_into;
use crate::{CellKind, parallel, pool};

mod shard;

use shard::{BackwardArguments, backward_shard, forward_shard};

/// The sizes of one layer's chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecurrenceShape {
    /// The recurrence.
    pub cell: CellKind,
    /// Time steps in the chunk.
    pub seq_len: usize,
    /// Independent streams.
    pub batch_size: usize,
    /// The width of the hidden state.
    pub d_hidden: usize,
}

impl RecurrenceShape {
    /// The width of the fused gates, `G * d_hidden`.
    pub fn d_gates(self) -> usize {
        self.cell.num_gates() * self.d_hidden
    }

    /// The length of the tape [`forward`] keeps for [`backward`]: the shard count, then each
    /// shard's parts.
    pub fn tape_len(self) -> usize {
        1 + self.tape_parts(self.batch_size).iter().sum::<usize>()
    }

    /// The lengths of a tape's parts for `rows` streams: `h_{t-1}` of every step and the final
    /// hidden vectors; `c_{t-1}` likewise (LSTM); the activated gates (the RNN's new hidden
    /// vectors before masking); `tanh(c~_t)` (LSTM) or `W_hn h_{t-1} + b_hn` (GRU).
    fn tape_parts(self, rows: usize) -> [usize; 4] {
        let (steps, h) = (self.seq_len, self.d_hidden);
        let states = (steps + 1) * rows * h;
        [
            states,
            if self.cell == CellKind::Lstm {
                states
            } else {
                0
            },
            steps * rows * self.d_gates(),
            if self.cell == CellKind::Rnn {
                0
            } else {
                steps * rows * h
            },
        ]
    }
}

/// The inputs of [`forward`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RecurrenceInputs<'a> {
    /// `x_t W_ih + b_ih` of every step, `[seq_len, batch_size, G * d_hidden]`.
    pub projected: &'a [f32],
    /// `[d_hidden, G * d_hidden]`.
    pub weight_hh: &'a [f32],
    /// `[G * d_hidden]`.
    pub bias_hh: &'a [f32],
    /// The initial hidden vectors, `[batch_size, d_hidden]`.
    pub hidden: &'a [f32],
    /// The initial cell vectors of an LSTM, `[batch_size, d_hidden]`; empty for other cells.
    pub cell: &'a [f32],
    /// The padding mask, `[seq_len, batch_size]`, or `None` where every step is real.
    pub mask: Option<&'a [f32]>,
}

/// What [`forward`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct RecurrenceOutputs {
    /// The hidden vectors of every step, `[seq_len, batch_size, d_hidden]`.
    pub outputs: Vec<f32>,
    /// The final hidden vectors, `[batch_size, d_hidden]`.
    pub hidden: Vec<f32>,
    /// The final cell vectors of an LSTM, `[batch_size, d_hidden]`; empty for other cells.
    pub cell: Vec<f32>,
    /// What [`backward`] needs, [`RecurrenceShape::tape_len`] values; empty unless asked for.
    pub tape: Vec<f32>,
}

/// What [`backward`] returns: the gradients of every input of [`forward`] but the mask.
#[derive(Debug, Clone, PartialEq)]
pub struct RecurrenceGradients {
    /// `[seq_len, batch_size, G * d_hidden]`.
    pub projected: Vec<f32>,
    /// `[d_hidden, G * d_hidden]`.
    pub weight_hh: Vec<f32>,
    /// `[G * d_hidden]`.
    pub bias_hh: Vec<f32>,
    /// Of the initial hidden vectors, `[batch_size, d_hidden]`.
    pub hidden: Vec<f32>,
    /// Of the initial cell vectors (LSTM), `[batch_size, d_hidden]`; empty for other cells.
    pub cell: Vec<f32>,
}

thread_local! {
    static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has entered [`forward`] or [`backward`]: how a caller tells
/// whether a model's operation ran on the host kernels (a GPU device never should).
pub fn calls_on_this_thread() -> usize {
    CALLS.with(std::cell::Cell::get)
}

fn count_call() {
    CALLS.with(|calls| calls.set(calls.get() + 1));
}

/// Runs the layer over the chunk. With `keep_tape`, the result holds what [`backward`] needs.
///
/// # Panics
/// If a slice's length does not match `shape`.
pub fn forward(
    shape: RecurrenceShape,
    inputs: &RecurrenceInputs<'_>,
    keep_tape: bool,
) -> RecurrenceOutputs {
    check_inputs(shape, inputs);
    count_call();
    forward_sharded(shape, inputs, keep_tape, parallel::shard_count(shape))
}

/// [`forward`] split into `count` shards of the batch.
fn forward_sharded(
    shape: RecurrenceShape,
    inputs: &RecurrenceInputs<'_>,
    keep_tape: bool,
    count: usize,
) -> RecurrenceOutputs {
    let (steps, batch, h) = (shape.seq_len, shape.batch_size, shape.d_hidden);
    // No shard would leave the buffers below unwritten.
    assert!(count >= 1, "a chunk runs in at least one shard");
    let shards = parallel::shard_rows(batch, count);
    // Both buffers are written by the shards, in parallel, and by nothing before them: each
    // shard zeroes its own segment of the tape and writes every step's outputs of its rows.
    let tape_len = shape.tape_len();
    // A tape that the caller keeps leaves with it; one only worked in comes back to the pool.
    let mut tape = match keep_tape {
        true => Vec::with_capacity(tape_len),
        false => pool::with_capacity(tape_len),
    };
    // Room for the final state after the outputs: a caller that stacks them copies nothing.
    let outputs_len = steps * batch * h;
    let mut outputs = Vec::with_capacity(outputs_len + shape.cell.num_states() * batch * h);
    {
        let (count_slot, segments) = tape.spare_capacity_mut()[..tape_len].split_at_mut(1);
        // The backward pass cuts the tape as the forward pass did, whatever its own thread count.
        count_slot[0].write(count as f32);
        let mut segments = split_by_shard(shape, &shards, segments);
        let mut shard_outputs = rows_by_shard(
            &mut outputs.spare_capacity_mut()[..outputs_len],
            batch * h,
            h,
            &shards,
        );
        segments
            .par_iter_mut()
            .zip(shard_outputs.par_iter_mut())
            .zip(shards.par_iter())
            .for_each(|((segment, outputs), rows)| {
                let segment = zeroed(segment);
                forward_shard(shape, inputs, rows.clone(), segment, outputs)
            });
    }
    // SAFETY: the count, then every shard's segment (`zeroed`), fill the whole tape; the shards'
    // rows of every step cover the outputs, and `forward_shard` writes each step's rows.
    unsafe {
        tape.set_len(tape_len);
        outputs.set_len(outputs_len);
    }
    let mut hidden = vec![0.0; batch * h];
    let mut cell = if shape.cell == CellKind::Lstm {
        vec![0.0; batch * h]
    } else {
        Vec::new()
    };
    let mut offset = 1;
    for rows in &shards {
        let parts = split_tape(shape, rows.len(), &tape[offset..]);
        let width = rows.len() * h;
        let last = steps * width..(steps + 1) * width;
        hidden[rows.start * h..rows.end * h].copy_from_slice(&parts.hiddens[last.clone()]);
        if shape.cell == CellKind::Lstm {
            cell[rows.start * h..rows.end * h].copy_from_slice(&parts.cells[last]);
        }
        offset += shape.tape_parts(rows.len()).iter().sum::<usize>();
    }
    if !keep_tape {
        pool::recycle(std::mem::take(&mut tape));
    }
    RecurrenceOutputs {
        outputs,
        hidden,
        cell,
        tape,
    }
}

/// Backpropagation through the chunk [`forward`] ran with the same `shape`, `weight_hh` and
/// `mask`: from the gradients of its outputs (`[seq_len, batch_size, d_hidden]`) and of its
/// final state (`[batch_size, d_hidden]` each; empty slices for none) to the gradients of its
/// inputs.
///
/// # Panics
/// If a slice's length does not match `shape`.
pub fn backward(
    shape: RecurrenceShape,
    weight_hh: &[f32],
    mask: Option<&[f32]>,
    tape: &[f32],
    d_outputs: &[f32],
    d_hidden: &[f32],
    d_cell: &[f32],
) -> RecurrenceGradients {
    let (steps, batch, h, g) = (
        shape.seq_len,
        shape.batch_size,
        shape.d_hidden,
        shape.d_gates(),
    );
    assert_eq!(tape.len(), shape.tape_len(), "the tape of this shape");
    assert_eq!(weight_hh.len(), h * g, "W_hh is [d_hidden, G * d_hidden]");
    assert_eq!(
        d_outputs.len(),
        steps * batch * h,
        "one gradient per output"
    );
    for (name, d_state) in [("hidden", d_hidden), ("cell", d_cell)] {
        assert!(
            d_state.is_empty() || d_state.len() == batch * h,
            "the gradient of the final {name} state is [batch_size, d_hidden] or empty"
        );
    }
    if let Some(mask) = mask {
        assert_eq!(
            mask.len(),
            steps * batch,
            "the mask is [seq_len, batch_size]"
        );
    }
    count_call();
    let count = tape[0] as usize;
    assert!(
        count >= 1 && count <= batch.max(1),
        "a tape starts with its shard count"
    );
    let shards = parallel::shard_rows(batch, count);
    let mut segments = Vec::with_capacity(shards.len());
    let mut offset = 1;
    for rows in &shards {
        let len: usize = shape.tape_parts(rows.len()).iter().sum();
        segments.push(&tape[offset..offset + len]);
        offset += len;
    }
    let arguments = BackwardArguments {
        weight_hh,
        mask,
        d_outputs,
        d_hidden,
        d_cell,
    };
    let projected_len = steps * batch * g;
    let mut projected = Vec::with_capacity(projected_len);
    let mut shard_projected = rows_by_shard(
        &mut projected.spare_capacity_mut()[..projected_len],
        batch * g,
        g,
        &shards,
    );
    let parts: Vec<RecurrenceGradients> = segments
        .par_iter()
        .zip(shard_projected.par_iter_mut())
        .zip(shards.par_iter())
        .map(|((segment, projected), rows)| {
            backward_shard(shape, &arguments, segment, rows.clone(), projected)
        })
        .collect();
    drop(shard_projected);
    // SAFETY: the shards' rows of every step cover the buffer, and `backward_shard` writes each
    // step's rows.
    unsafe { projected.set_len(projected_len) };
    let mut gradients = RecurrenceGradients {
        projected,
        weight_hh: vec![0.0; h * g],
        bias_hh: vec![0.0; g],
        hidden: vec![0.0; batch * h],
        cell: if shape.cell == CellKind::Lstm {
            vec![0.0; batch * h]
        } else {
            Vec::new()
        },
    };
    for (part, rows) in parts.into_iter().zip(&shards) {
        add_into(&mut gradients.weight_hh, &part.weight_hh);
        add_into(&mut gradients.bias_hh, &part.bias_hh);
        let state_rows = rows.start * h..rows.end * h;
        gradients.hidden[state_rows.clone()].copy_from_slice(&part.hidden);
        if shape.cell == CellKind::Lstm {
            gradients.cell[state_rows].copy_from_slice(&part.cell);
        }
    }
    gradients
}

fn check_inputs(shape: RecurrenceShape, inputs: &RecurrenceInputs<'_>) {
    let (steps, batch, h, g) = (
        shape.seq_len,
        shape.batch_size,
        shape.d_hidden,
        shape.d_gates(),
    );
    assert_eq!(
        inputs.projected.len(),
        steps * batch * g,
        "the projected inputs are [seq_len, batch_size, G * d_hidden]"
    );
    assert_eq!(
        inputs.weight_hh.len(),
        h * g,
        "W_hh is [d_hidden, G * d_hidden]"
    );
    assert_eq!(inputs.bias_hh.len(), g, "b_hh is [G * d_hidden]");
    assert_eq!(
        inputs.hidden.len(),
        batch * h,
        "the hidden state is [batch_size, d_hidden]"
    );
    let cells = if shape.cell == CellKind::Lstm {
        batch * h
    } else {
        0
    };
    assert_eq!(
        inputs.cell.len(),
        cells,
        "an LSTM's cell state is [batch_size, d_hidden]"
    );
    if let Some(mask) = inputs.mask {
        assert_eq!(
            mask.len(),
            steps * batch,
            "the mask is [seq_len, batch_size]"
        );
    }
}

/// A shard's tape, cut into its parts (see [`RecurrenceShape::tape_parts`]).
struct TapeParts<T> {
    hiddens: T,
    cells: T,
    gates: T,
    per_step: T,
}

fn split_tape(shape: RecurrenceShape, rows: usize, tape: &[f32]) -> TapeParts<&[f32]> {
    let [hiddens, cells, gates, _] = shape.tape_parts(rows);
    let (hiddens_part, rest) = tape.split_at(hiddens);
    let (cells_part, rest) = rest.split_at(cells);
    let (gates_part, per_step) = rest.split_at(gates);
    TapeParts {
        hiddens: hiddens_part,
        cells: cells_part,
        gates: gates_part,
        per_step,
    }
}

fn split_tape_mut(shape: RecurrenceShape, rows: usize, tape: &mut [f32]) -> TapeParts<&mut [f32]> {
    let [hiddens, cells, gates, _] = shape.tape_parts(rows);
    let (hiddens_part, rest) = tape.split_at_mut(hiddens);
    let (cells_part, rest) = rest.split_at_mut(cells);
    let (gates_part, per_step) = rest.split_at_mut(gates);
    TapeParts {
        hiddens: hiddens_part,
        cells: cells_part,
        gates: gates_part,
        per_step,
    }
}

/// A time-major buffer (`step_len` values per step, `width` per row) cut into each shard's rows
/// of every step: element `s` holds shard `s`'s slices, one per step, for it to write alone.
fn rows_by_shard<'a>(
    buffer: &'a mut [MaybeUninit<f32>],
    step_len: usize,
    width: usize,
    shards: &[Range<usize>],
) -> Vec<Vec<&'a mut [MaybeUninit<f32>]>> {
    let mut by_shard: Vec<Vec<_>> = shards.iter().map(|_| Vec::new()).collect();
    for mut step in buffer.chunks_exact_mut(step_len) {
        for (rows, slices) in shards.iter().zip(&mut by_shard) {
            let (shard_rows, rest) = step.split_at_mut(rows.len() * width);
            slices.push(shard_rows);
            step = rest;
        }
    }
    by_shard
}

/// The tape cut into one segment per shard, in order.
fn split_by_shard<'a>(
    shape: RecurrenceShape,
    shards: &[Range<usize>],
    mut tape: &'a mut [MaybeUninit<f32>],
) -> Vec<&'a mut [MaybeUninit<f32>]> {
    let mut segments = Vec::with_capacity(shards.len());
    for rows in shards {
        let len: usize = shape.tape_parts(rows.len()).iter().sum();
        let (segment, rest) = tape.split_at_mut(len);
        segments.push(segment);
        tape = rest;
    }
    segments
}

/// `values` set to zero, as initialised values.
fn zeroed(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    values.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Writes `source` into `destination`, element for element: how a shard fills its rows of a
/// buffer that nothing initialised before it.
#[inline(always)]
pub(crate) fn write_rows(destination: &mut [MaybeUninit<f32>], source: &[f32]) {
    assert_eq!(destination.len(), source.len(), "rows of one width");
    for (slot, &value) in destination.iter_mut().zip(source) {
        slot.write(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic sequence of values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every input of a chunk, owned: projected, W_hh, b_hh, h0, c0, and the mask.
    struct Chunk {
        shape: RecurrenceShape,
        tensors: [Vec<f32>; 5],
        mask: Option<Vec<f32>>,
    }

    impl Chunk {
        fn new(
            cell: CellKind,
            seq_len: usize,
            batch_size: usize,
            d_hidden: usize,
            masked: bool,
        ) -> Self {
            let shape = RecurrenceShape {
                cell,
                seq_len,
                batch_size,
                d_hidden,
            };
            let (g, h) = (shape.d_gates(), d_hidden);
            let cells = if cell == CellKind::Lstm {
                batch_size * h
            } else {
                0
            };
            // Row b is real for its first seq_len - b steps (at least one), padding after.
            let mask = masked.then(|| {
                (0..seq_len * batch_size)
                    .map(|i| {
                        let (t, b) = (i / batch_size, i % batch_size);
                        if t + b < seq_len.max(b + 1) { 1.0 } else { 0.0 }
                    })
                    .collect()
            });
            Chunk {
                shape,
                tensors: [
                    values(seq_len * batch_size * g, 1),
                    values(h * g, 2).iter().map(|w| w * 0.6).collect(),
                    values(g, 3),
                    values(batch_size * h, 4),
                    values(cells, 5),
                ],
                mask,
            }
        }

        fn inputs(&self) -> RecurrenceInputs<'_> {
            RecurrenceInputs {
                projected: &self.tensors[0],
                weight_hh: &self.tensors[1],
                bias_hh: &self.tensors[2],
                hidden: &self.tensors[3],
                cell: &self.tensors[4],
                mask: self.mask.as_deref(),
            }
        }

        /// A loss that reads every output and the final state: `sum(w_o y) + sum(w_h h_n) +
        /// sum(w_c c_n)` with fixed weights, in f64.
        fn loss(&self, outputs: &RecurrenceOutputs) -> f64 {
            let dot = |a: &[f32], seed| -> f64 {
                a.iter()
                    .zip(values(a.len(), seed))
                    .map(|(&x, w)| f64::from(x) * f64::from(w))
                    .sum()
            };
            dot(&outputs.outputs, 11) + dot(&outputs.hidden, 12) + dot(&outputs.cell, 13)
        }

        fn loss_gradients(&self) -> [Vec<f32>; 3] {
            let (t, b, h) = (
                self.shape.seq_len,
                self.shape.batch_size,
                self.shape.d_hidden,
            );
            let cells = if self.shape.cell == CellKind::Lstm {
                b * h
            } else {
                0
            };
            [values(t * b * h, 11), values(b * h, 12), values(cells, 13)]
        }
    }

    /// The kernels' gradients against central differences of the loss, for every input.
    /// Tolerance: f32 differences with a step of 1e-2 are good to about 1e-3 relative on these
    /// smooth functions; 2e-3 absolute plus 2e-2 relative leaves room and still catches a
    /// missing or doubled term (tried: dropping the held part of a masked step fails).
    fn check_gradients(chunk: &mut Chunk) {
        let shape = chunk.shape;
        let forward_pass = forward(shape, &chunk.inputs(), true);
        let [d_out, d_h, d_c] = chunk.loss_gradients();
        let gradients = backward(
            shape,
            &chunk.tensors[1],
            chunk.mask.as_deref(),
            &forward_pass.tape,
            &d_out,
            &d_h,
            &d_c,
        );
        let analytic = [
            &gradients.projected,
            &gradients.weight_hh,
            &gradients.bias_hh,
            &gradients.hidden,
            &gradients.cell,
        ];
        let eps = 1e-2f32;
        for (k, expected) in analytic.into_iter().enumerate() {
            assert_eq!(
                expected.len(),
                chunk.tensors[k].len(),
                "input {k}'s gradient"
            );
            for i in 0..chunk.tensors[k].len() {
                let original = chunk.tensors[k][i];
                chunk.tensors[k][i] = original + eps;
                let up = chunk.loss(&forward(shape, &chunk.inputs(), false));
                chunk.tensors[k][i] = original - eps;
                let down = chunk.loss(&forward(shape, &chunk.inputs(), false));
                chunk.tensors[k][i] = original;
                let numeric = (up - down) / (2.0 * f64::from(eps));
                let got = f64::from(expected[i]);
                assert!(
                    (got - numeric).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                    "{:?} input {k}[{i}]: kernel {got}, finite differences {numeric}",
                    shape.cell
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for cell in CellKind::ALL {
            for masked in [false, true] {
                check_gradients(&mut Chunk::new(cell, 4, 3, 5, masked));
            }
            // Batch 1, one step, one unit.
            check_gradients(&mut Chunk::new(cell, 1, 1, 1, false));
        }
    }

    #[test]
    fn shards_give_the_whole_batch_result() {
        for cell in CellKind::ALL {
            let chunk = Chunk::new(cell, 6, 7, 9, true);
            let shape = chunk.shape;
            let [d_out, d_h, d_c] = chunk.loss_gradients();
            let run = |count| {
                let outputs = forward_sharded(shape, &chunk.inputs(), true, count);
                let gradients = backward(
                    shape,
                    &chunk.tensors[1],
                    chunk.mask.as_deref(),
                    &outputs.tape,
                    &d_out,
                    &d_h,
                    &d_c,
                );
                (outputs, gradients)
            };
            let (whole, whole_gradients) = run(1);
            for count in [2, 3, 7] {
                let (part, part_gradients) = run(count);
                let pairs = [
                    (&whole.outputs, &part.outputs),
                    (&whole.hidden, &part.hidden),
                    (&whole.cell, &part.cell),
                    (&whole_gradients.projected, &part_gradients.projected),
                    (&whole_gradients.weight_hh, &part_gradients.weight_hh),
                    (&whole_gradients.bias_hh, &part_gradients.bias_hh),
                    (&whole_gradients.hidden, &part_gradients.hidden),
                    (&whole_gradients.cell, &part_gradients.cell),
                ];
                for (a, b) in pairs {
                    assert_eq!(a.len(), b.len());
                    for (x, y) in a.iter().zip(b.iter()) {
                        // Only the summation order of the weight gradients differs.
                        assert!(
                            (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                            "{cell:?}, {count} shards"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_padded_row_holds_its_state() {
        // Row 1 is real for its first 3 steps only: its later outputs equal its third.
        let chunk = Chunk::new(CellKind::Lstm, 4, 2, 3, true);
        let out = forward(chunk.shape, &chunk.inputs(), false);
        let row = |t: usize| &out.outputs[(t * 2 + 1) * 3..(t * 2 + 2) * 3];
        assert_eq!(row(3), row(2));
        assert_ne!(row(2), row(1));
        assert_eq!(&out.hidden[3..6], row(2));
        assert!(out.tape.is_empty());
    }
}
