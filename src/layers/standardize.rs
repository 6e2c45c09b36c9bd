//! Standardisation as a flow layer: the fixed per-dimension affine map
//! `y = (x - mean) / std`, with `mean` and `std` taken from the training data before training
//! and saved with the weights (non-trainable buffers). Its log-determinant `-Σ_d log std_d`
//! (times `H * W`) is part of every log-density, so a model that standardises internally still
//! reports `log p(x)` in the data's own units (Papamakarios et al. 2017, §4 use the same
//! preprocessing outside the model and correct for it by hand).

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::flow::{broadcast_logdet, pixels, Context, Flow};
use crate::tensor_util::{buffer, from_vec_f64, replace_buffer, to_vec_f64};

/// Fixed per-channel standardisation `y = (x - mean) * exp(-log_std)`, computed in float64.
///
/// The statistics are float64 buffers and the map is applied in float64 before the result is
/// cast to the input's float type, so a column like `1e9 + N(0, 1)` keeps its spread (float32
/// holds 1e9 only to ±32). Inputs of raw data should be float64 for the same reason; or
/// standardise on the host with [`Standardize::stats`] and feed the standardised values.
///
/// # Shapes
/// `mean`, `log_std`: `[C]`; input and output `[N, C, H, W]`.
#[derive(Module, Debug)]
pub struct Standardize {
    /// Per-channel mean of the training data (float64; checkpoints saved before it was kept in
    /// float64 hold float32 values, used as saved).
    pub mean: Param<Tensor<1>>,
    /// Per-channel natural log of the training data's standard deviation (float64).
    pub log_std: Param<Tensor<1>>,
}

impl Standardize {
    /// The identity (mean 0, std 1) over `channels` channels; set the statistics with
    /// [`set`](Self::set).
    pub fn new(channels: usize, device: &Device) -> Self {
        let zeros = || from_vec_f64(vec![0.0; channels], [channels], (device, DType::F64));
        Standardize {
            mean: buffer(zeros()),
            log_std: buffer(zeros()),
        }
    }

    /// Set the statistics: `mean[c]` and `std[c] > 0` (a constant column has std 0: the caller
    /// refuses it, since no density exists on a point), kept in float64.
    pub fn set(&mut self, mean: &[f64], std: &[f64]) {
        let device = self.mean.device();
        let c = mean.len();
        let l: Vec<f64> = std.iter().map(|&s| s.ln()).collect();
        let opts = (&device, DType::F64);
        self.mean = replace_buffer(&self.mean, from_vec_f64(mean.to_vec(), [c], opts));
        self.log_std = replace_buffer(&self.log_std, from_vec_f64(l, [c], opts));
    }

    /// The statistics on the host in float64: `(mean, std)` per channel.
    pub fn stats(&self) -> (Vec<f64>, Vec<f64>) {
        let mean = to_vec_f64(self.mean.val());
        let std = to_vec_f64(self.log_std.val())
            .iter()
            .map(|l| l.exp())
            .collect();
        (mean, std)
    }

    /// A buffer as a float64 row `[1, C]`.
    fn row64(&self, p: &Param<Tensor<1>>) -> Tensor<2> {
        let c = p.dims()[0];
        p.val().cast(DType::F64).reshape([1, c])
    }

    /// The log-determinant `-H·W·Σ log std`, `[N]`, in `x`'s float type.
    pub fn logdet(&self, x: &Tensor<4>) -> Tensor<1> {
        let n = x.dims()[0];
        let s = self
            .log_std
            .val()
            .cast(x.dtype())
            .sum()
            .mul_scalar(-(pixels(x) as f64));
        broadcast_logdet(s, n)
    }

    /// `(x - mean) / std` of `x: [N, C]` computed in float64, returned as float64.
    pub fn standardize_2d(&self, x: Tensor<2>) -> Tensor<2> {
        let x = x.cast(DType::F64);
        (x - self.row64(&self.mean)) * self.row64(&self.log_std).neg().exp()
    }

    /// `y * std + mean` of `y: [N, C]` computed in float64, returned as float64.
    pub fn unstandardize_2d(&self, y: Tensor<2>) -> Tensor<2> {
        let y = y.cast(DType::F64);
        y * self.row64(&self.log_std).exp() + self.row64(&self.mean)
    }

    /// Standardise a context `[N, K]` the same way, in float64, returned in `dtype` (no
    /// log-determinant: a context is given, not modelled).
    pub fn apply_2d(&self, x: Tensor<2>, dtype: DType) -> Tensor<2> {
        self.standardize_2d(x).cast(dtype)
    }
}

impl Standardize {
    /// A buffer as a float64 `[1, C, 1, 1]`.
    fn shaped64(&self, p: &Param<Tensor<1>>) -> Tensor<4> {
        let c = p.dims()[0];
        p.val().cast(DType::F64).reshape([1, c, 1, 1])
    }
}

impl Flow for Standardize {
    /// Any `[N, C, H, W]`: standardised per channel in float64, returned in `x`'s float type.
    fn forward_ctx(&self, x: Tensor<4>, _ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&x);
        let dtype = x.dtype();
        let x64 = x.cast(DType::F64);
        let y = (x64 - self.shaped64(&self.mean)) * self.shaped64(&self.log_std).neg().exp();
        (y.cast(dtype), ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&y).neg();
        let dtype = y.dtype();
        let y64 = y.cast(DType::F64);
        let x = y64 * self.shaped64(&self.log_std).exp() + self.shaped64(&self.mean);
        (x.cast(dtype), ld)
    }
}
