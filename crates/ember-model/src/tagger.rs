//! Many-to-many: one label per input step.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::{SequenceEncoder, SequenceEncoderConfig, StepLoss, masked_cross_entropy};

/// Configuration to create a [`SequenceTagger`] with [`SequenceTaggerConfig::init`].
#[derive(Config, Debug)]
pub struct SequenceTaggerConfig {
    /// The encoder that reads each sequence.
    pub encoder: SequenceEncoderConfig,
    /// How many tags each step is labelled with one of.
    pub num_tags: usize,
}

/// A sequence tagger: the seed's many-to-many shape with one output per input step,
/// `logits_t = head(encoder(x)_t)`, trained with a loss at every step (see [`StepLoss`]).
/// Unidirectional, tag `t` depends on steps `..=t`; bidirectional, on the whole sequence.
///
/// Create it with [`SequenceTaggerConfig`].
#[derive(Module, Debug)]
pub struct SequenceTagger {
    /// Reads the sequence.
    pub encoder: SequenceEncoder,
    /// Maps each step's output to tag logits.
    pub head: Linear,
}

impl SequenceTaggerConfig {
    /// Initializes a new [`SequenceTagger`].
    pub fn init(&self, device: &Device) -> SequenceTagger {
        let encoder = self.encoder.init(device);
        let head = LinearConfig::new(encoder.d_output(), self.num_tags).init(device);
        SequenceTagger { encoder, head }
    }
}

impl SequenceTagger {
    /// The tag logits of every step, and the mask of real steps.
    ///
    /// # Shapes
    /// - ids: `[batch_size, seq_length]`, right-padded
    /// - lengths: `batch_size` entries, each between 1 and `seq_length`
    /// - logits: `[batch_size, seq_length, num_tags]` (meaningless on padding)
    /// - mask: `[batch_size, seq_length]`
    pub fn forward(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> (Tensor<3>, Tensor<2>) {
        let encoded = self.encoder.forward(ids, lengths);
        (self.head.forward(encoded.outputs), encoded.mask)
    }

    /// The loss of every real step against `tags`, reduced as `reduction` says.
    ///
    /// # Shapes
    /// - tags: `[batch_size, seq_length]`; any valid tag on padding
    pub fn forward_loss(
        &self,
        ids: Tensor<2, Int>,
        lengths: &[usize],
        tags: Tensor<2, Int>,
        reduction: StepLoss,
    ) -> Tensor<1> {
        let (logits, mask) = self.forward(ids, lengths);
        masked_cross_entropy(logits, tags, mask, reduction)
    }

    /// The most likely tag of every real step, one vector per sequence.
    pub fn predict(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Vec<Vec<usize>> {
        let (logits, _) = self.forward(ids, lengths);
        let [batch_size, seq_length, num_tags] = logits.dims();
        let flat = crate::decode::argmax_rows(logits.reshape([batch_size * seq_length, num_tags]));
        flat.chunks(seq_length)
            .zip(lengths)
            .map(|(row, &len)| row[..len].to_vec())
            .collect()
    }
}
