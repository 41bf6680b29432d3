//! Datasets of whole sequences, one per line: labelled texts (`label<TAB>text`, for
//! classifiers) and text pairs (`source<TAB>target`, for sequence-to-sequence models), their
//! token ids, and right-padded batches with lengths.

use std::collections::BTreeSet;
use std::path::Path;

use crate::{DataError, Vocab};

/// One line of a labelled dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledText {
    /// The class name.
    pub label: String,
    /// The text to classify.
    pub text: String,
    /// The 1-based line it came from.
    pub line: usize,
}

/// One line of a pair dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPair {
    /// The input text.
    pub source: String,
    /// The text the model should produce from it.
    pub target: String,
    /// The 1-based line it came from.
    pub line: usize,
}

/// Parses `label<TAB>text` lines; `path` only names the origin in errors.
///
/// Blank lines are skipped; every other line needs exactly one tab with text on both sides.
pub fn parse_labelled(text: &str, path: &Path) -> Result<Vec<LabelledText>, DataError> {
    parse_tab_separated(text, path, ["label", "text"]).map(|rows| {
        rows.into_iter()
            .map(|(line, [label, text])| LabelledText { label, text, line })
            .collect()
    })
}

/// Parses `source<TAB>target` lines; `path` only names the origin in errors.
pub fn parse_pairs(text: &str, path: &Path) -> Result<Vec<TextPair>, DataError> {
    parse_tab_separated(text, path, ["source", "target"]).map(|rows| {
        rows.into_iter()
            .map(|(line, [source, target])| TextPair {
                source,
                target,
                line,
            })
            .collect()
    })
}

/// Reads and parses a `label<TAB>text` file.
pub fn load_labelled(path: &Path) -> Result<Vec<LabelledText>, DataError> {
    parse_labelled(&read_utf8(path)?, path)
}

/// Reads and parses a `source<TAB>target` file.
pub fn load_pairs(path: &Path) -> Result<Vec<TextPair>, DataError> {
    parse_pairs(&read_utf8(path)?, path)
}

fn read_utf8(path: &Path) -> Result<String, DataError> {
    let bytes = crate::read_text_file(path, crate::DEFAULT_MAX_BYTES)?;
    String::from_utf8(bytes).map_err(|error| DataError::InvalidUtf8 {
        path: path.to_path_buf(),
        offset: error.utf8_error().valid_up_to(),
    })
}

fn parse_tab_separated(
    text: &str,
    path: &Path,
    columns: [&str; 2],
) -> Result<Vec<(usize, [String; 2])>, DataError> {
    let bad_line = |line: usize, message: String| DataError::BadLine {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut rows = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = raw.split('\t').collect();
        if fields.len() != 2 {
            return Err(bad_line(
                line,
                format!(
                    "expected `{}<TAB>{}`, found {} tab(s)",
                    columns[0],
                    columns[1],
                    fields.len() - 1
                ),
            ));
        }
        for (field, name) in fields.iter().zip(columns) {
            if field.is_empty() {
                return Err(bad_line(line, format!("the {name} is empty")));
            }
        }
        rows.push((line, [fields[0].to_string(), fields[1].to_string()]));
    }
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(rows)
}

/// The class names of a labelled dataset, sorted, so a class's id is its rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    labels: Vec<String>,
}

impl LabelSet {
    /// The distinct labels of `examples`.
    pub fn new<'a>(labels: impl IntoIterator<Item = &'a str>) -> Self {
        let labels: BTreeSet<&str> = labels.into_iter().collect();
        LabelSet {
            labels: labels.into_iter().map(str::to_string).collect(),
        }
    }

    /// The number of classes.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The id of `label`, if it is one of the classes.
    pub fn id(&self, label: &str) -> Option<usize> {
        self.labels
            .binary_search_by(|known| known.as_str().cmp(label))
            .ok()
    }

    /// The name of class `id`.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.labels.get(id).map(String::as_str)
    }

    /// Every class name, in id order.
    pub fn names(&self) -> &[String] {
        &self.labels
    }
}

/// A character vocabulary with three reserved ids in front, for models that read or write
/// variable-length sequences: padding, start of sequence and end of sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenVocab {
    chars: Vocab,
}

impl TokenVocab {
    /// The id of padding after the end of a shorter sequence in a batch.
    pub const PAD: usize = 0;
    /// The id a decoder reads before its first output.
    pub const BOS: usize = 1;
    /// The id a decoder writes after its last output.
    pub const EOS: usize = 2;
    const RESERVED: usize = 3;

    /// Wraps a character vocabulary.
    pub fn new(chars: Vocab) -> Self {
        TokenVocab { chars }
    }

    /// The number of ids, reserved ones included.
    pub fn len(&self) -> usize {
        self.chars.len() + Self::RESERVED
    }

    /// Whether the vocabulary has no characters.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters.
    pub fn chars(&self) -> &Vocab {
        &self.chars
    }

    /// The ids of `text`, without start or end marks.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>, DataError> {
        Ok(self
            .chars
            .encode(text)?
            .into_iter()
            .map(|id| usize::from(id) + Self::RESERVED)
            .collect())
    }

    /// The decoder's inputs and targets for teacher forcing: `[BOS, y_1, .., y_n]` and
    /// `[y_1, .., y_n, EOS]` for every target `y`, padded; both batches have the same lengths,
    /// so either's mask covers every real prediction, the end mark included.
    pub fn teacher_forcing<S: AsRef<[usize]>>(targets: &[S]) -> (PaddedBatch, PaddedBatch) {
        let inputs: Vec<Vec<usize>> = targets
            .iter()
            .map(|t| {
                std::iter::once(Self::BOS)
                    .chain(t.as_ref().iter().copied())
                    .collect()
            })
            .collect();
        let outputs: Vec<Vec<usize>> = targets
            .iter()
            .map(|t| {
                t.as_ref()
                    .iter()
                    .copied()
                    .chain(std::iter::once(Self::EOS))
                    .collect()
            })
            .collect();
        (
            PaddedBatch::new(&inputs, Self::PAD),
            PaddedBatch::new(&outputs, Self::PAD),
        )
    }

    /// The text of `ids`, stopping at the first end mark; padding and start marks are skipped.
    pub fn decode(&self, ids: impl IntoIterator<Item = usize>) -> Result<String, DataError> {
        let chars = ids
            .into_iter()
            .take_while(|&id| id != Self::EOS)
            .filter(|&id| id >= Self::RESERVED)
            .map(|id| id - Self::RESERVED);
        self.chars.decode(chars)
    }
}

/// Sequences of different lengths in one right-padded `[batch_size, max_len]` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    /// The ids, row-major `[batch_size, max_len]`, padded with the pad id.
    pub ids: Vec<i64>,
    /// Each row's length before padding.
    pub lengths: Vec<usize>,
    /// The number of rows.
    pub batch_size: usize,
    /// The longest row's length: the block's width.
    pub max_len: usize,
}

impl PaddedBatch {
    /// Pads every sequence with `pad` up to the longest one.
    ///
    /// # Panics
    /// If a sequence is empty: a recurrent model needs at least one step to read.
    pub fn new<S: AsRef<[usize]>>(sequences: &[S], pad: usize) -> Self {
        let lengths: Vec<usize> = sequences.iter().map(|s| s.as_ref().len()).collect();
        assert!(
            lengths.iter().all(|&len| len > 0),
            "every sequence needs at least one id"
        );
        let max_len = lengths.iter().copied().max().unwrap_or(0);
        let mut ids = vec![pad as i64; sequences.len() * max_len];
        for (row, sequence) in ids.chunks_mut(max_len.max(1)).zip(sequences) {
            for (slot, &id) in row.iter_mut().zip(sequence.as_ref()) {
                *slot = id as i64;
            }
        }
        PaddedBatch {
            ids,
            lengths,
            batch_size: sequences.len(),
            max_len,
        }
    }

    /// 1.0 where a row has a real id, 0.0 on padding, row-major `[batch_size, max_len]`.
    pub fn mask(&self) -> Vec<f32> {
        self.lengths
            .iter()
            .flat_map(|&len| (0..self.max_len).map(move |t| if t < len { 1.0 } else { 0.0 }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> &'static Path {
        Path::new("data.tsv")
    }

    #[test]
    fn labelled_lines_parse_and_blank_lines_are_skipped() {
        let examples = parse_labelled("pos\tgood day\n\nneg\tbad day\r\n", origin()).unwrap();
        assert_eq!(examples.len(), 2);
        assert_eq!(examples[0].label, "pos");
        assert_eq!(examples[1].text, "bad day");
        assert_eq!(examples[1].line, 3);
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let cases = [
            (
                "a\tb\nno tab here\n",
                "data.tsv:2: expected `label<TAB>text`, found 0 tab(s)",
            ),
            (
                "a\tb\tc\n",
                "data.tsv:1: expected `label<TAB>text`, found 2 tab(s)",
            ),
            ("a\tb\n\tb\n", "data.tsv:2: the label is empty"),
            ("a\t\n", "data.tsv:1: the text is empty"),
        ];
        for (text, expected) in cases {
            let error = parse_labelled(text, origin()).unwrap_err().to_string();
            assert_eq!(error, expected);
        }
        let error = parse_pairs("x\n", origin()).unwrap_err().to_string();
        assert_eq!(
            error,
            "data.tsv:1: expected `source<TAB>target`, found 0 tab(s)"
        );
        let error = parse_pairs("\n\n", origin()).unwrap_err().to_string();
        assert_eq!(error, "data.tsv: the corpus is empty");
    }

    #[test]
    fn invalid_utf8_names_the_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.tsv");
        std::fs::write(&path, b"a\tok\nb\t\xff\n").unwrap();
        let error = load_pairs(&path).unwrap_err().to_string();
        assert!(
            error.ends_with("not valid UTF-8 at byte offset 7"),
            "{error}"
        );
    }

    #[test]
    fn labels_get_ids_by_rank() {
        let labels = LabelSet::new(["neg", "pos", "neg", "mixed"]);
        assert_eq!(labels.names(), ["mixed", "neg", "pos"]);
        assert_eq!(labels.id("pos"), Some(2));
        assert_eq!(labels.id("other"), None);
        assert_eq!(labels.name(0), Some("mixed"));
    }

    #[test]
    fn token_vocab_reserves_pad_bos_eos() {
        let vocab = TokenVocab::new(Vocab::from_text("abc").unwrap());
        assert_eq!(vocab.len(), 6);
        let ids = vocab.encode("cab").unwrap();
        assert_eq!(ids, [5, 3, 4]);
        let mut written = vec![TokenVocab::BOS];
        written.extend(&ids);
        written.extend([TokenVocab::EOS, 3, 3]);
        assert_eq!(vocab.decode(written).unwrap(), "cab");
    }

    #[test]
    fn teacher_forcing_shifts_the_target_right() {
        let (inputs, targets) = TokenVocab::teacher_forcing(&[vec![5, 6], vec![7]]);
        assert_eq!(inputs.ids, [1, 5, 6, 1, 7, 0]);
        assert_eq!(targets.ids, [5, 6, 2, 7, 2, 0]);
        assert_eq!(inputs.lengths, [3, 2]);
        assert_eq!(targets.lengths, [3, 2]);
    }

    proptest! {
        #[test]
        fn padding_keeps_every_sequence_and_its_length(
            sequences in prop::collection::vec(prop::collection::vec(3usize..50, 1..12), 1..8)
        ) {
            let batch = PaddedBatch::new(&sequences, 0);
            prop_assert_eq!(batch.ids.len(), batch.batch_size * batch.max_len);
            let mask = batch.mask();
            for (row, sequence) in sequences.iter().enumerate() {
                let start = row * batch.max_len;
                let padded = &batch.ids[start..start + batch.max_len];
                let real: Vec<usize> = padded[..sequence.len()].iter().map(|&id| id as usize).collect();
                prop_assert_eq!(&real, sequence);
                prop_assert!(padded[sequence.len()..].iter().all(|&id| id == 0));
                let row_mask = &mask[start..start + batch.max_len];
                prop_assert_eq!(row_mask.iter().filter(|&&m| m == 1.0).count(), sequence.len());
                prop_assert_eq!(batch.lengths[row], sequence.len());
            }
        }
    }
}
