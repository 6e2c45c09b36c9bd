//! Multi-scale Glow for images (Kingma & Dhariwal 2018, Fig. 2): L levels of
//! squeeze -> K x [ActNorm -> 1x1 conv -> coupling] -> split, the split factoring out half the
//! channels under a Gaussian whose mean and log-std come from a zero-initialised conv of the
//! kept half. The last level keeps everything, under a learned (or standard) top prior.
//!
//! Class-conditional Glow (openai/glow's `--ycond`): with `classes > 0` the top prior's
//! per-channel mean and log-std are shifted by a zero-initialised linear map of the class
//! one-hot (the context `[N, classes]`), and a zero-initialised linear head on the spatial mean
//! of the top latent predicts the class (the optional `--weight-y` loss). `log p(x | y)` for every
//! class costs one pass, which gives a training-free classifier `argmax_y log p(x | y)`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dequantizer::VariationalDequantizer;
use super::objective::Dequantization;
use super::DensityModel;
use crate::distributions::LN_2PI;
use crate::flow::{Context, Flow};
use crate::layers::squeeze::{squeeze, unsqueeze, Squeeze};
use crate::layers::{
    ActNorm, AdditiveCoupling, AffineCoupling, AffineScale, FlowSequence, Layer, Permutation,
};
use crate::nets::{CouplingNet, Dense, GlowConvNet, ZeroConv2d};
use crate::tensor_util::{trainable, with_sequential_param_ids};

/// The sampling temperature of image Glow's pictures when none is given: the prior's standard
/// deviation scaled by 0.7 (Glow §5.3, "reduced-temperature" samples). One value for the preview
/// grids, `sample`, `quality` and the benchmark.
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

/// The coupling of every flow step of image Glow (Glow §3.3; NICE for additive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ImageCoupling {
    /// Glow's affine coupling `(x + t) * s`, `s = sigmoid(raw + 2)` in the form
    /// [`GlowImageConfig::affine_scale`] says (bounded below by default).
    Affine,
    /// Additive coupling `x + t`.
    Additive,
    /// A rational-quadratic spline per value (neural spline flows' RQ-NSF (C), 1906.04032
    /// §3): [`DEFAULT_BINS`](crate::layers::spline::DEFAULT_BINS) bins on `[-5, 5]`,
    /// identity outside.
    Spline,
}

/// Where a class-conditional image Glow reads its class. New models read it in their couplings
/// (measured on Fashion-MNIST at equal time: 87 % of samples in their class at guidance 3
/// against 28 % for the top prior alone; `docs/splines.md`); runs saved before the choice
/// existed read it in the top prior.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ClassConditioning {
    /// The top prior only (openai/glow's `--ycond`): a per-class shift of the top prior's mean
    /// and log-std; the flow steps and split priors are the same for every class.
    #[default]
    Prior,
    /// The top prior, and the class's one-hot as extra input channels (constant over
    /// positions) of every coupling network and every split prior, so each class has its own
    /// flow: the first convolution's weights on those channels are a learned class embedding
    /// per network (conditional Glow variants; cf. SRFlow, Lugmayr et al. 2020).
    Couplings,
}

/// Everything needed to rebuild an image Glow (stored in checkpoints).
///
/// # Shapes
/// Images `[N, channels, height, width]`; the top latent
/// `[N, channels * 2^(levels+1), height / 2^levels, width / 2^levels]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlowImageConfig {
    /// Image channels `C` (1 grey, 3 RGB).
    pub channels: usize,
    /// Image height in pixels (divisible by `2^levels`).
    pub height: usize,
    /// Image width in pixels (divisible by `2^levels`).
    pub width: usize,
    /// Number of levels `L` (each squeezes; all but the last split off half the channels).
    pub levels: usize,
    /// Flow steps `K` per level (saved before format 4 as `depth`).
    #[serde(alias = "depth")]
    pub steps_per_level: usize,
    /// Coupling-CNN width (saved before format 4 as `hidden`).
    #[serde(alias = "hidden")]
    pub net_width: usize,
    /// Coupling form of every step.
    pub coupling: ImageCoupling,
    /// Channel-mixing layer of every step (invertible 1x1 convolution, or a fixed permutation).
    pub permutation: Permutation,
    /// Bits per pixel kept (8 for published bits/dim); the dequantisation bin width is `2^-n_bits`.
    pub n_bits: u32,
    /// Learn the top prior's mean and log-std per position (false: `N(0, I)`).
    pub learn_top: bool,
    /// Seed of the parameter initialisation.
    pub init_seed: u64,
    /// Number of classes of a class-conditional model (0: unconditional; runs saved before it
    /// existed are unconditional).
    #[serde(default)]
    pub classes: usize,
    /// How pixels become continuous images: uniform, variational (Flow++ §3.1) or noisy
    /// (noise augmentation); see [`Dequantization`].
    #[serde(default)]
    pub dequantization: Dequantization,
    /// The affine couplings' scale form (runs saved before it existed: Glow's exact form,
    /// which they were trained with). Unused by additive couplings.
    #[serde(default = "AffineScale::legacy")]
    pub affine_scale: AffineScale,
    /// Where a class-conditional model reads its class (runs saved before it existed: the top
    /// prior only). Unused when `classes` is 0.
    #[serde(default)]
    pub class_conditioning: ClassConditioning,
}

impl GlowImageConfig {
    /// Classes every coupling network and split prior reads (0 unless the model conditions its
    /// couplings on a class).
    pub fn coupling_classes(&self) -> usize {
        match self.class_conditioning {
            ClassConditioning::Couplings => self.classes,
            ClassConditioning::Prior => 0,
        }
    }

    /// The recipe's model for `[channels, height, width]` images (openai/glow's, narrowed for
    /// a CPU): 3 levels of 6 flow steps, coupling CNNs 64 wide, affine couplings, LU 1x1
    /// convolutions, 8 bits, a learned top prior, unconditional, seed 0.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        GlowImageConfig {
            channels,
            height,
            width,
            levels: 3,
            steps_per_level: 6,
            net_width: 64,
            coupling: ImageCoupling::Affine,
            permutation: Permutation::Lu,
            n_bits: 8,
            learn_top: true,
            init_seed: 0,
            classes: 0,
            dequantization: Dequantization::Uniform,
            affine_scale: AffineScale::Bounded,
            class_conditioning: ClassConditioning::Couplings,
        }
    }

    /// Check every field against [`crate::limits`]: levels in 1..=12 with image sides divisible
    /// by 2^levels, sides up to 4096, depth, width and channels bounded, `n_bits` in 1..=8. The
    /// error names the field and the flag that sets it.
    pub fn validate(&self) -> Result<(), crate::error::FieldError> {
        use crate::error::FieldError;
        use crate::limits::{count, MAX_FLOW_STEPS, MAX_IMAGE_SIDE, MAX_LEVELS, MAX_WIDTH};
        count("levels", "levels", self.levels, 1, MAX_LEVELS)?;
        count(
            "steps_per_level",
            "steps_per_level",
            self.steps_per_level,
            1,
            MAX_FLOW_STEPS,
        )?;
        count("net_width", "net_width", self.net_width, 1, MAX_WIDTH)?;
        count("channels", "data", self.channels, 1, 64)?;
        count("height", "pad", self.height, 1, MAX_IMAGE_SIDE)?;
        count("width", "pad", self.width, 1, MAX_IMAGE_SIDE)?;
        let f = 1usize << self.levels;
        if !self.height.is_multiple_of(f) || !self.width.is_multiple_of(f) {
            return Err(FieldError::new(
                "levels",
                "levels",
                self.levels,
                format!(
                    "images of {}x{} cannot be squeezed {} times (need sides divisible by {f}; try `pad`)",
                    self.height, self.width, self.levels
                ),
            ));
        }
        count("n_bits", "n_bits", self.n_bits as usize, 1, 8)?;
        count("classes", "classes", self.classes, 0, 1 << 16)?;

        match &self.dequantization {
            Dequantization::Uniform => {}
            Dequantization::Noisy { sigma } => crate::limits::number(
                "dequantization.sigma",
                "noise_sigma",
                *sigma,
                0.0,
                true,
                1.0,
            )?,
            Dequantization::Variational(q) => {
                count(
                    "dequantization.depth",
                    "dequant_depth",
                    q.depth,
                    0,
                    MAX_FLOW_STEPS,
                )?;
                count(
                    "dequantization.hidden",
                    "dequant_width",
                    q.hidden,
                    1,
                    MAX_WIDTH,
                )?;
            }
        }
        Ok(())
    }

    /// Bytes a training step holds per image (activations kept for the backward pass, float32)
    /// with the coupling networks' convolutions composed of tensor ops (any backend, float64),
    /// a rough upper estimate used to refuse batch sizes that cannot fit in memory. A sampling
    /// or evaluation pass holds about half.
    pub fn activation_bytes_per_image(&self) -> f64 {
        self.kept_bytes_per_image(false)
    }

    /// [`activation_bytes_per_image`](Self::activation_bytes_per_image) of a training step,
    /// with the convolutions `fused` ([`crate::ops::conv::fused_on`]) or composed.
    fn kept_bytes_per_image(&self, fused: bool) -> f64 {
        let mut total = 0.0;
        for l in 0..self.levels {
            total += self.steps_per_level as f64 * self.step_values_per_image(l, fused);
        }
        total * 4.0
    }

    /// Bytes the activations of a training step of `batch` images in `shards` data-parallel
    /// shards hold with invertible backpropagation (`train::low_memory`): every level's flow
    /// input, output, their gradients and the inputs kept every
    /// [`KEEP_EVERY_STEPS`](crate::train::low_memory::KEEP_EVERY_STEPS) steps for every image,
    /// plus the widest flow step's activations for one backward chunk per shard
    /// ([`LAYER_CHUNK_BYTES`](crate::train::low_memory::LAYER_CHUNK_BYTES)). The same
    /// calibration as [`activation_bytes_per_image`](Self::activation_bytes_per_image).
    pub fn low_memory_bytes(&self, batch: usize, shards: usize, fused: bool) -> f64 {
        use crate::train::low_memory::{chunk_images, KEEP_EVERY_STEPS, LAYER_CHUNK_BYTES};
        let mut kept = 0.0;
        let mut widest: f64 = 0.0;
        for l in 0..self.levels {
            let [c, h, w] = self.level_shape(l);
            let anchors = match self.coupling {
                ImageCoupling::Spline => 3 * self.steps_per_level,
                _ => self.steps_per_level.div_ceil(KEEP_EVERY_STEPS),
            };
            kept += ((8 + anchors) * c * h * w) as f64;
            let chunk = chunk_images(self.net_width * h * w * 4, LAYER_CHUNK_BYTES);
            let images = batch.min(chunk * shards.max(1));
            widest = widest.max(self.step_values_per_image(l, fused) * images as f64);
        }
        (kept * batch as f64 + widest) * 4.0
    }

    /// Values one flow step at level `l` keeps for its backward pass per image: ActNorm, 1x1
    /// convolution, coupling input/output (8 per input value), and the coupling CNN's hidden
    /// activations with what the backward pass allocates beside them (per hidden channel: 9
    /// composed, 3 fused). Calibrated on the paper's CIFAR-10 model (width 512, batch 64,
    /// `bench --workload paper-cifar --steps-per-level K`): composed, K = 8 / 16 peaked at 3,333
    /// and 6,271 MiB, 5.7 MiB per image and K over the three levels (this gives 6.4); fused
    /// with their ActNorms, K = 8 / 32 at 1,175 and 4,013 MiB, 1.85 MiB (this gives 2.1).
    fn step_values_per_image(&self, l: usize, fused: bool) -> f64 {
        let [c, h, w] = self.level_shape(l);
        let hidden = if fused { 3 } else { 9 };
        (c * 8 + self.net_width * hidden) as f64 * (h * w) as f64
    }

    /// Bytes a training step of `batch` images in `shards` data-parallel shards needs, with
    /// the convolutions `fused` ([`crate::ops::conv::fused_on`]) or composed: the activations
    /// it holds (ordinary or invertible backpropagation) or those of the ActNorm initialisation
    /// of `init_batch` images (one layer at a time, no backward pass, composed), whichever is
    /// more, plus five float32 copies of the weights (weights, gradients, Adam's two moments,
    /// the updated weights) and half a GiB for the process: the figure `train` and `bench`
    /// compare with the memory available.
    pub fn training_bytes(
        &self,
        batch: usize,
        shards: usize,
        init_batch: usize,
        low_memory: bool,
        fused: bool,
    ) -> f64 {
        let step = match low_memory {
            true => self.low_memory_bytes(batch, shards, fused),
            false => self.kept_bytes_per_image(fused) * batch as f64,
        };
        let widest = (0..self.levels)
            .map(|l| self.step_values_per_image(l, false))
            .fold(0.0, f64::max);
        let activations = step.max(widest * 4.0 * init_batch as f64);
        activations + 5.0 * 4.0 * self.weight_count() as f64 + 0.5 * (1u64 << 30) as f64
    }

    /// About how many weights the model has (within a few percent: the coupling networks'
    /// convolutions, the 1x1 convolutions and the split priors; biases and ActNorms counted
    /// roughly), for memory estimates without building it.
    pub fn weight_count(&self) -> usize {
        let classes = self.coupling_classes();
        let per_value = match self.coupling {
            ImageCoupling::Affine => 2,
            ImageCoupling::Additive => 1,
            ImageCoupling::Spline => {
                crate::layers::spline::params_per_value(crate::layers::spline::DEFAULT_BINS)
            }
        };
        let wd = self.net_width;
        let mut total = 0;
        for l in 0..self.levels {
            let [c, h, w] = self.level_shape(l);
            let (cond, out) = (c / 2 + classes, c - c / 2);
            let net = 9 * cond * wd + wd * wd + 9 * wd * out * per_value + 6 * wd;
            total += self.steps_per_level * (net + c * c + 4 * c);
            total += if l + 1 < self.levels {
                9 * (c - c / 2 + classes) * 2 * (c / 2)
            } else {
                2 * c * h * w
            };
        }
        total
    }

    /// Values per image `D = C * H * W` (the bits/dim denominator).
    pub fn dims(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Shape of the latent at level `l` after its squeeze (before its split).
    fn level_shape(&self, l: usize) -> [usize; 3] {
        // Each level squeezes (x4 channels) and every level but the last halves the channels.
        let mut c = self.channels;
        let (mut h, mut w) = (self.height, self.width);
        for _ in 0..l {
            c = c * 4 / 2;
            h /= 2;
            w /= 2;
        }
        [c * 4, h / 2, w / 2]
    }
}

/// A Gaussian prior with mean and log-std from a zero-initialised conv of a conditioning
/// tensor (split levels), or learned per position (top level).
#[derive(Module, Debug)]
pub struct SplitPrior {
    /// Zero-initialised convolution of the kept half to the factored half's mean and log-std.
    pub conv: ZeroConv2d,
    /// Bound the log-std softly to `±ln(1/ε)` ([`soft_bound`], `ε` =
    /// [`MIN_AFFINE_SCALE`](crate::layers::MIN_AFFINE_SCALE)): models with
    /// [`AffineScale::Bounded`]; Glow's exact form leaves it unbounded. From the config, not
    /// stored with the weights.
    #[module(skip)]
    pub bounded: bool,
}

/// `x` softly bounded to `(-b, b)`: `u = b - softplus(b - x)` bounds it above, then
/// `-b + softplus(u + b)` below. The identity to within about `e^-(b - |x|)` well inside the
/// bound, `±b` far outside it, smooth with a derivative in (0, 1]; written so that no huge `x`
/// cancels against itself (`x = 1e30` gives `b`, not 0).
pub fn soft_bound(x: Tensor<4>, b: f64) -> Tensor<4> {
    use burn::tensor::activation::softplus;
    let upper = softplus(x.neg().add_scalar(b), 1.0).neg().add_scalar(b);
    softplus(upper.add_scalar(b), 1.0).sub_scalar(b)
}

impl SplitPrior {
    /// The factored half's prior `(mean, log-std)` given the kept half `keep` `[N, C, H, W]`
    /// (Glow's learned prior; the log-std softly bounded to `±ln(1/ε)` when `bounded`, so a
    /// sample's off-manifold kept half cannot make `exp(log-std)` overflow).
    ///
    /// A class-conditional model whose couplings read the class also gives its split priors
    /// the class one-hot `ctx` (`[N, classes]`) as extra channels.
    pub fn params(&self, keep: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<4>) {
        let (mean, logs) = halves(self.conv.forward(crate::nets::with_context(keep, ctx)));
        if self.bounded {
            let b = (1.0 / crate::layers::MIN_AFFINE_SCALE).ln();
            (mean, soft_bound(logs, b))
        } else {
            (mean, logs)
        }
    }
}

/// One level: its flow steps and, for every level but the last, the split prior.
#[derive(Module, Debug)]
pub struct Level {
    /// `K` flow steps on the squeezed input.
    pub flow: FlowSequence,
    /// The split prior (`None` at the top level, which keeps every channel).
    pub split: Option<SplitPrior>,
}

/// Multi-scale Glow (Kingma & Dhariwal 2018, Fig. 2), optionally class-conditional.
///
/// # Shapes
/// Images `[N, C, H, W]` in the dequantised data range `[-0.5, 0.5]`; latents one tensor per
/// level (see [`Latents`]); log-densities `[N]`, nats.
#[derive(Module, Debug)]
pub struct GlowImage {
    /// The levels, first (full resolution) to last.
    pub levels: Vec<Level>,
    /// Top prior `[2C, H, W]`: mean (first C) and log-std (last C); zero is N(0, I).
    pub top: Param<Tensor<3>>,
    /// Whether the top prior is trained.
    pub learn_top: bool,
    /// Class-conditional top prior: one-hot `[N, classes]` to a per-channel shift of the top
    /// prior's mean and log-std, `[N, 2C]` (zero-initialised).
    pub class_prior: Option<Dense>,
    /// Class logits from the spatial mean of the top latent, `[N, C]` to `[N, classes]`
    /// (zero-initialised; trained by the `--weight-y` loss).
    pub class_head: Option<Dense>,
    /// Variational dequantisation `q(u | x)` (Flow++ §3.1), when configured.
    pub dequantizer: Option<VariationalDequantizer>,
    /// Classes the coupling networks and split priors read (0: none; see
    /// [`ClassConditioning`]). From the config, not stored with the weights.
    #[module(skip)]
    pub coupling_classes: usize,
}

/// `log N(z; mean, exp(logs)^2)` summed per sample.
pub fn gaussian_log_prob(z: Tensor<4>, mean: Tensor<4>, logs: Tensor<4>) -> Tensor<1> {
    let [n, c, h, w] = z.dims();
    let t = (z - mean) * logs.clone().neg().exp();
    (t.square().mul_scalar(0.5) + logs)
        .reshape([n, c * h * w])
        .sum_dim(1)
        .reshape([n])
        .neg()
        .sub_scalar(0.5 * (c * h * w) as f64 * LN_2PI)
}

fn halves(t: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let c = t.dims()[1];
    (t.clone().narrow(1, 0, c / 2), t.narrow(1, c / 2, c - c / 2))
}

/// One level's result in the density direction: the log-determinant of its flow steps, the
/// latent it factors out (the whole top latent at the last level) and that latent's prior.
struct Pass {
    logdet: Tensor<1>,
    z: Tensor<4>,
    mean: Tensor<4>,
    logs: Tensor<4>,
}

impl Pass {
    /// `log N(z; mean, exp(logs)^2)` per sample.
    fn log_prob(&self) -> Tensor<1> {
        gaussian_log_prob(self.z.clone(), self.mean.clone(), self.logs.clone())
    }
}

/// Latents of one image batch: one tensor per level (the factored-out halves, then the top).
pub type Latents = Vec<Tensor<4>>;

impl GlowImage {
    /// A fresh model (deterministic for `cfg.init_seed`); ActNorms await their data-dependent
    /// initialisation ([`initialize`](Self::initialize)).
    pub fn new(cfg: &GlowImageConfig, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.init_seed);
        let mut levels = Vec::new();
        let class_channels = cfg.coupling_classes();
        for l in 0..cfg.levels {
            let [c, _, _] = cfg.level_shape(l);
            let mut layers = Vec::new();
            for k in 0..cfg.steps_per_level {
                layers.push(Layer::ActNorm(ActNorm::new(c, device)));
                layers.push(cfg.permutation.layer(c, &mut rng, device));
                // With a learned 1x1 conv mixing channels, the halves need not alternate; with a
                // fixed permutation alternating keeps every channel transformed.
                let swap = k % 2 == 1 && cfg.permutation == Permutation::Reverse;
                let cond = crate::layers::coupling::conditioning_channels(c, swap) + class_channels;
                let out = crate::layers::coupling::transformed_channels(c, swap);
                layers.push(match cfg.coupling {
                    ImageCoupling::Affine => {
                        let net = GlowConvNet::new(cond, 2 * out, cfg.net_width, &mut rng, device);
                        Layer::AffineCoupling(AffineCoupling::new(
                            CouplingNet::Conv(net),
                            None,
                            swap,
                            cfg.affine_scale,
                        ))
                    }
                    ImageCoupling::Additive => {
                        let net = GlowConvNet::new(cond, out, cfg.net_width, &mut rng, device);
                        Layer::AdditiveCoupling(AdditiveCoupling::new(CouplingNet::Conv(net), swap))
                    }
                    ImageCoupling::Spline => {
                        use crate::layers::spline::{
                            params_per_value, SplineCoupling, DEFAULT_BINS,
                        };
                        let p = params_per_value(DEFAULT_BINS);
                        let net = GlowConvNet::new(cond, out * p, cfg.net_width, &mut rng, device);
                        Layer::SplineCoupling(SplineCoupling::new(
                            CouplingNet::Conv(net),
                            swap,
                            DEFAULT_BINS,
                            None,
                        ))
                    }
                });
            }
            let split = (l + 1 < cfg.levels).then(|| SplitPrior {
                bounded: cfg.affine_scale == AffineScale::Bounded,
                conv: ZeroConv2d::new(c - c / 2 + class_channels, 2 * (c / 2), device),
            });
            levels.push(Level {
                flow: FlowSequence::new(layers),
                split,
            });
        }
        let [c, h, w] = cfg.level_shape(cfg.levels - 1);
        let top = trainable(Tensor::zeros([2 * c, h, w], device));
        let top = if cfg.learn_top {
            top
        } else {
            top.set_require_grad(false)
        };
        let (class_prior, class_head) = if cfg.classes > 0 {
            (
                Some(Dense::zeros(cfg.classes, 2 * c, device)),
                Some(Dense::zeros(c, cfg.classes, device)),
            )
        } else {
            (None, None)
        };
        let dequantizer = cfg
            .dequantization
            .variational()
            .map(|q| VariationalDequantizer::new(q, cfg.channels, &mut rng, device));
        with_sequential_param_ids(GlowImage {
            levels,
            top,
            learn_top: cfg.learn_top,
            class_prior,
            class_head,
            dequantizer,
            coupling_classes: class_channels,
        })
    }

    /// The context the flow steps, split priors and top prior read: `None` unless the couplings
    /// are class-conditioned; then the class context `ctx` (a one-hot, or `w` times one for
    /// guidance), or the null class (all zeros, the class-free model of `--label-dropout`) for
    /// `n` rows when none is given.
    ///
    /// Guidance `w` reaches the coupling networks as `w` times the one-hot: the priors are affine
    /// in the context, so theirs is classifier-free guidance's mix `θ_u + w (θ_c − θ_u)`, but the
    /// networks are not, and for them `w > 1` is an extrapolation of the class input.
    pub fn flow_context(&self, ctx: Context, n: usize, device: &Device) -> Option<Tensor<2>> {
        if self.coupling_classes == 0 {
            return None;
        }
        Some(match ctx {
            Some(c) => c.clone(),
            None => Tensor::zeros([n, self.coupling_classes], device),
        })
    }

    /// Number of classes of a class-conditional model (0 when unconditional).
    pub fn classes(&self) -> usize {
        self.class_head.as_ref().map_or(0, |h| h.bias.dims()[0])
    }

    /// Top prior `(mean, log-std)`, each `[n, C, H, W]`; shifted per class when a class
    /// one-hot context `[n, classes]` is given to a class-conditional model.
    fn top_params(&self, n: usize, ctx: Context) -> (Tensor<4>, Tensor<4>) {
        let [c2, h, w] = self.top.dims();
        let mut t = self.top.val().reshape([1, c2, h, w]).expand([n, c2, h, w]);
        if let (Some(prior), Some(y)) = (&self.class_prior, ctx) {
            let shift = prior
                .forward(y.clone().cast(t.dtype()))
                .reshape([n, c2, 1, 1]);
            t = t + shift.expand([n, c2, h, w]);
        }
        halves(t)
    }

    /// Class logits `[N, classes]` from the top latent `[N, C, H, W]` (spatial mean, then the
    /// class head); `None` for an unconditional model.
    pub fn class_logits(&self, top: Tensor<4>) -> Option<Tensor<2>> {
        let head = self.class_head.as_ref()?;
        let [n, c, h, w] = top.dims();
        let mean = top.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        Some(head.forward(mean))
    }

    /// `log p(x | y)` for every class `y`, `[N, classes]` in nats: one pass through the flow,
    /// then the top prior of each class when only the top prior depends on the class; one
    /// whole pass per class when the couplings read it.
    pub fn class_log_likelihoods(&self, x: Tensor<4>) -> Option<Tensor<2>> {
        let classes = self.classes();
        if classes == 0 {
            return None;
        }
        let n = x.dims()[0];
        let device = x.device();
        if self.coupling_classes > 0 {
            let cols = (0..classes)
                .map(|k| {
                    let y = one_hot(&vec![k; n], classes, &device);
                    self.forward_latents(x.clone(), Some(&y)).0.reshape([n, 1])
                })
                .collect();
            return Some(Tensor::cat(cols, 1));
        }
        let (rest, top) = self.forward_parts(x);
        let mut cols = Vec::with_capacity(classes);
        for k in 0..classes {
            let y = one_hot(&vec![k; n], classes, &device);
            let (mean, logs) = self.top_params(n, Some(&y));
            let lp = rest.clone() + gaussian_log_prob(top.clone(), mean, logs);
            cols.push(lp.reshape([n, 1]));
        }
        Some(Tensor::cat(cols, 1))
    }

    /// Variationally dequantised images and their noise's log-density: `y = x + u / 2^n_bits`
    /// with `u ~ q(u | x)` drawn from the standard normal `eps` (both `[N, C, H, W]`; `x` the
    /// lower bin edges), and `log q(u | x)` `[N]` (nats, `u` in bin units). `None` without a
    /// variational dequantiser.
    pub fn variational_input(
        &self,
        x: Tensor<4>,
        eps: Tensor<4>,
        n_bits: u32,
    ) -> Option<(Tensor<4>, Tensor<1>)> {
        let q = self.dequantizer.as_ref()?;
        let (u, log_q) = q.sample(x.clone(), eps);
        Some((x + u.div_scalar((1u64 << n_bits) as f64), log_q))
    }

    /// Whether an ActNorm still waits for its data-dependent initialisation.
    pub fn needs_data_init(&self) -> bool {
        self.levels.iter().any(|l| l.flow.needs_data_init())
    }

    /// Data-dependent initialisation of every ActNorm from a batch (a model whose couplings
    /// read the class sees the null class).
    ///
    /// On an autodiff device the pass runs on the inner backend and the model is handed back
    /// trainable as before: a forward pass on autodiff records every layer's activations, and
    /// burn frees a recording nobody backpropagates only at the next backward pass, so the
    /// initialisation batch would otherwise hold the whole depth's activations (the paper's
    /// CIFAR-10 model at K = 16: 6.8 GiB).
    pub fn initialize(&mut self, x: Tensor<4>) {
        if self.top.val().is_autodiff() {
            let x = if x.is_autodiff() { x.inner() } else { x };
            let mut inner = self.valid();
            inner.initialize(x);
            *self = inner.train();
            return;
        }
        let c = self.flow_context(None, x.dims()[0], &x.device());
        let mut h = x;
        let last = self.levels.len() - 1;
        for (l, level) in self.levels.iter_mut().enumerate() {
            h = level.flow.initialize(squeeze(h), c.as_ref());
            if l < last {
                h = halves(h).1;
            }
        }
    }

    /// The one level walk of the density direction: each level squeezes, runs its flow steps
    /// (`flow`, which may stop the walk with a message), then factors out half the channels
    /// under its split prior (or keeps everything under the top prior, for the class one-hot
    /// `ctx` of a class-conditional model); `check` sees each level's result in turn.
    fn walk(
        &self,
        x: Tensor<4>,
        ctx: Context,
        mut flow: impl FnMut(
            usize,
            &FlowSequence,
            Tensor<4>,
            Context,
        ) -> Result<(Tensor<4>, Tensor<1>), String>,
        mut check: impl FnMut(usize, &Pass) -> Result<(), String>,
    ) -> Result<Vec<Pass>, String> {
        let n = x.dims()[0];
        let fctx = self.flow_context(ctx, n, &x.device());
        let ctx = ctx.or(fctx.as_ref());
        let mut h = x;
        let mut out = Vec::with_capacity(self.levels.len());
        for (l, level) in self.levels.iter().enumerate() {
            let (y, logdet) = flow(l, &level.flow, Squeeze.forward(h).0, fctx.as_ref())?;
            let (z, mean, logs, next) = match &level.split {
                Some(prior) => {
                    let (z, keep) = halves(y);
                    let (mean, logs) = prior.params(keep.clone(), fctx.as_ref());
                    (z, mean, logs, keep)
                }
                None => {
                    let (mean, logs) = self.top_params(n, ctx);
                    (y.clone(), mean, logs, y)
                }
            };
            let pass = Pass {
                logdet,
                z,
                mean,
                logs,
            };
            check(l, &pass)?;
            out.push(pass);
            h = next;
        }
        Ok(out)
    }

    /// Every level's pass in the density direction (see [`walk`](Self::walk)).
    fn passes(&self, x: Tensor<4>, ctx: Context) -> Vec<Pass> {
        self.walk(x, ctx, |_, f, h, c| Ok(f.forward_ctx(h, c)), |_, _| Ok(()))
            .unwrap_or_else(|_| unreachable!("the plain walk never stops"))
    }

    /// `(log p(x) without the top prior's term, the top latent)`: everything of the density
    /// that does not depend on a class (for a model whose couplings do not read it).
    fn forward_parts(&self, x: Tensor<4>) -> (Tensor<1>, Tensor<4>) {
        let mut passes = self.passes(x, None);
        let top = passes.pop().expect("at least one level");
        let logp = passes
            .into_iter()
            .fold(top.logdet, |acc, p| acc + p.log_prob() + p.logdet);
        (logp, top.z)
    }

    /// `(log p(x | ctx) in nats per sample, latents)`; `ctx` is a class one-hot
    /// `[N, classes]` for a class-conditional model (ignored otherwise; `None` gives the
    /// class-free prior).
    pub fn forward_latents(&self, x: Tensor<4>, ctx: Context) -> (Tensor<1>, Latents) {
        self.forward_latents_with(x, ctx, |_, f, h, c| Ok(f.forward_ctx(h, c)))
    }

    /// [`forward_latents`](Self::forward_latents) with each level's flow steps run by `flow`
    /// (given the level, its flow sequence, the squeezed input and the context the steps read,
    /// see [`flow_context`](Self::flow_context); it returns the output and the per-sample
    /// log-determinant). Invertible backpropagation (`train::low_memory`) runs the steps there
    /// without recording them and hands back leaves.
    pub fn forward_latents_with(
        &self,
        x: Tensor<4>,
        ctx: Context,
        flow: impl FnMut(
            usize,
            &FlowSequence,
            Tensor<4>,
            Context,
        ) -> Result<(Tensor<4>, Tensor<1>), String>,
    ) -> (Tensor<1>, Latents) {
        let mut logp = crate::flow::zero_logdet(&x);
        let mut zs = Vec::with_capacity(self.levels.len());
        let passes = self
            .walk(x, ctx, flow, |_, _| Ok(()))
            .unwrap_or_else(|e| panic!("the level walk stopped: {e}"));
        for p in passes {
            logp = logp + p.logdet.clone() + p.log_prob();
            zs.push(p.z);
        }
        (logp, zs)
    }

    /// Every latent standardised by its prior, `(z - mean) / std`, flattened to `[N, D]`:
    /// `log p(x) = log N(eps(x); 0, I) + log|det d eps / dx|`, which tests check by brute force.
    pub fn standardized_latents(&self, x: Tensor<4>, ctx: Context) -> Tensor<2> {
        let n = x.dims()[0];
        let parts = self
            .passes(x, ctx)
            .into_iter()
            .map(|p| {
                let [_, c, h, w] = p.z.dims();
                ((p.z - p.mean) * p.logs.neg().exp()).reshape([n, c * h * w])
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// `n` images with every prior's standard deviation scaled by `temperature` (for a class
    /// one-hot `ctx` `[n, classes]`, or none), and the latents drawn (one per level, in
    /// [`forward_latents`](Self::forward_latents)'s order), so a failure can be traced with
    /// [`trace_decode`](Self::trace_decode).
    pub fn sample_with_latents(
        &self,
        n: usize,
        temperature: f64,
        ctx: Context,
        rng: &mut impl rand::Rng,
    ) -> (Tensor<4>, Latents) {
        let mut drawn: Vec<Option<Tensor<4>>> = vec![None; self.levels.len()];
        let mut draw = |mean: Tensor<4>, logs: Tensor<4>| {
            let shape = mean.dims();
            let eps = crate::distributions::standard_normal_sample(
                shape,
                temperature,
                rng,
                &mean.device(),
            )
            .cast(mean.dtype());
            mean + logs.exp() * eps
        };
        let x = self.generate(
            |mean, logs, l| {
                let z = draw(mean, logs);
                drawn[l] = Some(z.clone());
                Some(z)
            },
            n,
            None,
            ctx,
        );
        let zs = drawn
            .into_iter()
            .map(|z| z.expect("sampling draws every latent"))
            .collect();
        (x, zs)
    }

    /// Run the forward (density) direction level by level and layer by layer, and name the
    /// first place a NaN or infinity appears: `Some("level 1, layer 5 (AffineCoupling): ...")`,
    /// or the split / top prior's log-density. `None` when everything is finite.
    ///
    /// A model whose couplings read the class is traced for the class one-hot `ctx` (the null
    /// class without one).
    pub fn trace_forward(&self, x: Tensor<4>, ctx: Context) -> Option<String> {
        use crate::tensor_util::count_nonfinite;
        if count_nonfinite(x.clone()) > 0 {
            return Some("the input itself holds non-finite values".into());
        }
        let last = self.levels.len() - 1;
        self.walk(
            x,
            ctx,
            |l, flow, h, c| {
                let y = flow
                    .trace_nonfinite(h, c, false)
                    .map_err(|e| format!("level {l}, {e}"))?;
                let ld = crate::flow::zero_logdet(&y);
                Ok((y, ld))
            },
            |l, pass| {
                if count_nonfinite(pass.log_prob()) == 0 {
                    return Ok(());
                }
                let which = if l < last { "split prior" } else { "top prior" };
                Err(format!("level {l}, {which} log-density"))
            },
        )
        .err()
    }

    /// Decode `zs` level by level and layer by layer (the generative direction) and name the
    /// first place a NaN or infinity appears; `None` when everything is finite.
    /// A model whose couplings read the class decodes for the class one-hot `ctx`.
    pub fn trace_decode(&self, zs: &Latents, ctx: Context) -> Option<String> {
        use crate::tensor_util::count_nonfinite;
        let last = self.levels.len() - 1;
        if count_nonfinite(zs[last].clone()) > 0 {
            return Some(format!("level {last}, the top latent (prior draw)"));
        }
        let fctx = self.flow_context(ctx, zs[last].dims()[0], &zs[last].device());
        self.walk_back(
            zs[last].clone(),
            &fctx,
            |l, mean, logs| {
                if count_nonfinite(mean) + count_nonfinite(logs) > 0 {
                    return Err(format!("level {l}, split prior (mean / log-std)"));
                }
                if count_nonfinite(zs[l].clone()) > 0 {
                    return Err(format!("level {l}, split latent (prior draw)"));
                }
                Ok(zs[l].clone())
            },
            |l, flow, h, c| {
                flow.trace_nonfinite(h, c, true)
                    .map_err(|e| format!("level {l}, {e}"))
            },
        )
        .err()
    }

    /// The one level walk of the generative direction, from the top latent `top` down: each
    /// level with a split prior takes its latent from `latent` (given that prior's mean and
    /// log-std at the level above's output) and joins it to that output, runs its flow steps
    /// backwards (`flow`), and unsqueezes. `latent` and `flow` may stop the walk with a message.
    fn walk_back(
        &self,
        top: Tensor<4>,
        fctx: &Option<Tensor<2>>,
        mut latent: impl FnMut(usize, Tensor<4>, Tensor<4>) -> Result<Tensor<4>, String>,
        mut flow: impl FnMut(usize, &FlowSequence, Tensor<4>, Context) -> Result<Tensor<4>, String>,
    ) -> Result<Tensor<4>, String> {
        let mut h = top;
        for (l, level) in self.levels.iter().enumerate().rev() {
            if let Some(prior) = &level.split {
                let (mean, logs) = prior.params(h.clone(), fctx.as_ref());
                h = Tensor::cat(vec![latent(l, mean, logs)?, h], 1);
            }
            h = unsqueeze(flow(l, &level.flow, h, fctx.as_ref())?);
        }
        Ok(h)
    }

    /// The images of the latents `given` (one per level), or of latents drawn by `pick` from
    /// each prior's mean and log-std (top prior for `n` images and the class one-hot `ctx`).
    fn generate(
        &self,
        mut pick: impl FnMut(Tensor<4>, Tensor<4>, usize) -> Option<Tensor<4>>,
        n: usize,
        given: Option<&Latents>,
        ctx: Context,
    ) -> Tensor<4> {
        let n = given.map(|g| g[0].dims()[0]).unwrap_or(n);
        let last = self.levels.len() - 1;
        let fctx = self.flow_context(ctx, n, &self.top.val().device());
        let (mean, logs) = self.top_params(n, ctx.or(fctx.as_ref()));
        let top = match given {
            Some(g) => g[last].clone(),
            None => pick(mean, logs, last).expect("sampling draws every latent"),
        };
        self.walk_back(
            top,
            &fctx,
            |l, mean, logs| {
                Ok(match given {
                    Some(g) => g[l].clone(),
                    None => pick(mean, logs, l).expect("sampling draws every latent"),
                })
            },
            |_, flow, h, c| Ok(flow.inverse_ctx(h, c).0),
        )
        .unwrap_or_else(|_| unreachable!("the plain walk never stops"))
    }
}

/// The context of classifier-free guidance (Ho & Salimans 2022) with weight `w` for the classes
/// `labels`: the one-hot rows scaled by `w`, `[N, classes]`.
///
/// The unconditional prior is the null class, an all-zero context (trained by dropping labels,
/// `--label-dropout`). Guidance mixes the two priors' parameters, `mean_w = mean_u + w (mean_c -
/// mean_u)` and the same for the log-std: `w = 0` is unconditional, `1` conditional, `> 1`
/// guided. The class prior is affine in the context, so that mix is exactly the prior of the
/// context `w * one_hot` (tested). For equal standard deviations it is the product of experts
/// `p_c^w p_u^(1-w)` of classifier-free guidance; the log-std is mixed the same way.
pub fn guided_context(labels: &[usize], classes: usize, w: f64, device: &Device) -> Tensor<2> {
    one_hot(labels, classes, device).mul_scalar(w)
}

/// One-hot rows `[N, classes]` (float32) for class indices `labels` (each `< classes`).
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &k) in labels.iter().enumerate() {
        v[i * classes + k] = 1.0;
    }
    crate::tensor_util::from_vec(v, [labels.len(), classes], device)
}

impl DensityModel for GlowImage {
    type Data = Tensor<4>;
    type Latent = Latents;

    /// Continuous log-density of dequantised images `x: [N, C, H, W]`, nats per sample `[N]`:
    /// `log p(x | y)` for a class one-hot `ctx` `[N, classes]`, else `log p(x)`; the sum over
    /// levels of the flow steps' `log|det|` and each factored-out latent's prior log-density
    /// (Glow's multi-scale model, Fig. 2). [`forward_latents`](GlowImage::forward_latents) also
    /// returns the latents.
    fn log_prob(&self, x: Tensor<4>, ctx: Context) -> Tensor<1> {
        self.forward_latents(x, ctx).0
    }

    /// The latents of `x: [N, C, H, W]`, one per level (`[N, C_l, H_l, W_l]`, the
    /// factored-out halves, then the top).
    fn encode(&self, x: Tensor<4>, ctx: Context) -> Latents {
        self.forward_latents(x, ctx).1
    }

    /// The images `[N, C, H, W]` of given latents, inverted exactly (reconstruction) for the
    /// class one-hot `ctx` (a model whose couplings read the class; the null class without
    /// one); other models ignore the context, since every latent is given.
    fn decode(&self, z: &Latents, ctx: Context) -> Tensor<4> {
        self.generate(|_, _, _| None, z.len(), Some(z), ctx)
    }

    /// `n` images `[n, C, H, W]`: [`sample_with_latents`](GlowImage::sample_with_latents)
    /// without the latents, on the model's device.
    fn sample<R: rand::Rng>(
        &self,
        n: usize,
        temperature: f64,
        ctx: Context,
        rng: &mut R,
        _device: &Device,
    ) -> Tensor<4> {
        self.sample_with_latents(n, temperature, ctx, rng).0
    }
}
