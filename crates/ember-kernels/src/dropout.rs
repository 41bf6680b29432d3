//! The mask of dropout, drawn on the host: Burn's CPU backends draw a tensor's random values one
//! after another on one thread, which was a tenth of a training step with dropout between two
//! LSTM layers of 256.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Values drawn by one generator: many enough to pay for starting it, few enough that a layer's
/// mask spreads over the threads.
const CHUNK: usize = 1 << 14;

/// A dropout mask of `len` values: each `1 / keep` with probability `keep`, else 0, so that one
/// product both drops and rescales. Chunk `i` of the mask is drawn from stream `i` of a ChaCha8
/// generator seeded with `seed`: the same seed gives the same mask on any machine and any number
/// of threads.
///
/// # Panics
/// If `keep` is not in `(0, 1]`.
pub fn dropout_mask(len: usize, keep: f32, seed: u64) -> Vec<f32> {
    assert!(keep > 0.0 && keep <= 1.0, "a kept fraction in (0, 1]");
    let scale = 1.0 / keep;
    let mut mask = vec![0.0f32; len];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(index, chunk)| {
            let mut generator = ChaCha8Rng::seed_from_u64(seed);
            generator.set_stream(index as u64);
            for value in chunk {
                if generator.random::<f32>() < keep {
                    *value = scale;
                }
            }
        });
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_keeps_its_fraction_and_rescales() {
        let len = 5 * CHUNK + 123;
        let mask = dropout_mask(len, 0.75, 7);
        assert_eq!(mask.len(), len);
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / 0.75));
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f64 / len as f64;
        // 82,043 draws: the standard deviation of the fraction is 0.0015.
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        // Chunks differ from one another, and a seed gives its own mask.
        assert_ne!(mask[..CHUNK], mask[CHUNK..2 * CHUNK]);
        assert_eq!(mask, dropout_mask(len, 0.75, 7));
        assert_ne!(mask, dropout_mask(len, 0.75, 8));
        // Whatever the thread count.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(mask, pool.install(|| dropout_mask(len, 0.75, 7)));
        assert!(dropout_mask(100, 1.0, 1).iter().all(|&m| m == 1.0));
    }
}
