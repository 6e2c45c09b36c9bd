//! `eval`: test bits/dim of a trained image model over the whole test split. Its flags, its
//! loading and its output serve `reconstruct` too.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use glowflow::data::Splits;
use glowflow::error::InputError;
use glowflow::models::GlowImage;
use glowflow::train::checkpoint;
use glowflow::train::train_image::{ImageRunState, ImageTrainOptions};

use super::common::{print_json, DeviceFlag};
use super::parse;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run directory (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data spec; default: the one the model was trained on.
    #[arg(long)]
    pub data: Option<String>,
    /// `reconstruct`: images to reconstruct (not used by `eval`).
    #[arg(long, default_value_t = 64, value_parser = parse::count::<1, 1_000_000>)]
    pub n: usize,
    /// Write the JSON result here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `eval`: also write every test image's bits/dim here (CSV `index,bpd`, 0-based indices).
    #[arg(long)]
    pub per_image: Option<PathBuf>,
    /// `eval`: also report the importance-sampled bits/dim over this many dequantisation draws
    /// per image (Flow++ eq. 13; tighter than one draw; unconditional models).
    #[arg(long, value_parser = parse::count::<1, 4096>)]
    pub importance_samples: Option<usize>,
    #[command(flatten)]
    pub device: DeviceFlag,
}

/// A trained image model, its evaluation weights (`ema`: the weight average) and the data it is
/// measured on.
pub struct Loaded {
    pub model: GlowImage,
    pub state: ImageRunState,
    pub ema: bool,
    pub opts: ImageTrainOptions,
    pub data: Splits,
    pub device: burn::tensor::Device,
}

/// Check the outputs, load `--checkpoint`, run the command's own checks of its flags against the
/// run (`refuse`), then read the data (`--data`, else the run's own) and check its shape.
pub fn load(a: &EvalArgs, refuse: impl FnOnce(&ImageRunState) -> Result<()>) -> Result<Loaded> {
    use glowflow::train::train_image::{load_data, load_for_eval};
    let outputs: Vec<(&str, &std::path::Path)> = [("--out", &a.out), ("--per-image", &a.per_image)]
        .into_iter()
        .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
        .collect();
    glowflow::fsutil::check_outputs(&outputs, &[])?;
    let device = a.device.open()?;
    let (model, state, ema) = load_for_eval(&a.checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    refuse(&state)?;
    let mut opts = state.options.clone();
    if let Some(d) = &a.data {
        opts.data = d.clone();
    }
    let data = load_data(&opts)?;
    let cfg = &state.model;
    data.test
        .check_shape([cfg.channels, cfg.height, cfg.width], &opts.data)?;
    Ok(Loaded {
        model,
        state,
        ema,
        opts,
        data,
        device,
    })
}

pub fn run(a: EvalArgs) -> Result<()> {
    use glowflow::eval::images::{check_importance, test_report};
    let l = load(&a, |state| match a.importance_samples {
        Some(k) => Ok(check_importance(&state.model, k)?),
        None => Ok(()),
    })?;
    let cfg = &l.state.model;
    let labels = l.data.labels(cfg.classes, &l.opts.data)?;
    let test_labels = labels.as_ref().map(|(_, t)| &t[..]);
    let (set, k) = (&l.data.test, a.importance_samples);
    let r = test_report(&l.model, set, test_labels, cfg, k, 256, &l.device)?;
    // Written after the figures are printed (`finish`), so a failed write loses nothing.
    let failure = r
        .test_report
        .nonfinite_message(set.n)
        .map(anyhow::Error::msg);
    let mut report = json!({
        "checkpoint": a.checkpoint,
        "ema_weights": l.ema,
        "data": l.opts.data,
    });
    report.as_object_mut().expect("an object").extend(
        serde_json::to_value(&r)?
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let per_image = a.per_image.clone().map(|p| (p, r.per_image));
    finish(&a, &report, per_image, failure)
}

/// Print `report`, then write every test image's bits/dim (`per_image`) and `--out`'s copy of the
/// report (printed first, so a failed write never loses the figures); then `failure`, if any.
pub fn finish(
    a: &EvalArgs,
    report: &serde_json::Value,
    per_image: Option<(PathBuf, Vec<f64>)>,
    failure: Option<anyhow::Error>,
) -> Result<()> {
    print_json(report)?;
    if let Some((p, bpd)) = per_image {
        let rows = bpd
            .iter()
            .enumerate()
            .map(|(i, v)| [i.to_string(), glowflow::fsutil::csv_number(*v)]);
        glowflow::fsutil::write_csv(&p, &["index", "bpd"], rows)
            .map_err(|e| InputError::flag("--per-image", p.display(), format!("{e:#}")))?;
    }
    if let Some(p) = &a.out {
        checkpoint::save_json(report, p)
            .map_err(|e| InputError::flag("--out", p.display(), format!("{e:#}")))?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
