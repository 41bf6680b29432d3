//! Sequence to sequence: an encoder reads the whole input, then a decoder writes the output.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::{
    ConditionedGenerator, ConditionedGeneratorConfig, DecodeConfig, Hypothesis,
    SequenceDecoderConfig, SequenceEncoder, SequenceEncoderConfig, StepLoss, masked_cross_entropy,
};

/// Configuration to create a [`Seq2Seq`] with [`Seq2SeqConfig::init`].
#[derive(Config, Debug)]
pub struct Seq2SeqConfig {
    /// The encoder (any cell, size, depth, direction).
    pub encoder: SequenceEncoderConfig,
    /// The decoder (any cell, size, depth, independent of the encoder's).
    pub decoder: SequenceDecoderConfig,
}

/// An encoder-decoder (Sutskever et al., 2014; Cho et al., 2014): the many-to-one
/// [`SequenceEncoder`] reads the source, its summary vector conditions the one-to-many
/// [`ConditionedGenerator`], which writes the target. The two halves are separate modules joined
/// only by the generator's bridge, so either can be swapped for another of any cell type or size
/// (see [`Seq2Seq::new`]).
///
/// Create it with [`Seq2SeqConfig`].
#[derive(Module, Debug)]
pub struct Seq2Seq {
    /// Reads the source.
    pub encoder: SequenceEncoder,
    /// Writes the target from the encoder's summary.
    pub generator: ConditionedGenerator,
}

impl Seq2SeqConfig {
    /// Initializes a new [`Seq2Seq`].
    pub fn init(&self, device: &Device) -> Seq2Seq {
        let encoder = self.encoder.init(device);
        let generator =
            ConditionedGeneratorConfig::new(encoder.d_output(), self.decoder.clone()).init(device);
        Seq2Seq { encoder, generator }
    }
}

impl Seq2Seq {
    /// Joins an encoder and a generator made separately.
    ///
    /// # Panics
    /// If the generator's condition size is not the encoder's output size.
    pub fn new(encoder: SequenceEncoder, generator: ConditionedGenerator) -> Self {
        assert_eq!(
            encoder.d_output(),
            generator.d_condition(),
            "the generator's bridge must read the encoder's summary"
        );
        Seq2Seq { encoder, generator }
    }

    /// The next-token logits of the target under teacher forcing.
    ///
    /// # Shapes
    /// - source: `[batch_size, source_length]`, right-padded, with `source_lengths`
    /// - inputs: `[batch_size, target_length]`, the start mark then the target without its end
    /// - logits: `[batch_size, target_length, vocab_size]`
    pub fn forward(
        &self,
        source: Tensor<2, Int>,
        source_lengths: &[usize],
        inputs: Tensor<2, Int>,
    ) -> Tensor<3> {
        let summary = self.encoder.forward(source, source_lengths).summary;
        self.generator.forward(summary, inputs)
    }

    /// The teacher-forced loss, averaged over the real target steps.
    ///
    /// # Shapes
    /// - targets, mask: `[batch_size, target_length]` (see [`ConditionedGenerator::forward_loss`])
    pub fn forward_loss(
        &self,
        source: Tensor<2, Int>,
        source_lengths: &[usize],
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        mask: Tensor<2>,
    ) -> Tensor<1> {
        let logits = self.forward(source, source_lengths, inputs);
        masked_cross_entropy(logits, targets, mask, StepLoss::Mean)
    }

    /// Writes one target per source: greedy when `beam_width` is 1, else the best of a beam
    /// search.
    pub fn decode(
        &self,
        source: Tensor<2, Int>,
        source_lengths: &[usize],
        config: &DecodeConfig,
    ) -> Vec<Hypothesis> {
        let summary = self.encoder.forward(source, source_lengths).summary;
        self.generator.generate(summary, config)
    }

    /// The `beam_width` best targets of every source, best first.
    pub fn beam_search(
        &self,
        source: Tensor<2, Int>,
        source_lengths: &[usize],
        config: &DecodeConfig,
    ) -> Vec<Vec<Hypothesis>> {
        let summary = self.encoder.forward(source, source_lengths).summary;
        let state = self.generator.bridge.forward(summary);
        self.generator.decoder.beam_search(state, config)
    }
}
