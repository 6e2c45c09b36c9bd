//! Coupling layers (Real NVP / Glow): split the channels into a conditioning half `x_a` and a
//! transformed half `x_b`; a network of `x_a` gives the parameters of an elementwise bijection
//! of `x_b`. The Jacobian is triangular, so the log-determinant is a sum of log-scales.
//!
//! `swap` selects which half conditions, so stacked couplings alternate halves. On 2D vectors the
//! halves are the two coordinates; on images they are channel halves.

use burn::module::{Module, Param};
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor};

use crate::flow::{zero_logdet, Context, Flow};
use crate::nets::CouplingNet;
use crate::tensor_util::trainable;

/// `(x_a, x_b)`: the conditioning and the transformed half.
fn split(x: Tensor<4>, swap: bool) -> (Tensor<4>, Tensor<4>) {
    let c = x.dims()[1];
    let first = c / 2;
    let lo = x.clone().narrow(1, 0, first);
    let hi = x.narrow(1, first, c - first);
    if swap {
        (hi, lo)
    } else {
        (lo, hi)
    }
}

fn join(xa: Tensor<4>, yb: Tensor<4>, swap: bool) -> Tensor<4> {
    if swap {
        Tensor::cat(vec![yb, xa], 1)
    } else {
        Tensor::cat(vec![xa, yb], 1)
    }
}

/// Number of channels of the transformed half of a `channels`-channel input.
pub fn transformed_channels(channels: usize, swap: bool) -> usize {
    if swap {
        channels / 2
    } else {
        channels - channels / 2
    }
}

/// Number of channels of the conditioning half.
pub fn conditioning_channels(channels: usize, swap: bool) -> usize {
    channels - transformed_channels(channels, swap)
}

/// Sum of every value of each sample, `[N, ...]` to `[N]` (a log-determinant's per-sample sum).
pub(crate) fn per_sample_sum(t: Tensor<4>) -> Tensor<1> {
    let n = t.dims()[0];
    t.reshape([n as i64, -1]).sum_dim(1).reshape([n])
}

/// The tutorial's scale `s = tanh(raw) * alpha + beta` with learned scalars: bounded log-scale.
#[derive(Module, Debug)]
pub struct TanhScale {
    /// Learned multiplier of `tanh(raw)`, `[1]` (initialised to 1).
    pub alpha: Param<Tensor<1>>,
    /// Learned offset of the log-scale, `[1]` (initialised to 0).
    pub beta: Param<Tensor<1>>,
}

impl TanhScale {
    /// `alpha = 1`, `beta = 0`: the log-scale starts as `tanh(raw)`, in (-1, 1).
    pub fn new(device: &Device) -> Self {
        TanhScale {
            alpha: trainable(Tensor::ones([1], device)),
            beta: trainable(Tensor::zeros([1], device)),
        }
    }

    fn log_scale(&self, raw: Tensor<4>) -> Tensor<4> {
        raw.tanh() * self.alpha.val().reshape([1, 1, 1, 1]) + self.beta.val().reshape([1, 1, 1, 1])
    }
}

/// Affine coupling. The network outputs `2 * C_b` channels: the shift (first `C_b`) and the
/// raw scale (last `C_b`).
/// - Glow form (`tanh_scale: None`): `y_b = (x_b + shift) * sigmoid(raw + 2)`; the +2 starts the
///   scale near 0.88 and the sigmoid keeps it in (0, 1), which is what makes Glow stable.
/// - Tutorial form (`tanh_scale: Some`): `y_b = x_b * exp(tanh(raw) * alpha + beta) + shift`.
#[derive(Module, Debug)]
pub struct AffineCoupling {
    /// The conditioner: maps the conditioning half `x_a` (and any context) to `2 * C_b`
    /// channels.
    pub net: CouplingNet,
    /// `None`: Glow's sigmoid scale; `Some`: the tutorial's `exp(tanh(raw) * alpha + beta)`.
    pub tanh_scale: Option<TanhScale>,
    /// Whether the second channel half conditions and the first is transformed.
    pub swap: bool,
}

impl AffineCoupling {
    /// A coupling over `net`, which must output `2 * C_b` channels, `C_b` =
    /// [`transformed_channels`]`(C, swap)`.
    pub fn new(net: CouplingNet, tanh_scale: Option<TanhScale>, swap: bool) -> Self {
        AffineCoupling {
            net,
            tanh_scale,
            swap,
        }
    }

    /// `(shift, log_scale)` for the transformed half.
    fn params(
        &self,
        xa: Tensor<4>,
        ctx: Context,
        cb: usize,
    ) -> (Tensor<4>, Tensor<4>, Option<Tensor<4>>) {
        let h = self.net.forward(xa, ctx);
        let shift = h.clone().narrow(1, 0, cb);
        let raw = h.narrow(1, cb, cb);
        match &self.tanh_scale {
            Some(ts) => (shift, ts.log_scale(raw), None),
            None => {
                let z = raw.add_scalar(2.0);
                (shift, log_sigmoid(z.clone()), Some(sigmoid(z)))
            }
        }
    }
}

impl AffineCoupling {
    /// The smallest and largest log-scale the coupling applies to `x` (forward: `x` is the
    /// input; inverse: the output, whose conditioning half is the same). The forward multiplies
    /// by up to `exp(max)`, the inverse by up to `exp(-min)`. Diagnostics only; NaN bounds when
    /// the network's output holds a NaN.
    pub fn log_scale_range(&self, x: Tensor<4>, ctx: Context) -> (f64, f64) {
        let (xa, xb) = split(x, self.swap);
        let cb = xb.dims()[1];
        let (_, log_scale, _) = self.params(xa, ctx, cb);
        let v = crate::tensor_util::to_vec_f64(log_scale);
        if v.iter().any(|x| x.is_nan()) {
            return (f64::NAN, f64::NAN);
        }
        v.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            })
    }
}

impl Flow for AffineCoupling {
    fn forward_ctx(&self, x: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let (xa, xb) = split(x, self.swap);
        let cb = xb.dims()[1];
        let (shift, log_scale, scale) = self.params(xa.clone(), ctx, cb);
        let yb = match scale {
            None => xb * log_scale.clone().exp() + shift,
            Some(scale) => (xb + shift) * scale,
        };
        (join(xa, yb, self.swap), per_sample_sum(log_scale))
    }

    fn inverse_ctx(&self, y: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let (xa, yb) = split(y, self.swap);
        let cb = yb.dims()[1];
        let (shift, log_scale, scale) = self.params(xa.clone(), ctx, cb);
        let xb = match scale {
            None => (yb - shift) * log_scale.clone().neg().exp(),
            Some(scale) => yb / scale - shift,
        };
        (join(xa, xb, self.swap), per_sample_sum(log_scale).neg())
    }
    fn data_init(&mut self, x: &Tensor<4>, ctx: Context) {
        let (xa, _) = split(x.clone(), self.swap);
        self.net.data_init(xa, ctx);
    }

    fn needs_data_init(&self) -> bool {
        self.net.needs_data_init()
    }
}

/// Additive coupling (NICE): `y_b = x_b + NN(x_a)`, volume preserving (log-determinant 0).
#[derive(Module, Debug)]
pub struct AdditiveCoupling {
    /// The conditioner: maps the conditioning half `x_a` (and any context) to the `C_b`-channel
    /// shift.
    pub net: CouplingNet,
    /// Whether the second channel half conditions and the first is transformed.
    pub swap: bool,
}

impl AdditiveCoupling {
    /// A coupling over `net`, which must output `C_b` = [`transformed_channels`]`(C, swap)`
    /// channels.
    pub fn new(net: CouplingNet, swap: bool) -> Self {
        AdditiveCoupling { net, swap }
    }
}

impl Flow for AdditiveCoupling {
    fn forward_ctx(&self, x: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = zero_logdet(&x);
        let (xa, xb) = split(x, self.swap);
        let yb = xb + self.net.forward(xa.clone(), ctx);
        (join(xa, yb, self.swap), ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let ld = zero_logdet(&y);
        let (xa, yb) = split(y, self.swap);
        let xb = yb - self.net.forward(xa.clone(), ctx);
        (join(xa, xb, self.swap), ld)
    }
    fn data_init(&mut self, x: &Tensor<4>, ctx: Context) {
        let (xa, _) = split(x.clone(), self.swap);
        self.net.data_init(xa, ctx);
    }

    fn needs_data_init(&self) -> bool {
        self.net.needs_data_init()
    }
}
