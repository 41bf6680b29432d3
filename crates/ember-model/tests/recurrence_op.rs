//! The recurrence op against its reference composition of tensor primitives: values, and the
//! autodiff gradients of every input, on every backend the tests run on.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use common::*;
use ember_kernels::calls_on_this_thread;
use ember_model::ops::{self, Kernel, device_kernel_calls_on_this_thread, has_host_kernels};
use ember_model::{CellKind, CharLmConfig, LayerState, StackedRecurrentConfig};

/// f32 kernels against f32 primitives: the values differ by the rounding of a different order
/// of summation and of the kernels' own exp (within 2 ulp), a few 1e-7 per step; gradients sum
/// over every step and row, so they get ten times the room. The same bounds hold for the CubeCL
/// kernels on wgpu (lavapipe computes in f32 throughout). On CUDA with TF32 allowed, products
/// round their inputs to 10 mantissa bits (about 5e-4 relative), which these bounds would not
/// admit: the tests run where products are f32.
const VALUE_TOLERANCE: f64 = 2e-5;
const GRADIENT_TOLERANCE: f64 = 2e-4;

/// The inputs of one op call, as leaves of the autodiff graph.
struct Leaves {
    projected: Tensor<3>,
    weight_hh: Tensor<2>,
    bias_hh: Tensor<1>,
    hidden: Tensor<2>,
    cell: Option<Tensor<2>>,
    mask: Option<Tensor<2>>,
}

fn leaves(
    cell: CellKind,
    seq_len: usize,
    batch: usize,
    d_hidden: usize,
    masked: bool,
    device: &Device,
) -> Leaves {
    let g = cell.num_gates() * d_hidden;
    let uniform = Distribution::Uniform(-1.0, 1.0);
    let leaf = |tensor: Tensor<2>| tensor.require_grad();
    // Row b is real for its first max(seq_len - b, 1) steps, padding after.
    let mask = masked.then(|| {
        let values: Vec<f32> = (0..seq_len * batch)
            .map(|i| {
                let (t, b) = (i / batch, i % batch);
                if t + b < seq_len.max(b + 1) { 1.0 } else { 0.0 }
            })
            .collect();
        Tensor::<2>::from_data(TensorData::new(values, [seq_len, batch]), device)
    });
    Leaves {
        projected: Tensor::<3>::random([seq_len, batch, g], uniform, device).require_grad(),
        weight_hh: leaf(Tensor::random(
            [d_hidden, g],
            Distribution::Uniform(-0.6, 0.6),
            device,
        )),
        bias_hh: Tensor::<1>::random([g], uniform, device).require_grad(),
        hidden: leaf(Tensor::random([batch, d_hidden], uniform, device)),
        cell: (cell == CellKind::Lstm)
            .then(|| leaf(Tensor::random([batch, d_hidden], uniform, device))),
        mask,
    }
}

/// Runs the op with `kernel` on `leaves` and returns the values read and every gradient, with a
/// loss that reads the outputs and both halves of the final state.
fn run(cell: CellKind, leaves: &Leaves, kernel: Kernel) -> Vec<(String, Vec<f64>)> {
    let state = LayerState {
        hidden: leaves.hidden.clone(),
        cell: leaves.cell.clone(),
    };
    let (outputs, state) = ops::recurrence(
        cell,
        leaves.projected.clone(),
        leaves.weight_hh.clone(),
        leaves.bias_hh.clone(),
        state,
        leaves.mask.clone(),
        kernel,
    );
    let weights_like = |tensor: &Tensor<2>| {
        let n = tensor.dims().iter().product::<usize>();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.4)
            .collect();
        Tensor::<2>::from_data(TensorData::new(values, tensor.dims()), &tensor.device())
    };
    let [seq_len, batch, d_hidden] = outputs.dims();
    let flat = outputs.clone().reshape([seq_len * batch, d_hidden]);
    let mut loss = (flat.clone() * weights_like(&flat)).sum()
        + (state.hidden.clone() * weights_like(&state.hidden)).sum();
    if let Some(c) = &state.cell {
        loss = loss + (c.clone() * weights_like(c)).sum();
    }
    let grads = loss.backward();
    let mut read = vec![
        ("outputs".to_string(), values(outputs.inner())),
        ("final hidden".to_string(), values(state.hidden.inner())),
    ];
    if let Some(c) = state.cell {
        read.push(("final cell".to_string(), values(c.inner())));
    }
    let gradient = |name: &str, values: Vec<f64>| (format!("d {name}"), values);
    read.push(gradient(
        "projected",
        common::values(leaves.projected.grad(&grads).expect("projected")),
    ));
    read.push(gradient(
        "W_hh",
        common::values(leaves.weight_hh.grad(&grads).expect("W_hh")),
    ));
    read.push(gradient(
        "b_hh",
        common::values(leaves.bias_hh.grad(&grads).expect("b_hh")),
    ));
    read.push(gradient(
        "h_0",
        common::values(leaves.hidden.grad(&grads).expect("h_0")),
    ));
    if let Some(c) = &leaves.cell {
        read.push(gradient(
            "c_0",
            common::values(c.grad(&grads).expect("c_0")),
        ));
    }
    read
}

#[test]
fn the_op_equals_the_reference_composition() {
    for (backend, device) in devices() {
        let device = device.autodiff();
        for cell in CellKind::ALL {
            for (seq_len, batch, d_hidden) in [(5, 3, 7), (1, 1, 1), (4, 1, 5), (3, 9, 2)] {
                for masked in [false, true] {
                    let leaves = leaves(cell, seq_len, batch, d_hidden, masked, &device);
                    let calls = calls_on_this_thread();
                    let device_calls = device_kernel_calls_on_this_thread();
                    let fast = run(cell, &leaves, Kernel::Auto);
                    let host_calls = calls_on_this_thread() - calls;
                    let gpu_calls = device_kernel_calls_on_this_thread() - device_calls;
                    let reference = run(cell, &leaves, Kernel::Reference);
                    assert_eq!(
                        calls_on_this_thread() - calls,
                        host_calls,
                        "the reference ran host code"
                    );
                    assert_eq!(
                        device_kernel_calls_on_this_thread() - device_calls,
                        gpu_calls,
                        "the reference ran the CubeCL kernels"
                    );
                    // A forward and a backward pass on the CPU backends, nothing elsewhere; the
                    // CubeCL kernels on the GPU backends, in builds with the `cube` feature.
                    let expected_calls = if has_host_kernels(&device) { 2 } else { 0 };
                    assert_eq!(host_calls, expected_calls, "{backend}: host kernel calls");
                    let expected_gpu_calls = u64::from(backend == "wgpu" && cfg!(feature = "cube"));
                    assert_eq!(gpu_calls, expected_gpu_calls, "{backend}: CubeCL op calls");
                    assert_eq!(fast.len(), reference.len());
                    for ((name, got), (_, want)) in fast.iter().zip(&reference) {
                        let what = format!(
                            "{cell} on {backend}, [{seq_len}, {batch}, {d_hidden}], mask {masked}: {name}"
                        );
                        let tolerance = if name.starts_with("d ") {
                            GRADIENT_TOLERANCE
                        } else {
                            VALUE_TOLERANCE
                        };
                        assert_close(&what, got, want, tolerance);
                    }
                }
            }
        }
    }
}

#[test]
fn cpu_backends_run_the_host_kernels_and_others_do_not() {
    for (backend, device) in devices() {
        // The kernels of a backend are compiled in with the crate feature of its name.
        let expected = (backend == "flex" && cfg!(feature = "flex"))
            || (backend == "ndarray" && cfg!(feature = "ndarray"));
        assert_eq!(has_host_kernels(&device), expected, "{backend}");
        assert_eq!(
            has_host_kernels(&device.clone().autodiff()),
            expected,
            "{backend} with autodiff"
        );
    }
}

/// Stacks of 1 to 3 layers, masked and not, with the gradients of every parameter: the fast
/// stack against the same weights running the reference.
#[test]
fn stacks_equal_the_reference_in_values_and_parameter_gradients() {
    for (backend, device) in devices() {
        let device = device.autodiff();
        for cell in CellKind::ALL {
            for num_layers in 1..=3 {
                let fast = StackedRecurrentConfig::new(cell, 4, 6)
                    .with_num_layers(num_layers)
                    .init(&device);
                let reference = fast.clone().with_kernel(Kernel::Reference);
                let input = Tensor::<3>::random([3, 5, 4], Distribution::Normal(0.0, 1.0), &device);
                let mask = length_mask_of(&[5, 2, 4], 5, &device);
                for masked in [false, true] {
                    let run = |model: &ember_model::StackedRecurrent| {
                        let (outputs, state) = match masked {
                            true => model.forward_masked(input.clone(), mask.clone(), None, false),
                            false => model.forward(input.clone(), None),
                        };
                        let loss = outputs.clone().powf_scalar(2.0).sum() + state.hidden().sum();
                        let grads = loss.backward();
                        let mut read = vec![values(outputs.inner())];
                        for layer in &model.layers {
                            read.push(values(layer.weight_ih.val().grad(&grads).expect("W_ih")));
                            read.push(values(layer.weight_hh.val().grad(&grads).expect("W_hh")));
                            read.push(values(layer.bias_ih.val().grad(&grads).expect("b_ih")));
                            read.push(values(layer.bias_hh.val().grad(&grads).expect("b_hh")));
                        }
                        read
                    };
                    let (got, want) = (run(&fast), run(&reference));
                    assert_eq!(got.len(), want.len());
                    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                        let what = format!(
                            "{cell} on {backend}, {num_layers} layers, mask {masked}, tensor {k}"
                        );
                        assert_close(
                            &what,
                            g,
                            w,
                            if k == 0 {
                                VALUE_TOLERANCE
                            } else {
                                GRADIENT_TOLERANCE
                            },
                        );
                    }
                }
            }
        }
    }
}

fn length_mask_of(lengths: &[usize], seq_len: usize, device: &Device) -> Tensor<2> {
    ember_model::length_mask(lengths, seq_len, device)
}

#[test]
fn char_lm_forward_takes_the_op_on_cpu_backends() {
    for (backend, device) in devices() {
        let model = CharLmConfig::new(9, CellKind::Gru, 6)
            .with_num_layers(2)
            .init(&device);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 4, 8, 0, 3, 3], [2, 3]),
            &device,
        );
        let calls = calls_on_this_thread();
        let (logits, _) = model.forward(ids, None);
        assert_eq!(logits.dims(), [2, 3, 9]);
        let expected = if has_host_kernels(&device) { 2 } else { 0 };
        assert_eq!(
            calls_on_this_thread() - calls,
            expected,
            "{backend}: one op call per layer"
        );
        let _ = model.num_params();
    }
}

/// Greedy sampling steps on the host where the device has kernels and on the device with the
/// reference kernel: both read the same model, so they draw the same characters.
#[test]
fn sampling_on_the_host_and_on_the_device_agree() {
    for (backend, device) in devices() {
        let model = CharLmConfig::new(11, CellKind::Lstm, 8)
            .with_num_layers(2)
            .with_d_embed(5)
            .init(&device);
        let mut reference = model.clone();
        reference.rnn = reference.rnn.with_kernel(Kernel::Reference);
        let config = || ember_model::SampleConfig::new().with_argmax(true);
        let draw = |model: &ember_model::CharLm| -> Vec<usize> {
            let sampler = model
                .sampler(&[3, 1, 4], config(), &device)
                .expect("a valid prime");
            sampler.take(40).collect()
        };
        let (fast, slow) = (draw(&model), draw(&reference));
        assert_eq!(fast.len(), 40);
        assert_eq!(fast, slow, "{backend}");
    }
}
