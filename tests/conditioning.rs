//! Conditioning: vector flows reading a context (and standardising inside the model), and
//! class-conditional image Glow. Exact inverses, log-densities equal to brute-force Jacobians,
//! and the context actually changing the density.

mod common;

use burn::module::Module;
use burn::tensor::Tensor;
use common::*;
use glowflow::distributions::LN_2PI;
use glowflow::flow::{nchw_to_vec, vec_to_nchw};
use glowflow::linalg::{slogdet, Mat};
use glowflow::models::glow_image::one_hot;
use glowflow::models::{
    ClassConditioning, CouplingKind, DensityModel, GlowImage, GlowImageConfig, ImageCoupling,
    ModelKind, Permutation, VectorFlow, VectorFlowConfig,
};
use glowflow::tensor_util::{from_vec, to_vec};

fn vector_config(model: ModelKind, dim: usize, context: usize) -> VectorFlowConfig {
    let mut c = VectorFlowConfig::new(model);
    c.flow_steps = 4;
    c.net_width = 16;
    c.coupling = CouplingKind::Tanh;
    c.permutation = Permutation::Lu;
    c.init_seed = 11;
    c.features = dim;
    c.context = context;
    c.standardize = true;
    c
}

fn context(n: usize, k: usize, seed: u64, device: &burn::tensor::Device) -> Tensor<2> {
    nchw_to_vec(random_input([n, k, 1, 1], seed, device))
}

#[test]
fn vector_flow_with_context_inverts_and_matches_brute_force_jacobian() {
    let ad = ad_device();
    let (d, k, n) = (5, 2, 6);
    let mut m = VectorFlow::new(&vector_config(ModelKind::Glow, d, k), &ad);
    // Standardisation statistics far from (0, 1), so its log-determinant matters.
    m.set_standardization(
        (&[1.0, -2.0, 0.5, 3.0, 0.0], &[2.0, 0.5, 1.5, 4.0, 0.25]),
        (&[10.0, -1.0], &[3.0, 0.2]),
    );
    let init = nchw_to_vec(random_input([128, d, 1, 1], 1, &ad));
    m.initialize(init, Some(&context(128, k, 2, &ad)));
    let m = perturb(m, 0.2, 3);
    let x = nchw_to_vec(random_input([n, d, 1, 1], 4, &ad));
    let c = context(n, k, 5, &ad);

    let (z, ld) = m.encode_with_logdet(x.clone(), Some(&c));
    let (back, ld_inv) = m.decode_with_logdet(z, Some(&c));
    assert!(max_abs_diff(vec_to_nchw(back), vec_to_nchw(x.clone())) < 1e-4);
    assert!(max_abs_diff1(ld.clone(), ld_inv.neg()) < 1e-3);

    let brute = jacobian_logdets(
        |t| vec_to_nchw(m.encode_with_logdet(nchw_to_vec(t), Some(&c)).0),
        vec_to_nchw(x.clone()),
    );
    for (a, b) in to_vec(ld).iter().zip(&brute) {
        assert!(
            (*a as f64 - b).abs() < 2e-3,
            "log-det {a} vs brute force {b}"
        );
    }

    // The context is read: another context gives another density at the same points.
    let other = context(n, k, 6, &ad);
    let lp = to_vec(m.log_prob(x.clone(), Some(&c)));
    let lp2 = to_vec(m.log_prob(x, Some(&other)));
    let change = lp
        .iter()
        .zip(&lp2)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(change > 1e-2, "context changes log p by only {change}");
}

#[test]
fn conditional_samples_carry_their_log_density() {
    let device = plain_device();
    let ad = ad_device();
    let (d, k, n) = (3, 1, 32);
    for model in [ModelKind::Glow, ModelKind::Realnvp] {
        let mut m = VectorFlow::new(&vector_config(model, d, k), &ad);
        m.set_standardization((&[0.0, 1.0, -1.0], &[1.0, 2.0, 0.5]), (&[0.0], &[1.0]));
        m.initialize(
            nchw_to_vec(random_input([128, d, 1, 1], 1, &ad)),
            Some(&context(128, k, 2, &ad)),
        );
        let m = perturb(m, 0.2, 7);
        // Real NVP's batch norm: running statistics from a few batches, then evaluation mode.
        for i in 0..10 {
            let _ = m.log_prob(
                nchw_to_vec(random_input([64, d, 1, 1], 20 + i, &ad)),
                Some(&context(64, k, 40 + i, &ad)),
            );
        }
        let m = m.valid();
        let c = context(n, k, 9, &device);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let (x, logp) = m.sample_and_log_prob(n, 1.0, Some(&c), &mut rng, &device);
        let direct = m.log_prob(x.clone(), Some(&c));
        assert!(max_abs_diff1(logp, direct) < 2e-3, "{model:?}");
        // The DensityModel contract: encode then decode is the identity.
        let z = DensityModel::encode(&m, x.clone(), Some(&c));
        let back = DensityModel::decode(&m, &z, Some(&c));
        assert!(
            max_abs_diff(vec_to_nchw(back), vec_to_nchw(x)) < 1e-3,
            "{model:?}"
        );
    }
}

fn class_glow(classes: usize) -> GlowImage {
    class_glow_of(classes, ClassConditioning::Prior)
}

/// A tiny class-conditional Glow whose class is read where `conditioning` says.
fn class_glow_of(classes: usize, conditioning: ClassConditioning) -> GlowImage {
    let cfg = GlowImageConfig {
        channels: 1,
        height: 4,
        width: 4,
        levels: 2,
        steps_per_level: 2,
        net_width: 8,
        coupling: ImageCoupling::Affine,
        permutation: Permutation::Lu,
        n_bits: 8,
        learn_top: true,
        init_seed: 5,
        classes,
        dequantization: glowflow::models::Dequantization::Uniform,
        affine_scale: glowflow::layers::AffineScale::Bounded,
        class_conditioning: conditioning,
    };
    let ad = ad_device();
    let mut m = GlowImage::new(&cfg, &ad);
    m.initialize(random_input([64, 1, 4, 4], 1, &ad).mul_scalar(0.3));
    // The class prior and head start at zero; perturb so classes differ.
    perturb(m, 0.05, 2)
}

#[test]
fn class_conditional_density_matches_brute_force_and_the_classifier() {
    for conditioning in [ClassConditioning::Prior, ClassConditioning::Couplings] {
        class_conditional_case(conditioning);
    }
}

fn class_conditional_case(conditioning: ClassConditioning) {
    let ad = ad_device();
    let m = class_glow_of(3, conditioning);
    let n = 3;
    let x = random_input([n, 1, 4, 4], 5, &ad).mul_scalar(0.3);
    let all = to_vec(m.class_log_likelihoods(x.clone()).unwrap());
    let mut per_class = Vec::new();
    for k in 0..3 {
        let y = one_hot(&[k; 3], 3, &ad);
        let lp = to_vec(m.log_prob(x.clone(), Some(&y)));
        for s in 0..n {
            assert!(
                (lp[s] - all[s * 3 + k]).abs() < 1e-3,
                "class {k}: log p(x|y) {} vs the classifier's {}",
                lp[s],
                all[s * 3 + k]
            );
        }
        per_class.push(lp);
        // Brute force: log p(x|y) = log N(eps_y; 0, I) + log|det d eps_y / dx|.
        let eps = to_vec(m.standardized_latents(x.clone(), Some(&y)));
        let d = 16;
        let mut jac = vec![Mat::zeros(d); n];
        for i in 0..d {
            let xg = x.clone().detach().require_grad();
            let e = m
                .standardized_latents(xg.clone(), Some(&y))
                .narrow(1, i, 1)
                .sum();
            let g = to_vec(xg.grad(&e.backward()).unwrap());
            for (s, j) in jac.iter_mut().enumerate() {
                for c in 0..d {
                    j.set(i, c, g[s * d + c] as f64);
                }
            }
        }
        for s in 0..n {
            let e = &eps[s * d..(s + 1) * d];
            let base: f64 =
                e.iter().map(|v| -0.5 * (*v as f64).powi(2)).sum::<f64>() - 0.5 * d as f64 * LN_2PI;
            let brute = base + slogdet(&jac[s]).unwrap().1;
            assert!((per_class[k][s] as f64 - brute).abs() < 1e-3, "class {k}");
        }
    }
    let spread = (0..n)
        .map(|s| (per_class[0][s] - per_class[1][s]).abs())
        .fold(0f32, f32::max);
    assert!(spread > 1e-2, "the class changes log p by only {spread}");
    // The first level's factored-out latents (8 values of 16) depend on the class exactly when
    // the couplings and split priors read it.
    let level0 = |k: usize| {
        let y = one_hot(&[k; 3], 3, &ad);
        to_vec(m.standardized_latents(x.clone(), Some(&y)).narrow(1, 0, 8))
    };
    let moved = level0(0)
        .iter()
        .zip(level0(1))
        .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
    match conditioning {
        ClassConditioning::Prior => assert_eq!(moved, 0.0),
        ClassConditioning::Couplings => assert!(moved > 1e-3, "level 0 moved by {moved}"),
    }
    // Latents of a class decode back exactly under the same class.
    let y = one_hot(&[2; 3], 3, &ad);
    let z = DensityModel::encode(&m, x.clone(), Some(&y));
    let back = DensityModel::decode(&m, &z, Some(&y));
    assert!(max_abs_diff(back, x) < 1e-4);
    // Classification logits exist only on a conditional model.
    assert_eq!(m.classes(), 3);
    assert!(class_glow(0)
        .class_log_likelihoods(from_vec(vec![0.0; 16], [1, 1, 4, 4], &ad))
        .is_none());
}

/// The top latent drawn for `ctx` at temperature `t` (same seed, so the same standard normal
/// draw for every context).
fn top_draw(m: &GlowImage, ctx: &Tensor<2>, t: f64) -> Vec<f64> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let n = ctx.dims()[0];
    let (_, zs) = m.sample_with_latents(n, t, Some(ctx), &mut rng);
    glowflow::tensor_util::to_vec_f64(zs.last().unwrap().clone())
}

#[test]
fn guidance_mixes_the_class_free_and_the_class_prior() {
    use glowflow::models::glow_image::guided_context;
    let ad = ad_device();
    let m = class_glow(3);
    let labels = [2usize, 0];
    let null = Tensor::zeros([2, 3], &ad);
    let cond = guided_context(&labels, 3, 1.0, &ad);
    // At temperature 0 the top latent is the prior's mean; at 1 it is mean + std * eps with the
    // same eps for every context, so log|z - mean| differs between contexts by the log-stds.
    let mean = |ctx: &Tensor<2>| top_draw(&m, ctx, 0.0);
    let logs = |ctx: &Tensor<2>| -> Vec<f64> {
        let (z, mu) = (top_draw(&m, ctx, 1.0), mean(ctx));
        z.iter().zip(&mu).map(|(z, m)| (z - m).abs().ln()).collect()
    };
    let (mu_u, mu_c, s_u, s_c) = (mean(&null), mean(&cond), logs(&null), logs(&cond));
    let apart = mu_u
        .iter()
        .zip(&mu_c)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        apart > 1e-2,
        "the class and class-free priors do not differ ({apart})"
    );
    for w in [0.0, 0.5, 2.0, 4.0] {
        let g = guided_context(&labels, 3, w, &ad);
        let (mu_w, s_w) = (mean(&g), logs(&g));
        for i in 0..mu_w.len() {
            let want = mu_u[i] + w * (mu_c[i] - mu_u[i]);
            assert!(
                (mu_w[i] - want).abs() < 1e-5,
                "w {w}: mean {} vs {want}",
                mu_w[i]
            );
            let want = s_u[i] + w * (s_c[i] - s_u[i]);
            assert!(
                (s_w[i] - want).abs() < 1e-3,
                "w {w}: log-std {} vs {want}",
                s_w[i]
            );
        }
    }
}

#[test]
fn label_dropout_zeroes_the_one_hot_of_the_share_asked_for() {
    use glowflow::data::stream::drop_labels;
    use rand::SeedableRng;
    let (w, k, n) = (5, 4, 20_000);
    let mut rows = Vec::new();
    for i in 0..n {
        rows.extend((0..w).map(|j| (i * w + j) as f32));
        rows.extend((0..k).map(|c| f32::from(u8::from(c == i % k))));
    }
    let before = rows.clone();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let dropped = drop_labels(&mut rows, w, k, 0.2, &mut rng);
    let rate = dropped as f64 / n as f64;
    // Binomial(20000, 0.2): standard deviation 0.0028.
    assert!((rate - 0.2).abs() < 0.012, "dropped {rate}");
    let mut zeroed = 0;
    for (a, b) in rows.chunks(w + k).zip(before.chunks(w + k)) {
        assert_eq!(a[..w], b[..w], "the image values are untouched");
        if a[w..].iter().all(|&v| v == 0.0) {
            zeroed += 1;
        } else {
            assert_eq!(a[w..], b[w..], "a kept label is unchanged");
        }
    }
    assert_eq!(zeroed, dropped);
    // Deterministic for the seed.
    let mut again = before.clone();
    drop_labels(
        &mut again,
        w,
        k,
        0.2,
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
    );
    assert_eq!(again, rows);
}
