//! Flow layers. Each implements [`Flow`](crate::flow::Flow); [`Layer`] is the closed set a
//! [`FlowSequence`] composes.

pub mod actnorm;
pub mod batchnorm;
pub mod coupling;
pub mod inv_conv;
pub mod permute;
pub mod spline;
pub mod squeeze;
pub mod standardize;

use burn::module::Module;
use burn::tensor::Tensor;

pub use actnorm::ActNorm;
pub use batchnorm::FlowBatchNorm;
pub use coupling::{AdditiveCoupling, AffineCoupling, AffineScale, TanhScale, MIN_AFFINE_SCALE};
pub use inv_conv::{InvConv1x1, InvConv1x1Lu};
pub use permute::{Reverse, Shuffle};
pub use squeeze::Squeeze;
pub use standardize::Standardize;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::flow::{zero_logdet, Context, Flow};

/// The channel-mixing layer between couplings (Glow's 1x1 convolution and its ablations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Permutation {
    /// LU-parametrised invertible 1x1 convolution / linear map (Glow).
    Lu,
    /// Unconstrained invertible 1x1 convolution with float64 log|det| (`conv` is accepted too).
    #[serde(alias = "conv")]
    #[cfg_attr(feature = "cli", value(alias = "conv"))]
    Plain,
    /// Fixed random shuffle of channels.
    Shuffle,
    /// Channel reversal.
    Reverse,
}

impl Permutation {
    /// A fresh mixing layer over `channels` channels.
    pub fn layer(self, channels: usize, rng: &mut impl rand::Rng, device: &Device) -> Layer {
        match self {
            Permutation::Lu => Layer::InvConv1x1Lu(InvConv1x1Lu::new(channels, rng, device)),
            Permutation::Plain => Layer::InvConv1x1(InvConv1x1::new(channels, rng, device)),
            Permutation::Shuffle => Layer::Shuffle(Shuffle::new(channels, rng, device)),
            Permutation::Reverse => Layer::Reverse(Reverse { channels }),
        }
    }
}

/// `$e` evaluated with `$l` bound to the layer inside any [`Layer`] variant (one list of the
/// variants for every by-variant dispatch).
macro_rules! each_layer {
    ($layer:expr, $l:ident => $e:expr) => {
        match $layer {
            Layer::ActNorm($l) => $e,
            Layer::InvConv1x1Lu($l) => $e,
            Layer::InvConv1x1($l) => $e,
            Layer::AffineCoupling($l) => $e,
            Layer::AdditiveCoupling($l) => $e,
            Layer::SplineCoupling($l) => $e,
            Layer::Reverse($l) => $e,
            Layer::Shuffle($l) => $e,
            Layer::FlowBatchNorm($l) => $e,
        }
    };
}

/// Any one flow layer.
#[derive(Module, Debug)]
pub enum Layer {
    /// ActNorm (Glow §3.1).
    ActNorm(ActNorm),
    /// LU-parametrised invertible 1x1 convolution (Glow §3.2).
    InvConv1x1Lu(InvConv1x1Lu),
    /// Invertible 1x1 convolution with an unconstrained matrix (Glow §3.2).
    InvConv1x1(InvConv1x1),
    /// Affine coupling (Real NVP; Glow §3.3).
    AffineCoupling(AffineCoupling),
    /// Additive coupling (NICE): volume preserving.
    AdditiveCoupling(AdditiveCoupling),
    /// Rational-quadratic spline coupling (neural spline flows, 1906.04032 §3).
    SplineCoupling(spline::SplineCoupling),
    /// Fixed channel reversal.
    Reverse(Reverse),
    /// Fixed random channel permutation.
    Shuffle(Shuffle),
    /// Real NVP's batch normalisation.
    FlowBatchNorm(FlowBatchNorm),
}

impl Layer {
    /// The layer's kind, as diagnostics name it.
    pub fn name(&self) -> &'static str {
        match self {
            Layer::ActNorm(_) => "ActNorm",
            Layer::InvConv1x1Lu(_) => "InvConv1x1Lu",
            Layer::InvConv1x1(_) => "InvConv1x1",
            Layer::AffineCoupling(_) => "AffineCoupling",
            Layer::AdditiveCoupling(_) => "AdditiveCoupling",
            Layer::SplineCoupling(_) => "SplineCoupling",
            Layer::Reverse(_) => "Reverse",
            Layer::Shuffle(_) => "Shuffle",
            Layer::FlowBatchNorm(_) => "FlowBatchNorm",
        }
    }

    fn as_flow(&self) -> &dyn Flow {
        each_layer!(self, l => l)
    }

    fn as_flow_mut(&mut self) -> &mut dyn Flow {
        each_layer!(self, l => l)
    }
}

impl Flow for Layer {
    fn forward_ctx(&self, x: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        self.as_flow().forward_ctx(x, ctx)
    }
    fn inverse_ctx(&self, z: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        self.as_flow().inverse_ctx(z, ctx)
    }
    fn data_init(&mut self, x: &Tensor<4>, ctx: Context) {
        self.as_flow_mut().data_init(x, ctx)
    }
    fn needs_data_init(&self) -> bool {
        self.as_flow().needs_data_init()
    }
    fn uses_batch_statistics(&self) -> bool {
        self.as_flow().uses_batch_statistics()
    }
}

/// Layers applied in order (`forward`), or in reverse order (`inverse`).
#[derive(Module, Debug)]
pub struct FlowSequence {
    /// The layers in the forward (data-to-latent) order.
    pub layers: Vec<Layer>,
}

impl FlowSequence {
    /// The sequence of `layers`, in forward order.
    pub fn new(layers: Vec<Layer>) -> Self {
        FlowSequence { layers }
    }

    /// Data-dependent initialisation: push `x` through the layers, letting every layer that
    /// still [needs one](Flow::needs_data_init) initialise from the activations that reach it.
    /// Returns the output for `x` after initialisation, detached from any autodiff graph: on an
    /// autodiff device each layer's output is detached before the next layer reads it, so the
    /// pass holds one layer's activations at a time, not the whole depth's (the initialisation
    /// batch is often larger than a training batch).
    pub fn initialize(&mut self, x: Tensor<4>, ctx: Context) -> Tensor<4> {
        let mut h = x.detach();
        for layer in self.layers.iter_mut() {
            if layer.needs_data_init() {
                layer.data_init(&h, ctx);
            }
            h = layer.forward_ctx(h, ctx).0.detach();
        }
        h
    }

    /// Apply the layers one at a time (`inverse`: in the generative direction) and stop at the
    /// first whose output or log-determinant holds a NaN or infinity: `Err("layer i (Kind)")`.
    /// `Ok` carries the output. Diagnostics only: one host check per layer.
    pub fn trace_nonfinite(
        &self,
        x: Tensor<4>,
        ctx: Context,
        inverse: bool,
    ) -> Result<Tensor<4>, String> {
        let mut h = x;
        let order: Vec<usize> = if inverse {
            (0..self.layers.len()).rev().collect()
        } else {
            (0..self.layers.len()).collect()
        };
        for i in order {
            let layer = &self.layers[i];
            let (y, ld) = if inverse {
                layer.inverse_ctx(h.clone(), ctx)
            } else {
                layer.forward_ctx(h.clone(), ctx)
            };
            let bad_y = crate::tensor_util::count_nonfinite(y.clone());
            let bad_ld = crate::tensor_util::count_nonfinite(ld);
            if bad_y + bad_ld > 0 {
                let detail = match layer {
                    // The operation: the inverse divides by the scale exp(log_scale).
                    Layer::AffineCoupling(c) => {
                        let (lo, hi) = c.log_scale_range(h.clone(), ctx);
                        if inverse {
                            format!("; log-scales in [{lo:.4e}, {hi:.4e}], so the inverse multiplies by up to exp({:.4e})", -lo)
                        } else {
                            format!("; log-scales in [{lo:.4e}, {hi:.4e}], so the forward multiplies by up to exp({hi:.4e})")
                        }
                    }
                    _ => String::new(),
                };
                return Err(format!(
                    "layer {i} ({}{}): {bad_y} non-finite outputs, {bad_ld} non-finite log-determinants{detail}",
                    layer.name(),
                    if inverse { ", inverse" } else { "" }
                ));
            }
            h = y;
        }
        Ok(h)
    }
}

impl Flow for FlowSequence {
    fn forward_ctx(&self, x: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let mut ld = zero_logdet(&x);
        let mut h = x;
        for layer in &self.layers {
            let (y, l) = layer.forward_ctx(h, ctx);
            h = y;
            ld = ld + l;
        }
        (h, ld)
    }

    fn inverse_ctx(&self, z: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>) {
        let mut ld = zero_logdet(&z);
        let mut h = z;
        for layer in self.layers.iter().rev() {
            let (x, l) = layer.inverse_ctx(h, ctx);
            h = x;
            ld = ld + l;
        }
        (h, ld)
    }

    fn data_init(&mut self, x: &Tensor<4>, ctx: Context) {
        self.initialize(x.clone(), ctx);
    }

    fn needs_data_init(&self) -> bool {
        self.layers.iter().any(Flow::needs_data_init)
    }

    fn uses_batch_statistics(&self) -> bool {
        self.layers.iter().any(Flow::uses_batch_statistics)
    }
}
