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
//! use glowflow::models::{DensityModel, VectorFlow, VectorFlowConfig, ModelKind};
//! use glowflow::tensor_util::{from_vec, to_vec};
//!
//! let device = glowflow::default_device();
//! let mut cfg = VectorFlowConfig::new(ModelKind::Glow);
//! cfg.flow_steps = 4;
//! let model = VectorFlow::new(&cfg, &device);
//! let x = from_vec(vec![0.1, -0.2, 0.5, 0.3], [2, 2], &device);
//! let z = model.encode(x.clone(), None); // no context
//! let back = model.decode(&z, None);
//! let err: Vec<f64> = to_vec(back - x).iter().map(|v| v.abs() as f64).collect();
//! // NaN is a failure, never a small error.
//! assert!(glowflow::tensor_util::finite_max(&err).unwrap() < 1e-5);
//! ```

pub mod ablation;
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
pub mod rng;
pub mod tensor_util;
pub mod train;
pub mod viz;

pub use flow::Flow;

use burn::tensor::Device;

/// The default compute device: burn's pure-Rust CPU backend (flex).
pub fn default_device() -> Device {
    Device::flex()
}

/// A device by name: `flex` (or `cpu`, the default) or `cuda` / `cuda:N` (GPU `N`, with the
/// `cuda` cargo feature). A CUDA build makes the GPU burn's default device, on which burn
/// creates some state (the optimizer state read on resume, before it moves to the parameters'
/// device): a program that runs such a build on the CPU of a machine without a GPU sets
/// `BURN_DEVICE=flex` before it starts threads (the `glowflow` binary does).
///
/// # Errors
/// An unknown name; a list (several devices are for training: [`devices_by_name`]); `cuda` in
/// a build without the feature, or on a machine where the CUDA driver cannot be loaded or has
/// no such GPU (checked with one small allocation, so the failure is this error and not a
/// panic later).
pub fn device_by_name(name: &str) -> anyhow::Result<Device> {
    if name.contains(',') {
        return Err(error::InputError::option(
            "device",
            name,
            "several devices train one model data-parallel (train, train2d); this command runs on one device",
        )
        .into());
    }
    match name.trim() {
        "flex" | "cpu" => Ok(Device::flex()),
        other => match cuda_index(other) {
            Some(Ok(index)) => cuda_by_index(index, other),
            Some(Err(())) => Err(error::InputError::option(
                "device",
                other,
                "not a GPU number (expected cuda or cuda:N, N = 0, 1, ...)",
            )
            .into()),
            None => Err(error::InputError::option(
                "device",
                other,
                "unknown device (expected flex, cuda or cuda:N)",
            )
            .into()),
        },
    }
}

/// The devices of a comma-separated list (`cuda:0,cuda:1`), in order: the model lives on the
/// first, and data-parallel training gives each an equal shard of every batch
/// ([`train::parallel::loss_and_grads_on_devices`]). One name gives one device.
///
/// # Errors
/// Any name [`device_by_name`] refuses; a device named twice; CPU and GPU mixed; more than one
/// CPU device (the CPU has one device: its cores are used with `--threads`); several GPUs where
/// NCCL (`libnccl.so`) cannot be loaded.
pub fn devices_by_name(list: &str) -> anyhow::Result<Vec<Device>> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.len() == 1 {
        return Ok(vec![device_by_name(names[0])?]);
    }
    let mut devices: Vec<Device> = Vec::with_capacity(names.len());
    for name in &names {
        let device = device_by_name(name)?;
        if devices.contains(&device) {
            let why = format!("{name} is named twice");
            return Err(error::InputError::option("device", list, why).into());
        }
        if tensor_util::is_flex_device(&device) {
            return Err(error::InputError::option(
                "device",
                list,
                "the CPU is one device (its cores are shared out with `threads`); several devices means several GPUs",
            )
            .into());
        }
        devices.push(device);
    }
    #[cfg(feature = "cuda")]
    // SAFETY: only tries to open the library (dlopen), nothing is called in it.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        anyhow::bail!(
            "`device` {list}: several GPUs sum gradients with NCCL, and libnccl.so cannot be loaded (install PyPI's nvidia-nccl-cu12 and put a libnccl.so link to its libnccl.so.2 on LD_LIBRARY_PATH)"
        );
    }
    Ok(devices)
}

/// `cuda` → 0, `cuda:N` → N; `Some(Err)` for a malformed number, `None` for another name.
fn cuda_index(name: &str) -> Option<Result<usize, ()>> {
    match name.strip_prefix("cuda") {
        Some("") => Some(Ok(0)),
        Some(rest) => rest
            .strip_prefix(':')
            .map(|n| n.parse::<usize>().map_err(|_| ())),
        None => None,
    }
}

/// GPU `index`, as the user named it (`name`, for messages).
#[cfg(not(feature = "cuda"))]
fn cuda_by_index(_index: usize, name: &str) -> anyhow::Result<Device> {
    let why = "this build has no CUDA support (rebuild with `--features cuda`)";
    Err(error::InputError::option("device", name, why).into())
}

#[cfg(feature = "cuda")]
fn cuda_by_index(index: usize, name: &str) -> anyhow::Result<Device> {
    cuda_device(index, name)
}

/// CUDA GPU `index`, checked by allocating one value on it. cudarc loads the driver
/// (`libcuda.so.1`) on first use and panics when it is missing; that panic is caught here (its
/// message silenced) and turned into an error naming `--device cuda`.
#[cfg(feature = "cuda")]
fn cuda_device(index: usize, name: &str) -> anyhow::Result<Device> {
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
        let device = Device::cuda(index);
        let one = burn::tensor::Tensor::<1>::ones([1], &device);
        (device, one.into_data())
    });
    std::panic::set_hook(hook);
    match probe {
        Ok((device, _)) => Ok(device),
        Err(_) => {
            let why = first.lock().unwrap_or_else(|e| e.into_inner()).take();
            anyhow::bail!(
                "`device` {name}: no usable CUDA GPU ({}); the NVIDIA driver (libcuda.so.1) must be installed and GPU {index} visible",
                // cudarc's message goes on to list every library name it tried.
                why.as_deref()
                    .map_or("unknown failure", |w| w.split(" - searched").next().unwrap_or(w))
            )
        }
    }
}
