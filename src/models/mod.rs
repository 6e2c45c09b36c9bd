//! Models: compositions of flow layers with a base distribution.

pub mod flow2d;
pub mod glow_image;

pub use crate::layers::Permutation;
pub use flow2d::{CouplingKind, Flow2d, Flow2dConfig, ModelKind};
pub use glow_image::{GlowImage, GlowImageConfig, ImageCoupling};
