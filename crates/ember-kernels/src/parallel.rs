//! How a layer's chunk is spread over the cores.
//!
//! The streams of a batch are independent until their weight gradients are summed, so a chunk
//! splits into shards of rows, one per thread, each running every step on its own. Threads come
//! from rayon's pool, which Burn's CPU backends share; the split is decided from the pool's size
//! and the chunk's work, never from figures measured on one machine.

use std::ops::Range;

use crate::RecurrenceShape;

/// Rows a shard keeps at least: fewer make each step's product too thin to keep a core's vector
/// units busy, whatever their width.
const MIN_SHARD_ROWS: usize = 4;

/// Multiply-adds a shard does at least, so that starting it (a few microseconds) stays a small
/// part of its work.
const MIN_SHARD_WORK: usize = 1 << 18;

/// How many shards the chunk `shape` is split into on this machine: one per thread of rayon's
/// pool, as far as the batch and the work go round.
pub fn shard_count(shape: RecurrenceShape) -> usize {
    shard_count_over(shape, rayon::current_num_threads())
}

/// [`shard_count`] for a pool of `threads` threads.
pub fn shard_count_over(shape: RecurrenceShape, threads: usize) -> usize {
    let batch = shape.batch_size;
    let work = shape.seq_len * batch * shape.d_hidden * shape.d_gates();
    threads
        .min(batch / MIN_SHARD_ROWS)
        .min(work / MIN_SHARD_WORK)
        .max(1)
}

/// The rows of a batch of `batch_size` streams that each of `count` shards takes, in order.
pub fn shard_rows(batch_size: usize, count: usize) -> Vec<Range<usize>> {
    (0..count)
        .map(|s| s * batch_size / count..(s + 1) * batch_size / count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CellKind;

    #[test]
    fn shards_cover_the_batch_in_order() {
        let shape = |batch_size| RecurrenceShape {
            cell: CellKind::Lstm,
            seq_len: 64,
            batch_size,
            d_hidden: 128,
        };
        for threads in 1..=5 {
            for batch in [1, 3, 4, 7, 32, 33] {
                let shards = shard_rows(batch, shard_count_over(shape(batch), threads));
                assert!(!shards.is_empty() && shards.len() <= threads);
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards.last().map(|r| r.end), Some(batch));
                for pair in shards.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].len() >= MIN_SHARD_ROWS.min(batch));
                }
            }
        }
        // A chunk too small to pay for a second thread stays on one.
        let tiny = RecurrenceShape {
            cell: CellKind::Rnn,
            seq_len: 2,
            batch_size: 32,
            d_hidden: 8,
        };
        assert_eq!(shard_count_over(tiny, 8), 1);
    }
}
