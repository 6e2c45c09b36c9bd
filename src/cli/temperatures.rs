//! `temperatures`: sample at several temperatures, the same draws in every row.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::error::InputError;

use super::common::DeviceFlag;
use super::parse;
use super::trained::{save_edit_grid, trained_image_model, ImageCheckpoint};

/// `temperatures`' flags.
#[derive(Args, Debug)]
pub struct TemperaturesArgs {
    #[command(flatten)]
    pub checkpoint: ImageCheckpoint,
    /// The temperatures, one row each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.25,0.5,0.6,0.7,0.8,0.9,1"
    )]
    pub temperatures: Vec<f64>,
    /// Samples per row.
    #[arg(long, default_value_t = 10, value_parser = parse::count::<1, 1_000>)]
    pub n: usize,
    /// Class-conditional models: the class to draw (default: the null class of a model trained
    /// with --label-dropout; required otherwise).
    #[arg(long, value_parser = parse::count::<0, 65_535>)]
    pub class: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "temperatures.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlag,
}

pub fn run(a: TemperaturesArgs) -> Result<()> {
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    if let Some(t) = a.temperatures.iter().find(|t| !t.is_finite() || **t < 0.0) {
        return Err(InputError::flag("--temperatures", t, "must be finite and >= 0").into());
    }
    let (model, state, _, device) = trained_image_model(&a.checkpoint, &a.device, false)?;
    let cfg = state.model;
    let k = cfg.classes;
    glowflow::eval::images::check_class(a.class, k)?;
    let mut what = String::from("a temperature sweep");
    let ctx = match (a.class, k) {
        (_, 0) => None,
        (Some(c), k) => {
            what.push_str(&format!(" of class {c}"));
            Some(glowflow::models::glow_image::one_hot(
                &vec![c; a.n],
                k,
                &device,
            ))
        }
        (None, k) if state.options.label_dropout > 0.0 => {
            what.push_str(" of the null class (class-free prior)");
            Some(burn::tensor::Tensor::zeros([a.n, k], &device))
        }
        (None, _) => {
            let why = "is required for a class-conditional model trained without --label-dropout (it has no trained class-free prior)";
            return Err(InputError::flag("--class", "", why).into());
        }
    };
    let px = glowflow::eval::edit::temperature_sweep(
        &model,
        &cfg,
        &a.temperatures,
        a.n,
        a.seed,
        ctx.as_ref(),
    )?;
    if let Some(sigma) = cfg.dequantization.noise_sigma() {
        what.push_str(&format!(", denoised (sigma {sigma})"));
    }
    save_edit_grid(&px, &cfg, a.n, &a.out, &what)
}
