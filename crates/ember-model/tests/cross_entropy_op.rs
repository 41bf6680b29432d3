//! The cross-entropy op against its reference composition (`log_softmax`, `gather`): values and
//! the logits' gradient, on every backend the tests run on.

mod common;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use common::*;
use ember_model::ops;

/// f32 against f32: the kernel's exp is within 2 ulp of the backend's and the terms are summed in
/// another order, a few 1e-7 relative on losses up to about 20 here: 5e-5 leaves room. The
/// gradients are below 2 in size: 1e-5.
#[test]
fn the_op_matches_log_softmax_and_gather_in_values_and_gradients() {
    for (name, device) in devices() {
        let device = device.autodiff();
        for (rows, classes) in [(1, 1), (1, 3), (7, 5), (130, 65), (3, 300)] {
            device.seed(rows as u64 * 1000 + classes as u64);
            let logits =
                Tensor::<2>::random([rows, classes], Distribution::Normal(0.0, 3.0), &device);
            let targets: Vec<i64> = (0..rows).map(|r| ((r * 7 + 3) % classes) as i64).collect();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [rows]), &device);
            // Each row's loss weighted differently, so that a gradient mixed up between rows shows.
            let weights = Tensor::<1>::random([rows], Distribution::Uniform(0.5, 2.0), &device);
            let run = |fast: bool| {
                let leaf = logits.clone().detach().require_grad();
                let losses = if fast {
                    ops::cross_entropy_rows(leaf.clone(), targets.clone())
                } else {
                    log_softmax(leaf.clone(), 1)
                        .gather(1, targets.clone().reshape([rows, 1]))
                        .reshape([rows])
                        .neg()
                };
                let gradients = (losses.clone() * weights.clone()).sum().backward();
                let gradient = leaf.grad(&gradients).expect("the logits' gradient");
                (values(losses.inner()), values(gradient))
            };
            let (losses, gradient) = run(true);
            let (expected_losses, expected_gradient) = run(false);
            let what = format!("{name} [{rows}, {classes}]");
            assert_close(&format!("{what} losses"), &losses, &expected_losses, 5e-5);
            assert_close(
                &format!("{what} gradient"),
                &gradient,
                &expected_gradient,
                1e-5,
            );
        }
    }
}
