//! Whole 2D models: exact inverse and log-det equal to the brute-force Jacobian's.

mod common;

use burn::module::Module;
use common::*;
use glowflow::flow::Flow;
use glowflow::models::{
    CouplingKind, DensityModel, ModelKind, Permutation, VectorFlow, VectorFlowConfig,
};
use glowflow::tensor_util::to_vec;

fn config(model: ModelKind, coupling: CouplingKind, permutation: Permutation) -> VectorFlowConfig {
    let mut c = VectorFlowConfig::new(model);
    c.flow_steps = 6;
    c.net_width = 16;
    c.coupling = coupling;
    c.permutation = permutation;
    c.init_seed = 3;
    c
}

#[test]
fn glow2d_inverse_and_logdet_every_variant() {
    let device = ad_device();
    for coupling in [
        CouplingKind::Tanh,
        CouplingKind::Sigmoid,
        CouplingKind::Additive,
    ] {
        for perm in [
            Permutation::Lu,
            Permutation::Plain,
            Permutation::Shuffle,
            Permutation::Reverse,
        ] {
            let mut m = VectorFlow::new(&config(ModelKind::Glow, coupling, perm), &device);
            m.flow.initialize(
                random_input([256, 2, 1, 1], 1, &device).mul_scalar(0.7),
                None,
            );
            let m = perturb(m, 0.2, 2);
            let x = random_input([16, 2, 1, 1], 3, &device);
            let (z, ld) = m.flow.forward(x.clone());
            let (back, ld_inv) = m.flow.inverse(z);
            let what = format!("glow {coupling:?} {perm:?}");
            assert!(max_abs_diff(back, x.clone()) <= 1e-4, "{what}: inverse");
            assert!(
                max_abs_diff1(ld.clone(), ld_inv.neg()) <= 1e-4,
                "{what}: log-det symmetry"
            );
            let brute = jacobian_logdets(|t| m.flow.forward(t).0, x);
            for (a, b) in to_vec(ld).iter().zip(&brute) {
                assert!(
                    (*a as f64 - b).abs() <= 1e-3,
                    "{what}: log-det {a} vs Jacobian {b}"
                );
            }
        }
    }
}

#[test]
fn realnvp2d_inverse_and_logdet_in_eval_mode() {
    let ad = ad_device();
    let m = perturb(
        VectorFlow::new(
            &config(ModelKind::Realnvp, CouplingKind::Tanh, Permutation::Lu),
            &ad,
        ),
        0.2,
        2,
    );
    for i in 0..20 {
        let _ = m.flow.forward(random_input([128, 2, 1, 1], 10 + i, &ad));
    }
    let m = m.valid();
    let dev = plain_device();
    let x = random_input([16, 2, 1, 1], 3, &dev);
    let (z, ld) = m.flow.forward(x.clone());
    let (back, ld_inv) = m.flow.inverse(z);
    assert!(max_abs_diff(back, x.clone()) <= 1e-4);
    assert!(max_abs_diff1(ld.clone(), ld_inv.neg()) <= 1e-4);
    let fd = fd_jacobian_logdets(|t| m.flow.forward(t).0, x, 1e-3);
    for (a, b) in to_vec(ld).iter().zip(&fd) {
        assert!(
            (*a as f64 - b).abs() <= 1e-3,
            "log-det {a} vs finite-difference Jacobian {b}"
        );
    }
}

#[test]
fn sample_log_density_matches_log_prob() {
    // The density reported with a sample equals log_prob evaluated at that sample.
    let device = plain_device();
    let ad = ad_device();
    let mut m = VectorFlow::new(
        &config(ModelKind::Glow, CouplingKind::Tanh, Permutation::Lu),
        &ad,
    );
    m.initialize(to_tensor2(random_input([256, 2, 1, 1], 1, &ad)), None);
    let m = perturb(m, 0.2, 5).valid();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let (x, logp) = m.sample_and_log_prob(64, 1.0, None, &mut rng, &device);
    let direct = m.log_prob(x, None);
    assert!(max_abs_diff1(logp, direct) < 1e-3);
}

fn to_tensor2(x: burn::tensor::Tensor<4>) -> burn::tensor::Tensor<2> {
    glowflow::flow::nchw_to_vec(x)
}
