//! Conditioner networks for coupling layers.

pub mod conv;
pub mod mlp;

use burn::module::Module;
use burn::tensor::Tensor;

pub use conv::{Conv2d, GlowConvNet, PlainConvNet, ZeroConv2d};
pub use mlp::{Dense, Mlp};

use crate::flow::Context;

/// The network inside a coupling layer: maps the conditioning half to shift/scale parameters.
#[derive(Module, Debug)]
// burn modules cannot be boxed, and one net per coupling makes the size difference irrelevant.
#[allow(clippy::large_enum_variant)]
pub enum CouplingNet {
    /// An MLP on vectors `[N, C, 1, 1]` (the vector models).
    Mlp(Mlp),
    /// Glow's CNN, with ActNorms and a zero-initialised output (image models).
    Conv(GlowConvNet),
    /// A plain CNN without normalisation.
    PlainConv(PlainConvNet),
}

impl CouplingNet {
    /// Shift/scale parameters for the conditioning half `x: [N, C, H, W]` and an optional
    /// context `[N, K]`; a net built with `C + K` inputs sees the context as `K` extra channels,
    /// constant over positions. Output `[N, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>, ctx: Context) -> Tensor<4> {
        let x = with_context(x, ctx);
        match self {
            CouplingNet::Mlp(m) => m.forward(x),
            CouplingNet::Conv(c) => c.forward(x),
            CouplingNet::PlainConv(c) => c.forward(x),
        }
    }

    /// Data-dependent initialisation of any ActNorm inside the network, from the conditioning
    /// half `x` (and the context) that reaches it.
    pub fn data_init(&mut self, x: Tensor<4>, ctx: Context) {
        if let CouplingNet::Conv(c) = self {
            c.initialize(with_context(x, ctx));
        }
    }

    /// Whether an ActNorm inside the network is still uninitialised.
    pub fn needs_data_init(&self) -> bool {
        match self {
            CouplingNet::Conv(c) => !c.norm_in.is_initialized() || !c.norm_mid.is_initialized(),
            CouplingNet::Mlp(_) | CouplingNet::PlainConv(_) => false,
        }
    }
}

/// `x: [N, C, H, W]` with a context `[N, K]` appended as `K` channels constant over positions
/// (`[N, C + K, H, W]`, in `x`'s float type); `x` itself without one.
pub fn with_context(x: Tensor<4>, ctx: Context) -> Tensor<4> {
    match ctx {
        None => x,
        Some(c) => {
            let [n, _, h, w] = x.dims();
            let k = c.dims()[1];
            let c = c.clone().cast(x.dtype()).reshape([n, k, 1, 1]);
            let c = if h * w == 1 {
                c
            } else {
                c.expand([n, k, h, w])
            };
            Tensor::cat(vec![x, c], 1)
        }
    }
}
