//! Cross-entropy of logits against class ids, forward and backward side by side: one pass over
//! a row's logits for its loss and its softmax, one over the softmax for the logits' gradient,
//! the rows spread over rayon's pool.

use rayon::prelude::*;

use crate::activation::exp;
use crate::dispatch_simd;

/// Rows one task takes: enough to pay for handing it to a thread.
const ROWS_PER_TASK: usize = 64;

/// Each row's loss `log sum_j e^{x_j} - x_target` and its softmax, which the backward pass
/// reads: `(losses, probabilities)`, `[rows]` and `[rows, classes]` for `logits`
/// (`[rows, classes]`).
///
/// # Panics
/// If `logits` is not `targets.len()` rows of `classes`, or a target is not below `classes`.
pub fn cross_entropy_forward(
    logits: &[f32],
    classes: usize,
    targets: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    check(logits.len(), classes, targets);
    let mut losses = vec![0.0; targets.len()];
    let mut probabilities = vec![0.0; logits.len()];
    losses
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(probabilities.par_chunks_mut(ROWS_PER_TASK * classes))
        .zip(logits.par_chunks(ROWS_PER_TASK * classes))
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .for_each(|(((losses, probabilities), logits), targets)| {
            rows_forward(logits, classes, targets, losses, probabilities)
        });
    (losses, probabilities)
}

/// The gradient of the logits from the softmax [`cross_entropy_forward`] returned and the
/// gradient of each row's loss: `d_loss (softmax(x) - onehot(target))`, row by row.
///
/// # Panics
/// If the slices do not have the shapes [`cross_entropy_forward`] took and returned.
pub fn cross_entropy_backward(
    probabilities: &[f32],
    classes: usize,
    targets: &[usize],
    d_losses: &[f32],
) -> Vec<f32> {
    check(probabilities.len(), classes, targets);
    assert_eq!(d_losses.len(), targets.len(), "one loss gradient per row");
    let mut d_logits = probabilities.to_vec();
    d_logits
        .par_chunks_mut(ROWS_PER_TASK * classes)
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .zip(d_losses.par_chunks(ROWS_PER_TASK))
        .for_each(|((d_logits, targets), d_losses)| {
            for ((d_row, &target), &d_loss) in d_logits
                .chunks_exact_mut(classes)
                .zip(targets)
                .zip(d_losses)
            {
                d_row[target] -= 1.0;
                for d in d_row.iter_mut() {
                    *d *= d_loss;
                }
            }
        });
    d_logits
}

dispatch_simd!(
    rows_forward,
    rows_forward_avx512,
    rows_forward_avx2,
    rows_forward_portable,
    (logits: &[f32], classes: usize, targets: &[usize], losses: &mut [f32], probabilities: &mut [f32]) -> ()
);

/// [`cross_entropy_forward`] on a block of rows.
#[inline(always)]
fn rows_forward_portable(
    logits: &[f32],
    classes: usize,
    targets: &[usize],
    losses: &mut [f32],
    probabilities: &mut [f32],
) {
    let rows = logits
        .chunks_exact(classes)
        .zip(probabilities.chunks_exact_mut(classes))
        .zip(targets);
    for (k, ((row, exps), &target)) in rows.enumerate() {
        // Shifted by the row's largest value, so that no term overflows. The exponentials are
        // stored before they are summed: summed as they are computed, the loop would be a
        // sequential f32 reduction and would not vectorize.
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (e, &x) in exps.iter_mut().zip(row) {
            *e = exp(x - max);
        }
        let sum: f32 = exps.iter().sum();
        let scale = 1.0 / sum;
        for e in exps.iter_mut() {
            *e *= scale;
        }
        losses[k] = max + sum.ln() - row[target];
    }
}

fn check(len: usize, classes: usize, targets: &[usize]) {
    assert!(classes > 0, "at least one class");
    assert_eq!(
        len,
        targets.len() * classes,
        "the logits are [rows, classes], one row per target"
    );
    assert!(
        targets.iter().all(|&target| target < classes),
        "every target is a class id below {classes}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The losses in f64 from the definition, and their gradients by central differences.
    #[test]
    fn losses_and_gradients_match_the_definition() {
        let (rows, classes) = (130, 7);
        let logits: Vec<f32> = (0..rows * classes)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.09)
            .collect();
        let targets: Vec<usize> = (0..rows).map(|r| r * 5 % classes).collect();
        let reference = |logits: &[f32]| -> Vec<f64> {
            logits
                .chunks_exact(classes)
                .zip(&targets)
                .map(|(row, &target)| {
                    let sum: f64 = row.iter().map(|&x| f64::from(x).exp()).sum();
                    sum.ln() - f64::from(row[target])
                })
                .collect()
        };
        let (losses, probabilities) = cross_entropy_forward(&logits, classes, &targets);
        let expected = reference(&logits);
        assert_eq!(losses.len(), expected.len());
        for (got, want) in losses.iter().zip(&expected) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-5,
                "{got} against {want}"
            );
        }
        let d_losses: Vec<f32> = (0..rows).map(|r| (r % 3) as f32 - 0.5).collect();
        let d_logits = cross_entropy_backward(&probabilities, classes, &targets, &d_losses);
        assert_eq!(d_logits.len(), logits.len());
        let eps = 1e-2;
        for i in (0..logits.len()).step_by(11) {
            let mut shifted = logits.clone();
            shifted[i] += eps;
            let up = reference(&shifted);
            shifted[i] -= 2.0 * eps;
            let down = reference(&shifted);
            let row = i / classes;
            let numeric = f64::from(d_losses[row]) * (up[row] - down[row]) / (2.0 * f64::from(eps));
            assert!(
                (f64::from(d_logits[i]) - numeric).abs() < 1e-4,
                "logit {i}: {} against {numeric}",
                d_logits[i]
            );
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let (losses, _) = cross_entropy_forward(&[1000.0, 0.0, -1000.0, 999.0], 2, &[0, 0]);
        assert!(losses[0].abs() < 1e-6 && (losses[1] - 1999.0).abs() < 1e-3);
    }
}
