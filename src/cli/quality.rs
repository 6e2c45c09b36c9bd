//! `quality`: the Fréchet distance (`fd_classifier`) between a trained image model's samples and
//! test images, and a classifier's accuracy on class-conditional samples.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::common::{print_json, DeviceFlag};
use super::parse;
use super::trained::{check_guidance, trained_image_model, ImageCheckpoint};

/// `quality`'s flags.
#[derive(Args, Debug)]
pub struct QualityArgs {
    #[command(flatten)]
    pub checkpoint: ImageCheckpoint,
    /// Samples drawn, and test images (and training images, for the floor) compared with them.
    #[arg(long, default_value_t = 2000, value_parser = parse::count::<2, 1_000_000>)]
    pub n: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = glowflow::models::glow_image::DEFAULT_TEMPERATURE, value_parser = parse::temperature)]
    pub temperature: f64,
    /// Classifier-free guidance weights to measure, comma-separated (class-conditional models
    /// trained with --label-dropout): 0 the class-free prior, 1 the conditional one, > 1
    /// guided. One report per weight (a JSON array).
    #[arg(long, value_delimiter = ',', value_parser = parse::guidance)]
    pub guidance: Vec<f64>,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training steps of the classifier (part of its cache key).
    #[arg(long, default_value_t = glowflow::eval::quality::ClassifierOptions::default().steps, value_parser = parse::count::<1, 10_000_000>)]
    pub classifier_steps: usize,
    /// Where the classifier is cached [default: $XDG_CACHE_HOME/glowflow or ~/.cache/glowflow].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceFlag,
}

pub fn run(a: QualityArgs) -> Result<()> {
    use glowflow::eval::images::Draw;
    use glowflow::eval::quality::{
        default_cache_dir, ClassifierOptions, QualityOptions, QualityReference,
    };
    let (model, state, data, device) = trained_image_model(&a.checkpoint, &a.device, true)?;
    let cfg = state.model;
    let data = data.expect("loaded");
    let weights: Vec<Option<f64>> = if a.guidance.is_empty() {
        vec![None]
    } else {
        a.guidance.iter().map(|&w| Some(w)).collect()
    };
    for w in &weights {
        check_guidance(&state.options, &cfg, *w)?;
    }
    // A noise-augmented model is measured raw and denoised: the pair is the point.
    let denoise: Vec<Option<f64>> = match cfg.dequantization.noise_sigma() {
        Some(s) => vec![None, Some(s)],
        None => vec![None],
    };
    let opts = QualityOptions {
        n: a.n,
        draw: Draw::at(a.temperature),
        seed: a.seed,
        classifier: ClassifierOptions {
            steps: a.classifier_steps,
            ..ClassifierOptions::default()
        },
        cache: a.cache.clone().unwrap_or_else(default_cache_dir),
    };
    // One classifier and one set of real features for every measure.
    let reference = QualityReference::new(&data, cfg.n_bits, &opts, &device)?;
    let mut reports = Vec::new();
    for &guidance in &weights {
        for &denoise in &denoise {
            let draw = Draw {
                guidance,
                denoise,
                ..opts.draw
            };
            reports.push(reference.measure(&model, &cfg, &draw, opts.seed)?);
        }
    }
    match reports.len() {
        1 => print_json(&reports[0]),
        _ => print_json(&reports),
    }
}
