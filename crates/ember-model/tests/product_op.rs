//! The matrix product op against Burn's `matmul`: values and the gradients of both operands, on
//! every backend the tests run on, with operands that are views (a transpose, a column slice)
//! as well as plain matrices.

mod common;

use burn::tensor::{Distribution, Tensor};
use common::*;
use ember_model::ops;

/// How an operand reaches the product: as made, or as a view of a larger or transposed matrix.
#[derive(Debug, Clone, Copy)]
enum Layout {
    Plain,
    Transposed,
    ColumnSlice,
}

/// The values an `[rows, cols]` operand in `layout` is made of.
fn base(rows: usize, cols: usize, layout: Layout, device: &burn::tensor::Device) -> Tensor<2> {
    let shape = match layout {
        Layout::Plain => [rows, cols],
        Layout::Transposed => [cols, rows],
        Layout::ColumnSlice => [rows, cols + 3],
    };
    Tensor::<2>::random(shape, Distribution::Default, device)
}

/// A fresh leaf of `base` that needs a gradient, and the `[rows, cols]` operand made of it.
fn operand(base: &Tensor<2>, rows: usize, cols: usize, layout: Layout) -> (Tensor<2>, Tensor<2>) {
    let leaf = base.clone().detach().require_grad();
    let operand = match layout {
        Layout::Plain => leaf.clone(),
        Layout::Transposed => leaf.clone().transpose(),
        Layout::ColumnSlice => leaf.clone().slice([0..rows, 1..cols + 1]),
    };
    (leaf, operand)
}

/// f32 sums of up to 300 terms below 1, added in other orders: 1e-4 of values up to about 75.
#[test]
fn the_op_matches_matmul_in_values_and_gradients() {
    for (name, device) in devices() {
        let device = device.autodiff();
        for (m, k, n) in [(1, 1, 1), (7, 5, 3), (64, 33, 130), (300, 300, 17)] {
            for (lhs_layout, rhs_layout) in [
                (Layout::Plain, Layout::Plain),
                (Layout::Transposed, Layout::Plain),
                (Layout::Plain, Layout::Transposed),
                (Layout::ColumnSlice, Layout::ColumnSlice),
            ] {
                device.seed((m * 1000 + k * 10 + n) as u64);
                let lhs_base = base(m, k, lhs_layout, &device);
                let rhs_base = base(k, n, rhs_layout, &device);
                // Each output weighted differently, so that a gradient mixed up between entries
                // shows.
                let weights = Tensor::<2>::random([m, n], Distribution::Default, &device);
                let run = |fast: bool| {
                    let (lhs_leaf, lhs) = operand(&lhs_base, m, k, lhs_layout);
                    let (rhs_leaf, rhs) = operand(&rhs_base, k, n, rhs_layout);
                    let output = if fast {
                        ops::matmul(lhs, rhs)
                    } else {
                        lhs.matmul(rhs)
                    };
                    let gradients = (output.clone() * weights.clone()).sum().backward();
                    let lhs_gradient = lhs_leaf.grad(&gradients).expect("the lhs gradient");
                    let rhs_gradient = rhs_leaf.grad(&gradients).expect("the rhs gradient");
                    (
                        values(output.inner()),
                        values(lhs_gradient),
                        values(rhs_gradient),
                    )
                };
                let (output, lhs_gradient, rhs_gradient) = run(true);
                let (expected, expected_lhs, expected_rhs) = run(false);
                let what = format!("{name} [{m}, {k}] {lhs_layout:?} x [{k}, {n}] {rhs_layout:?}");
                assert_close(&format!("{what} values"), &output, &expected, 1e-4);
                assert_close(&format!("{what} lhs'"), &lhs_gradient, &expected_lhs, 1e-4);
                assert_close(&format!("{what} rhs'"), &rhs_gradient, &expected_rhs, 1e-4);
            }
        }
    }
}

/// Without autodiff the op is the plain product; with an operand that needs no gradient, the
/// other's still arrives.
#[test]
fn the_op_runs_without_autodiff_and_with_one_constant_operand() {
    for (name, device) in devices() {
        let lhs = Tensor::<2>::random([9, 4], Distribution::Default, &device);
        let rhs = Tensor::<2>::random([4, 6], Distribution::Default, &device);
        let expected = values(lhs.clone().matmul(rhs.clone()));
        assert_close(
            &format!("{name} inference"),
            &values(ops::matmul(lhs.clone(), rhs.clone())),
            &expected,
            1e-5,
        );

        let autodiff = device.autodiff();
        let constant = Tensor::<2>::from_data(lhs.into_data(), &autodiff);
        let weight = Tensor::<2>::from_data(rhs.into_data(), &autodiff).require_grad();
        let gradients = ops::matmul(constant.clone(), weight.clone())
            .sum()
            .backward();
        let expected_gradient = constant.transpose().sum_dim(1).repeat_dim(1, 6);
        assert_close(
            &format!("{name} constant lhs"),
            &values(weight.grad(&gradients).expect("the weight's gradient")),
            &values(expected_gradient.inner()),
            1e-5,
        );
    }
}
