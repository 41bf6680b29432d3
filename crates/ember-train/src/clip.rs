//! Gradient clipping across all parameters.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// The global L2 norm of all gradients, `sqrt(sum of every element squared)`, as PyTorch's
/// `clip_grad_norm_` measures it (Burn's own norm clipping works per tensor).
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                let squares = grad.square().sum();
                self.total = Some(match self.total.take() {
                    Some(total) => total + squares,
                    None => squares,
                });
            }
        }
    }
    let mut visitor = SumSquares { grads, total: None };
    module.visit(&mut visitor);
    visitor
        .total
        .map_or(0.0, |total| total.into_scalar::<f64>().sqrt())
}

/// Applies `f` to the gradient of every parameter of `module`.
pub fn map_grads<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    f: impl Fn(Tensor<1>) -> Tensor<1>,
) {
    struct Collect(Vec<(ParamId, usize)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id, D));
        }
    }
    let mut ids = Collect(Vec::new());
    module.visit(&mut ids);
    for (id, rank) in ids.0 {
        match rank {
            1 => map_one::<1>(grads, id, &f),
            2 => map_one::<2>(grads, id, &f),
            3 => map_one::<3>(grads, id, &f),
            _ => unreachable!("Ember's parameters have rank 1 to 3"),
        }
    }
}

fn map_one<const D: usize>(
    grads: &mut GradientsParams,
    id: ParamId,
    f: &impl Fn(Tensor<1>) -> Tensor<1>,
) {
    if let Some(grad) = grads.remove::<D>(id) {
        let shape = grad.shape();
        let mapped: Tensor<D> = f(grad.flatten::<1>(0, D - 1)).reshape(shape);
        grads.register(id, mapped);
    }
}

/// Scales all gradients together so their global norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm(module, grads);
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        map_grads(module, grads, |g| g.mul_scalar(scale));
    }
    norm
}

/// Clamps every gradient element to `[-max_value, max_value]`.
pub fn clip_grad_value<M: Module>(module: &M, grads: &mut GradientsParams, max_value: f64) {
    map_grads(module, grads, |g| g.clamp(-max_value, max_value));
}
