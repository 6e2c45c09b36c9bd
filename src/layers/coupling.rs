//! Coupling layers (Real NVP / Glow): split the channels into a conditioning half `x_a` and a
//! transformed half `x_b`; a network of `x_a` gives the parameters of an elementwise bijection
//! of `x_b`. The Jacobian is triangular, so the log-determinant is a sum of log-scales.
//!
//! `swap` selects which half conditions, so stacked couplings alternate halves. On 2D vectors the
//! halves are the two coordinates; on images they are channel halves.

use burn::module::{Module, Param};
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::flow::{zero_logdet, Context, Flow};
use crate::nets::CouplingNet;
use crate::ops::tanh_affine::tanh_affine;
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

/// The conditioning and transformed halves of `x` along channels (`swap`: the second half
/// conditions), as every coupling splits them.
pub(crate) fn split_halves(x: Tensor<4>, swap: bool) -> (Tensor<4>, Tensor<4>) {
    split(x, swap)
}

/// The inverse of [`split_halves`].
pub(crate) fn join_halves(xa: Tensor<4>, yb: Tensor<4>, swap: bool) -> Tensor<4> {
    join(xa, yb, swap)
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

    /// `s = tanh(raw) * alpha + beta` for the network's raw output `[N, C, H, W]`.
    pub(crate) fn log_scale(&self, raw: Tensor<4>) -> Tensor<4> {
        raw.tanh() * self.alpha.val().reshape([1, 1, 1, 1]) + self.beta.val().reshape([1, 1, 1, 1])
    }
}

/// The smallest scale a [`AffineScale::Bounded`] coupling applies: `ε` in
/// `s = ε + (1 − ε) · sigmoid(raw + 2)`. The forward contracts by at most `1/ε` = 1e5 and the
/// inverse expands by at most 1e5 (`e^11.5`) per coupling, whatever the network returns off the
/// data, so a sampled latent cannot overflow on its way to an image (samples are decoded in
/// float64). Chosen by measurement: on Fashion-MNIST (compare_idx.py's configuration, 6 seeds)
/// nflows' `1e-3` cost 0.024 bits/dim against Glow's unbounded form and `1e-5` 0.015, both
/// with 0 non-finite samples at temperature 1 where Glow's form had 5–21 of 64.
pub const MIN_AFFINE_SCALE: f64 = 1e-5;

/// The form of a sigmoid-scaled affine coupling's scale `s` given the network's raw output
/// (Glow §3.3, `s = sigmoid(raw + 2)`, and its bounded variant). Checkpoints store it; runs saved
/// before it existed load as [`AffineScale::Glow`], the form they were trained with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AffineScale {
    /// `s = ε + (1 − ε) · sigmoid(raw + 2)` with `ε` = [`MIN_AFFINE_SCALE`]: log-scale in
    /// `(ln ε, 0)` ≈ `(−11.5, 0)`, so neither direction multiplies by more than `1/ε` per
    /// coupling (the form of nflows' `sigmoid(h + 2) + 1e-3`, rescaled to stay below 1). The
    /// default.
    #[default]
    Bounded,
    /// Glow's exact `s = sigmoid(raw + 2)`: log-scale in `(−∞, 0)`; off the data manifold the
    /// network can return a raw output near −1000 and the inverse then multiplies by `e^1000`.
    Glow,
}

impl AffineScale {
    /// The serde default of a config field saved before the form existed: Glow's exact form.
    pub fn legacy() -> Self {
        AffineScale::Glow
    }

    /// The name used on the command line and in checkpoints (`bounded`, `glow`).
    pub fn name(self) -> &'static str {
        match self {
            AffineScale::Bounded => "bounded",
            AffineScale::Glow => "glow",
        }
    }

    /// `(log s, s)` for the network's raw output `raw` (any shape).
    pub fn log_scale_and_scale<const D: usize>(self, raw: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        let z = raw.add_scalar(2.0);
        match self {
            AffineScale::Glow => (log_sigmoid(z.clone()), sigmoid(z)),
            AffineScale::Bounded => {
                let eps = MIN_AFFINE_SCALE;
                let s = sigmoid(z).mul_scalar(1.0 - eps).add_scalar(eps);
                (s.clone().log(), s)
            }
        }
    }
}

/// Affine coupling. The network outputs `2 * C_b` channels: the shift (first `C_b`) and the
/// raw scale (last `C_b`).
/// - Glow form (`tanh_scale: None`): `y_b = (x_b + shift) * s` with `s` from `raw` as
///   [`AffineScale`] says: `sigmoid(raw + 2)` (Glow), or the same floored at
///   [`MIN_AFFINE_SCALE`] (bounded); the +2 starts the scale near 0.88 and the sigmoid keeps
///   it below 1.
/// - Tutorial form (`tanh_scale: Some`): `y_b = x_b * exp(tanh(raw) * alpha + beta) + shift`.
#[derive(Module, Debug)]
pub struct AffineCoupling {
    /// The conditioner: maps the conditioning half `x_a` (and any context) to `2 * C_b`
    /// channels.
    pub net: CouplingNet,
    /// `None`: the sigmoid scale of form `scale`; `Some`: the tutorial's
    /// `exp(tanh(raw) * alpha + beta)`.
    pub tanh_scale: Option<TanhScale>,
    /// Whether the second channel half conditions and the first is transformed.
    pub swap: bool,
    /// The sigmoid scale's form (unused with `tanh_scale`); rebuilt from the model's config,
    /// not stored with the weights.
    #[module(skip)]
    pub scale: AffineScale,
}

impl AffineCoupling {
    /// A coupling over `net`, which must output `2 * C_b` channels, `C_b` =
    /// [`transformed_channels`]`(C, swap)`; `scale` is the sigmoid scale's form (ignored with
    /// `tanh_scale`).
    pub fn new(
        net: CouplingNet,
        tanh_scale: Option<TanhScale>,
        swap: bool,
        scale: AffineScale,
    ) -> Self {
        AffineCoupling {
            net,
            tanh_scale,
            swap,
            scale,
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
                let (log_scale, scale) = self.scale.log_scale_and_scale(raw);
                (shift, log_scale, Some(scale))
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

/// A coupling's input rebuilt from its output and its forward run again with autodiff, the
/// conditioning network evaluated once for both (invertible backpropagation,
/// [`crate::train::low_memory`]): the inverse uses the network's values, the forward its graph.
pub(crate) struct Rebuilt {
    /// The input, rebuilt (inner backend).
    pub x: Tensor<4>,
    /// The conditioning half of the input, an autodiff leaf.
    pub xa: Tensor<4>,
    /// The transformed half of the input, an autodiff leaf.
    pub xb: Tensor<4>,
    /// The forward output from the leaves (autodiff).
    pub y: Tensor<4>,
    /// The forward log-determinant `[N]` (autodiff).
    pub logdet: Tensor<1>,
    /// The coupling's `swap`: how the halves join.
    pub swap: bool,
}

impl Rebuilt {
    /// The gradient with respect to the whole input from the leaves' gradients in `grads`.
    pub fn input_grad(&self, grads: &burn::tensor::Gradients) -> Tensor<4> {
        let ga = self
            .xa
            .grad(grads)
            .expect("the output reads the conditioning half");
        let gb = self
            .xb
            .grad(grads)
            .expect("the output reads the transformed half");
        join(ga, gb, self.swap)
    }
}

/// The halves of `y` (inner backend) as autodiff values: the conditioning half as a leaf, the
/// transformed half as it is.
fn rebuild_halves(y: Tensor<4>, swap: bool) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let (ya, yb) = split(y, swap);
    let xa = Tensor::from_inner(ya.clone()).require_grad();
    (ya, xa, yb)
}

impl AffineCoupling {
    /// [`Rebuilt`] from the output `y` (inner backend), or `None` where the forward takes the
    /// fused vector path (the tutorial scale on `1 x 1` images), which the caller rebuilds the
    /// general way. The same arithmetic as [`Flow::inverse_ctx`] and [`Flow::forward_ctx`].
    pub(crate) fn rebuild(&self, y: Tensor<4>, ctx: Context) -> Option<Rebuilt> {
        let [_, _, height, width] = y.dims();
        if self.tanh_scale.is_some() && height == 1 && width == 1 {
            return None;
        }
        let (ya, xa, yb) = rebuild_halves(y, self.swap);
        let cb = yb.dims()[1];
        let (shift, log_scale, scale) = self.params(xa.clone(), ctx, cb);
        let (s, ls) = (shift.clone().inner(), log_scale.clone().inner());
        let xb_inner = match &scale {
            None => (yb - s) * ls.neg().exp(),
            Some(scale) => yb / scale.clone().inner() - s,
        };
        let xb = Tensor::from_inner(xb_inner.clone()).require_grad();
        let yb_again = match scale {
            None => xb.clone() * log_scale.clone().exp() + shift,
            Some(scale) => (xb.clone() + shift) * scale,
        };
        Some(Rebuilt {
            x: join(ya, xb_inner, self.swap),
            y: join(xa.clone(), yb_again, self.swap),
            logdet: per_sample_sum(log_scale),
            xa,
            xb,
            swap: self.swap,
        })
    }
}

impl Flow for AffineCoupling {
    fn forward_ctx(&self, x: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let [n, _, height, width] = x.dims();
        if let (Some(ts), 1, 1) = (&self.tanh_scale, height, width) {
            // Vectors with the bounded tanh scale: the transform and its log-determinant as
            // two fused ops (`ops::tanh_affine`; tensor ops off the CPU or in float64).
            let (xa, xb) = split(x, self.swap);
            let cb = xb.dims()[1];
            let h = self.net.forward(xa.clone(), ctx).reshape([n, 2 * cb]);
            let (alpha, beta) = (ts.alpha.val(), ts.beta.val());
            let (yb, logdet) = tanh_affine(xb.reshape([n, cb]), h, alpha, beta);
            return (join(xa, yb.reshape([n, cb, 1, 1]), self.swap), logdet);
        }
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

impl AdditiveCoupling {
    /// [`Rebuilt`] from the output `y` (inner backend): the same arithmetic as
    /// [`Flow::inverse_ctx`] and [`Flow::forward_ctx`], the network evaluated once.
    pub(crate) fn rebuild(&self, y: Tensor<4>, ctx: Context) -> Rebuilt {
        let (ya, xa, yb) = rebuild_halves(y, self.swap);
        let shift = self.net.forward(xa.clone(), ctx);
        let xb_inner = yb - shift.clone().inner();
        let xb = Tensor::from_inner(xb_inner.clone()).require_grad();
        let logdet = zero_logdet(&xb);
        Rebuilt {
            x: join(ya, xb_inner, self.swap),
            y: join(xa.clone(), xb.clone() + shift, self.swap),
            logdet,
            xa,
            xb,
            swap: self.swap,
        }
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
