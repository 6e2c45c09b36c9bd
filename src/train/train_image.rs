//! Maximum-likelihood training of multi-scale Glow on images, with bits/dim, sample grids,
//! checkpoints and exact resume.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    self, checkpoint_dir, save_checkpoint, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
};
use super::{open_metrics, parallel, progress_bar};
use crate::data::dequant::{dequantize, to_pixels};
use crate::data::{DataSpec, ImageSet, LoadOptions};
use crate::layers::ActNormFlags;
use crate::models::{GlowImage, GlowImageConfig};
use crate::tensor_util::{cast_module, from_vec, to_vec, to_vec_f64};
use crate::train::adam::adam;
use crate::viz::Canvas;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageTrainOptions {
    /// The data spec as given (`idx:DIR`, ...), and loading options.
    pub data: String,
    pub pad: Option<usize>,
    pub size: Option<usize>,
    pub grey: bool,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Linear learning-rate warm-up over this many steps.
    pub warmup: usize,
    pub seed: u64,
    /// Images used for the ActNorm initialisation.
    pub init_batch: usize,
    pub log_every: usize,
    pub sample_every: usize,
    pub checkpoint_every: usize,
    /// Evaluate on at most this many test images at the end (0: all).
    pub test_limit: usize,
    /// Stop training after this many minutes of training time (then checkpoint and evaluate).
    #[serde(default)]
    pub time_limit_minutes: Option<f64>,
    /// Data-parallel shards of each batch (one thread each; see `train::parallel`). Part of the
    /// recipe: results are deterministic for a given shard count and equal across counts up to
    /// float32 summation order.
    #[serde(default = "one_shard")]
    pub shards: usize,
}

fn one_shard() -> usize {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRunState {
    pub model: GlowImageConfig,
    pub options: ImageTrainOptions,
    pub step: usize,
    pub actnorm_initialized: Vec<bool>,
    pub train_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageSummary {
    pub steps: usize,
    pub test_bpd: f64,
    pub test_images: usize,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub parameters: usize,
    pub config: GlowImageConfig,
    pub options: ImageTrainOptions,
}

pub fn load_data(opts: &ImageTrainOptions) -> Result<crate::data::Splits> {
    let spec: DataSpec = opts
        .data
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--data {e}"))?;
    crate::data::images::load(
        &spec,
        &LoadOptions {
            pad: opts.pad,
            size: opts.size,
            grey: opts.grey,
        },
    )
}

/// Dequantised tensor of the images `idx` of `set`, noise from `rng`.
fn batch_tensor(
    set: &ImageSet,
    idx: &[usize],
    n_bits: u32,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Tensor<4> {
    from_vec(
        batch_rows(set, idx, n_bits, rng),
        [idx.len(), set.c, set.h, set.w],
        device,
    )
}

/// The same batch flattened on the host, one image per row.
fn batch_rows(set: &ImageSet, idx: &[usize], n_bits: u32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut px = Vec::with_capacity(idx.len() * set.dims());
    for &i in idx {
        px.extend_from_slice(set.image(i));
    }
    dequantize(&px, n_bits, rng)
}

/// Image indices of training step `step`: epochs are seeded permutations, so any step's batch
/// (and its dequantisation noise, from the per-step RNG) is reproducible on resume.
fn batch_indices(n: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    let per_epoch = (n / batch).max(1);
    let (epoch, k) = (step / per_epoch, step % per_epoch);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xD1CE);
    rng.set_stream(epoch as u64);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    (0..batch).map(|j| perm[(k * batch + j) % n]).collect()
}

fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED);
    rng.set_stream(step as u64 + 1);
    rng
}

/// Mean bits/dim of a batch from per-image continuous log-densities.
pub fn bpd_of(logp: Tensor<1>, d: usize, n_bits: u32) -> Tensor<1> {
    let ln_bins = (1u64 << n_bits) as f64;
    logp.neg()
        .add_scalar(d as f64 * ln_bins.ln())
        .mean()
        .div_scalar(d as f64 * std::f64::consts::LN_2)
}

/// Test bits/dim over `set` (one dequantisation draw with a fixed seed).
pub fn test_bpd(
    model: &GlowImage,
    set: &ImageSet,
    n_bits: u32,
    batch: usize,
    device: &Device,
) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7E57);
    let d = set.dims();
    let mut total = 0.0;
    let idx: Vec<usize> = (0..set.n).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let x = batch_tensor(set, chunk, n_bits, &mut rng, device);
        for lp in to_vec(model.log_prob(x)) {
            total += crate::data::dequant::bits_per_dim(lp as f64, d, n_bits);
        }
    }
    total / set.n as f64
}

/// A grid of `n` samples at `temperature` as an image (nearest-neighbour upscaled to >= 64 px).
pub fn sample_grid(
    model: &GlowImage,
    cfg: &GlowImageConfig,
    n: usize,
    temperature: f64,
    seed: u64,
) -> Canvas {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = model.sample(n, temperature, &mut rng);
    let px = to_pixels(&to_vec(x), cfg.n_bits);
    image_grid(&px, n, cfg.channels, cfg.height, cfg.width)
}

/// Tile `n` images `[n, c, h, w]` into a square grid.
pub fn image_grid(px: &[u8], n: usize, c: usize, h: usize, w: usize) -> Canvas {
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let scale = (64 / h.max(w)).max(1);
    let pad = 2;
    let (cw, ch) = (w * scale + pad, h * scale + pad);
    let mut canvas = Canvas::new(cols * cw + pad, rows * ch + pad, [40, 40, 40]);
    for i in 0..n {
        let (gx, gy) = (pad + (i % cols) * cw, pad + (i / cols) * ch);
        for y in 0..h * scale {
            for x in 0..w * scale {
                let at = |k: usize| px[((i * c + k) * h + y / scale) * w + x / scale];
                let rgb = if c >= 3 {
                    [at(0), at(1), at(2)]
                } else {
                    [at(0); 3]
                };
                canvas.set(gx + x, gy + y, rgb);
            }
        }
    }
    canvas
}

/// Load a trained image model from a run or checkpoint directory.
pub fn load_trained(dir: &Path, device: &Device) -> Result<(GlowImage, ImageRunState)> {
    let ck = checkpoint::locate(dir);
    let state: ImageRunState = checkpoint::load_json(&ck.join(STATE_FILE)).with_context(|| {
        format!(
            "--checkpoint {}: not an image run or checkpoint directory",
            dir.display()
        )
    })?;
    let mut model =
        checkpoint::load_model(GlowImage::new(&state.model, device), &ck.join(MODEL_FILE))?;
    model
        .set_actnorm_flags(&state.actnorm_initialized)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ck.join(STATE_FILE).display()))?;
    Ok((model, state))
}

pub enum ImageStart {
    Fresh(GlowImageConfig, ImageTrainOptions),
    /// Resume from a run directory; optionally a new total step count.
    /// Resume from a run directory; optionally a new total step count and a time limit for
    /// this invocation.
    Resume(PathBuf, Option<usize>, Option<f64>),
}

/// Train (or resume) and evaluate; writes into `out`.
pub fn train_image(
    start: ImageStart,
    out: &Path,
    progress: bool,
    device: &Device,
) -> Result<ImageSummary> {
    let train_device = device.clone().autodiff();
    let (mut model, mut optim, opts, cfg, first, mut train_seconds) = match start {
        ImageStart::Fresh(cfg, opts) => {
            let model = GlowImage::new(&cfg, &train_device);
            (model, adam(1e-8), opts, cfg, 0, 0.0)
        }
        ImageStart::Resume(dir, steps, time_limit) => {
            let (model, mut state) = load_trained(&dir, &train_device)
                .with_context(|| format!("--resume {}", dir.display()))?;
            let optim =
                checkpoint::load_optimizer(adam(1e-8), &checkpoint_dir(&dir).join(OPTIMIZER_FILE))?;
            if let Some(s) = steps {
                state.options.steps = s;
            }
            state.options.time_limit_minutes = time_limit;
            (
                model,
                optim,
                state.options,
                state.model,
                state.step,
                state.train_seconds,
            )
        }
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    if opts.batch == 0 || opts.log_every == 0 {
        bail!("--batch and --log-every must be at least 1");
    }
    if !(opts.lr.is_finite() && opts.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", opts.lr);
    }
    if first > opts.steps {
        bail!(
            "--steps {} is below the {first} steps the checkpoint has done",
            opts.steps
        );
    }
    let data = load_data(&opts)?;
    if (data.train.c, data.train.h, data.train.w) != (cfg.channels, cfg.height, cfg.width) {
        bail!(
            "--data {}: images are {}x{}x{} but the model expects {}x{}x{}",
            opts.data,
            data.train.c,
            data.train.h,
            data.train.w,
            cfg.channels,
            cfg.height,
            cfg.width
        );
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create directory", out.display()))?;
    let d = cfg.dims();

    if first == 0 && !model.actnorm_flags().iter().all(|&f| f) {
        let idx = batch_indices(data.train.n, opts.init_batch.max(1), opts.seed ^ 0x1417, 0);
        let x = batch_tensor(
            &data.train,
            &idx,
            cfg.n_bits,
            &mut step_rng(opts.seed, usize::MAX - 1),
            &train_device,
        );
        model.initialize(x);
    }

    let metrics_path = out.join("metrics.csv");
    let mut metrics = open_metrics(
        &metrics_path,
        "step,bpd,lr,seconds,images_per_s",
        first == 0,
    )?;
    let bar = progress_bar(progress, opts.steps as u64, first as u64);
    let mut window = (0.0, 0usize);
    let mut clock = Instant::now();
    let mut last = first;
    let resumed_seconds = train_seconds;
    for step in first..opts.steps {
        if let Some(limit) = opts.time_limit_minutes {
            // The limit applies to this invocation's training time.
            if train_seconds - resumed_seconds + clock.elapsed().as_secs_f64() >= limit * 60.0 {
                break;
            }
        }
        let lr = opts.lr * ((step + 1) as f64 / opts.warmup.max(1) as f64).min(1.0);
        let idx = batch_indices(data.train.n, opts.batch, opts.seed, step);
        let rows = batch_rows(
            &data.train,
            &idx,
            cfg.n_bits,
            &mut step_rng(opts.seed, step),
        );
        let shape = |k: usize| [k, cfg.channels, cfg.height, cfg.width];
        let (value, grads) =
            parallel::loss_and_grads(&model, &rows, d, opts.shards, &train_device, |m, x| {
                let k = x.dims()[0];
                bpd_of(m.log_prob(x.reshape(shape(k))), d, cfg.n_bits)
            });
        if !value.is_finite() {
            bail!("training diverged: bits/dim is {value} at step {} (lr {lr:e}); the last checkpoint is intact", step + 1);
        }
        model = optim.step(lr, model, grads);
        window.0 += value;
        window.1 += 1;
        let done = step + 1;
        last = done;
        if done % opts.log_every == 0 || done == opts.steps {
            let dt = clock.elapsed().as_secs_f64();
            train_seconds += dt;
            clock = Instant::now();
            let ips = (window.1 * opts.batch) as f64 / dt.max(1e-9);
            let bpd = window.0 / window.1 as f64;
            writeln!(
                metrics,
                "{done},{bpd:.5},{lr:.4e},{train_seconds:.2},{ips:.1}"
            )?;
            metrics.flush()?;
            if let Some(b) = &bar {
                b.set_position(done as u64);
                b.set_message(format!("{bpd:.3} bits/dim  {ips:.1} img/s"));
            }
            window = (0.0, 0);
        }
        let sample_due = opts.sample_every > 0 && done % opts.sample_every == 0;
        let ckpt_due = opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0;
        if sample_due || ckpt_due {
            train_seconds += clock.elapsed().as_secs_f64();
            if sample_due {
                let grid = sample_grid(&model.valid(), &cfg, 64, 0.7, opts.seed);
                grid.save_png(&out.join(format!("samples_{done:07}.png")))?;
            }
            if ckpt_due {
                let state = ImageRunState {
                    model: cfg.clone(),
                    options: opts.clone(),
                    step: done,
                    actnorm_initialized: model.actnorm_flags(),
                    train_seconds,
                };
                save_checkpoint(out, &model, &optim, &state)?;
            }
            clock = Instant::now();
        }
    }
    train_seconds += clock.elapsed().as_secs_f64();
    if let Some(b) = &bar {
        b.finish();
    }
    let state = ImageRunState {
        model: cfg.clone(),
        options: opts.clone(),
        step: last,
        actnorm_initialized: model.actnorm_flags(),
        train_seconds,
    };
    save_checkpoint(out, &model, &optim, &state)?;
    let eval = model.valid();
    let test = if opts.test_limit > 0 {
        data.test.take(opts.test_limit)
    } else {
        data.test.clone()
    };
    let bpd = test_bpd(&eval, &test, cfg.n_bits, 256, device);
    sample_grid(&eval, &cfg, 64, 0.7, opts.seed).save_png(&out.join("samples.png"))?;
    let summary = ImageSummary {
        steps: last,
        test_bpd: bpd,
        test_images: test.n,
        train_seconds,
        images_per_second: (last * opts.batch) as f64 / train_seconds.max(1e-9),
        parameters: eval.num_params(),
        config: cfg,
        options: opts,
    };
    checkpoint::save_json(&summary, &out.join("summary.json"))?;
    Ok(summary)
}

/// Max |inverse(forward(x)) - x| over the first `n` test images, latents reused exactly, with the
/// round trip computed in `dtype` (the model's float32 weights are cast, exactly, for float64).
///
/// In float32 a trained model's round trip is limited by rounding in the latents, which the
/// inverse expands along the directions the forward map contracts (about 1e-4 on Fashion-MNIST);
/// float64 separates that round-off from any real defect of the inverse.
pub fn reconstruction_error(
    model: &GlowImage,
    set: &ImageSet,
    n_bits: u32,
    n: usize,
    dtype: DType,
    device: &Device,
) -> f64 {
    let idx: Vec<usize> = (0..n.min(set.n)).collect();
    let x = batch_tensor(set, &idx, n_bits, &mut ChaCha8Rng::seed_from_u64(1), device).cast(dtype);
    let model = cast_module(model.clone(), dtype);
    let (_, zs) = model.forward_latents(x.clone());
    let back = model.decode(&zs);
    to_vec_f64(back - x)
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()))
}
