//! Conditioner networks for coupling layers.

pub mod mlp;

use burn::module::Module;
use burn::tensor::Tensor;

pub use mlp::{Dense, Mlp};

/// The network inside a coupling layer: maps the conditioning half to shift/scale parameters.
#[derive(Module, Debug)]
pub enum CouplingNet {
    Mlp(Mlp),
}

impl CouplingNet {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            CouplingNet::Mlp(m) => m.forward(x),
        }
    }
}
