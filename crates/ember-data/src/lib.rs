//! Character corpora for Ember: the vocabulary, loading a text as ids, contiguous splits, and
//! the stream batcher that feeds truncated backpropagation through time; and datasets of whole
//! sequences (`label<TAB>text`, `source<TAB>target`) with padded batches.
//!
//! ```no_run
//! use ember_data::{Corpus, Splits, StreamBatcher};
//!
//! let corpus = Corpus::load("data/tinyshakespeare.txt".as_ref())?;
//! let splits = Splits::by_fraction(corpus.len(), 0.1, 0.0)?;
//! let train = StreamBatcher::new(&corpus.ids[splits.train], 32, 64, "train")?;
//! let chunk = train.chunk(0); // [32, 64] inputs and next-character targets
//! assert_eq!(chunk.inputs.len(), 32 * 64);
//! # Ok::<(), ember_data::DataError>(())
//! ```
#![warn(missing_docs)]

mod batcher;
mod corpus;
mod error;
mod sequences;
mod vocab;

pub use batcher::{Chunk, Cursor, StreamBatcher};
pub use corpus::{Corpus, DEFAULT_MAX_BYTES, Splits, read_text_file};
pub use error::DataError;
pub use sequences::{
    LabelSet, LabelledText, PaddedBatch, TextPair, TokenVocab, load_labelled, load_pairs,
    parse_labelled, parse_pairs,
};
pub use vocab::Vocab;
