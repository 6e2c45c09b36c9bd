//! Real NVP's batch normalisation as a flow layer (Dinh et al. 2017, §3.7):
//! `y = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta`, per channel, with
//! `log|det| = H * W * sum(log_gamma - 0.5 * log(var + eps))`.
//!
//! In training (autodiff device) the batch statistics are used, treated as constants of the map
//! for the log-determinant as in Real NVP, and folded into running averages; in evaluation and
//! for generation the running averages are used, which makes the layer an exact bijection.

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor};

use crate::flow::{broadcast_logdet, pixels, Flow};
use crate::tensor_util::trainable;

/// Real NVP's batch normalisation as a per-channel affine flow (see the module docs): batch
/// statistics in training (autodiff device), running averages in evaluation and always in the
/// inverse.
///
/// # Shapes
/// `log_gamma`, `beta`, `running_mean`, `running_var`: `[C]`; input and output `[N, C, H, W]`.
#[derive(Module, Debug)]
pub struct FlowBatchNorm {
    /// Per-channel log of the learned scale `gamma` (zero-initialised: `gamma = 1`).
    pub log_gamma: Param<Tensor<1>>,
    /// Per-channel learned shift, added after the scale (zero-initialised).
    pub beta: Param<Tensor<1>>,
    /// Running average of the per-channel batch means, updated by every training forward pass.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running average of the per-channel batch variances (biased: divided by `N * H * W`).
    pub running_var: RunningState<Tensor<1>>,
    /// Weight of each new batch in the running averages: `r = (1 - momentum) * r + momentum * b`.
    pub momentum: f64,
    /// Added to the variance before its square root and log.
    pub eps: f64,
}

impl FlowBatchNorm {
    /// A layer over `channels` channels with `log_gamma = beta = 0`, running mean 0 and variance 1,
    /// momentum 0.05 and eps 1e-5.
    pub fn new(channels: usize, device: &Device) -> Self {
        FlowBatchNorm {
            log_gamma: trainable(Tensor::zeros([channels], device)),
            beta: trainable(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.05,
            eps: 1e-5,
        }
    }

    fn channels(&self) -> usize {
        self.beta.dims()[0]
    }

    /// `(mean, var)` used for this input, `[C]` each.
    fn statistics(&self, x: &Tensor<4>) -> (Tensor<1>, Tensor<1>) {
        let device = x.device();
        if device.is_autodiff() {
            let [n, c, h, w] = x.dims();
            let flat = x.clone().swap_dims(0, 1).reshape([c, n * h * w]);
            let (var, mean) = flat.var_mean_bias(1);
            let (mean, var) = (mean.reshape([c]), var.reshape([c]));
            let m = self.momentum;
            let rm = self.running_mean.value_sync().to_device(&device);
            let rv = self.running_var.value_sync().to_device(&device);
            self.running_mean
                .update((rm.mul_scalar(1.0 - m) + mean.clone().detach().mul_scalar(m)).detach());
            self.running_var
                .update((rv.mul_scalar(1.0 - m) + var.clone().detach().mul_scalar(m)).detach());
            (mean, var)
        } else {
            (
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
            )
        }
    }

    fn logdet(&self, var: Tensor<1>, x: &Tensor<4>) -> Tensor<1> {
        let n = x.dims()[0];
        let per_channel = self.log_gamma.val() - var.add_scalar(self.eps).log().mul_scalar(0.5);
        broadcast_logdet(per_channel.sum().mul_scalar(pixels(x) as f32), n)
    }
}

impl Flow for FlowBatchNorm {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let c = self.channels();
        let (mean, var) = self.statistics(&x);
        let ld = self.logdet(var.clone(), &x);
        let scale =
            (self.log_gamma.val().exp() / var.add_scalar(self.eps).sqrt()).reshape([1, c, 1, 1]);
        let y = (x - mean.reshape([1, c, 1, 1])) * scale + self.beta.val().reshape([1, c, 1, 1]);
        (y, ld)
    }

    fn uses_batch_statistics(&self) -> bool {
        true
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let c = self.channels();
        let device = y.device();
        let mean = self.running_mean.value().to_device(&device);
        let var = self.running_var.value().to_device(&device);
        let ld = self.logdet(var.clone(), &y).neg();
        let inv_scale =
            (var.add_scalar(self.eps).sqrt() / self.log_gamma.val().exp()).reshape([1, c, 1, 1]);
        let x =
            (y - self.beta.val().reshape([1, c, 1, 1])) * inv_scale + mean.reshape([1, c, 1, 1]);
        (x, ld)
    }
}
