//! Flows on vectors `[N, D]` with a standard-normal base, optionally conditioned on a context
//! `[N, K]` that every coupling network reads, and optionally standardising the data inside
//! the model (its log-determinant included, so densities stay in the data's units).
//!
//! The tutorial's two models, for any `D >= 2`:
//! - Glow: K x [ActNorm -> invertible D x D linear map (LU, Glow §3.2) -> affine coupling];
//! - Real NVP: K x [flow batch norm -> affine coupling] (Dinh et al. 2017, §3.5 and §3.6);
//!
//! couplings alternate which half of the coordinates conditions the other.

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::DensityModel;
use crate::distributions::{standard_normal_log_prob, standard_normal_sample};
use crate::flow::{nchw_to_vec, vec_to_nchw, Context, Flow};
use crate::layers::{
    ActNorm, AdditiveCoupling, AffineCoupling, AffineScale, FlowBatchNorm, FlowSequence, Layer,
    Permutation, Standardize, TanhScale,
};
use crate::nets::{CouplingNet, Mlp};
use crate::tensor_util::with_sequential_param_ids;

/// Which vector flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Glow: ActNorm, invertible linear map (LU), coupling.
    Glow,
    /// Real NVP: flow batch norm, coupling.
    Realnvp,
}

impl ModelKind {
    /// The name used in file names and summaries (`glow`, `realnvp`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Glow => "glow",
            ModelKind::Realnvp => "realnvp",
        }
    }
}

/// Which elementwise bijection a coupling applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum CouplingKind {
    /// The tutorial's `x * exp(tanh(raw) * alpha + beta) + t`.
    Tanh,
    /// Glow's `(x + t) * sigmoid(raw + 2)`, the scale's form as
    /// [`VectorFlowConfig::affine_scale`] says (bounded below by default).
    Sigmoid,
    /// NICE's `x + t`.
    Additive,
    /// A rational-quadratic spline per value (neural spline flows, 1906.04032 §3) of
    /// `spline_bins` bins on `[-5, 5]` of the standardised data, identity outside.
    Spline,
}

impl CouplingKind {
    /// The name used in options and summaries (`tanh`, `sigmoid`, `additive`, `spline`).
    pub fn name(self) -> &'static str {
        match self {
            CouplingKind::Tanh => "tanh",
            CouplingKind::Sigmoid => "sigmoid",
            CouplingKind::Additive => "additive",
            CouplingKind::Spline => "spline",
        }
    }
}

/// Everything needed to rebuild a 2D model (stored in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorFlowConfig {
    /// Glow or Real NVP.
    pub model: ModelKind,
    /// Number of flow steps `K` (saved before format 4 as `layers`).
    #[serde(alias = "layers")]
    pub flow_steps: usize,
    /// Coupling-network hidden width (saved before format 4 as `hidden`).
    #[serde(alias = "hidden")]
    pub net_width: usize,
    /// Coupling-network hidden layers (saved before format 4 as `depth`).
    #[serde(alias = "depth")]
    pub net_depth: usize,
    /// The coupling's elementwise bijection.
    pub coupling: CouplingKind,
    /// Mixing layer (Glow only).
    pub permutation: Permutation,
    /// Seed of the parameter initialisation.
    pub init_seed: u64,
    /// Features `D`: the modelled columns (2 for the toy targets; runs saved before it existed
    /// are 2D; saved before format 4 as `dim`).
    #[serde(default = "two", alias = "dim")]
    pub features: usize,
    /// Width `K` of the context every coupling network reads (0: unconditional).
    #[serde(default)]
    pub context: usize,
    /// Standardise data (and context) inside the model with statistics set before training.
    #[serde(default)]
    pub standardize: bool,
    /// The scale's form of `sigmoid` couplings (runs saved before it existed: Glow's exact
    /// form, which they were trained with).
    #[serde(default = "AffineScale::legacy")]
    pub affine_scale: AffineScale,
    /// Bins `K` of `spline` couplings (unused by the others).
    #[serde(default = "default_bins")]
    pub spline_bins: usize,
    /// Width `E` of a learned context embedding (0: none, the coupling networks read the
    /// standardised context itself): an MLP `K -> [E, ReLU] -> E` applied once to the context,
    /// whose `E` outputs every coupling network reads, trained with the flow.
    #[serde(default)]
    pub context_embedding: usize,
    /// Spline couplings whose all-zero raw parameters are the identity (the inner derivatives'
    /// shift, [`crate::layers::spline::derivative_shift`]): every model built now. Spline
    /// models saved before it existed read their weights differently and are refused.
    #[serde(default)]
    pub spline_identity_at_zero: bool,
    /// Spline couplings followed by a conditional affine map from the same network
    /// (`y_b = RQS(x_b) exp(s) + t`, [`crate::layers::spline::SplineCoupling::scale`]): every
    /// model built now. Spline models saved before it existed are plain RQ-NSF (C) couplings
    /// and load as such.
    #[serde(default)]
    pub spline_affine: bool,
}

fn two() -> usize {
    2
}

fn default_bins() -> usize {
    crate::layers::spline::DEFAULT_BINS
}

impl VectorFlowConfig {
    /// The width of the context the coupling networks read: the embedding's, else `context`.
    pub fn context_width(&self) -> usize {
        if self.context_embedding > 0 {
            self.context_embedding
        } else {
            self.context
        }
    }

    /// The tutorial's model of this kind: 32 steps, couplings of width 64 and 2 hidden layers,
    /// `tanh` scale, LU mixing, 2D, unconditional, no standardisation.
    pub fn new(model: ModelKind) -> Self {
        VectorFlowConfig {
            model,
            flow_steps: 32,
            net_width: 64,
            net_depth: 2,
            coupling: CouplingKind::Tanh,
            permutation: Permutation::Lu,
            init_seed: 0,
            features: 2,
            context: 0,
            standardize: false,
            affine_scale: AffineScale::Bounded,
            spline_bins: default_bins(),
            context_embedding: 0,
            spline_identity_at_zero: true,
            spline_affine: true,
        }
    }

    /// Check the sizes against [`crate::limits`]; the error names the field and its flag.
    pub fn validate(&self) -> Result<(), crate::error::FieldError> {
        use crate::limits::{count, MAX_FLOW_STEPS, MAX_MLP_DEPTH, MAX_WIDTH};
        count(
            "flow_steps",
            "flow_steps",
            self.flow_steps,
            1,
            MAX_FLOW_STEPS,
        )?;
        count("net_width", "net_width", self.net_width, 1, MAX_WIDTH)?;
        count("net_depth", "net_depth", self.net_depth, 1, MAX_MLP_DEPTH)?;
        count("features", "data", self.features, 1, MAX_WIDTH)?;
        count("context", "context_columns", self.context, 0, MAX_WIDTH)?;
        count("spline_bins", "spline_bins", self.spline_bins, 2, 64)?;
        count(
            "context_embedding",
            "context_embedding",
            self.context_embedding,
            0,
            MAX_WIDTH,
        )?;
        if self.context_embedding > 0 && self.context == 0 {
            return Err(crate::error::FieldError::new(
                "context_embedding",
                "context_embedding",
                self.context_embedding,
                "embeds the context: it needs context columns (`context_columns`)",
            ));
        }
        if self.coupling == CouplingKind::Spline && !self.spline_identity_at_zero {
            return Err(crate::error::FieldError::new(
                "coupling",
                "coupling",
                "spline",
                "this spline model was saved by an earlier glowflow whose splines read their \
                 weights differently (no derivative shift); train it again",
            ));
        }
        if self.features == 1 && self.coupling != CouplingKind::Spline {
            return Err(crate::error::FieldError::new(
                "coupling",
                "coupling",
                self.coupling.name(),
                "cannot model one column (an affine or additive coupling splits the columns in \
                 two); one modelled column needs `coupling` spline",
            ));
        }
        Ok(())
    }

    /// Floating-point operations of set-up (the mixing layers' random orthogonal
    /// initialisation) and of one training step at `batch` points (forward and backward), and
    /// the bytes the weights, their gradients and Adam's two moments hold: a rough estimate, for
    /// refusing or warning about tables too wide to train (its leading terms: `K · d²` mixing
    /// weights, `K · d³` to form and factor them, `6 · batch · K · d²` to apply them).
    pub fn cost(&self, batch: usize) -> (f64, f64, f64) {
        let (k, d, b) = (self.flow_steps as f64, self.features as f64, batch as f64);
        let (h, ctx) = (self.net_width as f64, self.context as f64);
        let mixing = self.model == ModelKind::Glow
            && self.permutation != Permutation::Reverse
            && self.permutation != Permutation::Shuffle;
        let (mix_weights, mix_step, setup) = if mixing {
            let dense = if self.features > crate::linalg::MAX_DENSE_ORTHOGONAL_INIT {
                0.0
            } else {
                4.0 * d * d * d
            };
            (
                d * d,
                6.0 * b * d * d + 4.0 * d * d * d,
                dense + (2.0 / 3.0) * d * d * d,
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        let mlp = (d / 2.0 + ctx) * h + h * h * (self.net_depth.saturating_sub(1)) as f64 + h * d;
        let step = k * (mix_step + 6.0 * b * mlp);
        let bytes = k * (mix_weights + mlp) * 4.0 * 4.0;
        let setup = if self.features > crate::linalg::MAX_DENSE_ORTHOGONAL_INIT {
            0.0
        } else {
            k * setup
        };
        (setup, step, bytes)
    }

    /// Bytes a training step holds per point (activations for the backward pass, float32), a
    /// rough upper estimate used to refuse batch sizes that cannot fit in memory.
    pub fn activation_bytes_per_point(&self) -> f64 {
        (self.flow_steps
            * (self.net_width * (self.net_depth + 1) * 3 + 16 * (self.features + self.context)))
            as f64
            * 4.0
            * 2.0
    }
}

/// A flow on `D`-dimensional vectors with a standard-normal base distribution.
///
/// # Shapes
/// Data `[N, D]`, context `[N, K]` (only when built with `context = K > 0`), latents `[N, D]`,
/// log-densities `[N]` in nats.
#[derive(Module, Debug)]
pub struct VectorFlow {
    /// The flow steps (data to latent).
    pub flow: FlowSequence,
    /// Data standardisation applied before the flow (when the config asks for it).
    pub standardize: Option<Standardize>,
    /// Context standardisation (when standardising a conditional model).
    pub context_norm: Option<Standardize>,
    /// The data dimension `D`.
    pub dim: usize,
    /// The learned context embedding (when the config asks for one), applied after the
    /// context's standardisation.
    pub context_embedding: Option<Mlp>,
}

fn coupling(cfg: &VectorFlowConfig, swap: bool, rng: &mut ChaCha8Rng, device: &Device) -> Layer {
    // One column: no half conditions; the spline's network reads a constant 1 (and the
    // context), so without context its parameters are learned constants.
    let cond = match cfg.features {
        1 => 1,
        d => crate::layers::coupling::conditioning_channels(d, swap),
    };
    let out = crate::layers::coupling::transformed_channels(cfg.features, swap);
    let net_out = match cfg.coupling {
        CouplingKind::Additive => out,
        CouplingKind::Spline => {
            out * crate::layers::spline::params_per_value(cfg.spline_bins)
                + if cfg.spline_affine { 2 * out } else { 0 }
        }
        CouplingKind::Tanh | CouplingKind::Sigmoid => 2 * out,
    };
    let net = CouplingNet::Mlp(Mlp::new(
        cond + cfg.context_width(),
        net_out,
        cfg.net_width,
        cfg.net_depth,
        cfg.coupling == CouplingKind::Spline,
        rng,
        device,
    ));
    match cfg.coupling {
        CouplingKind::Tanh => Layer::AffineCoupling(AffineCoupling::new(
            net,
            Some(TanhScale::new(device)),
            swap,
            cfg.affine_scale,
        )),
        CouplingKind::Sigmoid => {
            Layer::AffineCoupling(AffineCoupling::new(net, None, swap, cfg.affine_scale))
        }
        CouplingKind::Additive => Layer::AdditiveCoupling(AdditiveCoupling::new(net, swap)),
        CouplingKind::Spline => Layer::SplineCoupling(crate::layers::spline::SplineCoupling::new(
            net,
            swap,
            cfg.spline_bins,
            cfg.spline_affine.then(|| TanhScale::new(device)),
        )),
    }
}

impl VectorFlow {
    /// A fresh model (deterministic for `cfg.init_seed`); ActNorms uninitialised, standardisation
    /// the identity until [`set_standardization`](Self::set_standardization).
    pub fn new(cfg: &VectorFlowConfig, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.init_seed);
        let dim = cfg.features;
        let mut layers = Vec::new();
        for k in 0..cfg.flow_steps {
            let swap = k % 2 == 1 && dim > 1;
            match cfg.model {
                ModelKind::Glow => {
                    layers.push(Layer::ActNorm(ActNorm::new(dim, device)));
                    // A 1x1 mixing of one column would be a second per-column scale.
                    if dim > 1 {
                        layers.push(cfg.permutation.layer(dim, &mut rng, device));
                    }
                }
                ModelKind::Realnvp => {
                    layers.push(Layer::FlowBatchNorm(FlowBatchNorm::new(dim, device)));
                }
            }
            layers.push(coupling(cfg, swap, &mut rng, device));
        }
        let standardize = cfg.standardize.then(|| Standardize::new(dim, device));
        let context_norm =
            (cfg.standardize && cfg.context > 0).then(|| Standardize::new(cfg.context, device));
        let e = cfg.context_embedding;
        let context_embedding = (e > 0 && cfg.context > 0)
            .then(|| Mlp::new(cfg.context, e, e, 1, false, &mut rng, device));
        with_sequential_param_ids(VectorFlow {
            flow: FlowSequence::new(layers),
            standardize,
            context_norm,
            dim,
            context_embedding,
        })
    }

    /// Set the standardisation statistics (per-column mean and std `> 0` of the training data
    /// and of its context columns). Does nothing on a model built without standardisation.
    pub fn set_standardization(&mut self, data: (&[f64], &[f64]), context: (&[f64], &[f64])) {
        if let Some(s) = &mut self.standardize {
            s.set(data.0, data.1);
        }
        if let Some(s) = &mut self.context_norm {
            s.set(context.0, context.1);
        }
    }

    /// The float type the flow computes in (its first parameter's: float32, or float64 for a
    /// [cast](crate::tensor_util::cast_module) copy).
    pub fn compute_dtype(&self) -> DType {
        crate::tensor_util::first_float_dtype(&self.flow).unwrap_or(DType::F32)
    }

    /// The standardisation statistics `(mean, std)` in float64, data columns then context
    /// columns (`D + K` each); `None` for a model that does not standardise. Host code that
    /// holds raw rows standardises them with these (in float64) and calls the
    /// `*_standardized` methods, so no float32 rounding of the raw values loses their spread.
    pub fn standardization(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        let (mut mean, mut std) = self.standardize.as_ref()?.stats();
        if let Some(c) = &self.context_norm {
            let (m, s) = c.stats();
            mean.extend(m);
            std.extend(s);
        }
        Some((mean, std))
    }

    /// A raw context `[N, K]` as the coupling networks read it: standardised in float64, in the
    /// flow's float type.
    fn ctx(&self, ctx: Context) -> Option<Tensor<2>> {
        let dtype = self.compute_dtype();
        let c = ctx.map(|c| match &self.context_norm {
            Some(s) => s.apply_2d(c.clone(), dtype),
            None => c.clone().cast(dtype),
        });
        self.embed(c)
    }

    /// A standardised context, in the flow's float type, as the coupling networks read it.
    fn ctx_standardized(&self, ctx: Context) -> Option<Tensor<2>> {
        let dtype = self.compute_dtype();
        self.embed(ctx.map(|c| c.clone().cast(dtype)))
    }

    /// The context embedding of a standardised context (itself without one).
    fn embed(&self, c: Option<Tensor<2>>) -> Option<Tensor<2>> {
        match (&self.context_embedding, c) {
            (Some(e), Some(c)) => Some(e.forward_vec(c)),
            (_, c) => c,
        }
    }

    /// Raw data `[N, D]` standardised in float64 (as `[N, D, 1, 1]`, in the flow's float type)
    /// and the standardisation's log-determinant.
    fn pre(&self, x: Tensor<2>) -> (Tensor<4>, Option<Tensor<1>>) {
        let dtype = self.compute_dtype();
        match &self.standardize {
            Some(s) => {
                let y = vec_to_nchw(s.standardize_2d(x).cast(dtype));
                let ld = s.logdet(&y);
                (y, Some(ld))
            }
            None => (vec_to_nchw(x.cast(dtype)), None),
        }
    }

    /// Standardised data `[N, D]` (as `[N, D, 1, 1]`) and the standardisation's log-determinant.
    fn pre_standardized(&self, x: Tensor<2>) -> (Tensor<4>, Option<Tensor<1>>) {
        let y = vec_to_nchw(x.cast(self.compute_dtype()));
        let ld = self.standardize.as_ref().map(|s| s.logdet(&y));
        (y, ld)
    }

    /// Run the density direction layer by layer on standardised rows `x: [N, D]` (and
    /// standardised context) and name the first layer whose output or log-determinant holds a
    /// NaN or infinity; `None` when all is finite. Diagnostics only.
    pub fn trace_forward_standardized(&self, x: Tensor<2>, ctx: Context) -> Option<String> {
        let c = self.ctx_standardized(ctx);
        let (h, _) = self.pre_standardized(x);
        self.flow.trace_nonfinite(h, c.as_ref(), false).err()
    }

    /// Data-dependent initialisation (ActNorm) from a batch of raw points `[N, D]` (and
    /// context).
    pub fn initialize(&mut self, x: Tensor<2>, ctx: Context) {
        let c = self.ctx(ctx);
        let (h, _) = self.pre(x);
        self.flow.initialize(h, c.as_ref());
    }

    /// [`initialize`](Self::initialize) from standardised rows and context.
    pub fn initialize_standardized(&mut self, x: Tensor<2>, ctx: Context) {
        let c = self.ctx_standardized(ctx);
        let (h, _) = self.pre_standardized(x);
        self.flow.initialize(h, c.as_ref());
    }

    fn encode_from(
        &self,
        h: Tensor<4>,
        ld0: Option<Tensor<1>>,
        c: Context,
    ) -> (Tensor<2>, Tensor<1>) {
        let (z, ld) = self.flow.forward_ctx(h, c);
        let ld = match ld0 {
            Some(l) => ld + l,
            None => ld,
        };
        (nchw_to_vec(z), ld)
    }

    /// Map raw points `x: [N, D]` (any float type; float64 keeps every digit of raw data) to
    /// latents `z: [N, D]` and `log|det dz/dx|` `[N]` in nats (the standardisation's included),
    /// both in the flow's float type. [`DensityModel::encode`] is the latent alone.
    pub fn encode_with_logdet(&self, x: Tensor<2>, ctx: Context) -> (Tensor<2>, Tensor<1>) {
        let c = self.ctx(ctx);
        let (h, ld0) = self.pre(x);
        self.encode_from(h, ld0, c.as_ref())
    }

    /// Map latents `z: [N, D]` to raw points `[N, D]` (un-standardised in float64, returned in
    /// the flow's float type: a [float64 copy](crate::tensor_util::cast_module) of the model
    /// keeps every digit of a column like `1e9 + N(0, 1)`) and `log|det dx/dz|` `[N]` in nats,
    /// the negative of [`encode_with_logdet`](Self::encode_with_logdet)'s at the same point.
    /// [`DensityModel::decode`] is the points alone.
    pub fn decode_with_logdet(&self, z: Tensor<2>, ctx: Context) -> (Tensor<2>, Tensor<1>) {
        let c = self.ctx(ctx);
        let (x, ld) = self.flow.inverse_ctx(vec_to_nchw(z), c.as_ref());
        match &self.standardize {
            Some(s) => {
                let l = s.logdet(&x).neg();
                let dtype = x.dtype();
                (s.unstandardize_2d(nchw_to_vec(x)).cast(dtype), ld + l)
            }
            None => (nchw_to_vec(x), ld),
        }
    }

    /// `log p(x | ctx)` in the raw data's units, from rows and context already standardised
    /// with [`standardization`](Self::standardization) (the training loop's path).
    pub fn log_prob_standardized(&self, x: Tensor<2>, ctx: Context) -> Tensor<1> {
        let c = self.ctx_standardized(ctx);
        let (h, ld0) = self.pre_standardized(x);
        let (z, ld) = self.encode_from(h, ld0, c.as_ref());
        standard_normal_log_prob(vec_to_nchw(z)) + ld
    }

    /// Draw `n` points with every prior standard deviation scaled by `temperature` (Glow
    /// §5.3), for a context `[n, K]` or none, deterministic for the RNG's state: the points
    /// `[n, D]` and their model log-density `[n]` in nats, `log p(x) = log N(z; 0, I) -
    /// log|det dx/dz|` at the drawn latent `z` (the model's density, not the tempered one's).
    /// [`DensityModel::sample`] is the points alone.
    pub fn sample_and_log_prob(
        &self,
        n: usize,
        temperature: f64,
        ctx: Context,
        rng: &mut impl rand::Rng,
        device: &Device,
    ) -> (Tensor<2>, Tensor<1>) {
        let dim = self.dim();
        let z = standard_normal_sample([n, dim, 1, 1], temperature, rng, device)
            .cast(self.compute_dtype());
        let (x, ld_inv) = self.decode_with_logdet(nchw_to_vec(z.clone()), ctx);
        // log p(x) = log N(z) - log|det dx/dz|.
        let logp = standard_normal_log_prob(z) - ld_inv;
        (x, logp)
    }

    /// The data dimension `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

impl DensityModel for VectorFlow {
    type Data = Tensor<2>;
    type Latent = Tensor<2>;

    /// `log p(x | ctx) = log N(z; 0, I) + log|det dz/dx|` per raw point `x: [N, D]`, `[N]`,
    /// nats in the data's units (the standardisation's log-determinant included).
    fn log_prob(&self, x: Tensor<2>, ctx: Context) -> Tensor<1> {
        let (z, ld) = self.encode_with_logdet(x, ctx);
        standard_normal_log_prob(vec_to_nchw(z)) + ld
    }

    /// The latents `[N, D]` of raw points `x: [N, D]`:
    /// [`encode_with_logdet`](VectorFlow::encode_with_logdet) without the log-determinant.
    fn encode(&self, x: Tensor<2>, ctx: Context) -> Tensor<2> {
        self.encode_with_logdet(x, ctx).0
    }

    /// The raw points `[N, D]` of latents `z: [N, D]`:
    /// [`decode_with_logdet`](VectorFlow::decode_with_logdet) without the log-determinant.
    fn decode(&self, z: &Tensor<2>, ctx: Context) -> Tensor<2> {
        self.decode_with_logdet(z.clone(), ctx).0
    }

    /// `n` points `[n, D]`: [`sample_and_log_prob`](VectorFlow::sample_and_log_prob) without
    /// the log-densities.
    fn sample<R: rand::Rng>(
        &self,
        n: usize,
        temperature: f64,
        ctx: Context,
        rng: &mut R,
        device: &Device,
    ) -> Tensor<2> {
        self.sample_and_log_prob(n, temperature, ctx, rng, device).0
    }
}
