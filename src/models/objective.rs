//! Image Glow's objective in one place (Glow §3, DESIGN §3; Flow++ §3.1 for the variational
//! bound): how images become the model's input ([`Dequantization`]: uniform, variational or
//! noisy), the bound a batch is trained and measured with (bits/dim, [`bpd_of`]), the class
//! loss of a class-conditional model ([`class_bits`]), and the columns of a training batch's
//! rows ([`BatchLayout`]: the input, then the class one-hots). Training
//! ([`batch_loss`]) and evaluation (`eval::images`) read it from here.

use burn::tensor::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{DensityModel, DequantizerConfig, GlowImage, GlowImageConfig};
use crate::data::ImageSet;

/// How the discrete pixels become the continuous images the flow's density is of: part of an
/// image model's config (`state.json`: `{"kind": "uniform"}`, `{"kind": "variational", "depth":
/// 0, "hidden": 16}`, `{"kind": "noisy", "sigma": 0.05}`; runs saved before format 4 held
/// `noise_sigma` and `dequantizer` instead and load as these).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Dequantization {
    /// `x + u`, `u ~ U[0, 2^-n_bits)`: the bits/dim is an upper bound on the discrete one, and
    /// comparable with published figures at 8 bits.
    #[default]
    Uniform,
    /// `x + u`, `u ~ q(u | x)` from a flow trained with the model (Flow++ §3.1): a tighter
    /// bound, `log p(x + u) - log q(u | x)`.
    Variational(DequantizerConfig),
    /// Uniform dequantisation plus Gaussian noise of standard deviation `sigma` in training and
    /// evaluation (noise augmentation, TarFlow, Zhai et al. 2024, §2.4): the density is that
    /// of the noisy images, so its bits/dim is not comparable with a model's without noise;
    /// samples are denoised with one score step (see [`crate::eval::images::denoise`]).
    Noisy {
        /// Standard deviation in the data range's units (`[-0.5, 0.5]`), in `(0, 1]`.
        sigma: f64,
    },
}

impl Dequantization {
    /// The noise's standard deviation of a noise-augmented model.
    pub fn noise_sigma(&self) -> Option<f64> {
        match self {
            Dequantization::Noisy { sigma } => Some(*sigma),
            _ => None,
        }
    }

    /// The variational dequantiser's config.
    pub fn variational(&self) -> Option<&DequantizerConfig> {
        match self {
            Dequantization::Variational(q) => Some(q),
            _ => None,
        }
    }

    /// The `state.json` model of a run saved before format 4 (`noise_sigma`, `dequantizer`)
    /// rewritten as this type's field `dequantization`; a model that has it is left alone.
    pub fn migrate_legacy(model: &mut serde_json::Value) {
        let Some(m) = model.as_object_mut() else {
            return;
        };
        if m.contains_key("dequantization") || !m.contains_key("levels") {
            return;
        }
        let sigma = m
            .remove("noise_sigma")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        let q = m.remove("dequantizer").filter(|v| !v.is_null());
        let kind = match (q, sigma) {
            (Some(mut q), _) => {
                if let Some(o) = q.as_object_mut() {
                    o.insert("kind".into(), "variational".into());
                }
                q
            }
            (None, s) if s > 0.0 => serde_json::json!({"kind": "noisy", "sigma": s}),
            (None, _) => serde_json::json!({"kind": "uniform"}),
        };
        m.insert("dequantization".into(), kind);
    }
}

/// Mean bits/dim of a batch from per-image continuous log-densities.
pub fn bpd_of(logp: Tensor<1>, d: usize, n_bits: u32) -> Tensor<1> {
    let ln_bins = (1u64 << n_bits) as f64;
    logp.neg()
        .add_scalar(d as f64 * ln_bins.ln())
        .mean()
        .div_scalar(d as f64 * std::f64::consts::LN_2)
}

/// Columns of one image's model-input row: `D` values, or `2D` with a variational
/// dequantiser (the bin edges, then the standard normal noise `q(u | x)` is drawn from).
pub fn input_width(cfg: &GlowImageConfig) -> usize {
    match &cfg.dequantization {
        Dequantization::Variational(_) => 2 * cfg.dims(),
        Dequantization::Uniform | Dequantization::Noisy { .. } => cfg.dims(),
    }
}

/// The model-input rows of the images `idx` of `set`, one image per row (host, deterministic
/// for `rng`'s state):
/// - uniform dequantisation: `x + u`, `u ~ U[0, 2^-n_bits)` (DESIGN §3);
/// - noisy: the same plus `N(0, σ²)` noise (noise augmentation);
/// - variational dequantisation: the lower bin edges `x`, then `N(0, I)` draws (`u` is drawn
///   from `q(u | x)` inside the model, so its gradient reaches `q`).
pub fn input_rows(
    cfg: &GlowImageConfig,
    set: &ImageSet,
    idx: &[usize],
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    use rand_distr::{Distribution, StandardNormal};
    let d = cfg.dims();
    let deq = &cfg.dequantization;
    if let Dequantization::Variational(_) = deq {
        let mut out = Vec::with_capacity(2 * idx.len() * d);
        for &i in idx {
            out.extend(crate::data::dequant::bin_edges(set.image(i), cfg.n_bits));
            out.extend((0..d).map(|_| {
                let e: f64 = StandardNormal.sample(rng);
                e as f32
            }));
        }
        return out;
    }
    let mut rows = crate::data::stream::image_rows(set, idx, cfg.n_bits, rng);
    if let Dequantization::Noisy { sigma } = deq {
        for v in &mut rows {
            let e: f64 = StandardNormal.sample(rng);
            *v += (*sigma * e) as f32;
        }
    }
    rows
}

/// The images a model's density is evaluated at, from model-input rows `[N, input_width]` (see
/// [`input_rows`]), and `log q(u | x)` per image `[N]` with a variational dequantiser (whose
/// bound is then `log p(y) - log q(u | x)`).
pub fn input_images(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    rows: Tensor<2>,
) -> (Tensor<4>, Option<Tensor<1>>) {
    let n = rows.dims()[0];
    let (d, shape) = (cfg.dims(), [n, cfg.channels, cfg.height, cfg.width]);
    let x = rows.clone().narrow(1, 0, d).reshape(shape);
    let Dequantization::Variational(_) = cfg.dequantization else {
        return (x, None);
    };
    let eps = rows.narrow(1, d, d).reshape(shape);
    let (y, log_q) = model
        .variational_input(x, eps, cfg.n_bits)
        .expect("the config and the model agree on the dequantiser");
    (y, Some(log_q))
}

/// [`input_rows`] of the images `idx` of `set` on `device`, through [`input_images`].
pub fn input_batch(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    set: &ImageSet,
    idx: &[usize],
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> (Tensor<4>, Option<Tensor<1>>) {
    let rows = input_rows(cfg, set, idx, rng);
    let rows = crate::tensor_util::from_vec(rows, [idx.len(), input_width(cfg)], device);
    input_images(model, cfg, rows)
}

/// The per-image term of the likelihood bound: `log p(y) - log q(u | x)` with a variational
/// dequantiser's `log q` (Flow++ eq. 12), else `log p(y)` (uniform: `q = 1`).
pub fn minus_log_q(logp: Tensor<1>, log_q: Option<Tensor<1>>) -> Tensor<1> {
    match log_q {
        Some(q) => logp - q,
        None => logp,
    }
}

/// What an image model's bits/dim measures, for reports: uniform dequantisation (comparable
/// with published figures at 8 bits), the variational bound, or a noise-augmented density
/// (not comparable).
pub fn bpd_meaning(cfg: &GlowImageConfig) -> String {
    match &cfg.dequantization {
        Dequantization::Noisy { sigma } => format!(
            "noise-augmented (sigma {sigma}): bits/dim of the noisy images, not comparable with other models"
        ),
        Dequantization::Variational(_) => {
            "variational dequantisation: a one-draw estimate of an upper bound on the discrete bits/dim"
                .into()
        }
        Dequantization::Uniform => {
            "uniform dequantisation: a one-draw estimate of an upper bound on the discrete bits/dim"
                .into()
        }
    }
}

/// The columns of one row of a training batch (data-parallel training splits a batch's host
/// rows into shards, so a batch is one `[n, width]` buffer): the image's model input
/// ([`input_width`] values), then for a class-conditional model the one-hot of its true class,
/// then with label dropout a second copy, the prior's, which dropout zeroes (the null class)
/// while the class loss keeps reading the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    /// Model-input values per image.
    pub input: usize,
    /// Classes `K` (0: unconditional, no one-hot columns).
    pub classes: usize,
    /// Whether rows carry the prior's copy of the one-hot (label dropout).
    pub dropout: bool,
}

/// A batch's columns by meaning ([`BatchLayout::split`]).
pub struct BatchColumns {
    /// The model input `[n, input]`.
    pub input: Tensor<2>,
    /// The true classes' one-hots `[n, K]` (class-conditional models).
    pub truth: Option<Tensor<2>>,
    /// The one-hots the prior is conditioned on `[n, K]` (the truth, or its dropped copy).
    pub prior: Option<Tensor<2>>,
}

impl BatchLayout {
    /// The layout of `cfg`'s training rows, with or without label dropout.
    pub fn new(cfg: &GlowImageConfig, label_dropout: f64) -> Self {
        BatchLayout {
            input: input_width(cfg),
            classes: cfg.classes,
            dropout: label_dropout > 0.0,
        }
    }

    /// Copies of the one-hot per row: 1, or 2 with label dropout (0 without classes).
    pub fn copies(&self) -> usize {
        match (self.classes, self.dropout) {
            (0, _) => 0,
            (_, true) => 2,
            (_, false) => 1,
        }
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.input + self.classes * self.copies()
    }

    /// Rows of this layout from the model-input rows `input` of the images `idx` and their
    /// `labels` (indexed by image), the prior's copy dropped with probability `dropout.0` from
    /// `dropout.1`'s draws (its own stream, so the data and dequantisation noise are those of a
    /// run without dropout).
    pub fn pack(
        &self,
        input: Vec<f32>,
        idx: &[usize],
        labels: Option<&[u8]>,
        dropout: (f64, &mut ChaCha8Rng),
    ) -> Vec<f32> {
        use crate::data::stream::{drop_labels, with_one_hot};
        let (w, k) = (self.input, self.classes);
        let Some(labels) = labels.filter(|_| k > 0) else {
            return input;
        };
        let rows = with_one_hot(&input, w, idx, labels, k);
        if !self.dropout {
            return rows;
        }
        let mut rows = with_one_hot(&rows, w + k, idx, labels, k);
        drop_labels(&mut rows, w + k, k, dropout.0, dropout.1);
        rows
    }

    /// A batch `[n, width]`'s columns by meaning.
    pub fn split(&self, x: Tensor<2>) -> BatchColumns {
        let (w, k, copies) = (self.input, self.classes, self.copies());
        if copies == 0 {
            return BatchColumns {
                input: x.narrow(1, 0, w),
                truth: None,
                prior: None,
            };
        }
        BatchColumns {
            input: x.clone().narrow(1, 0, w),
            prior: Some(x.clone().narrow(1, w + (copies - 1) * k, k)),
            truth: Some(x.narrow(1, w, k)),
        }
    }
}

/// Cross-entropy of a class head's `logits` `[n, K]` against the true one-hots `truth`, in
/// bits per image, `[1]` (openai/glow's `bits_y`).
pub fn class_bits(logits: Tensor<2>, truth: Tensor<2>) -> Tensor<1> {
    let log_q = burn::tensor::activation::log_softmax(logits, 1);
    (log_q * truth)
        .sum_dim(1)
        .mean()
        .neg()
        .div_scalar(std::f64::consts::LN_2)
        .reshape([1])
}

/// The training objective of a batch `x` of `layout` (`[1]`): the mean bits/dim of the bound
/// ([`bpd_of`] of `log p(y) - log q(u | x)`), plus `weight_y` times the class loss
/// ([`class_bits`]) of a class-conditional model (Glow §5: the class-conditional top prior and
/// its class head).
pub fn batch_loss(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    layout: &BatchLayout,
    x: Tensor<2>,
    weight_y: f64,
) -> Tensor<1> {
    let (d, n_bits) = (cfg.dims(), cfg.n_bits);
    let cols = layout.split(x);
    let (img, log_q) = input_images(model, cfg, cols.input);
    let (Some(y), Some(truth)) = (cols.prior, cols.truth) else {
        return bpd_of(minus_log_q(model.log_prob(img, None), log_q), d, n_bits);
    };
    let (logp, zs) = model.forward_latents(img, Some(&y));
    let bpd = bpd_of(minus_log_q(logp, log_q), d, n_bits);
    if weight_y == 0.0 {
        return bpd;
    }
    let top = zs.last().expect("a top latent").clone();
    let logits = model.class_logits(top).expect("conditional model");
    bpd + class_bits(logits, truth).mul_scalar(weight_y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model saved before format 4 (`noise_sigma`, `dequantizer`) loads with the same
    /// dequantisation; one saved since keeps its own.
    #[test]
    fn legacy_dequantisation_fields_migrate() {
        let q = DequantizerConfig {
            depth: 1,
            hidden: 4,
        };
        let cases = [
            (
                serde_json::json!(0.0),
                serde_json::Value::Null,
                Dequantization::Uniform,
            ),
            (
                serde_json::json!(0.05),
                serde_json::Value::Null,
                Dequantization::Noisy { sigma: 0.05 },
            ),
            (
                serde_json::json!(0.0),
                serde_json::to_value(&q).unwrap(),
                Dequantization::Variational(q.clone()),
            ),
        ];
        for (sigma, dequantizer, want) in cases {
            let cfg = GlowImageConfig {
                dequantization: want.clone(),
                ..GlowImageConfig::new(1, 8, 8)
            };
            let mut v = serde_json::to_value(&cfg).unwrap();
            let m = v.as_object_mut().unwrap();
            m.remove("dequantization");
            m.insert("noise_sigma".into(), sigma);
            m.insert("dequantizer".into(), dequantizer);
            Dequantization::migrate_legacy(&mut v);
            let back: GlowImageConfig = serde_json::from_value(v).unwrap();
            assert_eq!(back, cfg);
            // Written in the new form, read back unchanged and left alone by the migration.
            let mut v = serde_json::to_value(&cfg).unwrap();
            Dequantization::migrate_legacy(&mut v);
            assert_eq!(serde_json::from_value::<GlowImageConfig>(v).unwrap(), cfg);
        }
    }
}
