//! Whole-chunk LSTM kernels on host memory: the forward pass and backpropagation through time of
//! a stack of LSTM layers over a chunk of steps, on plain `f32` buffers.
//!
//! This is the fast path of training on a CPU. The plain path builds Burn's autodiff graph out of
//! a dozen small tensor operations per layer and step; here one matrix product projects the
//! inputs of the whole chunk, one per step advances the recurrence, the gate arithmetic of a step
//! is one loop, and the weight gradients of the chunk are three matrix products after the loop.
//! A caller may split the batch into shards and run them on threads of their own: the streams of
//! a batch are independent until their gradients are summed. The results equal the plain path's
//! (tests at the bottom, and in `ember-train` for whole training steps).
//!
//! Layouts: sequences are time-major and row-major, `[seq_len, batch_size, width]`; weights are
//! the layer's own (`[d_input, 4 * d_hidden]` and `[d_hidden, 4 * d_hidden]`, gates `i, f, g, o`).

use burn::tensor::Tensor;

mod gemm;
mod pool;
use gemm::matmul;

/// A float tensor's values, row-major, as `f32` host memory.
pub fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float values convert to f32")
}

/// The weights of one LSTM layer, as [`RecurrentLayer`](crate::RecurrentLayer) stores them.
#[derive(Debug, Clone)]
pub struct LstmWeights {
    /// `[d_input, 4 * d_hidden]`.
    pub weight_ih: Vec<f32>,
    /// `[d_hidden, 4 * d_hidden]`.
    pub weight_hh: Vec<f32>,
    /// `bias_ih + bias_hh`, `[4 * d_hidden]`: the two biases are always added together.
    pub bias: Vec<f32>,
    /// The input width.
    pub d_input: usize,
    /// The hidden width.
    pub d_hidden: usize,
}

/// The gradients of one layer's weights over a chunk. The two biases of a layer share one
/// gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmGradients {
    /// `[d_input, 4 * d_hidden]`.
    pub weight_ih: Vec<f32>,
    /// `[d_hidden, 4 * d_hidden]`.
    pub weight_hh: Vec<f32>,
    /// `[4 * d_hidden]`.
    pub bias: Vec<f32>,
}

impl LstmGradients {
    /// Adds `other` (another shard's gradients of the same layer) into these.
    pub fn add(&mut self, other: &LstmGradients) {
        for (sum, part) in [
            (&mut self.weight_ih, &other.weight_ih),
            (&mut self.weight_hh, &other.weight_hh),
            (&mut self.bias, &other.bias),
        ] {
            sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
    }
}

/// A layer's hidden and cell vectors, `[batch_size, d_hidden]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    /// The hidden vector.
    pub hidden: Vec<f32>,
    /// The cell vector.
    pub cell: Vec<f32>,
}

/// What a layer's forward pass keeps for its backward pass.
#[derive(Debug)]
struct LayerTape {
    d_hidden: usize,
    /// The layer's input, `[seq_len * batch, d_input]`.
    input: Vec<f32>,
    /// The gate activations `i, f, g, o` after their nonlinearities, `[seq_len * batch, 4H]`.
    gates: Vec<f32>,
    /// `c_{t-1}` of every step, then the final cell: `[(seq_len + 1) * batch, H]`.
    cells: Vec<f32>,
    /// `tanh(c_t)`, `[seq_len * batch, H]`.
    tanh_cells: Vec<f32>,
    /// `h_{t-1}` of every step, then the final hidden vector: `[(seq_len + 1) * batch, H]`.
    hiddens: Vec<f32>,
}

impl Drop for LayerTape {
    fn drop(&mut self) {
        for buffer in [
            &mut self.input,
            &mut self.gates,
            &mut self.cells,
            &mut self.tanh_cells,
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
                    cell: tape.cells[last].to_vec(),
                }
            })
            .collect()
    }
}

/// `data` (`[rows, cols]`, row-major) transposed, in a reused buffer.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = pool::zeros(data.len());
    for (r, row) in data.chunks_exact(cols).enumerate().take(rows) {
        for (c, &value) in row.iter().enumerate() {
            out[c * rows + r] = value;
        }
    }
    out
}

/// `e^x` to within 2 ulp for the `x` an activation sees, without branches or calls, so that
/// loops over it vectorize (libm's `expf` is a call per element, and was a fifth of the time).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN_2_HI: f32 = 0.693_145_75;
    const LN_2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in any float unit.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN_2_HI - n * LN_2_LO;
    // Taylor series of e^r to r^6: below 2e-7 relative error for |r| <= ln(2) / 2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

/// Defines `$name` as `$portable` compiled again for AVX-512 and for AVX2, and calls the widest
/// the CPU has: the loops of the kernels then vectorize 16 or 8 lanes wide instead of 4.
macro_rules! dispatch_simd {
    (
        $(#[$meta:meta])*
        $vis:vis $name:ident, $avx512:ident, $avx2:ident, $portable:ident,
        ($($arg:ident: $ty:ty),*) -> $ret:ty
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, the one feature the function is compiled for.
                    return unsafe { $avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, the one feature the function is compiled for.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        fn $avx512($($arg: $ty),*) -> $ret {
            $portable($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx2($($arg: $ty),*) -> $ret {
            $portable($($arg),*)
        }
    };
}

dispatch_simd!(
    layer_forward,
    layer_forward_avx512,
    layer_forward_avx2,
    layer_forward_portable,
    (weights: &LstmWeights, input: Vec<f32>, state: &HostState, seq_len: usize, batch: usize) -> LayerTape
);

/// One layer's forward pass over the chunk `input` (`[seq_len * batch, d_input]`) from `state`.
#[inline(always)]
fn layer_forward_portable(
    weights: &LstmWeights,
    input: Vec<f32>,
    state: &HostState,
    seq_len: usize,
    batch: usize,
) -> LayerTape {
    let (d_in, h) = (weights.d_input, weights.d_hidden);
    let g = 4 * h;
    let rows = seq_len * batch;
    let mut gates = pool::zeros(rows * g);
    for row in gates.chunks_exact_mut(g) {
        row.copy_from_slice(&weights.bias);
    }
    matmul(
        (rows, d_in, g),
        &input,
        (d_in, 1),
        &weights.weight_ih,
        g,
        true,
        &mut gates,
    );
    let width = batch * h;
    let mut cells = pool::zeros((seq_len + 1) * width);
    let mut hiddens = pool::zeros((seq_len + 1) * width);
    let mut tanh_cells = pool::zeros(seq_len * width);
    cells[..width].copy_from_slice(&state.cell);
    hiddens[..width].copy_from_slice(&state.hidden);
    for t in 0..seq_len {
        let step_gates = &mut gates[t * batch * g..(t + 1) * batch * g];
        let (done, next) = hiddens.split_at_mut((t + 1) * width);
        matmul(
            (batch, h, g),
            &done[t * width..],
            (h, 1),
            &weights.weight_hh,
            g,
            true,
            step_gates,
        );
        let (previous_cells, next_cells) = cells.split_at_mut((t + 1) * width);
        let previous_cells = &previous_cells[t * width..];
        let tanh_step = &mut tanh_cells[t * width..(t + 1) * width];
        for row in 0..batch {
            let gate_row = &mut step_gates[row * g..(row + 1) * g];
            let (sigmoid_if, rest) = gate_row.split_at_mut(2 * h);
            let (candidate, out) = rest.split_at_mut(h);
            for v in sigmoid_if.iter_mut().chain(out.iter_mut()) {
                *v = sigmoid(*v);
            }
            for v in candidate.iter_mut() {
                *v = tanh(*v);
            }
            let (i, f) = sigmoid_if.split_at(h);
            let span = row * h..(row + 1) * h;
            let cells_row = &mut next_cells[span.clone()];
            let tanh_row = &mut tanh_step[span.clone()];
            let hidden_row = &mut next[span.clone()];
            let previous_row = &previous_cells[span];
            for j in 0..h {
                let cell = f[j] * previous_row[j] + i[j] * candidate[j];
                let tanh_cell = tanh(cell);
                cells_row[j] = cell;
                tanh_row[j] = tanh_cell;
                hidden_row[j] = out[j] * tanh_cell;
            }
        }
    }
    LayerTape {
        d_hidden: h,
        input,
        gates,
        cells,
        tanh_cells,
        hiddens,
    }
}

dispatch_simd!(
    layer_backward,
    layer_backward_avx512,
    layer_backward_avx2,
    layer_backward_portable,
    (
        weights: &LstmWeights,
        tape: &LayerTape,
        d_output: &[f32],
        seq_len: usize,
        batch: usize,
        input_gradient: bool
    ) -> (LstmGradients, Option<Vec<f32>>)
);

/// One layer's backward pass: from the gradient of its outputs (`[seq_len * batch, H]`) to its
/// weight gradients and the gradient of its input. The state after the chunk gets no gradient
/// (truncated backpropagation cuts there).
#[inline(always)]
fn layer_backward_portable(
    weights: &LstmWeights,
    tape: &LayerTape,
    d_output: &[f32],
    seq_len: usize,
    batch: usize,
    input_gradient: bool,
) -> (LstmGradients, Option<Vec<f32>>) {
    let (d_in, h) = (weights.d_input, weights.d_hidden);
    let g = 4 * h;
    let width = batch * h;
    let rows = seq_len * batch;
    let mut d_gates = pool::zeros(rows * g);
    let mut d_hidden = vec![0.0; width];
    let mut d_cell = vec![0.0; width];
    let weight_hh_t = transpose(&weights.weight_hh, h, g);
    for t in (0..seq_len).rev() {
        let gates = &tape.gates[t * batch * g..(t + 1) * batch * g];
        let step_d_gates = &mut d_gates[t * batch * g..(t + 1) * batch * g];
        let previous_cells = &tape.cells[t * width..(t + 1) * width];
        let tanh_cells = &tape.tanh_cells[t * width..(t + 1) * width];
        let d_out = &d_output[t * width..(t + 1) * width];
        for row in 0..batch {
            let gate_row = &gates[row * g..(row + 1) * g];
            let d_row = &mut step_d_gates[row * g..(row + 1) * g];
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
        // dL/dh_{t-1} = dL/dgates_t W_hh^T.
        matmul(
            (batch, g, h),
            step_d_gates,
            (g, 1),
            &weight_hh_t,
            h,
            false,
            &mut d_hidden,
        );
    }
    let mut gradients = LstmGradients {
        weight_ih: vec![0.0; d_in * g],
        weight_hh: vec![0.0; h * g],
        bias: vec![0.0; g],
    };
    // W_ih' = X^T dG, W_hh' = H_prev^T dG over every step at once.
    matmul(
        (d_in, rows, g),
        &tape.input,
        (1, d_in),
        &d_gates,
        g,
        false,
        &mut gradients.weight_ih,
    );
    matmul(
        (h, rows, g),
        &tape.hiddens[..rows * h],
        (1, h),
        &d_gates,
        g,
        false,
        &mut gradients.weight_hh,
    );
    for row in d_gates.chunks_exact(g) {
        gradients
            .bias
            .iter_mut()
            .zip(row)
            .for_each(|(sum, d)| *sum += d);
    }
    pool::recycle(weight_hh_t);
    if !input_gradient {
        pool::recycle(d_gates);
        return (gradients, None);
    }
    let mut d_input = pool::zeros(rows * d_in);
    let weight_ih_t = transpose(&weights.weight_ih, d_in, g);
    matmul(
        (rows, g, d_in),
        &d_gates,
        (g, 1),
        &weight_ih_t,
        d_in,
        false,
        &mut d_input,
    );
    pool::recycle(weight_ih_t);
    pool::recycle(d_gates);
    (gradients, Some(d_input))
}

/// The forward pass of a stack of layers over the chunk `input` (`[seq_len * batch, d_input]`
/// of the bottom layer) from `states` (one per layer, bottom first).
pub fn stack_forward(
    layers: &[LstmWeights],
    input: Vec<f32>,
    states: &[HostState],
    seq_len: usize,
    batch: usize,
) -> StackTape {
    assert_eq!(layers.len(), states.len(), "one state per layer");
    let mut tapes: Vec<LayerTape> = Vec::with_capacity(layers.len());
    let mut below = input;
    for (weights, state) in layers.iter().zip(states) {
        let tape = layer_forward(weights, below, state, seq_len, batch);
        below = pool::copied(&tape.hiddens[batch * weights.d_hidden..]);
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
/// layer's input (one-hot inputs have no use for it).
pub fn stack_backward(
    layers: &[LstmWeights],
    tape: &StackTape,
    d_output: Vec<f32>,
    input_gradient: bool,
) -> (Vec<LstmGradients>, Option<Vec<f32>>) {
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
    let mut d_logits = pool::zeros(rows * vocab);
    for row in d_logits.chunks_exact_mut(vocab) {
        row.copy_from_slice(&head.bias);
    }
    matmul(
        (rows, d_hidden, vocab),
        hidden,
        (d_hidden, 1),
        &head.weight,
        vocab,
        true,
        &mut d_logits,
    );
    // Softmax minus the one-hot target, in place of the logits.
    let mut loss_sum = 0.0f64;
    for (row, &target) in d_logits.chunks_exact_mut(vocab).zip(targets) {
        assert!(
            target < vocab,
            "target {target} outside a vocabulary of {vocab}"
        );
        let target_logit = row[target];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
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
        &d_logits,
        vocab,
        false,
        &mut weight,
    );
    let mut bias = vec![0.0; vocab];
    for row in d_logits.chunks_exact(vocab) {
        bias.iter_mut().zip(row).for_each(|(sum, d)| *sum += d);
    }
    let weight_t = transpose(&head.weight, d_hidden, vocab);
    let mut d_hidden_values = pool::zeros(rows * d_hidden);
    matmul(
        (rows, vocab, d_hidden),
        &d_logits,
        (vocab, 1),
        &weight_t,
        d_hidden,
        false,
        &mut d_hidden_values,
    );
    pool::recycle(weight_t);
    pool::recycle(d_logits);
    HeadStep {
        loss_sum,
        d_hidden: d_hidden_values,
        gradients: HeadGradients { weight, bias },
    }
}

/// `out += x w` for a row vector `x` and a row-major `w: [x.len(), out.len()]`: one pass over
/// `w`, row by row, that vectorizes.
#[inline(always)]
fn add_vector_matrix(out: &mut [f32], x: &[f32], w: &[f32]) {
    let n = out.len();
    for (k, &a) in x.iter().enumerate() {
        if a != 0.0 {
            for (o, &weight) in out.iter_mut().zip(&w[k * n..(k + 1) * n]) {
                *o += a * weight;
            }
        }
    }
}

/// One stream of an LSTM character model stepped on the host: the fast path of sampling, where
/// a batch of one makes every tensor operation tiny and Burn's per-operation cost dominates.
#[derive(Debug, Clone)]
pub struct LstmStepper {
    /// `[vocab_size, d_embed]`, or `None` for one-hot inputs.
    embedding: Option<Vec<f32>>,
    layers: Vec<LstmWeights>,
    /// `[d_hidden, vocab_size]`.
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
    states: Vec<HostState>,
}

impl LstmStepper {
    /// A stepper from the model's weights (`embedding` `[vocab_size, d_embed]` or `None`; the
    /// head `[d_hidden, vocab_size]` and its bias) and each layer's state for one stream.
    pub fn new(
        embedding: Option<Vec<f32>>,
        layers: Vec<LstmWeights>,
        head_weight: Vec<f32>,
        head_bias: Vec<f32>,
        states: Vec<HostState>,
    ) -> Self {
        assert_eq!(layers.len(), states.len(), "one state per layer");
        LstmStepper {
            embedding,
            layers,
            head_weight,
            head_bias,
            states,
        }
    }

    /// Reads character `id` and returns the logits of the next one.
    pub fn step(&mut self, id: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the one feature the function is compiled for.
            return unsafe { self.step_avx2(id) };
        }
        self.step_portable(id)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn step_avx2(&mut self, id: usize) -> Vec<f32> {
        self.step_portable(id)
    }

    #[inline(always)]
    fn step_portable(&mut self, id: usize) -> Vec<f32> {
        let mut below: Vec<f32> = match &self.embedding {
            Some(table) => {
                let d_embed = self.layers[0].d_input;
                table[id * d_embed..(id + 1) * d_embed].to_vec()
            }
            None => {
                let mut one_hot = vec![0.0; self.layers[0].d_input];
                one_hot[id] = 1.0;
                one_hot
            }
        };
        for (weights, state) in self.layers.iter().zip(&mut self.states) {
            let h = weights.d_hidden;
            let mut gates = weights.bias.clone();
            add_vector_matrix(&mut gates, &below, &weights.weight_ih);
            add_vector_matrix(&mut gates, &state.hidden, &weights.weight_hh);
            for j in 0..h {
                let i = sigmoid(gates[j]);
                let f = sigmoid(gates[h + j]);
                let candidate = tanh(gates[2 * h + j]);
                let o = sigmoid(gates[3 * h + j]);
                let cell = f * state.cell[j] + i * candidate;
                state.cell[j] = cell;
                state.hidden[j] = o * tanh(cell);
            }
            below.clone_from(&state.hidden);
        }
        let mut logits = self.head_bias.clone();
        add_vector_matrix(&mut logits, &below, &self.head_weight);
        logits
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

    fn layer(d_input: usize, d_hidden: usize, seed: u32) -> LstmWeights {
        let g = 4 * d_hidden;
        LstmWeights {
            weight_ih: values(d_input * g, seed),
            weight_hh: values(d_hidden * g, seed + 1),
            bias: values(g, seed + 2),
            d_input,
            d_hidden,
        }
    }

    /// `sum(output * probe)`: a loss whose gradient with respect to the output is `probe`.
    fn probed_loss(
        layers: &[LstmWeights],
        input: &[f32],
        states: &[HostState],
        t: usize,
        b: usize,
    ) -> f64 {
        let tape = stack_forward(layers, input.to_vec(), states, t, b);
        let probe = values(tape.output().len(), 99);
        tape.output()
            .iter()
            .zip(&probe)
            .map(|(o, p)| (*o as f64) * (*p as f64))
            .sum()
    }

    #[test]
    fn gradients_match_central_differences() {
        let (t, b, d_in, h) = (4, 3, 5, 3);
        let layers = vec![layer(d_in, h, 1), layer(h, h, 7)];
        let states: Vec<HostState> = (0..2)
            .map(|k| HostState {
                hidden: values(b * h, 20 + k),
                cell: values(b * h, 30 + k),
            })
            .collect();
        let input = values(t * b * d_in, 40);
        let tape = stack_forward(&layers, input.clone(), &states, t, b);
        let probe = values(tape.output().len(), 99);
        let (gradients, d_input) = stack_backward(&layers, &tape, probe, true);
        let d_input = d_input.unwrap();

        let eps = 1e-2f32;
        let check = |analytic: f32, numeric: f64, what: &str| {
            assert!(
                (analytic as f64 - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
                "{what}: analytic {analytic}, numeric {numeric}"
            );
        };
        for k in 0..layers.len() {
            for which in 0..3 {
                let len = match which {
                    0 => layers[k].weight_ih.len(),
                    1 => layers[k].weight_hh.len(),
                    _ => layers[k].bias.len(),
                };
                for index in (0..len).step_by(5) {
                    let shifted = |delta: f32| {
                        let mut changed = layers.clone();
                        let slot = match which {
                            0 => &mut changed[k].weight_ih[index],
                            1 => &mut changed[k].weight_hh[index],
                            _ => &mut changed[k].bias[index],
                        };
                        *slot += delta;
                        probed_loss(&changed, &input, &states, t, b)
                    };
                    let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
                    let analytic = match which {
                        0 => gradients[k].weight_ih[index],
                        1 => gradients[k].weight_hh[index],
                        _ => gradients[k].bias[index],
                    };
                    check(
                        analytic,
                        numeric,
                        &format!("layer {k} tensor {which} [{index}]"),
                    );
                }
            }
        }
        for index in 0..input.len() {
            let shifted = |delta: f32| {
                let mut changed = input.clone();
                changed[index] += delta;
                probed_loss(&layers, &changed, &states, t, b)
            };
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
            check(d_input[index], numeric, &format!("input [{index}]"));
        }
    }

    #[test]
    fn shards_of_a_batch_add_up_to_the_whole_batch() {
        let (t, b, d_in, h) = (5, 4, 3, 4);
        let layers = vec![layer(d_in, h, 3)];
        let state = HostState {
            hidden: values(b * h, 5),
            cell: values(b * h, 6),
        };
        let input = values(t * b * d_in, 8);
        let d_output = values(t * b * h, 9);
        let whole = stack_forward(&layers, input.clone(), std::slice::from_ref(&state), t, b);
        let (whole_gradients, whole_d_input) =
            stack_backward(&layers, &whole, d_output.clone(), true);
        let whole_d_input = whole_d_input.unwrap();

        // Rows 0..1 and 1..4 of every step, run apart.
        let rows = |data: &[f32], width: usize, range: std::ops::Range<usize>| -> Vec<f32> {
            (0..t)
                .flat_map(|step| {
                    data[(step * b + range.start) * width..(step * b + range.end) * width].to_vec()
                })
                .collect()
        };
        let mut summed: Option<LstmGradients> = None;
        for range in [0..1, 1..4] {
            let n = range.len();
            let shard_state = HostState {
                hidden: state.hidden[range.start * h..range.end * h].to_vec(),
                cell: state.cell[range.start * h..range.end * h].to_vec(),
            };
            let tape = stack_forward(
                &layers,
                rows(&input, d_in, range.clone()),
                &[shard_state],
                t,
                n,
            );
            assert_eq!(
                tape.output(),
                rows(whole.output(), h, range.clone()).as_slice()
            );
            let (gradients, d_input) =
                stack_backward(&layers, &tape, rows(&d_output, h, range.clone()), true);
            let d_input = d_input.unwrap();
            let expected = rows(&whole_d_input, d_in, range.clone());
            for (a, e) in d_input.iter().zip(&expected) {
                assert!((a - e).abs() < 1e-6);
            }
            match &mut summed {
                Some(sum) => sum.add(&gradients[0]),
                None => summed = Some(gradients[0].clone()),
            }
        }
        let summed = summed.unwrap();
        for (a, e) in summed.weight_hh.iter().zip(&whole_gradients[0].weight_hh) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        for (a, e) in summed.bias.iter().zip(&whole_gradients[0].bias) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
    }
}
