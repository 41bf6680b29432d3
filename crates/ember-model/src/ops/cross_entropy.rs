//! Cross-entropy of logits against class ids as a Burn backend extension: one host kernel pass
//! forward (the loss and the softmax) and one backward on the CPU backends, where the composition of `log_softmax` and
//! `gather` makes several passes over the logits and an autodiff node for each.

// NdArray is deprecated upstream, but it is one of the two CPU backends Ember supports.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};

use super::backend::{host, tensor, values};

/// Cross-entropy per row, as backends implement it. Targets travel as float class ids (exact
/// below 2^24), as Burn 0.22.1's extension macro routes float tensors.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Autodiff,
)]
pub trait CrossEntropyBackend: Backend {
    /// Each row's loss `log sum_j e^{x_j} - x_target` and its softmax.
    ///
    /// # Shapes
    /// - logits: `[rows, classes]`; targets: `[rows]`
    /// - losses: `[rows]`; probabilities: `[rows, classes]`
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of the logits from the forward pass's softmax and the gradient of each
    /// row's loss.
    fn cross_entropy_backward(
        probabilities: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        d_losses: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

#[allow(dead_code)]
fn class_ids<B: Backend>(targets: FloatTensor<B>) -> Vec<usize> {
    values(&host::<B>(targets))
        .iter()
        .map(|&id| id as usize)
        .collect()
}

/// Implements the extension on a CPU backend through the host kernels.
macro_rules! host_kernels {
    ($backend:ty) => {
        impl CrossEntropyBackend for $backend {
            fn cross_entropy_forward(
                logits: FloatTensor<Self>,
                targets: FloatTensor<Self>,
            ) -> (FloatTensor<Self>, FloatTensor<Self>) {
                let device = logits.device();
                let [rows, classes] = logits.shape().dims();
                let logits = host::<Self>(logits);
                let (losses, probabilities) = ember_kernels::cross_entropy_forward(
                    values(&logits),
                    classes,
                    &class_ids::<Self>(targets),
                );
                (
                    tensor::<Self>(losses, [rows], &device),
                    tensor::<Self>(probabilities, [rows, classes], &device),
                )
            }

            fn cross_entropy_backward(
                probabilities: FloatTensor<Self>,
                targets: FloatTensor<Self>,
                d_losses: FloatTensor<Self>,
            ) -> FloatTensor<Self> {
                let device = probabilities.device();
                let [rows, classes] = probabilities.shape().dims();
                let d_logits = ember_kernels::cross_entropy_backward(
                    values(&host::<Self>(probabilities)),
                    classes,
                    &class_ids::<Self>(targets),
                    values(&host::<Self>(d_losses)),
                );
                tensor::<Self>(d_logits, [rows, classes], &device)
            }
        }
    };
}

#[cfg(feature = "flex")]
host_kernels!(burn::backend::Flex);
#[cfg(feature = "ndarray")]
host_kernels!(burn::backend::NdArray);

/// The autodiff node of the op; its one parent is the logits.
#[derive(Debug)]
struct CrossEntropyNode;

impl<B: Backend + CrossEntropyBackend> Backward<B, 1> for CrossEntropyNode {
    /// The softmax of the logits and the targets.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (probabilities, targets) = ops.state;
        let d_losses = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let d_logits = B::cross_entropy_backward(probabilities, targets, d_losses);
            grads.register::<B>(parent.id, d_logits);
        }
    }
}

impl<B: Backend + CrossEntropyBackend, C: CheckpointStrategy> CrossEntropyBackend
    for Autodiff<B, C>
{
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // The targets are constants: no gradient flows to them.
        let targets = targets.into_primitive();
        let (logits, logits_node) = logits.into_parts();
        let (losses, probabilities) = B::cross_entropy_forward(logits, targets.clone());
        let losses = match CrossEntropyNode
            .prepare::<C>([logits_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((probabilities.clone(), targets), losses),
            OpsKind::UnTracked(prep) => prep.finish(losses),
        };
        (losses, FloatTensor::<Self>::new(probabilities))
    }

    /// Runs the inner backend's backward pass on constants: the op has no second derivative.
    fn cross_entropy_backward(
        probabilities: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        d_losses: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::cross_entropy_backward(
            probabilities.into_primitive(),
            targets.into_primitive(),
            d_losses.into_primitive(),
        ))
    }
}
