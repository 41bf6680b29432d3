//! Tensors from padded batches, shared by the examples.
#![allow(dead_code)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_data::PaddedBatch;

/// The ids of a padded batch, `[batch_size, max_len]`.
pub fn ids(batch: &PaddedBatch, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(batch.ids.clone(), [batch.batch_size, batch.max_len]),
        device,
    )
}

/// 1 on a padded batch's real steps, 0 on its padding, `[batch_size, max_len]`.
pub fn mask(batch: &PaddedBatch, device: &Device) -> Tensor<2> {
    ember_model::length_mask(&batch.lengths, batch.max_len, device)
}

/// One class id per row, `[batch_size]`.
pub fn classes(ids: &[usize], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::from_data(TensorData::new(values, [ids.len()]), device)
}

/// The share of `predicted` equal to `expected`.
pub fn accuracy(predicted: &[usize], expected: &[usize]) -> f64 {
    let right = predicted
        .iter()
        .zip(expected)
        .filter(|(p, e)| p == e)
        .count();
    right as f64 / expected.len().max(1) as f64
}

/// The share of the most common value: what always guessing it scores.
pub fn majority_share(values: &[usize]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for value in values {
        *counts.entry(value).or_insert(0usize) += 1;
    }
    counts.values().copied().max().unwrap_or(0) as f64 / values.len().max(1) as f64
}
