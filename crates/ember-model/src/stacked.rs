//! A stack of recurrent layers with dropout between them.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

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
                RecurrentLayerConfig::new(self.cell, d_input, self.d_hidden).init(device)
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
        let steps: Vec<Tensor<2>> = input
            .swap_dims(0, 1)
            .iter_dim(0)
            .map(|step| step.squeeze_dim(0))
            .collect();
        let (outputs, state) = self.forward_steps(steps, state);
        (Tensor::stack(outputs, 1), state)
    }

    /// Runs a sequence given as one `[batch_size, d_input]` tensor per step, and returns the top
    /// layer's `[batch_size, d_hidden]` output per step.
    pub fn forward_steps(
        &self,
        inputs: Vec<Tensor<2>>,
        state: Option<RecurrentState>,
    ) -> (Vec<Tensor<2>>, RecurrentState) {
        let first = &self.layers[0];
        let projected = inputs
            .into_iter()
            .map(|input| first.project_input(input))
            .collect();
        self.forward_projected(projected, state)
    }

    /// Like [`forward_steps`](Self::forward_steps), with the bottom layer's input projection
    /// already done (see [`RecurrentLayer::project_input`] and
    /// [`RecurrentLayer::project_one_hot`]).
    pub fn forward_projected(
        &self,
        projected: Vec<Tensor<2>>,
        state: Option<RecurrentState>,
    ) -> (Vec<Tensor<2>>, RecurrentState) {
        self.forward_layers(projected, None, state)
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
        let first = &self.layers[0];
        let mut projected: Vec<Tensor<2>> = input
            .swap_dims(0, 1)
            .iter_dim(0)
            .map(|step| first.project_input(step.squeeze_dim(0)))
            .collect();
        let [batch_size, seq_length] = mask.dims();
        let mut masks: Vec<Tensor<2>> = (0..seq_length)
            .map(|t| mask.clone().slice([0..batch_size, t..t + 1]))
            .collect();
        if reverse {
            projected.reverse();
            masks.reverse();
        }
        let (mut outputs, state) = self.forward_layers(projected, Some(masks), state);
        if reverse {
            outputs.reverse();
        }
        (Tensor::stack(outputs, 1), state)
    }

    fn forward_layers(
        &self,
        projected: Vec<Tensor<2>>,
        masks: Option<Vec<Tensor<2>>>,
        state: Option<RecurrentState>,
    ) -> (Vec<Tensor<2>>, RecurrentState) {
        let batch_size = projected.first().map_or(0, |p| p.dims()[0]);
        let state = state.unwrap_or_else(|| {
            let device = projected
                .first()
                .map(Tensor::device)
                .expect("a sequence of at least one step");
            self.zero_state(batch_size, &device)
        });
        assert_eq!(state.num_layers(), self.num_layers(), "one state per layer");

        let mut final_states = Vec::with_capacity(self.num_layers());
        let mut layer_projected = projected;
        let mut outputs = Vec::new();
        for (k, (layer, mut layer_state)) in self.layers.iter().zip(state.layers).enumerate() {
            if k > 0 {
                layer_projected = outputs
                    .drain(..)
                    .map(|h| layer.project_input(self.dropout.forward(h)))
                    .collect();
            }
            outputs = Vec::with_capacity(layer_projected.len());
            for (t, step_projected) in layer_projected.drain(..).enumerate() {
                layer_state = match &masks {
                    Some(masks) => {
                        let next = layer.step_projected(step_projected, layer_state.clone());
                        hold_on_padding(next, layer_state, masks[t].clone())
                    }
                    None => layer.step_projected(step_projected, layer_state),
                };
                outputs.push(layer_state.hidden.clone());
            }
            final_states.push(layer_state);
        }
        (
            outputs,
            RecurrentState {
                layers: final_states,
            },
        )
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
                projected = layer.project_input(self.dropout.forward(below));
            }
            layers.push(layer.step_projected(projected.clone(), layer_state));
        }
        let output = layers[self.num_layers() - 1].hidden.clone();
        (output, RecurrentState { layers })
    }
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
