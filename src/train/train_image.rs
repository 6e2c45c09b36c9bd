//! Maximum-likelihood training of multi-scale Glow on images, with bits/dim, sample grids,
//! checkpoints and exact resume.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, EMA_FILE, MODEL_FILE};
use super::run_dir::{self, apply_change, ResumeChanges, ResumeRecord};
use super::stability::{Guard, StabilityOptions};
use super::trainer::{self, Schedule, Task};
use super::RunIo;
use crate::data::dequant::{dequantize, to_pixels};
use crate::data::{DataSpec, ImageSet, LoadOptions};
use crate::error::{FieldError, InputError};
use crate::layers::ActNormFlags;
use crate::models::glow_image::one_hot;
use crate::models::{GlowImage, GlowImageConfig};
use crate::tensor_util::{cast_module, from_vec, to_vec, to_vec_f64};
use crate::train::adam::optimizer;
use crate::viz::Canvas;

/// Training options of image Glow (the recipe; stored in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageTrainOptions {
    /// The data spec as given (`idx:DIR`, ...), and loading options.
    pub data: String,
    /// Zero-pad images to this square side (28 -> 32).
    pub pad: Option<usize>,
    /// Folder images: centre-crop and resize to this side.
    pub size: Option<usize>,
    /// Folder images: load as greyscale.
    pub grey: bool,
    /// Total training steps.
    pub steps: usize,
    /// Images per batch.
    pub batch: usize,
    /// Peak learning rate (after the warm-up).
    pub lr: f64,
    /// Linear learning-rate warm-up over this many steps.
    pub warmup: usize,
    /// Seed of the data order and the dequantisation noise.
    pub seed: u64,
    /// Images used for the ActNorm initialisation.
    pub init_batch: usize,
    /// A metrics row every this many steps.
    pub log_every: usize,
    /// A sample grid every this many steps (0: never).
    pub sample_every: usize,
    /// A checkpoint every this many steps (0: at the end only).
    pub checkpoint_every: usize,
    /// Evaluate on at most this many test images at the end (0: all).
    pub test_limit: usize,
    /// Stop training after this many minutes of training time (then checkpoint and evaluate).
    #[serde(default)]
    pub time_limit_minutes: Option<f64>,
    /// Data-parallel shards of each batch (one thread each; see `train::parallel`). Part of the
    /// recipe: results are deterministic for a given shard count and equal across counts up to
    /// float32 summation order.
    #[serde(default = "one_shard")]
    pub shards: usize,
    /// Gradient clipping, weight average, skip limit and optimizer. Runs saved before these
    /// existed load with everything off (their recipe), so they resume exactly.
    #[serde(default = "StabilityOptions::off")]
    pub stability: StabilityOptions,
    /// Weight of the class-prediction loss on the top latent, in bits per image added to the
    /// bits/dim objective (openai/glow's `--weight-y`; class-conditional models only).
    #[serde(default)]
    pub weight_y: f64,
}

fn one_shard() -> usize {
    1
}

impl ImageTrainOptions {
    /// Check every option against [`crate::limits`]; the error names the field and its flag.
    pub fn validate(&self) -> std::result::Result<(), FieldError> {
        use crate::limits::{count, number, MAX_IMAGE_SIDE, MAX_STEPS, MAX_THREADS};
        count("steps", "--steps", self.steps, 1, MAX_STEPS)?;
        count("batch", "--batch", self.batch, 1, 1 << 20)?;
        number("lr", "--lr", self.lr, 0.0, true, crate::limits::MAX_LR)?;
        count("warmup", "--warmup", self.warmup, 0, MAX_STEPS)?;
        count("init_batch", "--init-batch", self.init_batch, 1, 1 << 20)?;
        count("log_every", "--log-every", self.log_every, 1, MAX_STEPS)?;
        count("shards", "--threads", self.shards, 1, MAX_THREADS)?;
        if let Some(p) = self.pad {
            count("pad", "--pad", p, 1, MAX_IMAGE_SIDE)?;
        }
        if let Some(p) = self.size {
            count("size", "--size", p, 1, MAX_IMAGE_SIDE)?;
        }
        if let Some(t) = self.time_limit_minutes {
            number("time_limit_minutes", "--time-limit", t, 0.0, true, 1e8)?;
        }
        number("weight_y", "--weight-y", self.weight_y, 0.0, false, 1e6)?;
        self.stability.validate()
    }
}

/// Refuse a batch that does not fit the training set (`n` images) or the memory.
fn check_batch(
    cfg: &GlowImageConfig,
    opts: &ImageTrainOptions,
    n: usize,
) -> std::result::Result<(), FieldError> {
    if opts.batch > n {
        return Err(FieldError::new(
            "batch",
            "--batch",
            opts.batch,
            format!("is larger than the training set ({n} images)"),
        ));
    }
    let need = cfg.activation_bytes_per_image() * opts.batch.max(256) as f64;
    match crate::limits::memory_shortfall(need) {
        Some(why) => Err(FieldError::new("batch", "--batch", opts.batch, why)),
        None => Ok(()),
    }
}

/// A short fingerprint of a data set's pixels (SHA-256, first 16 hex digits): a resumed run
/// checks it, so data given at a new place must be the same images.
pub fn data_fingerprint(set: &ImageSet) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((set.n as u64).to_le_bytes());
    h.update([set.c as u8, 0, 0, 0]);
    h.update((set.h as u64).to_le_bytes());
    h.update((set.w as u64).to_le_bytes());
    h.update(&set.pixels);
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The image recipe's stability settings (`train`'s defaults): gradient-norm clipping at 50
/// bits/dim per unit weight, a weight average with decay 0.999 for evaluation and samples,
/// Adam. See the README's stability section for the measurements behind them.
pub fn image_recipe_stability() -> StabilityOptions {
    StabilityOptions {
        clip_grad_norm: 50.0,
        ema_decay: 0.999,
        ..StabilityOptions::off()
    }
}

/// What an image run's `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRunState {
    /// The model's config.
    pub model: GlowImageConfig,
    /// The training options.
    pub options: ImageTrainOptions,
    /// Steps done.
    pub step: usize,
    /// The initialised flag of every ActNorm, in model order.
    pub actnorm_initialized: Vec<bool>,
    /// Training wall time so far, seconds.
    pub train_seconds: f64,
    /// Steps the guard skipped so far (non-finite loss, gradient or update).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Updates folded into the weight average saved beside the weights (`ema.safetensors`).
    #[serde(default)]
    pub ema_updates: u64,
    /// [`data_fingerprint`] of the training set (absent in runs saved before it was kept).
    #[serde(default)]
    pub data_fingerprint: Option<String>,
    /// Each resume and what it changed.
    #[serde(default)]
    pub resumes: Vec<ResumeRecord>,
}

/// `summary.json` of an image run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Steps trained.
    pub steps: usize,
    /// Mean test bits/dim over every test image (null when any image's value is non-finite;
    /// `test_report` then says which).
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub test_bpd: f64,
    /// Test images evaluated.
    pub test_images: usize,
    /// Per-image figures: median, worst images, non-finite and extreme counts.
    pub test_report: BpdReport,
    /// Steps the guard skipped.
    pub skipped_steps: usize,
    /// Whether evaluation and samples used the weight average.
    pub ema: bool,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// The model's config.
    pub config: GlowImageConfig,
    /// The training options.
    pub options: ImageTrainOptions,
    /// Class-conditional models: mean test bits/dim of the marginal `p(x)` (uniform classes);
    /// `test_bpd` is then `-log p(x | y)` with the true class.
    #[serde(default)]
    pub test_bpd_marginal: Option<f64>,
    /// Class-conditional models: test accuracy of `argmax_y log p(x | y)`.
    #[serde(default)]
    pub test_accuracy: Option<f64>,
}

/// Load the data set `opts.data` names (padded or resized as `opts` says). Errors name `--data`
/// and, for a bad file, the file.
/// An error naming `--data spec` when the images of `set` are not the shape `cfg` expects.
pub fn check_image_shape(set: &ImageSet, cfg: &GlowImageConfig, spec: &str) -> Result<()> {
    if (set.c, set.h, set.w) == (cfg.channels, cfg.height, cfg.width) {
        return Ok(());
    }
    Err(InputError::flag(
        "--data",
        spec,
        format!(
            "images are {}x{}x{} but the model expects {}x{}x{}",
            set.c, set.h, set.w, cfg.channels, cfg.height, cfg.width
        ),
    )
    .into())
}

/// `spec` with its folder made absolute; errors name `--data`.
fn absolute_spec(spec: &str) -> Result<String> {
    let parsed: DataSpec = spec
        .parse()
        .map_err(|e: String| InputError::flag("--data", spec, e))?;
    let abs = parsed
        .absolute()
        .map_err(|e| InputError::flag("--data", spec, e))?;
    Ok(abs.to_string())
}

/// Load the data set `opts.data` names (padded or resized as `opts` says).
///
/// # Errors
/// Names `--data` for a bad spec or a missing folder, and the file for a malformed one.
pub fn load_data(opts: &ImageTrainOptions) -> Result<crate::data::Splits> {
    let spec: DataSpec = opts
        .data
        .parse()
        .map_err(|e: String| InputError::flag("--data", &opts.data, e))?;
    if spec.dir().as_os_str().is_empty() {
        return Err(InputError::flag("--data", &opts.data, "no folder after the colon").into());
    }
    if !spec.dir().is_dir() {
        return Err(InputError::flag("--data", &opts.data, "no such directory").into());
    }
    crate::data::images::load(
        &spec,
        &LoadOptions {
            pad: opts.pad,
            size: opts.size,
            grey: opts.grey,
        },
    )
}

/// The training and test labels of a class-conditional run (`None` for an unconditional one);
/// errors name `--classes` when the data set has no labels or a label is out of range.
pub fn class_labels(
    data: &crate::data::Splits,
    cfg: &GlowImageConfig,
    opts: &ImageTrainOptions,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let k = cfg.classes;
    if k == 0 {
        if opts.weight_y > 0.0 {
            return Err(InputError::flag(
                "--weight-y",
                opts.weight_y,
                "needs a class-conditional model (--classes K)",
            )
            .into());
        }
        return Ok(None);
    }
    let (Some(train), Some(test)) = (&data.train_labels, &data.test_labels) else {
        return Err(InputError::flag(
            "--classes",
            k,
            format!(
                "{} has no class labels (IDX label files or CIFAR-10 records)",
                opts.data
            ),
        )
        .into());
    };
    if let Some((i, &l)) = train
        .iter()
        .chain(test)
        .enumerate()
        .find(|(_, &l)| l as usize >= k)
    {
        return Err(InputError::flag(
            "--classes",
            k,
            format!("label {l} (image {i} of train then test) is not below the class count"),
        )
        .into());
    }
    Ok(Some((train.clone(), test.clone())))
}

/// Rows of `d` values followed by the one-hot (`k` wide) of each row's label.
fn with_one_hot(rows: &[f32], d: usize, idx: &[usize], labels: &[u8], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * (d + k));
    for (row, &i) in rows.chunks(d).zip(idx) {
        out.extend_from_slice(row);
        let mut hot = vec![0f32; k];
        hot[labels[i] as usize] = 1.0;
        out.extend_from_slice(&hot);
    }
    out
}

/// Dequantised tensor of the images `idx` of `set`, noise from `rng`.
fn batch_tensor(
    set: &ImageSet,
    idx: &[usize],
    n_bits: u32,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Tensor<4> {
    from_vec(
        batch_rows(set, idx, n_bits, rng),
        [idx.len(), set.c, set.h, set.w],
        device,
    )
}

/// The same batch flattened on the host, one image per row.
fn batch_rows(set: &ImageSet, idx: &[usize], n_bits: u32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut px = Vec::with_capacity(idx.len() * set.dims());
    for &i in idx {
        px.extend_from_slice(set.image(i));
    }
    dequantize(&px, n_bits, rng)
}

fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED);
    rng.set_stream(step as u64 + 1);
    rng
}

/// Mean bits/dim of a batch from per-image continuous log-densities.
pub fn bpd_of(logp: Tensor<1>, d: usize, n_bits: u32) -> Tensor<1> {
    let ln_bins = (1u64 << n_bits) as f64;
    logp.neg()
        .add_scalar(d as f64 * ln_bins.ln())
        .mean()
        .div_scalar(d as f64 * std::f64::consts::LN_2)
}

/// Bits/dim of every image of `set`, in order (one dequantisation draw with a fixed seed).
/// The log-density is accumulated in float32 as trained; a value that is not finite stays so.
pub fn per_image_bpd(
    model: &GlowImage,
    set: &ImageSet,
    n_bits: u32,
    batch: usize,
    device: &Device,
) -> Vec<f64> {
    class_eval(model, set, None, n_bits, batch, device).bpd
}

/// Per-image figures of a test set under a class-conditional model.
pub struct ClassEval {
    /// Bits/dim of each image: `-log p(x | y)` with its true class `y` when labels are given to
    /// a class-conditional model, else `-log p(x)`.
    pub bpd: Vec<f64>,
    /// Bits/dim of the marginal `p(x) = (1/K) Σ_y p(x | y)` (class-conditional models).
    pub marginal_bpd: Option<Vec<f64>>,
    /// Share of images whose `argmax_y log p(x | y)` is their true class (the training-free
    /// classifier; needs labels).
    pub accuracy: Option<f64>,
}

/// Evaluate every image of `set` (one dequantisation draw with a fixed seed) under `model`,
/// with the images' classes when given (`labels[i] < classes`).
pub fn class_eval(
    model: &GlowImage,
    set: &ImageSet,
    labels: Option<&[u8]>,
    n_bits: u32,
    batch: usize,
    device: &Device,
) -> ClassEval {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7E57);
    let d = set.dims();
    let k = model.classes();
    let mut out = Vec::with_capacity(set.n);
    let mut marginal = Vec::new();
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..set.n).collect();
    let bits = |lp: f64| crate::data::dequant::bits_per_dim(lp, d, n_bits);
    for chunk in idx.chunks(batch.max(1)) {
        let x = batch_tensor(set, chunk, n_bits, &mut rng, device);
        if k > 0 {
            let all = to_vec_f64(model.class_log_likelihoods(x).expect("conditional model"));
            for (row, &i) in all.chunks(k).zip(chunk) {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                marginal.push(bits(lse - (k as f64).ln()));
                let best = (0..k)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                match labels {
                    Some(l) => {
                        out.push(bits(row[l[i] as usize]));
                        correct += usize::from(best == l[i] as usize);
                    }
                    None => out.push(bits(lse - (k as f64).ln())),
                }
            }
            continue;
        }
        for lp in to_vec(model.log_prob(x)) {
            out.push(bits(lp as f64));
        }
    }
    ClassEval {
        bpd: out,
        marginal_bpd: (k > 0).then_some(marginal),
        accuracy: (k > 0 && labels.is_some()).then(|| correct as f64 / set.n.max(1) as f64),
    }
}

/// Per-image bits/dim figures of a test set, so that one image cannot silently dominate the
/// mean: the mean (NaN when any value is non-finite), the median, the worst images with their
/// 0-based indices, and how many are non-finite or extreme.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BpdReport {
    /// Mean over every image; NaN (null in JSON) when any image's value is not finite.
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub mean: f64,
    /// Median over the finite values.
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub median: f64,
    /// Mean over the finite values that are not extreme.
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub mean_without_extreme: f64,
    /// Images whose bits/dim is NaN or infinite.
    pub nonfinite: usize,
    /// Finite images above `extreme_threshold`.
    pub extreme: usize,
    /// `median + 10 * 1.4826 * MAD` (a robust ten-sigma bound), bits/dim.
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub extreme_threshold: f64,
    /// The ten worst images (non-finite first), `(index, bits/dim)`.
    pub worst: Vec<(usize, f64)>,
}

impl BpdReport {
    /// Summarise per-image bits/dim values.
    pub fn new(bpd: &[f64]) -> Self {
        let mut finite: Vec<f64> = bpd.iter().copied().filter(|v| v.is_finite()).collect();
        finite.sort_by(f64::total_cmp);
        let median_of = |v: &[f64]| -> f64 {
            match v.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => v[n / 2],
                n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
            }
        };
        let median = median_of(&finite);
        let mut dev: Vec<f64> = finite.iter().map(|v| (v - median).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let threshold = median + 10.0 * 1.4826 * median_of(&dev);
        let nonfinite = bpd.len() - finite.len();
        let extreme = finite.iter().filter(|&&v| v > threshold).count();
        let kept: Vec<f64> = finite.iter().copied().filter(|&v| v <= threshold).collect();
        let mean = if nonfinite > 0 || bpd.is_empty() {
            f64::NAN
        } else {
            bpd.iter().sum::<f64>() / bpd.len() as f64
        };
        let mut order: Vec<usize> = (0..bpd.len()).collect();
        // Non-finite first (NaN counts as worst), then by decreasing value.
        let key = |v: f64| if v.is_finite() { v } else { f64::INFINITY };
        order.sort_by(|&a, &b| key(bpd[b]).total_cmp(&key(bpd[a])).then(a.cmp(&b)));
        BpdReport {
            mean,
            median,
            mean_without_extreme: if kept.is_empty() {
                f64::NAN
            } else {
                kept.iter().sum::<f64>() / kept.len() as f64
            },
            nonfinite,
            extreme,
            extreme_threshold: threshold,
            worst: order.iter().take(10).map(|&i| (i, bpd[i])).collect(),
        }
    }
}

/// `n` samples at `temperature`, decoded in float64 (the model's float32 weights cast
/// exactly), so no float32 overflow of a finite intermediate turns a sample into NaN.
pub struct SampleBatch {
    /// Pixel values `[n, c, h, w]` before quantisation (data range `[-0.5, 0.5]`).
    pub values: Vec<f64>,
    /// Number of samples.
    pub n: usize,
    /// 0-based indices of samples holding a NaN or infinite value.
    pub nonfinite: Vec<usize>,
    /// Where the first non-finite value appeared in the generative direction, if any.
    pub first_nonfinite: Option<String>,
    /// Share of the finite samples' pixel values below the lowest bin (clipped to 0).
    pub clipped_low: f64,
    /// Share above the highest bin (clipped to 255 at 8 bits).
    pub clipped_high: f64,
}

/// Draw `n` samples at `temperature` with the RNG seeded `seed` and check them.
pub fn sample_batch(model: &GlowImage, n: usize, temperature: f64, seed: u64) -> SampleBatch {
    sample_batch_of(model, n, temperature, seed, None)
}

/// Like [`sample_batch`], for given classes (`labels[i] < classes` for sample `i`, `n` of them)
/// of a class-conditional model.
pub fn sample_batch_of(
    model: &GlowImage,
    n: usize,
    temperature: f64,
    seed: u64,
    labels: Option<&[usize]>,
) -> SampleBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model64 = cast_module(model.clone(), DType::F64);
    let ctx = labels.map(|l| one_hot(l, model.classes(), &model.top.device()));
    let (x, zs) = model64.sample_with_latents(n, temperature, ctx.as_ref(), &mut rng);
    let values = to_vec_f64(x);
    let per = values.len() / n.max(1);
    let nonfinite: Vec<usize> = (0..n)
        .filter(|&i| {
            values[i * per..(i + 1) * per]
                .iter()
                .any(|v| !v.is_finite())
        })
        .collect();
    let first_nonfinite = if nonfinite.is_empty() {
        None
    } else {
        model64.trace_decode(&zs)
    };
    let finite: Vec<f64> = (0..n)
        .filter(|i| !nonfinite.contains(i))
        .flat_map(|i| values[i * per..(i + 1) * per].iter().copied())
        .collect();
    let share = |f: &dyn Fn(f64) -> bool| {
        finite.iter().filter(|&&v| f(v)).count() as f64 / finite.len().max(1) as f64
    };
    SampleBatch {
        clipped_low: share(&|v| v < -0.5),
        clipped_high: share(&|v| v >= 0.5),
        values,
        n,
        nonfinite,
        first_nonfinite,
    }
}

impl SampleBatch {
    /// The samples as a grid picture; an error naming the non-finite samples instead of
    /// drawing them (a NaN would otherwise be written as a black pixel).
    pub fn grid(&self, cfg: &GlowImageConfig) -> Result<Canvas> {
        if !self.nonfinite.is_empty() {
            bail!(
                "{} of {} samples hold non-finite values (samples {:?}); first non-finite value at {}",
                self.nonfinite.len(),
                self.n,
                &self.nonfinite[..self.nonfinite.len().min(20)],
                self.first_nonfinite.as_deref().unwrap_or("an unknown place")
            );
        }
        let cols = (self.n as f64).sqrt().ceil() as usize;
        self.grid_cols(cfg, cols)
    }

    /// [`grid`](Self::grid) with `cols` images per row.
    pub fn grid_cols(&self, cfg: &GlowImageConfig, cols: usize) -> Result<Canvas> {
        if !self.nonfinite.is_empty() {
            return self.grid(cfg);
        }
        let v32: Vec<f32> = self.values.iter().map(|&v| v as f32).collect();
        let px = to_pixels(&v32, cfg.n_bits);
        Ok(image_grid_cols(
            &px,
            self.n,
            cols,
            [cfg.channels, cfg.height, cfg.width],
        ))
    }
}

/// A grid of `n` samples at `temperature` as an image (nearest-neighbour upscaled to >= 64 px);
/// an error when any sample is non-finite (see [`SampleBatch::grid`]). A class-conditional
/// model draws one row per class instead (classes x classes samples, at most 10 per row).
pub fn sample_grid(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    n: usize,
    temperature: f64,
    seed: u64,
) -> Result<Canvas> {
    let k = model.classes();
    if k == 0 {
        return sample_batch(model, n, temperature, seed).grid(cfg);
    }
    let per = k.clamp(2, 10);
    let labels: Vec<usize> = (0..k).flat_map(|c| std::iter::repeat_n(c, per)).collect();
    sample_batch_of(model, labels.len(), temperature, seed, Some(&labels)).grid_cols(cfg, per)
}

/// Tile `n` images `[n, c, h, w]` into a square grid.
pub fn image_grid(px: &[u8], n: usize, c: usize, h: usize, w: usize) -> Canvas {
    let cols = (n as f64).sqrt().ceil() as usize;
    image_grid_cols(px, n, cols, [c, h, w])
}

/// Tile `n` images `[n, c, h, w]` into rows of `cols`.
pub fn image_grid_cols(px: &[u8], n: usize, cols: usize, [c, h, w]: [usize; 3]) -> Canvas {
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let scale = (64 / h.max(w)).max(1);
    let pad = 2;
    let (cw, ch) = (w * scale + pad, h * scale + pad);
    let mut canvas = Canvas::new(cols * cw + pad, rows * ch + pad, [40, 40, 40]);
    for i in 0..n {
        let (gx, gy) = (pad + (i % cols) * cw, pad + (i / cols) * ch);
        for y in 0..h * scale {
            for x in 0..w * scale {
                let at = |k: usize| px[((i * c + k) * h + y / scale) * w + x / scale];
                let rgb = if c >= 3 {
                    [at(0), at(1), at(2)]
                } else {
                    [at(0); 3]
                };
                canvas.set(gx + x, gy + y, rgb);
            }
        }
    }
    canvas
}

/// The checkpoint of `dir` and its state, every value checked (errors name `state.json` and the
/// field).
fn open_state(dir: &Path) -> Result<(Checkpoint, ImageRunState)> {
    let (ck, state): (Checkpoint, ImageRunState) = Checkpoint::open(dir)?;
    state
        .model
        .validate()
        .map_err(|e| e.in_file(ck.state_path(), "model"))?;
    state
        .options
        .validate()
        .map_err(|e| e.in_file(ck.state_path(), "options"))?;
    Ok((ck, state))
}

/// Load a trained image model from a run or checkpoint directory. Refuses weights that hold a
/// non-finite value, files that do not belong to the checkpoint, and out-of-range values in
/// `state.json` (naming the field).
pub fn load_trained(dir: &Path, device: &Device) -> Result<(GlowImage, ImageRunState)> {
    let (ck, state) = open_state(dir)?;
    let model = load_weights(&ck, &state, device)?;
    Ok((model, state))
}

fn load_weights(ck: &Checkpoint, state: &ImageRunState, device: &Device) -> Result<GlowImage> {
    let mut model = ck.load_model(GlowImage::new(&state.model, device), MODEL_FILE)?;
    model
        .set_actnorm_flags(&state.actnorm_initialized)
        .map_err(|e| {
            InputError::file(ck.state_path(), Some("field actnorm_initialized".into()), e)
        })?;
    Ok(model)
}

/// The weights to evaluate and sample with: the run's weight average when its checkpoint has
/// one (`ema.safetensors`), else the trained weights. Refuses non-finite weights.
pub fn load_for_eval(dir: &Path, device: &Device) -> Result<(GlowImage, ImageRunState, bool)> {
    let (ck, state) = open_state(dir)?;
    let model = load_weights(&ck, &state, device)?;
    if state.options.stability.ema_decay > 0.0 && ck.has(EMA_FILE) {
        // The average is saved in float64 (exact for resume); evaluation runs in float32.
        let avg = cast_module(ck.load_model(model, EMA_FILE)?, DType::F32);
        Ok((avg, state, true))
    } else {
        Ok((model, state, false))
    }
}

// Built once per run: the size difference between the variants does not matter.
/// How an image run starts.
#[allow(clippy::large_enum_variant)]
pub enum ImageStart {
    /// A new run of this model with these options.
    Fresh(GlowImageConfig, ImageTrainOptions),
    /// Continue the run saved in a run (or checkpoint) directory, with the changes a resume may
    /// make (`steps`, `lr`, `data`, `time_limit`, `threads`, `checkpoint_every`,
    /// `sample_every`, `test_limit`).
    Resume(PathBuf, ResumeChanges),
}

/// Train (or resume) and evaluate; writes into `io.out` (`io.threads` is not used: the shard
/// count is `ImageTrainOptions::shards`, changed on resume by [`ResumeChanges::threads`]).
///
/// The run directory is locked for the whole run (a second writer gets an error); a fresh run
/// into a directory that holds a run is refused unless `io.force`. SIGINT/SIGTERM (when
/// [`interrupt::install`](super::interrupt::install)ed) finish the step, save a checkpoint and
/// return [`Interrupted`](crate::error::Interrupted).
pub fn train_image(start: ImageStart, io: &RunIo, device: &Device) -> Result<ImageSummary> {
    let (out, progress) = (io.out.as_path(), io.progress);
    let train_device = device.clone().autodiff();
    let resumed_from = match &start {
        ImageStart::Resume(d, _) => Some(d.clone()),
        ImageStart::Fresh(..) => None,
    };
    let (_lock, continues_here) = trainer::open_run(out, resumed_from.as_deref(), io.force)?;
    let mut saved = None;
    let mut resumes = Vec::new();
    let mut fingerprint = None;
    let (mut model, optim, opts, cfg, first, train_seconds, ema, skipped) = match start {
        ImageStart::Fresh(cfg, mut opts) => {
            cfg.validate().map_err(FieldError::on_flag)?;
            opts.validate().map_err(FieldError::on_flag)?;
            opts.data = absolute_spec(&opts.data)?;
            let model = GlowImage::new(&cfg, &train_device);
            let optim = optimizer(opts.stability.optimizer);
            (model, optim, opts, cfg, 0, 0.0, None, 0)
        }
        ImageStart::Resume(dir, changes) => {
            let (ck, state) =
                open_state(&dir).with_context(|| format!("--resume {}", dir.display()))?;
            let model = load_weights(&ck, &state, &train_device)?;
            let (optim, ema) =
                ck.load_training_state(&model, &state.options.stability, state.ema_updates)?;
            let mut opts = state.options.clone();
            let mut changed = Vec::new();
            let data = changes.data.as_deref().map(absolute_spec).transpose()?;
            apply_change(&mut changed, "steps", &mut opts.steps, changes.steps);
            apply_change(&mut changed, "lr", &mut opts.lr, changes.lr);
            apply_change(&mut changed, "data", &mut opts.data, data);
            if let Some(t) = changes.threads.filter(|&t| t != opts.shards) {
                run_dir::threads_note(opts.shards, t);
                apply_change(&mut changed, "threads", &mut opts.shards, Some(t));
            }
            apply_change(
                &mut changed,
                "checkpoint_every",
                &mut opts.checkpoint_every,
                changes.checkpoint_every,
            );
            apply_change(
                &mut changed,
                "sample_every",
                &mut opts.sample_every,
                changes.sample_every,
            );
            apply_change(
                &mut changed,
                "test_limit",
                &mut opts.test_limit,
                changes.test_limit,
            );
            // The time limit is for this invocation only: not part of the run.
            opts.time_limit_minutes = changes.time_limit;
            opts.validate().map_err(FieldError::on_flag)?;
            resumes = trainer::record_resume(state.resumes.clone(), state.step, changed);
            fingerprint = state.data_fingerprint.clone();
            saved = Some((ck.dir.clone(), state.step));
            (
                model,
                optim,
                opts,
                state.model,
                state.step,
                state.train_seconds,
                ema,
                state.skipped_steps,
            )
        }
    };
    trainer::check_steps(first, opts.steps)?;
    let data = load_data(&opts)?;
    check_image_shape(&data.train, &cfg, &opts.data)?;
    let print = data_fingerprint(&data.train);
    if let Some(want) = &fingerprint {
        if *want != print {
            return Err(InputError::flag(
                "--data",
                &opts.data,
                format!(
                    "not the training images this run was trained on (fingerprint {print}, the run's {want})"
                ),
            )
            .into());
        }
    }
    check_batch(&cfg, &opts, data.train.n).map_err(FieldError::on_flag)?;
    let labels = class_labels(&data, &cfg, &opts)?;

    if first == 0 && !model.actnorm_flags().iter().all(|&f| f) {
        let idx = super::epoch_batch(data.train.n, opts.init_batch.max(1), opts.seed ^ 0x1417, 0);
        let x = batch_tensor(
            &data.train,
            &idx,
            cfg.n_bits,
            &mut step_rng(opts.seed, usize::MAX - 1),
            &train_device,
        );
        model.initialize(x);
    }

    // Everything is checked: only now is an old run replaced by --force cleared (a refused run
    // never touches the run it would have replaced).
    trainer::clear_old_run(out, continues_here, io.force)?;
    let guard = Guard::new(&model, opts.stability.clone(), ema, skipped);
    let mut task = ImageTask {
        cfg: cfg.clone(),
        opts: opts.clone(),
        data,
        labels,
        fingerprint: print,
        resumes,
        out: out.to_path_buf(),
        device: device.clone(),
    };
    let schedule = Schedule {
        out: out.to_path_buf(),
        progress,
        first,
        steps: opts.steps,
        log_every: opts.log_every,
        checkpoint_every: opts.checkpoint_every,
        time_limit_minutes: opts.time_limit_minutes,
        train_seconds,
        append_logs: first > 0 || continues_here,
        saved,
        device: train_device,
    };
    let done = trainer::train(&mut task, model, optim, guard, schedule)?;
    let (model, guard, last, train_seconds) =
        (done.model, done.guard, done.step, done.train_seconds);
    let (data, labels) = (&task.data, &task.labels);
    crate::viz::charts::loss_curve(out, "step", "bpd", "training bits/dim")?;
    let eval = guard.eval_weights(model.valid());
    let test = if opts.test_limit > 0 {
        data.test.take(opts.test_limit)
    } else {
        data.test.clone()
    };
    let test_labels = labels.as_ref().map(|(_, t)| &t[..test.n]);
    let figures = class_eval(&eval, &test, test_labels, cfg.n_bits, 256, device);
    let report = BpdReport::new(&figures.bpd);
    let samples = sample_grid(&eval, &cfg, 64, 0.7, opts.seed);
    if let Ok(grid) = &samples {
        grid.save_png(&out.join("samples.png"))?;
    }
    let summary = ImageSummary {
        steps: last,
        test_bpd: report.mean,
        test_images: test.n,
        test_report: report,
        skipped_steps: guard.total_skips,
        ema: guard.ema.is_some(),
        train_seconds,
        images_per_second: (last * opts.batch) as f64 / train_seconds.max(1e-9),
        parameters: eval.num_params(),
        config: cfg,
        options: opts,
        test_bpd_marginal: figures
            .marginal_bpd
            .map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64),
        test_accuracy: figures.accuracy,
    };
    super::save_summary(&summary, &out.join("summary.json"))?;
    // The run and its checkpoint are saved; a non-finite evaluation is still a failure.
    let r = &summary.test_report;
    if r.nonfinite > 0 {
        bail!(
            "{} of {} test images have a non-finite bits/dim (worst: {:?}); see {}",
            r.nonfinite,
            summary.test_images,
            &r.worst[..r.nonfinite.min(r.worst.len())],
            out.join("summary.json").display()
        );
    }
    if let Err(e) = samples {
        bail!("no samples.png written: {e:#}");
    }
    Ok(summary)
}

/// Max |inverse(forward(x)) - x| over the first `n` test images, latents reused exactly, with the
/// round trip computed in `dtype` (the model's float32 weights are cast, exactly, for float64).
///
/// In float32 a trained model's round trip is limited by rounding in the latents, which the
/// inverse expands along the directions the forward map contracts (about 1e-4 on Fashion-MNIST);
/// float64 separates that round-off from any real defect of the inverse.
pub fn reconstruction_error(
    model: &GlowImage,
    set: &ImageSet,
    n_bits: u32,
    n: usize,
    dtype: DType,
    device: &Device,
) -> Result<f64> {
    let idx: Vec<usize> = (0..n.min(set.n)).collect();
    let x = batch_tensor(set, &idx, n_bits, &mut ChaCha8Rng::seed_from_u64(1), device).cast(dtype);
    let model = cast_module(model.clone(), dtype);
    let (_, zs) = model.forward_latents(x.clone());
    let back = model.decode(&zs);
    let err: Vec<f64> = to_vec_f64(back - x).iter().map(|v| v.abs()).collect();
    crate::tensor_util::finite_max(&err).map_err(|bad| {
        anyhow::anyhow!(
            "{bad} of {} reconstructed values are non-finite ({dtype:?})",
            err.len()
        )
    })
}

/// Image Glow's part of the one training loop: dequantised batches in seeded epoch order (with
/// the class one-hot of a conditional model), bits/dim plus the optional class loss, sample
/// grids.
struct ImageTask {
    cfg: GlowImageConfig,
    opts: ImageTrainOptions,
    data: crate::data::Splits,
    /// Training and test labels of a class-conditional run.
    labels: Option<(Vec<u8>, Vec<u8>)>,
    fingerprint: String,
    resumes: Vec<ResumeRecord>,
    out: PathBuf,
    /// The evaluation device (traces).
    device: Device,
}

impl ImageTask {
    fn shape(&self, n: usize) -> [usize; 4] {
        [n, self.cfg.channels, self.cfg.height, self.cfg.width]
    }
}

impl Task for ImageTask {
    type Model = GlowImage;
    type State = ImageRunState;

    fn metrics_header(&self) -> &'static str {
        "step,bpd,lr,seconds,images_per_s,grad_norm_max,clipped,skipped"
    }

    fn lr(&self, step: usize) -> f64 {
        self.opts.lr * ((step + 1) as f64 / self.opts.warmup.max(1) as f64).min(1.0)
    }

    fn batch(&mut self, step: usize) -> Vec<f32> {
        let (train, opts) = (&self.data.train, &self.opts);
        let idx = super::epoch_batch(train.n, opts.batch, opts.seed, step);
        let rows = batch_rows(train, &idx, self.cfg.n_bits, &mut step_rng(opts.seed, step));
        match &self.labels {
            Some((train_labels, _)) => {
                with_one_hot(&rows, self.cfg.dims(), &idx, train_labels, self.cfg.classes)
            }
            None => rows,
        }
    }

    fn width(&self) -> usize {
        self.cfg.dims() + self.cfg.classes
    }

    fn batch_size(&self) -> usize {
        self.opts.batch
    }

    fn shards(&self) -> usize {
        self.opts.shards
    }

    fn loss(&self, m: &GlowImage, x: Tensor<2>) -> Tensor<1> {
        let (d, k, n_bits) = (self.cfg.dims(), self.cfg.classes, self.cfg.n_bits);
        let n = x.dims()[0];
        if k == 0 {
            return bpd_of(m.log_prob(x.reshape(self.shape(n))), d, n_bits);
        }
        let img = x.clone().narrow(1, 0, d).reshape(self.shape(n));
        let y = x.narrow(1, d, k);
        let (logp, zs) = m.forward_latents_ctx(img, Some(&y));
        let bpd = bpd_of(logp, d, n_bits);
        if self.opts.weight_y == 0.0 {
            return bpd;
        }
        let top = zs.last().expect("a top latent").clone();
        let logits = m.class_logits(top).expect("conditional model");
        let log_q = burn::tensor::activation::log_softmax(logits, 1);
        // Cross-entropy in bits per image (openai/glow's bits_y).
        let bits_y = (log_q * y)
            .sum_dim(1)
            .mean()
            .neg()
            .div_scalar(std::f64::consts::LN_2)
            .reshape([1]);
        bpd + bits_y.mul_scalar(self.opts.weight_y)
    }

    fn row(&self, bpd: f64, lr: f64, seconds: f64, rate: Option<f64>, guard: &str) -> String {
        match rate {
            Some(ips) => format!("{bpd:.5},{lr:.4e},{seconds:.2},{ips:.1},{guard}"),
            None => format!("{bpd:.5},{lr:.4e},{seconds:.2},0,{guard}"),
        }
    }

    fn progress(&self, bpd: f64, images_per_second: f64) -> String {
        format!("{bpd:.3} bits/dim  {images_per_second:.1} img/s")
    }

    fn trace(&self, model: &GlowImage, rows: Vec<f32>) -> Option<String> {
        let n = rows.len() / self.width();
        let x = from_vec(rows, [n, self.width()], &self.device).narrow(1, 0, self.cfg.dims());
        model.trace_forward(x.reshape(self.shape(n)))
    }

    fn pictures_due(&self, done: usize) -> bool {
        self.opts.sample_every > 0 && done.is_multiple_of(self.opts.sample_every)
    }

    fn pictures(&mut self, done: usize, model: &GlowImage) -> Result<()> {
        match sample_grid(model, &self.cfg, 64, 0.7, self.opts.seed) {
            Ok(grid) => grid.save_png(&self.out.join(format!("samples_{done:07}.png"))),
            Err(e) => {
                eprintln!("step {done}: no sample grid written: {e}");
                Ok(())
            }
        }
    }

    fn state(
        &self,
        model: &mut GlowImage,
        step: usize,
        train_seconds: f64,
        guard: &Guard,
    ) -> ImageRunState {
        ImageRunState {
            model: self.cfg.clone(),
            options: self.opts.clone(),
            step,
            actnorm_initialized: model.actnorm_flags(),
            train_seconds,
            skipped_steps: guard.total_skips,
            ema_updates: guard.ema_updates(),
            data_fingerprint: Some(self.fingerprint.clone()),
            resumes: self.resumes.clone(),
        }
    }

    fn resume_command(&self) -> String {
        format!("glowflow train --resume {}", self.out.display())
    }
}
