//! Evaluation of image Glow: bits/dim of every test image and their report, the training-free
//! classifier of a class-conditional model, samples decoded in float64 and checked, and the
//! round-trip error.

use anyhow::Result;
use burn::tensor::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::dequant::to_pixels;
use crate::data::stream::image_batch;
use crate::data::ImageSet;
use crate::error::InputError;
use crate::models::{DensityModel, GlowImage, GlowImageConfig};
use crate::tensor_util::{cast_module, to_vec, to_vec_f64};
use crate::viz::Canvas;

pub use crate::models::objective::{
    bpd_meaning, bpd_of, input_batch, input_images, input_rows, input_width, minus_log_q,
};

/// Bits/dim of every image of `set`, in order (one dequantisation draw with a fixed seed; see
/// [`bpd_meaning`]). The log-density is accumulated in float32 as trained; a value that is
/// not finite stays so.
pub fn per_image_bpd(
    model: &GlowImage,
    set: &ImageSet,
    cfg: &GlowImageConfig,
    batch: usize,
    device: &Device,
) -> Vec<f64> {
    class_eval(model, set, None, cfg, batch, device).bpd
}

/// Bits/dim of every image of `set` from `k` dequantisation draws per image combined by
/// importance sampling (Flow++ §3.1, eq. 13): `log P(x) ≈ log (1/k) Σ_j p(x + u_j) / q(u_j | x)`,
/// with `q` the model's variational dequantiser or the uniform one (`q = 1`). It is a bound for
/// every `k` (in expectation) and tightens towards the model's discrete likelihood as `k`
/// grows; `k = 1` estimates the same bound as [`per_image_bpd`] (from other draws). For
/// unconditional models only (the density is `log p(x)` without a class context), and not for
/// noise-augmented ones (their Gaussian noise is not a dequantiser).
pub fn importance_bpd(
    model: &GlowImage,
    set: &ImageSet,
    cfg: &GlowImageConfig,
    k: usize,
    batch: usize,
    device: &Device,
) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x1A5);
    let d = set.dims();
    let idx: Vec<usize> = (0..set.n).collect();
    let mut out = Vec::with_capacity(set.n);
    for chunk in idx.chunks(batch.max(1)) {
        let mut draws: Vec<Vec<f64>> = Vec::with_capacity(k);
        for _ in 0..k.max(1) {
            let (x, log_q) = input_batch(model, cfg, set, chunk, &mut rng, device);
            draws.push(to_vec_f64(minus_log_q(model.log_prob(x, None), log_q)));
        }
        for i in 0..chunk.len() {
            let max = draws.iter().map(|v| v[i]).fold(f64::NEG_INFINITY, f64::max);
            let lse = if max.is_finite() {
                max + draws.iter().map(|v| (v[i] - max).exp()).sum::<f64>().ln()
            } else {
                max
            };
            let lp = lse - (draws.len() as f64).ln();
            out.push(crate::data::dequant::bits_per_dim(lp, d, cfg.n_bits));
        }
    }
    out
}

/// Refuse importance sampling ([`importance_bpd`]) for a model it is not defined for, naming
/// the option `importance_samples`: class-conditional models (their density is `log p(x | y)`;
/// they report the marginal instead) and noise-augmented ones (their noise is no dequantiser).
pub fn check_importance(cfg: &GlowImageConfig, k: usize) -> Result<(), InputError> {
    let why = if cfg.classes > 0 {
        "is for unconditional models (a class-conditional one reports test_bpd_marginal)"
    } else if cfg.dequantization.noise_sigma().is_some() {
        "is not defined for a noise-augmented model (its Gaussian noise is not a dequantiser)"
    } else {
        return Ok(());
    };
    Err(InputError::option("importance_samples", k, why))
}

/// The importance-sampled figure of a test set ([`importance_bpd`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportanceReport {
    /// Dequantisation draws per image.
    pub draws: usize,
    /// Mean importance-sampled bits/dim; NaN (null in JSON) when any image's is not finite.
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub test_bpd: f64,
}

/// What `eval` reports of an image model on a test set: the bits/dim (and, class-conditional,
/// the marginal bits/dim and the training-free classifier's accuracy), what the figure means
/// for this model, and optionally the importance-sampled figure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestReport {
    /// Test images evaluated.
    pub test_images: usize,
    /// Mean bits/dim (`-log p(x | y)` with the true class for a class-conditional model given
    /// labels); NaN (null in JSON) when any image's is not finite.
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub test_bpd: f64,
    /// Class-conditional models: mean bits/dim of the marginal `p(x)`.
    pub test_bpd_marginal: Option<f64>,
    /// Class-conditional models given labels: the training-free classifier's accuracy.
    pub test_accuracy: Option<f64>,
    /// What the bits/dim is a bound of, for this model ([`bpd_meaning`]).
    pub bpd_meaning: String,
    /// The importance-sampled figure, when asked for.
    pub importance_sampled: Option<ImportanceReport>,
    /// The distribution of the per-image figures.
    pub test_report: BpdReport,
    /// Every image's bits/dim, in the set's order (not serialised).
    #[serde(skip)]
    pub per_image: Vec<f64>,
}

/// Evaluate `model` on every image of `set` (with its `labels` for a class-conditional model),
/// in batches of `batch`: [`class_eval`], and with `importance = Some(k)` also
/// [`importance_bpd`] over `k` draws.
///
/// # Errors
/// `importance_samples` for a model importance sampling is not defined for
/// ([`check_importance`]).
pub fn test_report(
    model: &GlowImage,
    set: &ImageSet,
    labels: Option<&[u8]>,
    cfg: &GlowImageConfig,
    importance: Option<usize>,
    batch: usize,
    device: &Device,
) -> Result<TestReport, InputError> {
    if let Some(k) = importance {
        check_importance(cfg, k)?;
    }
    let figures = class_eval(model, set, labels, cfg, batch, device);
    let importance_sampled = importance.map(|k| {
        let v = importance_bpd(model, set, cfg, k, batch, device);
        ImportanceReport {
            draws: k,
            test_bpd: BpdReport::new(&v).mean,
        }
    });
    let report = BpdReport::new(&figures.bpd);
    Ok(TestReport {
        test_images: set.n,
        test_bpd: report.mean,
        test_bpd_marginal: figures.marginal_mean(),
        test_accuracy: figures.accuracy,
        bpd_meaning: bpd_meaning(cfg),
        importance_sampled,
        test_report: report,
        per_image: figures.bpd,
    })
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

impl ClassEval {
    /// Mean of [`marginal_bpd`](Self::marginal_bpd) (class-conditional models).
    pub fn marginal_mean(&self) -> Option<f64> {
        let v = self.marginal_bpd.as_ref()?;
        Some(v.iter().sum::<f64>() / v.len().max(1) as f64)
    }
}

/// Evaluate every image of `set` (one dequantisation draw with a fixed seed) under `model`,
/// with the images' classes when given (`labels[i] < classes`).
pub fn class_eval(
    model: &GlowImage,
    set: &ImageSet,
    labels: Option<&[u8]>,
    cfg: &GlowImageConfig,
    batch: usize,
    device: &Device,
) -> ClassEval {
    let n_bits = cfg.n_bits;
    let mut rng = ChaCha8Rng::seed_from_u64(0x7E57);
    let d = set.dims();
    let k = model.classes();
    let mut out = Vec::with_capacity(set.n);
    let mut marginal = Vec::new();
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..set.n).collect();
    let bits = |lp: f64| crate::data::dequant::bits_per_dim(lp, d, n_bits);
    for chunk in idx.chunks(batch.max(1)) {
        let (x, log_q) = input_batch(model, cfg, set, chunk, &mut rng, device);
        if k > 0 {
            let mut all = model.class_log_likelihoods(x).expect("conditional model");
            if let Some(q) = log_q {
                all = all - q.reshape([chunk.len(), 1]);
            }
            let all = to_vec_f64(all);
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
        for lp in to_vec(minus_log_q(model.log_prob(x, None), log_q)) {
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
    /// `N of M test images have a non-finite bits/dim (worst: ...)` when any has (`images`:
    /// how many were evaluated).
    pub fn nonfinite_message(&self, images: usize) -> Option<String> {
        let worst = &self.worst[..self.nonfinite.min(self.worst.len())];
        (self.nonfinite > 0).then(|| {
            format!(
                "{} of {images} test images have a non-finite bits/dim (worst: {worst:?})",
                self.nonfinite
            )
        })
    }

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

/// How samples are drawn: the temperature, classifier-free guidance and score denoising.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// Scales every prior's standard deviation (Glow §5.3).
    pub temperature: f64,
    /// Classifier-free guidance weight `w` for class-conditional draws (see
    /// [`crate::models::glow_image::guided_context`]); `None` is the plain conditional prior
    /// (`w = 1`).
    pub guidance: Option<f64>,
    /// Denoise every sample with one score step of this `σ` (see [`denoise`]); `None`: raw.
    pub denoise: Option<f64>,
}

impl Draw {
    /// Plain draws at `temperature`: no guidance, no denoising.
    pub fn at(temperature: f64) -> Self {
        Draw {
            temperature,
            guidance: None,
            denoise: None,
        }
    }

    /// Draws at `temperature` as the model is meant to be sampled: denoised with its own `σ`
    /// when it is noise-augmented.
    pub fn for_model(cfg: &GlowImageConfig, temperature: f64) -> Self {
        Draw {
            denoise: cfg.dequantization.noise_sigma(),
            ..Draw::at(temperature)
        }
    }
}

/// Score denoising (TarFlow, Zhai et al. 2024, §2.4; Tweedie's formula): for a model of `y = x
/// + N(0, σ²)`, `E[x | y] = y + σ² ∇_y log p(y)`. The input gradient `∇_y log p(y | ctx)` is
/// exact (reverse-mode through the whole flow), in `y`'s dtype; `y` `[N, C, H, W]`.
pub fn denoise(model: &GlowImage, y: Tensor<4>, sigma: f64, ctx: Option<&Tensor<2>>) -> Tensor<4> {
    let leaf = y.clone().autodiff().require_grad();
    let logp = model.log_prob(leaf.clone(), ctx);
    let grads = logp.sum().backward();
    let score = leaf
        .grad(&grads)
        .expect("the input of the density takes part in its graph");
    y + score.cast(leaf.dtype()).mul_scalar(sigma * sigma)
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
    sample_batch_drawn(model, n, &Draw::at(temperature), seed, labels)
}

/// Like [`sample_batch_of`], drawn as `draw` says (guidance needs `labels`); `n = 0` gives an
/// empty batch.
pub fn sample_batch_drawn(
    model: &GlowImage,
    n: usize,
    draw: &Draw,
    seed: u64,
    labels: Option<&[usize]>,
) -> SampleBatch {
    if n == 0 {
        // Nothing to draw (the flow's tensors cannot have a zero-size batch).
        return SampleBatch {
            values: Vec::new(),
            n: 0,
            nonfinite: Vec::new(),
            first_nonfinite: None,
            clipped_low: 0.0,
            clipped_high: 0.0,
        };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model64 = cast_module(model.clone(), DType::F64);
    let device = model.top.device();
    let ctx = labels.map(|l| {
        let w = draw.guidance.unwrap_or(1.0);
        crate::models::glow_image::guided_context(l, model.classes(), w, &device)
    });
    let (mut x, zs) = model64.sample_with_latents(n, draw.temperature, ctx.as_ref(), &mut rng);
    if let Some(sigma) = draw.denoise {
        x = denoise(&model64, x, sigma, ctx.as_ref());
    }
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
        // Finite decodes with non-finite samples: the denoising step made them.
        match model64.trace_decode(&zs, ctx.as_ref()) {
            None if draw.denoise.is_some() => Some("the denoising score step".into()),
            place => place,
        }
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
    /// `k of n samples hold non-finite values (samples [...]); first non-finite value at ...`
    /// when any sample is non-finite.
    pub fn nonfinite_message(&self) -> Option<String> {
        (!self.nonfinite.is_empty()).then(|| {
            format!(
                "{} of {} samples hold non-finite values (samples {:?}); first non-finite value at {}",
                self.nonfinite.len(),
                self.n,
                &self.nonfinite[..self.nonfinite.len().min(20)],
                self.first_nonfinite.as_deref().unwrap_or("an unknown place")
            )
        })
    }

    /// The samples as a square grid picture; non-finite samples are marked cells (see
    /// [`grid_cols`](Self::grid_cols)).
    pub fn grid(&self, cfg: &GlowImageConfig) -> Canvas {
        let cols = (self.n as f64).sqrt().ceil() as usize;
        self.grid_cols(cfg, cols)
    }

    /// The samples as a grid picture with `cols` images per row; a non-finite sample is drawn
    /// as a marked cell ([`crate::viz::grid::MARKED_CELL_COLOURS`]), never as black pixels.
    pub fn grid_cols(&self, cfg: &GlowImageConfig, cols: usize) -> Canvas {
        let v32: Vec<f32> = self
            .values
            .iter()
            .map(|&v| if v.is_finite() { v as f32 } else { 0.0 })
            .collect();
        let px = to_pixels(&v32, cfg.n_bits);
        crate::viz::grid::image_grid_marked(
            &px,
            self.n,
            cols,
            [cfg.channels, cfg.height, cfg.width],
            &self.nonfinite,
        )
    }
}

/// Refuse a `--class` for a model of `classes` classes (0: unconditional) that it cannot draw.
///
/// # Errors
/// Names `--class` when it is given to an unconditional model or is not below `classes`.
pub fn check_class(class: Option<usize>, classes: usize) -> Result<()> {
    match (class, classes) {
        (Some(c), 0) => {
            let why = "the model is not class-conditional (trained without `classes`)";
            Err(InputError::option("class", c, why).into())
        }
        (Some(c), k) if c >= k => {
            Err(InputError::option("class", c, format!("the model has {k} classes")).into())
        }
        _ => Ok(()),
    }
}

/// Samples drawn as `draw` says (seed `seed`) with the number of grid columns to show them in:
/// `n` of class `class`, or of the unconditional model; with no class given, a class-conditional
/// model draws one row of `per_class` samples for each class.
///
/// # Errors
/// Names `--guidance` for an unconditional model.
/// Names `--class` when it is given to an unconditional model or is not below the class count.
pub fn sample_classes(
    model: &GlowImage,
    n: usize,
    class: Option<usize>,
    per_class: usize,
    draw: &Draw,
    seed: u64,
) -> Result<(SampleBatch, usize)> {
    let side = (n as f64).sqrt().ceil() as usize;
    if let (Some(w), 0) = (draw.guidance, model.classes()) {
        let why = "needs a class-conditional model trained with `label_dropout`";
        return Err(InputError::option("guidance", w, why).into());
    }
    check_class(class, model.classes())?;
    match (class, model.classes()) {
        (Some(c), _) => Ok((
            sample_batch_drawn(model, n, draw, seed, Some(&vec![c; n])),
            side,
        )),
        (None, 0) => Ok((sample_batch_drawn(model, n, draw, seed, None), side)),
        (None, k) => {
            let labels: Vec<usize> = (0..k)
                .flat_map(|c| std::iter::repeat_n(c, per_class))
                .collect();
            let batch = sample_batch_drawn(model, labels.len(), draw, seed, Some(&labels));
            Ok((batch, per_class))
        }
    }
}

/// A grid of `n` samples at `temperature` as an image (nearest-neighbour upscaled to >= 64 px),
/// with the samples it shows; non-finite samples are marked cells ([`SampleBatch::grid_cols`]:
/// check [`SampleBatch::nonfinite_message`]). A class-conditional
/// model draws one row per class instead (classes x classes samples, at most 10 per row); a
/// noise-augmented model's samples are denoised ([`Draw::for_model`]).
pub fn sample_grid(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    n: usize,
    temperature: f64,
    seed: u64,
) -> Result<(Canvas, SampleBatch)> {
    let per = model.classes().clamp(2, 10);
    let draw = Draw::for_model(cfg, temperature);
    let (batch, cols) = sample_classes(model, n, None, per, &draw, seed)?;
    Ok((batch.grid_cols(cfg, cols), batch))
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
    let x = image_batch(set, &idx, n_bits, &mut ChaCha8Rng::seed_from_u64(1), device).cast(dtype);
    let model = cast_module(model.clone(), dtype);
    let (_, zs) = model.forward_latents(x.clone(), None);
    let back = model.decode(&zs, None);
    let err: Vec<f64> = to_vec_f64(back - x).iter().map(|v| v.abs()).collect();
    crate::tensor_util::finite_max(&err).map_err(|bad| {
        anyhow::anyhow!(
            "{bad} of {} reconstructed values are non-finite ({dtype:?})",
            err.len()
        )
    })
}
