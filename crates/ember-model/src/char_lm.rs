//! The character-level language model: embedding, recurrent stack, vocabulary head.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::ops::{self, Kernel};
use crate::{CellKind, RecurrentState, StackedRecurrent, StackedRecurrentConfig, cross_entropy};

/// Configuration to create a [`CharLm`] with [`CharLmConfig::init`].
#[derive(Config, Debug)]
pub struct CharLmConfig {
    /// How many distinct characters the model reads and predicts.
    pub vocab_size: usize,
    /// The recurrence of every layer.
    pub cell: CellKind,
    /// The size of every layer's hidden state.
    pub d_hidden: usize,
    /// How many recurrent layers are stacked.
    #[config(default = 1)]
    pub num_layers: usize,
    /// The size of the learned character embedding; 0 feeds one-hot vectors, as the seed does.
    #[config(default = 0)]
    pub d_embed: usize,
    /// Dropout probability between recurrent layers, in training only.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Which implementation of the recurrence runs: the device's choice, or the reference
    /// composition of tensor primitives.
    #[config(default = "Kernel::Auto")]
    pub kernel: Kernel,
}

/// A character language model: `logits_t = head(rnn(embed(x))_t)`, the next-character
/// distribution after every prefix of the input.
///
/// The layout is the reference PyTorch module's (`embedding`, `rnn`, `head`), so its state dict
/// imports one to one (see [`crate::torch`]).
///
/// Create it with [`CharLmConfig`].
#[derive(Module, Debug)]
pub struct CharLm {
    /// The character embedding; `None` when inputs are one-hot.
    pub embedding: Option<Embedding>,
    /// The recurrent layers.
    pub rnn: StackedRecurrent,
    /// The projection of the top hidden vector onto the vocabulary.
    pub head: Linear,
}

impl CharLmConfig {
    /// Initializes a new [`CharLm`].
    pub fn init(&self, device: &Device) -> CharLm {
        let d_input = match self.d_embed {
            0 => self.vocab_size,
            d_embed => d_embed,
        };
        let embedding = (self.d_embed > 0)
            .then(|| EmbeddingConfig::new(self.vocab_size, self.d_embed).init(device));
        let rnn = StackedRecurrentConfig::new(self.cell, d_input, self.d_hidden)
            .with_num_layers(self.num_layers)
            .with_dropout(self.dropout)
            .with_kernel(self.kernel)
            .init(device);
        let head = LinearConfig::new(self.d_hidden, self.vocab_size).init(device);
        CharLm {
            embedding,
            rnn,
            head,
        }
    }
}

impl CharLm {
    /// The number of characters in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.head.weight.dims()[1]
    }

    /// A zero state for `batch_size` streams.
    pub fn zero_state(&self, batch_size: usize, device: &Device) -> RecurrentState {
        self.rnn.zero_state(batch_size, device)
    }

    /// The bottom layer's input projection of one step of ids.
    fn project_ids(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        let first = &self.rnn.layers[0];
        match &self.embedding {
            Some(embedding) => {
                let batch_size = ids.dims()[0];
                let embedded = embedding.forward(ids.unsqueeze_dim(1));
                first.project_input(embedded.reshape([batch_size as i64, -1]))
            }
            None => first.project_one_hot(ids),
        }
    }

    /// The next-character logits after every position of `ids`.
    ///
    /// # Shapes
    /// - ids: `[batch_size, seq_length]`, each below `vocab_size`
    /// - logits: `[batch_size, seq_length, vocab_size]`
    /// - state: carried in and out; zeros when `None`
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        state: Option<RecurrentState>,
    ) -> (Tensor<3>, RecurrentState) {
        // Time-major from here to the head: each step's rows are contiguous for the recurrence.
        let (outputs, state) =
            self.rnn
                .forward_time_major(self.project_sequence(ids.swap_dims(0, 1)), None, state);
        // The head reads every position as one matrix, `[seq_len * batch_size, d_hidden]`: one
        // product, where the batch-major view would be a product per stream.
        let [seq_len, batch_size, d_hidden] = outputs.dims();
        let logits = ops::linear(
            &self.head,
            outputs.reshape([seq_len * batch_size, d_hidden]),
        )
        .reshape([seq_len, batch_size, self.vocab_size()]);
        (logits.swap_dims(0, 1), state)
    }

    /// The bottom layer's input projection of time-major ids, `[seq_len, batch_size]` to
    /// `[seq_len, batch_size, num_gates * d_hidden]`.
    ///
    /// Where the vocabulary has fewer entries than the chunk has positions, the embedding table
    /// is projected once and its rows picked, as the one-hot input's rows of `W_ih` are: the same
    /// values, with a product over the vocabulary instead of over every position.
    fn project_sequence(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [seq_len, batch_size] = ids.dims();
        let first = &self.rnn.layers[0];
        let positions = seq_len * batch_size;
        let projected = match &self.embedding {
            Some(embedding) if self.vocab_size() >= positions => {
                return first.project_sequence(embedding.forward(ids));
            }
            Some(embedding) => first
                .project_input(embedding.weight.val())
                .select(0, ids.reshape([positions])),
            None => first.project_one_hot(ids.reshape([positions])),
        };
        let d_gates = projected.dims()[1];
        projected.reshape([seq_len, batch_size, d_gates])
    }

    /// One step: the logits after reading one character per stream.
    ///
    /// # Shapes
    /// - ids: `[batch_size]`
    /// - logits: `[batch_size, vocab_size]`
    pub fn step(&self, ids: Tensor<1, Int>, state: RecurrentState) -> (Tensor<2>, RecurrentState) {
        let (hidden, state) = self.rnn.step_projected(self.project_ids(ids), state);
        (self.head.forward(hidden), state)
    }

    /// The mean cross-entropy, in nats per character, of `logits` against `targets`.
    ///
    /// # Shapes
    /// - logits: `[batch_size, seq_length, vocab_size]`
    /// - targets: `[batch_size, seq_length]`
    /// - output: `[1]`
    pub fn loss(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [batch_size, seq_length, vocab_size] = logits.dims();
        let positions = batch_size * seq_length;
        cross_entropy(
            logits.reshape([positions, vocab_size]),
            targets.reshape([positions]),
        )
    }

    /// Runs `ids` and returns the mean cross-entropy against `targets` and the final state.
    pub fn forward_loss(
        &self,
        ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: Option<RecurrentState>,
    ) -> (Tensor<1>, RecurrentState) {
        let (logits, state) = self.forward(ids, state);
        (Self::loss(logits, targets), state)
    }
}
