//! The matrix product of the layers' input projections and of the heads as a Burn backend
//! extension, on the CPU backends only: `gemm` into a buffer of the op's own.
//!
//! Burn's own product on Flex allocates its output zeroed and then copies it once more to reach
//! its alignment; the model's widest products (`[seq_len * batch_size, G * d_hidden]`) paid both
//! passes on the main thread on every step. This op writes its output once, and reads Flex's
//! operands in place, transposed views included.

// NdArray is deprecated upstream, but it is one of the two CPU backends Ember supports.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use ember_kernels::matmul::Operand;

use super::backend::tensor;

/// The product of two matrices, as backends implement it.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Autodiff,
)]
pub trait ProductBackend: Backend {
    /// `lhs rhs`.
    ///
    /// # Shapes
    /// - lhs: `[m, k]`; rhs: `[k, n]`; output: `[m, n]`
    fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `[m, k] x [k, n]` of two operands, from their shapes.
#[allow(dead_code)]
fn dims<B: Backend>(lhs: &FloatTensor<B>, rhs: &FloatTensor<B>) -> (usize, usize, usize) {
    let [m, k] = lhs.shape().dims();
    let [k_rhs, n] = rhs.shape().dims();
    assert_eq!(
        k, k_rhs,
        "the product's inner sizes differ: [{m}, {k}] x [{k_rhs}, {n}]"
    );
    (m, k, n)
}

/// A Flex matrix as `gemm` reads it, in place: its buffer from the view's first element and the
/// view's strides; `None` for a view that steps backwards (a flip), which is copied instead.
#[cfg(feature = "flex")]
fn flex_operand(matrix: &burn::backend::flex::FlexTensor) -> Option<Operand<'_>> {
    let layout = matrix.layout();
    let strides = layout.strides();
    let (row_stride, col_stride) = (
        usize::try_from(strides[0]).ok()?,
        usize::try_from(strides[1]).ok()?,
    );
    Some(Operand {
        values: &matrix.storage::<f32>()[layout.start_offset()..],
        row_stride,
        col_stride,
    })
}

#[cfg(feature = "flex")]
impl ProductBackend for burn::backend::Flex {
    fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (m, k, n) = dims::<Self>(&lhs, &rhs);
        let readable = |matrix: FloatTensor<Self>| match flex_operand(&matrix) {
            Some(_) => matrix,
            None => matrix.to_contiguous(),
        };
        let (lhs, rhs) = (readable(lhs), readable(rhs));
        let operand = |matrix| flex_operand(matrix).expect("a contiguous matrix steps forwards");
        let output = ember_kernels::matmul::product((m, k, n), operand(&lhs), operand(&rhs));
        tensor::<Self>(output, [m, n], &Default::default())
    }
}

#[cfg(feature = "ndarray")]
impl ProductBackend for burn::backend::NdArray {
    fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        use super::backend::{host, values};
        let device = lhs.device();
        let (m, k, n) = dims::<Self>(&lhs, &rhs);
        let (lhs, rhs) = (host::<Self>(lhs), host::<Self>(rhs));
        let output = ember_kernels::matmul::product(
            (m, k, n),
            Operand::rows(values(&lhs), k),
            Operand::rows(values(&rhs), n),
        );
        tensor::<Self>(output, [m, n], &device)
    }
}

/// The autodiff node of the op; its parents are `lhs` and `rhs`.
#[derive(Debug)]
struct ProductNode;

impl<B: Backend + ProductBackend> Backward<B, 2> for ProductNode {
    /// `lhs` and `rhs`: each one's gradient reads the other.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (lhs, rhs) = ops.state;
        let d_output = grads.consume::<B>(&ops.node);
        let [lhs_parent, rhs_parent] = ops.parents;
        // d lhs = d_out rhs^T and d rhs = lhs^T d_out; the transposes are views.
        if let Some(parent) = lhs_parent {
            let d_lhs = B::product(d_output.clone(), B::float_transpose(rhs));
            grads.register::<B>(parent.id, d_lhs);
        }
        if let Some(parent) = rhs_parent {
            let d_rhs = B::product(B::float_transpose(lhs), d_output);
            grads.register::<B>(parent.id, d_rhs);
        }
    }
}

impl<B: Backend + ProductBackend, C: CheckpointStrategy> ProductBackend for Autodiff<B, C> {
    fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs, lhs_node) = lhs.into_parts();
        let (rhs, rhs_node) = rhs.into_parts();
        match ProductNode
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::product(lhs.clone(), rhs.clone());
                prep.finish((lhs, rhs), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::product(lhs, rhs)),
        }
    }
}
