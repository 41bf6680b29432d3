//! Whole-chunk recurrent kernels on host memory: the forward pass and backpropagation through time
//! of a stack of tanh RNN, LSTM or GRU layers over a chunk of steps, the head and its loss, and a
//! one-stream stepper for sampling, all on plain `f32` buffers.
//!
//! This is the fast path of training on a CPU. The plain path builds Burn's autodiff graph out of
//! a dozen small tensor operations per layer and step; here one matrix product projects the
//! inputs of the whole chunk, one per step advances the recurrence, the gate arithmetic of a step
//! is one loop, and the weight gradients of the chunk are matrix products after the loop. A caller
//! may split the batch into shards and run them on threads of their own: the streams of a batch
//! are independent until their gradients are summed. Layers too large for a core's cache split
//! their units between two threads instead ([`split_chunk`]). The results equal the plain path's (tests
//! at the bottom, and in `ember-train` for whole training steps).
//!
//! Layouts: sequences are time-major and row-major, `[seq_len, batch_size, width]`; weights are
//! the layer's own (`[d_input, G * d_hidden]` and `[d_hidden, G * d_hidden]`, with the `G` gate
//! blocks of [`CellKind`] in PyTorch's order).

use burn::tensor::Tensor;

use crate::CellKind;

pub use ember_kernels::activation::add_into;
use ember_kernels::activation::{exp, tanh};
use ember_kernels::cells::{gru_step, lstm_step};
use ember_kernels::tile::{Packed, Right, matmul};
use ember_kernels::{dispatch_simd, pool};

/// A float tensor's values, row-major, as `f32` host memory.
pub fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float values convert to f32")
}

/// The weights of one recurrent layer, as [`RecurrentLayer`](crate::RecurrentLayer) stores them.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// The recurrence the layer computes.
    pub cell: CellKind,
    /// `[d_input, G * d_hidden]`.
    pub weight_ih: Vec<f32>,
    /// `[d_hidden, G * d_hidden]`.
    pub weight_hh: Vec<f32>,
    /// `[G * d_hidden]`.
    pub bias_ih: Vec<f32>,
    /// `[G * d_hidden]`.
    pub bias_hh: Vec<f32>,
    /// The input width.
    pub d_input: usize,
    /// The hidden width.
    pub d_hidden: usize,
}

impl LayerWeights {
    fn gates(&self) -> usize {
        self.cell.num_gates() * self.d_hidden
    }

    /// The bias added to the input projection: both biases where they are simply summed (RNN,
    /// LSTM); GRU's reset gate scales its hidden projection with `b_hh`, which stays apart.
    fn input_bias(&self) -> Vec<f32> {
        match self.cell {
            CellKind::Gru => self.bias_ih.clone(),
            _ => self
                .bias_ih
                .iter()
                .zip(&self.bias_hh)
                .map(|(a, b)| a + b)
                .collect(),
        }
    }
}

/// The gradients of one layer's weights over a chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGradients {
    /// `[d_input, G * d_hidden]`.
    pub weight_ih: Vec<f32>,
    /// `[d_hidden, G * d_hidden]`.
    pub weight_hh: Vec<f32>,
    /// `[G * d_hidden]`.
    pub bias_ih: Vec<f32>,
    /// `[G * d_hidden]`.
    pub bias_hh: Vec<f32>,
}

impl LayerGradients {
    /// Adds `other` (another shard's gradients of the same layer) into these.
    pub fn add(&mut self, other: &LayerGradients) {
        for (sum, part) in [
            (&mut self.weight_ih, &other.weight_ih),
            (&mut self.weight_hh, &other.weight_hh),
            (&mut self.bias_ih, &other.bias_ih),
            (&mut self.bias_hh, &other.bias_hh),
        ] {
            add_into(sum, part);
        }
    }
}

/// A layer's state, `[batch_size, d_hidden]` per vector.
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    /// The hidden vector.
    pub hidden: Vec<f32>,
    /// The cell vector of an LSTM; empty for the other cells.
    pub cell: Vec<f32>,
}

/// The bottom layer's input over a chunk, time-major.
#[derive(Debug)]
pub enum StackInput {
    /// Dense rows, `[seq_len * batch, d_input]`.
    Rows(Vec<f32>),
    /// Character ids, `[seq_len * batch]`, each standing for its row of `table`
    /// (`[vocab_size, d_input]`), or for its one-hot vector where `table` is `None`.
    ///
    /// Every product with the input then goes through the vocabulary instead of the rows: the
    /// table is projected once and its rows picked, and the gradients of the rows are summed per
    /// character first. That is less work wherever the vocabulary has fewer entries than the
    /// chunk has rows.
    Ids {
        /// The ids, each below the vocabulary size.
        ids: Vec<usize>,
        /// The embedding table, or `None` for one-hot inputs.
        table: Option<Vec<f32>>,
    },
}

impl StackInput {
    /// The vocabulary size of an id input: the table's rows, or the width of a one-hot vector.
    fn vocab_size(table: Option<&[f32]>, d_input: usize) -> usize {
        table.map_or(d_input, |table| table.len() / d_input)
    }
}

/// What a layer's forward pass keeps for its backward pass.
#[derive(Debug)]
struct LayerTape {
    cell: CellKind,
    d_hidden: usize,
    /// The layer's input.
    input: StackInput,
    /// LSTM: the gates `i, f, g, o` after their nonlinearities; GRU: `r, z, n` after theirs;
    /// `[seq_len * batch, G * H]`. Unused by the RNN, whose output is its activation.
    gates: Vec<f32>,
    /// LSTM: `c_{t-1}` of every step, then the final cell, `[(seq_len + 1) * batch, H]`.
    cells: Vec<f32>,
    /// LSTM: `tanh(c_t)`; GRU: `W_hn h_{t-1} + b_hn`, which the reset gate scales;
    /// `[seq_len * batch, H]`.
    per_step: Vec<f32>,
    /// `h_{t-1}` of every step, then the final hidden vector: `[(seq_len + 1) * batch, H]`.
    hiddens: Vec<f32>,
}

impl Drop for LayerTape {
    fn drop(&mut self) {
        if let StackInput::Rows(rows) = &mut self.input {
            pool::recycle(std::mem::take(rows));
        }
        for buffer in [
            &mut self.gates,
            &mut self.cells,
            &mut self.per_step,
            &mut self.hiddens,
        ] {
            pool::recycle(std::mem::take(buffer));
        }
    }
}

/// A shard's forward pass through every layer, kept for its backward pass.
#[derive(Debug)]
pub struct StackTape {
    layers: Vec<LayerTape>,
    seq_len: usize,
    batch_size: usize,
}

impl StackTape {
    /// The top layer's output at every step, `[seq_len * batch, d_hidden]`.
    pub fn output(&self) -> &[f32] {
        let top = self.layers.last().expect("a stack has a layer");
        &top.hiddens[self.batch_size * top.d_hidden..]
    }

    /// Every layer's state after the last step, bottom first.
    pub fn final_states(&self) -> Vec<HostState> {
        self.layers
            .iter()
            .map(|tape| {
                let width = self.batch_size * tape.d_hidden;
                let last = self.seq_len * width..(self.seq_len + 1) * width;
                HostState {
                    hidden: tape.hiddens[last.clone()].to_vec(),
                    cell: match tape.cell {
                        CellKind::Lstm => tape.cells[last].to_vec(),
                        _ => Vec::new(),
                    },
                }
            })
            .collect()
    }
}

/// Every character's input projection through `weights`, bias included,
/// `[vocab_size, G * d_hidden]`: the rows of `table` (`[vocab_size, d_input]`) times `W_ih`, or
/// for one-hot inputs (`None`) the rows of `W_ih` themselves.
fn project_vocabulary(weights: &LayerWeights, table: Option<&[f32]>) -> Vec<f32> {
    let (d_in, g) = (weights.d_input, weights.gates());
    let vocab = StackInput::vocab_size(table, d_in);
    let bias = weights.input_bias();
    let mut projected = pool::scratch(vocab * g);
    for row in projected.chunks_exact_mut(g) {
        row.copy_from_slice(&bias);
    }
    match table {
        Some(table) => matmul(
            (vocab, d_in, g),
            table,
            (d_in, 1),
            Right::Rows(&weights.weight_ih, g),
            true,
            &mut projected,
        ),
        None => add_into(&mut projected, &weights.weight_ih),
    }
    projected
}

/// `values` folded by `fold` from `start` in 16 interleaved lanes, which vectorize where one
/// chain of a non-associative fold (a float sum, a maximum) would not; then the lanes folded.
#[inline(always)]
fn lanes(values: &[f32], start: f32, fold: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [start; 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = fold(*lane, value);
        }
    }
    let folded = lanes.into_iter().fold(start, &fold);
    rest.iter().fold(folded, |a, &b| fold(a, b))
}

/// Column sums of `data` (`[rows, width]`).
fn column_sums(data: &[f32], width: usize) -> Vec<f32> {
    let mut sums = vec![0.0; width];
    for row in data.chunks_exact(width) {
        add_into(&mut sums, row);
    }
    sums
}

// After `dispatch_simd!`, which the stepper's kernels use.
mod split;
mod stepper;
pub use split::{ChunkGradients, prefers_split, split_chunk};
pub use stepper::HostStepper;

dispatch_simd!(
    layer_forward,
    layer_forward_avx512,
    layer_forward_avx2,
    layer_forward_portable,
    (weights: &LayerWeights, input: StackInput, state: &HostState, seq_len: usize, batch: usize) -> LayerTape
);

/// One layer's forward pass over the chunk `input` from `state`.
#[inline(always)]
fn layer_forward_portable(
    weights: &LayerWeights,
    input: StackInput,
    state: &HostState,
    seq_len: usize,
    batch: usize,
) -> LayerTape {
    let (d_in, h, g) = (weights.d_input, weights.d_hidden, weights.gates());
    let rows = seq_len * batch;
    let width = batch * h;
    let bias = weights.input_bias();
    let mut gates = pool::scratch(rows * g);
    // Id inputs: each character's projection, bias included, which every step picks its rows
    // from; dense rows: their projection, to which every step adds the bias. Either way a step's
    // input part is completed while its rows are in the cache, not in a pass of its own.
    let projected_ids = match &input {
        StackInput::Rows(input) => {
            matmul(
                (rows, d_in, g),
                input,
                (d_in, 1),
                Right::Rows(&weights.weight_ih, g),
                false,
                &mut gates,
            );
            Vec::new()
        }
        StackInput::Ids { table, .. } => project_vocabulary(weights, table.as_deref()),
    };
    let mut hiddens = pool::scratch((seq_len + 1) * width);
    hiddens[..width].copy_from_slice(&state.hidden);
    let mut cells = Vec::new();
    if weights.cell == CellKind::Lstm {
        cells = pool::scratch((seq_len + 1) * width);
        cells[..width].copy_from_slice(&state.cell);
    }
    let mut per_step = match weights.cell {
        CellKind::Rnn => Vec::new(),
        CellKind::Lstm | CellKind::Gru => pool::scratch(rows * h),
    };
    // GRU: a step's hidden projection, kept apart from the input's for the reset gate to scale.
    let mut projected = match weights.cell {
        CellKind::Gru => pool::scratch(batch * g),
        _ => Vec::new(),
    };
    // Read once per step: packed once per chunk.
    let recurrent = Packed::new(&weights.weight_hh, (g, 1), h, g);
    for t in 0..seq_len {
        let step_gates = &mut gates[t * batch * g..(t + 1) * batch * g];
        match &input {
            StackInput::Rows(_) => {
                for row in step_gates.chunks_exact_mut(g) {
                    add_into(row, &bias);
                }
            }
            StackInput::Ids { ids, .. } => {
                let step_ids = &ids[t * batch..(t + 1) * batch];
                for (row, &id) in step_gates.chunks_exact_mut(g).zip(step_ids) {
                    row.copy_from_slice(&projected_ids[id * g..(id + 1) * g]);
                }
            }
        }
        let (done, next) = hiddens.split_at_mut((t + 1) * width);
        let previous = &done[t * width..];
        let (previous_cells, next_cells) = match weights.cell {
            CellKind::Lstm => {
                let (done, rest) = cells.split_at_mut((t + 1) * width);
                (&done[t * width..], &mut rest[..width])
            }
            _ => (&[][..], &mut [][..]),
        };
        let per_step = match weights.cell {
            CellKind::Rnn => &mut [][..],
            _ => &mut per_step[t * width..(t + 1) * width],
        };
        recurrent_step(
            weights.cell,
            (batch, h),
            (previous, previous),
            &recurrent,
            &weights.bias_hh,
            step_gates,
            &mut projected,
            (previous_cells, next_cells),
            per_step,
            &mut next[..width],
        );
    }
    pool::recycle(projected);
    pool::recycle(projected_ids);
    LayerTape {
        cell: weights.cell,
        d_hidden: h,
        input,
        gates,
        cells,
        per_step,
        hiddens,
    }
}

/// The recurrent part of one step of a layer over `batch` rows, for the units whose gate
/// columns `recurrent` (`W_hh`, packed) holds: every unit, or one thread's share. Adds
/// `previous.0` (`[batch, d_hidden]`, the whole layer's hidden vectors) times `recurrent` to the
/// step's input projection `step_gates` (`[batch, G u]`), runs the gate arithmetic, and writes
/// the units' new hidden values (`[batch, u]`) into `next`. `previous.1` holds the units' own
/// previous values (GRU), `bias_hh` their `b_hh` (GRU), `projected` room for their hidden
/// projection (GRU), `cells` their previous and new cells (LSTM), `per_step` what the backward
/// pass keeps of the step (LSTM, GRU).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn recurrent_step(
    cell: CellKind,
    (batch, d_hidden): (usize, usize),
    previous: (&[f32], &[f32]),
    recurrent: &Packed,
    bias_hh: &[f32],
    step_gates: &mut [f32],
    projected: &mut [f32],
    cells: (&[f32], &mut [f32]),
    per_step: &mut [f32],
    next: &mut [f32],
) {
    let g = step_gates.len() / batch.max(1);
    let u = next.len() / batch.max(1);
    // A thread's share of no units (a layer of one unit, halved) has nothing to step.
    if u == 0 {
        return;
    }
    let product = |out: &mut [f32]| {
        matmul(
            (batch, d_hidden, g),
            previous.0,
            (d_hidden, 1),
            Right::Packed(recurrent),
            true,
            out,
        )
    };
    match cell {
        CellKind::Rnn => {
            product(step_gates);
            for (out, &pre) in next.iter_mut().zip(step_gates.iter()) {
                *out = tanh(pre);
            }
        }
        CellKind::Lstm => {
            product(step_gates);
            lstm_step(step_gates, cells.0, cells.1, per_step, next, u);
        }
        CellKind::Gru => {
            for row in projected.chunks_exact_mut(g.max(1)) {
                row.copy_from_slice(bias_hh);
            }
            product(projected);
            gru_step(step_gates, projected, previous.1, per_step, next, u);
        }
    }
}

dispatch_simd!(
    layer_backward,
    layer_backward_avx512,
    layer_backward_avx2,
    layer_backward_portable,
    (
        weights: &LayerWeights,
        tape: &LayerTape,
        d_output: &[f32],
        seq_len: usize,
        batch: usize,
        input_gradient: bool
    ) -> (LayerGradients, Option<Vec<f32>>)
);

/// One layer's backward pass: from the gradient of its outputs (`[seq_len * batch, H]`) to its
/// weight gradients and the gradient of its input. The state after the chunk gets no gradient
/// (truncated backpropagation cuts there).
#[inline(always)]
fn layer_backward_portable(
    weights: &LayerWeights,
    tape: &LayerTape,
    d_output: &[f32],
    seq_len: usize,
    batch: usize,
    input_gradient: bool,
) -> (LayerGradients, Option<Vec<f32>>) {
    let (d_in, h, g) = (weights.d_input, weights.d_hidden, weights.gates());
    let width = batch * h;
    let rows = seq_len * batch;
    let gru = weights.cell == CellKind::Gru;
    // The gradient of a step's input projection, gate by gate, and for every step the same laid
    // out for the weight products after the loop: set step by step while a step's rows are in
    // the cache, as are the bias sums and the per-character sums below.
    let mut step_d_gates = pool::scratch(batch * g);
    let mut d_gates = Packed::unfilled(rows, g);
    // GRU: the gradient of the hidden projection, which differs from the input projection's in
    // the candidate block (the reset gate scales it).
    let mut step_d_projected = if gru {
        vec![0.0; batch * g]
    } else {
        Vec::new()
    };
    let mut d_projected = gru.then(|| Packed::unfilled(rows, g));
    let mut bias_ih = vec![0.0; g];
    let mut bias_hh = if gru { vec![0.0; g] } else { Vec::new() };
    // Id inputs: the rows of dG summed per character, through which every product with the
    // input goes.
    let mut per_id = match &tape.input {
        StackInput::Ids { table, .. } => {
            vec![0.0; StackInput::vocab_size(table.as_deref(), d_in) * g]
        }
        StackInput::Rows(_) => Vec::new(),
    };
    let one_hot = matches!(tape.input, StackInput::Ids { table: None, .. });
    let input_gradient = input_gradient && !one_hot;
    // Dense rows: dX = dG W_ih^T, step by step; ids: the table's gradient after the loop.
    let weight_ih_t = input_gradient.then(|| Packed::new(&weights.weight_ih, (1, g), g, d_in));
    let mut d_input = match (&tape.input, input_gradient) {
        (StackInput::Rows(_), true) => pool::scratch(rows * d_in),
        _ => Vec::new(),
    };
    let mut d_hidden = vec![0.0; width];
    let mut d_cell = match weights.cell {
        CellKind::Lstm => vec![0.0; width],
        _ => Vec::new(),
    };
    // W_hh^T, read once per step.
    let recurrent_t = Packed::new(&weights.weight_hh, (1, g), g, h);
    for t in (0..seq_len).rev() {
        let gate_span = t * batch * g..(t + 1) * batch * g;
        let span = t * width..(t + 1) * width;
        let d_out = &d_output[span.clone()];
        // Where dL/dh_{t-1} = (gradient of the hidden projection) W_hh^T comes from.
        match weights.cell {
            CellKind::Rnn => {
                let outputs = &tape.hiddens[span.end..span.end + width];
                for (k, d) in step_d_gates.iter_mut().enumerate() {
                    let dh = d_hidden[k] + d_out[k];
                    *d = dh * (1.0 - outputs[k] * outputs[k]);
                }
            }
            CellKind::Lstm => lstm_step_backward(
                &tape.gates[gate_span.clone()],
                &tape.cells[span.clone()],
                &tape.per_step[span.clone()],
                d_out,
                &d_hidden,
                &mut d_cell,
                &mut step_d_gates,
                h,
            ),
            CellKind::Gru => gru_step_backward(
                &tape.gates[gate_span.clone()],
                &tape.per_step[span.clone()],
                &tape.hiddens[span],
                d_out,
                &mut d_hidden,
                &mut step_d_gates,
                &mut step_d_projected,
                h,
            ),
        }
        d_gates.set_rows(t * batch, &step_d_gates);
        for row in step_d_gates.chunks_exact(g) {
            add_into(&mut bias_ih, row);
        }
        if let Some(d_projected) = &mut d_projected {
            d_projected.set_rows(t * batch, &step_d_projected);
            for row in step_d_projected.chunks_exact(g) {
                add_into(&mut bias_hh, row);
            }
        }
        if let StackInput::Ids { ids, .. } = &tape.input {
            let step_ids = &ids[t * batch..(t + 1) * batch];
            for (row, &id) in step_d_gates.chunks_exact(g).zip(step_ids) {
                add_into(&mut per_id[id * g..(id + 1) * g], row);
            }
        }
        if let (Some(weight_ih_t), StackInput::Rows(_)) = (&weight_ih_t, &tape.input) {
            matmul(
                (batch, g, d_in),
                &step_d_gates,
                (g, 1),
                Right::Packed(weight_ih_t),
                false,
                &mut d_input[t * batch * d_in..(t + 1) * batch * d_in],
            );
        }
        let d_recurrent = if gru {
            &step_d_projected
        } else {
            &step_d_gates
        };
        matmul(
            (batch, g, h),
            d_recurrent,
            (g, 1),
            Right::Packed(&recurrent_t),
            // GRU: `d_hidden` holds the direct part of the gradient already.
            gru,
            &mut d_hidden,
        );
    }
    pool::recycle(step_d_gates);
    if !gru {
        bias_hh = bias_ih.clone();
    }
    let mut gradients = LayerGradients {
        weight_ih: vec![0.0; d_in * g],
        weight_hh: vec![0.0; h * g],
        bias_ih,
        bias_hh,
    };
    // W_ih' = X^T dG, W_hh' = H_prev^T dG over every step at once.
    match &tape.input {
        StackInput::Rows(input) => matmul(
            (d_in, rows, g),
            input,
            (1, d_in),
            Right::Packed(&d_gates),
            false,
            &mut gradients.weight_ih,
        ),
        // W_ih' = X^T dG = T^T (per-character sums of dG).
        StackInput::Ids {
            table: Some(table), ..
        } => matmul(
            (d_in, per_id.len() / g, g),
            table,
            (1, d_in),
            Right::Rows(&per_id, g),
            false,
            &mut gradients.weight_ih,
        ),
        StackInput::Ids { table: None, .. } => gradients.weight_ih.copy_from_slice(&per_id),
    }
    matmul(
        (h, rows, g),
        &tape.hiddens[..rows * h],
        (1, h),
        Right::Packed(d_projected.as_ref().unwrap_or(&d_gates)),
        false,
        &mut gradients.weight_hh,
    );
    let d_input = match (&weight_ih_t, &tape.input) {
        (None, _) => None,
        (Some(_), StackInput::Rows(_)) => Some(d_input),
        // The table's gradient: (per-character sums of dG) W_ih^T.
        (Some(weight_ih_t), StackInput::Ids { .. }) => {
            let vocab = per_id.len() / g;
            let mut d_table = pool::scratch(vocab * d_in);
            matmul(
                (vocab, g, d_in),
                &per_id,
                (g, 1),
                Right::Packed(weight_ih_t),
                false,
                &mut d_table,
            );
            Some(d_table)
        }
    };
    (gradients, d_input)
}

/// An LSTM step backward: from the gradients arriving at `h_t` (`d_hidden`, from the step after,
/// and `d_out`, from above) and at `c_t` (`d_cell`, updated to `c_{t-1}`'s), the gradients of
/// the step's pre-activations `d_gates`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lstm_step_backward(
    gates: &[f32],
    previous_cells: &[f32],
    tanh_cells: &[f32],
    d_out: &[f32],
    d_hidden: &[f32],
    d_cell: &mut [f32],
    d_gates: &mut [f32],
    h: usize,
) {
    let rows = gates
        .chunks_exact(4 * h)
        .zip(d_gates.chunks_exact_mut(4 * h));
    for (row, (gate_row, d_row)) in rows.enumerate() {
        for j in 0..h {
            let index = row * h + j;
            let (i, f, c_hat, o) = (
                gate_row[j],
                gate_row[h + j],
                gate_row[2 * h + j],
                gate_row[3 * h + j],
            );
            let tanh_cell = tanh_cells[index];
            let dh = d_hidden[index] + d_out[index];
            let d_o = dh * tanh_cell;
            let dc = d_cell[index] + dh * o * (1.0 - tanh_cell * tanh_cell);
            d_row[j] = dc * c_hat * i * (1.0 - i);
            d_row[h + j] = dc * previous_cells[index] * f * (1.0 - f);
            d_row[2 * h + j] = dc * i * (1.0 - c_hat * c_hat);
            d_row[3 * h + j] = d_o * o * (1.0 - o);
            d_cell[index] = dc * f;
        }
    }
}

/// A GRU step backward: from the gradients arriving at `h_t` (`d_hidden`, from the step after,
/// and `d_out`, from above), the gradients of the step's input projections (`d_gates`) and
/// hidden projections (`d_projected`); `d_hidden` is left holding the direct part of `h_{t-1}`'s
/// gradient, `dh z`, for the hidden projection's part to be added to.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gru_step_backward(
    gates: &[f32],
    hidden_new: &[f32],
    previous: &[f32],
    d_out: &[f32],
    d_hidden: &mut [f32],
    d_gates: &mut [f32],
    d_projected: &mut [f32],
    h: usize,
) {
    let rows = gates
        .chunks_exact(3 * h)
        .zip(d_gates.chunks_exact_mut(3 * h))
        .zip(d_projected.chunks_exact_mut(3 * h));
    for (row, ((gate_row, d_row), d_projected_row)) in rows.enumerate() {
        for j in 0..h {
            let index = row * h + j;
            let (r, z, n) = (gate_row[j], gate_row[h + j], gate_row[2 * h + j]);
            let dh = d_hidden[index] + d_out[index];
            let d_new = dh * (1.0 - z) * (1.0 - n * n);
            let d_reset = d_new * hidden_new[index] * r * (1.0 - r);
            let d_update = dh * (previous[index] - n) * z * (1.0 - z);
            d_row[j] = d_reset;
            d_row[h + j] = d_update;
            d_row[2 * h + j] = d_new;
            d_projected_row[j] = d_reset;
            d_projected_row[h + j] = d_update;
            d_projected_row[2 * h + j] = d_new * r;
            d_hidden[index] = dh * z;
        }
    }
}

/// The forward pass of a stack of layers over the chunk `input` of the bottom layer from
/// `states` (one per layer, bottom first).
pub fn stack_forward(
    layers: &[LayerWeights],
    input: StackInput,
    states: &[HostState],
    seq_len: usize,
    batch: usize,
) -> StackTape {
    assert_eq!(layers.len(), states.len(), "one state per layer");
    let mut tapes: Vec<LayerTape> = Vec::with_capacity(layers.len());
    let mut below = input;
    for (k, (weights, state)) in layers.iter().zip(states).enumerate() {
        let tape = layer_forward(weights, below, state, seq_len, batch);
        below = StackInput::Rows(if k + 1 < layers.len() {
            pool::copied(&tape.hiddens[batch * weights.d_hidden..])
        } else {
            Vec::new()
        });
        tapes.push(tape);
    }
    StackTape {
        layers: tapes,
        seq_len,
        batch_size: batch,
    }
}

/// The backward pass of [`stack_forward`]: from the gradient of the top layer's outputs to every
/// layer's weight gradients (bottom first) and, if `input_gradient`, the gradient of the bottom
/// layer's input: of its rows (`[seq_len * batch, d_input]`) for [`StackInput::Rows`], of the
/// table (`[vocab_size, d_input]`) for ids with a table, and none for one-hot ids.
pub fn stack_backward(
    layers: &[LayerWeights],
    tape: &StackTape,
    d_output: Vec<f32>,
    input_gradient: bool,
) -> (Vec<LayerGradients>, Option<Vec<f32>>) {
    let mut gradients = Vec::with_capacity(layers.len());
    let mut d_above = Some(d_output);
    for (k, (weights, layer_tape)) in layers.iter().zip(&tape.layers).enumerate().rev() {
        let d_output = d_above
            .take()
            .expect("every layer above the bottom passes a gradient");
        let (layer_gradients, d_input) = layer_backward(
            weights,
            layer_tape,
            &d_output,
            tape.seq_len,
            tape.batch_size,
            k > 0 || input_gradient,
        );
        pool::recycle(d_output);
        gradients.push(layer_gradients);
        d_above = d_input;
    }
    gradients.reverse();
    (gradients, d_above)
}

/// The output layer of a character model, `logits = hidden W + b`, on host memory.
#[derive(Debug, Clone)]
pub struct HeadWeights {
    /// `W`, `[d_hidden, vocab_size]`.
    pub weight: Vec<f32>,
    /// `b`, `[vocab_size]`.
    pub bias: Vec<f32>,
}

/// The gradients of the head's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadGradients {
    /// `[d_hidden, vocab_size]`.
    pub weight: Vec<f32>,
    /// `[vocab_size]`.
    pub bias: Vec<f32>,
}

/// The head and the loss over a shard's rows.
#[derive(Debug)]
pub struct HeadStep {
    /// The sum of the rows' cross-entropies, in nats.
    pub loss_sum: f64,
    /// The gradient with respect to the head's input, `[rows, d_hidden]`.
    pub d_hidden: Vec<f32>,
    /// The gradients of the head's weights.
    pub gradients: HeadGradients,
}

dispatch_simd!(
    /// The cross-entropy of the head's logits for `hidden` (`[rows, d_hidden]`) against
    /// `targets` (one per row, each below the vocabulary size), and its backward pass. Every
    /// gradient is scaled by `scale`: the reciprocal of the whole batch's row count makes them
    /// gradients of the batch's mean loss, so that shards add up.
    pub head_loss,
    head_loss_avx512,
    head_loss_avx2,
    head_loss_portable,
    (head: &HeadWeights, hidden: &[f32], targets: &[usize], scale: f32) -> HeadStep
);

#[inline(always)]
fn head_loss_portable(
    head: &HeadWeights,
    hidden: &[f32],
    targets: &[usize],
    scale: f32,
) -> HeadStep {
    let vocab = head.bias.len();
    let d_hidden = head.weight.len() / vocab;
    let rows = targets.len();
    assert_eq!(hidden.len(), rows * d_hidden, "one target per row");
    let mut d_logits = pool::scratch(rows * vocab);
    matmul(
        (rows, d_hidden, vocab),
        hidden,
        (d_hidden, 1),
        Right::Rows(&head.weight, vocab),
        false,
        &mut d_logits,
    );
    // The bias, then softmax minus the one-hot target, in place of the logits.
    let mut loss_sum = 0.0f64;
    for (row, &target) in d_logits.chunks_exact_mut(vocab).zip(targets) {
        assert!(
            target < vocab,
            "target {target} outside a vocabulary of {vocab}"
        );
        add_into(row, &head.bias);
        let target_logit = row[target];
        let max = lanes(row, f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let sum = lanes(row, 0.0, |a, b| a + b);
        loss_sum += f64::from(max + sum.ln() - target_logit);
        let to_gradient = scale / sum;
        for v in row.iter_mut() {
            *v *= to_gradient;
        }
        row[target] -= scale;
    }
    let mut weight = vec![0.0; d_hidden * vocab];
    matmul(
        (d_hidden, rows, vocab),
        hidden,
        (1, d_hidden),
        Right::Rows(&d_logits, vocab),
        false,
        &mut weight,
    );
    let bias = column_sums(&d_logits, vocab);
    let weight_t = Packed::new(&head.weight, (1, vocab), vocab, d_hidden);
    let mut d_hidden_values = pool::scratch(rows * d_hidden);
    matmul(
        (rows, vocab, d_hidden),
        &d_logits,
        (vocab, 1),
        Right::Packed(&weight_t),
        false,
        &mut d_hidden_values,
    );
    pool::recycle(d_logits);
    HeadStep {
        loss_sum,
        d_hidden: d_hidden_values,
        gradients: HeadGradients { weight, bias },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic sequence of values in [-1, 1).
    pub(super) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    pub(super) fn layer(
        cell: CellKind,
        d_input: usize,
        d_hidden: usize,
        seed: u32,
    ) -> LayerWeights {
        let g = cell.num_gates() * d_hidden;
        LayerWeights {
            cell,
            weight_ih: values(d_input * g, seed),
            weight_hh: values(d_hidden * g, seed + 1),
            bias_ih: values(g, seed + 2),
            bias_hh: values(g, seed + 3),
            d_input,
            d_hidden,
        }
    }

    pub(super) fn state(cell: CellKind, width: usize, seed: u32) -> HostState {
        HostState {
            hidden: values(width, seed),
            cell: match cell {
                CellKind::Lstm => values(width, seed + 1),
                _ => Vec::new(),
            },
        }
    }

    /// The weight tensors of a layer, in a fixed order.
    fn tensors_mut(weights: &mut LayerWeights) -> [&mut Vec<f32>; 4] {
        [
            &mut weights.weight_ih,
            &mut weights.weight_hh,
            &mut weights.bias_ih,
            &mut weights.bias_hh,
        ]
    }

    fn gradient_tensors(gradients: &LayerGradients) -> [&Vec<f32>; 4] {
        [
            &gradients.weight_ih,
            &gradients.weight_hh,
            &gradients.bias_ih,
            &gradients.bias_hh,
        ]
    }

    /// `sum(output * probe)`: a loss whose gradient with respect to the output is `probe`.
    fn probed_loss(
        layers: &[LayerWeights],
        input: &[f32],
        states: &[HostState],
        t: usize,
        b: usize,
    ) -> f64 {
        let tape = stack_forward(layers, StackInput::Rows(input.to_vec()), states, t, b);
        let probe = values(tape.output().len(), 99);
        tape.output()
            .iter()
            .zip(&probe)
            .map(|(o, p)| (*o as f64) * (*p as f64))
            .sum()
    }

    fn assert_close(analytic: f32, numeric: f64, what: &str) {
        assert!(
            (analytic as f64 - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
            "{what}: analytic {analytic}, numeric {numeric}"
        );
    }

    /// Central differences of `f` at `eps`.
    fn central(eps: f32, f: impl Fn(f32) -> f64) -> f64 {
        (f(eps) - f(-eps)) / (2.0 * eps as f64)
    }

    #[test]
    fn gradients_match_central_differences() {
        let (t, b, d_in, h) = (4, 3, 5, 3);
        for cell in CellKind::ALL {
            let layers = vec![layer(cell, d_in, h, 1), layer(cell, h, h, 7)];
            let states: Vec<HostState> = (0..2).map(|k| state(cell, b * h, 20 + 2 * k)).collect();
            let input = values(t * b * d_in, 40);
            let tape = stack_forward(&layers, StackInput::Rows(input.clone()), &states, t, b);
            let probe = values(tape.output().len(), 99);
            let (gradients, d_input) = stack_backward(&layers, &tape, probe, true);
            let d_input = d_input.unwrap();

            for k in 0..layers.len() {
                for which in 0..4 {
                    let len = gradient_tensors(&gradients[k])[which].len();
                    for index in (0..len).step_by(5) {
                        let numeric = central(1e-2, |delta| {
                            let mut changed = layers.clone();
                            tensors_mut(&mut changed[k])[which][index] += delta;
                            probed_loss(&changed, &input, &states, t, b)
                        });
                        let analytic = gradient_tensors(&gradients[k])[which][index];
                        let what = format!("{cell} layer {k} tensor {which} [{index}]");
                        assert_close(analytic, numeric, &what);
                    }
                }
            }
            for index in 0..input.len() {
                let numeric = central(1e-2, |delta| {
                    let mut changed = input.clone();
                    changed[index] += delta;
                    probed_loss(&layers, &changed, &states, t, b)
                });
                assert_close(d_input[index], numeric, &format!("{cell} input [{index}]"));
            }
        }
    }

    #[test]
    fn head_gradients_match_central_differences() {
        let (rows, h, vocab) = (5, 4, 7);
        let head = HeadWeights {
            weight: values(h * vocab, 1),
            bias: values(vocab, 2),
        };
        let hidden = values(rows * h, 3);
        let targets = [0, 6, 3, 3, 1];
        let scale = 0.25;
        let step = head_loss(&head, &hidden, &targets, scale);
        let loss = |head: &HeadWeights, hidden: &[f32]| {
            f64::from(scale) * head_loss(head, hidden, &targets, scale).loss_sum
        };
        let exact: f64 = hidden
            .chunks_exact(h)
            .zip(&targets)
            .map(|(x, &target)| {
                let logits: Vec<f64> = (0..vocab)
                    .map(|v| {
                        f64::from(head.bias[v])
                            + (0..h)
                                .map(|j| f64::from(x[j]) * f64::from(head.weight[j * vocab + v]))
                                .sum::<f64>()
                    })
                    .collect();
                let total: f64 = logits.iter().map(|l| l.exp()).sum();
                total.ln() - logits[target]
            })
            .sum();
        assert!(
            (step.loss_sum - exact).abs() < 1e-4,
            "{} vs {exact}",
            step.loss_sum
        );
        for index in 0..head.weight.len() {
            let numeric = central(1e-2, |delta| {
                let mut changed = head.clone();
                changed.weight[index] += delta;
                loss(&changed, &hidden)
            });
            assert_close(
                step.gradients.weight[index],
                numeric,
                &format!("weight [{index}]"),
            );
        }
        for index in 0..vocab {
            let numeric = central(1e-2, |delta| {
                let mut changed = head.clone();
                changed.bias[index] += delta;
                loss(&changed, &hidden)
            });
            assert_close(
                step.gradients.bias[index],
                numeric,
                &format!("bias [{index}]"),
            );
        }
        for index in 0..hidden.len() {
            let numeric = central(1e-2, |delta| {
                let mut changed = hidden.clone();
                changed[index] += delta;
                loss(&head, &changed)
            });
            assert_close(step.d_hidden[index], numeric, &format!("hidden [{index}]"));
        }
    }

    /// Ids through a table, and one-hot ids, give what the same inputs give as dense rows: the
    /// outputs, every weight gradient, and the table's gradient as the rows' gradients summed
    /// per character.
    #[test]
    fn id_inputs_equal_their_dense_rows() {
        let (t, b, d_embed, vocab, h) = (6, 3, 4, 5, 3);
        let ids: Vec<usize> = (0..t * b).map(|i| (i * 7 + i / 4) % vocab).collect();
        let table = values(vocab * d_embed, 50);
        for cell in CellKind::ALL {
            for embedded in [true, false] {
                let d_in = if embedded { d_embed } else { vocab };
                let layers = vec![layer(cell, d_in, h, 11), layer(cell, h, h, 17)];
                let states: Vec<HostState> =
                    (0..2).map(|k| state(cell, b * h, 60 + 2 * k)).collect();
                let dense: Vec<f32> = ids
                    .iter()
                    .flat_map(|&id| match embedded {
                        true => table[id * d_embed..(id + 1) * d_embed].to_vec(),
                        false => (0..vocab).map(|v| f32::from(u8::from(v == id))).collect(),
                    })
                    .collect();
                let by_rows = stack_forward(&layers, StackInput::Rows(dense), &states, t, b);
                let input = StackInput::Ids {
                    ids: ids.clone(),
                    table: embedded.then(|| table.clone()),
                };
                let by_ids = stack_forward(&layers, input, &states, t, b);
                for (a, e) in by_ids.output().iter().zip(by_rows.output()) {
                    assert!((a - e).abs() < 1e-5, "{cell}: {a} vs {e}");
                }
                let probe = values(by_rows.output().len(), 70);
                let (row_gradients, d_rows) =
                    stack_backward(&layers, &by_rows, probe.clone(), true);
                let (id_gradients, d_table) = stack_backward(&layers, &by_ids, probe, true);
                for (k, (a, e)) in id_gradients.iter().zip(&row_gradients).enumerate() {
                    for (which, (a, e)) in gradient_tensors(a)
                        .into_iter()
                        .zip(gradient_tensors(e))
                        .enumerate()
                    {
                        for (a, e) in a.iter().zip(e) {
                            assert!(
                                (a - e).abs() < 1e-5,
                                "{cell} layer {k} tensor {which}: {a} vs {e}"
                            );
                        }
                    }
                }
                match embedded {
                    true => {
                        let mut expected = vec![0.0; vocab * d_embed];
                        for (row, &id) in d_rows.unwrap().chunks_exact(d_embed).zip(&ids) {
                            for (e, d) in expected[id * d_embed..].iter_mut().zip(row) {
                                *e += d;
                            }
                        }
                        for (a, e) in d_table.unwrap().iter().zip(&expected) {
                            assert!((a - e).abs() < 1e-5, "{cell} table: {a} vs {e}");
                        }
                    }
                    false => assert!(d_table.is_none()),
                }
            }
        }
    }

    #[test]
    fn shards_of_a_batch_add_up_to_the_whole_batch() {
        let (t, b, d_in, h) = (5, 4, 3, 4);
        for cell in CellKind::ALL {
            let layers = vec![layer(cell, d_in, h, 3)];
            let whole_state = state(cell, b * h, 5);
            let input = values(t * b * d_in, 8);
            let d_output = values(t * b * h, 9);
            let whole = stack_forward(
                &layers,
                StackInput::Rows(input.clone()),
                std::slice::from_ref(&whole_state),
                t,
                b,
            );
            let (whole_gradients, whole_d_input) =
                stack_backward(&layers, &whole, d_output.clone(), true);
            let whole_d_input = whole_d_input.unwrap();

            // Rows 0..1 and 1..4 of every step, run apart.
            let rows = |data: &[f32], width: usize, range: std::ops::Range<usize>| -> Vec<f32> {
                (0..t)
                    .flat_map(|step| {
                        data[(step * b + range.start) * width..(step * b + range.end) * width]
                            .to_vec()
                    })
                    .collect()
            };
            let mut summed: Option<LayerGradients> = None;
            for range in [0..1, 1..4] {
                let n = range.len();
                let span = |v: &Vec<f32>| -> Vec<f32> {
                    v.get(range.start * h..range.end * h)
                        .map_or_else(Vec::new, <[f32]>::to_vec)
                };
                let shard_state = HostState {
                    hidden: span(&whole_state.hidden),
                    cell: span(&whole_state.cell),
                };
                let tape = stack_forward(
                    &layers,
                    StackInput::Rows(rows(&input, d_in, range.clone())),
                    &[shard_state],
                    t,
                    n,
                );
                // Equal but for rounding: a one-row shard sums its products in another order.
                for (a, e) in tape
                    .output()
                    .iter()
                    .zip(&rows(whole.output(), h, range.clone()))
                {
                    assert!((a - e).abs() < 1e-6, "{cell}: {a} vs {e}");
                }
                let (gradients, d_input) =
                    stack_backward(&layers, &tape, rows(&d_output, h, range.clone()), true);
                let d_input = d_input.unwrap();
                let expected = rows(&whole_d_input, d_in, range.clone());
                for (a, e) in d_input.iter().zip(&expected) {
                    assert!((a - e).abs() < 1e-6, "{cell}: {a} vs {e}");
                }
                match &mut summed {
                    Some(sum) => sum.add(&gradients[0]),
                    None => summed = Some(gradients[0].clone()),
                }
            }
            let summed = summed.unwrap();
            for (part, whole) in gradient_tensors(&summed)
                .into_iter()
                .zip(gradient_tensors(&whole_gradients[0]))
            {
                for (a, e) in part.iter().zip(whole) {
                    assert!((a - e).abs() < 1e-5, "{cell}: {a} vs {e}");
                }
            }
        }
    }
}
