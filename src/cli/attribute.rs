//! `attribute`: move test images along a class's attribute direction in latent space.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::error::InputError;

use super::common::DeviceFlag;
use super::parse;
use super::trained::{save_edit_grid, trained_image_model, ImageCheckpoint};

/// `attribute`'s flags.
#[derive(Args, Debug)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub checkpoint: ImageCheckpoint,
    /// The class whose direction is applied.
    #[arg(long, value_parser = parse::count::<0, 255>)]
    pub class: usize,
    /// Test-image indices to edit (0-based), one row each.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
    pub images: Vec<usize>,
    /// Scales of the direction, one column each (0 reproduces the image).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-1,-0.5,0,0.5,1"
    )]
    pub scales: Vec<f64>,
    /// Training images the direction is averaged over (the first this many).
    #[arg(long, default_value_t = 5000, value_parser = parse::count::<2, 10_000_000>)]
    pub limit: usize,
    #[arg(long, default_value = "attribute.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlag,
}

pub fn run(a: AttributeArgs) -> Result<()> {
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    use glowflow::eval::edit::{attribute_direction, manipulate};
    let (model, state, data, device) = trained_image_model(&a.checkpoint, &a.device, true)?;
    let cfg = state.model;
    let data = data.expect("loaded");
    let Some(labels) = &data.train_labels else {
        let why = "the run's data set has no class labels to define an attribute";
        return Err(InputError::flag("--class", a.class, why).into());
    };
    let dir = attribute_direction(&model, &cfg, &data.train, labels, a.class, a.limit, &device)
        .map_err(|e| InputError::flag("--class", a.class, format!("{e:#}")))?;
    let test_labels = data.test_labels.as_deref();
    let px = manipulate(
        &model,
        &cfg,
        &data.test,
        test_labels,
        &a.images,
        &dir,
        &a.scales,
        &device,
    )
    .map_err(|e| match e.downcast_ref::<glowflow::error::NonFinite>() {
        Some(_) => e,
        None => InputError::flag("--images", format!("{:?}", a.images), format!("{e:#}")).into(),
    })?;
    save_edit_grid(&px, &cfg, a.scales.len(), &a.out, "attribute edits")
}
