//! The operations of Ember's models that have kernels of their own.
//!
//! [`recurrence`] runs one recurrent layer over a chunk of steps. On Burn's CPU backends (Flex,
//! NdArray, with or without autodiff) it runs the host kernels of `ember-kernels` behind a
//! backend extension, whose autodiff node calls their backward pass; on Burn's CubeCL backend
//! (wgpu, Vulkan, Metal, CUDA, ROCm; the `cube` feature) the same extension runs CubeCL kernels;
//! anywhere else it runs [`reference::recurrence`], the same computation composed of Burn's
//! tensor primitives. Nothing above the op knows which ran: gradients flow into the
//! projected inputs, the weights and the initial state either way.
//!
//! Three smaller ops around it take the host kernels on the CPU backends the same way and Burn's
//! own composition elsewhere: [`matmul`], the layers' input projections and the language
//! model's head; [`cross_entropy_rows`], the loss of every model; and [`dropout`], between a
//! stack's layers.

mod backend;
mod cross_entropy;
#[cfg(feature = "cube")]
mod cube;
mod product;
pub mod reference;

use burn::backend::{Dispatch, DispatchDevice};
use burn::nn::{Dropout, Linear};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use backend::{RecurrenceBackend, RecurrenceGradientTensors};
pub use cross_entropy::CrossEntropyBackend;
pub use product::ProductBackend;

use crate::{CellKind, LayerState};

/// Which implementation of the model's operations runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// The device decides: the host kernels on a CPU backend that has them, the reference
    /// composition elsewhere.
    #[default]
    Auto,
    /// The reference composition of tensor primitives everywhere.
    Reference,
}

impl Kernel {
    /// The lower-case name configs use.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Auto => "auto",
            Kernel::Reference => "reference",
        }
    }
}

/// A float tensor's values, row-major, as `f32` host memory: how the sampler's host stepper
/// reads a model's weights.
pub fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("values converted to f32")
}

/// The backend's own device under `device`, with or without autodiff around it.
fn backend_device(device: &Device) -> &DispatchDevice {
    match device.as_dispatch() {
        DispatchDevice::Autodiff(inner) => inner,
        other => other,
    }
}

/// Whether `device` runs the host kernels: a CPU backend this crate has them for, with or
/// without autodiff.
pub fn has_host_kernels(device: &Device) -> bool {
    match backend_device(device) {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        _ => false,
    }
}

/// Whether `device` runs the op's CubeCL kernels: a GPU backend (wgpu, Vulkan, Metal, CUDA,
/// ROCm) in a build with the `cube` feature.
pub fn has_device_kernels(device: &Device) -> bool {
    match backend_device(device) {
        #[cfg(feature = "cube")]
        DispatchDevice::Cube(_) => true,
        _ => false,
    }
}

thread_local! {
    static DEVICE_KERNEL_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many [`recurrence`] calls on this thread went to the CubeCL kernels: the tests' and
/// benchmarks' proof that a GPU device took them (the kernels themselves may run later, on
/// Fusion's stream).
pub fn device_kernel_calls_on_this_thread() -> u64 {
    DEVICE_KERNEL_CALLS.with(|calls| calls.get())
}

/// The cross-entropy of each row of `logits` against its class id, `-log softmax(x)[target]`
/// in nats: on a CPU device that [has host kernels](has_host_kernels), one host pass forward
/// and one backward; elsewhere, and for other precisions, `log_softmax` and `gather`.
///
/// # Shapes
/// - logits: `[rows, classes]`; targets: `[rows]`, each below `classes`
/// - output: `[rows]`
pub fn cross_entropy_rows(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [rows, _] = logits.dims();
    if !has_host_kernels(&logits.device()) || logits.dtype() != DType::F32 || rows == 0 {
        return log_softmax(logits, 1)
            .gather(1, targets.reshape([rows, 1]))
            .reshape([rows])
            .neg();
    }
    let (losses, _) = <Dispatch as CrossEntropyBackend>::cross_entropy_forward(
        logits.into_dispatch(),
        targets.float().into_dispatch(),
    );
    Tensor::<1>::from_dispatch(losses)
}

/// The matrix product `lhs rhs`: on a CPU device that [has host kernels](has_host_kernels),
/// `gemm` on rayon's pool into an output buffer written once, its gradients the same way;
/// elsewhere, and for other precisions, Burn's `matmul`.
///
/// # Shapes
/// - lhs: `[m, k]`; rhs: `[k, n]`; output: `[m, n]`
pub fn matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    if !has_host_kernels(&lhs.device()) || lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
        return lhs.matmul(rhs);
    }
    Tensor::<2>::from_dispatch(<Dispatch as ProductBackend>::product(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

/// What `linear.forward(rows)` computes, with its product through [`matmul`].
///
/// # Shapes
/// - rows: `[rows, d_input]`; output: `[rows, d_output]`
pub fn linear(linear: &Linear, rows: Tensor<2>) -> Tensor<2> {
    let output = matmul(rows, linear.weight.val());
    match &linear.bias {
        Some(bias) => output + bias.val().unsqueeze(),
        None => output,
    }
}

/// Burn's [`Dropout`] between layers, with its mask drawn by the host kernels where the device
/// [has them](has_host_kernels): one product that drops and rescales, the mask drawn on every
/// core. Elsewhere, and outside training, it is `dropout.forward(input)`.
pub fn dropout<const D: usize>(dropout: &Dropout, input: Tensor<D>) -> Tensor<D> {
    let device = input.device();
    if !dropout.training.is_enabled()
        || !device.is_autodiff()
        || dropout.prob == 0.0
        || !has_host_kernels(&device)
        || input.dtype() != DType::F32
    {
        return dropout.forward(input);
    }
    // Seeded by two draws of the backend's own generator, so that a seeded run draws the same
    // masks again.
    let draws = host_values(Tensor::<1>::random([2], Distribution::Default, &device));
    let seed = (u64::from(draws[0].to_bits()) << 32) | u64::from(draws[1].to_bits());
    let shape = input.shape();
    let keep = (1.0 - dropout.prob) as f32;
    let mask = ember_kernels::dropout_mask(shape.num_elements(), keep, seed);
    input * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
}

/// One recurrent layer over a chunk of steps, from already projected inputs.
///
/// The op's kernels run on f32 inputs: the host kernels on a CPU device that
/// [has them](has_host_kernels), the CubeCL kernels on a GPU device that
/// [has them](has_device_kernels); anything else runs the [reference](reference::recurrence).
///
/// A padding mask holds a row's state still on its padded steps: every new state is
/// `s_{t-1} + m_t (s~_t - s_{t-1})`, and the output there is the state held.
///
/// # Shapes
/// - projected: `[seq_len, batch_size, G * d_hidden]`, time-major, `x W_ih + b_ih`
/// - weight_hh: `[d_hidden, G * d_hidden]`; bias_hh: `[G * d_hidden]`
/// - state: `[batch_size, d_hidden]` per tensor, in and out
/// - mask: `[seq_len, batch_size]`, 1 on real steps and 0 on padding
/// - output: `[seq_len, batch_size, d_hidden]`, the hidden vector after every step
pub fn recurrence(
    cell: CellKind,
    projected: Tensor<3>,
    weight_hh: Tensor<2>,
    bias_hh: Tensor<1>,
    state: LayerState,
    mask: Option<Tensor<2>>,
    kernel: Kernel,
) -> (Tensor<3>, LayerState) {
    let [seq_len, batch_size, _] = projected.dims();
    // The host kernels compute in f32; other precisions (f64 gradient checks) compose.
    let f32_inputs = [projected.dtype(), weight_hh.dtype(), bias_hh.dtype()]
        .iter()
        .all(|dtype| *dtype == DType::F32);
    let device = projected.device();
    let on_device = has_device_kernels(&device);
    if kernel != Kernel::Auto
        || !(on_device || has_host_kernels(&device))
        || !f32_inputs
        || seq_len == 0
    {
        return reference::recurrence(cell, projected, weight_hh, bias_hh, state, mask);
    }
    if on_device {
        DEVICE_KERNEL_CALLS.with(|calls| calls.set(calls.get() + 1));
    }
    let d_hidden = state.hidden.dims()[1];
    // The optional inputs' places are taken by the hidden state, which the op then ignores.
    let masked = mask.is_some();
    let cell_state = state.cell.unwrap_or_else(|| state.hidden.clone());
    let mask = mask.unwrap_or_else(|| state.hidden.clone());
    let (stacked, _) = <Dispatch as RecurrenceBackend>::recurrence_forward(
        projected.into_dispatch(),
        weight_hh.into_dispatch(),
        bias_hh.into_dispatch(),
        state.hidden.into_dispatch(),
        cell_state.into_dispatch(),
        mask.into_dispatch(),
        cell,
        masked,
        false,
    );
    let stacked = Tensor::<3>::from_dispatch(stacked);
    let row = |t: usize| {
        stacked
            .clone()
            .slice([t..t + 1, 0..batch_size, 0..d_hidden])
            .reshape([batch_size, d_hidden])
    };
    let state = LayerState {
        hidden: row(seq_len),
        cell: cell.has_cell_state().then(|| row(seq_len + 1)),
    };
    let outputs = stacked.slice([0..seq_len, 0..batch_size, 0..d_hidden]);
    (outputs, state)
}
