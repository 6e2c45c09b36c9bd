//! Models: compositions of flow layers with a base distribution, behind one
//! [`DensityModel`] contract.

pub mod dequantizer;
pub mod glow_image;
pub mod objective;
pub mod vector;

pub use crate::layers::Permutation;
pub use dequantizer::{DequantizerConfig, VariationalDequantizer};
pub use glow_image::{ClassConditioning, GlowImage, GlowImageConfig, ImageCoupling};
pub use objective::Dequantization;
pub use vector::{CouplingKind, ModelKind, VectorFlow, VectorFlowConfig};

use burn::tensor::{Device, Tensor};

use crate::flow::Context;

/// What every model offers, for vectors and images alike: exact log-density, encoding to the
/// latent space and back, and sampling at a temperature, each with an optional
/// [`Context`] (`[N, K]`: context columns, or a class one-hot for class-conditional Glow).
pub trait DensityModel {
    /// A batch of data: `[N, D]` vectors or `[N, C, H, W]` images.
    type Data;
    /// The latent of a batch: `[N, D]`, or one tensor per level of a multi-scale model.
    type Latent;

    /// `log p(x | ctx)` per sample, `[N]`, nats (continuous density; for dequantised images
    /// see [`crate::eval::images::bpd_of`] for bits/dim).
    fn log_prob(&self, x: Self::Data, ctx: Context) -> Tensor<1>;
    /// The latent of `x`: the flow's data-to-latent map, exactly inverted by
    /// [`decode`](DensityModel::decode) for the same context (models give its log-determinant
    /// with their own methods, e.g. [`VectorFlow::encode_with_logdet`]).
    fn encode(&self, x: Self::Data, ctx: Context) -> Self::Latent;
    /// The data of a latent `z` (the latent-to-data map, e.g.
    /// [`VectorFlow::decode_with_logdet`] without its log-determinant).
    fn decode(&self, z: &Self::Latent, ctx: Context) -> Self::Data;
    /// `n` samples with every prior's standard deviation scaled by `temperature` (Glow §5.3),
    /// deterministic for the RNG's state; a context, when given, is `[n, K]`.
    fn sample<R: rand::Rng>(
        &self,
        n: usize,
        temperature: f64,
        ctx: Context,
        rng: &mut R,
        device: &Device,
    ) -> Self::Data;
}
