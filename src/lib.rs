#![warn(missing_docs)]
//! # glowflow
//!
//! Glow-family normalizing flows on [burn](https://burn.dev): ActNorm, invertible 1x1
//! convolutions (LU and plain), affine and additive coupling, Real NVP's flow batch norm, and
//! the models built from them, with exact log-determinants.
//!
//! Every layer implements [`Flow`]: `forward` maps data to latent and returns
//! `log|det dz/dx|` per sample; `inverse` maps back.
//!
//! ```
//! use glowflow::models::{VectorFlow, VectorFlowConfig, ModelKind};
//! use glowflow::tensor_util::{from_vec, to_vec};
//!
//! let device = glowflow::default_device();
//! let mut cfg = VectorFlowConfig::new(ModelKind::Glow);
//! cfg.layers = 4;
//! let model = VectorFlow::new(&cfg, &device);
//! let x = from_vec(vec![0.1, -0.2, 0.5, 0.3], [2, 2], &device);
//! let (z, _logdet) = model.encode(x.clone(), None); // no context
//! let (back, _) = model.decode(z, None);
//! let err: Vec<f64> = to_vec(back - x).iter().map(|v| v.abs() as f64).collect();
//! // NaN is a failure, never a small error.
//! assert!(glowflow::tensor_util::finite_max(&err).unwrap() < 1e-5);
//! ```

pub mod data;
pub mod distributions;
pub mod error;
pub mod eval;
pub mod flow;
pub mod fsutil;
pub mod layers;
pub mod limits;
pub mod linalg;
pub mod models;
pub mod nets;
pub mod ops;
pub mod report;
pub mod tensor_util;
pub mod train;
pub mod viz;

pub use flow::Flow;

use burn::tensor::Device;

/// The default compute device: burn's pure-Rust CPU backend (flex).
pub fn default_device() -> Device {
    Device::flex()
}

/// A device by name: `flex` (CPU, default) or `cuda` (with the `cuda` cargo feature).
pub fn device_by_name(name: &str) -> anyhow::Result<Device> {
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => anyhow::bail!(
            "--device cuda: this build has no CUDA support (rebuild with `--features cuda`)"
        ),
        other => anyhow::bail!("--device {other}: unknown device (expected flex or cuda)"),
    }
}
