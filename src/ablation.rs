//! Glow's ablation (Kingma & Dhariwal 2018, §5.1, Figure 3) in one call: {reverse, shuffle,
//! LU 1x1 convolution} × {additive, affine} coupling, trained on one data set with the same
//! options, seeds, data order and step budget, each evaluated on the test split at evenly
//! spaced steps. The paper's finding: the learned 1x1 convolution beats a fixed shuffle, which
//! beats reversing; affine coupling beats additive.
//!
//! Each run is trained in stages, resuming from its own checkpoint; resume is exact (tested),
//! so the staged run is the uninterrupted one, with a test evaluation at every stage's end.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;
use serde::Serialize;

use crate::eval::quality::QualityOptions;
use crate::models::{GlowImageConfig, ImageCoupling, Permutation};
use crate::train::run_dir::ResumeChanges;
use crate::train::train_image::{train_image, ImageStart, ImageSummary, ImageTrainOptions};
use crate::train::RunIo;

/// The six variants, in the paper's order: (permutation, coupling).
pub const VARIANTS: [(Permutation, ImageCoupling); 6] = [
    (Permutation::Reverse, ImageCoupling::Additive),
    (Permutation::Shuffle, ImageCoupling::Additive),
    (Permutation::Lu, ImageCoupling::Additive),
    (Permutation::Reverse, ImageCoupling::Affine),
    (Permutation::Shuffle, ImageCoupling::Affine),
    (Permutation::Lu, ImageCoupling::Affine),
];

/// One variant's results.
#[derive(Clone, Debug, Serialize)]
pub struct AblationRow {
    /// `reverse`, `shuffle` or `lu`.
    pub permutation: String,
    /// `additive` or `affine`.
    pub coupling: String,
    /// Test bits/dim after each stage: `(step, bpd)`.
    pub curve: Vec<(usize, f64)>,
    /// Test bits/dim at the end.
    pub final_test_bpd: f64,
    /// What the bits/dim measure (see [`crate::eval::images::bpd_meaning`]; a noise-augmented
    /// ablation's are not comparable with other runs').
    pub bpd_meaning: String,
    /// `fd_classifier` of the final model (see [`crate::eval::quality`]), when measured.
    pub fd_classifier: Option<f64>,
    /// Samples of the quality measure left out as non-finite (of its `n`), when measured.
    pub nonfinite_samples: Option<usize>,
    /// Training images per second over the whole run (this machine, this load).
    pub images_per_second: f64,
    /// The run directory.
    pub run: PathBuf,
    /// What went wrong without stopping the run: non-finite sample grids or test images at a
    /// stage, a quality measure refused (non-finite samples).
    pub notes: Vec<String>,
}

/// Train the six variants of [`VARIANTS`] from `cfg` and `opts` (their `steps` is the budget,
/// evaluated `stages` times), into `out/<permutation>-<coupling>`; measure each final model's
/// `fd_classifier` when `quality` is given. Writes `out/ablation.png` (the six test-bpd curves)
/// and `out/ablation.json`.
///
/// # Errors
/// What [`train_image`] refuses (named flags), a failed evaluation or write.
pub fn ablation(
    out: &Path,
    cfg: &GlowImageConfig,
    opts: &ImageTrainOptions,
    stages: usize,
    quality: Option<&QualityOptions>,
    io: &RunIo,
    device: &Device,
) -> Result<Vec<AblationRow>> {
    let stages = stages.clamp(1, opts.steps.max(1));
    // Every variant trains on these images: read once for every quality measure, and checked
    // before six models train, not after.
    let quality_data = match quality {
        Some(_) => {
            let data = crate::train::train_image::load_data(opts)?;
            crate::eval::quality::check_data(&data)
                .map_err(|e| anyhow::anyhow!("`quality_n`: {e:#} (0 skips the measure)"))?;
            Some(data)
        }
        None => None,
    };
    // The classifier and the real images' features, built at the first measure and shared.
    let mut reference: Option<crate::eval::quality::QualityReference> = None;
    let mut rows = Vec::new();
    for (permutation, coupling) in VARIANTS {
        let (p, c) = (name(&permutation), name(&coupling));
        let run = out.join(format!("{p}-{c}"));
        let variant = GlowImageConfig {
            permutation,
            coupling,
            ..cfg.clone()
        };
        let run_io = RunIo {
            out: run.clone(),
            ..io.clone()
        };
        if io.progress {
            eprintln!("ablation: {p} + {c} -> {}", run.display());
        }
        let mut curve = Vec::with_capacity(stages);
        let mut notes = Vec::new();
        let mut last: Option<ImageSummary> = None;
        for k in 1..=stages {
            let steps = opts.steps * k / stages;
            let started = std::time::SystemTime::now();
            let start = if k == 1 {
                ImageStart::Fresh(
                    variant.clone(),
                    ImageTrainOptions {
                        steps,
                        ..opts.clone()
                    },
                )
            } else {
                let changes = ResumeChanges {
                    steps: Some(steps),
                    ..ResumeChanges::default()
                };
                ImageStart::Resume(run.clone(), changes)
            };
            let s = match train_image(start, &run_io, device) {
                Ok(s) => s,
                // A run that trained and saved but drew a non-finite sample grid (or test
                // image) reports it after writing its summary: one variant's unstable
                // generative direction is a result to record, not a reason to stop the others.
                Err(e) => match saved_summary(&run, steps, &variant, started) {
                    Some(s) => {
                        notes.push(format!("step {steps}: {e:#}"));
                        s
                    }
                    None => return Err(e),
                },
            };
            curve.push((s.steps, s.test_bpd));
            last = Some(s);
        }
        let s = last.expect("at least one stage");
        let mut nonfinite_samples = None;
        let fd_classifier = match (quality, &quality_data) {
            (Some(q), Some(data)) => {
                let (model, state, _) = crate::train::train_image::load_for_eval(&run, device)?;
                let measured = match &reference {
                    Some(r) => r.measure(&model, &state.model, &q.draw, q.seed),
                    None => crate::eval::quality::QualityReference::new(
                        data,
                        state.model.n_bits,
                        q,
                        device,
                    )
                    .and_then(|r| {
                        let m = r.measure(&model, &state.model, &q.draw, q.seed);
                        reference = Some(r);
                        m
                    }),
                };
                match measured {
                    Ok(r) => {
                        nonfinite_samples = Some(r.nonfinite_samples);
                        Some(r.fd_classifier)
                    }
                    Err(e) => {
                        notes.push(format!("fd_classifier: {e:#}"));
                        None
                    }
                }
            }
            _ => None,
        };
        rows.push(AblationRow {
            permutation: p,
            coupling: c,
            final_test_bpd: s.test_bpd,
            bpd_meaning: s.bpd_meaning.clone(),
            images_per_second: (s.steps * opts.batch_size) as f64 / s.train_seconds.max(1e-9),
            curve,
            fd_classifier,
            nonfinite_samples,
            run,
            notes,
        });
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|r| {
            let pts = r.curve.iter().map(|&(s, b)| (s as f64, b)).collect();
            (format!("{} + {}", r.permutation, r.coupling), pts)
        })
        .collect();
    crate::viz::charts::curves(
        &out.join("ablation.png"),
        "Glow ablation: test bits/dim",
        "step",
        "test bits/dim",
        &series,
    )?;
    crate::train::checkpoint::save_json(&rows, &out.join("ablation.json"))?;
    Ok(rows)
}

/// The summary a stage of `steps` steps of `variant` saved in `run` before returning an error,
/// if it did: written since `started`, by this variant, at this step (never an older run's).
fn saved_summary(
    run: &Path,
    steps: usize,
    variant: &GlowImageConfig,
    started: std::time::SystemTime,
) -> Option<ImageSummary> {
    let path = run.join("summary.json");
    let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let s: ImageSummary = crate::train::checkpoint::load_json(&path).ok()?;
    (written >= started && s.steps == steps && s.config == *variant).then_some(s)
}

/// A value enum's lower-case name, as its flag spells it (`lu`, `affine`).
fn name<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}").to_lowercase()
}
