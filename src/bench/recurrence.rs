//! The recurrence cases of `ember --device wgpu|vulkan|cuda bench`: a stack of recurrent layers
//! alone (what `nn.LSTM` on cuDNN measures), timed forward and forward+backward with the op's
//! kernels and with its reference composition in the same process, each after warm-up windows
//! until its times settle, so that compilation and autotuning stay out of the figures (the first
//! call's time is reported apart). With `--pytorch`, `bench/pytorch_baseline.py --model
//! recurrence` times PyTorch's own layers on the same sizes, with TF32 off and on.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use ember_model::ops::{Kernel, device_kernel_calls_on_this_thread, has_device_kernels};
use ember_model::{CellKind, StackedRecurrent, StackedRecurrentConfig};
use serde::{Deserialize, Serialize};

use super::round3;

/// One stack to time: `num_layers` layers of `d_hidden` units (the input as wide), on a batch
/// of `batch_size` sequences of `seq_len` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecurrenceCase {
    cell: CellKind,
    num_layers: usize,
    d_hidden: usize,
    batch_size: usize,
    seq_len: usize,
}

impl RecurrenceCase {
    pub fn name(&self) -> String {
        format!(
            "recurrence-{}-{}x{}-b{}-t{}",
            self.cell, self.num_layers, self.d_hidden, self.batch_size, self.seq_len
        )
    }

    /// The arguments of `bench/pytorch_baseline.py` for this case.
    pub fn pytorch_args(&self) -> Vec<String> {
        [
            ("--model", "recurrence".to_string()),
            ("--cell", self.cell.to_string()),
            ("--layers", self.num_layers.to_string()),
            ("--hidden", self.d_hidden.to_string()),
            ("--batch", self.batch_size.to_string()),
            ("--seq", self.seq_len.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }
}

/// The GPU issue's four cases, then two tiny ones that rehearse the measurement on a software
/// driver (lavapipe) in seconds.
pub fn cases() -> Vec<RecurrenceCase> {
    let case = |cell, num_layers, d_hidden, batch_size, seq_len| RecurrenceCase {
        cell,
        num_layers,
        d_hidden,
        batch_size,
        seq_len,
    };
    vec![
        case(CellKind::Lstm, 2, 128, 32, 64),
        case(CellKind::Lstm, 2, 512, 64, 100),
        case(CellKind::Lstm, 1, 1024, 32, 256),
        case(CellKind::Gru, 2, 256, 64, 100),
        case(CellKind::Lstm, 1, 32, 4, 8),
        case(CellKind::Gru, 1, 32, 4, 8),
    ]
}

/// What one recurrence case measured: milliseconds per call, after warm-up.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecurrenceReport {
    pub case: String,
    pub device: String,
    /// Calls of the op that went to the device kernels while the op was timed: non-zero proves
    /// the op ran its kernels, not the reference.
    pub op_kernel_calls: u64,
    /// The first forward+backward call, compilation and autotuning included.
    pub op_first_call_ms: f64,
    pub reference_first_call_ms: f64,
    pub op_forward_ms: f64,
    pub op_forward_backward_ms: f64,
    pub reference_forward_ms: f64,
    pub reference_forward_backward_ms: f64,
    /// The reference's time over the op's.
    pub speedup_forward: f64,
    pub speedup_forward_backward: f64,
    /// Kernel launches per layer and call, counted from the op's code, not measured: forward,
    /// the initial state's copies into the tape, then one product and one element-wise kernel
    /// per step; backward, the final state's copies and a zero fill, one kernel and one product
    /// per step, and an add, a product and a sum after the loop (a product that autotuning
    /// splits counts once).
    pub op_forward_launches_per_layer: usize,
    pub op_backward_launches_per_layer: usize,
}

/// The mean time of `call` once its times settle: windows of at least three calls (and a tenth of
/// `budget`) until two in a row agree within 5%, at most eight; the last window counts.
fn settled_ms(budget: Duration, device: &Device, mut call: impl FnMut()) -> f64 {
    let window = budget / 10;
    let mut previous: Option<f64> = None;
    let mut mean = 0.0;
    for _ in 0..8 {
        let (started, mut calls) = (Instant::now(), 0u32);
        while calls < 3 || started.elapsed() < window {
            call();
            calls += 1;
        }
        device.sync().expect("the device finishes its work");
        mean = started.elapsed().as_secs_f64() * 1e3 / f64::from(calls);
        if previous.is_some_and(|p| (p - mean).abs() <= 0.05 * mean) {
            break;
        }
        previous = Some(mean);
    }
    mean
}

/// The first call's time, then the settled forward and forward+backward times of `model`.
fn time_stack(
    model: &StackedRecurrent,
    input: &Tensor<3>,
    device: &Device,
    budget: Duration,
) -> (f64, f64, f64) {
    let train = || {
        let (outputs, _) = model.forward(input.clone(), None);
        let grads = outputs.sum().backward();
        drop(grads);
    };
    let started = Instant::now();
    train();
    device.sync().expect("the device finishes its work");
    let first = started.elapsed().as_secs_f64() * 1e3;
    let inference = model.valid();
    let plain_input = input.clone().inner();
    let plain_device = device.clone().inner();
    let forward = settled_ms(budget / 2, &plain_device, || {
        let (outputs, _) = inference.forward(plain_input.clone(), None);
        drop(outputs);
    });
    let forward_backward = settled_ms(budget / 2, device, train);
    (first, forward, forward_backward)
}

/// Measures `case` on `device` (a GPU backend's) for about `seconds`.
pub fn measure(case: &RecurrenceCase, device: &Device, seconds: f64) -> Result<RecurrenceReport> {
    if !has_device_kernels(device) {
        anyhow::bail!(
            "the recurrence cases time the op's GPU kernels: run them with --device wgpu, vulkan, \
             metal, cuda or rocm (a build with that feature)"
        );
    }
    let device = device.clone().autodiff();
    let budget = Duration::from_secs_f64(seconds / 2.0);
    let op = StackedRecurrentConfig::new(case.cell, case.d_hidden, case.d_hidden)
        .with_num_layers(case.num_layers)
        .init(&device);
    let reference = op.clone().with_kernel(Kernel::Reference);
    let input = Tensor::<3>::random(
        [case.batch_size, case.seq_len, case.d_hidden],
        Distribution::Normal(0.0, 1.0),
        &device,
    )
    .require_grad();
    let calls = device_kernel_calls_on_this_thread();
    let (op_first, op_forward, op_train) = time_stack(&op, &input, &device, budget);
    let op_kernel_calls = device_kernel_calls_on_this_thread() - calls;
    let (reference_first, reference_forward, reference_train) =
        time_stack(&reference, &input, &device, budget);
    let state_copies = if case.cell == CellKind::Lstm { 2 } else { 1 };
    Ok(RecurrenceReport {
        case: case.name(),
        device: format!("{:?}", device.clone().inner()),
        op_kernel_calls,
        op_first_call_ms: round3(op_first),
        reference_first_call_ms: round3(reference_first),
        op_forward_ms: round3(op_forward),
        op_forward_backward_ms: round3(op_train),
        reference_forward_ms: round3(reference_forward),
        reference_forward_backward_ms: round3(reference_train),
        speedup_forward: round3(reference_forward / op_forward),
        speedup_forward_backward: round3(reference_train / op_train),
        op_forward_launches_per_layer: 2 * case.seq_len + state_copies,
        op_backward_launches_per_layer: 2 * case.seq_len + state_copies + 1 + 3,
    })
}

/// What `bench/pytorch_baseline.py --model recurrence` prints.
#[derive(Debug, Deserialize)]
struct PytorchRecurrence {
    torch: String,
    device: String,
    forward_ms: f64,
    forward_backward_ms: f64,
}

/// PyTorch's layers on the same sizes, with TF32 off and on, and the op's ratios to them.
#[derive(Debug, Serialize)]
struct PytorchFields {
    pytorch_version: String,
    pytorch_device: String,
    pytorch_forward_ms: f64,
    pytorch_forward_backward_ms: f64,
    pytorch_tf32_forward_ms: f64,
    pytorch_tf32_forward_backward_ms: f64,
    /// PyTorch's time over the op's (above 1: the op is faster), TF32 off.
    ratio_to_pytorch_forward: f64,
    ratio_to_pytorch_forward_backward: f64,
    ratio_to_pytorch_tf32_forward_backward: f64,
}

/// The fields to append to recurrence case `ours` from PyTorch's lines without and with TF32.
pub fn pytorch_fields(ours: &str, without_tf32: &str, with_tf32: &str) -> Result<String> {
    let ours: RecurrenceReport =
        serde_json::from_str(ours).context("reading a recurrence case's report")?;
    let read = |line: &str| -> Result<PytorchRecurrence> {
        serde_json::from_str(line)
            .with_context(|| format!("reading the PyTorch baseline's report `{line}`"))
    };
    let (plain, tf32) = (read(without_tf32)?, read(with_tf32)?);
    let fields = PytorchFields {
        ratio_to_pytorch_forward: round3(plain.forward_ms / ours.op_forward_ms),
        ratio_to_pytorch_forward_backward: round3(
            plain.forward_backward_ms / ours.op_forward_backward_ms,
        ),
        ratio_to_pytorch_tf32_forward_backward: round3(
            tf32.forward_backward_ms / ours.op_forward_backward_ms,
        ),
        pytorch_version: plain.torch,
        pytorch_device: plain.device,
        pytorch_forward_ms: plain.forward_ms,
        pytorch_forward_backward_ms: plain.forward_backward_ms,
        pytorch_tf32_forward_ms: tf32.forward_ms,
        pytorch_tf32_forward_backward_ms: tf32.forward_backward_ms,
    };
    Ok(serde_json::to_string(&fields)?)
}
