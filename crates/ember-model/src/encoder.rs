//! Reading a batch of sequences of different lengths: the many-to-one half of the seed's
//! process shapes, shared by the classifier, the tagger and the sequence-to-sequence encoder.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::ops::Kernel;
use crate::{CellKind, RecurrentState, StackedRecurrent, StackedRecurrentConfig};

/// Configuration to create a [`SequenceEncoder`] with [`SequenceEncoderConfig::init`].
#[derive(Config, Debug)]
pub struct SequenceEncoderConfig {
    /// How many distinct token ids the encoder reads.
    pub vocab_size: usize,
    /// The recurrence of every layer.
    pub cell: CellKind,
    /// The size of every layer's hidden state (per direction).
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
    /// Also read every sequence from its end back to its start, and join both readings.
    #[config(default = false)]
    pub bidirectional: bool,
    /// Which implementation of the recurrence runs: the device's choice, or the reference
    /// composition of tensor primitives.
    #[config(default = "Kernel::Auto")]
    pub kernel: Kernel,
}

/// Embeds token ids and reads them with a stack of recurrent layers, one row of a right-padded
/// batch at a time as far as the numbers go: a row's result does not depend on how much padding
/// the batch gave it.
///
/// When bidirectional, a second stack reads each row from its last real token back to its first
/// (Schuster & Paliwal, 1997); the two stacks are independent and only their outputs are joined,
/// so layer `k` of one direction never reads the other direction's layer `k - 1` (PyTorch's
/// `bidirectional=True` interleaves them).
///
/// Create it with [`SequenceEncoderConfig`].
#[derive(Module, Debug)]
pub struct SequenceEncoder {
    /// The token embedding.
    pub embedding: Embedding,
    /// The stack that reads left to right.
    pub forward_rnn: StackedRecurrent,
    /// The stack that reads right to left, when bidirectional.
    pub backward_rnn: Option<StackedRecurrent>,
}

/// What a [`SequenceEncoder`] read.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The output at every step, both directions joined: `[batch_size, seq_length, d_output]`;
    /// on padding, whatever the state held (use `mask`).
    pub outputs: Tensor<3>,
    /// 1 on real steps, 0 on padding: `[batch_size, seq_length]`.
    pub mask: Tensor<2>,
    /// The left-to-right stack's state after each row's last real step.
    pub state: RecurrentState,
    /// The top layer's final hidden vector, both directions joined (the backward one is its
    /// state after reading back to the first token): `[batch_size, d_output]`.
    pub summary: Tensor<2>,
}

impl SequenceEncoderConfig {
    /// Initializes a new [`SequenceEncoder`].
    pub fn init(&self, device: &Device) -> SequenceEncoder {
        let stack = || {
            StackedRecurrentConfig::new(self.cell, self.d_embed, self.d_hidden)
                .with_num_layers(self.num_layers)
                .with_dropout(self.dropout)
                .with_kernel(self.kernel)
                .init(device)
        };
        SequenceEncoder {
            embedding: EmbeddingConfig::new(self.vocab_size, self.d_embed).init(device),
            forward_rnn: stack(),
            backward_rnn: self.bidirectional.then(stack),
        }
    }
}

impl SequenceEncoder {
    /// The width of each output and of the summary: `d_hidden`, doubled when bidirectional.
    pub fn d_output(&self) -> usize {
        let directions = if self.backward_rnn.is_some() { 2 } else { 1 };
        self.forward_rnn.d_hidden() * directions
    }

    /// Reads a right-padded batch.
    ///
    /// # Shapes
    /// - ids: `[batch_size, seq_length]`; what follows a row's length is padding
    /// - lengths: `batch_size` entries, each between 1 and `seq_length`
    ///
    /// # Panics
    /// If a length is 0 or above `seq_length`.
    pub fn forward(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Encoded {
        let [batch_size, seq_length] = ids.dims();
        assert_eq!(lengths.len(), batch_size, "one length per row");
        let device = ids.device();
        let mask = length_mask(lengths, seq_length, &device);
        let embedded = self.embedding.forward(ids);

        let (forward_outputs, state) =
            self.forward_rnn
                .forward_masked(embedded.clone(), mask.clone(), None, false);
        let last_hidden =
            |state: &RecurrentState| state.layers[state.num_layers() - 1].hidden.clone();
        let (outputs, summary) = match &self.backward_rnn {
            None => (forward_outputs, last_hidden(&state)),
            Some(backward_rnn) => {
                let (backward_outputs, backward_state) =
                    backward_rnn.forward_masked(embedded, mask.clone(), None, true);
                (
                    Tensor::cat(vec![forward_outputs, backward_outputs], 2),
                    Tensor::cat(vec![last_hidden(&state), last_hidden(&backward_state)], 1),
                )
            }
        };
        Encoded {
            outputs,
            mask,
            state,
            summary,
        }
    }
}

/// How a [`SequenceEncoder`]'s outputs become one vector per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The final hidden vector (of both directions): the seed's many-to-one.
    #[default]
    Last,
    /// The mean of the outputs over the real steps.
    Mean,
    /// The element-wise maximum of the outputs over the real steps.
    Max,
}

impl Encoded {
    /// One vector per sequence, `[batch_size, d_output]`.
    pub fn pool(&self, pooling: Pooling) -> Tensor<2> {
        let [batch_size, seq_length, d_output] = self.outputs.dims();
        match pooling {
            Pooling::Last => self.summary.clone(),
            Pooling::Mean => {
                let mask = self.mask.clone().unsqueeze_dim::<3>(2);
                let total = (self.outputs.clone() * mask.clone()).sum_dim(1);
                let count = mask.sum_dim(1);
                (total / count).reshape([batch_size, d_output])
            }
            Pooling::Max => {
                let padding = self
                    .mask
                    .clone()
                    .lower_elem(0.5)
                    .unsqueeze_dim::<3>(2)
                    .expand([batch_size, seq_length, d_output]);
                // Outputs are bounded by tanh, so -1e4 never wins against a real step.
                self.outputs
                    .clone()
                    .mask_fill(padding, -1.0e4)
                    .max_dim(1)
                    .reshape([batch_size, d_output])
            }
        }
    }
}

/// 1.0 on the first `length` steps of each row, 0.0 after: `[lengths.len(), seq_length]`.
///
/// # Panics
/// If a length is 0 or above `seq_length`.
pub fn length_mask(lengths: &[usize], seq_length: usize, device: &Device) -> Tensor<2> {
    assert!(
        lengths.iter().all(|&len| (1..=seq_length).contains(&len)),
        "every length must be between 1 and the padded length {seq_length}: {lengths:?}"
    );
    let values: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..seq_length).map(move |t| if t < len { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_data(TensorData::new(values, [lengths.len(), seq_length]), device)
}
