#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod char_lm;
mod classifier;
mod decode;
mod encoder;
mod generator;
mod layer;
mod loss;
pub mod ops;
mod sample;
mod seq2seq;
mod stacked;
mod state;
mod tagger;
#[cfg(feature = "import")]
pub mod torch;

pub use char_lm::{CharLm, CharLmConfig};
pub use classifier::{SequenceClassifier, SequenceClassifierConfig};
pub use decode::{DecodeConfig, Hypothesis};
pub use ember_kernels::{CellKind, UnknownCell};
pub use encoder::{Encoded, Pooling, SequenceEncoder, SequenceEncoderConfig, length_mask};
pub use generator::{
    Bridge, BridgeConfig, ConditionedGenerator, ConditionedGeneratorConfig, SequenceDecoder,
    SequenceDecoderConfig,
};
pub use layer::{RecurrentLayer, RecurrentLayerConfig};
pub use loss::{StepLoss, cross_entropy, masked_cross_entropy};
pub use sample::{SampleConfig, SampleError, Sampler};
pub use seq2seq::{Seq2Seq, Seq2SeqConfig};
pub use stacked::{StackedRecurrent, StackedRecurrentConfig};
pub use state::{LayerState, RecurrentState};
pub use tagger::{SequenceTagger, SequenceTaggerConfig};
