//! Flow layers. Each implements [`Flow`](crate::flow::Flow); [`Layer`] is the closed set a
//! [`FlowSequence`] composes.

pub mod actnorm;
pub mod batchnorm;
pub mod coupling;
pub mod inv_conv;
pub mod permute;

use burn::module::Module;
use burn::tensor::Tensor;

pub use actnorm::ActNorm;
pub use batchnorm::FlowBatchNorm;
pub use coupling::{AdditiveCoupling, AffineCoupling, TanhScale};
pub use inv_conv::{InvConv1x1, InvConv1x1Lu};
pub use permute::{Reverse, Shuffle};

use crate::flow::{zero_logdet, Flow};

/// Any one flow layer.
#[derive(Module, Debug)]
pub enum Layer {
    ActNorm(ActNorm),
    InvConv1x1Lu(InvConv1x1Lu),
    InvConv1x1(InvConv1x1),
    AffineCoupling(AffineCoupling),
    AdditiveCoupling(AdditiveCoupling),
    Reverse(Reverse),
    Shuffle(Shuffle),
    FlowBatchNorm(FlowBatchNorm),
}

impl Layer {
    fn as_flow(&self) -> &dyn Flow {
        match self {
            Layer::ActNorm(l) => l,
            Layer::InvConv1x1Lu(l) => l,
            Layer::InvConv1x1(l) => l,
            Layer::AffineCoupling(l) => l,
            Layer::AdditiveCoupling(l) => l,
            Layer::Reverse(l) => l,
            Layer::Shuffle(l) => l,
            Layer::FlowBatchNorm(l) => l,
        }
    }
}

impl Flow for Layer {
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        self.as_flow().forward(x)
    }
    fn inverse(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        self.as_flow().inverse(z)
    }
}

/// Layers applied in order (`forward`), or in reverse order (`inverse`).
#[derive(Module, Debug)]
pub struct FlowSequence {
    pub layers: Vec<Layer>,
}

impl FlowSequence {
    pub fn new(layers: Vec<Layer>) -> Self {
        FlowSequence { layers }
    }

    /// Data-dependent initialisation: push `x` through the layers, initialising every
    /// not-yet-initialised ActNorm from the activations that reach it.
    pub fn initialize(&mut self, x: Tensor<4>) {
        let mut h = x;
        for layer in self.layers.iter_mut() {
            if let Layer::ActNorm(a) = layer {
                if !a.initialized {
                    a.initialize(&h);
                }
            }
            h = layer.forward(h).0;
        }
    }

    /// The initialised flag of every ActNorm, in order (saved with checkpoints).
    pub fn actnorm_flags(&self) -> Vec<bool> {
        self.layers
            .iter()
            .filter_map(|l| match l {
                Layer::ActNorm(a) => Some(a.initialized),
                _ => None,
            })
            .collect()
    }

    /// Restore the ActNorm flags saved by [`actnorm_flags`](Self::actnorm_flags).
    pub fn set_actnorm_flags(&mut self, flags: &[bool]) -> Result<(), String> {
        let mut it = flags.iter();
        for l in self.layers.iter_mut() {
            if let Layer::ActNorm(a) = l {
                a.initialized = *it.next().ok_or("fewer ActNorm flags than ActNorm layers")?;
            }
        }
        if it.next().is_some() {
            return Err("more ActNorm flags than ActNorm layers".into());
        }
        Ok(())
    }
}

impl Flow for FlowSequence {
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let mut ld = zero_logdet(x.dims()[0], &x.device());
        let mut h = x;
        for layer in &self.layers {
            let (y, l) = layer.forward(h);
            h = y;
            ld = ld + l;
        }
        (h, ld)
    }

    fn inverse(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let mut ld = zero_logdet(z.dims()[0], &z.device());
        let mut h = z;
        for layer in self.layers.iter().rev() {
            let (x, l) = layer.inverse(h);
            h = x;
            ld = ld + l;
        }
        (h, ld)
    }
}
