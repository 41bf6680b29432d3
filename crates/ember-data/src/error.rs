use std::path::{Path, PathBuf};

/// Why a corpus, vocabulary or batch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The corpus is not valid UTF-8.
    #[error("{path}: not valid UTF-8 at byte offset {offset}")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The offset of the first invalid byte.
        offset: usize,
    },
    /// The corpus holds no text.
    #[error("{path}: the corpus is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The corpus is larger than the loader accepts.
    #[error(
        "{path}: the corpus has {bytes} bytes, more than the limit of {limit} bytes \
         (a run's limit is its `data.max_bytes`)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A character is not in the vocabulary.
    #[error("character {ch:?} (U+{code:04X}) at position {position} is not in the vocabulary")]
    UnknownChar {
        /// The character.
        ch: char,
        /// Its code point.
        code: u32,
        /// Its position, counted in characters from the start of the text.
        position: usize,
    },
    /// A character of a file is not in the vocabulary.
    #[error(
        "{}:{line}:{column}: character {ch:?} (U+{code:04X}) is not in the run's vocabulary",
        path.display()
    )]
    UnknownCharInFile {
        /// The file.
        path: PathBuf,
        /// The character.
        ch: char,
        /// Its code point.
        code: u32,
        /// Its 1-based line.
        line: usize,
        /// Its 1-based column, in characters.
        column: usize,
    },
    /// An id is outside the vocabulary.
    #[error("id {id} is outside the vocabulary of {vocab_size} characters")]
    UnknownId {
        /// The id.
        id: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The text has more distinct characters than ids can hold.
    #[error("the text has {0} distinct characters; at most 65535 are supported")]
    VocabTooLarge(usize),
    /// A saved vocabulary file is malformed.
    #[error("{path}: not a vocabulary file: {message}")]
    BadVocab {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The split fractions are not valid.
    #[error(
        "split fractions must be in [0, 1) and sum to less than 1: validation {val}, test {test}"
    )]
    BadFractions {
        /// The validation fraction.
        val: f64,
        /// The test fraction.
        test: f64,
    },
    /// A split is too short to give one batch.
    #[error(
        "the {split} split has {chars} characters, fewer than one batch needs \
         ({batch_size} streams x ({seq_len} + 1) characters)"
    )]
    TooShort {
        /// The split's name.
        split: String,
        /// Its length in characters.
        chars: usize,
        /// The number of streams.
        batch_size: usize,
        /// The chunk length.
        seq_len: usize,
    },
    /// A line of a labelled or paired dataset is malformed.
    #[error("{path}:{line}: {message}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

impl DataError {
    /// This error with the file it arose in, where it has none yet: an unknown character of
    /// `text` (read from `path`) gets its line and column.
    pub fn in_file(self, path: &Path, text: &str) -> Self {
        match self {
            DataError::UnknownChar { ch, code, position } => {
                let before: String = text.chars().take(position).collect();
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                DataError::UnknownCharInFile {
                    path: path.to_path_buf(),
                    ch,
                    code,
                    line,
                    column,
                }
            }
            other => other,
        }
    }
}
