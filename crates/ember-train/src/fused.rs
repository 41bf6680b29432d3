//! The fused training step of a character model: the whole step (embedding, recurrent
//! stack, head and loss, forward and backward) runs through the host kernels of
//! [`ember_model::fused`], one batch shard per thread of the pool Burn's CPU backends use.
//!
//! The streams of a batch are independent until their gradients are summed, so each shard runs
//! from its characters to its gradients without waiting for the others; the loss is the batch's
//! mean, so every shard scales its gradients by the batch's row count and the sums are exact.
//! Burn's optimizer then applies the gradients, which are registered under the parameters' ids
//! exactly as Burn's own backward pass would register them; the plain path (Burn's autodiff over
//! the cells' tensor operations) stays the reference the tests hold this one to.

use std::ops::Range;

use rayon::prelude::*;

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use ember_model::fused::{
    HeadGradients, HeadWeights, HostState, LayerGradients, LayerWeights, StackInput, add_into,
    head_loss, host_values as host, prefers_split, split_chunk, stack_backward, stack_forward,
};
use ember_model::{CharLm, LayerState, RecurrentState};

/// Whether `model` can train through the fused kernels: any cell, and no dropout between the
/// layers.
pub fn supports(model: &CharLm) -> bool {
    model.rnn.dropout.prob == 0.0
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

/// What one shard of the batch computes.
struct ShardStep {
    loss_sum: f64,
    layers: Vec<LayerGradients>,
    head: HeadGradients,
    /// The embedding table's gradient, `[vocab_size, d_embed]`, for models with an embedding.
    embedding: Option<Vec<f32>>,
    final_states: Vec<HostState>,
}

impl ShardStep {
    fn add(&mut self, other: ShardStep) {
        self.loss_sum += other.loss_sum;
        for (sum, part) in self.layers.iter_mut().zip(&other.layers) {
            sum.add(part);
        }
        add_into(&mut self.head.weight, &other.head.weight);
        add_into(&mut self.head.bias, &other.head.bias);
        if let (Some(sum), Some(part)) = (&mut self.embedding, &other.embedding) {
            add_into(sum, part);
        }
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

/// `[batch, seq_len]` ids as host values, time-major: `[seq_len, batch]`.
fn time_major_ids(ids: Tensor<2, Int>) -> Vec<usize> {
    ids.swap_dims(0, 1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("ids read as i64")
        .into_iter()
        .map(|id| usize::try_from(id).expect("ids are not negative"))
        .collect()
}

/// A chunk and the model's weights, read into host memory.
struct HostChunk {
    layers: Vec<LayerWeights>,
    head: HeadWeights,
    /// The embedding table, `[vocab_size, d_embed]`, for models with an embedding.
    table: Option<Vec<f32>>,
    /// Time-major, `[seq_len * batch]`.
    ids: Vec<usize>,
    /// Time-major, `[seq_len * batch]`.
    targets: Vec<usize>,
    /// The state carried in, per layer.
    states: Vec<HostState>,
    batch: usize,
    seq_len: usize,
}

/// One shard's rows of a [`HostChunk`].
struct Shard {
    input: StackInput,
    /// Whether `input` goes by ids (else the table's rows, gathered).
    by_ids: bool,
    ids: Vec<usize>,
    targets: Vec<usize>,
    states: Vec<HostState>,
}

impl HostChunk {
    fn new(
        model: &CharLm,
        ids: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: RecurrentState,
    ) -> HostChunk {
        let [batch, seq_len] = ids.dims();
        HostChunk {
            layers: model
                .rnn
                .layers
                .iter()
                .map(|layer| layer.host_weights())
                .collect(),
            head: model.host_head(),
            table: model
                .embedding
                .as_ref()
                .map(|embedding| host(embedding.weight.val())),
            ids: time_major_ids(ids),
            targets: time_major_ids(targets),
            states: state
                .layers
                .into_iter()
                .map(|layer| HostState {
                    hidden: host(layer.hidden),
                    cell: layer.cell.map_or_else(Vec::new, host),
                })
                .collect(),
            batch,
            seq_len,
        }
    }

    /// The batch's streams `rows`.
    fn shard(&self, rows: &Range<usize>) -> Shard {
        let picked = |values: &[usize]| -> Vec<usize> {
            (0..self.seq_len)
                .flat_map(|t| &values[t * self.batch + rows.start..t * self.batch + rows.end])
                .copied()
                .collect()
        };
        let ids = picked(&self.ids);
        let d_input = self.layers[0].d_input;
        let vocab_size = self.head.bias.len();
        // Products through the vocabulary pay where it is smaller than the chunk; a larger one
        // takes its rows of the table.
        let by_ids = vocab_size <= ids.len();
        let input = match (&self.table, by_ids) {
            (Some(table), false) => StackInput::Rows(
                ids.iter()
                    .flat_map(|&id| &table[id * d_input..(id + 1) * d_input])
                    .copied()
                    .collect(),
            ),
            _ => StackInput::Ids {
                ids: ids.clone(),
                table: self.table.clone(),
            },
        };
        let states = self
            .states
            .iter()
            .zip(&self.layers)
            .map(|(state, layer)| {
                let span = rows.start * layer.d_hidden..rows.end * layer.d_hidden;
                HostState {
                    hidden: state.hidden[span.clone()].to_vec(),
                    cell: state.cell.get(span).map_or_else(Vec::new, <[f32]>::to_vec),
                }
            })
            .collect();
        Shard {
            input,
            by_ids,
            targets: picked(&self.targets),
            ids,
            states,
        }
    }
}

/// The mean cross-entropy of one chunk (nats per character) and the state after it, through the
/// host kernels' forward pass, in one shard per thread of the pool: what
/// [`CharLm::forward_loss`] gives without dropout, as evaluation runs it, without a graph.
pub fn fused_loss(
    model: &CharLm,
    ids: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    state: RecurrentState,
    device: &Device,
) -> (f64, RecurrentState) {
    let chunk = HostChunk::new(model, ids, targets, state);
    let ranges = shards(chunk.batch, 0);
    let (losses, final_states): (Vec<f64>, Vec<Vec<HostState>>) = ranges
        .par_iter()
        .map(|rows| {
            let shard = chunk.shard(rows);
            let tape = stack_forward(
                &chunk.layers,
                shard.input,
                &shard.states,
                chunk.seq_len,
                rows.len(),
            );
            let step = head_loss(&chunk.head, tape.output(), &shard.targets, 1.0);
            (step.loss_sum, tape.final_states())
        })
        .unzip();
    let loss = losses.iter().sum::<f64>() / (chunk.batch * chunk.seq_len) as f64;
    let state = carried_state(model, device, &final_states, &ranges, chunk.batch);
    (loss, state)
}

/// How a step divides its work between threads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// The batch in this many shards, one per thread (0: as the model's size pays, see
    /// [`fused_step`]).
    Shards(usize),
    /// Every layer's hidden units in two halves, on two threads.
    // Chosen by `Shards(0)` where it pays; the tests ask for it outright.
    #[cfg_attr(not(test), allow(dead_code))]
    Split,
}

/// One chunk through `model` with the host kernels: `ids` and `targets` are `[batch, seq_len]`
/// on `device` (an autodiff device), `state` the state carried in, and the gradients are placed on
/// `device`'s inner device, as Burn's own backward pass places them. Splits the batch into
/// `threads` shards; 0 chooses: every layer's units split in two halves on two threads where the
/// recurrent weights are large ([`prefers_split`]) and the pool has two threads, else one shard
/// per thread of the pool.
pub fn fused_step(
    model: &CharLm,
    ids: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    state: RecurrentState,
    device: &Device,
    threads: usize,
) -> FusedStep {
    step_with(model, ids, targets, state, device, Plan::Shards(threads))
}

/// Runs `part(0)` and `part(1)` at the same time: the second on a thread of the pool where this
/// thread is outside it (a pool thread waiting here could hold back the very job it waits for),
/// else on a scoped thread of its own.
fn run_both(part: &(dyn Fn(usize) + Sync)) {
    if rayon::current_thread_index().is_none() {
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| part(1));
            part(0);
        });
    } else {
        std::thread::scope(|scope| {
            scope.spawn(|| part(1));
            part(0);
        });
    }
}

fn step_with(
    model: &CharLm,
    ids: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    state: RecurrentState,
    device: &Device,
    plan: Plan,
) -> FusedStep {
    let chunk = HostChunk::new(model, ids, targets, state);
    let HostChunk {
        layers,
        head,
        table,
        ids,
        targets,
        states,
        batch,
        seq_len,
    } = &chunk;
    let (batch, seq_len) = (*batch, *seq_len);
    let scale = 1.0 / (batch * seq_len) as f32;

    // The number of shards, or `None` for units split in two.
    let shard_threads = match plan {
        Plan::Split => None,
        Plan::Shards(0)
            if rayon::current_num_threads() >= 2
                && prefers_split(layers)
                && model.vocab_size() <= batch * seq_len =>
        {
            None
        }
        Plan::Shards(threads) => Some(threads),
    };
    let Some(threads) = shard_threads else {
        let split = split_chunk(
            layers,
            head,
            ids,
            table.as_deref(),
            targets,
            states,
            (seq_len, batch),
            scale,
            run_both,
        );
        let sum = ShardStep {
            loss_sum: split.loss_sum,
            layers: split.layers,
            head: split.head,
            embedding: split.table,
            final_states: Vec::new(),
        };
        return registered(
            model,
            device,
            sum,
            vec![split.final_states],
            &[0..batch],
            (batch, seq_len),
        );
    };
    let ranges = shards(batch, threads);
    let mut steps = ranges
        .par_iter()
        .map(|rows| {
            let shard = chunk.shard(rows);
            let tape = stack_forward(layers, shard.input, &shard.states, seq_len, rows.len());
            let head_step = head_loss(head, tape.output(), &shard.targets, scale);
            let (layer_gradients, d_embedded) =
                stack_backward(layers, &tape, head_step.d_hidden, table.is_some());
            // The table's gradient: given, or summed per character from the rows'.
            let embedding = d_embedded.map(|d_embedded| {
                if shard.by_ids {
                    return d_embedded;
                }
                let d_input = layers[0].d_input;
                let mut gradient = vec![0.0; model.vocab_size() * d_input];
                for (row, &id) in d_embedded.chunks_exact(d_input).zip(&shard.ids) {
                    add_into(&mut gradient[id * d_input..(id + 1) * d_input], row);
                }
                gradient
            });
            ShardStep {
                loss_sum: head_step.loss_sum,
                layers: layer_gradients,
                head: head_step.gradients,
                embedding,
                final_states: tape.final_states(),
            }
        })
        .collect::<Vec<_>>()
        .into_iter();
    let mut sum = steps.next().expect("a batch has a shard");
    let mut final_states = vec![std::mem::take(&mut sum.final_states)];
    for mut step in steps {
        final_states.push(std::mem::take(&mut step.final_states));
        sum.add(step);
    }
    registered(model, device, sum, final_states, &ranges, (batch, seq_len))
}

/// The summed gradients of a chunk registered under the model's parameters, on `device`'s inner
/// device, and the final states of the batch's row ranges `ranges` (one set per range) as the
/// state on `device`.
fn registered(
    model: &CharLm,
    device: &Device,
    sum: ShardStep,
    final_states: Vec<Vec<HostState>>,
    ranges: &[Range<usize>],
    (batch, seq_len): (usize, usize),
) -> FusedStep {
    let inner = device.clone().inner();
    let mut gradients = GradientsParams::new();
    let register_2d =
        |gradients: &mut GradientsParams, param: &Param<Tensor<2>>, values: Vec<f32>| {
            let values = Tensor::<2>::from_data(TensorData::new(values, param.dims()), &inner);
            gradients.register(param.id, values);
        };
    let register_1d =
        |gradients: &mut GradientsParams, param: &Param<Tensor<1>>, values: Vec<f32>| {
            let values = Tensor::<1>::from_data(TensorData::new(values, param.dims()), &inner);
            gradients.register(param.id, values);
        };
    for (layer, computed) in model.rnn.layers.iter().zip(sum.layers) {
        register_2d(&mut gradients, &layer.weight_ih, computed.weight_ih);
        register_2d(&mut gradients, &layer.weight_hh, computed.weight_hh);
        register_1d(&mut gradients, &layer.bias_ih, computed.bias_ih);
        register_1d(&mut gradients, &layer.bias_hh, computed.bias_hh);
    }
    register_2d(&mut gradients, &model.head.weight, sum.head.weight);
    if let Some(bias) = &model.head.bias {
        register_1d(&mut gradients, bias, sum.head.bias);
    }
    if let (Some(embedding), Some(values)) = (&model.embedding, sum.embedding) {
        register_2d(&mut gradients, &embedding.weight, values);
    }

    FusedStep {
        loss: sum.loss_sum / (batch * seq_len) as f64,
        gradients,
        state: carried_state(model, device, &final_states, ranges, batch),
    }
}

/// The final states of the batch's row ranges `ranges` (one set per range) as the state of the
/// whole batch on `device`.
fn carried_state(
    model: &CharLm,
    device: &Device,
    final_states: &[Vec<HostState>],
    ranges: &[Range<usize>],
    batch: usize,
) -> RecurrentState {
    let layers = model
        .rnn
        .layers
        .iter()
        .enumerate()
        .map(|(k, layer)| {
            let has_cell = layer.cell.has_cell_state();
            let d_hidden = layer.d_hidden();
            let mut hidden = vec![0.0; batch * d_hidden];
            let mut cell = vec![0.0; if has_cell { batch * d_hidden } else { 0 }];
            for (shard, rows) in final_states.iter().zip(ranges) {
                let span = rows.start * d_hidden..rows.end * d_hidden;
                hidden[span.clone()].copy_from_slice(&shard[k].hidden);
                if has_cell {
                    cell[span].copy_from_slice(&shard[k].cell);
                }
            }
            let tensor =
                |values| Tensor::<2>::from_data(TensorData::new(values, [batch, d_hidden]), device);
            LayerState {
                hidden: tensor(hidden),
                cell: has_cell.then(|| tensor(cell)),
            }
        })
        .collect();
    RecurrentState { layers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, ModuleVisitor};
    use ember_model::{CellKind, CharLmConfig};

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

    /// The fused forward pass gives the plain path's loss and final state, for every cell, with
    /// an embedding (a vocabulary smaller than a shard's rows, and larger) and one-hot inputs,
    /// from a zero and from a carried state.
    #[test]
    fn the_fused_loss_equals_the_plain_path() {
        let device = Device::flex();
        for cell in CellKind::ALL {
            for (vocab, d_embed) in [(11, 0), (11, 5), (40, 5)] {
                device.seed(4);
                let model = CharLmConfig::new(vocab, cell, 6)
                    .with_num_layers(2)
                    .with_d_embed(d_embed)
                    .init(&device);
                let (batch, seq_len) = (5, 7);
                let inputs = ids(batch, seq_len, vocab, 1, &device);
                let targets = ids(batch, seq_len, vocab, 2, &device);
                let carried = model
                    .forward(ids(batch, seq_len, vocab, 9, &device), None)
                    .1;
                for state in [model.zero_state(batch, &device), carried] {
                    let (loss, plain_state) =
                        model.forward_loss(inputs.clone(), targets.clone(), Some(state.clone()));
                    let plain_loss = loss.into_scalar::<f64>();
                    let (fused_loss, fused_state) =
                        fused_loss(&model, inputs.clone(), targets.clone(), state, &device);
                    let what = format!("{cell}, vocab {vocab}, d_embed {d_embed}");
                    assert!(
                        (fused_loss - plain_loss).abs() < 1e-5,
                        "{what}: {fused_loss} vs {plain_loss}"
                    );
                    for (p, f) in plain_state.layers.into_iter().zip(fused_state.layers) {
                        for (a, b) in host(p.hidden).iter().zip(host(f.hidden)) {
                            assert!((a - b).abs() < 1e-5, "{what}: hidden {a} vs {b}");
                        }
                        if let (Some(pc), Some(fc)) = (p.cell, f.cell) {
                            for (a, b) in host(pc).iter().zip(host(fc)) {
                                assert!((a - b).abs() < 1e-5, "{what}: cell {a} vs {b}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The fused step gives the plain path's loss, gradients and final state, for every cell,
    /// with an embedding and with one-hot inputs, from a zero and from a carried state, in 1 and
    /// 3 shards and split by units.
    #[test]
    fn the_fused_step_equals_the_plain_path() {
        let device = Device::flex().autodiff();
        for (cell, d_embed) in CellKind::ALL.into_iter().flat_map(|c| [(c, 0), (c, 5)]) {
            device.seed(3);
            let model = CharLmConfig::new(11, cell, 6)
                .with_num_layers(2)
                .with_d_embed(d_embed)
                .init(&device);
            let (batch, seq_len) = (5, 7);
            let carried = {
                let (_, state) = model.forward(ids(batch, seq_len, 11, 9, &device), None);
                state.detach()
            };
            for (state, plan) in [
                (model.zero_state(batch, &device), Plan::Shards(1)),
                (carried.clone(), Plan::Shards(3)),
                (carried, Plan::Split),
            ] {
                let inputs = ids(batch, seq_len, 11, 1, &device);
                let targets = ids(batch, seq_len, 11, 2, &device);
                let (loss, plain_state) =
                    model.forward_loss(inputs.clone(), targets.clone(), Some(state.clone()));
                let plain_loss = loss.clone().into_scalar::<f64>();
                let plain = GradientsParams::from_grads(loss.backward(), &model);
                let fused = step_with(&model, inputs, targets, state, &device, plan);
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
                            "{cell}, d_embed {d_embed}, {plan:?}, {shape}: plain {a} fused {b}"
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
