//! One-to-many: a fixed-size vector starts the hidden state, which then writes a sequence.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Int, Tensor};

use crate::ops::Kernel;
use crate::{
    CellKind, DecodeConfig, Hypothesis, LayerState, RecurrentState, StackedRecurrent,
    StackedRecurrentConfig, StepLoss, masked_cross_entropy,
};

/// Configuration to create a [`SequenceDecoder`] with [`SequenceDecoderConfig::init`].
#[derive(Config, Debug)]
pub struct SequenceDecoderConfig {
    /// How many distinct token ids the decoder reads and writes.
    pub vocab_size: usize,
    /// The recurrence of every layer.
    pub cell: CellKind,
    /// The size of every layer's hidden state.
    pub d_hidden: usize,
    /// The size of the token embedding.
    #[config(default = 32)]
    pub d_embed: usize,
    /// How many recurrent layers are stacked.
    #[config(default = 1)]
    pub num_layers: usize,
    /// Dropout probability between recurrent layers, in training only.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Which implementation of the recurrence runs: the device's choice, or the reference
    /// composition of tensor primitives.
    #[config(default = "Kernel::Auto")]
    pub kernel: Kernel,
}

/// A token decoder: from a given state, reads the previous token and predicts the next,
/// `logits_t = head(rnn(embed(y_{t-1}))_t)`. Trained with teacher forcing
/// ([`forward`](Self::forward) on the target shifted right); writes with
/// [`greedy`](Self::greedy) or [`beam_search`](Self::beam_search).
///
/// Create it with [`SequenceDecoderConfig`].
#[derive(Module, Debug)]
pub struct SequenceDecoder {
    /// The token embedding.
    pub embedding: Embedding,
    /// The recurrent layers.
    pub rnn: StackedRecurrent,
    /// Maps the top hidden vector to next-token logits.
    pub head: Linear,
}

impl SequenceDecoderConfig {
    /// Initializes a new [`SequenceDecoder`].
    pub fn init(&self, device: &Device) -> SequenceDecoder {
        SequenceDecoder {
            embedding: EmbeddingConfig::new(self.vocab_size, self.d_embed).init(device),
            rnn: StackedRecurrentConfig::new(self.cell, self.d_embed, self.d_hidden)
                .with_num_layers(self.num_layers)
                .with_dropout(self.dropout)
                .with_kernel(self.kernel)
                .init(device),
            head: LinearConfig::new(self.d_hidden, self.vocab_size).init(device),
        }
    }
}

impl SequenceDecoder {
    /// The next-token logits after every input token, from `state`.
    ///
    /// # Shapes
    /// - ids: `[batch_size, seq_length]`
    /// - logits: `[batch_size, seq_length, vocab_size]`
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        state: RecurrentState,
    ) -> (Tensor<3>, RecurrentState) {
        let (outputs, state) = self.rnn.forward(self.embedding.forward(ids), Some(state));
        (self.head.forward(outputs), state)
    }

    /// One step: the next-token logits after reading one token per row.
    ///
    /// # Shapes
    /// - ids: `[batch_size]`
    /// - logits: `[batch_size, vocab_size]`
    pub fn step(&self, ids: Tensor<1, Int>, state: RecurrentState) -> (Tensor<2>, RecurrentState) {
        let batch_size = ids.dims()[0];
        let embedded = self
            .embedding
            .forward(ids.unsqueeze_dim(1))
            .reshape([batch_size as i64, -1]);
        let (hidden, state) = self.rnn.step(embedded, state);
        (self.head.forward(hidden), state)
    }
}

/// Configuration to create a [`Bridge`] with [`BridgeConfig::init`].
#[derive(Config, Debug)]
pub struct BridgeConfig {
    /// The size of the vector the state is made from.
    pub d_input: usize,
    /// The recurrence of the stack the state is for.
    pub cell: CellKind,
    /// That stack's hidden size.
    pub d_hidden: usize,
    /// That stack's number of layers.
    pub num_layers: usize,
}

/// Makes the initial state of a recurrent stack from a vector:
/// `h_0^(k) = tanh(W_k v + b_k)` for every layer `k` (and the LSTM's `c_0^(k)` likewise), so an
/// encoder of one cell type and size can start a decoder of another.
///
/// Create it with [`BridgeConfig`].
#[derive(Module, Debug)]
pub struct Bridge {
    /// One projection for every state tensor of every layer, side by side.
    pub linear: Linear,
    /// The recurrence of the target stack.
    #[module(skip)]
    pub cell: CellKind,
    /// The number of layers of the target stack.
    #[module(skip)]
    pub num_layers: usize,
}

impl BridgeConfig {
    /// Initializes a new [`Bridge`].
    pub fn init(&self, device: &Device) -> Bridge {
        let per_layer = if self.cell.has_cell_state() { 2 } else { 1 };
        let d_output = self.num_layers * per_layer * self.d_hidden;
        Bridge {
            linear: LinearConfig::new(self.d_input, d_output).init(device),
            cell: self.cell,
            num_layers: self.num_layers,
        }
    }
}

impl Bridge {
    /// The state for a batch of vectors.
    ///
    /// # Shapes
    /// - vector: `[batch_size, d_input]`
    pub fn forward(&self, vector: Tensor<2>) -> RecurrentState {
        let per_layer = if self.cell.has_cell_state() { 2 } else { 1 };
        let mut parts = tanh(self.linear.forward(vector))
            .chunk(self.num_layers * per_layer, 1)
            .into_iter();
        let layers = (0..self.num_layers)
            .map(|_| LayerState {
                hidden: parts.next().expect("one part per state tensor"),
                cell: self
                    .cell
                    .has_cell_state()
                    .then(|| parts.next().expect("one part per state tensor")),
            })
            .collect();
        RecurrentState { layers }
    }
}

/// Configuration to create a [`ConditionedGenerator`] with [`ConditionedGeneratorConfig::init`].
#[derive(Config, Debug)]
pub struct ConditionedGeneratorConfig {
    /// The size of the conditioning vector.
    pub d_condition: usize,
    /// The decoder that writes the sequence.
    pub decoder: SequenceDecoderConfig,
}

/// A conditioned generator: the seed's one-to-many shape. A fixed-size vector sets the hidden
/// state (through a learned [`Bridge`]), which then evolves to write a sequence of any length,
/// up to an end token or a length limit.
///
/// Create it with [`ConditionedGeneratorConfig`].
#[derive(Module, Debug)]
pub struct ConditionedGenerator {
    /// Makes the decoder's initial state from the condition.
    pub bridge: Bridge,
    /// Writes the sequence.
    pub decoder: SequenceDecoder,
}

impl ConditionedGeneratorConfig {
    /// Initializes a new [`ConditionedGenerator`].
    pub fn init(&self, device: &Device) -> ConditionedGenerator {
        let decoder = &self.decoder;
        ConditionedGenerator {
            bridge: BridgeConfig::new(
                self.d_condition,
                decoder.cell,
                decoder.d_hidden,
                decoder.num_layers,
            )
            .init(device),
            decoder: decoder.init(device),
        }
    }
}

impl ConditionedGenerator {
    /// The size of the conditioning vector.
    pub fn d_condition(&self) -> usize {
        self.bridge.linear.weight.dims()[0]
    }

    /// The next-token logits under teacher forcing.
    ///
    /// # Shapes
    /// - condition: `[batch_size, d_condition]`
    /// - inputs: `[batch_size, seq_length]`, the start mark then the target without its end
    /// - logits: `[batch_size, seq_length, vocab_size]`
    pub fn forward(&self, condition: Tensor<2>, inputs: Tensor<2, Int>) -> Tensor<3> {
        let state = self.bridge.forward(condition);
        self.decoder.forward(inputs, state).0
    }

    /// The teacher-forced loss over the real steps of the targets.
    ///
    /// # Shapes
    /// - targets: `[batch_size, seq_length]`, the target then its end mark, padded
    /// - mask: `[batch_size, seq_length]`, 1 up to and including the end mark
    pub fn forward_loss(
        &self,
        condition: Tensor<2>,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        mask: Tensor<2>,
    ) -> Tensor<1> {
        masked_cross_entropy(
            self.forward(condition, inputs),
            targets,
            mask,
            StepLoss::Mean,
        )
    }

    /// Writes one sequence per condition (greedy, or the best of a beam search).
    pub fn generate(&self, condition: Tensor<2>, config: &DecodeConfig) -> Vec<Hypothesis> {
        self.decoder.decode(self.bridge.forward(condition), config)
    }
}
