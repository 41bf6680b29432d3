//! Parallel contiguous streams read chunk by chunk, for truncated backpropagation through time.

use serde::{Deserialize, Serialize};

use crate::DataError;

/// Where a [`StreamBatcher`] is: the epoch and the next chunk to read in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Completed passes over the split.
    pub epoch: u64,
    /// The index of the next chunk within the epoch.
    pub chunk: usize,
}

/// One chunk of every stream: inputs and the next-character targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Row-major `[batch_size, seq_len]` input ids.
    pub inputs: Vec<u16>,
    /// Row-major `[batch_size, seq_len]` target ids: each input's next character in its stream.
    pub targets: Vec<u16>,
    /// The number of streams (rows).
    pub batch_size: usize,
    /// The number of steps (columns).
    pub seq_len: usize,
    /// Whether this is the first chunk of its epoch, where every stream starts over and the
    /// carried state must be reset.
    pub starts_epoch: bool,
}

impl Chunk {
    /// The inputs widened to `i64`, as tensors take them.
    pub fn inputs_i64(&self) -> Vec<i64> {
        self.inputs.iter().map(|&id| i64::from(id)).collect()
    }

    /// The targets widened to `i64`, as tensors take them.
    pub fn targets_i64(&self) -> Vec<i64> {
        self.targets.iter().map(|&id| i64::from(id)).collect()
    }

    /// The chunk of streams `streams` alone (a data-parallel rank's share of the batch); the
    /// chunk itself, uncopied, when `streams` is all of them.
    ///
    /// # Panics
    /// If `streams` reaches past `batch_size`.
    pub fn rows(self, streams: std::ops::Range<usize>) -> Chunk {
        assert!(
            streams.end <= self.batch_size,
            "streams {streams:?} of {}",
            self.batch_size
        );
        if streams == (0..self.batch_size) {
            return self;
        }
        let cells = streams.start * self.seq_len..streams.end * self.seq_len;
        Chunk {
            inputs: self.inputs[cells.clone()].to_vec(),
            targets: self.targets[cells].to_vec(),
            batch_size: streams.len(),
            seq_len: self.seq_len,
            starts_epoch: self.starts_epoch,
        }
    }
}

/// A split cut into `batch_size` contiguous streams (PyTorch word_language_model's `batchify`,
/// batch first), read in chunks of `seq_len` steps with targets shifted by one character.
///
/// Stream `b` is `ids[b * L .. (b + 1) * L]` with `L = len / batch_size` (the tail that does not
/// fill a stream is dropped). Chunk `i` reads steps `i * seq_len ..` of every stream, so the state a
/// stream carries from chunk `i` into chunk `i + 1` has seen exactly the text that precedes it.
#[derive(Debug, Clone)]
pub struct StreamBatcher {
    streams: Vec<u16>,
    batch_size: usize,
    seq_len: usize,
    stream_len: usize,
}

impl StreamBatcher {
    /// Cuts `ids` into streams; `split` names the split in errors.
    pub fn new(
        ids: &[u16],
        batch_size: usize,
        seq_len: usize,
        split: &str,
    ) -> Result<Self, DataError> {
        let stream_len = ids.len() / batch_size.max(1);
        if batch_size == 0 || seq_len == 0 || stream_len < seq_len + 1 {
            return Err(DataError::TooShort {
                split: split.to_string(),
                chars: ids.len(),
                batch_size,
                seq_len,
            });
        }
        Ok(StreamBatcher {
            streams: ids[..stream_len * batch_size].to_vec(),
            batch_size,
            seq_len,
            stream_len,
        })
    }

    /// The number of streams.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The steps per chunk.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The characters per stream.
    pub fn stream_len(&self) -> usize {
        self.stream_len
    }

    /// The number of full chunks per epoch (the training chunks; a short tail is left out).
    pub fn num_chunks(&self) -> usize {
        (self.stream_len - 1) / self.seq_len
    }

    /// Every chunk of the split including a short last one, so every next-character prediction
    /// of every stream is made exactly once (evaluation).
    pub fn all_chunks(&self) -> impl Iterator<Item = Chunk> + '_ {
        let predictions = self.stream_len - 1;
        (0..predictions.div_ceil(self.seq_len)).map(move |i| {
            let start = i * self.seq_len;
            self.read(start, self.seq_len.min(predictions - start), i == 0)
        })
    }

    /// Full chunk `index` of an epoch.
    ///
    /// # Panics
    /// If `index >= num_chunks()`.
    pub fn chunk(&self, index: usize) -> Chunk {
        assert!(index < self.num_chunks(), "chunk {index} is past the epoch");
        self.read(index * self.seq_len, self.seq_len, index == 0)
    }

    /// Reads the chunk at `cursor` and advances it, wrapping to the next epoch after the last.
    pub fn next_chunk(&self, cursor: &mut Cursor) -> Chunk {
        if cursor.chunk >= self.num_chunks() {
            cursor.epoch += 1;
            cursor.chunk = 0;
        }
        let chunk = self.chunk(cursor.chunk);
        cursor.chunk += 1;
        chunk
    }

    fn read(&self, start: usize, len: usize, starts_epoch: bool) -> Chunk {
        let mut inputs = Vec::with_capacity(self.batch_size * len);
        let mut targets = Vec::with_capacity(self.batch_size * len);
        for stream in self.streams.chunks_exact(self.stream_len) {
            inputs.extend_from_slice(&stream[start..start + len]);
            targets.extend_from_slice(&stream[start + 1..start + len + 1]);
        }
        Chunk {
            inputs,
            targets,
            batch_size: self.batch_size,
            seq_len: len,
            starts_epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fixture's batch: 4 streams of the validation split, `input = streams[:, 0:20]`,
    /// `target = streams[:, 1:21]` (tests/fixtures/torch/README.md), here on a stand-in split
    /// whose ids are their own positions.
    #[test]
    fn layout_matches_batchify() {
        let ids: Vec<u16> = (0..111).collect();
        let batcher = StreamBatcher::new(&ids, 4, 20, "val").unwrap();
        assert_eq!(batcher.stream_len(), 27);
        let chunk = batcher.chunk(0);
        assert_eq!(&chunk.inputs[..3], &[0, 1, 2]);
        assert_eq!(&chunk.inputs[20..23], &[27, 28, 29]);
        assert_eq!(&chunk.targets[..3], &[1, 2, 3]);
    }

    #[test]
    fn too_short_is_an_error() {
        let ids: Vec<u16> = (0..40).collect();
        let err = StreamBatcher::new(&ids, 4, 10, "train").unwrap_err();
        assert!(
            err.to_string().contains("train split has 40 characters"),
            "{err}"
        );
        assert!(StreamBatcher::new(&ids, 0, 10, "train").is_err());
        assert!(StreamBatcher::new(&ids, 2, 0, "train").is_err());
    }

    #[test]
    fn rows_are_the_streams_of_the_batch() {
        let ids: Vec<u16> = (0..200).collect();
        let chunk = StreamBatcher::new(&ids, 4, 5, "train").unwrap().chunk(1);
        let rows = chunk.clone().rows(1..3);
        assert_eq!((rows.batch_size, rows.seq_len), (2, 5));
        assert_eq!(rows.inputs, chunk.inputs[5..15]);
        assert_eq!(rows.targets, chunk.targets[5..15]);
        assert_eq!(rows.inputs[0], 55);
        assert_eq!(chunk.clone().rows(0..4), chunk);
    }

    proptest! {
        /// Coverage, no overlap, shift by one: the training chunks of one epoch read each stream
        /// position once, in order, and every target is the character after its input.
        #[test]
        fn chunks_tile_the_streams(len in 2usize..400, batch_size in 1usize..6, seq_len in 1usize..12) {
            let ids: Vec<u16> = (0..len as u16).collect();
            let Ok(batcher) = StreamBatcher::new(&ids, batch_size, seq_len, "train") else {
                prop_assert!(len / batch_size < seq_len + 1);
                return Ok(());
            };
            let stream_len = len / batch_size;
            let mut seen = vec![Vec::new(); batch_size];
            for i in 0..batcher.num_chunks() {
                let chunk = batcher.chunk(i);
                prop_assert_eq!(chunk.starts_epoch, i == 0);
                for b in 0..batch_size {
                    let row = &chunk.inputs[b * seq_len..(b + 1) * seq_len];
                    let targets = &chunk.targets[b * seq_len..(b + 1) * seq_len];
                    for (x, y) in row.iter().zip(targets) {
                        prop_assert_eq!(*y, *x + 1);
                    }
                    seen[b].extend_from_slice(row);
                }
            }
            for (b, stream) in seen.iter().enumerate() {
                let start = (b * stream_len) as u16;
                let expected: Vec<u16> = (start..start + stream.len() as u16).collect();
                prop_assert_eq!(stream, &expected);
                prop_assert!(stream.len() + seq_len > stream_len - 1);
            }

            // Evaluation chunks make every prediction of every stream exactly once.
            let predictions: usize = batcher.all_chunks().map(|c| c.seq_len).sum();
            prop_assert_eq!(predictions, stream_len - 1);
        }

        /// Continuity: within an epoch a stream's next chunk starts at its previous target's last
        /// character; an epoch boundary is flagged so the state is reset.
        #[test]
        fn cursor_continues_streams_across_chunks_and_epochs(len in 20usize..300, batch_size in 1usize..4, seq_len in 1usize..6) {
            let ids: Vec<u16> = (0..len as u16).collect();
            let Ok(batcher) = StreamBatcher::new(&ids, batch_size, seq_len, "train") else { return Ok(()); };
            let mut cursor = Cursor::default();
            let mut previous: Option<Chunk> = None;
            for _ in 0..batcher.num_chunks() * 3 {
                let chunk = batcher.next_chunk(&mut cursor);
                if let Some(previous) = &previous && !chunk.starts_epoch {
                    for b in 0..batch_size {
                        prop_assert_eq!(chunk.inputs[b * seq_len], previous.targets[b * seq_len + seq_len - 1]);
                    }
                }
                if chunk.starts_epoch {
                    prop_assert_eq!(chunk.inputs[0], 0);
                }
                previous = Some(chunk);
            }
            prop_assert_eq!(cursor.epoch, 2);
            prop_assert_eq!(cursor.chunk, batcher.num_chunks());
        }
    }
}
