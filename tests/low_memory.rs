//! Invertible backpropagation (`train::low_memory`) gives ordinary backpropagation's gradients.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};
use common::{ad_device, perturb, random_input};
use glowflow::flow::Context;
use glowflow::flow::Flow;
use glowflow::layers::{AffineScale, FlowSequence, Permutation};
use glowflow::models::objective::{batch_loss, BatchLayout};
use glowflow::models::{Dequantization, DequantizerConfig, VectorFlow, VectorFlowConfig};
use glowflow::models::{GlowImage, GlowImageConfig, ImageCoupling};
use glowflow::tensor_util::to_vec_f64;
use glowflow::train::low_memory::{
    image_loss_and_grads, image_loss_and_grads_chunked, image_loss_and_grads_into, sequence_grads,
    Forward, KEEP_EVERY_STEPS,
};
use glowflow::train::parallel::{backprop, shard_grads_into};

/// The first level's flow (ActNorm, LU 1x1 convolution, affine coupling with Glow's CNN, K
/// times) of a small image Glow, initialised and perturbed so no layer is the identity.
fn level_flow(k: usize) -> FlowSequence {
    let cfg = GlowImageConfig {
        levels: 1,
        steps_per_level: k,
        net_width: 8,
        coupling: ImageCoupling::Affine,
        permutation: Permutation::Lu,
        affine_scale: AffineScale::Bounded,
        ..GlowImageConfig::new(1, 8, 8)
    };
    let device = ad_device();
    let mut m = GlowImage::new(&cfg, &device);
    m.initialize(random_input([16, 1, 8, 8], 1, &device).mul_scalar(0.3));
    let m = perturb(m, 0.05, 3);
    m.levels.into_iter().next().unwrap().flow
}

/// The standard normal NLL per sample, averaged: `mean(0.5 |z|^2 - logdet)`.
fn head(z: Tensor<4>, logdet: Tensor<1>) -> Tensor<1> {
    let n = z.dims()[0];
    let sq = z
        .powi_scalar(2)
        .reshape([n as i32, -1])
        .sum_dim(1)
        .reshape([n]);
    (sq.mul_scalar(0.5) - logdet).mean()
}

/// Parameter and input gradients of both methods, float32 (K = 2 to 32) and float64 (K = 2 to
/// 64): the rebuilt inputs carry the inverses' round-off down the depth.
#[test]
fn invertible_backprop_matches_ordinary_backprop() {
    // float32 at K = 64 drifts further (parameter gradients 0.18 off at largest 547, 3e-4
    // relative, on this model): the rebuilt inputs need a kept checkpoint every few steps there.
    for k in [2, 8, 32, 64] {
        let dtypes: &[DType] = if k > 32 {
            &[DType::F64]
        } else {
            &[DType::F32, DType::F64]
        };
        for &dtype in dtypes {
            let seq = match dtype {
                DType::F64 => common::float64_leaves(level_flow(k)),
                _ => level_flow(k),
            };
            let device = ad_device();
            let x = random_input([6, 4, 4, 4], 5, &device).cast(dtype);
            // Ordinary backpropagation.
            let x_leaf = x.clone().require_grad();
            let (z, ld) = seq.forward_ctx(x_leaf.clone(), None);
            let loss = head(z, ld);
            let g = loss.backward();
            let input_grad = x_leaf.grad(&g).unwrap();
            let ordinary = GradientsParams::from_grads(g, &seq);
            // Invertible backpropagation.
            // Nothing kept but the input: every layer rebuilt by inversion.
            let low = sequence_grads(&seq, x, None, usize::MAX, head);
            assert_eq!(
                to_vec_f64(low.loss.clone()),
                to_vec_f64(loss.inner()),
                "K={k} {dtype:?}: the loss differs"
            );
            let (rel, count) = relative_error(&seq, &low.grads, &ordinary);
            let scale = largest(&seq, &ordinary);
            let err = rel * scale.max(1.0);
            // 4 parameters of ActNorm and LU per step, the coupling CNN's 12 (three convs,
            // two ActNorms), plus the coupling's scale.
            assert!(count >= 10 * k, "K={k}: only {count} parameters compared");
            let (di, si) = {
                let (u, v) = (to_vec_f64(low.input_grad), to_vec_f64(input_grad));
                let s = v.iter().fold(0f64, |m, x| m.max(x.abs()));
                (
                    u.iter()
                        .zip(&v)
                        .fold(0f64, |m, (a, b)| m.max((a - b).abs())),
                    s,
                )
            };
            let tol = if dtype == DType::F64 { 1e-10 } else { 2e-4 };
            eprintln!(
                "K={k} {dtype:?}: parameter gradients differ by {err:.2e} (largest {scale:.2e}), \
                 input gradient by {di:.2e} (largest {si:.2e}), {count} parameters"
            );
            assert!(
                err <= tol * scale.max(1.0),
                "K={k} {dtype:?}: {err} of {scale}"
            );
            assert!(
                di <= tol * si.max(1.0),
                "K={k} {dtype:?}: input {di} of {si}"
            );
        }
    }
}

/// Largest gradient difference relative to the largest gradient (at least 1), over every
/// parameter of `m`, and the number of parameters compared.
fn relative_error<M: Module>(m: &M, a: &GradientsParams, b: &GradientsParams) -> (f64, usize) {
    struct V<'a> {
        a: &'a GradientsParams,
        b: &'a GradientsParams,
        err: f64,
        scale: f64,
        count: usize,
    }
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let (x, y) = (self.a.get::<D>(p.id), self.b.get::<D>(p.id));
            assert_eq!(
                x.is_some(),
                y.is_some(),
                "a parameter {:?} has a gradient on one side only",
                p.shape()
            );
            let (Some(x), Some(y)) = (x, y) else { return };
            for (u, v) in to_vec_f64(x).iter().zip(to_vec_f64(y)) {
                self.err = self.err.max((u - v).abs());
                self.scale = self.scale.max(v.abs());
            }
            self.count += 1;
        }
    }
    let mut v = V {
        a,
        b,
        err: 0.0,
        scale: 0.0,
        count: 0,
    };
    m.visit(&mut v);
    (v.err / v.scale.max(1.0), v.count)
}

/// Every layer kind a flow sequence holds (ActNorm, both 1x1 convolutions, the fixed
/// permutations, affine, additive and spline couplings with convolutional and dense networks,
/// with and without a context): invertible backpropagation, inverting every layer, gives
/// ordinary backpropagation's gradients in float32 and float64.
#[test]
fn every_layer_kind_matches_ordinary_backprop() {
    use glowflow::models::{CouplingKind, ModelKind};
    let device = ad_device();
    let mut cases: Vec<(String, FlowSequence, [usize; 4], usize)> = Vec::new();
    for (coupling, permutation) in [
        (ImageCoupling::Affine, Permutation::Plain),
        (ImageCoupling::Additive, Permutation::Reverse),
        (ImageCoupling::Spline, Permutation::Shuffle),
    ] {
        let cfg = GlowImageConfig {
            levels: 1,
            steps_per_level: 2,
            net_width: 8,
            coupling,
            permutation,
            ..GlowImageConfig::new(1, 8, 8)
        };
        let mut m = GlowImage::new(&cfg, &device);
        m.initialize(random_input([16, 1, 8, 8], 1, &device).mul_scalar(0.3));
        let flow = perturb(m, 0.05, 3).levels.into_iter().next().unwrap().flow;
        cases.push((
            format!("image {coupling:?} {permutation:?}"),
            flow,
            [6, 4, 4, 4],
            0,
        ));
    }
    for (coupling, permutation, context) in [
        (CouplingKind::Tanh, Permutation::Lu, 0),
        (CouplingKind::Sigmoid, Permutation::Shuffle, 2),
        (CouplingKind::Spline, Permutation::Lu, 2),
        (CouplingKind::Additive, Permutation::Reverse, 0),
    ] {
        let cfg = VectorFlowConfig {
            model: ModelKind::Glow,
            flow_steps: 3,
            net_width: 16,
            coupling,
            permutation,
            features: 4,
            context,
            ..VectorFlowConfig::new(ModelKind::Glow)
        };
        let mut m = VectorFlow::new(&cfg, &device);
        let ctx = (context > 0).then(|| random_2d([64, context], 7));
        m.initialize(random_2d([64, 4], 6), ctx.as_ref());
        let flow = perturb(m, 0.05, 4).flow;
        let name = format!("vector {coupling:?} {permutation:?} context {context}");
        cases.push((name, flow, [8, 4, 1, 1], context));
    }
    for (name, seq, shape, context) in cases {
        for dtype in [DType::F32, DType::F64] {
            let seq = match dtype {
                DType::F64 => common::float64_leaves(seq.clone()),
                _ => seq.clone(),
            };
            let x = random_input(shape, 5, &device).cast(dtype);
            let ctx = (context > 0).then(|| random_2d([shape[0], context], 8).cast(dtype));
            let x_leaf = x.clone().require_grad();
            let (z, ld) = seq.forward_ctx(x_leaf.clone(), ctx.as_ref());
            let g = head(z, ld).backward();
            let input_grad = x_leaf.grad(&g).unwrap();
            let ordinary = GradientsParams::from_grads(g, &seq);
            let (chunked, chunked_input) =
                chunked_grads(&seq, x.clone(), ctx.as_ref(), shape[0] / 2 + 1);
            let low = sequence_grads(&seq, x, ctx.as_ref(), usize::MAX, head);
            let (err, count) = relative_error(&seq, &low.grads, &ordinary);
            // The backward pass in two unequal chunks.
            let (chunk_err, _) = relative_error(&seq, &chunked, &ordinary);
            let chunk_input_err = max_abs_diff(&chunked_input, &input_grad);
            let (u, v) = (to_vec_f64(low.input_grad), to_vec_f64(input_grad));
            let si = v.iter().fold(1f64, |m, x| m.max(x.abs()));
            let di = u
                .iter()
                .zip(&v)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
                / si;
            let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
            eprintln!(
                "{name} {dtype:?}: {count} parameters, relative error {err:.1e}, input {di:.1e}"
            );
            assert!(count >= 6, "{name}: only {count} parameters compared");
            assert!(err <= tol, "{name} {dtype:?}: relative error {err}");
            assert!(
                chunk_err <= tol && chunk_input_err <= tol * si,
                "{name} {dtype:?}: chunked backward off by {chunk_err} (parameters), {chunk_input_err} (input)"
            );
            assert!(
                di <= tol,
                "{name} {dtype:?}: input gradient off by {di} (relative)"
            );
        }
    }
}

/// [`sequence_grads`] with every layer inverted and run `chunk` images at a time, forward and
/// backward ([`Forward::run_in_chunks`]): the parameter gradients and the input gradient.
fn chunked_grads(
    seq: &FlowSequence,
    x: Tensor<4>,
    ctx: Context,
    chunk: usize,
) -> (GradientsParams, Tensor<4>) {
    assert!(
        x.dims()[0] > chunk && !x.dims()[0].is_multiple_of(chunk),
        "chunks of unequal sizes"
    );
    let fwd = Forward::run_in_chunks(seq, x.inner(), ctx, usize::MAX, chunk);
    let z = Tensor::from_inner(fwd.y.clone()).require_grad();
    let ld = Tensor::from_inner(fwd.logdet.clone()).require_grad();
    let g = head(z.clone(), ld.clone()).backward();
    let (gz, gld) = (z.grad(&g).unwrap(), ld.grad(&g).unwrap());
    let mut grads = GradientsParams::new();
    let input = fwd.backward(seq, ctx, gz, gld, &mut grads);
    (grads, Tensor::from_inner(input))
}

/// The largest absolute difference between two tensors' values.
fn max_abs_diff<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f64 {
    let (a, b) = (to_vec_f64(a.clone()), to_vec_f64(b.clone()));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (u, v)| m.max((u - v).abs()))
}

/// Data-parallel shards of invertible backpropagation deposit their gradients layer by layer
/// into one sum (`parallel::shard_grads_into`); that sum is bitwise the shards' whole gradient
/// sets added in shard order (the shards' threads decide the arrival order; the unit test in
/// `ops::parallel` forces every order), and equals ordinary backpropagation of the whole
/// batch.
#[test]
fn sharded_invertible_backprop_sums_in_shard_order() {
    let device = ad_device();
    let cfg = GlowImageConfig {
        levels: 2,
        steps_per_level: 3,
        net_width: 8,
        ..GlowImageConfig::new(2, 8, 8)
    };
    let mut m = GlowImage::new(&cfg, &device);
    m.initialize(random_input([16, 2, 8, 8], 1, &device).mul_scalar(0.2));
    let m = perturb(m, 0.05, 3);
    let layout = BatchLayout::new(&cfg, 0.0);
    let (n, width) = (7, layout.width());
    let rows = batch_rows(&cfg, &layout, n);
    let tensor = |rows: &[f32]| {
        Tensor::<2>::from_data(
            burn::tensor::TensorData::new(rows.to_vec(), [rows.len() / width, width]),
            &device,
        )
    };
    // Shards of 3, 3 and 1 rows, each summed in shard order by hand, each on one thread as
    // the shards are (a convolution splits its images over the threads it has).
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut by_hand: Option<(f64, GradientsParams)> = None;
    for part in rows.chunks(3 * width) {
        let k = part.len() / width;
        let w = k as f64 / n as f64;
        let (v, g) =
            one_thread.install(|| image_loss_and_grads(&m, &cfg, &layout, tensor(part), 0.0, w));
        by_hand = Some(match by_hand {
            None => (v, g),
            Some((acc_v, acc)) => (acc_v + v, add_grads(&m, acc, g)),
        });
    }
    let (v_hand, hand) = by_hand.unwrap();
    let (v_sum, summed) = shard_grads_into(&m, &rows, width, 3, &device, |m, x, w, sink| {
        image_loss_and_grads_into(m, &cfg, &layout, x, 0.0, w, sink)
    });
    let (exact, count) = relative_error(&m, &summed, &hand);
    assert!(count >= 24, "only {count} parameters compared");
    assert_eq!(exact, 0.0, "the in-place sum differs from shard order");
    assert!((v_sum - v_hand).abs() <= 1e-12 * v_hand.abs());
    let (v0, ordinary) = backprop(&m, batch_loss(&m, &cfg, &layout, tensor(&rows), 0.0), 1.0);
    let (err, _) = relative_error(&m, &summed, &ordinary);
    assert!(
        err <= 1e-4,
        "sharded invertible backprop vs ordinary: {err}"
    );
    assert!(
        (v0 - v_sum).abs() <= 1e-5 * v0.abs(),
        "loss {v0} vs {v_sum}"
    );
}

/// `a + b` for every parameter of `m` (a parameter with one side only keeps it).
fn add_grads<M: Module>(m: &M, mut a: GradientsParams, mut b: GradientsParams) -> GradientsParams {
    struct V<'a>(
        &'a mut GradientsParams,
        &'a mut GradientsParams,
        GradientsParams,
    );
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let t = match (self.0.remove::<D>(p.id), self.1.remove::<D>(p.id)) {
                (Some(x), Some(y)) => x + y,
                (Some(x), None) | (None, Some(x)) => x,
                (None, None) => return,
            };
            self.2.register(p.id, t);
        }
    }
    let mut v = V(&mut a, &mut b, GradientsParams::new());
    m.visit(&mut v);
    v.2
}

/// The largest absolute gradient over every parameter of `m`.
fn largest<M: Module>(m: &M, g: &GradientsParams) -> f64 {
    struct V<'a>(&'a GradientsParams, f64);
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(x) = self.0.get::<D>(p.id) {
                self.1 = to_vec_f64(x).iter().fold(self.1, |m, v| m.max(v.abs()));
            }
        }
    }
    let mut v = V(g, 0.0);
    m.visit(&mut v);
    v.1
}

/// `[n, d]` standard normal values (fixed seed) on the test device.
fn random_2d(shape: [usize; 2], seed: u64) -> Tensor<2> {
    random_input([shape[0], shape[1], 1, 1], seed, &ad_device()).reshape(shape)
}

/// The whole multi-scale image Glow, as `train --low-memory` runs it: the objective's value
/// and every parameter's gradient (flow steps, split priors, top prior, class prior and head,
/// variational dequantiser) equal ordinary backpropagation's, for uniform, noisy and
/// variational dequantisation, class conditioning in the couplings or the top prior with the
/// class loss and a dropped label, affine, additive and spline couplings; float32 and float64.
#[test]
fn whole_image_glow_matches_ordinary_backprop() {
    use glowflow::models::glow_image::ClassConditioning;
    let device = ad_device();
    // 9 steps (27 layers) per level: the backward pass restarts from a kept input (every 8
    // steps) inside every level.
    let base = GlowImageConfig {
        levels: 2,
        steps_per_level: 9,
        net_width: 8,
        ..GlowImageConfig::new(2, 8, 8)
    };
    let variational = Dequantization::Variational(DequantizerConfig {
        depth: 1,
        hidden: 4,
    });
    let cases = [
        ("affine, uniform", base.clone(), 0.0),
        (
            "additive, noisy, 3 levels",
            GlowImageConfig {
                levels: 3,
                coupling: ImageCoupling::Additive,
                dequantization: Dequantization::Noisy { sigma: 0.05 },
                ..base.clone()
            },
            0.0,
        ),
        (
            "spline, variational",
            GlowImageConfig {
                coupling: ImageCoupling::Spline,
                dequantization: variational.clone(),
                ..base.clone()
            },
            0.0,
        ),
        (
            "classes in the couplings, class loss, label dropout",
            GlowImageConfig {
                classes: 3,
                class_conditioning: ClassConditioning::Couplings,
                ..base.clone()
            },
            0.5,
        ),
        (
            "classes in the top prior, variational, class loss",
            GlowImageConfig {
                classes: 3,
                class_conditioning: ClassConditioning::Prior,
                dequantization: variational,
                ..base.clone()
            },
            0.5,
        ),
    ];
    for (name, cfg, weight_y) in cases {
        let mut m = GlowImage::new(&cfg, &device);
        m.initialize(random_input([16, 2, 8, 8], 1, &device).mul_scalar(0.2));
        let m = perturb(m, 0.05, 3);
        let layout = BatchLayout::new(&cfg, if cfg.classes > 0 { 0.2 } else { 0.0 });
        let rows = batch_rows(&cfg, &layout, 6);
        for dtype in [DType::F32, DType::F64] {
            let m = match dtype {
                DType::F64 => common::float64_leaves(m.clone()),
                _ => m.clone(),
            };
            let x = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(rows.clone(), [6, layout.width()]),
                &device,
            )
            .cast(dtype);
            let weight = 0.75;
            let (v0, ordinary) = backprop(
                &m,
                batch_loss(&m, &cfg, &layout, x.clone(), weight_y),
                weight,
            );
            let (v1, low) = image_loss_and_grads(&m, &cfg, &layout, x, weight_y, weight);
            let (err, count) = relative_error(&m, &low, &ordinary);
            eprintln!(
                "{name} {dtype:?}: loss {v0} / {v1}, {count} parameters, relative error {err:.1e}"
            );
            let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
            assert!(
                (v0 - v1).abs() <= tol * v0.abs(),
                "{name} {dtype:?}: loss {v0} vs {v1}"
            );
            assert!(
                count >= 12 * cfg.levels,
                "{name}: only {count} parameters compared"
            );
            assert!(err <= tol, "{name} {dtype:?}: relative error {err}");
        }
        // Two data-parallel shards of 3 images depositing layer by layer into one sum, the
        // backward pass 2 images at a time at the first level (1 KiB of 512-byte hidden
        // activations): ordinary backpropagation's mean gradients.
        let width = layout.width();
        let (v2, sharded) = shard_grads_into(&m, &rows, width, 2, &device, |m, x, w, sink| {
            image_loss_and_grads_chunked(m, &cfg, &layout, x, weight_y, w, 1024, sink)
        });
        let x = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(rows.clone(), [6, width]),
            &device,
        );
        let (v0, ordinary) = backprop(&m, batch_loss(&m, &cfg, &layout, x, weight_y), 1.0);
        let (err, count) = relative_error(&m, &sharded, &ordinary);
        eprintln!("{name}, 2 shards, chunks of 2: loss {v0} / {v2}, relative error {err:.1e}");
        assert!(
            (v0 - v2).abs() <= 1e-4 * v0.abs(),
            "{name}: sharded loss {v0} vs {v2}"
        );
        assert!(
            count >= 12 * cfg.levels,
            "{name}: only {count} parameters compared"
        );
        assert!(
            err <= 1e-4,
            "{name}: 2 shards in chunks, relative error {err}"
        );
    }
}

/// A batch of `n` rows of `layout` for `cfg` (fixed seed): images (uniform or noisy: values in
/// `[-0.5, 0.5)`; variational: bin edges then standard normal draws), then the class one-hots
/// (the prior's copy of the first row dropped).
fn batch_rows(cfg: &GlowImageConfig, layout: &BatchLayout, n: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let d = cfg.dims();
    let mut rows = Vec::new();
    for i in 0..n {
        match cfg.dequantization {
            Dequantization::Variational(_) => {
                rows.extend((0..d).map(|_| rng.gen_range(0..256) as f32 / 256.0 - 0.5));
                rows.extend((0..d).map(|_| rng.gen_range(-2.0f32..2.0)));
            }
            _ => rows.extend((0..d).map(|_| rng.gen_range(-0.5f32..0.5))),
        }
        for copy in 0..layout.copies() {
            let dropped = copy == 1 && i == 0;
            rows.extend((0..cfg.classes).map(|k| f32::from(k == i % cfg.classes && !dropped)));
        }
    }
    assert_eq!(rows.len(), n * layout.width());
    rows
}

/// Deep flows in float32: with an input kept every [`KEEP_EVERY_STEPS`] flow steps (what
/// `--low-memory` does), the gradients through K = 64 steps stay at float32's noise; with
/// every input rebuilt by inversion they drift 10x or more further.
#[test]
fn kept_inputs_bound_the_drift_of_deep_flows() {
    let seq = level_flow(64);
    let device = ad_device();
    let x = random_input([6, 4, 4, 4], 5, &device);
    let x_leaf = x.clone().require_grad();
    let (z, ld) = seq.forward_ctx(x_leaf, None);
    let ordinary = GradientsParams::from_grads(head(z, ld).backward(), &seq);
    let kept = sequence_grads(&seq, x.clone(), None, 3 * KEEP_EVERY_STEPS, head);
    let rebuilt = sequence_grads(&seq, x, None, usize::MAX, head);
    let (kept_err, _) = relative_error(&seq, &kept.grads, &ordinary);
    let (rebuilt_err, _) = relative_error(&seq, &rebuilt.grads, &ordinary);
    eprintln!("K=64 float32: relative error {kept_err:.1e} kept every {KEEP_EVERY_STEPS} steps, {rebuilt_err:.1e} none kept");
    assert!(
        kept_err <= 2e-5,
        "kept every {KEEP_EVERY_STEPS}: {kept_err}"
    );
    assert!(
        rebuilt_err >= 10.0 * kept_err,
        "{rebuilt_err} vs {kept_err}"
    );
}
