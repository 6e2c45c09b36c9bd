//! `interpolate`: interpolate between pairs of test images through every level's latents.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::error::InputError;

use super::common::DeviceFlag;
use super::parse;
use super::trained::{save_edit_grid, trained_image_model, ImageCheckpoint};

/// `interpolate`'s flags.
#[derive(Args, Debug)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub checkpoint: ImageCheckpoint,
    /// Pairs of test-image indices, `A:B` (0-based), comma-separated; one row each.
    #[arg(long, value_delimiter = ',', default_value = "0:1,2:3,4:5,6:7")]
    pub pairs: Vec<String>,
    /// Images per row, both ends included.
    #[arg(long, default_value_t = 9, value_parser = parse::count::<2, 1_000>)]
    pub steps: usize,
    #[arg(long, default_value = "interpolation.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlag,
}

pub fn run(a: InterpolateArgs) -> Result<()> {
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    let pairs = a
        .pairs
        .iter()
        .map(|p| {
            p.split_once(':')
                .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)))
                .ok_or_else(|| {
                    InputError::flag("--pairs", p, "expected A:B (two test-image indices)")
                })
        })
        .collect::<std::result::Result<Vec<(usize, usize)>, _>>()?;
    let (model, state, data, device) = trained_image_model(&a.checkpoint, &a.device, true)?;
    let cfg = state.model;
    let data = data.expect("loaded");
    let labels = data.test_labels.as_deref();
    let px = glowflow::eval::edit::interpolate(
        &model, &cfg, &data.test, labels, &pairs, a.steps, &device,
    )
    .map_err(|e| InputError::flag("--pairs", a.pairs.join(","), format!("{e:#}")))?;
    save_edit_grid(&px, &cfg, a.steps, &a.out, "interpolations")
}
