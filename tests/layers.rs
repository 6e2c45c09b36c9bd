//! Every layer: inverse(forward(x)) == x, forward log-det == -inverse log-det, and the forward
//! log-det equals log|det J| of a brute-force Jacobian — on vectors and on small images.

mod common;

use burn::tensor::Tensor;
use common::*;
use glowflow::flow::Flow;
use glowflow::layers::*;
use glowflow::linalg::{slogdet, Mat};
use glowflow::nets::{CouplingNet, Mlp};
use glowflow::tensor_util::{from_vec, to_vec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SHAPES: [[usize; 4]; 3] = [[5, 2, 1, 1], [5, 4, 1, 1], [3, 4, 2, 2]];

/// Checks all three properties of `layer` at a random input of `shape`.
fn check(name: &str, layer: &impl Flow, shape: [usize; 4], seed: u64) {
    let device = ad_device();
    let x = random_input(shape, seed, &device);
    let (z, ld) = layer.forward(x.clone());
    let (back, ld_inv) = layer.inverse(z);
    let err = max_abs_diff(back, x.clone());
    assert!(err <= 1e-4, "{name} {shape:?}: inverse error {err}");
    let sym = max_abs_diff1(ld.clone(), ld_inv.neg());
    assert!(
        sym <= 1e-4,
        "{name} {shape:?}: forward/inverse log-det mismatch {sym}"
    );
    let brute = jacobian_logdets(|t| layer.forward(t).0, x);
    for (a, b) in to_vec(ld).iter().zip(&brute) {
        assert!(
            (*a as f64 - b).abs() <= 1e-3,
            "{name} {shape:?}: log-det {a} vs Jacobian {b}"
        );
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn actnorm() {
    let device = ad_device();
    for (k, s) in SHAPES.iter().enumerate() {
        let mut a = ActNorm::new(s[1], &device);
        a.initialize(
            &random_input([64, s[1], s[2], s[3]], 100 + k as u64, &device)
                .mul_scalar(3.0)
                .add_scalar(0.7),
        );
        check("ActNorm", &perturb(a, 0.3, k as u64), *s, k as u64);
    }
}

#[test]
fn actnorm_initialisation_normalises_each_channel() {
    let device = ad_device();
    let x = random_input([256, 3, 4, 4], 7, &device);
    // Give channels very different scales and offsets.
    let scale = Tensor::<1>::from_floats([0.1, 5.0, 40.0], &device).reshape([1, 3, 1, 1]);
    let shift = Tensor::<1>::from_floats([-3.0, 0.5, 100.0], &device).reshape([1, 3, 1, 1]);
    let x = x * scale + shift;
    let mut a = ActNorm::new(3, &device);
    assert!(!a.is_initialized());
    a.initialize(&x);
    assert!(a.is_initialized());
    let y = to_vec(a.forward(x).0);
    for c in 0..3 {
        let vals: Vec<f64> = (0..256)
            .flat_map(|n| (0..16).map(move |p| (n, p)))
            .map(|(n, p)| y[(n * 3 + c) * 16 + p] as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (vals.len() - 1) as f64;
        assert!(mean.abs() < 1e-4, "channel {c} mean {mean}");
        assert!(
            (var.sqrt() - 1.0).abs() < 1e-3,
            "channel {c} std {}",
            var.sqrt()
        );
    }
}

#[test]
fn lu_conv() {
    let device = ad_device();
    for (k, s) in SHAPES.iter().enumerate() {
        let l = InvConv1x1Lu::new(s[1], &mut rng(k as u64), &device);
        check("InvConv1x1Lu", &perturb(l, 0.2, k as u64), *s, k as u64);
    }
}

#[test]
fn lu_logdet_equals_log_abs_det_of_weight() {
    let device = ad_device();
    for c in [2, 3, 8] {
        let l = perturb(InvConv1x1Lu::new(c, &mut rng(c as u64), &device), 0.3, 9);
        let w = Mat::from_f32(c, &to_vec(l.weight()));
        let (_, expected) = slogdet(&w).unwrap();
        let x = random_input([2, c, 1, 1], 1, &device);
        let ld = to_vec(l.forward(x).1);
        assert!(
            (ld[0] as f64 - expected).abs() < 1e-4,
            "C={c}: {} vs {expected}",
            ld[0]
        );
        // Per pixel: an H x W image multiplies it by H * W.
        let x = random_input([2, c, 3, 2], 1, &device);
        let ld = to_vec(l.forward(x).1);
        assert!((ld[0] as f64 - 6.0 * expected).abs() < 1e-3);
    }
}

#[test]
fn plain_conv() {
    let device = ad_device();
    for (k, s) in SHAPES.iter().enumerate() {
        let l = InvConv1x1::new(s[1], &mut rng(k as u64), &device);
        check("InvConv1x1", &perturb(l, 0.2, k as u64), *s, k as u64);
    }
}

#[test]
fn plain_conv_logdet_gradient_is_inverse_transpose() {
    // d/dW log|det W| = W^-T: the surrogate must give exactly that gradient.
    let device = ad_device();
    let l = perturb(InvConv1x1::new(3, &mut rng(5), &device), 0.3, 5);
    let x = random_input([1, 3, 1, 1], 2, &device);
    let grads = l.forward(x).1.sum().backward();
    let g = to_vec(l.weight.val().grad(&grads).unwrap());
    let w = Mat::from_f32(3, &to_vec(l.weight.val()));
    let inv_t = glowflow::linalg::inverse(&w).unwrap().transpose();
    for (a, b) in g.iter().zip(&inv_t.a) {
        assert!((*a as f64 - b).abs() < 1e-4);
    }
}

fn mlp(cond: usize, out: usize, seed: u64) -> CouplingNet {
    let device = ad_device();
    CouplingNet::Mlp(Mlp::new(cond, out, 16, 2, true, &mut rng(seed), &device))
}

#[test]
fn affine_coupling_both_forms_and_halves() {
    let device = ad_device();
    for s in &SHAPES[..2] {
        let c = s[1];
        for swap in [false, true] {
            let cond = coupling::conditioning_channels(c, swap);
            let out = coupling::transformed_channels(c, swap);
            for (tanh, form) in [
                (false, AffineScale::Glow),
                (false, AffineScale::Bounded),
                (true, AffineScale::Bounded),
            ] {
                let ts = tanh.then(|| TanhScale::new(&device));
                let net = mlp(cond, 2 * out, 3);
                let layer = perturb(AffineCoupling::new(net, ts, swap, form), 0.5, 4);
                check(
                    &format!("AffineCoupling(tanh={tanh}, {form:?}, swap={swap})"),
                    &layer,
                    *s,
                    11,
                );
            }
        }
    }
}

#[test]
fn coupling_starts_as_identity() {
    // Zero-initialised output layer: every coupling begins as the identity map.
    let device = ad_device();
    let ts = Some(TanhScale::new(&device));
    let layer = AffineCoupling::new(mlp(1, 2, 3), ts, false, AffineScale::Bounded);
    let x = random_input([8, 2, 1, 1], 3, &device);
    let (z, ld) = layer.forward(x.clone());
    assert!(max_abs_diff(z, x) == 0.0);
    assert!(to_vec(ld).iter().all(|v| *v == 0.0));
}

#[test]
fn bounded_affine_scale_floors_the_scale_and_keeps_glows_form_above_it() {
    let device = ad_device();
    let raw_vals = [-1.0e4f32, -1100.0, -40.0, -2.0, 0.0, 30.0];
    let raw = from_vec(raw_vals.to_vec(), [1, 6, 1, 1], &device);
    let (ls_b, s_b) = AffineScale::Bounded.log_scale_and_scale(raw.clone());
    let (ls_g, _) = AffineScale::Glow.log_scale_and_scale(raw);
    let (ls_b, s_b, ls_g) = (to_vec(ls_b), to_vec(s_b), to_vec(ls_g));
    let eps = MIN_AFFINE_SCALE;
    for (i, &r) in raw_vals.iter().enumerate() {
        let sig = 1.0 / (1.0 + (-(r as f64 + 2.0)).exp());
        let want = eps + (1.0 - eps) * sig;
        assert!(
            (s_b[i] as f64 - want).abs() <= 1e-6 * want,
            "s({r}) = {}, want {want}",
            s_b[i]
        );
        assert!((ls_b[i] as f64 - want.ln()).abs() <= 1e-5, "log s({r})");
        // Never below ln ε: the inverse multiplies by at most 1/ε.
        assert!(
            ls_b[i] as f64 >= eps.ln() - 1e-6,
            "log s({r}) = {} < ln ε",
            ls_b[i]
        );
    }
    // Glow's exact form is unbounded below: raw = -1100 gives log s = -1098.
    assert!((ls_g[1] + 1098.0).abs() < 1e-2, "{}", ls_g[1]);
    // At raw 0 the bounded scale is Glow's to within ε: training starts where Glow's does.
    assert!((ls_b[4] - ls_g[4]).abs() < 2e-3);

    // A coupling whose network returns enormous raw scales (weights perturbed by ±300): the
    // bounded inverse of a normal draw stays finite and within 1/ε of |y - shift|; Glow's
    // overflows.
    let x = random_input([16, 4, 1, 1], 9, &device);
    let mut results = Vec::new();
    for form in [AffineScale::Bounded, AffineScale::Glow] {
        let layer = perturb(
            AffineCoupling::new(mlp(2, 4, 3), None, false, form),
            300.0,
            4,
        );
        let (back, ld) = layer.inverse(x.clone());
        let ld = to_vec(ld);
        results.push((to_vec(back), ld));
    }
    let (bounded, ld_b) = &results[0];
    assert!(
        bounded.iter().all(|v| v.is_finite()),
        "bounded inverse not finite"
    );
    let per_sample_bound = 2.0 * (1.0 / eps).ln() + 1e-3;
    assert!(ld_b
        .iter()
        .all(|v| v.is_finite() && (*v as f64) <= per_sample_bound));
    let (glow, ld_g) = &results[1];
    assert!(
        glow.iter().any(|v| !v.is_finite()) || ld_g.iter().any(|v| *v as f64 > 100.0),
        "Glow's exact form was expected to expand far beyond 1/ε here"
    );
}

#[test]
fn additive_coupling() {
    for s in &SHAPES[..2] {
        let c = s[1];
        for swap in [false, true] {
            let cond = coupling::conditioning_channels(c, swap);
            let out = coupling::transformed_channels(c, swap);
            let layer = perturb(AdditiveCoupling::new(mlp(cond, out, 5), swap), 0.5, 6);
            check("AdditiveCoupling", &layer, *s, 12);
        }
    }
}

#[test]
fn permutations() {
    let device = ad_device();
    for (k, s) in SHAPES.iter().enumerate() {
        check("Reverse", &Reverse { channels: s[1] }, *s, k as u64);
        check(
            "Shuffle",
            &Shuffle::new(s[1], &mut rng(k as u64), &device),
            *s,
            k as u64,
        );
    }
}

#[test]
fn flow_batchnorm_eval_mode_is_exact_bijection() {
    // Train-mode passes set non-trivial running statistics; evaluation then uses them.
    let ad = ad_device();
    for (k, s) in SHAPES.iter().enumerate() {
        let bn = perturb(FlowBatchNorm::new(s[1], &ad), 0.3, k as u64);
        for i in 0..30 {
            let x = random_input([64, s[1], s[2], s[3]], 50 + i, &ad)
                .mul_scalar(2.0)
                .add_scalar(0.4);
            let _ = bn.forward(x);
        }
        let bn = burn::module::Module::valid(&bn);
        let dev = plain_device();
        let x = random_input(*s, k as u64, &dev);
        let (z, ld) = bn.forward(x.clone());
        let (back, ld_inv) = bn.inverse(z);
        assert!(max_abs_diff(back, x.clone()) <= 1e-4);
        assert!(max_abs_diff1(ld.clone(), ld_inv.neg()) <= 1e-4);
        let fd = fd_jacobian_logdets(|t| bn.forward(t).0, x, 1e-2);
        for (a, b) in to_vec(ld).iter().zip(&fd) {
            assert!(
                (*a as f64 - b).abs() <= 1e-3,
                "BN log-det {a} vs Jacobian {b}"
            );
        }
    }
}

#[test]
fn flow_batchnorm_train_mode_uses_batch_statistics() {
    let ad = ad_device();
    let bn = perturb(FlowBatchNorm::new(2, &ad), 0.3, 1);
    let x = random_input([512, 2, 1, 1], 3, &ad)
        .mul_scalar(2.0)
        .add_scalar(1.0);
    let (z, ld) = bn.forward(x.clone());
    let xs = to_vec(x);
    let zs = to_vec(z);
    let lg = to_vec(bn.log_gamma.val());
    let mut expected = 0.0;
    for c in 0..2 {
        let v: Vec<f64> = (0..512).map(|n| xs[n * 2 + c] as f64).collect();
        let mean = v.iter().sum::<f64>() / 512.0;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 512.0;
        expected += lg[c] as f64 - 0.5 * (var + 1e-5).ln();
        // Output of the batch has mean beta and std exp(log_gamma).
        let out: Vec<f64> = (0..512).map(|n| zs[n * 2 + c] as f64).collect();
        let om = out.iter().sum::<f64>() / 512.0;
        let os = (out.iter().map(|a| (a - om).powi(2)).sum::<f64>() / 512.0).sqrt();
        assert!((os - (lg[c] as f64).exp()).abs() < 1e-3);
    }
    assert!((to_vec(ld)[0] as f64 - expected).abs() < 1e-4);
}

/// The GEMM formulations of `Conv2d` (1x1, im2col, shifted responses) against the backend's
/// direct conv2d: same outputs and the same gradients for input, weights and bias.
#[test]
fn conv2d_gemm_paths_match_direct_convolution() {
    use glowflow::nets::Conv2d;
    let device = ad_device();
    // (c_in, c_out, k): 1x1, im2col (c_in <= c_out), shifted responses (c_in > c_out).
    for (cin, cout, k) in [(5, 7, 1), (3, 8, 3), (8, 3, 3), (6, 6, 3)] {
        let mut rng = ChaCha8Rng::seed_from_u64(cin as u64 * 31 + k as u64);
        let conv = perturb(Conv2d::new(cin, cout, k, true, &mut rng, &device), 0.3, 9);
        let x = random_input([2, cin, 5, 6], 4, &device).require_grad();
        // A random linear functional of the output, so every output element gets a gradient.
        let r = random_input([2, cout, 5, 6], 5, &device);
        let grads_of = |y: Tensor<4>| {
            let g = (y * r.clone()).sum().backward();
            let gx = x.grad(&g).unwrap();
            let gw = conv.weight.val().grad(&g).unwrap();
            let gb = conv.bias.as_ref().unwrap().val().grad(&g).unwrap();
            (to_vec(gx), to_vec(gw), to_vec(gb))
        };
        let (ours, direct) = (conv.forward(x.clone()), conv.forward_direct(x.clone()));
        let err = max_abs_diff(ours.clone(), direct.clone());
        assert!(err <= 1e-5, "{cin}->{cout} k{k}: forward differs by {err}");
        let (a, b) = (grads_of(ours), grads_of(direct));
        for (name, u, v) in [
            ("x", &a.0, &b.0),
            ("weight", &a.1, &b.1),
            ("bias", &a.2, &b.2),
        ] {
            let e = u.iter().zip(v).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(e <= 1e-4, "{cin}->{cout} k{k}: d/d{name} differs by {e}");
        }
    }
}

#[test]
fn fused_dense_matches_tensor_op_composition() {
    use glowflow::ops::dense::{dense, dense_composed, fused_supported};
    use glowflow::tensor_util::from_vec;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut draw = |k: usize| -> Vec<f32> {
        (0..k)
            .map(|_| rand::Rng::gen_range(&mut rng, -1.0..1.0))
            .collect()
    };
    let max_diff =
        |u: &[f32], v: &[f32]| u.iter().zip(v).fold(0f32, |e, (p, q)| e.max((p - q).abs()));
    // (rows, in, out): the 2D MLP's first, hidden and output layers, and an odd size.
    for (n, k, m) in [(33, 1, 16), (33, 16, 16), (33, 16, 2), (7, 5, 9)] {
        let (xs, ws, bs, rs) = (draw(n * (k + 2)), draw(k * m), draw(m), draw(n * m));
        for device in [ad_device(), plain_device()] {
            let tracked = device.is_autodiff();
            let grad_leaf = |t: Tensor<2>| if tracked { t.require_grad() } else { t };
            // The input is a strided column slice of a wider tensor, as a coupling's half is.
            let wide = grad_leaf(from_vec(xs.clone(), [n, k + 2], &device));
            let w = grad_leaf(from_vec(ws.clone(), [k, m], &device));
            let b = from_vec(bs.clone(), [m], &device);
            let b = if tracked { b.require_grad() } else { b };
            let r = from_vec(rs.clone(), [n, m], &device);
            let x = || wide.clone().narrow(1, 1, k);
            assert!(fused_supported(&x(), &w, &b), "fused path not taken");
            for relu_out in [false, true] {
                let fused = dense(x(), w.clone(), b.clone(), relu_out);
                let plain = dense_composed(x(), w.clone(), b.clone(), relu_out);
                let (yf, yp) = (to_vec(fused.clone()), to_vec(plain.clone()));
                let err = max_diff(&yf, &yp);
                assert!(
                    err <= 1e-5,
                    "{n}x{k}->{m} relu {relu_out}: forward differs by {err}"
                );
                if relu_out {
                    assert!(yf.contains(&0.0) && yf.iter().any(|&v| v > 0.0));
                }
                if !tracked {
                    continue;
                }
                let grads_of = |y: Tensor<2>| {
                    let g = (y * r.clone()).sum().backward();
                    [
                        to_vec(wide.grad(&g).unwrap()),
                        to_vec(w.grad(&g).unwrap()),
                        to_vec(b.grad(&g).unwrap()),
                    ]
                };
                for ((name, u), v) in ["x", "weight", "bias"]
                    .into_iter()
                    .zip(grads_of(fused))
                    .zip(grads_of(plain))
                {
                    let e = max_diff(&u, &v);
                    assert!(
                        e <= 1e-4,
                        "{n}x{k}->{m} relu {relu_out}: d/d{name} differs by {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn squeeze_layer() {
    check("Squeeze", &Squeeze, [3, 2, 4, 4], 21);
    check("Squeeze", &Squeeze, [2, 1, 2, 2], 22);
}

#[test]
fn standardize_layer() {
    let device = ad_device();
    let mut s = Standardize::new(4, &device);
    s.set(&[1.0, -2.0, 0.5, 30.0], &[2.0, 0.5, 1.5, 40.0]);
    for (i, shape) in [[5, 4, 1, 1], [3, 4, 2, 2]].into_iter().enumerate() {
        check("Standardize", &s, shape, 30 + i as u64);
    }
}
