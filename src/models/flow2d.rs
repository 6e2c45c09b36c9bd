//! The tutorial's two 2D models on a standard-normal base:
//! - Glow-2D: K x [ActNorm -> invertible 2x2 linear map (LU) -> affine coupling];
//! - Real NVP: K x [flow batch norm -> affine coupling];
//!
//! couplings alternate which coordinate conditions the other.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::distributions::{standard_normal_log_prob, standard_normal_sample};
use crate::flow::{nchw_to_vec, vec_to_nchw, Flow};
use crate::layers::{
    ActNorm, AdditiveCoupling, AffineCoupling, FlowBatchNorm, FlowSequence, Layer, Permutation,
    TanhScale,
};
use crate::nets::{CouplingNet, Mlp};
use crate::tensor_util::with_sequential_param_ids;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Glow,
    Realnvp,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Glow => "glow",
            ModelKind::Realnvp => "realnvp",
        }
    }
}

/// Which elementwise bijection a coupling applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CouplingKind {
    /// The tutorial's `x * exp(tanh(raw) * alpha + beta) + t`.
    Tanh,
    /// Glow's `(x + t) * sigmoid(raw + 2)`.
    Sigmoid,
    /// NICE's `x + t`.
    Additive,
}

/// Everything needed to rebuild a 2D model (stored in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow2dConfig {
    pub model: ModelKind,
    /// Number of flow steps K.
    pub layers: usize,
    /// Coupling-network hidden width.
    pub hidden: usize,
    /// Coupling-network hidden layers.
    pub depth: usize,
    pub coupling: CouplingKind,
    /// Mixing layer (Glow only).
    pub permutation: Permutation,
    /// Seed of the parameter initialisation.
    pub init_seed: u64,
}

impl Flow2dConfig {
    pub fn new(model: ModelKind) -> Self {
        Flow2dConfig {
            model,
            layers: 32,
            hidden: 64,
            depth: 2,
            coupling: CouplingKind::Tanh,
            permutation: Permutation::Lu,
            init_seed: 0,
        }
    }

    /// Check the sizes against [`crate::limits`]; the error names the field and its flag.
    pub fn validate(&self) -> Result<(), crate::error::FieldError> {
        use crate::limits::{count, MAX_FLOW_STEPS, MAX_MLP_DEPTH, MAX_WIDTH};
        count("layers", "--layers", self.layers, 1, MAX_FLOW_STEPS)?;
        count("hidden", "--hidden", self.hidden, 1, MAX_WIDTH)?;
        count("depth", "--depth", self.depth, 1, MAX_MLP_DEPTH)?;
        Ok(())
    }

    /// Bytes a training step holds per point (activations for the backward pass, float32), a
    /// rough upper estimate used to refuse batch sizes that cannot fit in memory.
    pub fn activation_bytes_per_point(&self) -> f64 {
        (self.layers * (self.hidden * (self.depth + 1) * 3 + 32)) as f64 * 4.0 * 2.0
    }
}

/// A flow on 2D points with a standard-normal base distribution.
#[derive(Module, Debug)]
pub struct Flow2d {
    pub flow: FlowSequence,
}

const DIM: usize = 2;

fn coupling(cfg: &Flow2dConfig, swap: bool, rng: &mut ChaCha8Rng, device: &Device) -> Layer {
    let cond = crate::layers::coupling::conditioning_channels(DIM, swap);
    let out = crate::layers::coupling::transformed_channels(DIM, swap);
    let net_out = if cfg.coupling == CouplingKind::Additive {
        out
    } else {
        2 * out
    };
    let net = CouplingNet::Mlp(Mlp::new(
        cond, net_out, cfg.hidden, cfg.depth, false, rng, device,
    ));
    match cfg.coupling {
        CouplingKind::Tanh => {
            Layer::AffineCoupling(AffineCoupling::new(net, Some(TanhScale::new(device)), swap))
        }
        CouplingKind::Sigmoid => Layer::AffineCoupling(AffineCoupling::new(net, None, swap)),
        CouplingKind::Additive => Layer::AdditiveCoupling(AdditiveCoupling::new(net, swap)),
    }
}

impl Flow2d {
    pub fn new(cfg: &Flow2dConfig, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.init_seed);
        let mut layers = Vec::new();
        for k in 0..cfg.layers {
            let swap = k % 2 == 1;
            match cfg.model {
                ModelKind::Glow => {
                    layers.push(Layer::ActNorm(ActNorm::new(DIM, device)));
                    layers.push(cfg.permutation.layer(DIM, &mut rng, device));
                }
                ModelKind::Realnvp => {
                    layers.push(Layer::FlowBatchNorm(FlowBatchNorm::new(DIM, device)));
                }
            }
            layers.push(coupling(cfg, swap, &mut rng, device));
        }
        with_sequential_param_ids(Flow2d {
            flow: FlowSequence::new(layers),
        })
    }

    /// Data-dependent initialisation (ActNorm) from a batch of points `[N, 2]`.
    pub fn initialize(&mut self, x: Tensor<2>) {
        self.flow.initialize(vec_to_nchw(x));
    }

    /// `log p(x)` per point, `[N]`.
    pub fn log_prob(&self, x: Tensor<2>) -> Tensor<1> {
        let (z, ld) = self.flow.forward(vec_to_nchw(x));
        standard_normal_log_prob(z) + ld
    }

    /// Map points to latents.
    pub fn encode(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let (z, ld) = self.flow.forward(vec_to_nchw(x));
        (nchw_to_vec(z), ld)
    }

    /// Map latents to points.
    pub fn decode(&self, z: Tensor<2>) -> (Tensor<2>, Tensor<1>) {
        let (x, ld) = self.flow.inverse(vec_to_nchw(z));
        (nchw_to_vec(x), ld)
    }

    /// Draw `n` points with prior temperature `t`; returns points and their model log-density.
    pub fn sample(
        &self,
        n: usize,
        temperature: f64,
        rng: &mut impl rand::Rng,
        device: &Device,
    ) -> (Tensor<2>, Tensor<1>) {
        let z = standard_normal_sample([n, DIM, 1, 1], temperature, rng, device);
        let (x, ld_inv) = self.flow.inverse(z.clone());
        // log p(x) = log N(z) - log|det dx/dz|.
        let logp = standard_normal_log_prob(z) - ld_inv;
        (nchw_to_vec(x), logp)
    }
}
