//! Training end to end through the library: a short run learns, resume is exact, divergence is
//! reported.

use std::path::Path;

use glowflow::data::Target;
use glowflow::models::{DensityModel, ModelKind, VectorFlowConfig};
use glowflow::train::{train2d, RunIo, Start, Summary, Train2dOptions};
use glowflow::Flow;

mod common;
use common::copy_dir;

fn small_config(model: ModelKind) -> VectorFlowConfig {
    let mut c = VectorFlowConfig::new(model);
    c.flow_steps = 4;
    c.net_width = 32;
    c.init_seed = 1;
    c
}

fn small_options(steps: usize) -> Train2dOptions {
    let mut o = Train2dOptions::new(Target::Normals);
    o.steps = steps;
    o.batch_size = 256;
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
        force: false,
        replicas: Vec::new(),
    }
}

/// A resume that sets a new total step count.
fn to_steps(n: usize) -> glowflow::train::run_dir::ResumeChanges {
    glowflow::train::run_dir::ResumeChanges {
        steps: Some(n),
        ..Default::default()
    }
}

fn run(start: Start, opts: Option<Train2dOptions>, out: &Path) -> anyhow::Result<Summary> {
    train2d(start, opts, &io(out), &common::plain_device())
}

/// The training losses of a short vector-Glow run on `devices` (the first holds the model; with
/// more, each takes an equal shard of every batch) with `threads` CPU shards.
fn data_parallel_losses(devices: &[burn::tensor::Device], threads: usize, out: &Path) -> Vec<f64> {
    let mut o = small_options(30);
    o.frames = 0;
    // Odd, so the shards differ in size (128 + 127 rows) and their weighting is tested.
    o.batch_size = 255;
    let io = RunIo {
        threads,
        replicas: devices[1..].to_vec(),
        ..io(out)
    };
    train2d(
        Start::Fresh(small_config(ModelKind::Glow)),
        Some(o),
        &io,
        &devices[0],
    )
    .unwrap();
    losses(out).into_iter().map(|(_, l)| l).collect()
}

/// Data-parallel training on two devices follows one device's loss sequence on the same global
/// batch, to float tolerance: the shard losses are weighted by their share of the rows and the
/// gradients summed before the one optimizer step.
fn assert_same_losses(one: &[f64], two: &[f64], tolerance: f64) {
    assert_eq!(one.len(), 30);
    assert_eq!(one.len(), two.len());
    for (step, (a, b)) in one.iter().zip(two).enumerate() {
        assert!(
            (a - b).abs() <= tolerance * a.abs().max(1.0),
            "step {}: one device {a}, two devices {b}",
            step + 1
        );
    }
    // The run learns, so equal sequences are not two constant ones.
    assert!(one[29] < one[0] - 0.05, "{} -> {}", one[0], one[29]);
}

#[test]
fn two_cpu_replicas_follow_one_device() {
    // The CPU has one device; two replicas of it take the multi-device path (a thread and a
    // fork per device, gradients summed on the first) against one unsharded device.
    let cpu = glowflow::default_device();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = data_parallel_losses(std::slice::from_ref(&cpu), 1, a.path());
    let two = data_parallel_losses(&[cpu.clone(), cpu], 1, b.path());
    eprintln!("losses: one device {one:?}, two {two:?}");
    // Measured: within 1e-6 (the printed digits); a shard weighted 1/2 instead of 128/255 or
    // 127/255 is off by 1.3e-4 at step 1.
    assert_same_losses(&one, &two, 1e-5);
}

#[test]
fn two_gpus_follow_one_gpu() {
    // Needs two GPUs: GLOWFLOW_TEST_DEVICES=cuda:0,cuda:1 in a build with `--features cuda`.
    let Some(list) = std::env::var("GLOWFLOW_TEST_DEVICES")
        .ok()
        .filter(|l| !l.is_empty())
    else {
        eprintln!("skipped: set GLOWFLOW_TEST_DEVICES=cuda:0,cuda:1 (two GPUs, --features cuda) to run it");
        return;
    };
    let devices = glowflow::devices_by_name(&list)
        .unwrap_or_else(|e| panic!("GLOWFLOW_TEST_DEVICES={list}: {e:#}"));
    if devices.len() < 2 {
        eprintln!("skipped: GLOWFLOW_TEST_DEVICES={list} names one device; two are needed");
        return;
    }
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = data_parallel_losses(&devices[..1], 1, a.path());
    let two = data_parallel_losses(&devices[..2], 1, b.path());
    eprintln!("losses: one GPU {one:?}, two {two:?}");
    // GPU kernels sum in other orders than the CPU's: a looser bound, still far below what a
    // wrong weighting or a lost shard gives.
    assert_same_losses(&one, &two, 5e-5);
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
    cfg.flow_steps = 8;
    let mut o = small_options(1500);
    o.batch_size = 512;
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
            Start::Resume(split.path().to_path_buf(), to_steps(30)),
            None,
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
        // The ActNorm flags travel in the weights (format 3), not in state.json.
        assert!(v.get("actnorm_initialized").is_none());
        let (resumed, _) =
            glowflow::train::train2d::load_trained(split.path(), &common::plain_device()).unwrap();
        if model == ModelKind::Glow {
            assert!(
                !resumed.flow.needs_data_init(),
                "a trained Glow needs no init"
            );
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
    assert!(
        msg.contains("training stopped at step") && msg.contains("consecutive steps were skipped"),
        "{msg}"
    );
    // No checkpoint exists, and the message must not claim one.
    assert!(msg.contains("no checkpoint was written"), "{msg}");
    assert!(!msg.contains("intact"), "{msg}");
}

/// The guard never applies a non-finite update and never writes one: at lr 1e4 every
/// checkpoint holds finite weights, skipped steps are counted in metrics.csv, and the stop
/// message names the step, a layer and the checkpoint that really exists.
#[test]
fn non_finite_updates_are_skipped_and_never_checkpointed() {
    // Real NVP too: its batch norm updates running statistics in the forward pass, which a
    // skipped step must undo.
    for kind in [ModelKind::Glow, ModelKind::Realnvp] {
        non_finite_updates_case(kind);
    }
}

fn non_finite_updates_case(kind: ModelKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_options(200);
    o.lr = 1e4;
    o.checkpoint_every = 2;
    o.stability.max_skips = 5;
    let err =
        run(Start::Fresh(small_config(kind)), Some(o), dir.path()).expect_err("lr 1e4 must stop");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("training stopped at step") && msg.contains("first non-finite value"),
        "{msg}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!(
        msg.contains(&format!("(step {step}), is intact")),
        "{msg} / checkpoint at step {step}"
    );
    // Loading refuses non-finite weights, so this also proves the checkpoint is finite.
    let (model, _) =
        glowflow::train::train2d::load_trained(dir.path(), &common::plain_device()).unwrap();
    assert!(glowflow::tensor_util::first_nonfinite_param(&model).is_none());
    let skipped: usize = std::fs::read_to_string(dir.path().join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(skipped >= 5, "metrics.csv counts {skipped} skipped steps");
}

/// A singular or non-finite plain 1x1 convolution is an error naming the layer, not a panic.
#[test]
fn singular_plain_convolution_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_options(200);
    o.lr = 1e8;
    o.stability.max_skips = 3;
    let mut cfg = small_config(ModelKind::Glow);
    cfg.permutation = glowflow::models::Permutation::Plain;
    let err = run(Start::Fresh(cfg), Some(o), dir.path()).expect_err("lr 1e8 must stop");
    let msg = format!("{err:#}");
    assert!(msg.contains("training stopped at step"), "{msg}");
}

/// Consecutive training batches are i.i.d. draws: for every target, each batch's mean lies
/// within a few standard errors of the pool's mean (ordered samplers, e.g. moons drawn along
/// their arcs, fail this by tens of standard errors).
#[test]
fn consecutive_batches_are_iid_for_every_target() {
    use glowflow::data::stream::{DataStream, DEFAULT_POOL};
    use glowflow::data::toy2d::ALL_TARGETS;
    let batch = 512;
    for target in ALL_TARGETS {
        let mut stream = DataStream::new(target, 5, batch);
        let batches: Vec<Vec<f32>> = (0..DEFAULT_POOL / batch)
            .map(|s| stream.batch_at(s))
            .collect();
        for k in 0..2 {
            let all: Vec<f64> = batches
                .iter()
                .flat_map(|b| b.iter().skip(k).step_by(2).map(|&v| v as f64))
                .collect();
            let n = all.len() as f64;
            let mean = all.iter().sum::<f64>() / n;
            let sd = (all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let se = sd / (batch as f64).sqrt();
            let worst = batches
                .iter()
                .map(|b| {
                    let m =
                        b.iter().skip(k).step_by(2).map(|&v| v as f64).sum::<f64>() / batch as f64;
                    ((m - mean) / se).abs()
                })
                .fold(0f64, f64::max);
            assert!(
                worst < 5.5,
                "{}: a batch mean of coordinate {k} is {worst:.1} standard errors from the pool's",
                target.name()
            );
        }
    }
}

/// Gradient-norm clipping scales every gradient by max_norm / norm, and the report's norm is
/// the L2 norm over every parameter's gradient.
#[test]
fn gradient_norm_report_and_clipping() {
    use burn::optim::GradientsParams;
    use glowflow::tensor_util::{from_vec, to_vec};
    use glowflow::train::stability::{clip_gradients, grad_report};
    let device = common::plain_device().autodiff();
    let mut model = glowflow::models::VectorFlow::new(&small_config(ModelKind::Glow), &device);
    let x = from_vec(
        (0..64).map(|i| (i as f32 * 0.7).sin() * 2.0).collect(),
        [32, 2],
        &device,
    );
    model.initialize(x.clone(), None);
    let loss = model.log_prob(x.clone(), None).mean().neg();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let report = grad_report(&model, &grads);
    // Brute force: every gradient of the model, squared and summed.
    let mut sq = 0f64;
    for group in &report.groups {
        sq += group.1 * group.1;
    }
    assert!((sq.sqrt() - report.norm).abs() <= 1e-9 * report.norm.max(1.0));
    assert!(
        report.groups.iter().any(|g| g.0 == "coupling"),
        "{:?}",
        report.groups
    );
    assert!(
        report.groups.iter().any(|g| g.0 == "actnorm"),
        "{:?}",
        report.groups
    );
    assert!(report.first_nonfinite.is_none());
    let target = report.norm / 4.0;
    let (clipped, did) = clip_gradients(&model, grads, report.norm, target);
    assert!(did);
    let after = grad_report(&model, &clipped);
    assert!(
        (after.norm - target).abs() <= 1e-5 * target,
        "{} vs {target}",
        after.norm
    );
    for ((g, a), (_, b)) in report.groups.iter().zip(&after.groups) {
        assert!(
            (a / 4.0 - b).abs() <= 1e-5 * a.max(1e-12),
            "{g}: {a} / 4 vs {b}"
        );
    }
    let (_, did) = clip_gradients(&model, clipped, after.norm, 10.0 * target);
    assert!(!did);
    let _ = to_vec(x);
}

/// The weight average, the clipping, Adamax and weight decay are part of the exact-resume
/// contract.
#[test]
fn resume_is_exact_with_weight_average_clipping_and_adamax() {
    use glowflow::train::stability::OptimizerKind;
    let opts = |steps| {
        let mut o = small_options(steps);
        o.stability.ema_decay = 0.99;
        o.stability.clip_grad_norm = 0.5;
        o.stability.optimizer = OptimizerKind::Adamax;
        o.stability.weight_decay = 0.5;
        o
    };
    // Real NVP's running statistics live beside the averaged weights: resume must keep both.
    for kind in [ModelKind::Realnvp, ModelKind::Glow] {
        let (full, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = run(
            Start::Fresh(small_config(kind)),
            Some(opts(30)),
            full.path(),
        )
        .unwrap();
        run(
            Start::Fresh(small_config(kind)),
            Some(opts(15)),
            split.path(),
        )
        .unwrap();
        let b = run(
            Start::Resume(split.path().to_path_buf(), to_steps(30)),
            None,
            split.path(),
        )
        .unwrap();
        assert!(split.path().join("checkpoint/ema.safetensors").exists());
        assert_eq!(
            a.test_nll.to_bits(),
            b.test_nll.to_bits(),
            "{kind:?}: {} vs {}",
            a.test_nll,
            b.test_nll
        );
    }
    let full = tempfile::tempdir().unwrap();
    run(
        Start::Fresh(small_config(ModelKind::Glow)),
        Some(opts(30)),
        full.path(),
    )
    .unwrap();
    let clipped: usize = std::fs::read_to_string(full.path().join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(clipped > 0, "clipping at 0.5 never engaged");
    // The average is what is evaluated: it differs from the last raw weights.
    let raw = glowflow::train::checkpoint::load_model(
        glowflow::models::VectorFlow::new(&small_config(ModelKind::Glow), &common::plain_device()),
        &full.path().join("checkpoint/model.safetensors"),
    )
    .unwrap();
    let (avg, _) =
        glowflow::train::train2d::load_trained(full.path(), &common::plain_device()).unwrap();
    let w = |m: &glowflow::models::VectorFlow| {
        let mut v = Vec::new();
        struct C<'a>(&'a mut Vec<f32>);
        impl burn::module::ModuleVisitor for C<'_> {
            fn visit_float<const D: usize>(
                &mut self,
                p: &burn::module::Param<burn::tensor::Tensor<D>>,
            ) {
                self.0.extend(glowflow::tensor_util::to_vec(p.val()));
            }
        }
        burn::module::Module::visit(m, &mut C(&mut v));
        v
    };
    let diff = w(&raw)
        .iter()
        .zip(w(&avg))
        .fold(0f32, |e, (p, q)| e.max((p - q).abs()));
    assert!(
        diff > 1e-4,
        "the averaged weights equal the raw ones ({diff})"
    );
}

/// Adamax on the CPU (host loop) equals the tensor-op form (used on other backends and for
/// float64) and follows Kingma & Ba's Algorithm 2 on a hand-checked first step.
#[test]
fn adamax_host_loop_matches_tensor_ops() {
    use burn::module::Module;
    use burn::optim::GradientsParams;
    use burn::tensor::{DType, Tensor};
    use glowflow::nets::Dense;
    use glowflow::tensor_util::{from_vec, to_vec};
    use glowflow::train::stability::OptimizerKind;
    use rand::SeedableRng;

    let device = common::plain_device().autodiff();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let start = Dense::new(6, 5, &mut rng, &device);
    let x = from_vec(
        (0..4 * 6).map(|i| (i as f32 * 0.53).cos()).collect(),
        [4, 6],
        &device,
    );
    let mut host = (
        start.clone(),
        glowflow::ops::adam::optimizer(OptimizerKind::Adamax, 0.0),
    );
    let mut ops = (
        common::float64_leaves(start.clone()),
        glowflow::ops::adam::optimizer(OptimizerKind::Adamax, 0.0),
    );
    let lr = 1e-2;
    for step in 0..5 {
        let y: Tensor<2> = host.0.forward(x.clone());
        let loss = (y.clone() * y).mul_scalar(1e2).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &host.0);
        if step == 0 {
            // First step: m = 0.1 g, u = |g|, p -= lr / 0.1 * m / (u + eps) = lr * sign(g).
            let g = to_vec(grads.get::<2>(host.0.weight.id).unwrap());
            let p0 = to_vec(host.0.weight.val());
            let next = host.1.step(lr, host.0.clone(), grads);
            let p1 = to_vec(next.weight.val());
            for ((a, b), g) in p0.iter().zip(&p1).zip(&g) {
                assert!(
                    (a - b - lr as f32 * g.signum()).abs() < 1e-6,
                    "{a} -> {b}, g {g}"
                );
            }
            host.0 = next;
        } else {
            host.0 = host.1.step(lr, host.0.clone(), grads);
        }
        let x64: Tensor<2> = glowflow::tensor_util::from_vec_f64(
            (0..4 * 6).map(|i| (i as f32 * 0.53).cos() as f64).collect(),
            [4, 6],
            (&device, DType::F64),
        );
        let y: Tensor<2> = ops.0.forward(x64);
        let loss = (y.clone() * y).mul_scalar(1e2).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &ops.0);
        ops.0 = ops.1.step(lr, ops.0.clone(), grads);
    }
    let (a, b) = (to_vec(host.0.weight.val()), to_vec(ops.0.weight.val()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |e, (p, q)| e.max((p - q).abs()));
    assert!(
        err < 1e-5,
        "host Adamax differs from the tensor form by {err}"
    );
    let moved = to_vec(start.weight.val())
        .iter()
        .zip(&a)
        .fold(0f32, |e, (p, q)| e.max((p - q).abs()));
    assert!(moved > 1e-2, "{moved}");
    let _ = start.num_params();
}

#[test]
fn resume_rejects_a_directory_without_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        Start::Resume(dir.path().to_path_buf(), Default::default()),
        None,
        dir.path(),
    )
    .expect_err("no checkpoint");
    assert!(format!("{err:#}").contains("`resume`"), "{err:#}");
}

/// The fused CPU Adam takes the same steps as burn's Adam (same state, so checkpoints match).
#[test]
fn fused_adam_matches_burns_adam() {
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::Tensor;
    use glowflow::nets::Dense;
    use glowflow::tensor_util::{from_vec, to_vec};
    use rand::SeedableRng;

    let device = common::plain_device().autodiff();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let start = Dense::new(7, 13, &mut rng, &device);
    let initial = to_vec(start.weight.val());
    let x = from_vec(
        (0..5 * 7).map(|i| (i as f32 * 0.37).sin()).collect(),
        [5, 7],
        &device,
    );
    let mut fused = (start.clone(), glowflow::ops::adam::adam(1e-8));
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

/// Decoupled weight decay: with gradients, the fused Adam's weight matrix follows burn's AdamW
/// (an independent implementation; the loss reads the matrix alone, since AdamW would also decay
/// the bias); with a zero gradient both optimizers only shrink the matrix, by exactly
/// `prod(1 - lr_t * wd)`, and leave the bias (a vector) where it was.
#[test]
fn weight_decay_is_decoupled_and_leaves_vectors_alone() {
    use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
    use burn::tensor::{DType, Tensor};
    use glowflow::nets::Dense;
    use glowflow::ops::adam::{optimizer, OptimizerKind};
    use glowflow::tensor_util::{from_vec, to_vec};
    use rand::SeedableRng;

    let device = common::plain_device().autodiff();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let start = Dense::new(6, 9, &mut rng, &device);
    let x = from_vec(
        (0..4 * 6).map(|i| (i as f32 * 0.53).cos()).collect(),
        [4, 6],
        &device,
    );
    let wd = 0.5;
    let lrs: Vec<f64> = (0..6).map(|t| 2e-2 / (1 + t) as f64).collect();
    let max_diff = |u: Vec<f32>, v: Vec<f32>| {
        u.iter()
            .zip(&v)
            .fold(0f32, |e, (p, q)| e.max((p - q).abs()))
    };
    // With gradients: fused (decoupled decay of the matrix) against AdamW and Adam.
    let mut fused = (start.clone(), optimizer(OptimizerKind::Adam, wd));
    let mut adamw = (
        start.clone(),
        AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(wd as f32)
            .init(),
    );
    let mut adam = (start.clone(), AdamConfig::new().with_epsilon(1e-8).init());
    for &lr in &lrs {
        let step = |model: &mut Dense, optim: &mut dyn FnMut(Dense, GradientsParams) -> Dense| {
            let y: Tensor<2> = x.clone().matmul(model.weight.val());
            let loss = (y.clone() * y).mul_scalar(1e2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &*model);
            *model = optim(model.clone(), grads);
        };
        step(&mut fused.0, &mut |m, g| fused.1.step(lr, m, g));
        step(&mut adamw.0, &mut |m, g| adamw.1.step(lr, m, g));
        step(&mut adam.0, &mut |m, g| adam.1.step(lr, m, g));
    }
    let err = max_diff(to_vec(fused.0.weight.val()), to_vec(adamw.0.weight.val()));
    assert!(
        err <= 1e-6,
        "weight: fused Adam + decay differs from AdamW by {err}"
    );
    let moved = max_diff(to_vec(fused.0.weight.val()), to_vec(adam.0.weight.val()));
    assert!(moved > 1e-4, "the decay changed nothing ({moved})");

    // A zero gradient: Adam's and Adamax's own updates vanish, only the decay acts; float32
    // takes the host loops, float64 the tensor-op paths (burn's Adam underneath FusedAdam).
    let shrink: f64 = lrs.iter().map(|lr| 1.0 - lr * wd).product();
    for kind in [OptimizerKind::Adam, OptimizerKind::Adamax] {
        for dtype in [DType::F32, DType::F64] {
            let mut model = match dtype {
                DType::F64 => common::float64_leaves(start.clone()),
                _ => start.clone(),
            };
            let mut optim = optimizer(kind, wd);
            for &lr in &lrs {
                let loss = model.forward(x.clone().cast(dtype)).sum().mul_scalar(0.0);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(lr, model, grads);
            }
            assert_eq!(model.weight.val().dtype(), dtype);
            let want: Vec<f32> = to_vec(start.weight.val())
                .iter()
                .map(|w| (*w as f64 * shrink) as f32)
                .collect();
            let err = max_diff(to_vec(model.weight.val()), want);
            assert!(
                err <= 1e-6,
                "{kind:?} {dtype:?}: matrix off the pure decay by {err}"
            );
            assert_eq!(
                to_vec(model.bias.val()),
                to_vec(start.bias.val()),
                "{kind:?} {dtype:?}: the bias moved"
            );
        }
    }
}

/// Resuming a run whose metrics file has fewer columns keeps one table: the header is the new
/// one and old rows are padded; a missing file gets its header.
#[test]
fn metrics_file_is_upgraded_on_resume() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.csv");
    std::fs::write(&path, "step,loss\n10,1.5\n20,1.2\n").unwrap();
    let mut f = glowflow::train::open_metrics(&path, "step,loss,grad_norm_max", Some(20)).unwrap();
    writeln!(f, "30,1.1,2.5").unwrap();
    drop(f);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "step,loss,grad_norm_max\n10,1.5,\n20,1.2,\n30,1.1,2.5\n"
    );
    let other = dir.path().join("grad_norms.csv");
    drop(glowflow::train::open_metrics(&other, "step,group", Some(0)).unwrap());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "step,group\n");
}

/// A checkpoint written by the release before format 3 (`tests/fixtures/format2_glow2d`: a
/// 2-step vector Glow trained 4 steps on `normals` with a weight average, its ActNorm flags in
/// `state.json`) loads with its flags moved into the weights, evaluates to the figure that
/// release reported, and resumes into a format-3 checkpoint.
#[test]
fn format_2_checkpoint_loads_evaluates_and_resumes() {
    use glowflow::data::stream::test_points;
    use glowflow::eval::vector::{log_prob_points, mean_nll};
    let fixture = common::fixture("format2_glow2d");
    let device = common::plain_device();
    let (model, state) = glowflow::train::train2d::load_trained(&fixture, &device).unwrap();
    assert!(
        !model.flow.needs_data_init(),
        "the saved flags say initialised"
    );
    // That release's summary.json: test NLL 1.6472889184951782 (weight average, 200 points).
    let points = test_points(state.options.target, state.options.seed, 200);
    let nll = mean_nll(&log_prob_points(&model, &points, &device));
    assert!((nll - 1.6472889184951782).abs() < 1e-6, "test NLL {nll}");

    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let s = run(
        Start::Resume(
            dir.path().to_path_buf(),
            glowflow::train::run_dir::ResumeChanges {
                steps: Some(6),
                ..Default::default()
            },
        ),
        None,
        dir.path(),
    )
    .unwrap();
    assert_eq!(s.steps, 6);
    // The previous release resumed the same checkpoint to 1.6450990062952042: the Adam moments
    // and the weight average reattached to the same parameters.
    assert!(
        (s.test_nll - 1.6450990062952042).abs() < 1e-6,
        "resumed test NLL {}",
        s.test_nll
    );
    let text = std::fs::read_to_string(dir.path().join("checkpoint/state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], 4);
    assert!(v.get("actnorm_initialized").is_none());
    let (resumed, _) = glowflow::train::train2d::load_trained(dir.path(), &device).unwrap();
    assert!(!resumed.flow.needs_data_init());

    // A flag list that does not fit the model is refused, naming the field.
    let bad = tempfile::tempdir().unwrap();
    copy_dir(&fixture, bad.path());
    let state_path = bad.path().join("checkpoint/state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    v["actnorm_initialized"] = serde_json::json!([true]);
    std::fs::write(&state_path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let err = glowflow::train::train2d::load_trained(bad.path(), &device).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("actnorm_initialized") && msg.contains("1 flags for 2"),
        "{msg}"
    );
}
