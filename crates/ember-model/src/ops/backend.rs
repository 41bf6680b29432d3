//! The recurrence as a Burn backend extension: host kernels on the CPU backends, and one
//! autodiff implementation whose backward node calls the kernels' backward pass.

// NdArray is deprecated upstream, but it is one of the two CPU backends Ember supports.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn::tensor::{Shape, TensorData, try_read_sync};
use ember_kernels::{CellKind, RecurrenceInputs, RecurrenceShape};

/// The recurrence op of one layer over a chunk, as backends implement it.
///
/// Its output stacks the hidden vectors of every step and the final state in one tensor,
/// `[seq_len + S, batch_size, d_hidden]`: rows `0..seq_len` the outputs, then the final hidden
/// vectors, then (LSTM, `S = 2`) the final cells. One output keeps the autodiff node single.
///
/// Burn 0.22.1's extension macro routes plain tensors only (no `Option`), so the optional
/// inputs are always passed and flagged: `cell` is read for the LSTM only, `mask` only when
/// `masked`; callers pass any tensor of the batch in their place (see [`super::recurrence`]).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube"),
    Autodiff,
)]
pub trait RecurrenceBackend: Backend {
    /// The forward pass and, with `keep_tape`, the tape its backward pass reads (without it, a
    /// placeholder).
    ///
    /// # Shapes
    /// - projected: `[seq_len, batch_size, G * d_hidden]`
    /// - weight_hh: `[d_hidden, G * d_hidden]`; bias_hh: `[G * d_hidden]`
    /// - hidden, cell: `[batch_size, d_hidden]`; mask: `[seq_len, batch_size]`
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |projected, _weight_hh, _bias_hh, hidden, _cell, _mask, kind, _masked, keep_tape| {
        super::cube::forward_specs(projected, hidden, kind, keep_tape)
    })]
    fn recurrence_forward(
        projected: FloatTensor<Self>,
        weight_hh: FloatTensor<Self>,
        bias_hh: FloatTensor<Self>,
        hidden: FloatTensor<Self>,
        cell: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        kind: CellKind,
        masked: bool,
        keep_tape: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The backward pass of [`recurrence_forward`](Self::recurrence_forward): from the gradient
    /// of its stacked output to those of `projected`, `weight_hh`, `bias_hh`, `hidden` and
    /// `cell` (for other cells, the hidden state's again).
    #[fusion(meta = |_tape, weight_hh, _mask, d_stacked, kind, _masked| {
        super::cube::backward_specs(weight_hh, d_stacked, kind)
    })]
    fn recurrence_backward(
        tape: FloatTensor<Self>,
        weight_hh: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        d_stacked: FloatTensor<Self>,
        kind: CellKind,
        masked: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// The gradients [`RecurrenceBackend::recurrence_backward`] returns: of the projected inputs,
/// `W_hh`, `b_hh`, the initial hidden vectors and the initial cells (LSTM; for other cells the
/// initial hidden vectors' again). The trait spells the tuple out: its macro reads no aliases.
pub type RecurrenceGradientTensors<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

/// A tensor's values in host memory, as `f32`; [`values`] borrows them. A CPU backend hands over
/// an unshared contiguous tensor's buffer as it is; taking it into a `Vec<f32>` instead would
/// copy it whenever the backend allocated it with a wider alignment than `f32`'s, as Flex does.
pub(super) fn host<B: Backend>(tensor: FloatTensor<B>) -> TensorData {
    try_read_sync(B::float_into_data(tensor))
        .expect("a CPU backend reads synchronously")
        .expect("a CPU backend's tensor reads back")
        .convert::<f32>()
}

pub(super) fn values(data: &TensorData) -> &[f32] {
    data.as_slice::<f32>().expect("values converted to f32")
}

pub(super) fn tensor<B: Backend>(
    values: Vec<f32>,
    shape: impl Into<Shape>,
    device: &B::Device,
) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(values, shape.into()), device)
}

fn shape_of<B: Backend>(
    projected: &FloatTensor<B>,
    hidden: &FloatTensor<B>,
    kind: CellKind,
) -> RecurrenceShape {
    let projected = projected.shape();
    RecurrenceShape {
        cell: kind,
        seq_len: projected[0],
        batch_size: projected[1],
        d_hidden: hidden.shape()[1],
    }
}

/// [`RecurrenceBackend::recurrence_forward`] through the host kernels.
#[allow(clippy::too_many_arguments, dead_code)]
fn host_forward<B: Backend>(
    projected: FloatTensor<B>,
    weight_hh: FloatTensor<B>,
    bias_hh: FloatTensor<B>,
    hidden: FloatTensor<B>,
    cell: FloatTensor<B>,
    mask: FloatTensor<B>,
    kind: CellKind,
    masked: bool,
    keep_tape: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let device = projected.device();
    let shape = shape_of::<B>(&projected, &hidden, kind);
    let (projected, weight_hh, bias_hh, hidden) = (
        host::<B>(projected),
        host::<B>(weight_hh),
        host::<B>(bias_hh),
        host::<B>(hidden),
    );
    let cell = (kind == CellKind::Lstm).then(|| host::<B>(cell));
    let mask = masked.then(|| host::<B>(mask));
    let inputs = RecurrenceInputs {
        projected: values(&projected),
        weight_hh: values(&weight_hh),
        bias_hh: values(&bias_hh),
        hidden: values(&hidden),
        cell: cell.as_ref().map_or(&[], values),
        mask: mask.as_ref().map(values),
    };
    let result = ember_kernels::forward(shape, &inputs, keep_tape);
    let (steps, batch, h) = (shape.seq_len, shape.batch_size, shape.d_hidden);
    let mut stacked = result.outputs;
    stacked.extend_from_slice(&result.hidden);
    stacked.extend_from_slice(&result.cell);
    let rows = steps + kind.num_states();
    let stacked = tensor::<B>(stacked, [rows, batch, h], &device);
    let tape = match keep_tape {
        true => {
            let len = result.tape.len();
            tensor::<B>(result.tape, [len], &device)
        }
        false => stacked.clone(),
    };
    (stacked, tape)
}

/// [`RecurrenceBackend::recurrence_backward`] through the host kernels.
#[allow(dead_code)]
fn host_backward<B: Backend>(
    tape: FloatTensor<B>,
    weight_hh: FloatTensor<B>,
    mask: FloatTensor<B>,
    d_stacked: FloatTensor<B>,
    kind: CellKind,
    masked: bool,
) -> RecurrenceGradientTensors<B> {
    let device = d_stacked.device();
    let [rows, batch, h] = d_stacked.shape().dims();
    let steps = rows - kind.num_states();
    let shape = RecurrenceShape {
        cell: kind,
        seq_len: steps,
        batch_size: batch,
        d_hidden: h,
    };
    let g = shape.d_gates();
    let d_stacked = host::<B>(d_stacked);
    let (d_outputs, d_state) = values(&d_stacked).split_at(steps * batch * h);
    let (d_hidden, d_cell) = d_state.split_at(batch * h);
    let mask = masked.then(|| host::<B>(mask));
    let gradients = ember_kernels::backward(
        shape,
        values(&host::<B>(weight_hh)),
        mask.as_ref().map(values),
        values(&host::<B>(tape)),
        d_outputs,
        d_hidden,
        d_cell,
    );
    let hidden = tensor::<B>(gradients.hidden, [batch, h], &device);
    let cell = match kind {
        CellKind::Lstm => tensor::<B>(gradients.cell, [batch, h], &device),
        _ => hidden.clone(),
    };
    (
        tensor::<B>(gradients.projected, [steps, batch, g], &device),
        tensor::<B>(gradients.weight_hh, [h, g], &device),
        tensor::<B>(gradients.bias_hh, [g], &device),
        hidden,
        cell,
    )
}

/// Implements the extension on a CPU backend through the host kernels.
macro_rules! host_kernels {
    ($backend:ty) => {
        impl RecurrenceBackend for $backend {
            fn recurrence_forward(
                projected: FloatTensor<Self>,
                weight_hh: FloatTensor<Self>,
                bias_hh: FloatTensor<Self>,
                hidden: FloatTensor<Self>,
                cell: FloatTensor<Self>,
                mask: FloatTensor<Self>,
                kind: CellKind,
                masked: bool,
                keep_tape: bool,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                host_forward::<Self>(
                    projected, weight_hh, bias_hh, hidden, cell, mask, kind, masked, keep_tape,
                )
            }

            fn recurrence_backward(
                tape: FloatTensor<Self>,
                weight_hh: FloatTensor<Self>,
                mask: FloatTensor<Self>,
                d_stacked: FloatTensor<Self>,
                kind: CellKind,
                masked: bool,
            ) -> RecurrenceGradientTensors<Self> {
                host_backward::<Self>(tape, weight_hh, mask, d_stacked, kind, masked)
            }
        }
    };
}

#[cfg(feature = "flex")]
host_kernels!(burn::backend::Flex);
#[cfg(feature = "ndarray")]
host_kernels!(burn::backend::NdArray);

/// The autodiff node of the op: `N` differentiable inputs (projected, `W_hh`, `b_hh`, `h_0`,
/// and `c_0` for the LSTM).
#[derive(Debug)]
struct RecurrenceNode<const N: usize> {
    kind: CellKind,
    masked: bool,
}

/// What the backward pass keeps: the tape, `W_hh` and the mask.
type NodeState<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

impl<B: Backend + RecurrenceBackend, const N: usize> Backward<B, N> for RecurrenceNode<N> {
    type State = NodeState<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (tape, weight_hh, mask) = ops.state;
        let d_stacked = grads.consume::<B>(&ops.node);
        let (projected, weight, bias, hidden, cell) =
            B::recurrence_backward(tape, weight_hh, mask, d_stacked, self.kind, self.masked);
        // `N` parents: the cell's gradient is read for the LSTM's fifth only.
        let gradients = [projected, weight, bias, hidden, cell];
        for (parent, gradient) in ops.parents.into_iter().zip(gradients) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, gradient);
            }
        }
    }
}

impl<B: Backend + RecurrenceBackend, C: CheckpointStrategy> RecurrenceBackend for Autodiff<B, C> {
    fn recurrence_forward(
        projected: FloatTensor<Self>,
        weight_hh: FloatTensor<Self>,
        bias_hh: FloatTensor<Self>,
        hidden: FloatTensor<Self>,
        cell: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        kind: CellKind,
        masked: bool,
        _keep_tape: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // The mask is a constant: no gradient flows to it.
        let mask = mask.into_primitive();
        let (projected, projected_node) = projected.into_parts();
        let (weight_hh, weight_node) = weight_hh.into_parts();
        let (bias_hh, bias_node) = bias_hh.into_parts();
        let (hidden, hidden_node) = hidden.into_parts();
        let (cell, cell_node) = cell.into_parts();
        let nodes = [projected_node, weight_node, bias_node, hidden_node];
        let forward = |keep_tape| {
            B::recurrence_forward(
                projected,
                weight_hh.clone(),
                bias_hh,
                hidden,
                cell,
                mask.clone(),
                kind,
                masked,
                keep_tape,
            )
        };
        let stacked = if kind == CellKind::Lstm {
            let [a, b, c, d] = nodes;
            let node = RecurrenceNode::<5> { kind, masked };
            match node
                .prepare::<C>([a, b, c, d, cell_node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (stacked, tape) = forward(true);
                    prep.finish((tape, weight_hh, mask), stacked)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
            }
        } else {
            drop(cell_node);
            let node = RecurrenceNode::<4> { kind, masked };
            match node.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let (stacked, tape) = forward(true);
                    prep.finish((tape, weight_hh, mask), stacked)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
            }
        };
        (stacked.clone(), stacked)
    }

    /// Runs the inner backend's backward pass on constants: the op has no second derivative.
    fn recurrence_backward(
        tape: FloatTensor<Self>,
        weight_hh: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        d_stacked: FloatTensor<Self>,
        kind: CellKind,
        masked: bool,
    ) -> RecurrenceGradientTensors<Self> {
        let constant = FloatTensor::<Self>::new;
        let (projected, weight, bias, hidden, cell) = B::recurrence_backward(
            tape.into_primitive(),
            weight_hh.into_primitive(),
            mask.into_primitive(),
            d_stacked.into_primitive(),
            kind,
            masked,
        );
        (
            constant(projected),
            constant(weight),
            constant(bias),
            constant(hidden),
            constant(cell),
        )
    }
}
