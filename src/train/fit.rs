//! Training as a library call: fit a vector flow to a [`Table`] held in memory and get the
//! model back, with an optional run directory (logs, checkpoints, exact resume), a progress
//! callback and a cancellation handle ([`Hooks`]).
//!
//! The fit is the command line's `train2d` on a table: the same data order, standardisation,
//! ActNorm initialisation, non-finite guard and evaluation, so a fit and `glowflow train2d` on
//! the same rows, split and seed give the same model to the last digit.
//!
//! ```
//! use glowflow::data::table::Table;
//! use glowflow::models::{ModelKind, VectorFlow, VectorFlowConfig};
//! use glowflow::train::FitOptions;
//!
//! // 256 points on a noisy line, two columns.
//! let values: Vec<f64> = (0..256)
//!     .flat_map(|i| {
//!         let t = i as f64 / 64.0;
//!         [t, 2.0 * t + (i % 7) as f64 * 0.1]
//!     })
//!     .collect();
//! let table = Table::from_rows("X", vec!["t".into(), "y".into()], values).unwrap();
//! let mut cfg = VectorFlowConfig::new(ModelKind::Glow);
//! cfg.flow_steps = 2;
//! let opts = FitOptions { steps: 20, batch_size: 64, lr: 1e-3, ..FitOptions::vectors() };
//! let fitted = VectorFlow::fit(&cfg, &table, &opts).unwrap();
//! assert_eq!(fitted.steps, 20);
//! assert!(fitted.train_nll.is_finite());
//! ```

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;

use super::run_dir::ResumeChanges;
use super::stability::StabilityOptions;
use super::train2d::{run_vector, Outcome, RunState, Start, Stopped, Train2dOptions, VectorRun};
use super::train_image::{
    run_image, ImageEnd, ImageRun, ImageStart, ImageSummary, ImageTrainOptions,
};
use super::trainer::Hooks;
use super::RunIo;
use crate::data::stream::{TableData, TableOptions};
use crate::data::table::Table;
use crate::eval::vector as eval;
use crate::models::{GlowImage, GlowImageConfig, VectorFlow, VectorFlowConfig};

/// How to fit: the optimisation (steps, batch, learning-rate schedule, seed), which columns are
/// context, held-out rows, and where (if anywhere) the run is written.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Total optimisation steps (a resumed fit: the run's new total).
    pub steps: usize,
    /// Rows per batch (at most the table's rows).
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// StepLR: multiply the learning rate by `lr_gamma` every `lr_step` steps.
    pub lr_step: usize,
    /// StepLR factor.
    pub lr_gamma: f64,
    /// Seed of the model's initial weights (it replaces the config's `init_seed`) and of the
    /// data order, as `train2d --seed`.
    pub seed: u64,
    /// Columns of the table (names or 0-based indices) the flow is conditioned on, `p(x | c)`;
    /// every other column is modelled.
    pub context_columns: Vec<String>,
    /// Held-out rows with the table's columns (by name), scored after training
    /// ([`Fitted::test_nll`]); `None`: every row trains and no test figure is made.
    pub validation: Option<Table>,
    /// Uniform dequantisation of the modelled columns that hold only integers (see
    /// [`TableOptions::dequantize`]).
    pub dequantize: bool,
    /// A progress report (and, with a run directory, a metrics row) every this many steps.
    pub log_every: usize,
    /// With a run directory: a checkpoint every this many steps (0: at the end only).
    pub checkpoint_every: usize,
    /// Data-parallel threads for the gradients (results are deterministic for a given count).
    pub threads: usize,
    /// Gradient clipping, weight average, skip limit and optimizer.
    pub stability: StabilityOptions,
    /// Write the run there (`metrics.csv`, checkpoints, `summary.json`, `corner.png`), as
    /// `glowflow train2d --out` does; `None`: nothing is written.
    pub run_dir: Option<PathBuf>,
    /// Replace a run already in `run_dir` (without it such a fit is refused).
    pub force: bool,
    /// Continue the run saved in `run_dir` (its checkpoint) instead of starting one: the same
    /// table must be given; `steps`, `lr`, `lr_step`, `lr_gamma` and `checkpoint_every` may
    /// change; the model config argument is not used.
    pub resume: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Progress callback and cancellation handle.
    pub hooks: Hooks,
    /// Images: linear learning-rate warm-up over this many steps (vector flows: 0, they use
    /// StepLR).
    pub warmup: usize,
    /// Images: images the ActNorm initialisation reads (Glow §3.1).
    pub init_batch: usize,
    /// Images, with a run directory: a sample grid every this many steps (0: never).
    pub sample_every: usize,
    /// Images: evaluate on at most this many test images (0: all).
    pub test_limit: usize,
    /// Class-conditional images: weight of the class-prediction loss, bits per image
    /// (openai/glow's `--weight-y`).
    pub weight_y: f64,
    /// Class-conditional images: probability of dropping a training image's label, for
    /// classifier-free guidance.
    pub label_dropout: f64,
    /// Images: invertible backpropagation (less memory, about 1.25x the time per step; see
    /// `ImageTrainOptions::low_memory`).
    pub low_memory: bool,
}

impl FitOptions {
    /// The defaults of a vector flow (the tutorial's recipe, as `train2d`): 20,000 steps of
    /// 1,024 rows, lr 1e-4 halved every 10,000 steps, seed 0, a report every 10 steps, every
    /// core, no clipping or weight average, nothing written.
    pub fn vectors() -> Self {
        let recipe = Train2dOptions::new(crate::data::Target::Normals);
        FitOptions {
            steps: recipe.steps,
            batch_size: recipe.batch_size,
            lr: recipe.lr,
            lr_step: recipe.lr_step,
            lr_gamma: recipe.lr_gamma,
            seed: recipe.seed,
            context_columns: Vec::new(),
            validation: None,
            dequantize: false,
            log_every: recipe.log_every,
            checkpoint_every: recipe.checkpoint_every,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stability: recipe.stability,
            run_dir: None,
            force: false,
            resume: false,
            progress: false,
            hooks: Hooks::default(),
            warmup: 0,
            init_batch: 0,
            sample_every: 0,
            test_limit: 0,
            weight_y: 0.0,
            label_dropout: 0.0,
            low_memory: false,
        }
    }

    /// The defaults of image Glow (`train`'s recipe): 2,000 steps of 64 images, lr 1e-3 after
    /// 200 warm-up steps, ActNorm initialised on 256 images, gradient-norm clipping at 50 and a
    /// weight average (decay 0.999), the whole test split, every core, nothing written.
    pub fn images() -> Self {
        let r = ImageTrainOptions::recipe(String::new());
        FitOptions {
            steps: r.steps,
            batch_size: r.batch_size,
            lr: r.lr,
            warmup: r.warmup,
            seed: r.seed,
            init_batch: r.init_batch,
            log_every: r.log_every,
            checkpoint_every: r.checkpoint_every,
            sample_every: r.sample_every,
            test_limit: r.test_limit,
            stability: r.stability,
            weight_y: r.weight_y,
            label_dropout: r.label_dropout,
            ..FitOptions::vectors()
        }
    }

    /// How the run is written and shown: its directory (none: nothing is written; see
    /// `run_vector`/`run_image`), the progress bar, threads and `force`.
    fn run_io(&self) -> RunIo {
        RunIo {
            out: self.run_dir.clone().unwrap_or_default(),
            progress: self.progress,
            threads: self.threads.max(1),
            force: self.force,
            replicas: Vec::new(),
        }
    }

    /// The run directory a `resume` continues, `None` for a fresh fit.
    ///
    /// # Errors
    /// `resume` without a `run_dir`.
    fn resumed_run(&self) -> Result<Option<&PathBuf>> {
        match (&self.run_dir, self.resume) {
            (Some(dir), true) => Ok(Some(dir)),
            (None, true) => {
                let why = "a fit resumes from the checkpoint in its run directory: set run_dir";
                Err(crate::error::FieldError::new("resume", "resume", true, why).into())
            }
            (_, false) => Ok(None),
        }
    }

    /// Refuse an option of the other workload that is set: `what` names this fit.
    fn refuse(name: &'static str, set: bool, what: &str) -> Result<()> {
        if set {
            let why = format!("is not an option of {what}");
            return Err(crate::error::FieldError::new(name, name, "set", why).into());
        }
        Ok(())
    }
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions::vectors()
    }
}

/// A fitted flow and its figures.
#[derive(Clone, Debug)]
pub struct Fitted {
    /// The weights to evaluate and sample with (the weight average when
    /// `stability.ema_decay > 0`), on the CPU device; the standardisation is part of it.
    pub model: VectorFlow,
    /// The run: model config, options, steps, seconds, skipped steps (what `state.json` holds).
    pub state: RunState,
    /// Steps done.
    pub steps: usize,
    /// Whether the fit stopped early ([`Hooks::cancel`], or a signal when the caller installed
    /// [`interrupt::install`](super::interrupt::install)): the model is that of the last
    /// complete step.
    pub interrupted: bool,
    /// Mean negative log-likelihood of the training rows, nats per row in the data's units.
    pub train_nll: f64,
    /// The same of the validation rows (`None` without them).
    pub test_nll: Option<f64>,
    /// Test NLL of a full-covariance Gaussian fitted to the training rows, the baseline to
    /// beat (`None` without validation rows, or for a singular covariance).
    pub gaussian_test_nll: Option<f64>,
    /// Trainable parameters.
    pub parameters: usize,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// What looks wrong without failing the fit (integer-valued columns, ...).
    pub warnings: Vec<String>,
}

impl Fitted {
    /// Save the model for evaluation and sampling into `dir` (see [`save_model`]).
    ///
    /// # Errors
    /// As [`save_model`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model(dir, &self.model, &self.state)
    }

    /// Log-density of each row of `rows` (`[n, features + context]` row-major, the modelled
    /// columns then the context columns, in the data's units), nats, float64.
    pub fn log_prob(&self, rows: &[f64], device: &Device) -> Vec<f64> {
        let (d, k) = (self.state.model.features, self.state.model.context);
        eval::log_prob_rows(&self.model, rows, d, k, device)
    }
}

impl VectorFlow {
    /// Fit a flow of config `cfg` to the rows of `table` by maximum likelihood (its `dim`,
    /// `context` and `standardize` are set from the table: every column not in
    /// `opts.context_columns` is modelled; its `init_seed` is `opts.seed`), on the CPU. See
    /// the [module](self) docs.
    ///
    /// # Errors
    /// Bad options or config (naming the option), a table a flow cannot model (a constant
    /// column, two copies of one column, fewer than two modelled columns, a batch larger than
    /// the table), a run directory that holds a run (without `force`) or cannot be written,
    /// too many consecutive non-finite steps.
    pub fn fit(cfg: &VectorFlowConfig, table: &Table, opts: &FitOptions) -> Result<Fitted> {
        let what = "a vector flow's fit (StepLR: lr_step, lr_gamma)";
        FitOptions::refuse("warmup", opts.warmup > 0, what)?;
        FitOptions::refuse("weight_y", opts.weight_y != 0.0, what)?;
        FitOptions::refuse("label_dropout", opts.label_dropout != 0.0, what)?;
        FitOptions::refuse("low_memory", opts.low_memory, what)?;
        let device = crate::default_device();
        let name = table.source.clone();
        let table_opts = TableOptions {
            path: name.clone(),
            test_path: opts.validation.as_ref().map(|v| v.source.clone()),
            test_fraction: 0.0,
            split_seed: None,
            columns: Vec::new(),
            context_columns: opts.context_columns.clone(),
            fingerprint: None,
            resolved: None,
            dequantize: opts.dequantize,
            numbers_header: false,
            in_memory: true,
        };
        let data = TableData::from_tables(table, opts.validation.as_ref(), &table_opts, opts.seed)?;
        let mut recipe = Train2dOptions::new(crate::data::Target::Normals);
        recipe.steps = opts.steps;
        recipe.batch_size = opts.batch_size;
        recipe.lr = opts.lr;
        recipe.lr_step = opts.lr_step;
        recipe.lr_gamma = opts.lr_gamma;
        recipe.seed = opts.seed;
        recipe.frames = 0;
        recipe.log_every = opts.log_every;
        recipe.checkpoint_every = opts.checkpoint_every;
        recipe.stability = opts.stability.clone();
        recipe.table = Some(table_opts);
        let io = opts.run_io();
        let start = match opts.resumed_run()? {
            Some(dir) => Start::Resume(
                dir.clone(),
                ResumeChanges {
                    steps: Some(opts.steps),
                    lr: Some(opts.lr),
                    lr_step: Some(opts.lr_step),
                    lr_gamma: Some(opts.lr_gamma),
                    checkpoint_every: Some(opts.checkpoint_every),
                    ..ResumeChanges::default()
                },
            ),
            None => Start::Fresh(VectorFlowConfig {
                init_seed: opts.seed,
                ..cfg.clone()
            }),
        };
        let run = VectorRun {
            out: opts.run_dir.as_deref(),
            io: &io,
            data: Some(data),
            hooks: opts.hooks.clone(),
        };
        let options = matches!(start, Start::Fresh(_)).then_some(recipe);
        match run_vector(start, options, run, &device)? {
            Outcome::Finished {
                model,
                summary,
                state,
            } => {
                let test = summary.rows.is_some_and(|(_, n)| n > 0);
                Ok(Fitted {
                    steps: summary.steps,
                    interrupted: false,
                    train_nll: summary.train_nll.unwrap_or(f64::NAN),
                    test_nll: test.then_some(summary.test_nll),
                    gaussian_test_nll: summary.gaussian_test_nll,
                    parameters: summary.parameters,
                    train_seconds: summary.train_seconds,
                    warnings: summary.warnings.clone(),
                    state: *state,
                    model,
                })
            }
            Outcome::Interrupted(stopped) => Self::stopped(*stopped, &device),
        }
    }

    /// The figures of a fit stopped early (see [`Fitted::interrupted`]).
    fn stopped(s: Stopped, device: &Device) -> Result<Fitted> {
        let data = s.table.expect("a fit trains on a table");
        let summary = super::train2d::evaluate(&s.model, &s.state, Some(&data), None, device, 1.0)?;
        let test = data.test_rows() > 0;
        Ok(Fitted {
            steps: s.step,
            interrupted: true,
            train_nll: summary.train_nll.unwrap_or(f64::NAN),
            test_nll: test.then_some(summary.test_nll),
            gaussian_test_nll: summary.gaussian_test_nll,
            parameters: s.parameters,
            train_seconds: s.state.train_seconds,
            warnings: Vec::new(),
            state: s.state,
            model: s.model,
        })
    }
}

/// A fitted image Glow.
#[derive(Clone, Debug)]
pub struct FittedImage {
    /// The weights to evaluate and sample with (the weight average when the recipe keeps one),
    /// on the CPU device.
    pub model: GlowImage,
    /// Steps done.
    pub steps: usize,
    /// Whether the fit stopped early ([`Hooks::cancel`]); its model is that of the last
    /// complete step and `summary` is `None` (evaluate with
    /// [`eval::images`](crate::eval::images)).
    pub interrupted: bool,
    /// Test bits/dim and the other figures of `train`'s `summary.json` (a finished fit).
    pub summary: Option<ImageSummary>,
    /// The run's state: config, options, steps (what [`save`](Self::save) writes beside the
    /// weights).
    pub state: super::train_image::ImageRunState,
}

impl FittedImage {
    /// Save the model for evaluation and sampling into `dir` (see [`save_model`]).
    ///
    /// # Errors
    /// As [`save_model`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model(dir, &self.model, &self.state)
    }
}

/// Save `model` (its evaluation weights) and its run's `state` into `dir/checkpoint/` as a
/// checkpoint without optimizer state: `glowflow::train::trainer::load_for_eval`, the
/// command line's `eval`, `sample`, `score`, and Python's `glowflow.load` read it; it cannot be
/// resumed (fit with a run directory for that). A previous save in `dir` is replaced as one
/// unit; a run with optimizer state (a resumable run) is never overwritten.
///
/// # Errors
/// `dir` holds a resumable run; weights with a non-finite value; a write that fails (the
/// previous save is then unchanged).
pub fn save_model<M: super::trainer::RunModel>(
    dir: &Path,
    model: &M,
    state: &super::trainer::RunState<M>,
) -> Result<()> {
    let ck = super::checkpoint::checkpoint_dir(dir);
    if ck.join(super::checkpoint::OPTIMIZER_FILE).exists() {
        let why = "holds a resumable run (a checkpoint with optimizer state); save into another directory";
        return Err(crate::error::InputError::option("path", dir.display(), why).into());
    }
    super::checkpoint::save_checkpoint::<M, M, _>(dir, model, None, None, state)
}

impl GlowImage {
    /// Fit image Glow of config `cfg` to the images of `data` (its training split; its test
    /// split, up to `opts.test_limit` images, gives the test bits/dim; labels when
    /// `cfg.classes > 0`) by maximum likelihood, on the CPU. The command line's `train` on the
    /// same images (the same data order, dequantisation noise, ActNorm initialisation, guard and
    /// evaluation): `train --data idx:DIR` and a fit on the images loaded from `DIR` give the
    /// same bits/dim to the last digit. The image shape (`channels`, `height`, `width`) is set
    /// from the data and `init_seed` from `opts.seed`, as `train` does.
    ///
    /// # Errors
    /// Bad options or config (naming the option), images of another shape, labels missing for
    /// a class-conditional model, a run directory that holds a run (without `force`), too many
    /// consecutive non-finite steps, a non-finite test bits/dim.
    pub fn fit(
        cfg: &GlowImageConfig,
        data: &crate::data::Splits,
        opts: &FitOptions,
    ) -> Result<FittedImage> {
        let what = "an image Glow's fit (its test images are the data's test split)";
        FitOptions::refuse("context_columns", !opts.context_columns.is_empty(), what)?;
        FitOptions::refuse("validation", opts.validation.is_some(), what)?;
        FitOptions::refuse("dequantize", opts.dequantize, what)?;
        let device = crate::default_device();
        let mut recipe = ImageTrainOptions::recipe("(images in memory)".into());
        recipe.steps = opts.steps;
        recipe.batch_size = opts.batch_size;
        recipe.lr = opts.lr;
        recipe.warmup = opts.warmup;
        recipe.seed = opts.seed;
        recipe.init_batch = opts.init_batch;
        recipe.log_every = opts.log_every;
        recipe.sample_every = opts.sample_every;
        recipe.checkpoint_every = opts.checkpoint_every;
        recipe.test_limit = opts.test_limit;
        recipe.shards = opts.threads.max(1);
        recipe.stability = opts.stability.clone();
        recipe.weight_y = opts.weight_y;
        recipe.label_dropout = opts.label_dropout;
        recipe.low_memory = opts.low_memory;
        recipe.in_memory = true;
        let io = opts.run_io();
        let start = match opts.resumed_run()? {
            Some(dir) => ImageStart::Resume(
                dir.clone(),
                ResumeChanges {
                    steps: Some(opts.steps),
                    lr: Some(opts.lr),
                    checkpoint_every: Some(opts.checkpoint_every),
                    sample_every: Some(opts.sample_every),
                    test_limit: Some(opts.test_limit),
                    low_memory: Some(opts.low_memory),
                    ..ResumeChanges::default()
                },
            ),
            None => {
                let (c, h, w) = (data.train.c, data.train.h, data.train.w);
                let cfg = GlowImageConfig {
                    channels: c,
                    height: h,
                    width: w,
                    init_seed: opts.seed,
                    ..cfg.clone()
                };
                ImageStart::Fresh(cfg, recipe)
            }
        };
        let run = ImageRun {
            out: opts.run_dir.as_deref(),
            io: &io,
            data: Some(data.clone()),
            hooks: opts.hooks.clone(),
        };
        let (model, state, end) = run_image(start, run, &device)?;
        Ok(match end {
            ImageEnd::Finished(summary) => FittedImage {
                steps: summary.steps,
                interrupted: false,
                summary: Some(*summary),
                model,
                state,
            },
            ImageEnd::Interrupted { step } => FittedImage {
                steps: step,
                interrupted: true,
                summary: None,
                model,
                state,
            },
        })
    }
}
