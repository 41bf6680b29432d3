//! A stack of recurrent layers with dropout between them.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use crate::ops::{self, Kernel};
use crate::{CellKind, LayerState, RecurrentLayer, RecurrentLayerConfig, RecurrentState};

/// Configuration to create a [`StackedRecurrent`] with [`StackedRecurrentConfig::init`].
#[derive(Config, Debug)]
pub struct StackedRecurrentConfig {
    /// The recurrence every layer computes.
    pub cell: CellKind,
    /// The size of the input vector at each step.
    pub d_input: usize,
    /// The size of every layer's hidden state.
    pub d_hidden: usize,
    /// How many layers are stacked; layer `k >= 1` reads layer `k - 1`'s outputs.
    #[config(default = 1)]
    pub num_layers: usize,
    /// Dropout probability on the outputs of every layer but the last, in training only.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Which implementation of the recurrence runs: the device's choice, or the reference
    /// composition of tensor primitives.
    #[config(default = "Kernel::Auto")]
    pub kernel: Kernel,
}

/// A multi-layer unidirectional recurrent network, batch first, like `torch.nn.{RNN,LSTM,GRU}`
/// with `batch_first=True`: one weight set per layer, shared by every time step.
///
/// [`forward`](Self::forward) runs a whole sequence (what training differentiates through time);
/// [`step`](Self::step) runs one time step through every layer (streaming, sampling). Both give
/// the same numbers.
///
/// Create it with [`StackedRecurrentConfig`].
#[derive(Module, Debug)]
pub struct StackedRecurrent {
    /// The layers, bottom first.
    pub layers: Vec<RecurrentLayer>,
    /// Dropout between layers.
    pub dropout: Dropout,
}

impl StackedRecurrentConfig {
    /// Initializes a new [`StackedRecurrent`].
    ///
    /// # Panics
    /// If `num_layers` is 0 or `dropout` is outside `[0, 1)`.
    pub fn init(&self, device: &Device) -> StackedRecurrent {
        assert!(
            self.num_layers > 0,
            "a recurrent stack needs at least one layer"
        );
        let layers = (0..self.num_layers)
            .map(|k| {
                let d_input = if k == 0 { self.d_input } else { self.d_hidden };
                RecurrentLayerConfig::new(self.cell, d_input, self.d_hidden)
                    .with_kernel(self.kernel)
                    .init(device)
            })
            .collect();
        StackedRecurrent {
            layers,
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl StackedRecurrent {
    /// The recurrence of the layers.
    pub fn cell(&self) -> CellKind {
        self.layers[0].cell
    }

    /// The size of the hidden state.
    pub fn d_hidden(&self) -> usize {
        self.layers[0].d_hidden()
    }

    /// The size of the input vector.
    pub fn d_input(&self) -> usize {
        self.layers[0].d_input()
    }

    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// A zero state for `batch_size` streams.
    pub fn zero_state(&self, batch_size: usize, device: &Device) -> RecurrentState {
        RecurrentState::zeros(
            self.cell(),
            self.num_layers(),
            batch_size,
            self.d_hidden(),
            device,
        )
    }

    /// Runs a whole sequence.
    ///
    /// # Shapes
    /// - input: `[batch_size, seq_length, d_input]`
    /// - output: `[batch_size, seq_length, d_hidden]`, the top layer's hidden vector at each step
    /// - state: `num_layers` entries of `[batch_size, d_hidden]`; zeros when `None`
    pub fn forward(
        &self,
        input: Tensor<3>,
        state: Option<RecurrentState>,
    ) -> (Tensor<3>, RecurrentState) {
        let (outputs, state) = self.run(Bottom::Input(input.swap_dims(0, 1)), None, state);
        (outputs.swap_dims(0, 1), state)
    }

    /// Runs a sequence given as one `[batch_size, d_input]` tensor per step, and returns the top
    /// layer's `[batch_size, d_hidden]` output per step.
    pub fn forward_steps(
        &self,
        inputs: Vec<Tensor<2>>,
        state: Option<RecurrentState>,
    ) -> (Vec<Tensor<2>>, RecurrentState) {
        let (outputs, state) = self.run(Bottom::Input(Tensor::stack(inputs, 0)), None, state);
        (split_steps(outputs), state)
    }

    /// Like [`forward_steps`](Self::forward_steps), with the bottom layer's input projection
    /// already done (see [`RecurrentLayer::project_input`] and
    /// [`RecurrentLayer::project_one_hot`]).
    pub fn forward_projected(
        &self,
        projected: Vec<Tensor<2>>,
        state: Option<RecurrentState>,
    ) -> (Vec<Tensor<2>>, RecurrentState) {
        let (outputs, state) = self.forward_time_major(Tensor::stack(projected, 0), None, state);
        (split_steps(outputs), state)
    }

    /// Runs a right-padded batch: `mask` is 1 on a row's real steps and 0 on its padding, and a
    /// row's state does not move on padding, so its outputs and final state are the ones it
    /// would get alone. With `reverse`, every row is read from its last step back to its first
    /// (the backward half of a bidirectional network); padding then comes first and leaves the
    /// initial state untouched.
    ///
    /// # Shapes
    /// - input: `[batch_size, seq_length, d_input]`
    /// - mask: `[batch_size, seq_length]`, each row some ones followed by zeros
    /// - output: `[batch_size, seq_length, d_hidden]`, in input order; on padding, the state held
    ///   there
    pub fn forward_masked(
        &self,
        input: Tensor<3>,
        mask: Tensor<2>,
        state: Option<RecurrentState>,
        reverse: bool,
    ) -> (Tensor<3>, RecurrentState) {
        let (mut input, mut mask) = (input.swap_dims(0, 1), mask.swap_dims(0, 1));
        if reverse {
            input = input.flip([0]);
            mask = mask.flip([0]);
        }
        let (mut outputs, state) = self.run(Bottom::Input(input), Some(mask), state);
        if reverse {
            outputs = outputs.flip([0]);
        }
        (outputs.swap_dims(0, 1), state)
    }

    /// Runs the layers over a time-major chunk whose bottom input projection is done: each
    /// layer is one call of [`crate::ops::recurrence`], with dropout between layers.
    ///
    /// # Shapes
    /// - projected: `[seq_len, batch_size, num_gates * d_hidden]`
    /// - mask: `[seq_len, batch_size]`, 1 on real steps and 0 on padding
    /// - output: `[seq_len, batch_size, d_hidden]`, the top layer's hidden vectors
    pub fn forward_time_major(
        &self,
        projected: Tensor<3>,
        mask: Option<Tensor<2>>,
        state: Option<RecurrentState>,
    ) -> (Tensor<3>, RecurrentState) {
        self.run(Bottom::Projected(projected), mask, state)
    }

    /// Runs the layers over a time-major chunk, from the bottom layer's input or its projection.
    fn run(
        &self,
        bottom: Bottom,
        mask: Option<Tensor<2>>,
        state: Option<RecurrentState>,
    ) -> (Tensor<3>, RecurrentState) {
        let (Bottom::Input(first) | Bottom::Projected(first)) = &bottom;
        let [_, batch_size, _] = first.dims();
        let state = state.unwrap_or_else(|| self.zero_state(batch_size, &first.device()));
        assert_eq!(state.num_layers(), self.num_layers(), "one state per layer");
        let mut layers = self.layers.iter().zip(state.layers);
        let (bottom_layer, bottom_state) = layers.next().expect("a stack has a layer");
        // Moved into the op, not cloned: a second handle would make the host kernels copy it.
        let (mut outputs, bottom_final) = match bottom {
            Bottom::Input(input) => {
                bottom_layer.forward_sequence(input, bottom_state, mask.clone())
            }
            Bottom::Projected(projected) => {
                bottom_layer.forward_projected(projected, bottom_state, mask.clone())
            }
        };
        let mut final_states = vec![bottom_final];
        for (layer, layer_state) in layers {
            let below = ops::dropout(&self.dropout, outputs);
            let (layer_outputs, final_state) =
                layer.forward_sequence(below, layer_state, mask.clone());
            outputs = layer_outputs;
            final_states.push(final_state);
        }
        (
            outputs,
            RecurrentState {
                layers: final_states,
            },
        )
    }

    /// The same stack with every layer running `kernel`.
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        for layer in &mut self.layers {
            layer.kernel = kernel;
        }
        self
    }

    /// One time step through every layer.
    ///
    /// # Shapes
    /// - input: `[batch_size, d_input]`
    /// - output: `[batch_size, d_hidden]`, the top layer's new hidden vector
    pub fn step(&self, input: Tensor<2>, state: RecurrentState) -> (Tensor<2>, RecurrentState) {
        self.step_projected(self.layers[0].project_input(input), state)
    }

    /// One time step with the bottom layer's input projection already done.
    pub fn step_projected(
        &self,
        projected: Tensor<2>,
        state: RecurrentState,
    ) -> (Tensor<2>, RecurrentState) {
        let mut layers: Vec<LayerState> = Vec::with_capacity(self.num_layers());
        let mut projected = projected;
        for (k, (layer, layer_state)) in self.layers.iter().zip(state.layers).enumerate() {
            if k > 0 {
                let below = layers[k - 1].hidden.clone();
                projected = layer.project_input(ops::dropout(&self.dropout, below));
            }
            layers.push(layer.step_projected(projected.clone(), layer_state));
        }
        let output = layers[self.num_layers() - 1].hidden.clone();
        (output, RecurrentState { layers })
    }
}

/// The bottom input of [`StackedRecurrent::run`]: the sequence itself, `[seq_len, batch_size,
/// d_input]`, or its projection by the bottom layer, `[seq_len, batch_size, num_gates * d_hidden]`.
enum Bottom {
    Input(Tensor<3>),
    Projected(Tensor<3>),
}

/// The steps of a time-major `[seq_len, batch_size, width]` tensor, one `[batch_size, width]`
/// tensor each.
fn split_steps(sequence: Tensor<3>) -> Vec<Tensor<2>> {
    sequence
        .iter_dim(0)
        .map(|step| step.squeeze_dim(0))
        .collect()
}
