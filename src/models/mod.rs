//! Models: compositions of flow layers with a base distribution.

pub mod flow2d;

pub use flow2d::{CouplingKind, Flow2d, Flow2dConfig, ModelKind, Permutation};
