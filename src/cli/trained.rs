//! What the commands that read a trained image model share: their `--checkpoint`, loading it,
//! refusing a guidance weight it cannot use, and saving a grid of edited images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use glowflow::error::InputError;
use glowflow::models::GlowImageConfig;

use super::common::DeviceFlag;

/// `--checkpoint` of `quality` and the editing commands.
#[derive(Args, Debug)]
pub struct ImageCheckpoint {
    /// A run directory of `train` (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
}

/// Whether `dir` holds a vector-flow run (`train2d`), not an image run
/// ([`glowflow::train::trainer::run_kind`]).
pub fn is_vector_run(dir: &Path) -> bool {
    use glowflow::train::trainer::{run_kind, RunKind};
    run_kind(dir).is_ok_and(|k| k == RunKind::Vector)
}

/// The image model of `--checkpoint` for `quality` and the editing commands (its evaluation
/// weights and run state, and the data it was trained on when `data`).
pub fn trained_image_model(
    checkpoint: &ImageCheckpoint,
    device: &DeviceFlag,
    data: bool,
) -> Result<(
    glowflow::models::GlowImage,
    glowflow::train::train_image::ImageRunState,
    Option<glowflow::data::Splits>,
    burn::tensor::Device,
)> {
    use glowflow::train::train_image::{load_data, load_for_eval};
    let checkpoint = checkpoint.checkpoint.as_path();
    let device = device.open()?;
    if is_vector_run(checkpoint) {
        let why = "is a vector-flow run; this command is for image models (train)";
        return Err(InputError::flag("--checkpoint", checkpoint.display(), why).into());
    }
    let (model, state, _) = load_for_eval(checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", checkpoint.display()))?;
    let splits = if data {
        Some(load_data(&state.options)?)
    } else {
        None
    };
    Ok((model, state, splits, device))
}

/// Save `rows` x `cols` images as one grid PNG and say so.
pub fn save_edit_grid(
    px: &[u8],
    cfg: &GlowImageConfig,
    cols: usize,
    out: &Path,
    what: &str,
) -> Result<()> {
    let n = px.len() / (cfg.channels * cfg.height * cfg.width);
    glowflow::viz::grid::image_grid_cols(px, n, cols, [cfg.channels, cfg.height, cfg.width])
        .save_png(out)?;
    outln!(
        "wrote {what} ({n} images, {} per row) to {}",
        cols,
        out.display()
    );
    Ok(())
}

/// Refuse a guidance weight `w` for a model whose class-free prior was never trained (an
/// unconditional model, or one trained without `--label-dropout`), or that is not finite.
pub fn check_guidance(
    opts: &glowflow::train::train_image::ImageTrainOptions,
    cfg: &GlowImageConfig,
    w: Option<f64>,
) -> Result<()> {
    let Some(w) = w else { return Ok(()) };
    let why = if cfg.classes == 0 {
        "needs a class-conditional model (trained with --classes K and --label-dropout P)"
    } else if opts.label_dropout == 0.0 && w != 1.0 {
        "needs a model trained with --label-dropout P unless it is 1 (the plain conditional prior): this one's class-free prior (the null class) was never trained"
    } else {
        return Ok(());
    };
    Err(InputError::flag("--guidance", w, why).into())
}
