//! A training chunk whose layers are split by hidden units between two threads.
//!
//! Sharding the batch gives each thread half of the rows but all of every weight: a product of
//! 16 rows with a recurrent weight of 4 MB, once per step, streams the whole weight from the L3
//! cache, which a core reads at about 28 GB/s here. Split by units instead, each thread owns the
//! columns of every gate block that feed its half of a layer's units, as the sampler's threads
//! do: it multiplies all the batch's rows with half of the weight, twice the rows per byte read,
//! and runs its units' gate arithmetic. The threads meet once per step, when the step's hidden
//! vectors (forward) or gate gradients (backward) are whole, in buffers both write their own
//! columns of. Measured on two threads: `[32, 512] x [512, 1024]` per thread runs in 205 us,
//! against 275 us for `[16, 512] x [512, 2048]`.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use ember_kernels::dispatch_simd;

use super::stepper::{SpinBarrier, unit_columns};
use super::{
    HeadGradients, HeadWeights, HostState, LayerGradients, LayerWeights, add_into,
    gru_step_backward, head_loss, lstm_step_backward, pool, project_vocabulary, recurrent_step,
};
use crate::CellKind;
use ember_kernels::tile::{Packed, Right, matmul};

/// Bytes of every layer's recurrent weight from which [`prefers_split`] holds. Measured on 2
/// cores (2 MB of L2 cache each), LSTM, old and new binaries alternating: 512 hidden units (4 MB)
/// trained 11-18% faster split at batch 32, 1-5% at batch 50 (1x512, 3x512); 256 units (1 MB,
/// which fits the cache) 10-17% slower.
const SPLIT_FROM_BYTES: usize = 4 << 20;

/// Whether a chunk of these layers trains faster split by units on two threads than sharded by
/// the batch: where every recurrent weight outgrows a core's L2 cache.
pub fn prefers_split(layers: &[LayerWeights]) -> bool {
    layers
        .iter()
        .all(|layer| layer.weight_hh.len() * size_of::<f32>() >= SPLIT_FROM_BYTES)
}

/// What a chunk computes: the loss, every gradient and the state after it.
#[derive(Debug)]
pub struct ChunkGradients {
    /// The sum of the rows' cross-entropies, in nats.
    pub loss_sum: f64,
    /// Every layer's weight gradients, bottom first.
    pub layers: Vec<LayerGradients>,
    /// The head's.
    pub head: HeadGradients,
    /// The embedding table's gradient, `[vocab_size, d_input]`, where the ids index a table.
    pub table: Option<Vec<f32>>,
    /// Every layer's state after the last step, bottom first.
    pub final_states: Vec<HostState>,
}

/// A buffer both threads write, each its own part, and read whole once they have met. It is
/// reached through a raw pointer, never a reference to the whole.
struct SharedBuffer {
    pointer: *mut f32,
    len: usize,
    /// Only ever dropped: the pointer leads into it.
    storage: Vec<f32>,
}

impl SharedBuffer {
    fn new(mut storage: Vec<f32>) -> SharedBuffer {
        SharedBuffer {
            pointer: storage.as_mut_ptr(),
            len: storage.len(),
            storage,
        }
    }

    /// # Safety
    /// No thread writes any of `range` while the slice lives.
    unsafe fn read(&self, range: Range<usize>) -> &[f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (above); the caller keeps writers away.
        unsafe { std::slice::from_raw_parts(self.pointer.add(range.start), range.len()) }
    }

    /// # Safety
    /// No other thread reads or writes any of `range` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn write(&self, range: Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (above); the caller keeps every other access away.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.add(range.start), range.len()) }
    }

    fn into_inner(self) -> Vec<f32> {
        self.storage
    }
}

/// One thread's results.
struct PartResult {
    loss_sum: f64,
    head: HeadGradients,
    /// Per layer, the gradients of the part's columns, in [`unit_columns`] layout.
    layers: Vec<LayerGradients>,
    /// The table's gradient through the part's columns of the bottom layer.
    table: Option<Vec<f32>>,
    /// Per layer, the LSTM cells of the part's units after the last step, `[batch, u]`.
    cells: Vec<Vec<f32>>,
}

/// What one thread keeps of a layer's forward pass for its backward pass: its own columns and
/// units (the hidden vectors are in the shared buffers).
struct PartTape {
    /// The activated gates, `[rows, G u]`.
    gates: Vec<f32>,
    /// LSTM: `c_{t-1}` of every step, then the final cells, `[(seq_len + 1) * batch, u]`.
    cells: Vec<f32>,
    /// LSTM: `tanh(c_t)`; GRU: `W_hn h_{t-1} + b_hn`; `[rows, u]`.
    per_step: Vec<f32>,
}

/// A part's share of a layer, and the layer's sizes.
struct Share<'a> {
    weights: &'a LayerWeights,
    cell: CellKind,
    /// The layer's hidden width.
    h: usize,
    d_in: usize,
    /// Gate blocks.
    gates: usize,
    /// The part's units.
    units: Range<usize>,
    /// Their count.
    u: usize,
    /// The part's gate columns.
    g: usize,
}

/// The two threads' shared state and inputs.
struct Chunk<'a> {
    layers: &'a [LayerWeights],
    head: &'a HeadWeights,
    ids: &'a [usize],
    table: Option<&'a [f32]>,
    targets: &'a [usize],
    states: &'a [HostState],
    seq_len: usize,
    batch: usize,
    scale: f32,
    /// The bottom layer's projection of every character, bias included, `[vocab, G H]`.
    projected: Vec<f32>,
    /// Per layer, each thread's units.
    units: Vec<[Range<usize>; 2]>,
    /// Per layer, `h_{t-1}` of every step, then the final hidden vectors,
    /// `[(seq_len + 1) * batch, H]`.
    hiddens: Vec<SharedBuffer>,
    /// Per layer, the same transposed, `[H, (seq_len + 1) * batch]`: the left operand of the
    /// weight gradients, whose rows a product then reads in order.
    transposed_hiddens: Vec<SharedBuffer>,
    /// The gradient of the top layer's outputs, `[rows, H]`.
    d_top: SharedBuffer,
    /// A layer's gradients of its hidden projection (the recurrence's), `[rows, G H]`, the two
    /// parts' columns side by side.
    d_recurrent: SharedBuffer,
    /// GRU: a layer's gradients of its input projection, laid out as `d_recurrent`.
    d_input_gates: SharedBuffer,
    barrier: SpinBarrier,
    results: [Mutex<Option<PartResult>>; 2],
    started: [AtomicBool; 2],
}

// SAFETY: the raw pointers of the shared buffers lead into vectors the chunk owns; the threads
// reach them only as `SharedBuffer`'s contract says, ordered by `barrier`.
unsafe impl Sync for Chunk<'_> {}

/// One training chunk of a character model split by units (see the module docs): `ids` and
/// `targets` time-major (`[seq_len * batch]`), each id standing for its row of `table`, or for a
/// one-hot vector where `table` is `None`; `states` one per layer; gradients scaled by `scale`.
///
/// `run_both` must call the function it is given with 0 and with 1, on two threads at the same
/// time (`rayon::join`, a scoped thread): the two meet once per step.
#[allow(clippy::too_many_arguments)]
pub fn split_chunk(
    layers: &[LayerWeights],
    head: &HeadWeights,
    ids: &[usize],
    table: Option<&[f32]>,
    targets: &[usize],
    states: &[HostState],
    (seq_len, batch): (usize, usize),
    scale: f32,
    run_both: impl FnOnce(&(dyn Fn(usize) + Sync)),
) -> ChunkGradients {
    assert!(!layers.is_empty(), "a stack has a layer");
    assert_eq!(layers.len(), states.len(), "one state per layer");
    assert_eq!(ids.len(), seq_len * batch, "one id per row");
    assert_eq!(targets.len(), seq_len * batch, "one target per row");
    let rows = seq_len * batch;
    let widest = layers
        .iter()
        .map(|layer| layer.cell.num_gates() * layer.d_hidden)
        .max()
        .unwrap_or(0);
    let gru_above_bottom = layers.iter().skip(1).any(|l| l.cell == CellKind::Gru);
    let top = layers.last().expect("a stack has a layer").d_hidden;
    let chunk = Chunk {
        layers,
        head,
        ids,
        table,
        targets,
        states,
        seq_len,
        batch,
        scale,
        projected: project_vocabulary(&layers[0], table),
        units: layers
            .iter()
            .map(|layer| {
                let h = layer.d_hidden;
                [0..h / 2, h / 2..h]
            })
            .collect(),
        hiddens: layers
            .iter()
            .zip(states)
            .map(|(layer, state)| {
                let width = batch * layer.d_hidden;
                let mut hiddens = pool::scratch((seq_len + 1) * width);
                hiddens[..width].copy_from_slice(&state.hidden);
                SharedBuffer::new(hiddens)
            })
            .collect(),
        transposed_hiddens: layers
            .iter()
            .map(|layer| SharedBuffer::new(pool::scratch((rows + batch) * layer.d_hidden)))
            .collect(),
        d_top: SharedBuffer::new(pool::scratch(rows * top)),
        d_recurrent: SharedBuffer::new(pool::scratch(rows * widest)),
        d_input_gates: SharedBuffer::new(if gru_above_bottom {
            pool::scratch(rows * widest)
        } else {
            Vec::new()
        }),
        barrier: SpinBarrier::default(),
        results: [Mutex::new(None), Mutex::new(None)],
        started: [AtomicBool::new(false), AtomicBool::new(false)],
    };
    run_both(&|part: usize| {
        assert!(
            !chunk.started[part].swap(true, Ordering::AcqRel),
            "each part runs once"
        );
        let _abandon = chunk.barrier.abandon_on_panic();
        let result = chunk.run_part(part);
        *chunk.results[part].lock().expect("no part panicked") = Some(result);
    });
    chunk.finish()
}

impl Chunk<'_> {
    /// Waits for the other thread, or panics if it panicked.
    fn meet(&self) {
        self.barrier.wait(false);
    }

    /// Part `part`'s share of layer `layer`.
    fn share(&self, layer: usize, part: usize) -> Share<'_> {
        let weights = &self.layers[layer];
        let gates = weights.cell.num_gates();
        let units = self.units[layer][part].clone();
        Share {
            weights,
            cell: weights.cell,
            h: weights.d_hidden,
            d_in: weights.d_input,
            gates,
            u: units.len(),
            g: gates * units.len(),
            units,
        }
    }

    /// The part's offset into a layer's side-by-side columns.
    fn offset(&self, layer: usize, part: usize) -> usize {
        let gates = self.layers[layer].cell.num_gates();
        gates
            * self.units[layer][..part]
                .iter()
                .map(Range::len)
                .sum::<usize>()
    }

    /// Rows `rows` of `matrix` (`[_, G H]` in the layer's own layout), transposed, its columns
    /// in the side-by-side order: `[G H, rows.len()]`, packed for the products that take a
    /// gradient of the gates back through it.
    fn transposed(&self, layer: usize, matrix: &[f32], rows: Range<usize>) -> Packed {
        let weights = &self.layers[layer];
        let (gates, h) = (weights.cell.num_gates(), weights.d_hidden);
        let width = gates * h;
        // The rows with their columns side by side, `[rows.len(), G H]`, then packed transposed.
        let mut side_by_side = pool::scratch(rows.len() * width);
        side_by_side.clear();
        for row in matrix[rows.start * width..rows.end * width].chunks_exact(width) {
            for units in &self.units[layer] {
                for b in 0..gates {
                    side_by_side.extend_from_slice(&row[b * h + units.start..b * h + units.end]);
                }
            }
        }
        let packed = Packed::new(&side_by_side, (1, width), width, rows.len());
        pool::recycle(side_by_side);
        packed
    }

    fn run_part(&self, part: usize) -> PartResult {
        let (seq_len, batch) = (self.seq_len, self.batch);
        let rows = seq_len * batch;
        let tapes: Vec<PartTape> = (0..self.layers.len())
            .map(|layer| part_forward(self, layer, part))
            .collect();

        // The head over half of the rows each, then every row's gradient for both.
        let top = self.layers.len() - 1;
        let h = self.layers[top].d_hidden;
        let half = part * rows / 2..(part + 1) * rows / 2;
        // SAFETY: the top layer's hidden vectors are whole (the threads met after its last
        // step) and no one writes them again; each part writes its own rows of `d_top`.
        let step = unsafe {
            let hidden = self.hiddens[top].read((batch + half.start) * h..(batch + half.end) * h);
            let step = head_loss(self.head, hidden, &self.targets[half.clone()], self.scale);
            self.d_top
                .write(half.start * h..half.end * h)
                .copy_from_slice(&step.d_hidden);
            step
        };
        pool::recycle(step.d_hidden);
        self.meet();
        let units = &self.units[top][part];
        let mut d_output = pool::scratch(rows * units.len());
        // SAFETY: `d_top` is whole and no one writes it again.
        let d_top = unsafe { self.d_top.read(0..rows * h) };
        for (out, row) in d_output
            .chunks_exact_mut(units.len().max(1))
            .zip(d_top.chunks_exact(h))
        {
            out.copy_from_slice(&row[units.clone()]);
        }

        let mut layers = Vec::with_capacity(self.layers.len());
        let mut table = None;
        let mut cells = Vec::with_capacity(self.layers.len());
        for (layer, tape) in tapes.into_iter().enumerate().rev() {
            let (gradients, d_below) = part_backward(self, layer, part, &tape, &d_output);
            pool::recycle(std::mem::replace(&mut d_output, d_below));
            layers.push(gradients);
            let u = self.units[layer][part].len();
            cells.push(match self.layers[layer].cell {
                CellKind::Lstm => tape.cells[seq_len * batch * u..].to_vec(),
                _ => Vec::new(),
            });
            for buffer in [tape.gates, tape.cells, tape.per_step] {
                pool::recycle(buffer);
            }
            if layer == 0 && self.table.is_some() {
                table = Some(std::mem::take(&mut d_output));
            }
        }
        pool::recycle(d_output);
        layers.reverse();
        cells.reverse();
        PartResult {
            loss_sum: step.loss_sum,
            head: step.gradients,
            layers,
            table,
            cells,
        }
    }

    /// A part's forward pass through layer `layer`.
    #[inline(always)]
    fn forward(&self, layer: usize, part: usize) -> PartTape {
        let (seq_len, batch) = (self.seq_len, self.batch);
        let rows = seq_len * batch;
        let Share {
            weights,
            cell,
            h,
            d_in,
            gates,
            units,
            u,
            g,
        } = self.share(layer, part);
        let columns = |matrix: &[f32]| unit_columns(matrix, gates, h, &units);
        let hiddens = &self.hiddens[layer];

        let mut step_gates_all = pool::scratch(rows * g);
        // The bottom layer picks each id's projection; the layers above add the bias to theirs.
        let (projected, bias) = if layer == 0 {
            (columns(&self.projected), Vec::new())
        } else {
            // SAFETY: the layer below is whole (the threads met after its last step), and no
            // one writes it again.
            let below =
                unsafe { self.hiddens[layer - 1].read(batch * d_in..(rows + batch) * d_in) };
            let weight_ih = columns(&weights.weight_ih);
            matmul(
                (rows, d_in, g),
                below,
                (d_in, 1),
                Right::Rows(&weight_ih, g),
                false,
                &mut step_gates_all,
            );
            (Vec::new(), columns(&weights.input_bias()))
        };
        let recurrent = Packed::new(&columns(&weights.weight_hh), (g, 1), h, g);
        let bias_hh = match cell {
            CellKind::Gru => columns(&weights.bias_hh),
            _ => Vec::new(),
        };
        let mut cells = Vec::new();
        if cell == CellKind::Lstm {
            cells = pool::scratch((seq_len + 1) * batch * u);
            for (out, row) in cells
                .chunks_exact_mut(u.max(1))
                .zip(self.states[layer].cell.chunks_exact(h))
            {
                out.copy_from_slice(&row[units.clone()]);
            }
        }
        let mut per_step = match cell {
            CellKind::Rnn => Vec::new(),
            _ => pool::scratch(rows * u),
        };
        let mut next = vec![0.0; batch * u];
        let mut projected_hidden = vec![0.0; if cell == CellKind::Gru { batch * g } else { 0 }];
        let mut previous_units = vec![0.0; if cell == CellKind::Gru { batch * u } else { 0 }];
        for t in 0..seq_len {
            let step_gates = &mut step_gates_all[t * batch * g..(t + 1) * batch * g];
            if layer == 0 {
                let step_ids = &self.ids[t * batch..(t + 1) * batch];
                for (row, &id) in step_gates.chunks_exact_mut(g.max(1)).zip(step_ids) {
                    row.copy_from_slice(&projected[id * g..(id + 1) * g]);
                }
            } else {
                for row in step_gates.chunks_exact_mut(g.max(1)) {
                    add_into(row, &bias);
                }
            }
            // SAFETY: step `t`'s hidden vectors are whole (the threads met after step t - 1);
            // this step writes only step t + 1's.
            let previous = unsafe { hiddens.read(t * batch * h..(t + 1) * batch * h) };
            if cell == CellKind::Gru {
                for (out, row) in previous_units
                    .chunks_exact_mut(u.max(1))
                    .zip(previous.chunks_exact(h))
                {
                    out.copy_from_slice(&row[units.clone()]);
                }
            }
            let (previous_cells, next_cells) = match cell {
                CellKind::Lstm => {
                    let (done, rest) = cells.split_at_mut((t + 1) * batch * u);
                    (&done[t * batch * u..], &mut rest[..batch * u])
                }
                _ => (&[][..], &mut [][..]),
            };
            let per_step = match cell {
                CellKind::Rnn => &mut [][..],
                _ => &mut per_step[t * batch * u..(t + 1) * batch * u],
            };
            recurrent_step(
                cell,
                (batch, h),
                (previous, &previous_units),
                &recurrent,
                &bias_hh,
                step_gates,
                &mut projected_hidden,
                (previous_cells, next_cells),
                per_step,
                &mut next,
            );
            for (b, values) in next.chunks_exact(u.max(1)).enumerate().take(batch) {
                let start = ((t + 1) * batch + b) * h + units.start;
                // SAFETY: these are this part's units of step t + 1, which no one else touches
                // before the meeting below.
                unsafe { hiddens.write(start..start + u) }.copy_from_slice(values);
            }
            self.meet();
        }
        // This part's units of every step, transposed, for the weight gradients. No one reads
        // them before the threads meet after the head.
        let columns = (seq_len + 1) * batch;
        // SAFETY: the forward pass of the layer is done (the threads met after its last step);
        // this part writes only its own units' rows of the transpose.
        unsafe {
            let values = hiddens.read(0..columns * h);
            let transposed =
                self.transposed_hiddens[layer].write(units.start * columns..units.end * columns);
            for (j0, block) in (0..columns)
                .step_by(16)
                .map(|j0| (j0, values[j0 * h..].chunks(h).take(16)))
            {
                for (j, row) in block.enumerate() {
                    for (i, &value) in row[units.clone()].iter().enumerate() {
                        transposed[i * columns + j0 + j] = value;
                    }
                }
            }
        }
        PartTape {
            gates: step_gates_all,
            cells,
            per_step,
        }
    }

    /// A part's backward pass through layer `layer`, from the gradient of its units' outputs
    /// (`[rows, u]`): its columns' weight gradients, and the gradient of its units of the layer
    /// below (`[rows, u_below]`), or at the bottom its share of the table's gradient.
    #[inline(always)]
    fn backward(
        &self,
        layer: usize,
        part: usize,
        tape: &PartTape,
        d_output: &[f32],
    ) -> (LayerGradients, Vec<f32>) {
        let (seq_len, batch) = (self.seq_len, self.batch);
        let rows = seq_len * batch;
        let Share {
            weights,
            cell,
            h,
            d_in,
            gates,
            units,
            u,
            g,
        } = self.share(layer, part);
        let width = gates * h;
        let offset = self.offset(layer, part);
        let gru = cell == CellKind::Gru;
        let hiddens = &self.hiddens[layer];

        let mut d_gates = Packed::unfilled(rows, g);
        let mut d_projected = gru.then(|| Packed::unfilled(rows, g));
        let mut step_d_gates = vec![0.0; batch * g];
        let mut step_d_projected = vec![0.0; if gru { batch * g } else { 0 }];
        let mut bias_ih = vec![0.0; g];
        let mut bias_hh = vec![0.0; if gru { g } else { 0 }];
        let vocab = self.projected.len() / width;
        let mut per_id = vec![0.0; if layer == 0 { vocab * g } else { 0 }];
        let mut d_hidden = vec![0.0; batch * u];
        let mut d_cell = vec![0.0; if cell == CellKind::Lstm { batch * u } else { 0 }];
        let mut unit_values = vec![0.0; if cell == CellKind::Lstm { 0 } else { batch * u }];
        let recurrent_t = self.transposed(layer, &weights.weight_hh, units.clone());
        let gather = |out: &mut [f32], step: usize| {
            // SAFETY: the forward pass is done; no one writes the hidden vectors again.
            let values = unsafe { hiddens.read(step * batch * h..(step + 1) * batch * h) };
            for (out, row) in out.chunks_exact_mut(u.max(1)).zip(values.chunks_exact(h)) {
                out.copy_from_slice(&row[units.clone()]);
            }
        };
        for t in (0..seq_len).rev() {
            let span = t * batch * u..(t + 1) * batch * u;
            let gate_span = t * batch * g..(t + 1) * batch * g;
            let d_out = &d_output[span.clone()];
            match cell {
                CellKind::Rnn => {
                    gather(&mut unit_values, t + 1);
                    for (k, d) in step_d_gates.iter_mut().enumerate() {
                        let out = unit_values[k];
                        *d = (d_hidden[k] + d_out[k]) * (1.0 - out * out);
                    }
                }
                CellKind::Lstm => lstm_step_backward(
                    &tape.gates[gate_span],
                    &tape.cells[span.clone()],
                    &tape.per_step[span],
                    d_out,
                    &d_hidden,
                    &mut d_cell,
                    &mut step_d_gates,
                    u,
                ),
                CellKind::Gru => {
                    gather(&mut unit_values, t);
                    gru_step_backward(
                        &tape.gates[gate_span],
                        &tape.per_step[span],
                        &unit_values,
                        d_out,
                        &mut d_hidden,
                        &mut step_d_gates,
                        &mut step_d_projected,
                        u,
                    );
                }
            }
            d_gates.set_rows(t * batch, &step_d_gates);
            for row in step_d_gates.chunks_exact(g.max(1)) {
                add_into(&mut bias_ih, row);
            }
            if let Some(d_projected) = &mut d_projected {
                d_projected.set_rows(t * batch, &step_d_projected);
                for row in step_d_projected.chunks_exact(g.max(1)) {
                    add_into(&mut bias_hh, row);
                }
            }
            if layer == 0 {
                let step_ids = &self.ids[t * batch..(t + 1) * batch];
                for (row, &id) in step_d_gates.chunks_exact(g.max(1)).zip(step_ids) {
                    add_into(&mut per_id[id * g..(id + 1) * g], row);
                }
            }
            let shared_rows = |buffer: &SharedBuffer, values: &[f32]| {
                for (b, values) in values.chunks_exact(g.max(1)).enumerate().take(batch) {
                    let start = (t * batch + b) * width + offset;
                    // SAFETY: this part's columns of step t, which no one else touches before
                    // the meeting below.
                    unsafe { buffer.write(start..start + g) }.copy_from_slice(values);
                }
            };
            shared_rows(
                &self.d_recurrent,
                if gru {
                    &step_d_projected
                } else {
                    &step_d_gates
                },
            );
            if gru && layer > 0 {
                shared_rows(&self.d_input_gates, &step_d_gates);
            }
            self.meet();
            if t > 0 {
                // SAFETY: step t's gradients are whole (the threads just met); the next write
                // is to step t - 1's.
                let d_step = unsafe {
                    self.d_recurrent
                        .read(t * batch * width..(t + 1) * batch * width)
                };
                matmul(
                    (batch, width, u),
                    d_step,
                    (width, 1),
                    Right::Packed(&recurrent_t),
                    // GRU: `d_hidden` holds the direct part of the gradient already.
                    gru,
                    &mut d_hidden,
                );
            }
        }

        let mut gradients = LayerGradients {
            weight_ih: vec![0.0; d_in * g],
            weight_hh: vec![0.0; h * g],
            bias_hh: if gru { bias_hh } else { bias_ih.clone() },
            bias_ih,
        };
        let columns = (seq_len + 1) * batch;
        // SAFETY: both parts wrote their rows of the transposes before the threads met after
        // the head, and no one writes them again.
        let previous = unsafe { self.transposed_hiddens[layer].read(0..h * columns) };
        matmul(
            (h, rows, g),
            previous,
            (columns, 1),
            Right::Packed(d_projected.as_ref().unwrap_or(&d_gates)),
            false,
            &mut gradients.weight_hh,
        );
        let d_below = if layer > 0 {
            // SAFETY: as above, for the layer below; its outputs are steps 1 and on.
            let below = unsafe { self.transposed_hiddens[layer - 1].read(batch..d_in * columns) };
            matmul(
                (d_in, rows, g),
                below,
                (columns, 1),
                Right::Packed(&d_gates),
                false,
                &mut gradients.weight_ih,
            );
            // dX = dG W_ih^T, the columns of this part's units of the layer below.
            let below_units = self.units[layer - 1][part].clone();
            let weight_ih_t = self.transposed(layer, &weights.weight_ih, below_units.clone());
            let shared = if gru {
                &self.d_input_gates
            } else {
                &self.d_recurrent
            };
            // SAFETY: every step's gradients are whole (the threads met after step 0).
            let d_gates_all = unsafe { shared.read(0..rows * width) };
            let mut d_below = pool::scratch(rows * below_units.len());
            matmul(
                (rows, width, below_units.len()),
                d_gates_all,
                (width, 1),
                Right::Packed(&weight_ih_t),
                false,
                &mut d_below,
            );
            // The layer below overwrites the shared gradients once both are done reading them.
            self.meet();
            d_below
        } else {
            match self.table {
                // W_ih' = T^T (per-character sums of dG); the table's share: sums W_ih^T.
                Some(table) => {
                    matmul(
                        (d_in, vocab, g),
                        table,
                        (1, d_in),
                        Right::Rows(&per_id, g),
                        false,
                        &mut gradients.weight_ih,
                    );
                    let weight_ih = unit_columns(&weights.weight_ih, gates, h, &units);
                    let weight_ih_t = Packed::new(&weight_ih, (1, g), g, d_in);
                    let mut d_table = vec![0.0; vocab * d_in];
                    matmul(
                        (vocab, g, d_in),
                        &per_id,
                        (g, 1),
                        Right::Packed(&weight_ih_t),
                        false,
                        &mut d_table,
                    );
                    d_table
                }
                None => {
                    gradients.weight_ih.copy_from_slice(&per_id);
                    Vec::new()
                }
            }
        };
        (gradients, d_below)
    }

    /// Both parts' results as the whole layers' gradients and states.
    fn finish(self) -> ChunkGradients {
        let [first, second] = self
            .results
            .map(|slot| slot.into_inner().ok().flatten().expect("both parts ran"));
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(k, weights)| {
                let (gates, h) = (weights.cell.num_gates(), weights.d_hidden);
                let mut whole = LayerGradients {
                    weight_ih: vec![0.0; weights.weight_ih.len()],
                    weight_hh: vec![0.0; weights.weight_hh.len()],
                    bias_ih: vec![0.0; gates * h],
                    bias_hh: vec![0.0; gates * h],
                };
                for (result, units) in [&first, &second].into_iter().zip(&self.units[k]) {
                    let part = &result.layers[k];
                    set_unit_columns(&mut whole.weight_ih, &part.weight_ih, gates, h, units);
                    set_unit_columns(&mut whole.weight_hh, &part.weight_hh, gates, h, units);
                    set_unit_columns(&mut whole.bias_ih, &part.bias_ih, gates, h, units);
                    set_unit_columns(&mut whole.bias_hh, &part.bias_hh, gates, h, units);
                }
                whole
            })
            .collect();
        let final_states = self
            .layers
            .iter()
            .zip(&self.hiddens)
            .enumerate()
            .map(|(k, (weights, hiddens))| {
                let h = weights.d_hidden;
                let width = self.batch * h;
                // SAFETY: both parts are done.
                let hidden =
                    unsafe { hiddens.read(self.seq_len * width..(self.seq_len + 1) * width) };
                let mut cell = Vec::new();
                if weights.cell == CellKind::Lstm {
                    cell = vec![0.0; width];
                    for (result, units) in [&first, &second].into_iter().zip(&self.units[k]) {
                        set_unit_columns(&mut cell, &result.cells[k], 1, h, units);
                    }
                }
                HostState {
                    hidden: hidden.to_vec(),
                    cell,
                }
            })
            .collect();
        let table = match (first.table, second.table) {
            (Some(mut sum), Some(part)) => {
                add_into(&mut sum, &part);
                Some(sum)
            }
            _ => None,
        };
        let mut head = first.head;
        add_into(&mut head.weight, &second.head.weight);
        add_into(&mut head.bias, &second.head.bias);
        for buffer in self.hiddens.into_iter().chain(self.transposed_hiddens) {
            pool::recycle(buffer.into_inner());
        }
        for buffer in [self.d_top, self.d_recurrent, self.d_input_gates] {
            pool::recycle(buffer.into_inner());
        }
        pool::recycle(self.projected);
        ChunkGradients {
            loss_sum: first.loss_sum + second.loss_sum,
            layers,
            head,
            table,
            final_states,
        }
    }
}

dispatch_simd!(
    part_forward,
    part_forward_avx512,
    part_forward_avx2,
    part_forward_portable,
    (chunk: &Chunk<'_>, layer: usize, part: usize) -> PartTape
);

/// [`Chunk::forward`], compiled for the widest vectors the CPU has: the gate arithmetic
/// vectorizes 16 lanes wide instead of 4.
#[inline(always)]
fn part_forward_portable(chunk: &Chunk<'_>, layer: usize, part: usize) -> PartTape {
    chunk.forward(layer, part)
}

dispatch_simd!(
    part_backward,
    part_backward_avx512,
    part_backward_avx2,
    part_backward_portable,
    (
        chunk: &Chunk<'_>,
        layer: usize,
        part: usize,
        tape: &PartTape,
        d_output: &[f32]
    ) -> (LayerGradients, Vec<f32>)
);

/// [`Chunk::backward`], compiled as [`part_forward`] is.
#[inline(always)]
fn part_backward_portable(
    chunk: &Chunk<'_>,
    layer: usize,
    part: usize,
    tape: &PartTape,
    d_output: &[f32],
) -> (LayerGradients, Vec<f32>) {
    chunk.backward(layer, part, tape, d_output)
}

/// Writes `part` (`[rows, gates * units.len()]`, as [`unit_columns`] lays them out) into its
/// columns of `whole` (`[rows, gates * h]`).
fn set_unit_columns(whole: &mut [f32], part: &[f32], gates: usize, h: usize, units: &Range<usize>) {
    let u = units.len();
    if u == 0 {
        return;
    }
    for (row, part_row) in whole
        .chunks_exact_mut(gates * h)
        .zip(part.chunks_exact(gates * u))
    {
        for b in 0..gates {
            row[b * h + units.start..b * h + units.end]
                .copy_from_slice(&part_row[b * u..(b + 1) * u]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{layer, state, values};
    use super::super::{StackInput, stack_backward, stack_forward};
    use super::*;

    fn assert_close(split: &[f32], whole: &[f32], what: &str) {
        assert_eq!(split.len(), whole.len(), "{what}: lengths");
        for (i, (a, b)) in split.iter().zip(whole).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{what} [{i}]: split {a} whole {b}"
            );
        }
    }

    /// The split chunk gives what one thread computes over the whole batch (the kernels the
    /// shards run, which the fused tests hold to the plain path): every cell, with a table and
    /// one-hot, odd widths (halves of unequal size), one and three layers, from a carried state.
    #[test]
    fn a_split_chunk_equals_the_whole_batch_on_one_thread() {
        let (seq_len, batch, vocab) = (6, 3, 7);
        for cell in CellKind::ALL {
            for (num_layers, d_hidden, d_embed) in [(1, 6, 0), (3, 5, 4), (2, 9, 3)] {
                let d_first = if d_embed == 0 { vocab } else { d_embed };
                let layers: Vec<LayerWeights> = (0..num_layers)
                    .map(|k| {
                        let d_input = if k == 0 { d_first } else { d_hidden };
                        layer(cell, d_input, d_hidden, 10 * k as u32 + 1)
                    })
                    .collect();
                let head = HeadWeights {
                    weight: values(d_hidden * vocab, 90),
                    bias: values(vocab, 91),
                };
                let table = (d_embed > 0).then(|| values(vocab * d_embed, 92));
                let states: Vec<HostState> = (0..num_layers)
                    .map(|k| state(cell, batch * d_hidden, 100 + k as u32))
                    .collect();
                let ids: Vec<usize> = (0..seq_len * batch).map(|i| (i * 5 + 2) % vocab).collect();
                let targets: Vec<usize> =
                    (0..seq_len * batch).map(|i| (i * 3 + 1) % vocab).collect();
                let scale = 1.0 / (seq_len * batch) as f32;

                let tape = stack_forward(
                    &layers,
                    StackInput::Ids {
                        ids: ids.clone(),
                        table: table.clone(),
                    },
                    &states,
                    seq_len,
                    batch,
                );
                let whole_head = head_loss(&head, tape.output(), &targets, scale);
                let (whole_layers, whole_table) =
                    stack_backward(&layers, &tape, whole_head.d_hidden, table.is_some());

                let split = split_chunk(
                    &layers,
                    &head,
                    &ids,
                    table.as_deref(),
                    &targets,
                    &states,
                    (seq_len, batch),
                    scale,
                    |part| {
                        std::thread::scope(|scope| {
                            scope.spawn(|| part(1));
                            part(0);
                        })
                    },
                );
                let what = format!("{cell} {num_layers}x{d_hidden} d_embed {d_embed}");
                assert!(
                    (split.loss_sum - whole_head.loss_sum).abs() < 1e-4,
                    "{what}: loss {} vs {}",
                    split.loss_sum,
                    whole_head.loss_sum
                );
                for (k, (s, w)) in split.layers.iter().zip(&whole_layers).enumerate() {
                    assert_close(
                        &s.weight_ih,
                        &w.weight_ih,
                        &format!("{what} layer {k} W_ih"),
                    );
                    assert_close(
                        &s.weight_hh,
                        &w.weight_hh,
                        &format!("{what} layer {k} W_hh"),
                    );
                    assert_close(&s.bias_ih, &w.bias_ih, &format!("{what} layer {k} b_ih"));
                    assert_close(&s.bias_hh, &w.bias_hh, &format!("{what} layer {k} b_hh"));
                }
                assert_close(&split.head.weight, &whole_head.gradients.weight, &what);
                assert_close(&split.head.bias, &whole_head.gradients.bias, &what);
                assert_eq!(split.table.is_some(), whole_table.is_some(), "{what}");
                if let (Some(s), Some(w)) = (&split.table, &whole_table) {
                    assert_close(s, w, &format!("{what} table"));
                }
                for (s, w) in split.final_states.iter().zip(tape.final_states()) {
                    assert_close(&s.hidden, &w.hidden, &format!("{what} final hidden"));
                    assert_close(&s.cell, &w.cell, &format!("{what} final cell"));
                }
            }
        }
    }

    /// A part that panics stops the other from waiting for it: the chunk panics, it does not
    /// hang.
    #[test]
    fn a_panicking_part_does_not_leave_the_other_waiting() {
        let layers = vec![layer(CellKind::Lstm, 3, 4, 1)];
        let head = HeadWeights {
            weight: values(4 * 3, 2),
            bias: values(3, 3),
        };
        let states = vec![HostState {
            hidden: vec![0.0; 4],
            cell: vec![0.0; 4],
        }];
        // A target outside the vocabulary panics in the second half's head.
        let outcome = std::panic::catch_unwind(|| {
            split_chunk(
                &layers,
                &head,
                &[0, 1],
                None,
                &[0, 7],
                &states,
                (2, 1),
                0.5,
                |part| {
                    std::thread::scope(|scope| {
                        scope.spawn(|| part(1));
                        part(0);
                    })
                },
            )
        });
        assert!(outcome.is_err());
    }
}
