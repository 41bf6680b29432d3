//! One recurrent layer with fused gate weights.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Int, Tensor};

use ember_kernels::LayerWeights;

use crate::ops::host_values as host;
use crate::ops::{self, Kernel};
use crate::{CellKind, LayerState};

/// Configuration to create a [`RecurrentLayer`] with [`RecurrentLayerConfig::init`].
#[derive(Config, Debug)]
pub struct RecurrentLayerConfig {
    /// The recurrence the layer computes.
    pub cell: CellKind,
    /// The size of the input vector at each step.
    pub d_input: usize,
    /// The size of the hidden state.
    pub d_hidden: usize,
    /// Which implementation of the recurrence runs: the device's choice, or the reference
    /// composition of tensor primitives.
    #[config(default = "Kernel::Auto")]
    pub kernel: Kernel,
}

/// One layer of a recurrent network: the RNN, LSTM or GRU update with all gates fused.
///
/// The weights are stored input-major (`[d_input, num_gates * d_hidden]`) so that one matmul per
/// step computes every gate; the gate blocks follow PyTorch's row order (`i, f, g, o` for the
/// LSTM, `r, z, n` for the GRU), so `weight_ih` is the transpose of PyTorch's `weight_ih_l{k}`.
/// Initialised as PyTorch does, `U(-1/sqrt(d_hidden), 1/sqrt(d_hidden))` for every tensor.
///
/// Create it with [`RecurrentLayerConfig`].
#[derive(Module, Debug)]
pub struct RecurrentLayer {
    /// Input-to-gates weights, `[d_input, num_gates * d_hidden]`.
    pub weight_ih: Param<Tensor<2>>,
    /// Hidden-to-gates weights, `[d_hidden, num_gates * d_hidden]`.
    pub weight_hh: Param<Tensor<2>>,
    /// Bias added to the input projection, `[num_gates * d_hidden]`.
    pub bias_ih: Param<Tensor<1>>,
    /// Bias added to the hidden projection, `[num_gates * d_hidden]` (inside the reset product for
    /// the GRU's candidate gate).
    pub bias_hh: Param<Tensor<1>>,
    /// The recurrence.
    #[module(skip)]
    pub cell: CellKind,
    /// Which implementation of the recurrence runs (not part of the weights).
    #[module(skip)]
    pub kernel: Kernel,
}

impl RecurrentLayerConfig {
    /// Initializes a new [`RecurrentLayer`].
    pub fn init(&self, device: &Device) -> RecurrentLayer {
        let bound = 1.0 / (self.d_hidden as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let d_gates = self.cell.num_gates() * self.d_hidden;
        RecurrentLayer {
            weight_ih: init.init([self.d_input, d_gates], device),
            weight_hh: init.init([self.d_hidden, d_gates], device),
            bias_ih: init.init([d_gates], device),
            bias_hh: init.init([d_gates], device),
            cell: self.cell,
            kernel: self.kernel,
        }
    }
}

impl RecurrentLayer {
    /// The size of the input vector.
    pub fn d_input(&self) -> usize {
        self.weight_ih.dims()[0]
    }

    /// The size of the hidden state.
    pub fn d_hidden(&self) -> usize {
        self.weight_hh.dims()[0]
    }

    /// The weights as host buffers, for the sampler's host stepper.
    pub fn host_weights(&self) -> LayerWeights {
        LayerWeights {
            cell: self.cell,
            weight_ih: host(self.weight_ih.val()),
            weight_hh: host(self.weight_hh.val()),
            bias_ih: host(self.bias_ih.val()),
            bias_hh: host(self.bias_hh.val()),
            d_input: self.d_input(),
            d_hidden: self.d_hidden(),
        }
    }

    /// The input projection `x W_ih + b_ih` of every gate.
    ///
    /// # Shapes
    /// - input: `[batch_size, d_input]`
    /// - output: `[batch_size, num_gates * d_hidden]`
    pub fn project_input(&self, input: Tensor<2>) -> Tensor<2> {
        input.matmul(self.weight_ih.val()) + self.bias_ih.val().unsqueeze()
    }

    /// The input projection of one-hot inputs: rows of `W_ih` picked by id, which is what the
    /// matmul with a one-hot vector computes, without building the one-hot matrix.
    ///
    /// # Shapes
    /// - ids: `[batch_size]`, each below `d_input`
    /// - output: `[batch_size, num_gates * d_hidden]`
    pub fn project_one_hot(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        self.weight_ih.val().select(0, ids) + self.bias_ih.val().unsqueeze()
    }

    /// The input projection of a whole time-major chunk: one matrix product for every step.
    ///
    /// # Shapes
    /// - input: `[seq_len, batch_size, d_input]`
    /// - output: `[seq_len, batch_size, num_gates * d_hidden]`
    pub fn project_sequence(&self, input: Tensor<3>) -> Tensor<3> {
        self.multiply_sequence(input) + self.bias_ih.val().unsqueeze()
    }

    /// `x W_ih` of a whole time-major chunk, without the bias: one matrix product.
    fn multiply_sequence(&self, input: Tensor<3>) -> Tensor<3> {
        let [seq_len, batch_size, d_input] = input.dims();
        let product = ops::matmul(
            input.reshape([seq_len * batch_size, d_input]),
            self.weight_ih.val(),
        );
        let d_gates = product.dims()[1];
        product.reshape([seq_len, batch_size, d_gates])
    }

    /// The whole chunk through [`ops::recurrence`] from already projected inputs: the host
    /// kernels where the device has them and `kernel` allows, Burn's primitives elsewhere.
    ///
    /// # Shapes
    /// - projected: `[seq_len, batch_size, num_gates * d_hidden]`, time-major
    /// - mask: `[seq_len, batch_size]`, 1 on real steps and 0 on padding
    /// - output: `[seq_len, batch_size, d_hidden]`; state: `[batch_size, d_hidden]` per tensor
    pub fn forward_projected(
        &self,
        projected: Tensor<3>,
        state: LayerState,
        mask: Option<Tensor<2>>,
    ) -> (Tensor<3>, LayerState) {
        self.recur(projected, self.bias_hh.val(), state, mask)
    }

    /// The whole chunk from the layer's input: `x W_ih` in one product, then
    /// [`ops::recurrence`]. Where the cell adds both biases to the same pre-activations (tanh
    /// RNN, LSTM), `b_ih` joins `b_hh` inside the op instead of making a pass of its own over the
    /// projection, and its gradient comes from the op's instead of a reduction over every row;
    /// the GRU keeps them apart (its reset gate scales `b_hn` and not `b_in`).
    ///
    /// # Shapes
    /// - input: `[seq_len, batch_size, d_input]`, time-major
    /// - mask: `[seq_len, batch_size]`, 1 on real steps and 0 on padding
    /// - output: `[seq_len, batch_size, d_hidden]`; state: `[batch_size, d_hidden]` per tensor
    pub fn forward_sequence(
        &self,
        input: Tensor<3>,
        state: LayerState,
        mask: Option<Tensor<2>>,
    ) -> (Tensor<3>, LayerState) {
        let (projected, bias) = match self.cell {
            CellKind::Gru => (self.project_sequence(input), self.bias_hh.val()),
            _ => (
                self.multiply_sequence(input),
                self.bias_ih.val() + self.bias_hh.val(),
            ),
        };
        self.recur(projected, bias, state, mask)
    }

    /// [`ops::recurrence`] of this layer's cell and `W_hh` with the bias the op adds.
    fn recur(
        &self,
        projected: Tensor<3>,
        bias: Tensor<1>,
        state: LayerState,
        mask: Option<Tensor<2>>,
    ) -> (Tensor<3>, LayerState) {
        ops::recurrence(
            self.cell,
            projected,
            self.weight_hh.val(),
            bias,
            state,
            mask,
            self.kernel,
        )
    }

    /// One time step from an already projected input (see [`project_input`](Self::project_input)).
    ///
    /// # Shapes
    /// - projected: `[batch_size, num_gates * d_hidden]`
    /// - state and result: `[batch_size, d_hidden]` per tensor
    pub fn step_projected(&self, projected: Tensor<2>, state: LayerState) -> LayerState {
        ops::reference::step(
            self.cell,
            projected,
            self.weight_hh.val(),
            self.bias_hh.val(),
            state,
        )
    }

    /// One time step.
    ///
    /// # Shapes
    /// - input: `[batch_size, d_input]`
    /// - state and result: `[batch_size, d_hidden]` per tensor
    pub fn step(&self, input: Tensor<2>, state: LayerState) -> LayerState {
        self.step_projected(self.project_input(input), state)
    }
}
