//! Dropout between layers on the CPU backends, whose mask the host kernels draw. A file of its
//! own: the test reseeds the backend's generator, which is global to the process, and another
//! test drawing from it at the same time would change the masks it compares.

mod common;

use burn::tensor::Tensor;
use common::*;
use ember_model::ops::{self, has_host_kernels};

/// Dropout between layers on a CPU device draws its mask on the host: a fraction `1 - prob` of
/// values kept and rescaled, the gradient passing through the kept ones only, the same masks
/// again after the same seed, and the input untouched outside training or without autodiff.
#[test]
fn host_dropout_keeps_its_fraction_and_passes_gradients_through_the_mask() {
    let dropout = burn::nn::DropoutConfig::new(0.25).init();
    for (name, device) in devices() {
        if !has_host_kernels(&device) {
            continue;
        }
        let device = device.autodiff();
        let draw = |seed| {
            device.seed(seed);
            let input = Tensor::<3>::ones([16, 32, 64], &device).require_grad();
            let output = ops::dropout(&dropout, input.clone());
            let gradients = (output.clone() * 3.0).sum().backward();
            let gradient = input.grad(&gradients).expect("a gradient");
            (values(output), values(gradient))
        };
        let (outputs, gradient) = draw(11);
        assert_eq!(outputs.len(), 16 * 32 * 64, "{name}");
        assert_eq!(gradient.len(), outputs.len(), "{name}");
        let scale = 1.0 / 0.75;
        let mut kept = 0usize;
        for (value, d) in outputs.iter().zip(&gradient) {
            if *value == 0.0 {
                assert_eq!(*d, 0.0, "{name}: a dropped value passes no gradient");
            } else {
                assert!((value - scale).abs() < 1e-6, "{name}: kept values rescale");
                assert!(
                    (d - 3.0 * scale).abs() < 1e-5,
                    "{name}: the gradient rescales"
                );
                kept += 1;
            }
        }
        // 32,768 draws: the kept fraction's standard deviation is 0.0024.
        let fraction = kept as f64 / outputs.len() as f64;
        assert!((fraction - 0.75).abs() < 0.015, "{name}: kept {fraction}");
        assert_eq!(draw(11).0, outputs, "{name}: a seed draws its masks again");
        assert_ne!(draw(12).0, outputs, "{name}: another seed, other masks");
        let plain = Tensor::<3>::ones([2, 3, 4], &device.clone().inner());
        assert_eq!(
            values(ops::dropout(&dropout, plain)),
            vec![1.0; 24],
            "{name}"
        );
    }
}
