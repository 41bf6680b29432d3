//! The optimizer step every Ember task shares: gradients, clipping, learning-rate schedule,
//! update; and the optimizer an `[optimizer]` section names.

use burn::module::Module;
use burn::optim::{
    AdaGradConfig, AdamConfig, GradientsParams, ModuleOptimizer, RmsPropConfig, SgdConfig,
    momentum::MomentumConfig,
};
use burn::tensor::Tensor;

use crate::clip::{clip_grad_norm, clip_grad_value};
use crate::config::{OptimizerKind, RunConfig};
use crate::{OptimizerConfig, Ranks, TrainError};

/// Turns a loss into updated weights as an `[optimizer]` section says: backward pass, clipping
/// by value then by global norm, the decayed learning rate, the optimizer's update. The character
/// model's truncated-BPTT [`Trainer`](crate::Trainer) and the sequence tasks of `examples/` both
/// train through it.
pub struct GradientStep {
    config: OptimizerConfig,
    optimizer: ModuleOptimizer,
}

impl GradientStep {
    /// A fresh optimizer, with no state yet.
    pub fn new(config: &OptimizerConfig) -> Self {
        GradientStep {
            config: config.clone(),
            optimizer: optimizer_from(config),
        }
    }

    /// Continues with an optimizer whose state was restored from a checkpoint.
    pub fn with_optimizer(config: &OptimizerConfig, optimizer: ModuleOptimizer) -> Self {
        GradientStep {
            config: config.clone(),
            optimizer,
        }
    }

    /// The optimizer and its state, for checkpoints.
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optimizer
    }

    /// The learning rate at `step`: `lr * lr_decay ^ floor(step / lr_decay_every)`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let decays = step / self.config.lr_decay_every.max(1) as u64;
        self.config.lr
            * self
                .config
                .lr_decay
                .powi(decays.min(i32::MAX as u64) as i32)
    }

    /// Backpropagates `loss` through `model` and updates it with the learning rate of `step`.
    /// Returns the updated model and the global gradient norm before clipping.
    pub fn apply<M: Module>(&mut self, model: M, loss: Tensor<1>, step: u64) -> (M, f64) {
        let (grads, grad_norm) = self.clipped_gradients(&model, loss);
        let model = self.optimizer.step(self.lr_at(step), model, grads);
        (model, grad_norm)
    }

    /// As [`apply`](Self::apply), but a NaN or infinite loss or gradient norm is an error
    /// naming the step, and then neither the model nor the optimizer state changes. Returns the
    /// updated model, the loss and the gradient norm.
    pub fn apply_checked<M: Module>(
        &mut self,
        model: M,
        loss: Tensor<1>,
        step: u64,
    ) -> Result<(M, f64, f64), TrainError> {
        let loss_value = loss.clone().into_scalar::<f64>();
        check_finite(step, "loss", loss_value)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (model, grad_norm) = self.apply_gradients_checked(model, loss_value, grads, step)?;
        Ok((model, loss_value, grad_norm))
    }

    /// As [`apply_checked`](Self::apply_checked) for one rank of a data-parallel run: `loss` is
    /// this rank's share of the global batch, `weight` that share's part of the global loss
    /// (see [`Ranks::combine_gradients`]). Every rank applies the update of the global batch and
    /// gets its loss back; a single process is [`apply_checked`](Self::apply_checked) exactly.
    pub fn apply_shared<M: Module>(
        &mut self,
        model: M,
        loss: Option<Tensor<1>>,
        weight: f64,
        ranks: &Ranks,
        step: u64,
    ) -> Result<(M, f64, f64), TrainError> {
        let (loss_value, grads) = match loss {
            Some(loss) => {
                let value = loss.clone().into_scalar::<f64>();
                (value, GradientsParams::from_grads(loss.backward(), &model))
            }
            // A rank whose share of a short last batch is empty adds nothing.
            None => (0.0, GradientsParams::new()),
        };
        let (grads, loss_value) = ranks.combine_gradients(&model, grads, loss_value, weight);
        let (model, grad_norm) = self.apply_gradients_checked(model, loss_value, grads, step)?;
        Ok((model, loss_value, grad_norm))
    }

    /// As [`apply_checked`](Self::apply_checked), from gradients already taken (and perhaps
    /// summed across processes) and the loss they came from. Returns the updated model and the gradient norm.
    pub fn apply_gradients_checked<M: Module>(
        &mut self,
        model: M,
        loss: f64,
        mut grads: GradientsParams,
        step: u64,
    ) -> Result<(M, f64), TrainError> {
        check_finite(step, "loss", loss)?;
        let grad_norm = self.clip(&model, &mut grads);
        check_finite(step, "gradient norm", grad_norm)?;
        let model = self.optimizer.step(self.lr_at(step), model, grads);
        Ok((model, grad_norm))
    }

    fn clipped_gradients<M: Module>(&self, model: &M, loss: Tensor<1>) -> (GradientsParams, f64) {
        let mut grads = GradientsParams::from_grads(loss.backward(), model);
        let grad_norm = self.clip(model, &mut grads);
        (grads, grad_norm)
    }

    /// Clips `grads` by value, then by global norm; returns the norm before clipping.
    fn clip<M: Module>(&self, model: &M, grads: &mut GradientsParams) -> f64 {
        if self.config.grad_clip_value > 0.0 {
            clip_grad_value(model, grads, self.config.grad_clip_value);
        }
        clip_grad_norm(model, grads, self.config.grad_clip_norm)
    }
}

/// The optimizer a run's config names.
pub fn optimizer_for(config: &RunConfig) -> ModuleOptimizer {
    optimizer_from(&config.optimizer)
}

/// The optimizer an `[optimizer]` section names, with no state yet.
pub(crate) fn optimizer_from(optimizer: &OptimizerConfig) -> ModuleOptimizer {
    let epsilon = optimizer.epsilon as f32;
    match optimizer.kind {
        OptimizerKind::Adam => AdamConfig::new().with_epsilon(epsilon).init(),
        OptimizerKind::Adagrad => AdaGradConfig::new().with_epsilon(epsilon).init(),
        OptimizerKind::Rmsprop => RmsPropConfig::new()
            .with_alpha(optimizer.rmsprop_alpha as f32)
            .with_momentum(optimizer.momentum as f32)
            .with_epsilon(epsilon)
            .init(),
        OptimizerKind::Sgd => {
            let momentum = (optimizer.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(optimizer.momentum)
                    .with_dampening(0.0)
            });
            SgdConfig::new().with_momentum(momentum).init()
        }
    }
}

/// An error naming the step if `value` (the `quantity` at optimizer step `step + 1`) is NaN or
/// infinite.
fn check_finite(step: u64, quantity: &'static str, value: f64) -> Result<(), TrainError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(TrainError::Diverged {
            step: step + 1,
            quantity,
            value,
            limit: None,
        })
    }
}
