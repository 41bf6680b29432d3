//! The seed's first demo: a recurrent network fed the same input three times answers differently
//! each time, because its hidden state moves. The weights are the seed's own (NumPy's
//! `np.random.seed(0)`, then three `randn(3, 3)` draws for `W_hh`, `W_xh`, `W_hy`), so the
//! printed outputs are the seed's printed outputs.
//!
//! Fed once from a zero state, the same network is one-to-one: `y = W_hy tanh(W_xh x)`, a plain
//! feed-forward map; the first answer below is that.
//!
//! ```sh
//! cargo run --release --example silly_network
//! ```

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use ember_model::{CellKind, LayerState, RecurrentLayerConfig};

/// `np.random.seed(0); W_hh, W_xh, W_hy = (np.random.randn(3, 3) for _ in range(3))`, row-major.
const W_HH: [f32; 9] = [
    1.764_052_3,
    0.400_157_2,
    0.978_738,
    2.240_893_2,
    1.867_558,
    -0.977_277_9,
    0.950_088_4,
    -0.151_357_2,
    -0.103_218_85,
];
const W_XH: [f32; 9] = [
    0.410_598_5,
    0.144_043_57,
    1.454_273_5,
    0.761_037_7,
    0.121_675_02,
    0.443_863_23,
    0.333_674_33,
    1.494_079_1,
    -0.205_158_26,
];
const W_HY: [f32; 9] = [
    0.313_067_7,
    -0.854_095_74,
    -2.552_99,
    0.653_618_6,
    0.864_436_2,
    -0.742_165,
    2.269_754_6,
    -1.454_365_6,
    0.045_758_517,
];

/// What the seed's notebook printed for its three calls (one column of each 3x3 result; the
/// seed's input is `np.ones((3, 3))`, whose three columns are the same vector).
pub const SEED_OUTPUTS: [[f64; 3]; 3] = [
    [-2.80121891, 0.69469708, 0.96886448],
    [-3.04406657, 0.7898616, 0.86068273],
    [-3.04498651, 0.78981591, 0.86049092],
];

fn matrix(values: [f32; 9], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [3, 3]), device)
}

/// Feeds `x = [1, 1, 1]` to the seed's network `steps` times and returns every output.
pub fn run(steps: usize, device: &Device) -> Vec<Vec<f64>> {
    // The seed's cell has no biases; Ember's layer computes `x W_ih + h W_hh`, the transpose of
    // the seed's `W_xh x + W_hh h`.
    let mut layer = RecurrentLayerConfig::new(CellKind::Rnn, 3, 3).init(device);
    layer.weight_ih = Param::from_tensor(matrix(W_XH, device).transpose());
    layer.weight_hh = Param::from_tensor(matrix(W_HH, device).transpose());
    layer.bias_ih = Param::from_tensor(Tensor::zeros([3], device));
    layer.bias_hh = Param::from_tensor(Tensor::zeros([3], device));
    let w_hy = matrix(W_HY, device);

    let input = Tensor::<2>::ones([1, 3], device);
    let mut state = LayerState::zeros(CellKind::Rnn, 1, 3, device);
    (0..steps)
        .map(|_| {
            state = layer.step(input.clone(), state.clone());
            let output = state.hidden.clone().matmul(w_hy.clone().transpose());
            output.into_data().iter::<f64>().collect()
        })
        .collect()
}

#[allow(dead_code)]
fn main() {
    let device = Device::default();
    println!("the same input x = [1, 1, 1], three times:");
    for (t, (output, seed)) in run(3, &device).iter().zip(SEED_OUTPUTS).enumerate() {
        println!(
            "  y_{} = [{:+.8}, {:+.8}, {:+.8}]   (the seed printed [{:+.8}, {:+.8}, {:+.8}])",
            t + 1,
            output[0],
            output[1],
            output[2],
            seed[0],
            seed[1],
            seed[2]
        );
    }
    println!("the answers differ because the hidden state moves; y_1 is the one-to-one case.");
}
