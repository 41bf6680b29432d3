//! Cross-entropy losses over classes, and over the real steps of padded sequences.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops;

/// How per-step losses of a sequence become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepLoss {
    /// Summed over each sequence's real steps, then averaged over sequences: the seed's
    /// many-to-many loss, where every step's error adds to the total.
    Sum,
    /// Averaged over every real step of the batch: the same gradient direction, with a scale
    /// that does not grow with the sequence length.
    #[default]
    Mean,
}

/// The mean cross-entropy, in nats, of `logits` against class ids.
///
/// # Shapes
/// - logits: `[batch_size, num_classes]`
/// - targets: `[batch_size]`
/// - output: `[1]`
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    ops::cross_entropy_rows(logits, targets).mean()
}

/// The cross-entropy of per-step `logits` against per-step targets, over real steps only.
///
/// # Shapes
/// - logits: `[batch_size, seq_length, num_classes]`
/// - targets: `[batch_size, seq_length]`; any valid id on padding
/// - mask: `[batch_size, seq_length]`, 1 on real steps and 0 on padding
/// - output: `[1]`
pub fn masked_cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    mask: Tensor<2>,
    reduction: StepLoss,
) -> Tensor<1> {
    let [batch_size, seq_length, num_classes] = logits.dims();
    let positions = batch_size * seq_length;
    let losses = ops::cross_entropy_rows(
        logits.reshape([positions, num_classes]),
        targets.reshape([positions]),
    )
    .reshape([batch_size, seq_length]);
    let total = (losses * mask.clone()).sum();
    match reduction {
        StepLoss::Sum => total / batch_size as f64,
        StepLoss::Mean => total / mask.sum(),
    }
}
