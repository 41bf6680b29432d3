//! The recurrence op on Burn's CubeCL backend (wgpu, Vulkan, Metal, CUDA, ROCm): per step one
//! product `h_{t-1} W_hh` through Burn's own matmul and one fused element-wise kernel for the
//! gates, the state update, the padding mask and the tape; backward, per step one element-wise
//! kernel and one product, and `W_hh`'s gradient as one large product after the loop. Portable
//! on purpose: no atomics, subgroups or grid-wide synchronisation, so lavapipe runs it too.
//!
//! The tape is one flat buffer: the hidden states `h_0 .. h_T`, for the LSTM the cells
//! `c_0 .. c_T`, every step's activated gates, and for the GRU `W_hn h_{t-1} + b_hn`.

use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{Shape, Slice};
use burn_backend::ops::FloatTensorOps;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};
use ember_kernels::CellKind;

use super::backend::{RecurrenceBackend, RecurrenceGradientTensors};

/// The cell as the kernels' compile-time constant.
fn cell_code(kind: CellKind) -> u32 {
    match kind {
        CellKind::Rnn => 0,
        CellKind::Lstm => 1,
        CellKind::Gru => 2,
    }
}

/// Where the parts of the tape start, in elements, for `seq_len` steps of `batch_size` rows of
/// `d_hidden` units.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapeLayout {
    pub hiddens: usize,
    pub cells: usize,
    pub gates: usize,
    pub hidden_new: usize,
    pub len: usize,
}

impl TapeLayout {
    pub(crate) fn new(kind: CellKind, seq_len: usize, batch_size: usize, d_hidden: usize) -> Self {
        let states = (seq_len + 1) * batch_size * d_hidden;
        let hiddens = 0;
        let cells = hiddens + states;
        let gates = cells + if kind == CellKind::Lstm { states } else { 0 };
        let hidden_new = gates + seq_len * batch_size * kind.num_gates() * d_hidden;
        let len = hidden_new
            + if kind == CellKind::Gru {
                seq_len * batch_size * d_hidden
            } else {
                0
            };
        TapeLayout {
            hiddens,
            cells,
            gates,
            hidden_new,
            len,
        }
    }
}

#[cube]
fn sigmoid<F: Float>(x: F) -> F {
    F::new(1.0) / (F::new(1.0) + (F::new(0.0) - x).exp())
}

/// Copies `count` elements of `source` from `source_offset` to `target` at `target_offset`.
#[cube(launch)]
fn copy_kernel<F: Float>(
    source: &Tensor<F>,
    target: &mut Tensor<F>,
    source_offset: u32,
    target_offset: u32,
    count: u32,
    #[define(F)] _dtype: ElemType,
) {
    let index = ABSOLUTE_POS;
    if index >= count as usize {
        terminate!();
    }
    target[target_offset as usize + index] = source[source_offset as usize + index];
}

/// One step forward for every (row, unit): reads the step's projected inputs, the hidden
/// projection `h_{t-1} W_hh` and the previous state from the tape; writes the new state into the
/// tape and the stacked output, and the activated gates into the tape.
#[cube(launch)]
#[allow(clippy::too_many_arguments, unused_assignments)]
fn forward_step_kernel<F: Float>(
    projected: &Tensor<F>,
    hidden_projected: &Tensor<F>,
    bias_hh: &Tensor<F>,
    mask: &Tensor<F>,
    stacked: &mut Tensor<F>,
    tape: &mut Tensor<F>,
    step: u32,
    seq_len: u32,
    batch_size: u32,
    d_hidden: u32,
    width: u32,
    cells_at: u32,
    gates_at: u32,
    hidden_new_at: u32,
    #[comptime] cell: u32,
    #[comptime] masked: bool,
    #[define(F)] _dtype: ElemType,
) {
    let (t, rows, units) = (step as usize, batch_size as usize, d_hidden as usize);
    let plane = rows * units;
    let index = ABSOLUTE_POS;
    if index >= plane {
        terminate!();
    }
    let row = index / units;
    let unit = index % units;
    let width = width as usize;
    let x = t * rows * width + row * width + unit;
    let p = row * width + unit;
    let g = gates_at as usize + t * rows * width + row * width + unit;
    let previous = tape[t * plane + index];
    let mut next = previous;
    let mut next_cell = F::new(0.0);
    let mut previous_cell = F::new(0.0);
    if comptime!(cell == 0) {
        let a = (projected[x] + hidden_projected[p] + bias_hh[unit]).tanh();
        tape[g] = a;
        next = a;
    } else if comptime!(cell == 1) {
        let i = sigmoid::<F>(projected[x] + hidden_projected[p] + bias_hh[unit]);
        let f = sigmoid::<F>(
            projected[x + units] + hidden_projected[p + units] + bias_hh[unit + units],
        );
        let c = (projected[x + 2 * units]
            + hidden_projected[p + 2 * units]
            + bias_hh[unit + 2 * units])
            .tanh();
        let o = sigmoid::<F>(
            projected[x + 3 * units] + hidden_projected[p + 3 * units] + bias_hh[unit + 3 * units],
        );
        tape[g] = i;
        tape[g + units] = f;
        tape[g + 2 * units] = c;
        tape[g + 3 * units] = o;
        previous_cell = tape[cells_at as usize + t * plane + index];
        next_cell = f * previous_cell + i * c;
        next = o * next_cell.tanh();
    } else {
        let r = sigmoid::<F>(projected[x] + hidden_projected[p] + bias_hh[unit]);
        let z = sigmoid::<F>(
            projected[x + units] + hidden_projected[p + units] + bias_hh[unit + units],
        );
        let hidden_new = hidden_projected[p + 2 * units] + bias_hh[unit + 2 * units];
        let n = (projected[x + 2 * units] + r * hidden_new).tanh();
        tape[g] = r;
        tape[g + units] = z;
        tape[g + 2 * units] = n;
        tape[hidden_new_at as usize + t * plane + index] = hidden_new;
        next = n + z * (previous - n);
    }
    if comptime!(masked) {
        let m = mask[t * rows + row];
        next = previous + m * (next - previous);
        if comptime!(cell == 1) {
            next_cell = previous_cell + m * (next_cell - previous_cell);
        }
    }
    tape[(t + 1) * plane + index] = next;
    stacked[t * plane + index] = next;
    if comptime!(cell == 1) {
        tape[cells_at as usize + (t + 1) * plane + index] = next_cell;
    }
    if t + 1 == seq_len as usize {
        stacked[(t + 1) * plane + index] = next;
        if comptime!(cell == 1) {
            stacked[(t + 2) * plane + index] = next_cell;
        }
    }
}

/// One step backward for every (row, unit): from the gradient arriving at `h_t` (the output's,
/// plus what step `t + 1` sent back: `carry_direct + carry_product`) and, for the LSTM, at
/// `c_t` (`carry_cell`, replaced in place by `c_{t-1}`'s), writes the gradients of the step's
/// projected inputs and, for the GRU, of its hidden projection (the other cells' is the
/// projected inputs'), and the direct part of `h_{t-1}`'s gradient (in place of
/// `carry_direct`; the product of the hidden projection's gradient and `W_hhᵀ` is added by the
/// caller).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn backward_step_kernel<F: Float>(
    tape: &Tensor<F>,
    mask: &Tensor<F>,
    d_stacked: &Tensor<F>,
    carry_product: &Tensor<F>,
    carry_direct: &mut Tensor<F>,
    carry_cell: &mut Tensor<F>,
    d_projected: &mut Tensor<F>,
    d_hidden_projected: &mut Tensor<F>,
    step: u32,
    batch_size: u32,
    d_hidden: u32,
    width: u32,
    cells_at: u32,
    gates_at: u32,
    hidden_new_at: u32,
    #[comptime] cell: u32,
    #[comptime] masked: bool,
    #[define(F)] _dtype: ElemType,
) {
    let (t, rows, units) = (step as usize, batch_size as usize, d_hidden as usize);
    let plane = rows * units;
    let index = ABSOLUTE_POS;
    if index >= plane {
        terminate!();
    }
    let row = index / units;
    let unit = index % units;
    let width = width as usize;
    let x = t * rows * width + row * width + unit;
    let g = gates_at as usize + t * rows * width + row * width + unit;
    let one = F::new(1.0);

    let d_out = d_stacked[t * plane + index] + carry_direct[index] + carry_product[index];
    let mut d_next = d_out;
    let mut d_previous = F::new(0.0);
    let mut d_cell = F::new(0.0);
    let mut d_previous_cell = F::new(0.0);
    if comptime!(cell == 1) {
        d_cell = carry_cell[index];
    }
    if comptime!(masked) {
        let m = mask[t * rows + row];
        d_next = m * d_out;
        d_previous = (one - m) * d_out;
        if comptime!(cell == 1) {
            d_previous_cell = (one - m) * d_cell;
            d_cell = m * d_cell;
        }
    }
    if comptime!(cell == 0) {
        let a = tape[g];
        d_projected[x] = d_next * (one - a * a);
    } else if comptime!(cell == 1) {
        let i = tape[g];
        let f = tape[g + units];
        let c = tape[g + 2 * units];
        let o = tape[g + 3 * units];
        let previous_cell = tape[cells_at as usize + t * plane + index];
        let tanh_cell = (f * previous_cell + i * c).tanh();
        let dc = d_cell + d_next * o * (one - tanh_cell * tanh_cell);
        let d_i = dc * c * i * (one - i);
        let d_f = dc * previous_cell * f * (one - f);
        let d_c = dc * i * (one - c * c);
        let d_o = d_next * tanh_cell * o * (one - o);
        d_projected[x] = d_i;
        d_projected[x + units] = d_f;
        d_projected[x + 2 * units] = d_c;
        d_projected[x + 3 * units] = d_o;
        carry_cell[index] = d_previous_cell + dc * f;
    } else {
        let r = tape[g];
        let z = tape[g + units];
        let n = tape[g + 2 * units];
        let hidden_new = tape[hidden_new_at as usize + t * plane + index];
        let previous = tape[t * plane + index];
        let d_n = d_next * (one - z) * (one - n * n);
        let d_r = d_n * hidden_new * r * (one - r);
        let d_z = d_next * (previous - n) * z * (one - z);
        d_projected[x] = d_r;
        d_projected[x + units] = d_z;
        d_projected[x + 2 * units] = d_n;
        d_hidden_projected[x] = d_r;
        d_hidden_projected[x + units] = d_z;
        d_hidden_projected[x + 2 * units] = d_n * r;
        d_previous += d_next * z;
    }
    carry_direct[index] = d_previous;
}

fn launch_dims(tensor: &CubeTensor, units: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(&tensor.client, units);
    let cube_count = calculate_cube_count_elemwise(&tensor.client, units, cube_dim);
    (cube_count, cube_dim)
}

fn storage(tensor: &CubeTensor) -> ElemType {
    burn_backend::cubecl::dtype_to_storage_type(tensor.dtype)
}

fn empty(like: &CubeTensor, shape: impl Into<Shape>) -> CubeTensor {
    CubeBackend::float_empty(shape.into(), &like.device, like.dtype.into())
}

/// `count` elements of `source` from `source_offset` into `target` from `target_offset`.
fn copy(
    source: &CubeTensor,
    source_offset: usize,
    target: &CubeTensor,
    target_offset: usize,
    count: usize,
) {
    let (cube_count, cube_dim) = launch_dims(target, count);
    copy_kernel::launch(
        &target.client,
        cube_count,
        cube_dim,
        source.clone().into_tensor_arg(),
        target.clone().into_tensor_arg(),
        source_offset as u32,
        target_offset as u32,
        count as u32,
        storage(target),
    );
}

/// Rows `start .. start + len` of a flat tensor as a `[rows, cols]` matrix (a view).
fn matrix(flat: &CubeTensor, start: usize, rows: usize, cols: usize) -> CubeTensor {
    let slice = CubeBackend::float_slice(flat.clone(), &[Slice::from(start..start + rows * cols)]);
    CubeBackend::float_reshape(slice, Shape::new([rows, cols]))
}

/// `tensor` as a contiguous row-major vector. Made contiguous first: a product's output may be
/// stored in tiles, which a reshape would read as rows.
fn flat(tensor: CubeTensor) -> CubeTensor {
    let len = tensor.shape().num_elements();
    CubeBackend::float_reshape(into_contiguous(tensor), Shape::new([len]))
}

impl RecurrenceBackend for CubeBackend {
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
        let [seq_len, batch_size, width] = projected.shape().dims();
        let d_hidden = hidden.shape()[1];
        let plane = batch_size * d_hidden;
        let layout = TapeLayout::new(kind, seq_len, batch_size, d_hidden);
        let projected = flat(projected);
        let bias_hh = flat(bias_hh);
        let weight_hh = into_contiguous(weight_hh);
        let mask = flat(mask);
        let stacked = empty(
            &projected,
            [seq_len + kind.num_states(), batch_size, d_hidden],
        );
        let tape = empty(&projected, [layout.len]);
        copy(&flat(hidden), 0, &tape, layout.hiddens, plane);
        if kind == CellKind::Lstm {
            copy(&flat(cell), 0, &tape, layout.cells, plane);
        }
        let (cube_count, cube_dim) = launch_dims(&tape, plane);
        for t in 0..seq_len {
            let previous = matrix(&tape, layout.hiddens + t * plane, batch_size, d_hidden);
            let hidden_projected =
                into_contiguous(CubeBackend::float_matmul(previous, weight_hh.clone()));
            debug_assert_eq!(hidden_projected.shape().dims::<2>(), [batch_size, width]);
            forward_step_kernel::launch(
                &tape.client,
                cube_count.clone(),
                cube_dim,
                projected.clone().into_tensor_arg(),
                hidden_projected.into_tensor_arg(),
                bias_hh.clone().into_tensor_arg(),
                mask.clone().into_tensor_arg(),
                stacked.clone().into_tensor_arg(),
                tape.clone().into_tensor_arg(),
                t as u32,
                seq_len as u32,
                batch_size as u32,
                d_hidden as u32,
                width as u32,
                layout.cells as u32,
                layout.gates as u32,
                layout.hidden_new as u32,
                cell_code(kind),
                masked,
                storage(&tape),
            );
        }
        let tape = if keep_tape { tape } else { stacked.clone() };
        (stacked, tape)
    }

    fn recurrence_backward(
        tape: FloatTensor<Self>,
        weight_hh: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        d_stacked: FloatTensor<Self>,
        kind: CellKind,
        masked: bool,
    ) -> RecurrenceGradientTensors<Self> {
        let [rows, batch_size, d_hidden] = d_stacked.shape().dims();
        let seq_len = rows - kind.num_states();
        let width = kind.num_gates() * d_hidden;
        let plane = batch_size * d_hidden;
        let layout = TapeLayout::new(kind, seq_len, batch_size, d_hidden);
        let tape = into_contiguous(tape);
        let mask = flat(mask);
        let d_stacked = flat(d_stacked);
        let weight_transposed = CubeBackend::float_transpose(into_contiguous(weight_hh));

        let carry_direct = empty(&tape, [plane]);
        copy(&d_stacked, seq_len * plane, &carry_direct, 0, plane);
        let carry_cell = empty(&tape, [plane]);
        if kind == CellKind::Lstm {
            copy(&d_stacked, (seq_len + 1) * plane, &carry_cell, 0, plane);
        }
        let mut carry_product =
            CubeBackend::float_zeros(Shape::new([plane]), &tape.device, tape.dtype.into());
        let d_projected = empty(&tape, [seq_len * batch_size * width]);
        // The GRU's reset gate scales the candidate block of its hidden projection, whose
        // gradient then differs from the projected inputs'; the other cells' is the same one.
        let gru = kind == CellKind::Gru;
        let d_hidden_projected = match gru {
            true => empty(&tape, [seq_len * batch_size * width]),
            false => empty(&tape, [1]),
        };
        let d_recurrent = if gru {
            &d_hidden_projected
        } else {
            &d_projected
        };
        let (cube_count, cube_dim) = launch_dims(&tape, plane);
        for t in (0..seq_len).rev() {
            backward_step_kernel::launch(
                &tape.client,
                cube_count.clone(),
                cube_dim,
                tape.clone().into_tensor_arg(),
                mask.clone().into_tensor_arg(),
                d_stacked.clone().into_tensor_arg(),
                carry_product.clone().into_tensor_arg(),
                carry_direct.clone().into_tensor_arg(),
                carry_cell.clone().into_tensor_arg(),
                d_projected.clone().into_tensor_arg(),
                d_hidden_projected.clone().into_tensor_arg(),
                t as u32,
                batch_size as u32,
                d_hidden as u32,
                width as u32,
                layout.cells as u32,
                layout.gates as u32,
                layout.hidden_new as u32,
                cell_code(kind),
                masked,
                storage(&tape),
            );
            let d_step = matrix(d_recurrent, t * batch_size * width, batch_size, width);
            carry_product = flat(CubeBackend::float_matmul(d_step, weight_transposed.clone()));
        }
        let hidden = CubeBackend::float_reshape(
            CubeBackend::float_add(carry_direct, carry_product),
            Shape::new([batch_size, d_hidden]),
        );
        let cell = match kind {
            CellKind::Lstm => {
                CubeBackend::float_reshape(carry_cell, Shape::new([batch_size, d_hidden]))
            }
            _ => hidden.clone(),
        };
        let d_recurrent = matrix(d_recurrent, 0, seq_len * batch_size, width);
        let previous = matrix(&tape, layout.hiddens, seq_len * batch_size, d_hidden);
        let weight =
            CubeBackend::float_matmul(CubeBackend::float_transpose(previous), d_recurrent.clone());
        let bias = CubeBackend::float_reshape(
            CubeBackend::float_sum_dim(d_recurrent, 0),
            Shape::new([width]),
        );
        let projected =
            CubeBackend::float_reshape(d_projected, Shape::new([seq_len, batch_size, width]));
        (projected, weight, bias, hidden, cell)
    }
}

/// The shapes and types of [`RecurrenceBackend::recurrence_forward`]'s outputs, for Fusion to
/// register before the op runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_specs(
    projected: &burn::backend::fusion::custom::TensorSpec,
    hidden: &burn::backend::fusion::custom::TensorSpec,
    kind: &CellKind,
    keep_tape: &bool,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    use burn::backend::fusion::custom::TensorSpec;
    let [seq_len, batch_size, _] = projected.shape.dims();
    let d_hidden = hidden.shape[1];
    let rows = seq_len + kind.num_states();
    let stacked = TensorSpec::new(Shape::new([rows, batch_size, d_hidden]), projected.dtype);
    let tape = match keep_tape {
        true => TensorSpec::new(
            Shape::new([TapeLayout::new(*kind, seq_len, batch_size, d_hidden).len]),
            projected.dtype,
        ),
        false => stacked.clone(),
    };
    (stacked, tape)
}

/// The shapes and types of [`RecurrenceBackend::recurrence_backward`]'s outputs.
pub(crate) fn backward_specs(
    weight_hh: &burn::backend::fusion::custom::TensorSpec,
    d_stacked: &burn::backend::fusion::custom::TensorSpec,
    kind: &CellKind,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    use burn::backend::fusion::custom::TensorSpec;
    let [rows, batch_size, d_hidden] = d_stacked.shape.dims();
    let seq_len = rows - kind.num_states();
    let width = weight_hh.shape[1];
    let dtype = d_stacked.dtype;
    let state = TensorSpec::new(Shape::new([batch_size, d_hidden]), dtype);
    (
        TensorSpec::new(Shape::new([seq_len, batch_size, width]), dtype),
        TensorSpec::new(weight_hh.shape.clone(), dtype),
        TensorSpec::new(Shape::new([width]), dtype),
        state.clone(),
        state,
    )
}
