//! Many-to-one: one decision per sequence.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::{Pooling, SequenceEncoder, SequenceEncoderConfig};

/// Configuration to create a [`SequenceClassifier`] with [`SequenceClassifierConfig::init`].
#[derive(Config, Debug)]
pub struct SequenceClassifierConfig {
    /// The encoder that reads each sequence.
    pub encoder: SequenceEncoderConfig,
    /// How many classes the classifier decides among.
    pub num_classes: usize,
    /// How the encoder's outputs become one vector: the final state, or the mean or maximum
    /// over the real steps.
    #[config(default = "Pooling::Last")]
    pub pooling: Pooling,
}

/// A sequence classifier: the seed's many-to-one shape, which reads a whole sequence and decides
/// from its final hidden state (or a pooling of every step's), `logits = head(pool(encoder(x)))`.
///
/// Sequences of different lengths share a right-padded batch; a sequence's logits are the same
/// whatever padding its batch has.
///
/// Create it with [`SequenceClassifierConfig`].
#[derive(Module, Debug)]
pub struct SequenceClassifier {
    /// Reads the sequence.
    pub encoder: SequenceEncoder,
    /// Maps the pooled vector to class logits.
    pub head: Linear,
    /// How the outputs are pooled.
    #[module(skip)]
    pub pooling: Pooling,
}

impl SequenceClassifierConfig {
    /// Initializes a new [`SequenceClassifier`].
    pub fn init(&self, device: &Device) -> SequenceClassifier {
        let encoder = self.encoder.init(device);
        let head = LinearConfig::new(encoder.d_output(), self.num_classes).init(device);
        SequenceClassifier {
            encoder,
            head,
            pooling: self.pooling,
        }
    }
}

impl SequenceClassifier {
    /// The class logits of every sequence.
    ///
    /// # Shapes
    /// - ids: `[batch_size, seq_length]`, right-padded
    /// - lengths: `batch_size` entries, each between 1 and `seq_length`
    /// - output: `[batch_size, num_classes]`
    pub fn forward(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        let encoded = self.encoder.forward(ids, lengths);
        self.head.forward(encoded.pool(self.pooling))
    }

    /// The most likely class of every sequence.
    pub fn predict(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Vec<usize> {
        let logits = self.forward(ids, lengths);
        crate::decode::argmax_rows(logits)
    }
}
