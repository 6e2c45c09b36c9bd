//! `sample`: a grid of images from a trained image model (by class for a class-conditional one),
//! or CSV rows from a vector flow trained on a table (for a given `--context`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use glowflow::error::InputError;
use glowflow::train::train2d::load_trained;

use super::common::{print_json, DeviceFlag};
use super::parse;
use super::trained::{check_guidance, is_vector_run};

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Number of samples (a class-conditional model without --class draws one row per class,
    /// rounding up to whole rows).
    #[arg(long, default_value_t = 64, value_parser = parse::count::<1, 1_000_000>)]
    pub n: usize,
    /// Scales the standard deviation of every prior [default: 0.7 for images, 1 for vectors].
    #[arg(long, value_parser = parse::temperature)]
    pub temperature: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class to sample (class-conditional models; default: one row per class).
    #[arg(long, value_parser = parse::count::<0, 65_535>)]
    pub class: Option<usize>,
    /// Classifier-free guidance weight (class-conditional models trained with --label-dropout):
    /// 0 the class-free prior, 1 the conditional one, > 1 guided.
    #[arg(long, value_parser = parse::guidance)]
    pub guidance: Option<f64>,
    /// Noise-augmented models: keep the samples noisy (no denoising score step).
    #[arg(long)]
    pub raw: bool,
    /// Fail (exit 3, nothing written) when any sample is non-finite; without it they are
    /// marked cells (images) or left out (vector rows) and reported on stderr.
    #[arg(long)]
    pub strict: bool,
    /// Vector flows with context columns: the context to sample for, one comma-separated value
    /// per context column (in the run's order).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub context: Vec<f64>,
    /// Output: a PNG grid for image models; a CSV (one sample per row, the run's column names
    /// and `log_prob`) for vector flows, `.png` becoming `.csv`.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlag,
}

pub fn run(a: SampleArgs) -> Result<()> {
    use glowflow::eval::images::sample_classes;
    use glowflow::train::train_image::load_for_eval;
    let device = a.device.open()?;
    if is_vector_run(&a.checkpoint) {
        return sample_vectors(&a, &device);
    }
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    if !a.context.is_empty() {
        return Err(InputError::flag(
            "--context",
            format!("{:?}", a.context),
            "is for vector flows with context columns (image models take --class)",
        )
        .into());
    }
    let temperature = a
        .temperature
        .unwrap_or(glowflow::models::glow_image::DEFAULT_TEMPERATURE);
    let (model, state, ema) = load_for_eval(&a.checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    let mut draw = glowflow::eval::images::Draw::for_model(&state.model, temperature);
    draw.guidance = a.guidance;
    if a.raw {
        draw.denoise = None;
    }
    // Float64 decoding activations (twice the float32 estimate), plus the grid; the denoising
    // step's reverse pass keeps a forward pass's activations for its backward (about three
    // times as much).
    let factor = if draw.denoise.is_some() { 3.0 } else { 1.0 };
    let need = state.model.activation_bytes_per_image() * 2.0 * a.n as f64 * factor;
    if let Some(why) = glowflow::limits::memory_shortfall(need) {
        return Err(InputError::flag("--n", a.n, why).into());
    }
    let per_class = a.n.div_ceil(model.classes().max(1)).max(1);
    check_guidance(&state.options, &state.model, a.guidance)?;
    if a.raw && state.model.dequantization.noise_sigma().is_none() {
        let why = "is for noise-augmented models (trained with --noise-sigma); this one's samples are not denoised";
        return Err(InputError::flag("--raw", "", why).into());
    }
    let (batch, cols) = sample_classes(&model, a.n, a.class, per_class, &draw, a.seed)?;
    if let Some(why) = batch.nonfinite_message() {
        if a.strict {
            return Err(
                glowflow::error::NonFinite(format!("{why}; nothing written (--strict)")).into(),
            );
        }
        eprintln!(
            "warning: {why}; drawn as marked (striped) cells in {}",
            a.out.display()
        );
    }
    batch.grid_cols(&state.model, cols).save_png(&a.out)?;
    let mut how = String::new();
    if let Some(w) = draw.guidance {
        how.push_str(&format!(", guidance weight {w}"));
    }
    if let Some(s) = draw.denoise {
        how.push_str(&format!(", denoised (sigma {s})"));
    }
    outln!(
        "wrote {} samples at temperature {}{how} to {} ({} weights; pixels clipped: {:.3}% at 0, {:.3}% at the top)",
        batch.n,
        temperature,
        a.out.display(),
        if ema { "averaged" } else { "trained" },
        100.0 * batch.clipped_low,
        100.0 * batch.clipped_high
    );
    Ok(())
}

/// `sample` for a vector flow: `--n` samples at `--temperature` (default 1), for `--context`
/// when the run has context columns, written as CSV with each sample's log-density.
fn sample_vectors(a: &SampleArgs, device: &burn::tensor::Device) -> Result<()> {
    use glowflow::eval::vector::sample_rows;
    let (model, state) = load_trained(&a.checkpoint, device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    if let Some(c) = a.class {
        return Err(InputError::flag(
            "--class",
            c,
            "is for class-conditional image models (vector flows take --context)",
        )
        .into());
    }
    if let Some(w) = a.guidance {
        let why = "is for class-conditional image models";
        return Err(InputError::flag("--guidance", w, why).into());
    }
    if a.raw {
        let why = "is for noise-augmented image models";
        return Err(InputError::flag("--raw", "", why).into());
    }
    let out = if a.out.extension().is_some_and(|e| e == "png") {
        a.out.with_extension("csv")
    } else {
        a.out.clone()
    };
    glowflow::fsutil::check_outputs(&[("--out", &out)], &[])?;
    let t = a.temperature.unwrap_or(1.0);
    // A context far outside the training rows: the model extrapolates; say how far.
    if let Some((mean, std)) = model.standardization() {
        let d = state.model.features;
        for (j, &v) in a.context.iter().enumerate() {
            let (m, s) = (mean.get(d + j), std.get(d + j));
            if let (Some(m), Some(s)) = (m, s) {
                let z = (v - m) / s;
                if z.abs() > 10.0 {
                    eprintln!(
                        "warning: --context value {v:e} (context column {}) is {z:.3e} training standard deviations from the training mean: the model extrapolates far beyond its data",
                        j + 1
                    );
                }
            }
        }
    }
    let s = sample_rows(
        &model,
        state.table_run(),
        a.n,
        t,
        &a.context,
        a.seed,
        device,
    )?;
    if !s.left_out.is_empty() {
        let why = format!(
            "{} of {} samples are non-finite even in float64 (samples {:?})",
            s.left_out.len(),
            a.n,
            &s.left_out[..s.left_out.len().min(20)]
        );
        if a.strict {
            return Err(
                glowflow::error::NonFinite(format!("{why}; nothing written (--strict)")).into(),
            );
        }
        eprintln!("warning: {why}; left out of {}", out.display());
    }
    let written = s.rows.len();
    glowflow::fsutil::write_csv(&out, &s.header, s.rows)
        .map_err(|e| InputError::flag("--out", out.display(), format!("{e:#}")))?;
    print_json(&json!({
        "checkpoint": a.checkpoint,
        "samples": written,
        "left_out_nonfinite": s.left_out.len(),
        "temperature": t,
        "context": a.context,
        "out": out,
    }))
}
