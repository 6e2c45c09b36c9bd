//! `train`: train a multi-scale Glow on images; its flags and fresh runs serve `ablation` too.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::error::{FieldError, InputError};
use glowflow::limits::{
    MAX_FLOW_STEPS, MAX_IMAGE_SIDE, MAX_LEVELS, MAX_STEPS, MAX_THREADS, MAX_WIDTH,
};
use glowflow::models::GlowImageConfig;
use glowflow::train::checkpoint::RunKind;
use glowflow::train::train_image::{image_recipe_stability, ImageTrainOptions};
use glowflow::train::{interrupt, RunIo};

use super::common::{
    check_utf8_paths, image_model, image_recipe, out_dir, print_json, refuse_given, resume_changes,
    thread_count, train_devices, StabilityArgs,
};
use super::parse;

/// How `train` dequantises pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dequantization {
    /// `x + u`, `u ~ U[0, 1)` in bin units.
    Uniform,
    /// `u ~ q(u | x)`, a conditional flow trained jointly (Flow++ §3.1).
    Variational,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Images: idx:DIR (MNIST-style IDX, raw or .gz), cifar10:DIR or folder:DIR. Stored as an
    /// absolute path; may be given again on --resume when the data moved (same images).
    #[arg(long)]
    pub data: Option<String>,
    /// Zero-pad images to this square size (28 -> 32).
    #[arg(long, value_parser = parse::count::<1, MAX_IMAGE_SIDE>)]
    pub pad: Option<usize>,
    /// Folder images: centre-crop and resize to this size.
    #[arg(long, value_parser = parse::count::<1, MAX_IMAGE_SIDE>)]
    pub size: Option<usize>,
    /// Folder images: load as greyscale.
    #[arg(long)]
    pub grey: bool,
    #[arg(long, default_value_t = image_model().levels, value_parser = parse::count::<1, MAX_LEVELS>)]
    pub levels: usize,
    #[arg(long, visible_alias = "depth", default_value_t = image_model().steps_per_level, value_parser = parse::count::<1, MAX_FLOW_STEPS>)]
    pub steps_per_level: usize,
    /// Coupling-CNN width.
    #[arg(long, visible_alias = "width", default_value_t = image_model().net_width, value_parser = parse::count::<1, MAX_WIDTH>)]
    pub net_width: usize,
    #[arg(long, value_enum, default_value_t = image_model().coupling)]
    pub coupling: glowflow::models::ImageCoupling,
    /// Scale of the affine couplings: bounded (sigmoid(s + 2) floored at 1e-5, so a sample
    /// cannot overflow) or glow (Glow's exact sigmoid(s + 2), unbounded below).
    #[arg(long, value_enum, default_value_t = image_model().affine_scale)]
    pub affine_scale: glowflow::layers::AffineScale,
    #[arg(long, value_enum, default_value_t = image_model().permutation)]
    pub permutation: glowflow::models::Permutation,
    /// Bits per pixel kept (8: the standard for comparing bits/dim with published numbers).
    #[arg(long, default_value_t = image_model().n_bits, value_parser = parse::bits)]
    pub n_bits: u32,
    /// Use N(0, I) as the top prior instead of a learned Gaussian.
    #[arg(long)]
    pub fixed_top: bool,
    /// Class-conditional Glow over this many classes (the data's labels: IDX label files or
    /// CIFAR-10 records): a class-conditioned top prior (openai/glow's --ycond). 0: unconditional.
    #[arg(long, default_value_t = image_model().classes, value_parser = parse::count::<0, 65_536>)]
    pub classes: usize,
    /// Where a class-conditional model reads its class: couplings (the top prior and, as extra
    /// input channels, every coupling network and split prior: each class gets its own flow)
    /// or prior (the top prior only, openai/glow's --ycond). Needs --classes.
    #[arg(long, value_enum, default_value_t = image_model().class_conditioning)]
    pub class_conditioning: glowflow::models::glow_image::ClassConditioning,
    /// Weight of the class-prediction loss on the top latent, bits per image (openai/glow's
    /// --weight-y; 0.01 there). Needs --classes.
    #[arg(long, default_value_t = image_recipe().weight_y, value_parser = parse::weight)]
    pub weight_y: f64,
    /// Probability of dropping a training image's label (the null class), so the class-free
    /// prior is trained too and `sample`/`quality --guidance W` can use classifier-free guidance
    /// (0.1-0.2 is usual). Needs --classes.
    #[arg(long, default_value_t = image_recipe().label_dropout, value_parser = parse::probability)]
    pub label_dropout: f64,
    /// Noise augmentation (TarFlow): Gaussian noise of this standard deviation (data range
    /// [-0.5, 0.5]) added to every dequantised training and test image; samples are then
    /// denoised with one score step. Its bits/dim is that of the noisy images (labelled so, not
    /// comparable). 0: none.
    #[arg(long, default_value_t = 0.0, value_parser = parse::sigma)]
    pub noise_sigma: f64,
    /// Dequantisation: uniform noise in each pixel's bin, or a small conditional flow q(u | x)
    /// trained with the model on the variational bound (Flow++).
    #[arg(long, value_enum, default_value_t = Dequantization::Uniform)]
    pub dequantization: Dequantization,
    /// Variational dequantisation: couplings of q(u | x).
    #[arg(long, default_value_t = glowflow::models::DequantizerConfig::default().depth, value_parser = parse::count::<0, MAX_FLOW_STEPS>)]
    pub dequant_depth: usize,
    /// Variational dequantisation: width of q(u | x)'s networks.
    #[arg(long, default_value_t = glowflow::models::DequantizerConfig::default().hidden, value_parser = parse::count::<1, MAX_WIDTH>)]
    pub dequant_width: usize,
    /// Images per batch (at most the training set).
    #[arg(long, visible_alias = "batch", default_value_t = image_recipe().batch_size, value_parser = parse::count::<1, 1_048_576>)]
    pub batch_size: usize,
    /// Learning rate (openai/glow's 1e-3; stable with the default gradient-norm clipping). May
    /// change on --resume (recorded in the checkpoint).
    #[arg(long, default_value_t = image_recipe().lr, value_parser = parse::learning_rate)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = image_recipe().warmup, value_parser = parse::count::<0, MAX_STEPS>)]
    pub warmup: usize,
    /// Total training steps (default 2000; on --resume, the checkpoint's own total).
    #[arg(long, value_parser = parse::count::<1, MAX_STEPS>)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = image_recipe().seed)]
    pub seed: u64,
    /// Write a sample grid every this many steps (0: never).
    #[arg(long, default_value_t = image_recipe().sample_every, value_parser = parse::count::<0, MAX_STEPS>)]
    pub sample_every: usize,
    /// Save a checkpoint every this many steps (0: at the end only; Ctrl-C also saves).
    #[arg(long, default_value_t = image_recipe().checkpoint_every, value_parser = parse::count::<0, MAX_STEPS>)]
    pub checkpoint_every: usize,
    /// Evaluate on at most this many test images (0: the whole test split).
    #[arg(long, default_value_t = image_recipe().test_limit, value_parser = parse::count::<0, MAX_STEPS>)]
    pub test_limit: usize,
    /// Images the ActNorm initialisation reads (the first batch of Glow §3.1).
    #[arg(long, default_value_t = image_recipe().init_batch, value_parser = parse::count::<1, 1_048_576>)]
    pub init_batch: usize,
    /// A metrics.csv row every this many steps.
    #[arg(long, default_value_t = image_recipe().log_every, value_parser = parse::count::<1, MAX_STEPS>)]
    pub log_every: usize,
    /// Stop after this many minutes of training, then checkpoint and evaluate.
    #[arg(long, value_parser = parse::minutes)]
    pub time_limit: Option<f64>,
    /// Output directory [default: runs/train; with --resume, the resumed run's directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory (its model and recipe; --steps sets the new total;
    /// --lr, --data, --threads, --time-limit, --checkpoint-every, --sample-every,
    /// --test-limit and --low-memory may change, every other flag is refused).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Replace a run already in --out (its checkpoint, logs and samples).
    #[arg(long)]
    pub force: bool,
    /// Compute device: flex (CPU), cuda or cuda:N; a list of GPUs (cuda:0,cuda:1) trains
    /// data-parallel, one equal shard of every batch per GPU (deterministic for a given count).
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Data-parallel threads, one batch shard each (default: all cores; 1 with cuda). Part of
    /// the recipe: changing it on --resume is allowed, with a note that results then differ
    /// from an uninterrupted run in float32 rounding.
    #[arg(long, value_parser = parse::count::<1, MAX_THREADS>)]
    pub threads: Option<usize>,
    /// Invertible backpropagation: rebuild each flow step's input from its output in the
    /// backward pass instead of keeping the activations, so memory stays nearly flat in depth
    /// (the Glow paper's CIFAR-10 model at batch 64: 0.9 GiB instead of 3.9) for about 1.22x the
    /// time per step. Same gradients up to float32 round-off; may be switched on at --resume
    /// (and stays on).
    #[arg(long)]
    pub low_memory: bool,
    #[command(flatten)]
    pub stability: StabilityArgs,
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `train`: a fresh run, or with `--resume` the saved run with the changes the library's
/// one list allows ([`ResumeChanges`](glowflow::train::run_dir::ResumeChanges)).
pub fn run(a: TrainArgs, given: &[(String, String)]) -> Result<()> {
    check_utf8_paths(&[
        ("--out", a.out.as_deref()),
        ("--resume", a.resume.as_deref()),
    ])?;
    use glowflow::train::train_image::{train_image, ImageStart};
    let (device, replicas) = train_devices(&a.device)?;
    interrupt::install();
    let start = match &a.resume {
        Some(dir) => ImageStart::Resume(dir.clone(), resume_changes(given, RunKind::Image)?),
        None => {
            check_dequant_flags(&a, given)?;
            let (cfg, opts) = fresh_image_run(&a)?;
            ImageStart::Fresh(cfg, opts)
        }
    };
    let io = RunIo {
        out: out_dir(&a.out, &a.resume, "runs/train"),
        progress: !a.quiet,
        threads: 1,
        force: a.force,
        replicas,
    };
    let s = train_image(start, &io, &device)?;
    print_json(&s)
}

/// Refuse flags that would be ignored: `--class-conditioning` without `--classes`,
/// `--affine-scale` with other couplings than affine, `q(u | x)`'s shape flags without
/// `--dequantization variational`.
pub fn check_dequant_flags(a: &TrainArgs, given: &[(String, String)]) -> Result<()> {
    if a.classes == 0 {
        let why = "says where a class-conditional model reads its class: it needs --classes K";
        refuse_given(given, &["--class-conditioning"], why)?;
    }
    if a.coupling != glowflow::models::ImageCoupling::Affine {
        let why = "shapes the scale of affine couplings: it needs --coupling affine";
        refuse_given(given, &["--affine-scale"], why)?;
    }
    if a.dequantization == Dequantization::Variational {
        let why = "cannot be combined with variational dequantisation (--dequantization variational): the bound would mix two noise models";
        return match a.noise_sigma > 0.0 {
            true => Err(InputError::flag("--noise-sigma", a.noise_sigma, why).into()),
            false => Ok(()),
        };
    }
    let why = "shapes the variational dequantiser: it needs --dequantization variational";
    refuse_given(given, &["--dequant-depth", "--dequant-width"], why)
}

/// The model and options of a fresh `train` run from its flags (the data is read once to learn
/// the images' shape).
pub fn fresh_image_run(a: &TrainArgs) -> Result<(GlowImageConfig, ImageTrainOptions)> {
    let data = a.data.clone().ok_or_else(|| {
        InputError::flag(
            "--data",
            "",
            "is required (e.g. --data idx:/usr/share/datasets/fashion-mnist)",
        )
    })?;
    let opts = ImageTrainOptions {
        pad: a.pad,
        size: a.size,
        grey: a.grey,
        steps: a.steps.unwrap_or(image_recipe().steps),
        batch_size: a.batch_size,
        lr: a.lr,
        warmup: a.warmup,
        seed: a.seed,
        sample_every: a.sample_every,
        checkpoint_every: a.checkpoint_every,
        test_limit: a.test_limit,
        init_batch: a.init_batch,
        log_every: a.log_every,
        time_limit_minutes: a.time_limit,
        shards: thread_count(a.threads, &a.device),
        stability: a.stability.options(image_recipe_stability()),
        weight_y: a.weight_y,
        label_dropout: a.label_dropout,
        low_memory: a.low_memory,
        ..ImageTrainOptions::recipe(data)
    };
    opts.validate().map_err(FieldError::on_option)?;
    let probe = glowflow::train::train_image::load_data(&opts)?;
    let cfg = GlowImageConfig {
        levels: a.levels,
        steps_per_level: a.steps_per_level,
        net_width: a.net_width,
        coupling: a.coupling,
        affine_scale: a.affine_scale,
        permutation: a.permutation,
        n_bits: a.n_bits,
        learn_top: !a.fixed_top,
        init_seed: a.seed,
        classes: a.classes,
        class_conditioning: a.class_conditioning,
        dequantization: match a.dequantization {
            Dequantization::Variational => {
                glowflow::models::Dequantization::Variational(glowflow::models::DequantizerConfig {
                    depth: a.dequant_depth,
                    hidden: a.dequant_width,
                })
            }
            Dequantization::Uniform if a.noise_sigma > 0.0 => {
                glowflow::models::Dequantization::Noisy {
                    sigma: a.noise_sigma,
                }
            }
            Dequantization::Uniform => glowflow::models::Dequantization::Uniform,
        },
        ..GlowImageConfig::new(probe.train.c, probe.train.h, probe.train.w)
    };
    cfg.validate().map_err(FieldError::on_option)?;
    Ok((cfg, opts))
}
