//! The character vocabulary.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// The sorted distinct Unicode scalar values of a text; a character's id is its index.
///
/// The order is code-point order, as Python's `sorted(set(text))`, so ids agree with char-rnn
/// style PyTorch scripts on the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    ascii: [u16; 128],
    others: HashMap<char, u16>,
}

const NOT_IN_VOCAB: u16 = u16::MAX;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    chars: String,
}

impl Vocab {
    /// The vocabulary of `chars`, sorted and deduplicated.
    pub fn new(chars: impl IntoIterator<Item = char>) -> Result<Self, DataError> {
        let mut chars: Vec<char> = chars.into_iter().collect();
        chars.sort_unstable();
        chars.dedup();
        // Ids are u16 and u16::MAX marks "absent" in the lookup table.
        if chars.len() > usize::from(NOT_IN_VOCAB) {
            return Err(DataError::VocabTooLarge(chars.len()));
        }
        let mut ascii = [NOT_IN_VOCAB; 128];
        let mut others = HashMap::new();
        for (id, &ch) in chars.iter().enumerate() {
            if ch.is_ascii() {
                ascii[ch as usize] = id as u16;
            } else {
                others.insert(ch, id as u16);
            }
        }
        Ok(Vocab {
            chars,
            ascii,
            others,
        })
    }

    /// The vocabulary of every character that occurs in `text`.
    pub fn from_text(text: &str) -> Result<Self, DataError> {
        let mut seen_ascii = [false; 128];
        let mut others = std::collections::BTreeSet::new();
        for byte_or_char in text.chars() {
            if byte_or_char.is_ascii() {
                seen_ascii[byte_or_char as usize] = true;
            } else {
                others.insert(byte_or_char);
            }
        }
        let ascii = (0u8..128)
            .filter(|&b| seen_ascii[b as usize])
            .map(char::from);
        Self::new(ascii.chain(others))
    }

    /// The number of characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary has no characters.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `ch`, if it is in the vocabulary.
    pub fn id(&self, ch: char) -> Option<u16> {
        let id = if ch.is_ascii() {
            self.ascii[ch as usize]
        } else {
            *self.others.get(&ch)?
        };
        (id != NOT_IN_VOCAB).then_some(id)
    }

    /// The ids of every character of `text`; fails on the first character not in the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u16>, DataError> {
        let mut ids = Vec::with_capacity(text.len());
        for (position, ch) in text.chars().enumerate() {
            let id = self.id(ch).ok_or(DataError::UnknownChar {
                ch,
                code: ch as u32,
                position,
            })?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// The characters of `ids`.
    pub fn decode(&self, ids: impl IntoIterator<Item = usize>) -> Result<String, DataError> {
        ids.into_iter()
            .map(|id| {
                self.chars.get(id).copied().ok_or(DataError::UnknownId {
                    id,
                    vocab_size: self.len(),
                })
            })
            .collect()
    }

    /// The characters of `text` that are not in the vocabulary, each once, in order of appearance.
    pub fn unknown_chars(&self, text: &str) -> Vec<char> {
        let mut unknown: Vec<char> = Vec::new();
        for ch in text.chars() {
            if self.id(ch).is_none() && !unknown.contains(&ch) {
                unknown.push(ch);
            }
        }
        unknown
    }

    /// Saves the vocabulary as JSON: `{"chars": "..."}`.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let file = VocabFile {
            chars: self.chars.iter().collect(),
        };
        let json = serde_json::to_string_pretty(&file).expect("a string serializes");
        std::fs::write(path, json).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads a vocabulary saved by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let json = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| DataError::BadVocab {
            path: path.to_path_buf(),
            message,
        };
        let file: VocabFile = serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?;
        let vocab = Self::new(file.chars.chars())?;
        if vocab.len() != file.chars.chars().count() {
            return Err(bad("characters are repeated".into()));
        }
        Ok(vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sorted_by_code_point_like_python() {
        // sorted(set("hello, wörld")) in Python: [' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w', 'ö']
        let vocab = Vocab::from_text("hello, wörld").unwrap();
        assert_eq!(vocab.chars().iter().collect::<String>(), " ,dehlorwö");
    }

    #[test]
    fn unknown_char_is_named_with_its_position() {
        let vocab = Vocab::from_text("abc").unwrap();
        let err = vocab.encode("abxc").unwrap_err();
        assert!(
            matches!(
                err,
                DataError::UnknownChar {
                    ch: 'x',
                    position: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("'x'"));
    }

    #[test]
    fn japanese_text_works() {
        let text = "吾輩は猫である。名前はまだ無い。";
        let vocab = Vocab::from_text(text).unwrap();
        let ids = vocab.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(vocab.decode(ids.iter().map(|&i| i as usize)).unwrap(), text);
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.json");
        let vocab = Vocab::from_text("To be, or not to be: ça?\n\t\"").unwrap();
        vocab.save(&path).unwrap();
        assert_eq!(Vocab::load(&path).unwrap(), vocab);
    }

    #[test]
    fn malformed_vocab_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.json");
        std::fs::write(&path, r#"{"letters": "abc"}"#).unwrap();
        let err = Vocab::load(&path).unwrap_err();
        assert!(err.to_string().contains("vocab.json"), "{err}");
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(text in "\\PC{0,200}") {
            let vocab = Vocab::from_text(&text).unwrap();
            let ids = vocab.encode(&text).unwrap();
            prop_assert_eq!(vocab.decode(ids.iter().map(|&i| i as usize)).unwrap(), text.clone());
            // Ids are dense and sorted by character.
            let mut distinct: Vec<char> = text.chars().collect();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(vocab.chars(), &distinct[..]);
        }
    }
}
