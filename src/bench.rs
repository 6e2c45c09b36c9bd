//! Benchmarks: fixed workloads timed the same way as their PyTorch twins in `bench/pytorch/`.
//!
//! A training workload times whole steps (forward, backward and the Adam update) after warm-up
//! steps and ActNorm's data initialisation; a generation workload times whole calls. Each step
//! ends by reading the loss back to the host, so asynchronous backends are timed to completion.

use glowflow::models::glow_image::DEFAULT_TEMPERATURE;
use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use glowflow::data::dequant::dequantize;
use glowflow::data::stream::DataStream;
use glowflow::data::Target;
use glowflow::distributions::{standard_normal_log_prob, standard_normal_sample};
use glowflow::eval::images::bpd_of;
use glowflow::eval::vector::model_density_grid;
use glowflow::flow::Flow;
use glowflow::layers::coupling::{AffineCoupling, AffineScale, TanhScale};
use glowflow::layers::{ActNorm, FlowSequence, InvConv1x1Lu, Layer};
use glowflow::models::objective::BatchLayout;
use glowflow::models::{
    CouplingKind, DensityModel, GlowImage, GlowImageConfig, ModelKind, Permutation, VectorFlow,
    VectorFlowConfig,
};
use glowflow::nets::{CouplingNet, PlainConvNet};
use glowflow::ops::adam::adam;
use glowflow::ops::conv::fused_on;
use glowflow::tensor_util::{from_vec, to_vec, with_sequential_param_ids};
use glowflow::train::low_memory::image_loss_and_grads_into;
use glowflow::train::parallel::{backprop, shard_grads_into, GradSink, ShardSink};

/// What `glowflow bench --workload` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 8 x [ActNorm -> LU 2x2 -> affine coupling, MLP 1-128-128-2], batch 1024, Adam 1e-3.
    Probe2d,
    /// Input 16x12x16x16; 8 x [ActNorm -> LU 1x1 conv -> affine coupling, CNN 6-256-256-12].
    ProbeImage,
    /// The 2D Glow of `train2d` at its defaults (32 steps, MLP 1-64-64-2, batch 1024, Adam 1e-4).
    Seed2d,
    /// The default Fashion-MNIST Glow of `train` (1x32x32, L=3, K=6, width 64, batch 64).
    Image,
    /// The Glow paper's CIFAR-10 model (Kingma & Dhariwal 2018, §5: 3x32x32, L=3, K=32, width
    /// 512, affine coupling, LU 1x1 convolution), batch 64. Memory grows with K: ordinary
    /// backpropagation keeps every step's activations, about 0.7 GiB per K at batch 64 (24 GiB
    /// in all: refused, not killed, where less is available).
    PaperCifar,
    /// Sampling 64 images at T = 0.7 from the `image` model.
    Sample,
    /// The 256 x 256 density map of the `seed2d` model.
    DensityGrid,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Probe2d => "probe2d",
            Workload::ProbeImage => "probe-image",
            Workload::Seed2d => "seed2d",
            Workload::Image => "image",
            Workload::PaperCifar => "paper-cifar",
            Workload::Sample => "sample",
            Workload::DensityGrid => "density-grid",
        }
    }

    /// Timed steps when the caller gives none (each about a few seconds on 2 cores).
    /// Points, images or density values one step handles (the batch), for rows per second.
    pub fn rows_per_step(self) -> usize {
        match self {
            Workload::Probe2d | Workload::Seed2d => 1024,
            Workload::ProbeImage => 16,
            Workload::Image | Workload::PaperCifar | Workload::Sample => 64,
            Workload::DensityGrid => 256 * 256,
        }
    }

    pub fn default_steps(self) -> usize {
        match self {
            Workload::Probe2d | Workload::Seed2d => 50,
            Workload::ProbeImage | Workload::Image => 10,
            Workload::Sample | Workload::DensityGrid => 5,
            Workload::PaperCifar => 2,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub workload: Workload,
    /// Invertible backpropagation (image training workloads).
    pub low_memory: bool,
    /// Flow steps per level when not the workload's own.
    pub steps_per_level: Option<usize>,
    pub backend: String,
    pub threads: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Mean over the timed steps.
    pub ms_per_step: f64,
    pub ms_per_step_median: f64,
    pub steps_per_s: f64,
    /// Points or images per second: `steps_per_s` times the workload's batch.
    pub rows_per_s: f64,
    /// Peak resident set size of the whole process (`VmHWM`), MiB; `None` off Linux.
    pub peak_rss_mib: Option<f64>,
    /// The last step's loss (training workloads), a sanity check that work was done.
    pub last_loss: Option<f64>,
    /// The CPU's name (`/proc/cpuinfo`), for telling machine classes apart.
    pub cpu: Option<String>,
    /// The instruction sets each CPU path uses on this machine.
    pub simd: SimdPaths,
}

/// What the CPU paths run on this machine (all chosen at run time; one binary serves every
/// x86-64 CPU).
#[derive(Clone, Debug, Serialize)]
pub struct SimdPaths {
    /// gemm's microkernels (matrix products, convolutions): `avx512f`, `fma` or `scalar`.
    pub gemm: &'static str,
    /// burn-flex's element-wise kernels (macerator) and glowflow's fused loops
    /// (`ops::vectorized`): `avx512`, `avx2+fma` or `baseline`.
    pub elementwise: &'static str,
}

impl SimdPaths {
    /// Detect them on this CPU.
    pub fn detect() -> Self {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        let gemm = if std::arch::is_x86_feature_detected!("avx512f") {
            "avx512f"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "fma"
        } else {
            "scalar"
        };
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        let gemm = "native";
        SimdPaths {
            gemm,
            elementwise: glowflow::ops::simd_level(),
        }
    }
}

/// The CPU's model name from `/proc/cpuinfo` (Linux).
pub fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Peak resident set size of this process in MiB, from `/proc/self/status`.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Run `warmup` untimed then `steps` timed calls of `step`; returns per-call seconds and the
/// last value `step` returned.
fn time_calls(
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> Result<Option<f64>>,
) -> Result<(Vec<f64>, Option<f64>)> {
    let mut last = None;
    for _ in 0..warmup {
        last = step()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        last = step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((times, last))
}

/// A training workload: Adam at `lr` on a fixed batch of `rows` (`width` values each), the
/// gradients computed over `threads` shards exactly as the trainers do.
struct TrainRun<'a> {
    rows: &'a [f32],
    width: usize,
    lr: f64,
    threads: usize,
    device: &'a Device,
}

impl TrainRun<'_> {
    /// Time whole steps of `model`; `loss` gives the mean loss of a `[k, width]` shard
    /// (ordinary backpropagation).
    fn time<M, F>(
        &self,
        model: M,
        warmup: usize,
        steps: usize,
        loss: F,
    ) -> Result<(Vec<f64>, Option<f64>)>
    where
        M: Module + Clone + Send + Sync,
        F: Fn(&M, Tensor<2>) -> Tensor<1> + Sync,
    {
        self.time_grads_into(model, warmup, steps, |m, x, w, sink| {
            let (value, grads) = backprop(m, loss(m, x), w);
            sink.deposit(m, grads);
            value
        })
    }

    /// Time whole steps of `model`; `grads` gives a `[k, width]` shard's weighted mean loss and
    /// deposits its gradients (see `parallel::shard_grads_into`).
    fn time_grads_into<M, G>(
        &self,
        model: M,
        warmup: usize,
        steps: usize,
        grads: G,
    ) -> Result<(Vec<f64>, Option<f64>)>
    where
        M: Module + Clone + Send + Sync,
        G: Fn(&M, Tensor<2>, f64, &mut ShardSink) -> f64 + Sync,
    {
        let mut optim = adam(1e-8);
        let mut slot = Some(model);
        time_calls(warmup, steps, || {
            let m = slot.take().expect("model present between steps");
            let (value, grads) =
                shard_grads_into(&m, self.rows, self.width, self.threads, self.device, &grads);
            slot = Some(optim.step(self.lr, m, grads));
            finite(value)
        })
    }
}

fn finite(loss: f64) -> Result<Option<f64>> {
    if loss.is_finite() {
        Ok(Some(loss))
    } else {
        anyhow::bail!("benchmark loss became {loss}")
    }
}

/// Glow-2D configuration of a 2D workload.
fn config_2d(workload: Workload) -> (VectorFlowConfig, f64) {
    let mut cfg = VectorFlowConfig::new(ModelKind::Glow);
    cfg.coupling = CouplingKind::Tanh;
    cfg.permutation = Permutation::Lu;
    match workload {
        Workload::Probe2d => {
            cfg.flow_steps = 8;
            cfg.net_width = 128;
            (cfg, 1e-3)
        }
        _ => (cfg, 1e-4),
    }
}

/// One batch of 1024 points of the eight-Gaussians target, fixed for the whole benchmark.
fn fixed_points() -> Vec<f32> {
    DataStream::new(Target::Normals, 0, 1024).batch_at(0)
}

fn bench_2d(
    workload: Workload,
    warmup: usize,
    steps: usize,
    threads: usize,
    device: &Device,
) -> Result<(Vec<f64>, Option<f64>)> {
    let device = device.clone().autodiff();
    let (cfg, lr) = config_2d(workload);
    let batch = fixed_points();
    let mut model = VectorFlow::new(&cfg, &device);
    model.initialize(from_vec(batch.clone(), [1024, 2], &device), None);
    let run = TrainRun {
        rows: &batch,
        width: 2,
        lr,
        threads,
        device: &device,
    };
    run.time(model, warmup, steps, |m, x| {
        m.log_prob(x, None).mean().neg()
    })
}

/// The `probe-image` flow: 8 x [ActNorm(12) -> LU 1x1 conv -> affine coupling with a plain CNN
/// 6 -> 256 -> 256 -> 12 and scale `exp(tanh(.))`].
pub fn probe_image_flow(device: &Device) -> FlowSequence {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut layers = Vec::new();
    for k in 0..8 {
        layers.push(Layer::ActNorm(ActNorm::new(12, device)));
        layers.push(Layer::InvConv1x1Lu(InvConv1x1Lu::new(12, &mut rng, device)));
        let net = CouplingNet::PlainConv(PlainConvNet::new(6, 12, 256, &mut rng, device));
        layers.push(Layer::AffineCoupling(AffineCoupling::new(
            net,
            Some(TanhScale::new(device)),
            k % 2 == 1,
            AffineScale::Bounded,
        )));
    }
    with_sequential_param_ids(FlowSequence::new(layers))
}

fn bench_probe_image(
    warmup: usize,
    steps: usize,
    threads: usize,
    device: &Device,
) -> Result<(Vec<f64>, Option<f64>)> {
    let device = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = standard_normal_sample([16, 12, 16, 16], 1.0, &mut rng, &device);
    let rows = to_vec(x.clone());
    let d = 12 * 16 * 16;
    let mut flow = probe_image_flow(&device);
    flow.initialize(x, None);
    let run = TrainRun {
        rows: &rows,
        width: d,
        lr: 1e-3,
        threads,
        device: &device,
    };
    run.time(flow, warmup, steps, |f, x| {
        let k = x.dims()[0];
        let (z, ld) = f.forward(x.reshape([k, 12, 16, 16]));
        (standard_normal_log_prob(z) + ld)
            .mean()
            .neg()
            .div_scalar(d as f64)
    })
}

/// The default image model of `glowflow train` on Fashion-MNIST-shaped input.
pub fn image_config() -> GlowImageConfig {
    GlowImageConfig::new(1, 32, 32)
}

/// The Glow paper's CIFAR-10 model (Kingma & Dhariwal 2018, §5 and Appendix: L = 3 levels of
/// K = 32 steps, coupling networks of width 512) on 3x32x32 input, otherwise `train`'s defaults
/// (affine coupling, LU 1x1 convolution, learned top prior).
pub fn paper_cifar_config() -> GlowImageConfig {
    GlowImageConfig {
        levels: 3,
        steps_per_level: 32,
        net_width: 512,
        ..GlowImageConfig::new(3, 32, 32)
    }
}

/// A fixed batch of dequantised random 8-bit images (timing does not depend on the content),
/// flattened on the host.
fn image_rows(n: usize, cfg: &GlowImageConfig) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let px: Vec<u8> = (0..n * cfg.dims()).map(|_| rng.gen()).collect();
    dequantize(&px, cfg.n_bits, &mut rng)
}

/// `rows` of whole images as a `[N, C, H, W]` batch.
fn image_batch(rows: Vec<f32>, cfg: &GlowImageConfig, device: &Device) -> Tensor<4> {
    let n = rows.len() / cfg.dims();
    from_vec(rows, [n, cfg.channels, cfg.height, cfg.width], device)
}

/// Options of the image training workloads (`image`, `paper-cifar`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageOptions {
    /// Invertible backpropagation (`train::low_memory`) instead of ordinary backpropagation.
    pub low_memory: bool,
    /// Flow steps per level instead of the workload's own (for memory against depth).
    pub steps_per_level: Option<usize>,
}

fn bench_image(
    cfg: GlowImageConfig,
    lr: f64,
    opts: ImageOptions,
    warmup: usize,
    steps: usize,
    threads: usize,
    device: &Device,
) -> Result<(Vec<f64>, Option<f64>)> {
    let cfg = GlowImageConfig {
        steps_per_level: opts.steps_per_level.unwrap_or(cfg.steps_per_level),
        ..cfg
    };
    let device = device.clone().autodiff();
    let mut model = GlowImage::new(&cfg, &device);
    // Refuse up front what would be killed for memory mid-step.
    let need = cfg.training_bytes(64, threads, 64, opts.low_memory, fused_on(&device));
    if let Some(why) = glowflow::limits::memory_shortfall(need) {
        let what = format!(
            "{}x{}x{}, L = {}, K = {}, width {}, batch 64{}",
            cfg.channels,
            cfg.height,
            cfg.width,
            cfg.levels,
            cfg.steps_per_level,
            cfg.net_width,
            if opts.low_memory {
                ", --low-memory"
            } else {
                ""
            }
        );
        let reason = format!("a training step of this model {why}");
        return Err(glowflow::error::InputError::flag("--workload", what, reason).into());
    }
    let rows = image_rows(64, &cfg);
    model.initialize(image_batch(rows.clone(), &cfg, &device));
    let run = TrainRun {
        rows: &rows,
        width: cfg.dims(),
        lr,
        threads,
        device: &device,
    };
    if opts.low_memory {
        let layout = BatchLayout::new(&cfg, 0.0);
        return run.time_grads_into(model, warmup, steps, |m, x, w, sink| {
            image_loss_and_grads_into(m, &cfg, &layout, x, 0.0, w, sink)
        });
    }
    run.time(model, warmup, steps, |m, x| {
        let k = x.dims()[0];
        let x = x.reshape([k, cfg.channels, cfg.height, cfg.width]);
        bpd_of(m.log_prob(x, None), cfg.dims(), cfg.n_bits)
    })
}

fn bench_sample(warmup: usize, steps: usize, device: &Device) -> Result<(Vec<f64>, Option<f64>)> {
    let cfg = image_config();
    let mut model = GlowImage::new(&cfg, device);
    model.initialize(image_batch(image_rows(64, &cfg), &cfg, device));
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    time_calls(warmup, steps, || {
        let x = model
            .sample_with_latents(64, DEFAULT_TEMPERATURE, None, &mut rng)
            .0;
        let v = to_vec(x);
        Ok(Some(
            v.iter().map(|&p| p as f64).sum::<f64>() / v.len() as f64,
        ))
    })
}

fn bench_density_grid(
    warmup: usize,
    steps: usize,
    device: &Device,
) -> Result<(Vec<f64>, Option<f64>)> {
    let (cfg, _) = config_2d(Workload::Seed2d);
    let mut model = VectorFlow::new(&cfg, device);
    model.initialize(from_vec(fixed_points(), [1024, 2], device), None);
    time_calls(warmup, steps, || {
        let grid = model_density_grid(&model, Target::Normals, 256, device);
        Ok(Some(grid.values.iter().sum::<f64>()))
    })
}

/// Run one workload: `warmup` untimed steps, then `steps` timed ones. `threads` is the number
/// of data-parallel shards of the 2D workloads (the backend's own thread pool is sized by the
/// caller, e.g. `RAYON_NUM_THREADS`).
pub fn run(
    workload: Workload,
    image: ImageOptions,
    steps: usize,
    warmup: usize,
    threads: usize,
    backend: &str,
    device: &Device,
) -> Result<BenchReport> {
    if steps == 0 {
        anyhow::bail!("`steps` must be at least 1");
    }
    let (times, last) = match workload {
        Workload::Probe2d | Workload::Seed2d => bench_2d(workload, warmup, steps, threads, device)?,
        Workload::ProbeImage => bench_probe_image(warmup, steps, threads, device)?,
        Workload::Image => {
            bench_image(image_config(), 3e-4, image, warmup, steps, threads, device)?
        }
        // The paper's model at the first steps of its linear warm-up to 1e-3: at 3e-4 without
        // one, K = 16 reached 8e5 bits/dim on its batch of noise within four steps (a step's
        // time does not depend on the rate).
        Workload::PaperCifar => bench_image(
            paper_cifar_config(),
            1e-5,
            image,
            warmup,
            steps,
            threads,
            device,
        )?,
        Workload::Sample => bench_sample(warmup, steps, device)?,
        Workload::DensityGrid => bench_density_grid(warmup, steps, device)?,
    };
    let total: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Ok(BenchReport {
        workload,
        low_memory: image.low_memory,
        steps_per_level: image.steps_per_level,
        backend: backend.to_string(),
        threads,
        steps,
        warmup,
        ms_per_step: 1e3 * total / steps as f64,
        ms_per_step_median: 1e3 * median,
        steps_per_s: steps as f64 / total,
        rows_per_s: (steps * workload.rows_per_step()) as f64 / total,
        peak_rss_mib: peak_rss_mib(),
        last_loss: if workload == Workload::Sample || workload == Workload::DensityGrid {
            None
        } else {
            last
        },
        cpu: cpu_name(),
        simd: SimdPaths::detect(),
    })
}
