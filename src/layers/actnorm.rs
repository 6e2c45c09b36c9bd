//! ActNorm (Glow §3.1): a per-channel affine map `y = (x + b) * exp(logs)` whose parameters are
//! initialised from the first training batch so that the output has zero mean and unit
//! variance per channel, then trained freely. Unlike batch norm it does not depend on the batch
//! after initialisation, so it works with small batches and has an exact, data-independent
//! log-determinant `H * W * sum(logs)`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::flow::{broadcast_logdet, pixels, Context, Flow};
use crate::tensor_util::{buffer, from_vec, replace, replace_buffer, to_vec, trainable};

/// Per-channel affine flow with data-dependent initialisation.
#[derive(Module, Debug)]
pub struct ActNorm {
    /// Per-channel shift `b`, `[C]`, added before the scale.
    pub bias: Param<Tensor<1>>,
    /// Per-channel log-scale, `[C]`: the shifted input is multiplied by `exp(logs)`.
    pub logs: Param<Tensor<1>>,
    /// Whether the data-dependent initialisation has happened: `[1]`, 1 once it has, else 0. A
    /// fixed buffer, saved with the weights (nflows keeps the same flag as a buffer).
    pub initialized: Param<Tensor<1>>,
}

/// Added to the standard deviation before the log (Glow's form, `-log(std + eps)`).
const STD_EPS: f64 = 1e-6;

/// The smallest per-channel standard deviation the data-dependent initialisation divides by: a
/// channel that varies less than this in the initialising batch (a rare or sparse column the
/// batch happened to miss, a blank image batch) is scaled by at most `1 / 0.01` = 100 at
/// initialisation, never by the `1e6` that `-log(0 + 1e-6)` would give. Data the recipes feed
/// (standardised table columns, pixels in `[-0.5, 0.5]`, unit-scale activations) has channel
/// standard deviations far above it, so their initialisation is Glow's exactly.
pub const ACTNORM_INIT_MIN_STD: f64 = 1e-2;

impl ActNorm {
    /// An uninitialised ActNorm over `channels` channels: the identity (`b = 0`, `logs = 0`)
    /// until [`initialize`](Self::initialize) runs.
    pub fn new(channels: usize, device: &Device) -> Self {
        ActNorm {
            bias: trainable(Tensor::zeros([channels], device)),
            logs: trainable(Tensor::zeros([channels], device)),
            initialized: buffer(Tensor::zeros([1], device)),
        }
    }

    /// Number of channels `C`.
    pub fn channels(&self) -> usize {
        self.bias.dims()[0]
    }

    /// Set `b = -mean_c(x)`, `logs = -log(max(std_c(x), ACTNORM_INIT_MIN_STD) + eps)` from a
    /// batch (statistics in float64 on the host; see [`ACTNORM_INIT_MIN_STD`]). Keeps parameter identities so an optimizer created later is unaffected.
    pub fn initialize(&mut self, x: &Tensor<4>) {
        let [n, c, h, w] = x.dims();
        let data = to_vec(x.clone());
        let count = (n * h * w) as f64;
        let mut mean = vec![0f64; c];
        let mut m2 = vec![0f64; c];
        for ni in 0..n {
            for (ci, (mu, s2)) in mean.iter_mut().zip(m2.iter_mut()).enumerate() {
                let base = (ni * c + ci) * h * w;
                for &v in &data[base..base + h * w] {
                    *mu += v as f64;
                    *s2 += (v as f64) * (v as f64);
                }
            }
        }
        let device = self.bias.device();
        let mut b = Vec::with_capacity(c);
        let mut logs = Vec::with_capacity(c);
        for ci in 0..c {
            let mu = mean[ci] / count;
            // Unbiased variance, as torch.std uses.
            let var = ((m2[ci] - count * mu * mu) / (count - 1.0).max(1.0)).max(0.0);
            b.push(-mu as f32);
            logs.push(-(var.sqrt().max(ACTNORM_INIT_MIN_STD) + STD_EPS).ln() as f32);
        }
        self.bias = replace(&self.bias, from_vec(b, [c], &device));
        self.logs = replace(&self.logs, from_vec(logs, [c], &device));
        self.initialized = replace_buffer(&self.initialized, Tensor::ones([1], &device));
    }

    /// Whether [`initialize`](Self::initialize) has run (read from the saved flag).
    pub fn is_initialized(&self) -> bool {
        to_vec(self.initialized.val())[0] > 0.5
    }

    fn shaped(&self, p: &Param<Tensor<1>>) -> Tensor<4> {
        p.val().reshape([1, self.channels(), 1, 1])
    }

    fn logdet(&self, x: &Tensor<4>) -> Tensor<1> {
        let n = x.dims()[0];
        broadcast_logdet(self.logs.val().sum().mul_scalar(pixels(x) as f32), n)
    }
}

impl Flow for ActNorm {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&x);
        let y = (x + self.shaped(&self.bias)) * self.shaped(&self.logs).exp();
        (y, ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&y).neg();
        let x = y * self.shaped(&self.logs).neg().exp() - self.shaped(&self.bias);
        (x, ld)
    }

    fn data_init(&mut self, x: &Tensor<4>, _ctx: Context) {
        if !self.is_initialized() {
            self.initialize(x);
        }
    }

    fn needs_data_init(&self) -> bool {
        !self.is_initialized()
    }
}
