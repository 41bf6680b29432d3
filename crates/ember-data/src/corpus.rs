//! Loading a text corpus as character ids, and cutting it into splits.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::{DataError, Vocab};

/// The largest corpus [`Corpus::load`] accepts by default: 1 GiB of text is 2 GiB of ids and more
/// than a character model trains on in a day here.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// A text read as character ids, with its vocabulary.
///
/// Ids are `u16`, two bytes per character: a 100 MB corpus takes about 200 MB, and its bytes,
/// read once to encode them, are dropped after.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Where the text came from.
    pub path: PathBuf,
    /// The vocabulary the ids index.
    pub vocab: Vocab,
    /// One id per character, in order.
    pub ids: Vec<u16>,
}

impl Corpus {
    /// Reads `path` (UTF-8), builds its vocabulary and encodes it.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        Self::load_with(path, None, DEFAULT_MAX_BYTES)
    }

    /// Reads `path` with an existing vocabulary (for a resumed run or an evaluation); a
    /// character outside it is an error naming the character and its position.
    pub fn load_with_vocab(path: &Path, vocab: Vocab) -> Result<Self, DataError> {
        Self::load_with(path, Some(vocab), DEFAULT_MAX_BYTES)
    }

    /// Reads `path`, refusing files over `max_bytes`; builds the vocabulary unless one is given.
    /// A regular file is read whole into memory (never mapped: a file that another process
    /// shrinks meanwhile would fault); a pipe or FIFO is read to its end. Anything else (a
    /// directory, a device, a socket) is refused by name.
    pub fn load_with(path: &Path, vocab: Option<Vocab>, max_bytes: u64) -> Result<Self, DataError> {
        let bytes = read_text_file(path, max_bytes)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            offset: e.valid_up_to(),
        })?;
        let vocab = match vocab {
            Some(vocab) => vocab,
            None => Vocab::from_text(text)?,
        };
        let ids = vocab.encode(text).map_err(|e| e.in_file(path, text))?;
        log::info!(
            "{}: {} characters, vocabulary of {}",
            path.display(),
            ids.len(),
            vocab.len()
        );
        Ok(Corpus {
            path: path.to_path_buf(),
            vocab,
            ids,
        })
    }

    /// The number of characters.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the corpus has no characters.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The bytes of `path`, a regular file, pipe or FIFO of at most `max_bytes` bytes that are not
/// all missing.
pub fn read_text_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, DataError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let kind = metadata.file_type();
    if kind.is_dir() {
        return Err(io(std::io::Error::other("is a directory, not a text file")));
    }
    if !(kind.is_file() || kind.is_fifo()) {
        return Err(io(std::io::Error::other(
            "is not a regular file or a pipe (a device or a socket): give a text file",
        )));
    }
    let too_large = |bytes| DataError::TooLarge {
        path: path.to_path_buf(),
        bytes,
        limit: max_bytes,
    };
    if kind.is_file() && metadata.len() > max_bytes {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(if kind.is_file() {
        metadata.len() as usize
    } else {
        0
    });
    // One byte over the limit tells a pipe (or a file grown meanwhile) that is too long.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Contiguous train, validation and test ranges of a corpus, in that order, as char-rnn and
/// PyTorch's word_language_model cut them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// The training range.
    pub train: Range<usize>,
    /// The validation range (may be empty).
    pub val: Range<usize>,
    /// The test range (may be empty).
    pub test: Range<usize>,
}

impl Splits {
    /// Cuts `len` characters: train takes `floor((1 - val - test) * len)`, test
    /// `floor(test * len)` at the end, validation the rest in between.
    pub fn by_fraction(len: usize, val: f64, test: f64) -> Result<Self, DataError> {
        let valid = |f: f64| f.is_finite() && (0.0..1.0).contains(&f);
        if !valid(val) || !valid(test) || val + test >= 1.0 {
            return Err(DataError::BadFractions { val, test });
        }
        let n_train = ((1.0 - val - test) * len as f64) as usize;
        let n_test = (test * len as f64) as usize;
        let n_val = len - n_train - n_test;
        Ok(Splits {
            train: 0..n_train,
            val: n_train..n_train + n_val,
            test: n_train + n_val..len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    #[test]
    fn invalid_utf8_names_the_byte_offset() {
        let file = file_with(b"hello \xff world");
        let err = Corpus::load(file.path()).unwrap_err();
        assert!(
            matches!(err, DataError::InvalidUtf8 { offset: 6, .. }),
            "{err}"
        );
    }

    #[test]
    fn empty_and_directory_and_missing_are_errors() {
        let file = file_with(b"");
        assert!(matches!(
            Corpus::load(file.path()),
            Err(DataError::Empty { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let err = Corpus::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        let err = Corpus::load(&dir.path().join("absent.txt")).unwrap_err();
        assert!(err.to_string().contains("absent.txt"), "{err}");
    }

    #[test]
    fn too_large_is_refused_before_reading() {
        let file = file_with(b"0123456789");
        let err = Corpus::load_with(file.path(), None, 5).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TooLarge {
                    bytes: 10,
                    limit: 5,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn known_vocab_rejects_new_characters() {
        let file = file_with("abcé".as_bytes());
        let vocab = Vocab::from_text("abc").unwrap();
        let err = Corpus::load_with_vocab(file.path(), vocab).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::UnknownCharInFile {
                    ch: 'é',
                    line: 1,
                    column: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&*file.path().to_string_lossy()));
    }

    /// The fixture's split: `n_train = int(0.9 * 1115394) = 1003854`, validation the remaining
    /// 111,540 (tests/fixtures/torch/README.md).
    #[test]
    fn split_matches_the_pytorch_fixture() {
        let splits = Splits::by_fraction(1_115_394, 0.1, 0.0).unwrap();
        assert_eq!(splits.train, 0..1_003_854);
        assert_eq!(splits.val.len(), 111_540);
        assert!(splits.test.is_empty());
    }

    #[test]
    fn bad_fractions_are_errors() {
        assert!(Splits::by_fraction(100, 0.6, 0.5).is_err());
        assert!(Splits::by_fraction(100, -0.1, 0.0).is_err());
        assert!(Splits::by_fraction(100, f64::NAN, 0.0).is_err());
    }
}
