//! A Burn project that imports Ember's recurrent stack: a GRU reads a sequence of digits, a
//! linear head reads its final state and predicts their sum. The model and the training loop
//! are this project's own.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use ember_model::{CellKind, StackedRecurrent, StackedRecurrentConfig, length_mask};

// Training frees and takes back buffers of megabytes every step; glibc's malloc returns them to
// the kernel each time, and on two threads that cost half the time (README, "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Module, Debug)]
struct DigitSum {
    rnn: StackedRecurrent,
    head: Linear,
}

impl DigitSum {
    fn new(device: &Device) -> Self {
        DigitSum {
            rnn: StackedRecurrentConfig::new(CellKind::Gru, 1, 32).init(device),
            head: LinearConfig::new(32, 1).init(device),
        }
    }

    /// `digits`: `[batch, max_len, 1]`, right-padded; returns `[batch]` predicted sums.
    fn forward(&self, digits: Tensor<3>, lengths: &[usize]) -> Tensor<1> {
        let [batch, max_len, _] = digits.dims();
        let mask = length_mask(lengths, max_len, &digits.device());
        let (_, state) = self.rnn.forward_masked(digits, mask, None, false);
        let last = state.layers[0].hidden.clone();
        // Sums reach 135; the head predicts them in tens.
        self.head.forward(last).reshape([batch]) * 10.0
    }
}

/// A tiny deterministic generator, so the project needs nothing but its two dependencies.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

struct Batch {
    digits: Vec<f32>,
    lengths: Vec<usize>,
    sums: Vec<f32>,
    max_len: usize,
}

fn batch(rng: &mut Lcg, size: usize) -> Batch {
    let max_len = 15;
    let mut out = Batch {
        digits: vec![0.0; size * max_len],
        lengths: Vec::new(),
        sums: Vec::new(),
        max_len,
    };
    for row in 0..size {
        let len = 5 + rng.below(11) as usize;
        let mut sum = 0.0;
        for t in 0..len {
            let digit = rng.below(10) as f32;
            out.digits[row * max_len + t] = digit;
            sum += digit;
        }
        out.lengths.push(len);
        out.sums.push(sum);
    }
    out
}

fn tensors(batch: &Batch, device: &Device) -> (Tensor<3>, Tensor<1>) {
    let size = batch.lengths.len();
    // Digits scaled to [0, 0.9] so the GRU's inputs stay small.
    let digits = Tensor::<3>::from_data(
        TensorData::new(batch.digits.clone(), [size, batch.max_len, 1]),
        device,
    ) / 10.0;
    let sums = Tensor::from_data(TensorData::new(batch.sums.clone(), [size]), device);
    (digits, sums)
}

/// Trains for `steps` and returns (held-out mean absolute error, error of guessing the mean).
pub fn run(steps: usize) -> (f64, f64) {
    let device = Device::default().autodiff();
    device.seed(1);
    let mut model = DigitSum::new(&device);
    let mut optimizer = AdamConfig::new().init();
    let mut rng = Lcg(42);
    for _ in 0..steps {
        let batch = batch(&mut rng, 64);
        let (digits, sums) = tensors(&batch, &device);
        let error = model.forward(digits, &batch.lengths) - sums;
        let loss = (error.clone() * error).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(3e-3, model, grads);
    }

    let model = model.valid();
    let plain = Device::default();
    let test = batch(&mut Lcg(7), 1000);
    let (digits, sums) = tensors(&test, &plain);
    let predicted = model.forward(digits, &test.lengths);
    let mae = (predicted - sums.clone()).abs().mean().into_scalar::<f64>();
    let mean_sum = test.sums.iter().sum::<f32>() / test.sums.len() as f32;
    let baseline = (sums - mean_sum).abs().mean().into_scalar::<f64>();
    (mae, baseline)
}

fn main() {
    let steps = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1500);
    let (mae, baseline) = run(steps);
    println!(
        "held-out mean absolute error {mae:.2} on sums of 5-15 digits \
         (always guessing the mean: {baseline:.2})"
    );
}
