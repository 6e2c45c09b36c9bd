//! Invertible backpropagation: gradients through a flow without keeping its activations.
//!
//! A flow is invertible, so the backward pass can rebuild each layer's input from its output
//! instead of storing it (Gomez, Ren, Urtasun and Grosse 2017, arXiv 1707.04585, §4; the
//! memory-saving gradients openai/glow trained its large models with). The forward pass runs
//! without recording anything; the backward pass walks the layers from the last: rebuild the
//! layer's input with its inverse, run that one layer's forward again with autodiff on a leaf,
//! backpropagate `sum(y * dL/dy) + sum(logdet * dL/dlogdet)` into the layer's parameters and
//! its input, and drop the layer's graph before the next. Memory is one layer's activations
//! (plus the sequence's input and output) whatever the depth; the price is one more forward and
//! one inverse per layer. A coupling (affine or additive) evaluates its network once for both:
//! the autodiff forward of the network on the conditioning half (which the output carries
//! unchanged) gives the values the inverse needs and the graph the re-run needs, so a coupling's
//! inverse adds only its element-wise part.
//!
//! A rebuilt input differs from the original by the inverse's round-off, which grows with the
//! number of layers inverted in a row. So the forward pass keeps the input of every
//! `keep_every`-th layer (an anchor, a few values per pixel, small beside a coupling network's
//! hidden activations) and the backward pass restarts from the kept input there: the round-off
//! of at most `keep_every` inverses reaches any gradient. Measured on image Glow's steps
//! (`tests/low_memory.rs`): float32 gradients through 8 flow steps (24 layers) stay at the
//! float32 noise of ordinary backpropagation, through 64 steps inverted in a row they drift to
//! 3e-4 of the largest gradient; [`KEEP_EVERY_STEPS`] is the image models' choice for affine
//! and additive couplings. Spline couplings keep every layer's input (the float32 spline
//! inverse is too inexact, see [`image_loss_and_grads`]): ordinary gradient checkpointing, at
//! `C H W` floats per layer.
//!
//! [`image_loss_and_grads`] applies this to the whole multi-scale image Glow (split priors, the
//! top prior, class conditioning, variational dequantisation): the levels' flow sequences are
//! inverted, everything else (the priors, the dequantiser, the class head) is small and
//! backpropagated ordinarily.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::flow::{Context, Flow};
use crate::layers::squeeze::unsqueeze;
use crate::layers::{FlowSequence, Layer};
use crate::models::objective::{class_bits, BatchLayout};
use crate::models::{GlowImage, GlowImageConfig, ImageCoupling};
use crate::ops::parallel::GradSink;

/// Flow steps of image Glow between kept inputs in the low-memory backward pass (each step is
/// three layers: ActNorm, 1x1 convolution, coupling). Gradients through 8 steps inverted in a
/// row are at float32's own noise (module docs); the kept inputs cost `C H W / 8` floats per
/// image and step beside a coupling network's `width x H x W` several times over.
pub const KEEP_EVERY_STEPS: usize = 8;

/// The size of one hidden activation of a coupling network (`net_width x H x W` floats per
/// image) that sets how many images each flow layer of [`image_loss_and_grads`] runs at a time,
/// forward and backward ([`Forward::run_in_chunks`]): the network's activations, and in the
/// backward pass their gradients, are a few such tensors, so a layer's memory stays near a few
/// times this whatever the batch. 2 MiB is 4 images of the Glow paper's CIFAR-10 model at its first level (width 512,
/// 16 x 16), 16 at its second; its third level and narrower models (width 96 on 28 x 28: 27
/// images) mostly run a data-parallel shard in one chunk. Measured on that model at K = 32
/// (batch 64, two shards): peak 1,063 MiB unchunked, 1,019 / 989 / 931 / 907 MiB with 8 / 4 /
/// 2 / 1 MiB, no slower (smaller GEMM outputs stay in cache).
pub const LAYER_CHUNK_BYTES: usize = 2 << 20;

/// Images per chunk of the backward pass when one image's coupling-network hidden activation
/// is `hidden` bytes and a chunk may hold `chunk_bytes` of it (at least 1).
pub fn chunk_images(hidden: usize, chunk_bytes: usize) -> usize {
    (chunk_bytes / hidden.max(1)).max(1)
}

/// What [`sequence_grads`] returns.
pub struct SequenceGrads {
    /// The loss value `head(z, logdet)` (`[1]`, inner backend).
    pub loss: Tensor<1>,
    /// The gradients of the loss with respect to every trainable parameter of the sequence.
    pub grads: GradientsParams,
    /// The gradient with respect to the sequence's input `x` (`[N, C, H, W]`, inner backend).
    pub input_grad: Tensor<4>,
}

/// A flow sequence's forward pass on the inner backend (nothing recorded): its output, its
/// per-sample log-determinant and the inputs of every `keep_every`-th layer (the anchors of
/// [`Forward::backward`]).
pub struct Forward {
    /// The output `[N, C, H, W]` (inner backend).
    pub y: Tensor<4>,
    /// The log-determinant `[N]` (inner backend).
    pub logdet: Tensor<1>,
    /// The inputs of layers `0, k, 2k, ...` (inner backend).
    kept: Vec<Tensor<4>>,
    /// `k`, at least 1.
    keep_every: usize,
    /// Images per chunk of a layer ([`run_in_chunks`](Self::run_in_chunks)).
    chunk: usize,
    /// The sequence on the inner backend (its layers' inverses rebuild the inputs).
    inner: FlowSequence,
}

impl Forward {
    /// Run `seq` (on an autodiff device) forward on the inner backend from `x` (inner
    /// backend), keeping the input of every `keep_every`-th layer (`usize::MAX`: only the
    /// first, i.e. every input rebuilt by inversion from the output).
    pub fn run(seq: &FlowSequence, x: Tensor<4>, ctx: Context, keep_every: usize) -> Self {
        Self::run_in_chunks(seq, x, ctx, keep_every, usize::MAX)
    }

    /// [`run`](Self::run) with every layer applied to at most `chunk` images at a time, here
    /// and in the [`backward`](Self::backward) pass: a layer's transient activations (a
    /// coupling network's hidden ones, and in the backward pass their gradients, the largest
    /// things it holds) then live for `chunk` images instead of the whole batch; a layer's
    /// parameter gradients are the chunks' sum (in chunk order). The layers see no batch
    /// statistics (checked), so values and gradients are the whole batch's up to float32
    /// rounding.
    pub fn run_in_chunks(
        seq: &FlowSequence,
        x: Tensor<4>,
        ctx: Context,
        keep_every: usize,
        chunk: usize,
    ) -> Self {
        let (keep_every, chunk) = (keep_every.max(1), chunk.max(1));
        assert!(
            !seq.layers.iter().any(|l| l.uses_batch_statistics()),
            "invertible backpropagation needs layers whose training forward does not depend on the batch"
        );
        let inner = seq.valid();
        let ctx = ctx.map(|c| c.clone().inner());
        let mut kept = Vec::new();
        let mut h = x;
        let mut logdet = crate::flow::zero_logdet(&h);
        let n = h.dims()[0];
        for (i, layer) in inner.layers.iter().enumerate() {
            if i % keep_every == 0 {
                kept.push(h.clone());
            }
            let (y, ld) = if n <= chunk {
                layer.forward_ctx(h, ctx.as_ref())
            } else {
                let (mut ys, mut lds) = (Vec::new(), Vec::new());
                for (start, len) in chunk_ranges(n, chunk) {
                    let ctx_piece = ctx.as_ref().map(|c| c.clone().narrow(0, start, len));
                    let (y, ld) =
                        layer.forward_ctx(h.clone().narrow(0, start, len), ctx_piece.as_ref());
                    ys.push(y);
                    lds.push(ld);
                }
                (Tensor::cat(ys, 0), Tensor::cat(lds, 0))
            };
            h = y;
            logdet = logdet + ld;
        }
        Forward {
            y: h,
            logdet,
            kept,
            keep_every,
            chunk,
            inner,
        }
    }

    /// The backward pass of `seq` for the gradients `grad_y` of the loss with respect to the
    /// output and `grad_ld` with respect to the log-determinant (both inner backend): every
    /// parameter's gradient is deposited in `grads` layer by layer, from the last layer (once
    /// per parameter: a [`ShardSink`](crate::ops::parallel::ShardSink) refuses a second), and
    /// the gradient with respect to the input is returned (inner backend). `seq` and `ctx` are
    /// those of [`run`](Self::run).
    pub fn backward(
        self,
        seq: &FlowSequence,
        ctx: Context,
        mut grad_y: Tensor<4>,
        grad_ld: Tensor<1>,
        grads: &mut impl GradSink,
    ) -> Tensor<4> {
        let Forward {
            mut y,
            mut kept,
            keep_every,
            chunk,
            inner,
            ..
        } = self;
        let grad_ld = Tensor::from_inner(grad_ld);
        let n = y.dims()[0];
        for (i, (layer, layer_inner)) in seq.layers.iter().zip(&inner.layers).enumerate().rev() {
            let anchor =
                (i % keep_every == 0).then(|| kept.pop().expect("an input kept for every anchor"));
            let step = LayerStep { layer, layer_inner };
            if n <= chunk {
                (y, grad_y) = step.run(y, grad_y, grad_ld.clone(), anchor, ctx, grads);
                continue;
            }
            let mut layer_grads = GradientsParams::new();
            let (mut xs, mut gs) = (Vec::new(), Vec::new());
            for (start, len) in chunk_ranges(n, chunk) {
                let ctx_piece = ctx.map(|c| c.clone().narrow(0, start, len));
                let (x, g) = step.run(
                    y.clone().narrow(0, start, len),
                    grad_y.clone().narrow(0, start, len),
                    grad_ld.clone().narrow(0, start, len),
                    anchor.as_ref().map(|a| a.clone().narrow(0, start, len)),
                    ctx_piece.as_ref(),
                    &mut layer_grads,
                );
                xs.push(x);
                gs.push(g);
            }
            grads.deposit(layer, layer_grads);
            y = Tensor::cat(xs, 0);
            grad_y = Tensor::cat(gs, 0);
        }
        grad_y
    }
}

/// `(start, len)` of the chunks of at most `chunk` images that `n` images split into, in order.
fn chunk_ranges(n: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(chunk)
        .map(move |start| (start, chunk.min(n - start)))
}

/// One layer of [`Forward::backward`]: the layer on the autodiff device and on the inner one.
struct LayerStep<'a> {
    layer: &'a Layer,
    layer_inner: &'a Layer,
}

impl LayerStep<'_> {
    /// From the layer's output `y` and the gradients of the loss with respect to it and to
    /// the log-determinant (`grad_ld`, autodiff device), the layer's input (rebuilt by its
    /// inverse, or the kept `anchor`) and the gradient with respect to it; the parameter
    /// gradients go to `grads`.
    fn run(
        &self,
        y: Tensor<4>,
        grad_y: Tensor<4>,
        grad_ld: Tensor<1>,
        anchor: Option<Tensor<4>>,
        ctx: Context,
        grads: &mut impl GradSink,
    ) -> (Tensor<4>, Tensor<4>) {
        let layer = self.layer;
        // A coupling whose input is rebuilt evaluates its network once for the inverse and
        // the forward (the same values either way).
        let rebuilt = match (layer, &anchor) {
            (_, Some(_)) => None,
            (Layer::AffineCoupling(c), None) => c.rebuild(y.clone(), ctx),
            (Layer::AdditiveCoupling(c), None) => Some(c.rebuild(y.clone(), ctx)),
            _ => None,
        };
        if let Some(r) = rebuilt {
            let surrogate = (r.y.clone() * Tensor::from_inner(grad_y)).sum()
                + (r.logdet.clone() * grad_ld).sum();
            let g = surrogate.backward();
            let grad_x = r.input_grad(&g);
            grads.deposit(layer, GradientsParams::from_grads(g, layer));
            return (r.x, grad_x);
        }
        let x = match anchor {
            Some(x) => x,
            None => {
                let ctx_inner = ctx.map(|c| c.clone().inner());
                self.layer_inner.inverse_ctx(y, ctx_inner.as_ref()).0
            }
        };
        let x_leaf = Tensor::from_inner(x.clone()).require_grad();
        let (y_again, ld_again) = layer.forward_ctx(x_leaf.clone(), ctx);
        let surrogate = (y_again * Tensor::from_inner(grad_y)).sum() + (ld_again * grad_ld).sum();
        let g = surrogate.backward();
        let grad_x = x_leaf.grad(&g).expect("a layer's output reads its input");
        grads.deposit(layer, GradientsParams::from_grads(g, layer));
        (x, grad_x)
    }
}

/// Gradients of `head(z, logdet)` with respect to `seq`'s parameters and its input, where
/// `(z, logdet) = seq.forward(x)`, by invertible backpropagation (module docs) with an input
/// kept every `keep_every` layers (`usize::MAX`: none but the first). `seq` lives on an
/// autodiff device and is initialised (ActNorm); `x` (`[N, C, H, W]`) and `ctx` are on the
/// same device; `head` maps the output and the per-sample log-determinant (`[N]`) to a scalar
/// loss (`[1]`) and must not read parameters of `seq` (a prior's own parameters are its
/// caller's). The gradients equal ordinary backpropagation's up to the inverses' round-off.
pub fn sequence_grads(
    seq: &FlowSequence,
    x: Tensor<4>,
    ctx: Context,
    keep_every: usize,
    head: impl Fn(Tensor<4>, Tensor<1>) -> Tensor<1>,
) -> SequenceGrads {
    let fwd = Forward::run(seq, x.inner(), ctx, keep_every);
    // The head on leaves: dL/dz and dL/dlogdet.
    let z_leaf = Tensor::from_inner(fwd.y.clone()).require_grad();
    let ld_leaf = Tensor::from_inner(fwd.logdet.clone()).require_grad();
    let loss = head(z_leaf.clone(), ld_leaf.clone());
    let g = loss.backward();
    let grad_y = z_leaf.grad(&g).expect("the loss reads the flow's output");
    let grad_ld = ld_leaf
        .grad(&g)
        .unwrap_or_else(|| ld_leaf.clone().inner().zeros_like());
    let mut grads = GradientsParams::new();
    let input_grad = fwd.backward(seq, ctx, grad_y, grad_ld, &mut grads);
    SequenceGrads {
        loss: loss.inner(),
        grads,
        input_grad,
    }
}

/// The training objective of image Glow on a batch `x` of `layout` (see
/// [`objective::batch_loss`](crate::models::objective::batch_loss), whose value it equals)
/// times `weight`, and its gradients for every trainable parameter of `model`, by invertible
/// backpropagation through every level's flow steps (an input kept every
/// [`KEEP_EVERY_STEPS`] steps). Returns the weighted loss and the gradients; see
/// [`image_loss_and_grads_into`] for gradients deposited as they are computed.
///
/// Memory: every level's flow input and output and the kept inputs (a few values per pixel),
/// one flow layer's recomputation at a time on at most [`LAYER_CHUNK_BYTES`] of its
/// coupling network's hidden activation (a few such tensors), and the priors', dequantiser's
/// and class head's graphs. The flow steps' forward runs twice and each of their inverses once (a coupling's
/// network once for both, see the module docs).
pub fn image_loss_and_grads(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    layout: &BatchLayout,
    x: Tensor<2>,
    weight_y: f64,
    weight: f64,
) -> (f64, GradientsParams) {
    let mut grads = GradientsParams::new();
    let value = image_loss_and_grads_into(model, cfg, layout, x, weight_y, weight, &mut grads);
    (value, grads)
}

/// [`image_loss_and_grads`] depositing the gradients into `grads` as they are computed: the
/// priors', class prior's and class head's first, then each flow layer's from the top level
/// down, the dequantiser's last (so a data-parallel shard's [`ShardSink`] adds them to the
/// shards' one sum as they come instead of keeping a whole gradient set of its own). Returns
/// the weighted loss.
///
/// [`ShardSink`]: crate::ops::parallel::ShardSink
pub fn image_loss_and_grads_into(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    layout: &BatchLayout,
    x: Tensor<2>,
    weight_y: f64,
    weight: f64,
    grads: &mut impl GradSink,
) -> f64 {
    let chunk_bytes = LAYER_CHUNK_BYTES;
    image_loss_and_grads_chunked(model, cfg, layout, x, weight_y, weight, chunk_bytes, grads)
}

/// [`image_loss_and_grads_into`] with the backward pass's chunk set by `chunk_bytes` instead of
/// [`LAYER_CHUNK_BYTES`] (tests run small models in several chunks with it).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn image_loss_and_grads_chunked(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    layout: &BatchLayout,
    x: Tensor<2>,
    weight_y: f64,
    weight: f64,
    chunk_bytes: usize,
    grads: &mut impl GradSink,
) -> f64 {
    use crate::models::objective::{bpd_of, input_images, minus_log_q};
    let (d, n_bits) = (cfg.dims(), cfg.n_bits);
    let cols = layout.split(x);
    // The dequantised images: a data tensor, or a variational dequantiser's draw (its graph
    // kept, small, for the last backward pass below).
    let (img, log_q) = input_images(model, cfg, cols.input);
    let img_in = Tensor::from_inner(img.clone().inner());
    let log_q_leaf = log_q
        .as_ref()
        .map(|q| Tensor::from_inner(q.clone().inner()).require_grad());
    // Each level's flow on the inner backend; its output and log-determinant enter the priors
    // as leaves.
    // Spline couplings keep every layer's input (recomputed, never inverted): the float32
    // inverse of a rational-quadratic spline (the root of a quadratic) rebuilds inputs far less
    // exactly, and 9 perturbed spline steps in a row gave gradients 0.49 (relative) off.
    let keep_every = match cfg.coupling {
        ImageCoupling::Spline => 1,
        _ => 3 * KEEP_EVERY_STEPS,
    };
    let mut levels: Vec<(Forward, Tensor<4>, Tensor<1>)> = Vec::new();
    let (prior, zs) = model.forward_latents_with(img_in, cols.prior.as_ref(), |_, seq, h, c| {
        let [_, _, height, width] = h.dims();
        let hidden = cfg.net_width * height * width * h.dtype().size();
        let chunk = chunk_images(hidden, chunk_bytes);
        let fwd = Forward::run_in_chunks(seq, h.inner(), c, keep_every, chunk);
        let y = Tensor::from_inner(fwd.y.clone()).require_grad();
        let ld = Tensor::from_inner(fwd.logdet.clone()).require_grad();
        levels.push((fwd, y.clone(), ld.clone()));
        Ok((y, ld))
    });
    let bpd = bpd_of(minus_log_q(prior, log_q_leaf.clone()), d, n_bits);
    let loss = match (cols.truth, weight_y) {
        (Some(truth), w) if w != 0.0 => {
            let top = zs.last().expect("a top latent").clone();
            let logits = model.class_logits(top).expect("conditional model");
            bpd + class_bits(logits, truth).mul_scalar(w)
        }
        _ => bpd,
    }
    .mul_scalar(weight);
    let value = crate::tensor_util::to_vec_f64(loss.clone().inner())[0];
    let g = loss.backward();
    let grad_log_q = log_q_leaf.as_ref().and_then(|q| q.grad(&g));
    let heads: Vec<(Tensor<4>, Tensor<1>)> = levels
        .iter()
        .map(|(_, y, ld)| {
            let gy = y.grad(&g).unwrap_or_else(|| y.clone().inner().zeros_like());
            let gld = ld
                .grad(&g)
                .unwrap_or_else(|| ld.clone().inner().zeros_like());
            (gy, gld)
        })
        .collect();
    grads.deposit(model, GradientsParams::from_grads(g, model));
    // The levels from the top down: a level's output gradient is its priors' plus, through
    // the kept half, the level above's input gradient (a squeeze's adjoint is its inverse).
    let ctx = model.flow_context(cols.prior.as_ref(), img.dims()[0], &img.device());
    let mut from_above: Option<Tensor<4>> = None;
    for ((fwd, _, _), (gy, gld), level) in levels
        .into_iter()
        .zip(heads)
        .zip(&model.levels)
        .map(|((a, b), c)| (a, b, c))
        .rev()
    {
        let gy = match from_above.take() {
            None => gy,
            Some(g_keep) => {
                let c = gy.dims()[1];
                let z_part = gy.clone().narrow(1, 0, c - g_keep.dims()[1]);
                let keep_part = gy.narrow(1, c - g_keep.dims()[1], g_keep.dims()[1]) + g_keep;
                Tensor::cat(vec![z_part, keep_part], 1)
            }
        };
        let g_in = fwd.backward(&level.flow, ctx.as_ref(), gy, gld, grads);
        from_above = Some(unsqueeze(g_in));
    }
    // The variational dequantiser: its images' and log q's gradients through its own graph.
    if let Some(q) = &model.dequantizer {
        let g_img = Tensor::from_inner(from_above.expect("at least one level"));
        let mut surrogate = (img * g_img).sum();
        if let (Some(log_q), Some(g)) = (log_q, grad_log_q) {
            surrogate = surrogate + (log_q * Tensor::from_inner(g)).sum();
        }
        let g = surrogate.backward();
        grads.deposit(q, GradientsParams::from_grads(g, q));
    }
    value
}
