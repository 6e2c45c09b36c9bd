//! Sample quality that works offline: a small classifier trained here on the data set itself,
//! and the Fréchet distance between real and generated images in its penultimate features
//! (`fd_classifier`), plus its accuracy on class-conditional samples.
//!
//! This is the recipe of the Fréchet Inception Distance (Heusel et al. 2017, "GANs trained by a
//! two time-scale update rule…", §4: `|μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})` over the
//! features' Gaussian fits) with another feature network: Inception weights cannot be
//! downloaded here, and a classifier of the data set's own classes sees what matters in it.
//! Its figures are comparable only between runs measured with the same classifier (same data
//! set, geometry, options and seed), never with published FIDs.
//!
//! The classifier: conv3x3 (C → 16) → ReLU → 2x2 average pool → conv3x3 (16 → 32) → ReLU → 2x2
//! average pool → dense (→ 128) → ReLU = the features → dense (→ classes). Images enter as
//! 8-bit pixels scaled to [-0.5, 0.5], real images and samples alike (samples are quantised
//! to pixels first, as they would be saved).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::images::Draw;
use crate::data::images::ImageSet;
use crate::linalg::{symmetric_eigen, Mat};
use crate::nets::conv::Conv2d;
use crate::nets::mlp::Dense;
use crate::tensor_util::{from_vec, to_vec};

/// Features per image (the penultimate layer's width).
pub const FEATURES: usize = 128;

/// The classifier's architecture and preprocessing, in its cache key: a change to either
/// bumps it, so a file trained by other code is never loaded.
pub const CLASSIFIER_VERSION: u32 = 1;

/// The classifier whose penultimate features [`frechet_distance`] compares.
#[derive(Module, Debug)]
pub struct FeatureNet {
    conv1: Conv2d,
    conv2: Conv2d,
    hidden: Dense,
    out: Dense,
}

/// How the classifier is trained (the cache key holds all of it).
#[derive(Clone, Debug, Serialize)]
pub struct ClassifierOptions {
    /// Adam steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of the initial weights and of the batch order.
    pub seed: u64,
    /// Data-parallel CPU shards of each batch (results depend on the count).
    pub shards: usize,
}

impl Default for ClassifierOptions {
    /// 2,000 steps of 128 images (about 4 epochs of Fashion-MNIST), lr 1e-3, seed 0, 2 shards.
    fn default() -> Self {
        ClassifierOptions {
            steps: 2000,
            batch: 128,
            lr: 1e-3,
            seed: 0,
            shards: 2,
        }
    }
}

/// 2x2 average pooling of `[N, C, H, W]` (H, W even) to `[N, C, H/2, W/2]`.
fn pool(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / 2, 2, w / 2, 2])
        .mean_dim(5)
        .mean_dim(3)
        .reshape([n, c, h / 2, w / 2])
}

impl FeatureNet {
    /// A fresh classifier for `[c, h, w]` images (`h`, `w` multiples of 4) of `classes` classes.
    pub fn new(shape: [usize; 3], classes: usize, seed: u64, device: &Device) -> Self {
        let [c, h, w] = shape;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        FeatureNet {
            conv1: Conv2d::new(c, 16, 3, true, &mut rng, device),
            conv2: Conv2d::new(16, 32, 3, true, &mut rng, device),
            hidden: Dense::new(32 * (h / 4) * (w / 4), FEATURES, &mut rng, device),
            out: Dense::new(FEATURES, classes, &mut rng, device),
        }
    }

    /// The penultimate features, `[N, FEATURES]`, of images `x: [N, C, H, W]` in [-0.5, 0.5].
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let y = pool(self.conv1.forward_relu(x));
        let y = pool(self.conv2.forward_relu(y));
        let [n, c, h, w] = y.dims();
        self.hidden.forward_relu(y.reshape([n, c * h * w]))
    }

    /// Class logits, `[N, classes]`.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.out.forward(self.features(x))
    }
}

/// `n` images of `[c, h, w]` 8-bit pixels as a `[n, c, h, w]` tensor in [-0.5, 0.5].
fn pixels_tensor(pixels: &[u8], n: usize, shape: [usize; 3], device: &Device) -> Tensor<4> {
    let [c, h, w] = shape;
    let v: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0 - 0.5).collect();
    from_vec(v, [n, c, h, w], device)
}

/// Whether [`measure`] can run on `data`: class labels for both splits, image sides that are
/// multiples of 4.
///
/// # Errors
/// What is missing, in words.
pub fn check_data(data: &crate::data::Splits) -> Result<()> {
    if data.train_labels.is_none() || data.test_labels.is_none() {
        bail!("the data set has no class labels, which the quality classifier is trained on");
    }
    check_shape(&data.train)
}

/// Refuse a geometry the classifier cannot pool twice.
fn check_shape(set: &ImageSet) -> Result<()> {
    if !set.h.is_multiple_of(4) || !set.w.is_multiple_of(4) || set.h == 0 || set.w == 0 {
        bail!(
            "the quality classifier needs image sides that are multiples of 4, not {}x{} (pad the images, e.g. `pad` 32)",
            set.h,
            set.w
        );
    }
    Ok(())
}

/// Train the classifier on `train` with its `labels` (each `< classes`).
///
/// # Errors
/// Sides that are not multiples of 4, labels out of range or not one per image, no images.
pub fn train_classifier(
    train: &ImageSet,
    labels: &[u8],
    classes: usize,
    opts: &ClassifierOptions,
    device: &Device,
) -> Result<FeatureNet> {
    check_shape(train)?;
    if labels.len() != train.n || train.n == 0 {
        bail!(
            "the quality classifier needs one label per image ({} labels, {} images)",
            labels.len(),
            train.n
        );
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        bail!("label {bad} is not below the class count {classes}");
    }
    let ad = device.clone().autodiff();
    let shape = [train.c, train.h, train.w];
    let d = train.dims();
    let mut model = FeatureNet::new(shape, classes, opts.seed, &ad);
    let mut optim = crate::ops::adam::adam(1e-8);
    let mut rng = crate::rng::seeded(opts.seed, crate::rng::CLASSIFIER);
    // Each row is an image's scaled pixels followed by its label, so the batch can be sharded
    // by the trainer's data-parallel gradient function.
    let loss = |m: &FeatureNet, rows: Tensor<2>| -> Tensor<1> {
        let [k, _] = rows.dims();
        let x = rows
            .clone()
            .slice([0..k, 0..d])
            .reshape([k, shape[0], shape[1], shape[2]]);
        let labels = to_vec(rows.slice([0..k, d..d + 1]));
        let mut one_hot = vec![0.0f32; k * classes];
        for (i, &l) in labels.iter().enumerate() {
            one_hot[i * classes + l as usize] = 1.0;
        }
        let one_hot = from_vec(one_hot, [k, classes], &x.device());
        let logp = log_softmax(m.logits(x), 1);
        (logp * one_hot)
            .sum()
            .neg()
            .div_scalar(k as f64)
            .reshape([1])
    };
    for _ in 0..opts.steps {
        let mut rows = Vec::with_capacity(opts.batch * (d + 1));
        for _ in 0..opts.batch {
            let i = rng.gen_range(0..train.n);
            rows.extend(train.image(i).iter().map(|&p| p as f32 / 255.0 - 0.5));
            rows.push(labels[i] as f32);
        }
        let (_, grads): (f64, GradientsParams) =
            crate::ops::parallel::loss_and_grads(&model, &rows, d + 1, opts.shards, &ad, loss);
        model = optim.step(opts.lr, model, grads);
    }
    Ok(model.valid())
}

/// Features of every image of `set`, `[n, FEATURES]` row-major, in batches of 500.
pub fn features(net: &FeatureNet, set: &ImageSet, device: &Device) -> Vec<f32> {
    batches(set, device)
        .flat_map(|(_, x)| to_vec(net.features(x)))
        .collect()
}

/// Share of the images of `set` the classifier puts in their labelled class.
pub fn accuracy(net: &FeatureNet, set: &ImageSet, labels: &[u8], device: &Device) -> f64 {
    let mut right = 0usize;
    for (start, x) in batches(set, device) {
        let k = x.dims()[0];
        let logits = to_vec(net.logits(x));
        let classes = logits.len() / k;
        for i in 0..k {
            let row = &logits[i * classes..(i + 1) * classes];
            let best = (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            right += usize::from(best == labels[start + i] as usize);
        }
    }
    right as f64 / set.n.max(1) as f64
}

/// The images of `set` in batches of 500 as classifier input: `(first index, [k, c, h, w])`.
fn batches<'a>(
    set: &'a ImageSet,
    device: &'a Device,
) -> impl Iterator<Item = (usize, Tensor<4>)> + 'a {
    let (d, shape) = (set.dims(), [set.c, set.h, set.w]);
    (0..set.n).step_by(500).map(move |start| {
        let k = (set.n - start).min(500);
        let px = &set.pixels[start * d..(start + k) * d];
        (start, pixels_tensor(px, k, shape, device))
    })
}

/// Mean and covariance (divided by n − 1) of `n` rows of `d` values, in float64.
fn moments(x: &[f32], d: usize) -> (Vec<f64>, Mat) {
    let n = x.len() / d;
    let mut mean = vec![0.0f64; d];
    for row in x.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = Mat::zeros(d);
    for row in x.chunks(d) {
        let c: Vec<f64> = row.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
        for i in 0..d {
            for j in i..d {
                cov.a[i * d + j] += c[i] * c[j];
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    for i in 0..d {
        for j in i..d {
            let v = cov.a[i * d + j] / denom;
            cov.a[i * d + j] = v;
            cov.a[j * d + i] = v;
        }
    }
    (mean, cov)
}

/// The Fréchet distance between Gaussian fits of two feature sets `a` and `b` (rows of `d`
/// values): `|μa − μb|² + Tr(Σa + Σb − 2 (Σa Σb)^{1/2})`, in float64. The trace of the square
/// root is that of `(Σa^{1/2} Σb Σa^{1/2})^{1/2}`, a symmetric positive semi-definite matrix,
/// from its eigenvalues; those that rounding makes slightly negative count as 0.
///
/// # Errors
/// Fewer than two rows in either set, or non-finite features (named, not averaged in).
pub fn frechet_distance(a: &[f32], b: &[f32], d: usize) -> Result<f64> {
    for (name, x) in [("real", a), ("generated", b)] {
        if x.len() / d < 2 {
            bail!("the Fréchet distance needs at least 2 {name} images");
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            bail!("{name} image {} has a non-finite feature", i / d);
        }
    }
    let (ma, sa) = moments(a, d);
    let (mb, sb) = moments(b, d);
    let mean_term: f64 = ma.iter().zip(&mb).map(|(x, y)| (x - y).powi(2)).sum();
    let (la, va) = symmetric_eigen(&sa);
    let mut root = Mat::zeros(d);
    for (k, &l) in la.iter().enumerate() {
        let s = l.max(0.0).sqrt();
        for i in 0..d {
            for j in 0..d {
                root.a[i * d + j] += s * va.get(i, k) * va.get(j, k);
            }
        }
    }
    let m = root.matmul(&sb).matmul(&root);
    // Symmetrise what rounding left asymmetric before the symmetric solver.
    let m = Mat {
        n: d,
        a: (0..d * d)
            .map(|k| 0.5 * (m.a[k] + m.a[(k % d) * d + k / d]))
            .collect(),
    };
    let (lm, _) = symmetric_eigen(&m);
    let trace_root: f64 = lm.iter().map(|l| l.max(0.0).sqrt()).sum();
    let trace = |s: &Mat| (0..d).map(|i| s.get(i, i)).sum::<f64>();
    Ok((mean_term + trace(&sa) + trace(&sb) - 2.0 * trace_root).max(0.0))
}

/// Where a classifier for the data set fingerprinted `fingerprint` is kept: `dir` (a cache
/// folder), one file per classifier version, data set, geometry, class count and option set.
pub fn classifier_path(
    dir: &Path,
    fingerprint: &str,
    shape: [usize; 3],
    classes: usize,
    opts: &ClassifierOptions,
) -> PathBuf {
    let [c, h, w] = shape;
    dir.join(format!(
        "fd-classifier-v{CLASSIFIER_VERSION}-{fingerprint}-{c}x{h}x{w}-{classes}classes-steps{}-batch{}-lr{}-seed{}-shards{}.safetensors",
        opts.steps, opts.batch, opts.lr, opts.seed, opts.shards
    ))
}

/// The classifier for `train` (fingerprinted, with `labels`): loaded from `cache` when it was
/// trained before, trained and saved there otherwise (the folder is created; a cache that
/// cannot be written is reported on stderr and the classifier still returned).
///
/// Returns the classifier and its file.
///
/// # Errors
/// As [`train_classifier`]; a cached file that does not load.
pub fn load_or_train(
    cache: &Path,
    train: &ImageSet,
    labels: &[u8],
    classes: usize,
    opts: &ClassifierOptions,
    device: &Device,
) -> Result<(FeatureNet, PathBuf)> {
    let shape = [train.c, train.h, train.w];
    let path = classifier_path(cache, &train.fingerprint(), shape, classes, opts);
    if path.exists() {
        let fresh = FeatureNet::new(shape, classes, opts.seed, device);
        return Ok((crate::fsutil::load_model(fresh, &path)?, path));
    }
    let net = train_classifier(train, labels, classes, opts, device)?;
    let saved = std::fs::create_dir_all(cache)
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::fsutil::model_bytes(&net))
        .and_then(|bytes| crate::fsutil::write_atomic(&path, &bytes));
    if let Err(e) = saved {
        eprintln!(
            "note: the quality classifier is not cached ({}: {e:#})",
            path.display()
        );
    }
    Ok((net, path))
}

/// The default cache folder: `$XDG_CACHE_HOME/glowflow`, else `~/.cache/glowflow`, else
/// `.glowflow-cache` in the working directory.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("glowflow");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache").join("glowflow"),
        None => PathBuf::from(".glowflow-cache"),
    }
}

/// How [`measure`] compares a model's samples with the data.
#[derive(Clone, Debug)]
pub struct QualityOptions {
    /// Samples drawn, and real test images compared with them.
    pub n: usize,
    /// How the samples are drawn: temperature, classifier-free guidance weight (`None`: the
    /// conditional prior of a class-conditional model) and score denoising (noise-augmented
    /// models; see [`crate::eval::images::denoise`]).
    pub draw: Draw,
    /// Seed of the samples.
    pub seed: u64,
    /// The classifier's training.
    pub classifier: ClassifierOptions,
    /// Where the classifier is cached.
    pub cache: PathBuf,
}

/// Sample-quality figures of one model (see the module docs; lower `fd_classifier` is better).
#[derive(Clone, Debug, Serialize)]
pub struct QualityReport {
    /// Fréchet distance between `n` test images and the finite ones of `n` samples, in the
    /// classifier's features.
    pub fd_classifier: f64,
    /// Samples left out of `fd_classifier` because they hold non-finite values (a model whose
    /// generative direction overflows: report this count with the distance).
    pub nonfinite_samples: usize,
    /// Where the first non-finite sample's first non-finite value appeared, if any.
    pub first_nonfinite: Option<String>,
    /// The same between `n` test and `n` training images: the floor a perfect model reaches
    /// with this many images.
    pub fd_classifier_real: f64,
    /// The classifier's accuracy on the whole test split.
    pub classifier_test_accuracy: f64,
    /// For a class-conditional model: the share of samples (classes drawn in turn) the
    /// classifier puts in the class they were drawn for.
    pub samples_accuracy: Option<f64>,
    /// Images per set.
    pub n: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Classifier-free guidance weight, when guided.
    pub guidance: Option<f64>,
    /// The denoising step's `σ`, when the samples were denoised.
    pub denoised_sigma: Option<f64>,
    /// The classifier's weights file.
    pub classifier: PathBuf,
}

/// `set` with every pixel quantised to `n_bits` as the model sees it (the low bits cleared),
/// so real images and samples differ only in what the model generates.
pub fn quantised(set: &ImageSet, n_bits: u32) -> ImageSet {
    let shift = 8 - n_bits.min(8);
    ImageSet {
        pixels: set.pixels.iter().map(|&p| (p >> shift) << shift).collect(),
        ..set.clone()
    }
}

/// What every measure against one data set shares: the classifier (trained or loaded once),
/// its test accuracy, and the `n` real test images' features with the test-vs-train floor.
pub struct QualityReference {
    net: FeatureNet,
    classifier: PathBuf,
    classes: usize,
    classifier_test_accuracy: f64,
    /// Images per set.
    n: usize,
    n_bits: u32,
    test: ImageSet,
    f_test: Vec<f32>,
    fd_classifier_real: f64,
    device: Device,
}

impl QualityReference {
    /// The classifier of `data` (trained on its training split, or loaded from `opts.cache`)
    /// and `opts.n` test and training images quantised to `n_bits`, as models of `n_bits` see
    /// them.
    ///
    /// # Errors
    /// No labels (the classifier needs classes), geometry the classifier cannot take, fewer
    /// than 2 images.
    pub fn new(
        data: &crate::data::Splits,
        n_bits: u32,
        opts: &QualityOptions,
        device: &Device,
    ) -> Result<Self> {
        let (Some(train_labels), Some(test_labels)) = (&data.train_labels, &data.test_labels)
        else {
            bail!("the data set has no class labels, which the quality classifier is trained on");
        };
        // The data's classes, not the model's (a model may declare more than the data has).
        let classes = train_labels
            .iter()
            .chain(test_labels)
            .max()
            .map_or(1, |&m| m as usize + 1);
        let (net, classifier) = load_or_train(
            &opts.cache,
            &data.train,
            train_labels,
            classes,
            &opts.classifier,
            device,
        )?;
        let classifier_test_accuracy = accuracy(&net, &data.test, test_labels, device);
        let n = opts.n.min(data.test.n).min(data.train.n);
        let test = quantised(&data.test.take(n), n_bits);
        let train = quantised(&data.train.take(n), n_bits);
        let f_test = features(&net, &test, device);
        let fd_classifier_real =
            frechet_distance(&f_test, &features(&net, &train, device), FEATURES)?;
        Ok(QualityReference {
            net,
            classifier,
            classes,
            classifier_test_accuracy,
            n,
            n_bits,
            test,
            f_test,
            fd_classifier_real,
            device: device.clone(),
        })
    }

    /// Draw `n` samples of `model` (config `cfg`) as `draw` says (seed `seed`), quantise them to
    /// pixels, and compare them with the test images through the classifier.
    ///
    /// # Errors
    /// A model of another `n_bits` than the reference's, fewer than 2 finite samples (the
    /// first non-finite value named).
    pub fn measure(
        &self,
        model: &crate::models::GlowImage,
        cfg: &crate::models::GlowImageConfig,
        draw: &Draw,
        seed: u64,
    ) -> Result<QualityReport> {
        if cfg.n_bits != self.n_bits {
            bail!(
                "the model keeps {} bits per pixel, the quality reference {}",
                cfg.n_bits,
                self.n_bits
            );
        }
        let (n, device) = (self.n, &self.device);
        let k = model.classes().min(self.classes);
        let drawn: Option<Vec<usize>> = (k > 0).then(|| (0..n).map(|i| i % k).collect());
        let d = self.test.dims();
        let (mut values, mut kept_labels) = (Vec::with_capacity(n * d), Vec::with_capacity(n));
        let (mut nonfinite, mut first_nonfinite) = (0usize, None);
        for start in (0..n).step_by(250) {
            let m = (n - start).min(250);
            let labels = drawn.as_ref().map(|l| &l[start..start + m]);
            let seed = seed.wrapping_add(start as u64);
            let batch = super::images::sample_batch_drawn(model, m, draw, seed, labels);
            nonfinite += batch.nonfinite.len();
            first_nonfinite = first_nonfinite.or(batch.first_nonfinite.clone());
            // Non-finite samples are counted and reported, never quantised into pixels.
            for i in (0..m).filter(|i| !batch.nonfinite.contains(i)) {
                let v32: Vec<f32> = batch.values[i * d..(i + 1) * d]
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                values.extend(crate::data::dequant::to_pixels(&v32, cfg.n_bits));
                kept_labels.push(labels.map_or(0, |l| l[i] as u8));
            }
        }
        let finite = values.len() / d;
        if finite < 2 {
            bail!(
                "{nonfinite} of {n} samples at temperature {} hold non-finite values, so no distance is given (first non-finite value at {})",
                draw.temperature,
                first_nonfinite.as_deref().unwrap_or("an unknown place")
            );
        }
        let samples = ImageSet {
            n: finite,
            pixels: values,
            ..self.test.clone()
        };
        let f_samples = features(&self.net, &samples, device);
        let fd_classifier = frechet_distance(&self.f_test, &f_samples, FEATURES)?;
        let samples_accuracy = drawn.map(|_| accuracy(&self.net, &samples, &kept_labels, device));
        Ok(QualityReport {
            fd_classifier,
            nonfinite_samples: nonfinite,
            first_nonfinite,
            fd_classifier_real: self.fd_classifier_real,
            classifier_test_accuracy: self.classifier_test_accuracy,
            samples_accuracy,
            n,
            temperature: draw.temperature,
            // A class-conditional model's unguided draws are the conditional prior's, w = 1.
            guidance: draw.guidance.or((k > 0).then_some(1.0)),
            denoised_sigma: draw.denoise,
            classifier: self.classifier.clone(),
        })
    }
}

/// Measure `model` (trained on `data`): draw `opts.n` samples, quantise them to pixels, and
/// compare them with `opts.n` test images through the classifier (trained on the training
/// split, or loaded from `opts.cache`). Several measures of one data set share one
/// [`QualityReference`].
///
/// # Errors
/// As [`QualityReference::new`] and [`QualityReference::measure`].
pub fn measure(
    model: &crate::models::GlowImage,
    cfg: &crate::models::GlowImageConfig,
    data: &crate::data::Splits,
    opts: &QualityOptions,
    device: &Device,
) -> Result<QualityReport> {
    QualityReference::new(data, cfg.n_bits, opts, device)?
        .measure(model, cfg, &opts.draw, opts.seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    /// `n` rows of independent normals with means `mu` and standard deviations `sd`.
    fn gaussian_rows(n: usize, mu: &[f64], sd: &[f64], seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let z = Normal::new(0.0, 1.0).unwrap();
        (0..n)
            .flat_map(|_| {
                mu.iter()
                    .zip(sd)
                    .map(|(m, s)| (m + s * z.sample(&mut rng)) as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn frechet_distance_matches_the_closed_form() {
        // Independent coordinates: the distance is |μa − μb|² + Σ (σa − σb)².
        let (mu_a, sd_a) = ([0.0, 1.0, -2.0, 0.5], [1.0, 2.0, 0.5, 1.0]);
        let (mu_b, sd_b) = ([1.0, 1.0, -1.0, 0.5], [1.0, 1.0, 1.5, 3.0]);
        let a = gaussian_rows(40_000, &mu_a, &sd_a, 1);
        let b = gaussian_rows(40_000, &mu_b, &sd_b, 2);
        let exact: f64 = mu_a
            .iter()
            .zip(&mu_b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            + sd_a
                .iter()
                .zip(&sd_b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>();
        let fd = frechet_distance(&a, &b, 4).unwrap();
        assert!((fd - exact).abs() < 0.05 * exact, "{fd} vs {exact}");
        // A set against itself: zero up to rounding.
        assert!(frechet_distance(&a, &a, 4).unwrap() < 1e-9);
        // Non-finite features are named, not averaged in.
        let mut bad = a.clone();
        bad[9] = f32::NAN;
        let err = frechet_distance(&bad, &b, 4).unwrap_err().to_string();
        assert!(err.contains("real image 2"), "{err}");
    }
}
