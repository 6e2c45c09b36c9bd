//! Latent-space editing with image Glow, as in Kingma & Dhariwal 2018 (§5.3, Figures 5–8):
//! interpolation between two images through every level's latents, attribute manipulation
//! along the difference of mean latents, and temperature sweeps.
//!
//! Images are encoded from their bins' centres (no dequantisation noise), so an edit of scale
//! 0 reproduces the image; latents are decoded exactly ([`DensityModel::decode`]). Every level's
//! latent is edited, not only the top one: a multi-scale Glow keeps much of an image in its
//! early splits. All work is float32; results come back as 8-bit pixels, and a decoded image
//! holding non-finite values is an error naming it, never a black tile.
//!
//! A model whose couplings read the class ([`GlowImageConfig::coupling_classes`]) has one flow
//! per class: its images are encoded with their own labels and decoded with the same class
//! (interpolations: the one-hot interpolated with the latents), never with the null class,
//! which a model trained without label dropout never learnt. Other models' latents do not
//! depend on the class.

use anyhow::{bail, Result};
use burn::tensor::{Device, Tensor};

use crate::data::dequant::{bin_centres, to_pixels};
use crate::data::images::ImageSet;
use crate::models::glow_image::Latents;
use crate::models::{DensityModel, GlowImage, GlowImageConfig};
use crate::tensor_util::{from_vec, to_vec};

/// The class one-hot `[n, classes]` of images `indices` a model whose couplings read the
/// class encodes and decodes them with (`labels`: the set's); `None` for other models.
///
/// # Errors
/// Such a model without labels, or a label past its classes.
pub fn class_context(
    cfg: &GlowImageConfig,
    labels: Option<&[u8]>,
    indices: &[usize],
    device: &Device,
) -> Result<Option<Tensor<2>>> {
    let classes = cfg.coupling_classes();
    if classes == 0 {
        return Ok(None);
    }
    let Some(labels) = labels else {
        bail!("this model reads the class in every coupling: editing its images needs their labels, and the data set has none");
    };
    let mut ks = Vec::with_capacity(indices.len());
    for &i in indices {
        match labels.get(i) {
            Some(&k) if (k as usize) < classes => ks.push(k as usize),
            Some(&k) => bail!("image {i} has label {k}; the model has {classes} classes"),
            None => bail!("image {i} has no label ({} labels)", labels.len()),
        }
    }
    Ok(Some(crate::models::glow_image::one_hot(
        &ks, classes, device,
    )))
}

/// The latents of images `indices` of `set` (every level's, in
/// [`GlowImage::forward_latents`]'s order), each encoded with its own class (`labels`, the
/// set's) when the model's couplings read it.
///
/// # Errors
/// An index past the set's end; as [`class_context`].
pub fn encode(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    set: &ImageSet,
    labels: Option<&[u8]>,
    indices: &[usize],
    device: &Device,
) -> Result<Latents> {
    check_indices(set, indices)?;
    let ctx = class_context(cfg, labels, indices, device)?;
    Ok(encode_as(model, cfg, set, indices, ctx.as_ref(), device))
}

/// An error naming the first of `indices` past the end of `set`.
fn check_indices(set: &ImageSet, indices: &[usize]) -> Result<()> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= set.n) {
        bail!(
            "image {bad} does not exist (the split has {} images)",
            set.n
        );
    }
    Ok(())
}

/// [`encode`] with the class context `ctx` given (indices checked).
fn encode_as(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    set: &ImageSet,
    indices: &[usize],
    ctx: Option<&Tensor<2>>,
    device: &Device,
) -> Latents {
    let px: Vec<u8> = indices
        .iter()
        .flat_map(|&i| set.image(i).iter().copied())
        .collect();
    let x = from_vec(
        bin_centres(&px, cfg.n_bits),
        [indices.len(), set.c, set.h, set.w],
        device,
    );
    model.forward_latents(x, ctx).1
}

/// Decode latents to 8-bit pixels `[n, c, h, w]`, for the class one-hot `ctx` `[n, classes]`
/// of a model whose couplings read the class (see [`class_context`]).
///
/// # Errors
/// Names the images whose decoding holds non-finite values.
pub fn decode_pixels(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    zs: &Latents,
    ctx: Option<&Tensor<2>>,
) -> Result<Vec<u8>> {
    checked_pixels(model.decode(zs, ctx), cfg)
}

/// Decoded images `x: [n, c, h, w]` as 8-bit pixels; an error naming the non-finite ones.
fn checked_pixels(x: Tensor<4>, cfg: &GlowImageConfig) -> Result<Vec<u8>> {
    let n = x.dims()[0];
    let x = to_vec(x);
    let per = x.len() / n.max(1);
    let bad: Vec<usize> = (0..n)
        .filter(|&i| x[i * per..(i + 1) * per].iter().any(|v| !v.is_finite()))
        .collect();
    if !bad.is_empty() {
        return Err(crate::error::NonFinite(format!(
            "{} of {n} edited images decode to non-finite values (images {:?}; a smaller edit or temperature stays where the model was trained)",
            bad.len(),
            &bad[..bad.len().min(20)]
        ))
        .into());
    }
    Ok(to_pixels(&x, cfg.n_bits))
}

/// Row `i` of every level's latent (`[1, ...]` each).
fn row(zs: &Latents, i: usize) -> Latents {
    zs.iter()
        .map(|z| {
            let [_, c, h, w] = z.dims();
            z.clone().slice([i..i + 1, 0..c, 0..h, 0..w])
        })
        .collect()
}

/// Stack latents of one image each into one batch.
fn stack(rows: Vec<Latents>) -> Latents {
    let levels = rows[0].len();
    (0..levels)
        .map(|l| Tensor::cat(rows.iter().map(|r| r[l].clone()).collect(), 0))
        .collect()
}

/// `a + s * d`, level by level.
fn axpy(a: &Latents, s: f64, d: &Latents) -> Latents {
    a.iter()
        .zip(d)
        .map(|(a, d)| a.clone() + d.clone().mul_scalar(s))
        .collect()
}

/// Interpolations between image pairs: for each `(a, b)` of `pairs` (indices into `set`), `steps`
/// images with latents `(1 − t) z_a + t z_b`, `t = 0, 1/(steps − 1), …, 1`, at every level
/// (and, for a model whose couplings read the class, the one-hot `(1 − t) y_a + t y_b`).
/// Returns the pixels, one row of `steps` images per pair (the ends reproduce the two images).
///
/// # Errors
/// As [`encode`] and [`decode_pixels`]; `steps < 2`.
pub fn interpolate(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    set: &ImageSet,
    labels: Option<&[u8]>,
    pairs: &[(usize, usize)],
    steps: usize,
    device: &Device,
) -> Result<Vec<u8>> {
    if steps < 2 {
        bail!("an interpolation needs at least 2 steps, not {steps}");
    }
    if pairs.is_empty() {
        bail!("no image pairs to interpolate between");
    }
    let ends: Vec<usize> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    check_indices(set, &ends)?;
    let ys = class_context(cfg, labels, &ends, device)?;
    let zs = encode_as(model, cfg, set, &ends, ys.as_ref(), device);
    let mut rows = Vec::with_capacity(pairs.len() * steps);
    let mut ctx = Vec::new();
    for p in 0..pairs.len() {
        let (za, zb) = (row(&zs, 2 * p), row(&zs, 2 * p + 1));
        let diff: Latents = zb
            .iter()
            .zip(&za)
            .map(|(b, a)| b.clone() - a.clone())
            .collect();
        for s in 0..steps {
            let t = s as f64 / (steps - 1) as f64;
            rows.push(axpy(&za, t, &diff));
            if let Some(ys) = &ys {
                let k = ys.dims()[1];
                let ya = ys.clone().slice([2 * p..2 * p + 1, 0..k]);
                let yb = ys.clone().slice([2 * p + 1..2 * p + 2, 0..k]);
                ctx.push(ya.mul_scalar(1.0 - t) + yb.mul_scalar(t));
            }
        }
    }
    let ctx = (!ctx.is_empty()).then(|| Tensor::cat(ctx, 0));
    decode_pixels(model, cfg, &stack(rows), ctx.as_ref())
}

/// The attribute direction of Glow's §5.3: the mean latent (every level) of the images of
/// `set` whose label is `class`, minus the mean of those whose label is not, over the first
/// `limit` images.
///
/// # Errors
/// Labels that do not cover the images, or a class with no image (or every image) in the
/// first `limit`.
pub fn attribute_direction(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    set: &ImageSet,
    labels: &[u8],
    class: usize,
    limit: usize,
    device: &Device,
) -> Result<Latents> {
    if labels.len() < set.n {
        bail!("{} labels for {} images", labels.len(), set.n);
    }
    let n = set.n.min(limit);
    let (with, without): (Vec<usize>, Vec<usize>) =
        (0..n).partition(|&i| labels[i] as usize == class);
    if with.is_empty() || without.is_empty() {
        bail!(
            "class {class} has {} of the first {n} images: an attribute needs images with and without it",
            with.len()
        );
    }
    let mean = |idx: &[usize]| -> Result<Latents> {
        let mut sum: Option<Latents> = None;
        for chunk in idx.chunks(250) {
            let zs = encode(model, cfg, set, Some(labels), chunk, device)?;
            let part: Latents = zs.into_iter().map(|z| z.sum_dim(0)).collect();
            sum = Some(match sum {
                None => part,
                Some(s) => s.into_iter().zip(part).map(|(a, b)| a + b).collect(),
            });
        }
        let k = idx.len() as f64;
        Ok(sum
            .expect("at least one image")
            .into_iter()
            .map(|s| s.div_scalar(k))
            .collect())
    };
    let (a, b) = (mean(&with)?, mean(&without)?);
    Ok(a.into_iter().zip(b).map(|(a, b)| a - b).collect())
}

/// Images `images` of `set` moved along `direction` by each of `scales`: one row per image,
/// one column per scale (scale 0 reproduces the image). A model whose couplings read the class
/// encodes and decodes each image with its own label (`labels`, the set's).
///
/// # Errors
/// As [`encode`] and [`decode_pixels`].
#[allow(clippy::too_many_arguments)]
pub fn manipulate(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    set: &ImageSet,
    labels: Option<&[u8]>,
    images: &[usize],
    direction: &Latents,
    scales: &[f64],
    device: &Device,
) -> Result<Vec<u8>> {
    if images.is_empty() || scales.is_empty() {
        bail!("an attribute edit needs at least one image and one scale");
    }
    let zs = encode(model, cfg, set, labels, images, device)?;
    // Each image's own class, once per scale.
    let per_row: Vec<usize> = images
        .iter()
        .flat_map(|&i| std::iter::repeat_n(i, scales.len()))
        .collect();
    let ctx = class_context(cfg, labels, &per_row, device)?;
    let mut rows = Vec::with_capacity(images.len() * scales.len());
    for i in 0..images.len() {
        let z = row(&zs, i);
        for &s in scales {
            rows.push(axpy(&z, s, direction));
        }
    }
    decode_pixels(model, cfg, &stack(rows), ctx.as_ref())
}

/// Samples at each temperature of `temperatures`, `n` per row, the same standard-normal draws
/// in every row (seed `seed`), so a column shows one sample as the temperature changes. `ctx`:
/// the class one-hot `[n, classes]` of a class-conditional model (all zeros: the null class of
/// a model trained with label dropout). A noise-augmented model's samples are denoised, as
/// `sample` does.
///
/// # Errors
/// As [`decode_pixels`].
pub fn temperature_sweep(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    temperatures: &[f64],
    n: usize,
    seed: u64,
    ctx: Option<&Tensor<2>>,
) -> Result<Vec<u8>> {
    use rand::SeedableRng;
    // Decoded in float64 (the float32 weights cast exactly), as `sample` decodes.
    let model = &crate::tensor_util::cast_module(model.clone(), burn::tensor::DType::F64);
    let mut px = Vec::new();
    for &t in temperatures {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (mut x, _) = model.sample_with_latents(n, t, ctx, &mut rng);
        if let Some(sigma) = cfg.dequantization.noise_sigma() {
            x = crate::eval::images::denoise(model, x, sigma, ctx);
        }
        px.extend(checked_pixels(x, cfg)?);
    }
    Ok(px)
}
