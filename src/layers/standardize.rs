//! Standardisation as a flow layer: the fixed per-dimension affine map
//! `y = (x - mean) / std`, with `mean` and `std` taken from the training data before training
//! and saved with the weights (non-trainable buffers). Its log-determinant `-Σ_d log std_d`
//! (times `H * W`) is part of every log-density, so a model that standardises internally still
//! reports `log p(x)` in the data's own units (Papamakarios et al. 2017, §4 use the same
//! preprocessing outside the model and correct for it by hand).

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::flow::{broadcast_logdet, pixels, Context, Flow};
use crate::tensor_util::{buffer, from_vec, replace_buffer};

/// Fixed per-channel standardisation `y = (x - mean) * exp(-log_std)`.
///
/// # Shapes
/// `mean`, `log_std`: `[C]`; input and output `[N, C, H, W]`.
#[derive(Module, Debug)]
pub struct Standardize {
    /// Per-channel mean of the training data.
    pub mean: Param<Tensor<1>>,
    /// Per-channel natural log of the training data's standard deviation.
    pub log_std: Param<Tensor<1>>,
}

impl Standardize {
    /// The identity (mean 0, std 1) over `channels` channels; set the statistics with
    /// [`set`](Self::set).
    pub fn new(channels: usize, device: &Device) -> Self {
        Standardize {
            mean: buffer(Tensor::zeros([channels], device)),
            log_std: buffer(Tensor::zeros([channels], device)),
        }
    }

    /// Set the statistics: `mean[c]` and `std[c] > 0` (a constant column has std 0: the caller
    /// refuses it, since no density exists on a point).
    pub fn set(&mut self, mean: &[f64], std: &[f64]) {
        let device = self.mean.device();
        let c = mean.len();
        let m: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        let l: Vec<f32> = std.iter().map(|&s| s.ln() as f32).collect();
        self.mean = replace_buffer(&self.mean, from_vec(m, [c], &device));
        self.log_std = replace_buffer(&self.log_std, from_vec(l, [c], &device));
    }

    fn shaped(&self, p: &Param<Tensor<1>>, like: &Tensor<4>) -> Tensor<4> {
        let c = p.dims()[0];
        p.val().cast(like.dtype()).reshape([1, c, 1, 1])
    }

    fn logdet(&self, x: &Tensor<4>) -> Tensor<1> {
        let n = x.dims()[0];
        let s = self
            .log_std
            .val()
            .cast(x.dtype())
            .sum()
            .mul_scalar(-(pixels(x) as f64));
        broadcast_logdet(s, n)
    }

    /// Standardise a context `[N, K]` the same way (no log-determinant: a context is given,
    /// not modelled).
    pub fn apply_2d(&self, x: Tensor<2>) -> Tensor<2> {
        let k = self.mean.dims()[0];
        let mean = self.mean.val().cast(x.dtype()).reshape([1, k]);
        let inv = self
            .log_std
            .val()
            .cast(x.dtype())
            .neg()
            .exp()
            .reshape([1, k]);
        (x - mean) * inv
    }
}

impl Flow for Standardize {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&x);
        let y =
            (x.clone() - self.shaped(&self.mean, &x)) * self.shaped(&self.log_std, &x).neg().exp();
        (y, ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&y).neg();
        let x = y.clone() * self.shaped(&self.log_std, &y).exp() + self.shaped(&self.mean, &y);
        (x, ld)
    }
}
