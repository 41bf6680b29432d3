//! The fused training step of an LSTM character model: Burn runs the embedding, the head and the
//! loss with its autodiff, and the recurrent stack runs through the host kernels of
//! [`ember_model::fused`], one batch shard per thread.
//!
//! The two halves meet at two tensors. The top layer's outputs enter Burn's graph as a leaf that
//! requires a gradient, so the loss's backward pass yields the head's gradients and the gradient
//! of those outputs; the kernels turn that into the recurrent weights' gradients and the gradient
//! of the stack's input; and a second backward pass, of `sum(embedded * that gradient)`, gives the
//! embedding its gradient. Every parameter ends with exactly the gradient the plain path computes.

use std::ops::Range;

use rayon::prelude::*;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_model::fused::{
    HostState, LstmGradients, LstmWeights, host_values as host, stack_backward, stack_forward,
};
use ember_model::{CellKind, CharLm, LayerState, RecurrentState};

/// Whether `model` can train through the fused kernels: LSTM layers and no dropout between them.
pub fn supports(model: &CharLm) -> bool {
    model
        .rnn
        .layers
        .iter()
        .all(|layer| layer.cell == CellKind::Lstm)
        && model.rnn.dropout.prob == 0.0
}

/// The loss, the gradients of every parameter and the final state of one training chunk.
pub struct FusedStep {
    /// The mean cross-entropy of the chunk, in nats per character.
    pub loss: f64,
    /// The gradient of every parameter of the model.
    pub gradients: GradientsParams,
    /// The state after the chunk, on the training device.
    pub state: RecurrentState,
}

/// Rows `rows` of every step of a time-major `[seq_len, batch, width]` buffer.
fn gather(
    data: &[f32],
    seq_len: usize,
    batch: usize,
    width: usize,
    rows: &Range<usize>,
) -> Vec<f32> {
    (0..seq_len)
        .flat_map(|t| &data[(t * batch + rows.start) * width..(t * batch + rows.end) * width])
        .copied()
        .collect()
}

/// Writes a shard's `[seq_len, rows, width]` buffer back into rows `rows` of the whole batch.
fn scatter(
    whole: &mut [f32],
    part: &[f32],
    seq_len: usize,
    batch: usize,
    width: usize,
    rows: &Range<usize>,
) {
    let n = rows.len() * width;
    for t in 0..seq_len {
        whole[(t * batch + rows.start) * width..][..n].copy_from_slice(&part[t * n..(t + 1) * n]);
    }
}

/// Splits `batch` rows into at most `threads` nearly equal ranges (0: one per thread of the pool).
fn shards(batch: usize, threads: usize) -> Vec<Range<usize>> {
    let threads = match threads {
        0 => rayon::current_num_threads(),
        n => n,
    };
    let count = threads.clamp(1, batch.max(1));
    (0..count)
        .map(|k| k * batch / count..(k + 1) * batch / count)
        .filter(|range| !range.is_empty())
        .collect()
}

/// One chunk through `model` with the host kernels: `ids` and `targets` are `[batch, seq_len]`
/// on `device` (an autodiff device), `state` the state carried in, and the gradients are placed on
/// `device`'s inner device, as Burn's own backward pass places them. Splits the batch into
/// `threads` shards (0: one per core).
pub fn fused_step(
    model: &CharLm,
    ids: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    state: RecurrentState,
    device: &Device,
    threads: usize,
) -> FusedStep {
    let [batch, seq_len] = ids.dims();
    let layers: Vec<LstmWeights> = model
        .rnn
        .layers
        .iter()
        .map(|layer| {
            layer
                .lstm_weights()
                .expect("the fused path trains LSTM layers")
        })
        .collect();
    let d_input = layers[0].d_input;
    let d_hidden = layers[layers.len() - 1].d_hidden;

    // The stack's input, time-major: embedded characters, or one-hot vectors.
    let embedded = model
        .embedding
        .as_ref()
        .map(|embedding| embedding.forward(ids.clone()));
    let input = match &embedded {
        Some(embedded) => host(embedded.clone().swap_dims(0, 1)),
        None => {
            let ids = ids
                .clone()
                .swap_dims(0, 1)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .expect("ids read as i64");
            let mut one_hot = vec![0.0; ids.len() * d_input];
            for (row, &id) in ids.iter().enumerate() {
                one_hot[row * d_input + id as usize] = 1.0;
            }
            one_hot
        }
    };
    let states: Vec<(Vec<f32>, Vec<f32>)> = state
        .layers
        .into_iter()
        .map(|layer| {
            let cell = layer.cell.expect("an LSTM state has a cell vector");
            (host(layer.hidden), host(cell))
        })
        .collect();

    let ranges = shards(batch, threads);
    let shard_states = |rows: &Range<usize>| -> Vec<HostState> {
        states
            .iter()
            .zip(&layers)
            .map(|((hidden, cell), layer)| {
                let span = rows.start * layer.d_hidden..rows.end * layer.d_hidden;
                HostState {
                    hidden: hidden[span.clone()].to_vec(),
                    cell: cell[span].to_vec(),
                }
            })
            .collect()
    };
    // The shards run on the thread pool Burn's CPU backends use, so that its idle workers take
    // them instead of spinning beside extra threads.
    let tapes: Vec<_> = ranges
        .par_iter()
        .map(|rows| {
            let shard_input = gather(&input, seq_len, batch, d_input, rows);
            stack_forward(
                &layers,
                shard_input,
                &shard_states(rows),
                seq_len,
                rows.len(),
            )
        })
        .collect();

    let mut top = vec![0.0; seq_len * batch * d_hidden];
    for (tape, rows) in tapes.iter().zip(&ranges) {
        scatter(&mut top, tape.output(), seq_len, batch, d_hidden, rows);
    }
    let top = Tensor::<3>::from_data(TensorData::new(top, [seq_len, batch, d_hidden]), device)
        .require_grad();
    let logits = model.head.forward(top.clone().swap_dims(0, 1));
    let loss = CharLm::loss(logits, targets);
    let loss_value = loss.clone().into_scalar::<f64>();
    let mut burn_gradients = loss.backward();
    let d_top = host(
        top.grad(&burn_gradients)
            .expect("the outputs are a leaf of the loss"),
    );
    let mut gradients = GradientsParams::from_module(&mut burn_gradients, model);

    let shard_results: Vec<_> = tapes
        .par_iter()
        .zip(&ranges)
        .map(|(tape, rows)| {
            let d_output = gather(&d_top, seq_len, batch, d_hidden, rows);
            stack_backward(&layers, tape, d_output, embedded.is_some())
        })
        .collect();
    let mut layer_gradients: Option<Vec<LstmGradients>> = None;
    // The gradient of the embedded input, which only an embedding has a use for.
    let mut d_embedded = embedded
        .as_ref()
        .map(|_| vec![0.0; seq_len * batch * d_input]);
    for ((shard_gradients, d_input_shard), rows) in shard_results.into_iter().zip(&ranges) {
        if let (Some(whole), Some(part)) = (&mut d_embedded, d_input_shard) {
            scatter(whole, &part, seq_len, batch, d_input, rows);
        }
        match &mut layer_gradients {
            Some(sum) => sum
                .iter_mut()
                .zip(&shard_gradients)
                .for_each(|(s, g)| s.add(g)),
            None => layer_gradients = Some(shard_gradients),
        }
    }

    let inner = device.clone().inner();
    let register = |gradients: &mut GradientsParams, param: &Param<Tensor<2>>, values: Vec<f32>| {
        let shape = param.dims();
        gradients.register(
            param.id,
            Tensor::<2>::from_data(TensorData::new(values, shape), &inner),
        );
    };
    for (layer, computed) in model
        .rnn
        .layers
        .iter()
        .zip(layer_gradients.expect("a shard ran"))
    {
        register(&mut gradients, &layer.weight_ih, computed.weight_ih);
        register(&mut gradients, &layer.weight_hh, computed.weight_hh);
        for bias in [&layer.bias_ih, &layer.bias_hh] {
            let values =
                Tensor::<1>::from_data(TensorData::new(computed.bias.clone(), bias.dims()), &inner);
            gradients.register(bias.id, values);
        }
    }
    if let (Some(embedding), Some(embedded), Some(d_embedded)) =
        (&model.embedding, embedded, d_embedded)
    {
        let d_embedded = Tensor::<3>::from_data(
            TensorData::new(d_embedded, [seq_len, batch, d_input]),
            device,
        )
        .swap_dims(0, 1);
        let surrogate = (embedded * d_embedded).sum();
        let embedding_gradients = surrogate.backward();
        let weight = &embedding.weight;
        if let Some(gradient) = weight.val().grad(&embedding_gradients) {
            gradients.register(weight.id, gradient);
        }
    }

    let final_states: Vec<Vec<HostState>> = tapes.iter().map(|tape| tape.final_states()).collect();
    let layers_state = layers
        .iter()
        .enumerate()
        .map(|(k, layer)| {
            let mut hidden = vec![0.0; batch * layer.d_hidden];
            let mut cell = vec![0.0; batch * layer.d_hidden];
            for (shard, rows) in final_states.iter().zip(&ranges) {
                let span = rows.start * layer.d_hidden..rows.end * layer.d_hidden;
                hidden[span.clone()].copy_from_slice(&shard[k].hidden);
                cell[span].copy_from_slice(&shard[k].cell);
            }
            let tensor = |values| {
                Tensor::<2>::from_data(TensorData::new(values, [batch, layer.d_hidden]), device)
            };
            LayerState {
                hidden: tensor(hidden),
                cell: Some(tensor(cell)),
            }
        })
        .collect();
    FusedStep {
        loss: loss_value,
        gradients,
        state: RecurrentState {
            layers: layers_state,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, ModuleVisitor};
    use ember_model::CharLmConfig;

    /// Every parameter's gradient, by parameter id, read from `gradients`.
    fn by_param(model: &CharLm, gradients: &GradientsParams) -> Vec<(String, Vec<f32>)> {
        struct Collect<'a>(&'a GradientsParams, Vec<(String, Vec<f32>)>);
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let gradient = self
                    .0
                    .get::<D>(param.id)
                    .expect("every parameter has a gradient");
                self.1.push((format!("{:?}", param.dims()), host(gradient)));
            }
        }
        let mut collect = Collect(gradients, Vec::new());
        model.visit(&mut collect);
        collect.1
    }

    fn ids(
        batch: usize,
        seq_len: usize,
        vocab: usize,
        seed: usize,
        device: &Device,
    ) -> Tensor<2, Int> {
        let values: Vec<i64> = (0..batch * seq_len)
            .map(|i| ((i * 7 + seed * 13 + i / 3) % vocab) as i64)
            .collect();
        Tensor::from_data(TensorData::new(values, [batch, seq_len]), device)
    }

    /// The fused step gives the plain path's loss, gradients and final state, with an embedding
    /// and with one-hot inputs, from a zero and from a carried state, on 1 and 3 threads.
    #[test]
    fn the_fused_step_equals_the_plain_path() {
        let device = Device::flex().autodiff();
        for d_embed in [0, 5] {
            device.seed(3);
            let model = CharLmConfig::new(11, CellKind::Lstm, 6)
                .with_num_layers(2)
                .with_d_embed(d_embed)
                .init(&device);
            let (batch, seq_len) = (5, 7);
            let carried = {
                let (_, state) = model.forward(ids(batch, seq_len, 11, 9, &device), None);
                state.detach()
            };
            for (state, threads) in [(model.zero_state(batch, &device), 1), (carried, 3)] {
                let inputs = ids(batch, seq_len, 11, 1, &device);
                let targets = ids(batch, seq_len, 11, 2, &device);
                let (loss, plain_state) =
                    model.forward_loss(inputs.clone(), targets.clone(), Some(state.clone()));
                let plain_loss = loss.clone().into_scalar::<f64>();
                let plain = GradientsParams::from_grads(loss.backward(), &model);
                let fused = fused_step(&model, inputs, targets, state, &device, threads);
                assert!(
                    (fused.loss - plain_loss).abs() < 1e-5,
                    "{} vs {plain_loss}",
                    fused.loss
                );
                for ((shape, p), (_, f)) in by_param(&model, &plain)
                    .into_iter()
                    .zip(by_param(&model, &fused.gradients))
                {
                    for (a, b) in p.iter().zip(&f) {
                        assert!(
                            (a - b).abs() < 1e-5 * (1.0 + a.abs()),
                            "d_embed {d_embed}, {shape}: plain {a} fused {b}"
                        );
                    }
                }
                for (p, f) in plain_state.layers.into_iter().zip(fused.state.layers) {
                    for (a, b) in host(p.hidden).iter().zip(host(f.hidden)) {
                        assert!((a - b).abs() < 1e-5);
                    }
                }
            }
        }
    }
}
