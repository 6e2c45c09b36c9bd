//! Conditioner networks for coupling layers.

pub mod conv;
pub mod mlp;

use burn::module::Module;
use burn::tensor::Tensor;

pub use conv::{Conv2d, GlowConvNet, PlainConvNet, ZeroConv2d};
pub use mlp::{Dense, Mlp};

use crate::layers::ActNorm;

/// The network inside a coupling layer: maps the conditioning half to shift/scale parameters.
#[derive(Module, Debug)]
// burn modules cannot be boxed, and one net per coupling makes the size difference irrelevant.
#[allow(clippy::large_enum_variant)]
pub enum CouplingNet {
    Mlp(Mlp),
    Conv(GlowConvNet),
    PlainConv(PlainConvNet),
}

impl CouplingNet {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            CouplingNet::Mlp(m) => m.forward(x),
            CouplingNet::Conv(c) => c.forward(x),
            CouplingNet::PlainConv(c) => c.forward(x),
        }
    }

    /// Data-dependent initialisation of any ActNorm inside the network.
    pub fn initialize(&mut self, x: Tensor<4>) {
        if let CouplingNet::Conv(c) = self {
            c.initialize(x);
        }
    }

    pub fn actnorms_mut(&mut self) -> Vec<&mut ActNorm> {
        match self {
            CouplingNet::Mlp(_) | CouplingNet::PlainConv(_) => Vec::new(),
            CouplingNet::Conv(c) => c.actnorms_mut(),
        }
    }
}
