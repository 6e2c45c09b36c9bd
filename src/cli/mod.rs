//! The `glowflow` command line: a thin layer over the library.
//!
//! Every number is checked by its value parser ([`parse`]) before anything runs; errors a user
//! can fix exit with code 2, an interrupted run with 130 ([`glowflow::error::exit_code`]).

pub mod parse;

/// `println!` that never panics: a closed standard output (`| head`) or a full disk loses the
/// line, not the command (its files are already written).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::json;

use glowflow::data::stream::TableOptions;
use glowflow::data::stream::DEFAULT_TEST_FRACTION;
use glowflow::data::Target;
use glowflow::error::{FieldError, InputError};
use glowflow::limits::{
    MAX_FLOW_STEPS, MAX_IMAGE_SIDE, MAX_LEVELS, MAX_STEPS, MAX_THREADS, MAX_WIDTH,
};
use glowflow::models::{CouplingKind, GlowImageConfig, ModelKind, Permutation, VectorFlowConfig};
use glowflow::train::run_dir::{self, ResumeChanges};
use glowflow::train::stability::StabilityOptions;
use glowflow::train::train2d::load_trained;
use glowflow::train::train_image::image_recipe_stability;
use glowflow::train::train_image::ImageTrainOptions;
use glowflow::train::{checkpoint, interrupt, train2d, RunIo, Start, Train2dOptions};

#[derive(Parser, Debug)]
#[command(name = "glowflow", version, about = "Glow-family normalizing flows")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a vector flow (Glow or Real NVP) by maximum likelihood: on a built-in 2D target,
    /// or on your table (--data FILE.csv|.npy, any number of columns, optional context columns).
    #[command(allow_negative_numbers = true, visible_alias = "train-vectors")]
    Train2d(Train2dArgs),
    /// Write each row's log-density under a trained vector flow to CSV (anomaly and
    /// out-of-distribution scores).
    #[command(allow_negative_numbers = true)]
    Score(ScoreArgs),
    /// Train Glow and Real NVP on identical data and budget and compare them.
    #[command(allow_negative_numbers = true)]
    Compare(CompareArgs),
    /// Train a multi-scale Glow on images.
    #[command(allow_negative_numbers = true)]
    Train(TrainArgs),
    /// Test bits/dim of a trained image model over the whole test split.
    #[command(allow_negative_numbers = true)]
    Eval(EvalArgs),
    /// Sample a trained model: a grid of images (by class for class-conditional models), or CSV
    /// rows from a vector flow trained on a table (for a given --context).
    #[command(allow_negative_numbers = true)]
    Sample(SampleArgs),
    /// Sample quality of a trained image model: the Fréchet distance between samples and test
    /// images in the features of a classifier trained (once, then cached) on the data set
    /// (`fd_classifier`, not comparable with published FIDs), and the classifier's accuracy on
    /// class-conditional samples.
    #[command(allow_negative_numbers = true)]
    Quality(QualityArgs),
    /// Glow's ablation (Fig. 3): {reverse, shuffle, LU 1x1} x {additive, affine} trained with the
    /// same data, seeds and step budget; one picture of the six test-bpd curves and a table.
    #[command(allow_negative_numbers = true)]
    Ablation(AblationArgs),
    /// Interpolate between pairs of test images through every level's latents (one row of
    /// images per pair).
    #[command(allow_negative_numbers = true)]
    Interpolate(InterpolateArgs),
    /// Move test images along a class's attribute direction (mean latent of the training
    /// images of that class minus the mean of the others), one column per scale.
    #[command(allow_negative_numbers = true)]
    Attribute(AttributeArgs),
    /// Sample at several temperatures, the same draws in every row (one row per temperature).
    #[command(allow_negative_numbers = true)]
    Temperatures(TemperaturesArgs),
    /// Max abs error of inverse(forward(x)) over a batch of test images.
    #[command(allow_negative_numbers = true)]
    Reconstruct(EvalArgs),
    /// Time a fixed workload (training steps or generation) and report speed and peak memory.
    #[command(allow_negative_numbers = true)]
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum)]
    pub workload: crate::bench::Workload,
    /// Timed steps (default: per workload, a few seconds' worth).
    #[arg(long, value_parser = parse::count::<1, 1_000_000>)]
    pub steps: Option<usize>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3, value_parser = parse::count::<0, 1_000_000>)]
    pub warmup: usize,
    /// CPU threads (default: all cores): data-parallel shards of the 2D workloads and the size
    /// of the backend's thread pool.
    #[arg(long, value_parser = parse::count::<1, MAX_THREADS>)]
    pub threads: Option<usize>,
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// Training-stability flags shared by `train`, `train2d` and `compare` (their defaults differ:
/// see each command's help).
#[derive(Args, Debug, Clone)]
pub struct StabilityArgs {
    /// Clip the global gradient L2 norm to this value; 0 turns clipping off
    /// [default: train 50, train2d/compare 0].
    #[arg(long, value_parser = parse::threshold)]
    pub clip_grad_norm: Option<f64>,
    /// Decay of the exponential moving average of the weights used for evaluation and samples;
    /// 0 turns it off [default: train 0.999, train2d/compare 0].
    #[arg(long, value_parser = parse::decay)]
    pub ema_decay: Option<f64>,
    /// Stop after this many consecutive steps skipped for a non-finite loss, gradient or update
    /// [default: 20].
    #[arg(long, value_parser = parse::count::<1, 1_000_000>)]
    pub max_skips: Option<usize>,
    /// Optimizer [default: adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<glowflow::train::stability::OptimizerKind>,
}

impl StabilityArgs {
    fn options(&self, defaults: StabilityOptions) -> StabilityOptions {
        StabilityOptions {
            clip_grad_norm: self.clip_grad_norm.unwrap_or(defaults.clip_grad_norm),
            ema_decay: self.ema_decay.unwrap_or(defaults.ema_decay),
            max_skips: self.max_skips.unwrap_or(defaults.max_skips),
            optimizer: self.optimizer.unwrap_or(defaults.optimizer),
        }
    }
}

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
    #[arg(long, default_value_t = image_model().depth, value_parser = parse::count::<1, MAX_FLOW_STEPS>)]
    pub depth: usize,
    /// Coupling-CNN width.
    #[arg(long, default_value_t = image_model().hidden, value_parser = parse::count::<1, MAX_WIDTH>)]
    pub width: usize,
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
    #[arg(long, default_value_t = image_model().noise_sigma, value_parser = parse::sigma)]
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
    #[arg(long, default_value_t = image_recipe().batch, value_parser = parse::count::<1, 1_048_576>)]
    pub batch: usize,
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
    /// --lr, --data, --threads, --time-limit, --checkpoint-every, --sample-every and
    /// --test-limit may change, every other flag is refused).
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
    #[command(flatten)]
    pub stability: StabilityArgs,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run directory (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data spec; default: the one the model was trained on.
    #[arg(long)]
    pub data: Option<String>,
    /// `reconstruct`: images to reconstruct (not used by `eval`).
    #[arg(long, default_value_t = 64, value_parser = parse::count::<1, 1_000_000>)]
    pub n: usize,
    /// Write the JSON result here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `eval`: also write every test image's bits/dim here (CSV `index,bpd`, 0-based indices).
    #[arg(long)]
    pub per_image: Option<PathBuf>,
    /// `eval`: also report the importance-sampled bits/dim over this many dequantisation draws
    /// per image (Flow++ eq. 13; tighter than one draw; unconditional models).
    #[arg(long, value_parser = parse::count::<1, 4096>)]
    pub importance_samples: Option<usize>,
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// `ablation`'s flags: `train`'s (the budget is `--steps`; `--permutation`, `--coupling`,
/// `--resume` and `--classes` are what the ablation sets or does not do) and these.
#[derive(Args, Debug)]
pub struct AblationArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Test evaluations per run, evenly spaced (the points of each curve).
    #[arg(long, default_value_t = 5, value_parser = parse::count::<1, 1_000>)]
    pub stages: usize,
    /// Samples and test images of each final model's `fd_classifier` (0: not measured).
    #[arg(long, default_value_t = 1000, value_parser = parse::count::<0, 1_000_000>)]
    pub quality_n: usize,
    /// Training steps of the quality classifier.
    #[arg(long, default_value_t = glowflow::eval::quality::ClassifierOptions::default().steps, value_parser = parse::count::<1, 10_000_000>)]
    pub classifier_steps: usize,
    /// Where the quality classifier is cached [default: ~/.cache/glowflow].
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// `interpolate`'s flags.
#[derive(Args, Debug)]
pub struct InterpolateArgs {
    /// A run directory of `train` (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Pairs of test-image indices, `A:B` (0-based), comma-separated; one row each.
    #[arg(long, value_delimiter = ',', default_value = "0:1,2:3,4:5,6:7")]
    pub pairs: Vec<String>,
    /// Images per row, both ends included.
    #[arg(long, default_value_t = 9, value_parser = parse::count::<2, 1_000>)]
    pub steps: usize,
    #[arg(long, default_value = "interpolation.png")]
    pub out: PathBuf,
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// `attribute`'s flags.
#[derive(Args, Debug)]
pub struct AttributeArgs {
    /// A run directory of `train` (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The class whose direction is applied.
    #[arg(long, value_parser = parse::count::<0, 255>)]
    pub class: usize,
    /// Test-image indices to edit (0-based), one row each.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
    pub images: Vec<usize>,
    /// Scales of the direction, one column each (0 reproduces the image).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-1,-0.5,0,0.5,1"
    )]
    pub scales: Vec<f64>,
    /// Training images the direction is averaged over (the first this many).
    #[arg(long, default_value_t = 5000, value_parser = parse::count::<2, 10_000_000>)]
    pub limit: usize,
    #[arg(long, default_value = "attribute.png")]
    pub out: PathBuf,
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// `temperatures`' flags.
#[derive(Args, Debug)]
pub struct TemperaturesArgs {
    /// A run directory of `train` (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The temperatures, one row each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.25,0.5,0.6,0.7,0.8,0.9,1"
    )]
    pub temperatures: Vec<f64>,
    /// Samples per row.
    #[arg(long, default_value_t = 10, value_parser = parse::count::<1, 1_000>)]
    pub n: usize,
    /// Class-conditional models: the class to draw (default: the null class of a model trained
    /// with --label-dropout; required otherwise).
    #[arg(long, value_parser = parse::count::<0, 65_535>)]
    pub class: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "temperatures.png")]
    pub out: PathBuf,
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// `quality`'s flags.
#[derive(Args, Debug)]
pub struct QualityArgs {
    /// A run directory of `train` (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Samples drawn, and test images (and training images, for the floor) compared with them.
    #[arg(long, default_value_t = 2000, value_parser = parse::count::<2, 1_000_000>)]
    pub n: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7, value_parser = parse::temperature)]
    pub temperature: f64,
    /// Classifier-free guidance weights to measure, comma-separated (class-conditional models
    /// trained with --label-dropout): 0 the class-free prior, 1 the conditional one, > 1
    /// guided. One report per weight (a JSON array).
    #[arg(long, value_delimiter = ',', value_parser = parse::guidance)]
    pub guidance: Vec<f64>,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training steps of the classifier (part of its cache key).
    #[arg(long, default_value_t = glowflow::eval::quality::ClassifierOptions::default().steps, value_parser = parse::count::<1, 10_000_000>)]
    pub classifier_steps: usize,
    /// Where the classifier is cached [default: $XDG_CACHE_HOME/glowflow or ~/.cache/glowflow].
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[arg(long, default_value = "flex")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Number of samples (a class-conditional model without --class draws one row per class,
    /// rounding up to whole rows).
    #[arg(long, default_value_t = 64, value_parser = parse::count::<1, 1_000_000>)]
    pub n: usize,
    /// Scales the standard deviation of every prior [default: 0.7 for images, 1 for vectors].
    #[arg(long, value_parser = parse::temperature)]
    pub temperature: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class to sample (class-conditional models; default: one row per class).
    #[arg(long, value_parser = parse::count::<0, 65_535>)]
    pub class: Option<usize>,
    /// Classifier-free guidance weight (class-conditional models trained with --label-dropout):
    /// 0 the class-free prior, 1 the conditional one, > 1 guided.
    #[arg(long, value_parser = parse::guidance)]
    pub guidance: Option<f64>,
    /// Noise-augmented models: keep the samples noisy (no denoising score step).
    #[arg(long)]
    pub raw: bool,
    /// Fail (exit 3, nothing written) when any sample is non-finite; without it they are
    /// marked cells (images) or left out (vector rows) and reported on stderr.
    #[arg(long)]
    pub strict: bool,
    /// Vector flows with context columns: the context to sample for, one comma-separated value
    /// per context column (in the run's order).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub context: Vec<f64>,
    /// Output: a PNG grid for image models; a CSV (one sample per row, the run's column names
    /// and `log_prob`) for vector flows, `.png` becoming `.csv`.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// `score`'s flags.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A run directory of `train2d --data` (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The table to score (.csv or .npy) with the columns the model was trained on (by name
    /// when both have a header, else by position); default: the run's test rows.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output CSV (`index,log_prob`: the row's 0-based index among the file's data rows, as
    /// numpy and pandas number them; nats in the data's units).
    #[arg(long, default_value = "scores.csv")]
    pub out: PathBuf,
    #[arg(long, default_value = "flex")]
    pub device: String,
}

/// Options shared by `train2d` and `compare`.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Target distribution.
    #[arg(long, value_enum, default_value_t = vector_recipe().target)]
    pub target: Target,
    /// Train on this table instead of a target: CSV (header row optional) or NumPy .npy, one
    /// row per sample, at least 2 modelled columns. Standardised inside the model (its
    /// log-determinant included, so NLLs are in the data's units).
    #[arg(long, conflicts_with = "target")]
    pub data: Option<PathBuf>,
    /// Test rows in a separate table with the same columns [default: hold out
    /// --test-fraction of --data].
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// Share of --data's rows held out for the test NLL (a seeded draw, written to split.csv).
    #[arg(long, default_value_t = DEFAULT_TEST_FRACTION, value_parser = parse::fraction)]
    pub test_fraction: f64,
    /// Seed of that draw, apart from --seed, so runs of several seeds share one test set.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Dequantise every modelled column that holds only integers: add uniform noise in [0, 1)
    /// (fresh each step; one seeded draw for the test rows), so the NLL is an upper bound on
    /// the discrete NLL of those columns instead of an unbounded continuous density.
    #[arg(long)]
    pub dequantize: bool,
    /// Modelled columns of --data, by header name or 0-based index, comma-separated
    /// [default: every column not in --context-columns].
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Context columns of --data the flow is conditioned on (every coupling network reads
    /// them); samples are drawn for given contexts.
    #[arg(long, value_delimiter = ',')]
    pub context_columns: Vec<String>,
    /// Training steps (total, including those of a resumed checkpoint).
    #[arg(long, value_parser = parse::count::<1, MAX_STEPS>)]
    pub steps: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = vector_recipe().batch, value_parser = parse::count::<1, 16_777_216>)]
    pub batch: usize,
    /// Adam learning rate (may change on train2d --resume; recorded).
    #[arg(long, default_value_t = vector_recipe().lr, value_parser = parse::learning_rate)]
    pub lr: f64,
    /// Multiply the learning rate by --lr-gamma every this many steps (StepLR).
    #[arg(long, default_value_t = vector_recipe().lr_step, value_parser = parse::count::<1, MAX_STEPS>)]
    pub lr_step: usize,
    /// StepLR factor.
    #[arg(long, default_value_t = vector_recipe().lr_gamma, value_parser = parse::factor)]
    pub lr_gamma: f64,
    /// Number of flow steps K.
    #[arg(long, default_value_t = vector_model().layers, value_parser = parse::count::<1, MAX_FLOW_STEPS>)]
    pub layers: usize,
    /// Coupling-network hidden width.
    #[arg(long, default_value_t = vector_model().hidden, value_parser = parse::count::<1, MAX_WIDTH>)]
    pub hidden: usize,
    /// Coupling-network hidden layers.
    #[arg(long, default_value_t = vector_model().depth, value_parser = parse::count::<1, 64>)]
    pub depth: usize,
    /// Coupling form: tanh (the tutorial's x * exp(tanh(s) * a + b) + t), sigmoid (Glow's
    /// (x + t) * sigmoid(s + 2), which can only contract) or additive.
    #[arg(long, value_enum, default_value_t = vector_model().coupling)]
    pub coupling: CouplingKind,
    /// Scale of sigmoid couplings: bounded (sigmoid(s + 2) floored at 1e-5, so a sample
    /// cannot overflow) or glow (Glow's exact sigmoid(s + 2), unbounded below).
    #[arg(long, value_enum, default_value_t = vector_model().affine_scale)]
    pub affine_scale: glowflow::layers::AffineScale,
    /// Seed for initialisation and data.
    #[arg(long, default_value_t = vector_recipe().seed)]
    pub seed: u64,
    /// Number of density frames in training.gif.
    #[arg(long, default_value_t = vector_recipe().frames, value_parser = parse::count::<0, 10_000>)]
    pub frames: usize,
    /// Save a checkpoint every this many steps (0: at the end only; Ctrl-C also saves).
    #[arg(long, default_value_t = vector_recipe().checkpoint_every, value_parser = parse::count::<0, MAX_STEPS>)]
    pub checkpoint_every: usize,
    /// Held-out samples for the test NLL.
    #[arg(long, default_value_t = vector_recipe().test_samples, value_parser = parse::count::<1, 67_108_864>)]
    pub test_samples: usize,
    /// A metrics.csv row every this many steps.
    #[arg(long, default_value_t = vector_recipe().log_every, value_parser = parse::count::<1, MAX_STEPS>)]
    pub log_every: usize,
    /// Side of the density maps and frames, in cells.
    #[arg(long, default_value_t = vector_recipe().grid, value_parser = parse::count::<2, 4096>)]
    pub grid: usize,
    /// Compute device: flex (CPU), cuda or cuda:N. `train2d` also takes a list of GPUs
    /// (cuda:0,cuda:1): data-parallel training, one equal shard of every batch per GPU.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Threads for data-parallel training (default: all cores). Runs are deterministic for a
    /// given thread count; a resumed run keeps its own unless this is given (with a note).
    #[arg(long, value_parser = parse::count::<1, MAX_THREADS>)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub stability: StabilityArgs,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    fn threads(&self) -> usize {
        thread_count(self.threads, &self.device)
    }

    fn options(&self, default_steps: usize) -> Train2dOptions {
        let mut o = Train2dOptions::new(self.target);
        o.steps = self.steps.unwrap_or(default_steps);
        o.batch = self.batch;
        o.lr = self.lr;
        o.lr_step = self.lr_step;
        o.lr_gamma = self.lr_gamma;
        o.seed = self.seed;
        o.frames = self.frames;
        o.checkpoint_every = self.checkpoint_every;
        o.test_samples = self.test_samples;
        o.log_every = self.log_every;
        o.grid = self.grid;
        o.stability = self.stability.options(StabilityOptions::off());
        o.table = self.data.as_ref().map(|p| TableOptions {
            path: absolute(p),
            test_path: self.test_data.as_deref().map(absolute),
            test_fraction: self.test_fraction,
            split_seed: Some(self.split_seed),
            columns: self.columns.clone(),
            context_columns: self.context_columns.clone(),
            fingerprint: None,
            resolved: None,
            dequantize: self.dequantize,
            numbers_header: true,
        });
        o
    }

    fn config(&self, model: ModelKind, permutation: Permutation) -> VectorFlowConfig {
        let mut c = VectorFlowConfig::new(model);
        c.layers = self.layers;
        c.hidden = self.hidden;
        c.depth = self.depth;
        c.coupling = self.coupling;
        c.affine_scale = self.affine_scale;
        c.permutation = permutation;
        c.init_seed = self.seed;
        c
    }
}

#[derive(Args, Debug)]
pub struct Train2dArgs {
    /// Model: glow or realnvp.
    #[arg(long, value_enum, default_value_t = vector_model().model)]
    pub model: ModelKind,
    /// Mixing layer of Glow: lu, plain, shuffle or reverse.
    #[arg(long, value_enum, default_value_t = vector_model().permutation)]
    pub permutation: Permutation,
    /// Output directory [default: runs/train2d; with --resume, the resumed run's directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this directory (its model and recipe; --steps sets the new
    /// total; --lr, --lr-step, --lr-gamma, --threads, --checkpoint-every, --test-samples and
    /// --frames may change, every other flag is refused).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Replace a run already in --out.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Output directory.
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    /// Replace a comparison already in --out.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The library's defaults, the one place they are written: image Glow's recipe and model, the
/// vector flows' recipe and model. Flags show and take them.
fn image_recipe() -> ImageTrainOptions {
    ImageTrainOptions::recipe(String::new())
}

fn image_model() -> GlowImageConfig {
    GlowImageConfig::new(1, 32, 32)
}

fn vector_recipe() -> Train2dOptions {
    Train2dOptions::new(Target::Normals)
}

fn vector_model() -> VectorFlowConfig {
    VectorFlowConfig::new(ModelKind::Glow)
}

/// A clap error as an [`InputError`] (exit code 2); `--help`/`--version` print and exit 0.
fn usage_error(e: clap::Error) -> anyhow::Error {
    if e.use_stderr() {
        InputError::Usage(
            e.to_string()
                .trim_start_matches("error: ")
                .trim_end()
                .to_string(),
        )
        .into()
    } else {
        // A closed standard output (`--help | head`) ends the program quietly.
        use std::io::Write;
        let _ = write!(std::io::stdout(), "{e}");
        std::process::exit(0)
    }
}

/// The flags given on the command line (not defaults), as typed (`--lr`), with their values.
fn given_flags(m: &ArgMatches) -> Vec<(String, String)> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| {
            let value = m
                .get_raw(id.as_str())
                .map(|v| {
                    v.map(|x| x.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            (format!("--{}", id.as_str().replace('_', "-")), value)
        })
        .collect()
}

/// With `--resume`, an error naming the first flag given that a resume may not change.
fn refuse_on_resume(given: &[(String, String)], changes: &[&str]) -> Result<()> {
    let allowed = |f: &str| RESUME_NEUTRAL_FLAGS.contains(&f) || changes.contains(&f);
    if let Some((flag, value)) = given.iter().find(|(f, _)| !allowed(f)) {
        return Err(InputError::flag(
            flag,
            value,
            format!(
                "may not be given on --resume, even with the run's own value: it is part of the \
                 saved run (its checkpoint's state.json); a resume may change only {}",
                changes.join(", ")
            ),
        )
        .into());
    }
    Ok(())
}

/// Whether `flag` was given on the command line.
fn was_given(given: &[(String, String)], flag: &str) -> bool {
    given.iter().any(|(f, _)| f == flag)
}

pub fn run<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(args: I) -> Result<()> {
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(usage_error)?;
    let cli = Cli::from_arg_matches(&matches).map_err(usage_error)?;
    // Training commands switch the handler to finish-the-step mode (`interrupt::install`).
    interrupt::install_immediate();
    let given = matches
        .subcommand()
        .map(|(_, m)| given_flags(m))
        .unwrap_or_default();
    match cli.command {
        Command::Train2d(a) => cmd_train2d(a, &given),
        Command::Score(a) => cmd_score(a),
        Command::Compare(a) => cmd_compare(a, &given),
        Command::Train(a) => cmd_train(a, &given),
        Command::Eval(a) => cmd_eval(a, false),
        Command::Reconstruct(a) => cmd_eval(a, true),
        Command::Sample(a) => cmd_sample(a),
        Command::Quality(a) => cmd_quality(a),
        Command::Ablation(a) => cmd_ablation(a, &given),
        Command::Interpolate(a) => cmd_interpolate(a),
        Command::Attribute(a) => cmd_attribute(a),
        Command::Temperatures(a) => cmd_temperatures(a),
        Command::Bench(a) => cmd_bench(a),
    }
}

/// `--threads` (at least 1: its parser checks): data-parallel shards, one thread each. CPU
/// cores by default; a GPU gets the whole batch in one piece (shards only help CPU cores).
fn thread_count(threads: Option<usize>, device: &str) -> usize {
    match threads {
        Some(t) => t,
        None if device.starts_with("cuda") => 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let threads = thread_count(a.threads, &a.device);
    // The backend's pool (rayon) reads this when it first starts, which is after this point.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let device = device(&a.device)?;
    let steps = a.steps.unwrap_or_else(|| a.workload.default_steps());
    let r = crate::bench::run(a.workload, steps, a.warmup, threads, &a.device, &device)?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        use crate::bench::Workload as W;
        outln!(
            "{}: {:.2} ms/step (median {:.2}), {:.2} steps/s ({:.0} {}/s), peak RSS {} MiB [{} steps after {} warm-up, {} threads, {}; {}; gemm {}, element-wise {}]",
            a.workload.name(),
            r.ms_per_step,
            r.ms_per_step_median,
            r.steps_per_s,
            r.rows_per_s,
            match a.workload {
                W::ProbeImage | W::Image | W::Sample => "images",
                W::DensityGrid => "grid points",
                _ => "points",
            },
            r.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0}")),
            r.steps,
            r.warmup,
            r.threads,
            r.backend,
            r.cpu.as_deref().unwrap_or("unknown CPU"),
            r.simd.gemm,
            r.simd.elementwise
        );
    }
    Ok(())
}

/// Flags every `--resume` accepts: where and how the run is continued, not what it computes.
const RESUME_NEUTRAL_FLAGS: &[&str] = &["--resume", "--out", "--force", "--quiet", "--device"];

/// Settings `train2d --resume` may change (besides [`RESUME_NEUTRAL_FLAGS`]); every other flag
/// is refused by name.
const TRAIN2D_RESUME_FLAGS: &[&str] = &[
    "--steps",
    "--lr",
    "--lr-step",
    "--lr-gamma",
    "--threads",
    "--checkpoint-every",
    "--test-samples",
    "--frames",
    "--data",
];

/// Settings `train --resume` may change (besides [`RESUME_NEUTRAL_FLAGS`]); every other flag is
/// refused by name.
const TRAIN_RESUME_FLAGS: &[&str] = &[
    "--steps",
    "--lr",
    "--data",
    "--threads",
    "--time-limit",
    "--checkpoint-every",
    "--sample-every",
    "--test-limit",
];

/// The output directory of a training command: `--out`, else with `--resume` the resumed run's
/// own directory, else `default`.
fn out_dir(out: &Option<PathBuf>, resume: &Option<PathBuf>, default: &str) -> PathBuf {
    match (out, resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => run_dir::run_dir_of(r),
        (None, None) => PathBuf::from(default),
    }
}

fn cmd_train2d(a: Train2dArgs, given: &[(String, String)]) -> Result<()> {
    check_utf8_paths(&[
        ("--out", a.out.as_deref()),
        ("--resume", a.resume.as_deref()),
    ])?;
    let (device, replicas) = train_devices(&a.common.device)?;
    interrupt::install();
    let io = RunIo {
        out: out_dir(&a.out, &a.resume, "runs/train2d"),
        progress: !a.common.quiet,
        threads: a.common.threads(),
        force: a.force,
        replicas,
    };
    let summary = match &a.resume {
        Some(dir) => {
            refuse_on_resume(given, TRAIN2D_RESUME_FLAGS)?;
            let c = &a.common;
            let pick = |flag: &str| was_given(given, flag);
            let changes = ResumeChanges {
                steps: c.steps,
                lr: pick("--lr").then_some(c.lr),
                lr_step: pick("--lr-step").then_some(c.lr_step),
                lr_gamma: pick("--lr-gamma").then_some(c.lr_gamma),
                threads: c.threads,
                checkpoint_every: pick("--checkpoint-every").then_some(c.checkpoint_every),
                test_samples: pick("--test-samples").then_some(c.test_samples),
                frames: pick("--frames").then_some(c.frames),
                data: c.data.as_deref().map(|p| absolute(p).display().to_string()),
                ..ResumeChanges::default()
            };
            train2d(Start::Resume(dir.clone(), changes), None, &io, &device)?
        }
        None => {
            check_table_flags(&a.common, given)?;
            if a.model == ModelKind::Realnvp {
                let why = "is Glow's mixing layer; Real NVP alternates its coupling halves instead";
                refuse_given(given, &["--permutation"], why)?;
            }
            let cfg = a.common.config(a.model, a.permutation);
            train2d(
                Start::Fresh(cfg),
                Some(a.common.options(vector_recipe().steps)),
                &io,
                &device,
            )?
        }
    };
    print_json(&summary)
}

/// `--device` of a training command: the model's device and, for a list of GPUs, the others
/// (data-parallel replicas).
fn train_devices(names: &str) -> Result<(burn::tensor::Device, Vec<burn::tensor::Device>)> {
    let mut devices = glowflow::devices_by_name(names)?;
    let first = devices.remove(0);
    cpu_default(&first);
    Ok((first, devices))
}

/// `--device` of a one-device command.
fn device(name: &str) -> Result<burn::tensor::Device> {
    let d = glowflow::device_by_name(name)?;
    cpu_default(&d);
    Ok(d)
}

/// With the CPU chosen in a CUDA build, make it burn's default device too (`BURN_DEVICE`,
/// unless set): burn creates some state on its default device (the optimizer state read on
/// resume), which such a build takes to be a GPU that may not exist. Called while the process
/// has one thread, before any work.
fn cpu_default(device: &burn::tensor::Device) {
    #[cfg(feature = "cuda")]
    if glowflow::tensor_util::is_flex_device(device) && std::env::var_os("BURN_DEVICE").is_none() {
        std::env::set_var("BURN_DEVICE", "flex");
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// Print a result as pretty JSON on stdout; a failed write (a closed pipe, a full disk) is an
/// error, not a panic.
fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write the result to standard output: {e}"))
}

fn cmd_compare(a: CompareArgs, given: &[(String, String)]) -> Result<()> {
    check_table_flags(&a.common, given)?;
    let device = device(&a.common.device)?;
    let models = [("Real NVP", ModelKind::Realnvp), ("Glow", ModelKind::Glow)]
        .map(|(title, kind)| (title, a.common.config(kind, Permutation::Lu)));
    let io = RunIo {
        out: a.out.clone(),
        progress: !a.common.quiet,
        threads: a.common.threads(),
        force: a.force,
        replicas: Vec::new(),
    };
    interrupt::install();
    let opts = a.common.options(glowflow::report::DEFAULT_STEPS);
    let report = glowflow::report::compare(&a.out, &opts, &models, &io, &device)?;
    print_json(&report)
}

fn cmd_train(a: TrainArgs, given: &[(String, String)]) -> Result<()> {
    check_utf8_paths(&[
        ("--out", a.out.as_deref()),
        ("--resume", a.resume.as_deref()),
    ])?;
    use glowflow::train::train_image::{train_image, ImageStart};
    let (device, replicas) = train_devices(&a.device)?;
    interrupt::install();
    let start = match &a.resume {
        Some(dir) => {
            refuse_on_resume(given, TRAIN_RESUME_FLAGS)?;
            let pick = |flag: &str| was_given(given, flag);
            ImageStart::Resume(
                dir.clone(),
                ResumeChanges {
                    steps: a.steps,
                    lr: pick("--lr").then_some(a.lr),
                    data: a.data.clone(),
                    time_limit: a.time_limit,
                    threads: a.threads,
                    checkpoint_every: pick("--checkpoint-every").then_some(a.checkpoint_every),
                    sample_every: pick("--sample-every").then_some(a.sample_every),
                    test_limit: pick("--test-limit").then_some(a.test_limit),
                    ..ResumeChanges::default()
                },
            )
        }
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

/// Refuse flags that would be ignored: `--affine-scale` with additive couplings, `q(u | x)`'s
/// shape flags without `--dequantization variational`.
fn check_dequant_flags(a: &TrainArgs, given: &[(String, String)]) -> Result<()> {
    if a.coupling == glowflow::models::ImageCoupling::Additive {
        let why = "shapes the scale of affine couplings: it needs --coupling affine";
        refuse_given(given, &["--affine-scale"], why)?;
    }
    if a.dequantization == Dequantization::Variational {
        return Ok(());
    }
    let why = "shapes the variational dequantiser: it needs --dequantization variational";
    refuse_given(given, &["--dequant-depth", "--dequant-width"], why)
}

/// The model and options of a fresh `train` run from its flags (the data is read once to learn
/// the images' shape).
fn fresh_image_run(
    a: &TrainArgs,
) -> Result<(
    GlowImageConfig,
    glowflow::train::train_image::ImageTrainOptions,
)> {
    use glowflow::train::train_image::ImageTrainOptions;
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
        batch: a.batch,
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
        ..ImageTrainOptions::recipe(data)
    };
    opts.validate().map_err(FieldError::on_flag)?;
    let probe = glowflow::train::train_image::load_data(&opts)?;
    let cfg = GlowImageConfig {
        levels: a.levels,
        depth: a.depth,
        hidden: a.width,
        coupling: a.coupling,
        affine_scale: a.affine_scale,
        permutation: a.permutation,
        n_bits: a.n_bits,
        learn_top: !a.fixed_top,
        init_seed: a.seed,
        classes: a.classes,
        noise_sigma: a.noise_sigma,
        dequantizer: (a.dequantization == Dequantization::Variational).then_some(
            glowflow::models::DequantizerConfig {
                depth: a.dequant_depth,
                hidden: a.dequant_width,
            },
        ),
        ..GlowImageConfig::new(probe.train.c, probe.train.h, probe.train.w)
    };
    cfg.validate().map_err(FieldError::on_flag)?;
    Ok((cfg, opts))
}

fn cmd_eval(a: EvalArgs, reconstruct: bool) -> Result<()> {
    use glowflow::eval::images::{class_eval, reconstruction_error, BpdReport};
    use glowflow::train::train_image::{load_data, load_for_eval};
    let outputs: Vec<(&str, &std::path::Path)> = [("--out", &a.out), ("--per-image", &a.per_image)]
        .into_iter()
        .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
        .collect();
    glowflow::fsutil::check_outputs(&outputs, &[])?;
    let device = device(&a.device)?;
    let (model, state, ema) = load_for_eval(&a.checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    if let Some(k) = a.importance_samples {
        let why = if reconstruct {
            Some("is for eval (reconstruct measures the inverse)")
        } else if state.model.classes > 0 {
            Some("is for unconditional models (a class-conditional one reports test_bpd_marginal)")
        } else if state.model.noise_sigma > 0.0 {
            Some("is not defined for a noise-augmented model (its Gaussian noise is not a dequantiser)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(InputError::flag("--importance-samples", k, why).into());
        }
    }
    if reconstruct {
        // Float64 activations of a forward and an inverse pass.
        let need = state.model.activation_bytes_per_image() * 2.0 * a.n as f64;
        if let Some(why) = glowflow::limits::memory_shortfall(need) {
            return Err(InputError::flag("--n", a.n, why).into());
        }
    }
    let mut opts = state.options.clone();
    if let Some(d) = &a.data {
        opts.data = d.clone();
    }
    let data = load_data(&opts)?;
    let cfg = &state.model;
    data.test
        .check_shape([cfg.channels, cfg.height, cfg.width], &opts.data)?;
    let mut failure = None;
    let mut per_image: Option<(PathBuf, Vec<f64>)> = None;
    let report = if reconstruct {
        // float64 measures the inverse itself; float32 is the training precision's round-off.
        use burn::tensor::DType;
        let mut errs = Vec::new();
        for dtype in [DType::F64, DType::F32] {
            match reconstruction_error(&model, &data.test, cfg.n_bits, a.n, dtype, &device) {
                Ok(e) => errs.push(json!(e)),
                Err(e) => {
                    errs.push(json!(e.to_string()));
                    failure.get_or_insert(e);
                }
            }
        }
        json!({
            "checkpoint": a.checkpoint,
            "ema_weights": ema,
            "images": a.n.min(data.test.n),
            "max_abs_error": errs[0],
            "max_abs_error_float32": errs[1],
        })
    } else {
        let labels = data.labels(cfg.classes, &opts.data)?;
        let test_labels = labels.as_ref().map(|(_, t)| &t[..]);
        let figures = class_eval(&model, &data.test, test_labels, cfg, 256, &device);
        let bpd = &figures.bpd;
        let r = BpdReport::new(bpd);
        if let Some(p) = &a.per_image {
            // Written after the figures are printed (below), so a failed write loses nothing.
            per_image = Some((p.clone(), bpd.clone()));
        }
        failure = r.nonfinite_message(bpd.len()).map(anyhow::Error::msg);
        let importance = match a.importance_samples {
            Some(k) => {
                use glowflow::eval::images::importance_bpd;
                let v = importance_bpd(&model, &data.test, cfg, k, 256, &device);
                Some(json!({"draws": k, "test_bpd": BpdReport::new(&v).mean}))
            }
            None => None,
        };
        json!({
            "checkpoint": a.checkpoint,
            "ema_weights": ema,
            "data": opts.data,
            "test_images": data.test.n,
            "test_bpd": r.mean,
            "test_bpd_marginal": figures.marginal_mean(),
            "test_accuracy": figures.accuracy,
            "bpd_meaning": glowflow::eval::images::bpd_meaning(cfg),
            "importance_sampled": importance,
            "test_report": r,
        })
    };
    // Print before writing, so a failed write never loses the figures.
    print_json(&report)?;
    if let Some((p, bpd)) = per_image {
        let rows = bpd
            .iter()
            .enumerate()
            .map(|(i, v)| [i.to_string(), glowflow::fsutil::csv_number(*v)]);
        glowflow::fsutil::write_csv(&p, &["index", "bpd"], rows)
            .map_err(|e| InputError::flag("--per-image", p.display(), format!("{e:#}")))?;
    }
    if let Some(p) = &a.out {
        checkpoint::save_json(&report, p)
            .map_err(|e| InputError::flag("--out", p.display(), format!("{e:#}")))?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn cmd_sample(a: SampleArgs) -> Result<()> {
    use glowflow::eval::images::sample_classes;
    use glowflow::train::train_image::load_for_eval;
    let device = device(&a.device)?;
    if is_vector_run(&a.checkpoint) {
        return sample_vectors(&a, &device);
    }
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    if !a.context.is_empty() {
        return Err(InputError::flag(
            "--context",
            format!("{:?}", a.context),
            "is for vector flows with context columns (image models take --class)",
        )
        .into());
    }
    let temperature = a.temperature.unwrap_or(0.7);
    let (model, state, ema) = load_for_eval(&a.checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    let mut draw = glowflow::eval::images::Draw::for_model(&state.model, temperature);
    draw.guidance = a.guidance;
    if a.raw {
        draw.denoise = None;
    }
    // Float64 decoding activations, plus the grid; the denoising step's reverse pass keeps a
    // forward pass's activations for its backward (about three times as much).
    let factor = if draw.denoise.is_some() { 3.0 } else { 1.0 };
    let need = state.model.activation_bytes_per_image() * a.n as f64 * factor;
    if let Some(why) = glowflow::limits::memory_shortfall(need) {
        return Err(InputError::flag("--n", a.n, why).into());
    }
    let per_class = a.n.div_ceil(model.classes().max(1)).max(1);
    check_guidance(&state.options, &state.model, a.guidance)?;
    if a.raw && state.model.noise_sigma == 0.0 {
        let why = "is for noise-augmented models (trained with --noise-sigma); this one's samples are not denoised";
        return Err(InputError::flag("--raw", "", why).into());
    }
    let (batch, cols) = sample_classes(&model, a.n, a.class, per_class, &draw, a.seed)?;
    if let Some(why) = batch.nonfinite_message() {
        if a.strict {
            return Err(
                glowflow::error::NonFinite(format!("{why}; nothing written (--strict)")).into(),
            );
        }
        eprintln!(
            "warning: {why}; drawn as marked (striped) cells in {}",
            a.out.display()
        );
    }
    batch.grid_cols(&state.model, cols).save_png(&a.out)?;
    let mut how = String::new();
    if let Some(w) = draw.guidance {
        how.push_str(&format!(", guidance weight {w}"));
    }
    if let Some(s) = draw.denoise {
        how.push_str(&format!(", denoised (sigma {s})"));
    }
    outln!(
        "wrote {} samples at temperature {}{how} to {} ({} weights; pixels clipped: {:.3}% at 0, {:.3}% at the top)",
        batch.n,
        temperature,
        a.out.display(),
        if ema { "averaged" } else { "trained" },
        100.0 * batch.clipped_low,
        100.0 * batch.clipped_high
    );
    Ok(())
}

/// The image model of `--checkpoint` for `quality` and the editing commands (its evaluation
/// weights and run state, and the data it was trained on when `data`).
fn trained_image_model(
    checkpoint: &std::path::Path,
    device_name: &str,
    data: bool,
) -> Result<(
    glowflow::models::GlowImage,
    glowflow::train::train_image::ImageRunState,
    Option<glowflow::data::Splits>,
    burn::tensor::Device,
)> {
    use glowflow::train::train_image::{load_data, load_for_eval};
    let device = device(device_name)?;
    if is_vector_run(checkpoint) {
        let why = "is a vector-flow run; this command is for image models (train)";
        return Err(InputError::flag("--checkpoint", checkpoint.display(), why).into());
    }
    let (model, state, _) = load_for_eval(checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", checkpoint.display()))?;
    let splits = if data {
        Some(load_data(&state.options)?)
    } else {
        None
    };
    Ok((model, state, splits, device))
}

/// Save `rows` x `cols` images as one grid PNG and say so.
fn save_edit_grid(
    px: &[u8],
    cfg: &glowflow::models::GlowImageConfig,
    cols: usize,
    out: &std::path::Path,
    what: &str,
) -> Result<()> {
    let n = px.len() / (cfg.channels * cfg.height * cfg.width);
    glowflow::viz::grid::image_grid_cols(px, n, cols, [cfg.channels, cfg.height, cfg.width])
        .save_png(out)?;
    outln!(
        "wrote {what} ({n} images, {} per row) to {}",
        cols,
        out.display()
    );
    Ok(())
}

fn cmd_ablation(a: AblationArgs, given: &[(String, String)]) -> Result<()> {
    use glowflow::eval::quality::{default_cache_dir, ClassifierOptions, QualityOptions};
    let flags = [
        "--permutation",
        "--coupling",
        "--resume",
        "--classes",
        "--weight-y",
        "--time-limit",
    ];
    let why = "is not an ablation option: the ablation trains every permutation and coupling, unconditional, from scratch, to the same --steps";
    refuse_given(given, &flags, why)?;
    let (device, replicas) = train_devices(&a.train.device)?;
    interrupt::install();
    check_dequant_flags(&a.train, given)?;
    let (cfg, mut opts) = fresh_image_run(&a.train)?;
    // The curves are test evaluations, six runs times --stages of them: 2,000 test images each
    // unless --test-limit says otherwise (0: the whole split).
    if !was_given(given, "--test-limit") {
        opts.test_limit = 2000;
    }
    let out = a
        .train
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/ablation"));
    let quality = (a.quality_n > 0).then(|| QualityOptions {
        n: a.quality_n,
        draw: glowflow::eval::images::Draw::for_model(&cfg, 0.7),
        seed: 0,
        classifier: ClassifierOptions {
            steps: a.classifier_steps,
            ..ClassifierOptions::default()
        },
        cache: a.cache.clone().unwrap_or_else(default_cache_dir),
    });
    let io = RunIo {
        out: out.clone(),
        progress: !a.train.quiet,
        threads: 1,
        force: a.train.force,
        replicas,
    };
    let rows =
        glowflow::ablation::ablation(&out, &cfg, &opts, a.stages, quality.as_ref(), &io, &device)?;
    print_json(&rows)
}

fn cmd_interpolate(a: InterpolateArgs) -> Result<()> {
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    let pairs = a
        .pairs
        .iter()
        .map(|p| {
            p.split_once(':')
                .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)))
                .ok_or_else(|| {
                    InputError::flag("--pairs", p, "expected A:B (two test-image indices)")
                })
        })
        .collect::<std::result::Result<Vec<(usize, usize)>, _>>()?;
    let (model, state, data, device) = trained_image_model(&a.checkpoint, &a.device, true)?;
    let cfg = state.model;
    let test = &data.expect("loaded").test;
    let px = glowflow::eval::edit::interpolate(&model, &cfg, test, &pairs, a.steps, &device)
        .map_err(|e| InputError::flag("--pairs", a.pairs.join(","), format!("{e:#}")))?;
    save_edit_grid(&px, &cfg, a.steps, &a.out, "interpolations")
}

fn cmd_attribute(a: AttributeArgs) -> Result<()> {
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    use glowflow::eval::edit::{attribute_direction, manipulate};
    let (model, state, data, device) = trained_image_model(&a.checkpoint, &a.device, true)?;
    let cfg = state.model;
    let data = data.expect("loaded");
    let Some(labels) = &data.train_labels else {
        let why = "the run's data set has no class labels to define an attribute";
        return Err(InputError::flag("--class", a.class, why).into());
    };
    let dir = attribute_direction(&model, &cfg, &data.train, labels, a.class, a.limit, &device)
        .map_err(|e| InputError::flag("--class", a.class, format!("{e:#}")))?;
    let px = manipulate(
        &model, &cfg, &data.test, &a.images, &dir, &a.scales, &device,
    )
    .map_err(|e| match e.downcast_ref::<glowflow::error::NonFinite>() {
        Some(_) => e,
        None => InputError::flag("--images", format!("{:?}", a.images), format!("{e:#}")).into(),
    })?;
    save_edit_grid(&px, &cfg, a.scales.len(), &a.out, "attribute edits")
}

fn cmd_temperatures(a: TemperaturesArgs) -> Result<()> {
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &[])?;
    if let Some(t) = a.temperatures.iter().find(|t| !t.is_finite() || **t < 0.0) {
        return Err(InputError::flag("--temperatures", t, "must be finite and >= 0").into());
    }
    let (model, state, _, device) = trained_image_model(&a.checkpoint, &a.device, false)?;
    let cfg = state.model;
    let k = cfg.classes;
    glowflow::eval::images::check_class(a.class, k)?;
    let mut what = String::from("a temperature sweep");
    let ctx = match (a.class, k) {
        (_, 0) => None,
        (Some(c), k) => {
            what.push_str(&format!(" of class {c}"));
            Some(glowflow::models::glow_image::one_hot(
                &vec![c; a.n],
                k,
                &device,
            ))
        }
        (None, k) if state.options.label_dropout > 0.0 => {
            what.push_str(" of the null class (class-free prior)");
            Some(burn::tensor::Tensor::zeros([a.n, k], &device))
        }
        (None, _) => {
            let why = "is required for a class-conditional model trained without --label-dropout (it has no trained class-free prior)";
            return Err(InputError::flag("--class", "", why).into());
        }
    };
    let px = glowflow::eval::edit::temperature_sweep(
        &model,
        &cfg,
        &a.temperatures,
        a.n,
        a.seed,
        ctx.as_ref(),
    )?;
    if cfg.noise_sigma > 0.0 {
        what.push_str(&format!(", denoised (sigma {})", cfg.noise_sigma));
    }
    save_edit_grid(&px, &cfg, a.n, &a.out, &what)
}

fn cmd_quality(a: QualityArgs) -> Result<()> {
    use glowflow::eval::images::Draw;
    use glowflow::eval::quality::{
        default_cache_dir, ClassifierOptions, QualityOptions, QualityReference,
    };
    let (model, state, data, device) = trained_image_model(&a.checkpoint, &a.device, true)?;
    let cfg = state.model;
    let data = data.expect("loaded");
    let weights: Vec<Option<f64>> = if a.guidance.is_empty() {
        vec![None]
    } else {
        a.guidance.iter().map(|&w| Some(w)).collect()
    };
    for w in &weights {
        check_guidance(&state.options, &cfg, *w)?;
    }
    // A noise-augmented model is measured raw and denoised: the pair is the point.
    let denoise: Vec<Option<f64>> = match cfg.noise_sigma {
        s if s > 0.0 => vec![None, Some(s)],
        _ => vec![None],
    };
    let opts = QualityOptions {
        n: a.n,
        draw: Draw::at(a.temperature),
        seed: a.seed,
        classifier: ClassifierOptions {
            steps: a.classifier_steps,
            ..ClassifierOptions::default()
        },
        cache: a.cache.clone().unwrap_or_else(default_cache_dir),
    };
    // One classifier and one set of real features for every measure.
    let reference = QualityReference::new(&data, cfg.n_bits, &opts, &device)?;
    let mut reports = Vec::new();
    for &guidance in &weights {
        for &denoise in &denoise {
            let draw = Draw {
                guidance,
                denoise,
                ..opts.draw
            };
            reports.push(reference.measure(&model, &cfg, &draw, opts.seed)?);
        }
    }
    match reports.len() {
        1 => print_json(&reports[0]),
        _ => print_json(&reports),
    }
}

/// Refuse a guidance weight `w` for a model whose class-free prior was never trained (an
/// unconditional model, or one trained without `--label-dropout`), or that is not finite.
fn check_guidance(
    opts: &glowflow::train::train_image::ImageTrainOptions,
    cfg: &GlowImageConfig,
    w: Option<f64>,
) -> Result<()> {
    let Some(w) = w else { return Ok(()) };
    let why = if cfg.classes == 0 {
        "needs a class-conditional model (trained with --classes K and --label-dropout P)"
    } else if opts.label_dropout == 0.0 && w != 1.0 {
        "needs a model trained with --label-dropout P unless it is 1 (the plain conditional prior): this one's class-free prior (the null class) was never trained"
    } else {
        return Ok(());
    };
    Err(InputError::flag("--guidance", w, why).into())
}

/// A path made absolute against the working directory (kept as given when that fails; the
/// reader then names it).
fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn cmd_score(a: ScoreArgs) -> Result<()> {
    use glowflow::eval::vector::score_rows;
    let inputs: Vec<(&str, &std::path::Path)> =
        a.data.iter().map(|p| ("--data", p.as_path())).collect();
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &inputs)?;
    let device = device(&a.device)?;
    let (model, state) = load_trained(&a.checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    let (mut lp, source, numbers) =
        score_rows(&model, &state, &a.checkpoint, a.data.as_deref(), &device)?;
    // Rows even float64 cannot score (values near float64's range): ranked lowest, as -inf
    // (the density's limit), never NaN, and named.
    let beyond: Vec<usize> = (0..lp.len()).filter(|&i| !lp[i].is_finite()).collect();
    for &i in &beyond {
        lp[i] = f64::NEG_INFINITY;
    }
    if !beyond.is_empty() {
        let rows: Vec<usize> = beyond.iter().take(20).map(|&i| numbers[i]).collect();
        eprintln!(
            "warning: {} of {} rows are beyond the range the model can score even in float64 (0-based indices {rows:?}); written as log_prob -inf, ranked lowest",
            beyond.len(),
            lp.len()
        );
    }
    let scores = numbers
        .iter()
        .zip(&lp)
        .map(|(n, v)| [n.to_string(), glowflow::fsutil::csv_number(*v)]);
    // The scores are the output: written first, then reported.
    glowflow::fsutil::write_csv(&a.out, &["index", "log_prob"], scores)
        .map_err(|e| InputError::flag("--out", a.out.display(), format!("{e:#}")))?;
    let finite: Vec<f64> = lp.iter().copied().filter(|v| v.is_finite()).collect();
    print_json(&json!({
        "checkpoint": a.checkpoint,
        "data": source,
        "rows": lp.len(),
        "mean_log_prob": finite.iter().sum::<f64>() / finite.len().max(1) as f64,
        "beyond_range": lp.len() - finite.len(),
        "out": a.out,
    }))
}

/// Whether `dir` holds a vector-flow run (`train2d`), not an image run: its model config has
/// flow steps (`layers`) and no image `channels`.
fn is_vector_run(dir: &std::path::Path) -> bool {
    glowflow::train::checkpoint::Checkpoint::open::<serde_json::Value>(dir).is_ok_and(|(_, v)| {
        v["model"].get("layers").is_some() && v["model"].get("channels").is_none()
    })
}

/// `sample` for a vector flow: `--n` samples at `--temperature` (default 1), for `--context`
/// when the run has context columns, written as CSV with each sample's log-density.
fn sample_vectors(a: &SampleArgs, device: &burn::tensor::Device) -> Result<()> {
    use glowflow::eval::vector::sample_rows;
    let (model, state) = load_trained(&a.checkpoint, device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    if let Some(c) = a.class {
        return Err(InputError::flag(
            "--class",
            c,
            "is for class-conditional image models (vector flows take --context)",
        )
        .into());
    }
    if let Some(w) = a.guidance {
        let why = "is for class-conditional image models";
        return Err(InputError::flag("--guidance", w, why).into());
    }
    if a.raw {
        let why = "is for noise-augmented image models";
        return Err(InputError::flag("--raw", "", why).into());
    }
    let out = if a.out.extension().is_some_and(|e| e == "png") {
        a.out.with_extension("csv")
    } else {
        a.out.clone()
    };
    glowflow::fsutil::check_outputs(&[("--out", &out)], &[])?;
    let t = a.temperature.unwrap_or(1.0);
    // A context far outside the training rows: the model extrapolates; say how far.
    if let Some((mean, std)) = model.standardization() {
        let d = state.model.dim;
        for (j, &v) in a.context.iter().enumerate() {
            let (m, s) = (mean.get(d + j), std.get(d + j));
            if let (Some(m), Some(s)) = (m, s) {
                let z = (v - m) / s;
                if z.abs() > 10.0 {
                    eprintln!(
                        "warning: --context value {v:e} (context column {}) is {z:.3e} training standard deviations from the training mean: the model extrapolates far beyond its data",
                        j + 1
                    );
                }
            }
        }
    }
    let s = sample_rows(&model, &state, a.n, t, &a.context, a.seed, device)?;
    if !s.left_out.is_empty() {
        let why = format!(
            "{} of {} samples are non-finite even in float64 (samples {:?})",
            s.left_out.len(),
            a.n,
            &s.left_out[..s.left_out.len().min(20)]
        );
        if a.strict {
            return Err(
                glowflow::error::NonFinite(format!("{why}; nothing written (--strict)")).into(),
            );
        }
        eprintln!("warning: {why}; left out of {}", out.display());
    }
    let written = s.rows.len();
    glowflow::fsutil::write_csv(&out, &s.header, s.rows)
        .map_err(|e| InputError::flag("--out", out.display(), format!("{e:#}")))?;
    print_json(&json!({
        "checkpoint": a.checkpoint,
        "samples": written,
        "left_out_nonfinite": s.left_out.len(),
        "temperature": t,
        "context": a.context,
        "out": out,
    }))
}

/// Refuse the table flags without `--data` (they select and split a table's rows).
/// Refuse a path that is not valid UTF-8: a run stores its paths in `state.json` (JSON text), so
/// such a run would train to the end and then fail to save.
fn check_utf8_paths(paths: &[(&str, Option<&std::path::Path>)]) -> Result<()> {
    for (flag, p) in paths {
        if let Some(p) = p.filter(|p| p.to_str().is_none()) {
            let why = "is not valid UTF-8; a run records its paths as text in state.json (rename the file or folder)";
            return Err(InputError::flag(flag, p.display(), why).into());
        }
    }
    Ok(())
}

fn check_table_flags(c: &CommonArgs, given: &[(String, String)]) -> Result<()> {
    check_utf8_paths(&[
        ("--data", c.data.as_deref()),
        ("--test-data", c.test_data.as_deref()),
    ])?;
    if c.coupling != CouplingKind::Sigmoid {
        let why = "shapes the scale of sigmoid couplings: it needs --coupling sigmoid";
        refuse_given(given, &["--affine-scale"], why)?;
    }
    if c.data.is_some() {
        if c.test_data.is_some() {
            let why = "shapes the share of --data held out for testing; with --test-data no rows are held out";
            refuse_given(given, &["--test-fraction", "--split-seed"], why)?;
        }
        let why =
            "shapes the pictures and test points of a built-in 2D target; a table run has none";
        return refuse_given(given, &["--test-samples", "--grid", "--frames"], why);
    }
    let flags = [
        "--test-data",
        "--test-fraction",
        "--split-seed",
        "--columns",
        "--context-columns",
        "--dequantize",
    ];
    refuse_given(given, &flags, "needs --data FILE (a table to train on)")
}

/// Refuse the first of `flags` (in their order) that was given on the command line, with `why`.
fn refuse_given(given: &[(String, String)], flags: &[&str], why: &str) -> Result<()> {
    match flags
        .iter()
        .find_map(|flag| given.iter().find(|(f, _)| f == flag))
    {
        Some((flag, v)) => Err(InputError::flag(flag, v, why).into()),
        None => Ok(()),
    }
}
