//! Training end to end through the library: a short run learns, resume is exact, divergence is
//! reported.

use std::path::Path;

use glowflow::data::Target;
use glowflow::models::{Flow2dConfig, ModelKind};
use glowflow::train::{train2d, RunIo, Start, Summary, Train2dOptions};

fn small_config(model: ModelKind) -> Flow2dConfig {
    let mut c = Flow2dConfig::new(model);
    c.layers = 4;
    c.hidden = 32;
    c.init_seed = 1;
    c
}

fn small_options(steps: usize) -> Train2dOptions {
    let mut o = Train2dOptions::new(Target::Normals);
    o.steps = steps;
    o.batch = 256;
    o.lr = 3e-3;
    o.lr_step = 200;
    o.frames = 2;
    o.log_every = 1;
    o.test_samples = 4000;
    o.grid = 32;
    o
}

fn io(out: &Path) -> RunIo {
    RunIo {
        out: out.to_path_buf(),
        progress: false,
        threads: 2,
    }
}

fn run(start: Start, opts: Option<Train2dOptions>, out: &Path) -> anyhow::Result<Summary> {
    train2d(start, opts, &io(out), &glowflow::default_device())
}

fn losses(out: &Path) -> Vec<(usize, f64)> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect()
}

#[test]
fn short_glow_run_on_normals_learns_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(ModelKind::Glow);
    cfg.layers = 8;
    let mut o = small_options(1500);
    o.batch = 512;
    o.lr = 2e-3;
    o.lr_step = 600;
    o.log_every = 10;
    let s = run(Start::Fresh(cfg), Some(o), dir.path()).unwrap();
    let entropy = s.entropy.unwrap();
    eprintln!("short run: test NLL {} entropy {entropy}", s.test_nll);
    // A standard normal fitted to the target scores about 1.5 nats; the 8 modes are learned when
    // the test NLL comes within 0.25 nats of the target's entropy (~0.29).
    assert!(
        s.test_nll < entropy + 0.25,
        "test NLL {} vs entropy {entropy}",
        s.test_nll
    );
    assert!(
        s.test_nll > entropy - 0.05,
        "test NLL {} below the entropy {entropy}",
        s.test_nll
    );
}

#[test]
fn resume_continues_exactly() {
    for model in [ModelKind::Glow, ModelKind::Realnvp] {
        let full = tempfile::tempdir().unwrap();
        let split = tempfile::tempdir().unwrap();
        let a = run(
            Start::Fresh(small_config(model)),
            Some(small_options(30)),
            full.path(),
        )
        .unwrap();
        let mut half = small_options(30);
        half.steps = 15;
        run(Start::Fresh(small_config(model)), Some(half), split.path()).unwrap();
        let b = run(
            Start::Resume(split.path().to_path_buf()),
            Some(small_options(30)),
            split.path(),
        )
        .unwrap();
        let (la, lb) = (losses(full.path()), losses(split.path()));
        assert_eq!(la.len(), 30);
        assert_eq!(
            la.iter().map(|r| r.0).collect::<Vec<_>>(),
            lb.iter().map(|r| r.0).collect::<Vec<_>>()
        );
        for ((s, x), (_, y)) in la.iter().zip(&lb) {
            assert!(
                (x - y).abs() < 1e-5,
                "{model:?} step {s}: loss {x} uninterrupted vs {y} resumed"
            );
        }
        assert!(
            (a.test_nll - b.test_nll).abs() < 1e-5,
            "{model:?}: {} vs {}",
            a.test_nll,
            b.test_nll
        );
        let state = std::fs::read_to_string(split.path().join("checkpoint/state.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&state).unwrap();
        assert_eq!(v["step"], 30);
        if model == ModelKind::Glow {
            let flags = v["actnorm_initialized"].as_array().unwrap();
            assert_eq!(flags.len(), 4);
            assert!(flags.iter().all(|f| f == true));
        }
    }
}

#[test]
fn divergence_stops_with_the_step_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_options(200);
    o.lr = 1e6;
    let mut cfg = small_config(ModelKind::Glow);
    cfg.coupling = glowflow::models::CouplingKind::Tanh;
    let err = run(Start::Fresh(cfg), Some(o), dir.path()).expect_err("lr 1e6 must diverge");
    let msg = format!("{err:#}");
    assert!(msg.contains("diverged") && msg.contains("at step"), "{msg}");
}

#[test]
fn resume_rejects_a_directory_without_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        run(Start::Resume(dir.path().to_path_buf()), None, dir.path()).expect_err("no checkpoint");
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
}

/// The fused CPU Adam takes the same steps as burn's Adam (same state, so checkpoints match).
#[test]
fn fused_adam_matches_burns_adam() {
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::Tensor;
    use glowflow::nets::Dense;
    use glowflow::tensor_util::{from_vec, to_vec};
    use rand::SeedableRng;

    let device = glowflow::default_device().autodiff();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let start = Dense::new(7, 13, &mut rng, &device);
    let initial = to_vec(start.weight.val());
    let x = from_vec(
        (0..5 * 7).map(|i| (i as f32 * 0.37).sin()).collect(),
        [5, 7],
        &device,
    );
    let mut fused = (start.clone(), glowflow::train::adam::adam(1e-8));
    let mut reference = (start, AdamConfig::new().with_epsilon(1e-8).init());
    for step in 0..6 {
        let lr = 1e-2 / (1 + step) as f64;
        for (model, optim) in [
            (&mut fused.0, &mut fused.1),
            (&mut reference.0, &mut reference.1),
        ] {
            let y: Tensor<2> = model.forward(x.clone());
            // Widely ranging gradients, so the second moment matters.
            let loss = (y.clone() * y).mul_scalar(1e3).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &*model);
            *model = optim.step(lr, model.clone(), grads);
        }
    }
    let (a, b) = (fused.0, reference.0);
    let travelled = initial
        .iter()
        .zip(to_vec(a.weight.val()))
        .fold(0f32, |e, (p, q)| e.max((p - q).abs()));
    assert!(travelled > 1e-3, "the weights barely moved ({travelled})");
    for (name, u, v) in [
        ("weight", to_vec(a.weight.val()), to_vec(b.weight.val())),
        ("bias", to_vec(a.bias.val()), to_vec(b.bias.val())),
    ] {
        let err = u
            .iter()
            .zip(&v)
            .fold(0f32, |e, (p, q)| e.max((p - q).abs()));
        assert!(
            err <= 1e-6,
            "{name}: fused Adam differs from burn's by {err}"
        );
    }
}
