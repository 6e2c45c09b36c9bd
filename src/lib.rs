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
///
/// # Errors
/// An unknown name; `cuda` in a build without the feature, or on a machine where the CUDA
/// driver cannot be loaded or has no GPU (checked with one small allocation, so the failure is
/// this error and not a panic later).
pub fn device_by_name(name: &str) -> anyhow::Result<Device> {
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => cuda_device(),
        #[cfg(not(feature = "cuda"))]
        "cuda" => anyhow::bail!(
            "--device cuda: this build has no CUDA support (rebuild with `--features cuda`)"
        ),
        other => anyhow::bail!("--device {other}: unknown device (expected flex or cuda)"),
    }
}

/// The first CUDA GPU, checked by allocating one value on it. cudarc loads the driver
/// (`libcuda.so.1`) on first use and panics when it is missing; that panic is caught here (its
/// message silenced) and turned into an error naming `--device cuda`.
#[cfg(feature = "cuda")]
fn cuda_device() -> anyhow::Result<Device> {
    use std::sync::{Arc, Mutex};
    // The driver is loaded on the backend's own thread, so the first panic message of any
    // thread is kept (and not printed) while the probe runs.
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = Arc::clone(&first);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut slot = seen.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()));
            *slot = Some(msg.unwrap_or_else(|| "unknown failure".into()));
        }
    }));
    let probe = std::panic::catch_unwind(|| {
        let device = Device::cuda(0);
        let one = burn::tensor::Tensor::<1>::ones([1], &device);
        (device, one.into_data())
    });
    std::panic::set_hook(hook);
    match probe {
        Ok((device, _)) => Ok(device),
        Err(_) => {
            let why = first.lock().unwrap_or_else(|e| e.into_inner()).take();
            anyhow::bail!(
                "--device cuda: no usable CUDA GPU ({}); the NVIDIA driver (libcuda.so.1) must be installed and a GPU visible",
                why.unwrap_or_else(|| "unknown failure".into())
            )
        }
    }
}
