#![doc = include_str!("../README.md")]
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
