//! Maximum-likelihood training of multi-scale Glow on images, with bits/dim, sample grids,
//! checkpoints and exact resume.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::run_dir::{self, apply_change, apply_changes, ResumeChanges};
use super::session::{Begin, Session, Workload};
use super::stability::StabilityOptions;
use super::trainer::{self, Task, Trained};
use super::RunIo;
use crate::data::images::absolute_spec;
use crate::data::stream::{epoch_batch, image_batch, step_rng};
use crate::data::LoadOptions;
use crate::error::{FieldError, InputError};
use crate::eval::images::{class_eval, sample_grid, BpdReport, SampleBatch};
use crate::models::objective::{self, bpd_meaning, input_images, input_rows, BatchLayout};
use crate::models::{GlowImage, GlowImageConfig};
use crate::tensor_util::from_vec;

/// Training options of image Glow (the recipe; stored in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageTrainOptions {
    /// The data spec as given (`idx:DIR`, ...), and loading options.
    pub data: String,
    /// Zero-pad images to this square side (28 -> 32).
    pub pad: Option<usize>,
    /// Folder images: centre-crop and resize to this side.
    pub size: Option<usize>,
    /// Folder images: load as greyscale.
    pub grey: bool,
    /// Total training steps.
    pub steps: usize,
    /// Images per batch.
    /// (Saved before format 4 as `batch`.)
    #[serde(alias = "batch")]
    pub batch_size: usize,
    /// Peak learning rate (after the warm-up).
    pub lr: f64,
    /// Linear learning-rate warm-up over this many steps.
    pub warmup: usize,
    /// Seed of the data order and the dequantisation noise.
    pub seed: u64,
    /// Images used for the ActNorm initialisation.
    pub init_batch: usize,
    /// A metrics row every this many steps.
    pub log_every: usize,
    /// A sample grid every this many steps (0: never).
    pub sample_every: usize,
    /// A checkpoint every this many steps (0: at the end only).
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
    /// Gradient clipping, weight average, skip limit and optimizer. Runs saved before these
    /// existed load with everything off (their recipe), so they resume exactly.
    #[serde(default = "StabilityOptions::off")]
    pub stability: StabilityOptions,
    /// Weight of the class-prediction loss on the top latent, in bits per image added to the
    /// bits/dim objective (openai/glow's `--weight-y`; class-conditional models only).
    #[serde(default)]
    pub weight_y: f64,
    /// Probability of dropping a training image's label (its one-hot set to zero: the null
    /// class), so that the class-free prior is trained too and classifier-free guidance can mix
    /// the two (Ho & Salimans 2022; class-conditional models only). A dropped row carries no
    /// class loss.
    #[serde(default)]
    pub label_dropout: f64,
    /// The images were given in memory by a program (the library's `GlowImage::fit`), not
    /// read from `data` (which then only names them): such a run resumes only from a program
    /// holding the same images.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_memory: bool,
    /// Invertible backpropagation (`train::low_memory`): the flow steps' activations are
    /// rebuilt from their outputs in the backward pass instead of kept, so a step's memory
    /// stays nearly flat in depth; each flow step runs forward twice and inverse once. The
    /// gradients equal ordinary backpropagation's up to float32 round-off (like `shards`, it
    /// may change on resume).
    #[serde(default)]
    pub low_memory: bool,
}

fn one_shard() -> usize {
    1
}

impl ImageTrainOptions {
    /// The Fashion-MNIST recipe on the data set `data` (the README's figures): 2,000 steps of
    /// 64 images, lr 1e-3 after 200 warm-up steps, ActNorm initialised on 256 images, a metrics
    /// row every 10 steps, samples and a checkpoint every 500, the whole test split, one shard,
    /// [`image_recipe_stability`], no class loss.
    pub fn recipe(data: String) -> Self {
        ImageTrainOptions {
            data,
            pad: None,
            size: None,
            grey: false,
            steps: 2000,
            batch_size: 64,
            lr: 1e-3,
            warmup: 200,
            seed: 0,
            init_batch: 256,
            log_every: 10,
            sample_every: 500,
            checkpoint_every: 500,
            test_limit: 0,
            time_limit_minutes: None,
            shards: 1,
            stability: image_recipe_stability(),
            weight_y: 0.0,
            label_dropout: 0.0,
            in_memory: false,
            low_memory: false,
        }
    }

    /// Check every option against [`crate::limits`]; the error names the field and its flag.
    pub fn validate(&self) -> std::result::Result<(), FieldError> {
        use crate::limits::{count, number, MAX_IMAGE_SIDE, MAX_STEPS, MAX_THREADS};
        count("steps", "steps", self.steps, 1, MAX_STEPS)?;
        count("batch_size", "batch_size", self.batch_size, 1, 1 << 20)?;
        number("lr", "lr", self.lr, 0.0, true, crate::limits::MAX_LR)?;
        count("warmup", "warmup", self.warmup, 0, MAX_STEPS)?;
        count("init_batch", "init_batch", self.init_batch, 1, 1 << 20)?;
        count("log_every", "log_every", self.log_every, 1, MAX_STEPS)?;
        count("shards", "threads", self.shards, 1, MAX_THREADS)?;
        if let Some(p) = self.pad {
            count("pad", "pad", p, 1, MAX_IMAGE_SIDE)?;
        }
        if let Some(p) = self.size {
            count("size", "size", p, 1, MAX_IMAGE_SIDE)?;
        }
        if let Some(t) = self.time_limit_minutes {
            number("time_limit_minutes", "time_limit", t, 0.0, true, 1e8)?;
        }
        number("weight_y", "weight_y", self.weight_y, 0.0, false, 1e6)?;
        number(
            "label_dropout",
            "label_dropout",
            self.label_dropout,
            0.0,
            false,
            0.99,
        )?;
        self.stability.validate_with_lr(self.lr)
    }
}

/// Refuse a batch that does not fit the training set (`n` images) or the memory (training on
/// `device`); the ActNorm initialisation's memory counts only when it will run (`initializes`:
/// not on a resume).
fn check_batch(
    cfg: &GlowImageConfig,
    opts: &ImageTrainOptions,
    n: usize,
    initializes: bool,
    device: &Device,
) -> std::result::Result<(), FieldError> {
    if opts.batch_size > n {
        return Err(FieldError::new(
            "batch_size",
            "batch_size",
            opts.batch_size,
            format!("is larger than the training set ({n} images)"),
        ));
    }
    let init_batch = if initializes { opts.init_batch } else { 0 };
    let fused = crate::ops::conv::fused_on(device);
    let need = cfg.training_bytes(
        opts.batch_size,
        opts.shards,
        init_batch,
        opts.low_memory,
        fused,
    );
    match crate::limits::memory_shortfall(need) {
        Some(why) => Err(FieldError::new(
            "batch_size",
            "batch_size",
            opts.batch_size,
            why,
        )),
        None => Ok(()),
    }
}

/// The image recipe's stability settings (`train`'s defaults): gradient-norm clipping at 50
/// bits/dim per unit weight, a weight average with decay 0.999 for evaluation and samples,
/// Adam. See the README's stability section for the measurements behind them.
pub fn image_recipe_stability() -> StabilityOptions {
    StabilityOptions {
        clip_grad_norm: 50.0,
        ema_decay: 0.999,
        ..StabilityOptions::off()
    }
}

/// What an image run's `state.json` holds.
pub type ImageRunState = trainer::RunState<GlowImage>;
type RunState = ImageRunState;

impl trainer::RunModel for GlowImage {
    const KIND: trainer::RunKind = trainer::RunKind::Image;
    type Config = GlowImageConfig;
    type Options = ImageTrainOptions;

    fn build(cfg: &GlowImageConfig, device: &Device) -> Self {
        GlowImage::new(cfg, device)
    }

    fn check(cfg: &GlowImageConfig) -> std::result::Result<(), FieldError> {
        cfg.validate()
    }

    fn apply_changes(
        run: &mut ImageRunState,
        changes: &ResumeChanges,
        _threads: usize,
        changed: &mut Vec<String>,
    ) -> Result<()> {
        let opts = &mut run.options;
        let data = changes.data.as_deref().map(absolute_spec).transpose()?;
        apply_changes!(*changed, opts, changes; steps, lr);
        apply_change(changed, "data", &mut opts.data, data);
        if let Some(t) = changes.threads.filter(|&t| t != opts.shards) {
            run_dir::threads_note(opts.shards, t);
            apply_change(changed, "threads", &mut opts.shards, Some(t));
        }
        apply_changes!(*changed, opts, changes; checkpoint_every, sample_every, test_limit, low_memory);
        // The time limit is for this invocation only: not part of the run.
        opts.time_limit_minutes = changes.time_limit;
        opts.validate().map_err(FieldError::on_option)?;
        Ok(())
    }
}

impl trainer::Recipe for ImageTrainOptions {
    fn validate(&self) -> std::result::Result<(), FieldError> {
        ImageTrainOptions::validate(self)
    }

    fn stability(&self) -> &StabilityOptions {
        &self.stability
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn log_every(&self) -> usize {
        self.log_every
    }

    fn checkpoint_every(&self) -> usize {
        self.checkpoint_every
    }

    fn time_limit_minutes(&self) -> Option<f64> {
        self.time_limit_minutes
    }
}

/// `summary.json` of an image run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Steps trained.
    pub steps: usize,
    /// Mean test bits/dim over every test image (null when any image's value is non-finite;
    /// `test_report` then says which).
    #[serde(deserialize_with = "crate::fsutil::null_as_nan")]
    pub test_bpd: f64,
    /// Test images evaluated.
    pub test_images: usize,
    /// Per-image figures: median, worst images, non-finite and extreme counts.
    pub test_report: BpdReport,
    /// Steps the guard skipped.
    pub skipped_steps: usize,
    /// Whether evaluation and samples used the weight average.
    pub ema: bool,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// The model's config.
    pub config: GlowImageConfig,
    /// The training options.
    pub options: ImageTrainOptions,
    /// Class-conditional models: mean test bits/dim of the marginal `p(x)` (uniform classes);
    /// `test_bpd` is then `-log p(x | y)` with the true class.
    #[serde(default)]
    pub test_bpd_marginal: Option<f64>,
    /// Class-conditional models: test accuracy of `argmax_y log p(x | y)`.
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    /// What `test_bpd` measures (see [`crate::eval::images::bpd_meaning`]): a noise-augmented
    /// model's bits/dim is not comparable with other models'.
    #[serde(default)]
    pub bpd_meaning: String,
    /// Samples of the final 64-sample grid (`samples.png`, temperature 0.7) that hold
    /// non-finite values; drawn there as marked cells. A preview: it never fails the run.
    #[serde(default)]
    pub samples_nonfinite: usize,
    /// What went wrong without failing the run (a preview with non-finite samples).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Load the data set `opts.data` names (padded or resized as `opts` says; see
/// [`crate::data::images::load_spec`]).
///
/// # Errors
/// Names `--data` for a bad spec or a missing folder, and the file for a malformed one.
pub fn load_data(opts: &ImageTrainOptions) -> Result<crate::data::Splits> {
    let (pad, size, grey) = (opts.pad, opts.size, opts.grey);
    crate::data::images::load_spec(&opts.data, &LoadOptions { pad, size, grey })
}

/// The trained weights of a run or checkpoint directory, without the weight average (see
/// [`trainer::open_state`] for the checks).
///
/// # Errors
/// As [`load_for_eval`].
pub fn load_trained(dir: &Path, device: &Device) -> Result<(GlowImage, ImageRunState)> {
    let (ck, state) = trainer::open_state::<GlowImage>(dir)?;
    let model = trainer::load_weights(&ck, &state, device)?;
    Ok((model, state))
}

/// The weights to evaluate and sample with (see [`trainer::load_for_eval`]).
///
/// # Errors
/// As [`trainer::load_for_eval`].
pub fn load_for_eval(dir: &Path, device: &Device) -> Result<(GlowImage, ImageRunState, bool)> {
    trainer::load_for_eval::<GlowImage>(dir, device)
}

// Built once per run: the size difference between the variants does not matter.
/// How an image run starts.
#[allow(clippy::large_enum_variant)]
pub enum ImageStart {
    /// A new run of this model with these options.
    Fresh(GlowImageConfig, ImageTrainOptions),
    /// Continue the run saved in a run (or checkpoint) directory, with the changes a resume may
    /// make (`steps`, `lr`, `data`, `time_limit`, `threads`, `checkpoint_every`,
    /// `sample_every`, `test_limit`).
    Resume(PathBuf, ResumeChanges),
}

/// Train (or resume) and evaluate; writes into `io.out` (`io.threads` is not used: the shard
/// count is `ImageTrainOptions::shards`, changed on resume by [`ResumeChanges::threads`]).
///
/// The run directory is locked for the whole run (a second writer gets an error); a fresh run
/// into a directory that holds a run is refused unless `io.force`. SIGINT/SIGTERM (when
/// [`interrupt::install`](super::interrupt::install)ed) finish the step, save a checkpoint and
/// return [`Interrupted`](crate::error::Interrupted).
pub fn train_image(start: ImageStart, io: &RunIo, device: &Device) -> Result<ImageSummary> {
    let run = ImageRun {
        out: Some(&io.out),
        io,
        data: None,
        hooks: trainer::Hooks::default(),
    };
    match run_image(start, run, device)?.2 {
        ImageEnd::Finished(summary) => Ok(*summary),
        ImageEnd::Interrupted { step } => Err(super::interrupt::interrupted(step, &io.out).into()),
    }
}

/// How an image run ended.
pub(crate) enum ImageEnd {
    /// Every step ran; the figures.
    Finished(Box<ImageSummary>),
    /// Stopped by a signal or a cancellation after step `step` (checkpointed when the run has a
    /// directory), before evaluation.
    Interrupted {
        /// Steps done.
        step: usize,
    },
}

/// Where an image run writes (its directory, or nothing), its images when the caller holds
/// them in memory, and the caller's hooks.
pub(crate) struct ImageRun<'a> {
    /// The run directory; `None`: nothing is written.
    pub out: Option<&'a Path>,
    /// Progress bar and `force` (`io.out` is not used: see `out`).
    pub io: &'a RunIo,
    /// The images, already in memory (the options' `data` then only names them).
    pub data: Option<crate::data::Splits>,
    /// Progress callback and cancellation.
    pub hooks: trainer::Hooks,
}

/// The run itself, for [`train_image`] and the library's in-memory fit: the one session
/// ([`super::session::run`]) with image Glow's [`ImageWork`]; the evaluation weights, the run's
/// state and how the run ended.
pub(crate) fn run_image(
    start: ImageStart,
    ir: ImageRun<'_>,
    device: &Device,
) -> Result<(GlowImage, ImageRunState, ImageEnd)> {
    let ImageRun {
        out,
        io,
        data,
        hooks,
    } = ir;
    let begin = match start {
        ImageStart::Fresh(cfg, opts) => Begin::Fresh(cfg, opts),
        ImageStart::Resume(dir, changes) => Begin::Resume(dir, changes),
    };
    let work = ImageWork {
        out,
        preloaded: data,
        data: None,
        labels: None,
    };
    super::session::run(work, begin, Session { out, io, hooks }, device)
}

/// Image Glow's part of the one session: its images (and labels), ActNorm initialisation,
/// test evaluation, sample grid and summary.
struct ImageWork<'a> {
    out: Option<&'a Path>,
    /// The images the caller holds in memory, not yet taken.
    preloaded: Option<crate::data::Splits>,
    /// The run's images, once checked.
    data: Option<crate::data::Splits>,
    /// Training and test labels of a class-conditional run.
    labels: Option<(Vec<u8>, Vec<u8>)>,
}

impl Workload for ImageWork<'_> {
    type Model = GlowImage;
    type Task = ImageTask;
    type End = (GlowImage, ImageRunState, ImageEnd);

    fn fresh(
        &mut self,
        cfg: GlowImageConfig,
        mut opts: ImageTrainOptions,
        device: &Device,
    ) -> Result<(GlowImage, ImageRunState)> {
        cfg.validate().map_err(FieldError::on_option)?;
        opts.validate().map_err(FieldError::on_option)?;
        if cfg.classes == 0 && opts.weight_y > 0.0 {
            let why = "needs a class-conditional model (`classes` K)";
            return Err(InputError::option("weight_y", opts.weight_y, why).into());
        }
        if cfg.coupling_classes() > 0 && opts.weight_y > 0.0 {
            let why = "trains a class head on the top latent, which a model whose couplings read the class computes from the true class (the head would read the label back): it needs `class_conditioning` prior";
            return Err(InputError::option("weight_y", opts.weight_y, why).into());
        }
        if cfg.classes == 0 && opts.label_dropout > 0.0 {
            let why = "needs a class-conditional model (`classes` K)";
            return Err(InputError::option("label_dropout", opts.label_dropout, why).into());
        }
        if !opts.in_memory {
            opts.data = absolute_spec(&opts.data)?;
        }
        let model = GlowImage::new(&cfg, device);
        Ok((model, RunState::fresh(cfg, opts)))
    }

    fn prepare(&mut self, model: &GlowImage, run: &mut ImageRunState) -> Result<()> {
        let (cfg, opts) = (&run.model, &run.options);
        let data = match self.preloaded.take() {
            Some(d) => d,
            None if opts.in_memory => {
                return Err(InputError::option(
                    "resume",
                    self.out.map_or_else(String::new, |o| o.display().to_string()),
                    "this run was fitted by a program on images it held in memory (no files to read them from); resume it from that program, with the same images",
                )
                .into())
            }
            None => load_data(opts)?,
        };
        data.train
            .check_shape([cfg.channels, cfg.height, cfg.width], &opts.data)?;
        let print = data.train.fingerprint();
        if let Some(want) = &run.data_fingerprint {
            if *want != print {
                return Err(InputError::option(
                    "data",
                    &opts.data,
                    format!(
                        "not the training images this run was trained on (fingerprint {print}, the run's {want})"
                    ),
                )
                .into());
            }
        }
        check_batch(
            cfg,
            opts,
            data.train.n,
            model.needs_data_init(),
            &model.top.val().device(),
        )
        .map_err(FieldError::on_option)?;
        self.labels = data.labels(cfg.classes, &opts.data)?;
        run.data_fingerprint = Some(print);
        self.data = Some(data);
        Ok(())
    }

    fn initialize(&mut self, model: &mut GlowImage, run: &ImageRunState, device: &Device) {
        if !model.needs_data_init() {
            return;
        }
        let (cfg, opts) = (&run.model, &run.options);
        let train = &self
            .data
            .as_ref()
            .expect("prepared before initialising")
            .train;
        let idx = epoch_batch(
            train.n,
            opts.init_batch.max(1),
            opts.seed ^ crate::rng::IMAGE_INIT,
            0,
        );
        let mut rng = step_rng(opts.seed, usize::MAX - 1);
        // Variational runs initialise on uniformly dequantised images (q starts near uniform);
        // noise-augmented runs on the noisy images they model.
        let x = if cfg.dequantization.variational().is_some() {
            image_batch(train, &idx, cfg.n_bits, &mut rng, device)
        } else {
            let rows = input_rows(cfg, train, &idx, &mut rng);
            from_vec(
                rows,
                [idx.len(), cfg.channels, cfg.height, cfg.width],
                device,
            )
        };
        model.initialize(x);
    }

    fn write_files(&mut self, _out: &Path, _run: &ImageRunState) -> Result<()> {
        Ok(())
    }

    fn task(self, run: ImageRunState, out: Option<&Path>, device: &Device) -> ImageTask {
        ImageTask {
            layout: BatchLayout::new(&run.model, run.options.label_dropout),
            run,
            data: self.data.expect("prepared before training"),
            labels: self.labels,
            out: out.map(Path::to_path_buf).unwrap_or_default(),
            device: device.clone(),
        }
    }

    fn finish(
        task: ImageTask,
        done: Trained<GlowImage>,
        out: Option<&Path>,
        device: &Device,
    ) -> Result<(GlowImage, ImageRunState, ImageEnd)> {
        if done.interrupted {
            let eval = done.guard.eval_weights(done.model.valid());
            return Ok((eval, done.state, ImageEnd::Interrupted { step: done.step }));
        }
        let state = done.state;
        let (cfg, opts) = (task.run.model.clone(), task.run.options.clone());
        let (model, guard, last, train_seconds) =
            (done.model, done.guard, done.step, done.train_seconds);
        let (data, labels) = (&task.data, &task.labels);
        // A picture: a failure (a full disk) is a warning in the summary, never the run's failure.
        let loss_png =
            out.map(|o| crate::viz::charts::loss_curve(o, "step", "bpd", "training bits/dim"));
        let eval = guard.eval_weights(model.valid());
        let test = if opts.test_limit > 0 {
            data.test.take(opts.test_limit)
        } else {
            data.test.clone()
        };
        let test_labels = labels.as_ref().map(|(_, t)| &t[..test.n]);
        let figures = class_eval(&eval, &test, test_labels, &cfg, 256, device);
        let report = BpdReport::new(&figures.bpd);
        // A preview: non-finite samples are marked cells, counted and reported, never a failure.
        let mut warnings = Vec::new();
        if let Some(Err(e)) = loss_png {
            let w = format!("loss.png not written: {e:#}");
            eprintln!("warning: {w}");
            warnings.push(w);
        }
        let preview = match out {
            Some(_) => Some(sample_grid(&eval, &cfg, 64, PREVIEW_TEMPERATURE, opts.seed)),
            None => None,
        };
        let samples_nonfinite = match (out, preview) {
            (None, _) | (_, None) => 0,
            (Some(out), Some(Ok((grid, batch)))) => {
                log_preview(out, last, "samples.png", &batch)?;
                if let Some(why) = batch.nonfinite_message() {
                    let w = format!("samples.png: {why}; drawn as marked (striped) cells");
                    eprintln!("warning: {w}");
                    warnings.push(w);
                }
                save_preview(&grid, &out.join("samples.png"), &mut warnings);
                batch.nonfinite.len()
            }
            (Some(_), Some(Err(e))) => {
                let w = format!("no samples.png written: {e:#}");
                eprintln!("warning: {w}");
                warnings.push(w);
                0
            }
        };
        let summary = ImageSummary {
            steps: last,
            test_bpd: report.mean,
            test_images: test.n,
            test_report: report,
            skipped_steps: guard.total_skips,
            ema: guard.ema.is_some(),
            train_seconds,
            images_per_second: (last * opts.batch_size) as f64 / train_seconds.max(1e-9),
            parameters: crate::tensor_util::trainable_count(&model),
            bpd_meaning: bpd_meaning(&cfg),
            config: cfg,
            options: opts,
            test_bpd_marginal: figures.marginal_mean(),
            test_accuracy: figures.accuracy,
            samples_nonfinite,
            warnings,
        };
        if let Some(out) = out {
            super::save_summary(&summary, &out.join("summary.json"))?;
        }
        // The run and its checkpoint are saved; a non-finite evaluation is still a failure.
        if let Some(why) = summary.test_report.nonfinite_message(summary.test_images) {
            match out {
                Some(out) => bail!("{why}; see {}", out.join("summary.json").display()),
                None => bail!("{why}"),
            }
        }
        Ok((eval, state, ImageEnd::Finished(Box::new(summary))))
    }
}

/// The temperature of the sample grids drawn during and after training.
pub const PREVIEW_TEMPERATURE: f64 = crate::models::glow_image::DEFAULT_TEMPERATURE;

/// Append one row to the run's `previews.csv` (`step,file,samples,nonfinite,first_nonfinite`):
/// every sample grid drawn, and how many of its samples were non-finite (marked cells).
fn log_preview(out: &Path, step: usize, file: &str, batch: &SampleBatch) -> Result<()> {
    use std::io::Write;
    let path = out.join("previews.csv");
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if new {
        writeln!(f, "step,file,samples,nonfinite,first_nonfinite")?;
    }
    let place = batch
        .first_nonfinite
        .as_deref()
        .unwrap_or("")
        .replace(['"', ','], ";");
    writeln!(
        f,
        "{step},{file},{},{},\"{place}\"",
        batch.n,
        batch.nonfinite.len()
    )?;
    Ok(())
}

/// Write a preview picture; a failure (a full disk) is a warning, never the run's failure.
fn save_preview(grid: &crate::viz::Canvas, path: &Path, warnings: &mut Vec<String>) {
    if let Err(e) = grid.save_png(path) {
        let w = format!("{} not written: {e:#}", path.display());
        eprintln!("warning: {w}");
        warnings.push(w);
    }
}

/// Image Glow's part of the one training loop: dequantised batches in seeded epoch order (with
/// the class one-hot of a conditional model), bits/dim plus the optional class loss, sample
/// grids.
struct ImageTask {
    /// The run: model config (`run.model`), options (`run.options`), fingerprint, resumes.
    run: ImageRunState,
    data: crate::data::Splits,
    /// Training and test labels of a class-conditional run.
    labels: Option<(Vec<u8>, Vec<u8>)>,
    /// The columns of a batch's rows.
    layout: BatchLayout,
    out: PathBuf,
    /// The evaluation device (traces).
    device: Device,
}

impl Task for ImageTask {
    type Model = GlowImage;

    fn metrics_header(&self) -> &'static str {
        "step,bpd,lr,seconds,images_per_s,grad_norm_max,clipped,skipped"
    }

    fn lr(&self, step: usize) -> f64 {
        self.run.options.lr * ((step + 1) as f64 / self.run.options.warmup.max(1) as f64).min(1.0)
    }

    fn batch(&mut self, step: usize) -> Vec<f32> {
        let (train, opts) = (&self.data.train, &self.run.options);
        let idx = crate::data::stream::epoch_batch(train.n, opts.batch_size, opts.seed, step);
        let rows = input_rows(&self.run.model, train, &idx, &mut step_rng(opts.seed, step));
        let labels = self.labels.as_ref().map(|(train, _)| &train[..]);
        let mut dropout = step_rng(opts.seed ^ crate::rng::LABEL_DROPOUT, step);
        let dropout = (opts.label_dropout, &mut dropout);
        self.layout.pack(rows, &idx, labels, dropout)
    }

    fn width(&self) -> usize {
        self.layout.width()
    }

    fn batch_size(&self) -> usize {
        self.run.options.batch_size
    }

    fn shards(&self) -> usize {
        self.run.options.shards
    }

    fn loss(&self, m: &GlowImage, x: Tensor<2>) -> Tensor<1> {
        let weight_y = self.run.options.weight_y;
        objective::batch_loss(m, &self.run.model, &self.layout, x, weight_y)
    }

    fn grads<S: crate::train::parallel::GradSink>(
        &self,
        m: &GlowImage,
        x: Tensor<2>,
        weight: f64,
        sink: &mut S,
    ) -> f64 {
        let opts = &self.run.options;
        if opts.low_memory {
            let cfg = &self.run.model;
            crate::train::low_memory::image_loss_and_grads_into(
                m,
                cfg,
                &self.layout,
                x,
                opts.weight_y,
                weight,
                sink,
            )
        } else {
            let (value, grads) = crate::train::parallel::backprop(m, self.loss(m, x), weight);
            sink.deposit(m, grads);
            value
        }
    }

    fn row(&self, bpd: f64, lr: f64, seconds: f64, rate: Option<f64>, guard: &str) -> String {
        match rate {
            Some(ips) => format!("{bpd:.5},{lr:.4e},{seconds:.2},{ips:.1},{guard}"),
            None => format!("{bpd:.5},{lr:.4e},{seconds:.2},0,{guard}"),
        }
    }

    fn progress(&self, bpd: f64, images_per_second: f64) -> String {
        format!("{bpd:.3} bits/dim  {images_per_second:.1} img/s")
    }

    fn trace(&self, model: &GlowImage, rows: Vec<f32>) -> Option<String> {
        // The images the density saw: x + u with u drawn from q(u | x) for a variational run.
        let cfg = &self.run.model;
        let n = rows.len() / self.width();
        let rows = from_vec(rows, [n, self.width()], &self.device);
        let cols = self.layout.split(rows);
        let (x, log_q) = input_images(model, cfg, cols.input);
        if log_q.is_some_and(|q| crate::tensor_util::count_nonfinite(q) > 0) {
            return Some("the variational dequantiser's log q(u | x)".into());
        }
        model.trace_forward(x, cols.prior.as_ref())
    }

    fn pictures_due(&self, done: usize) -> bool {
        self.run.options.sample_every > 0 && done.is_multiple_of(self.run.options.sample_every)
    }

    fn pictures(&mut self, done: usize, model: &GlowImage) -> Result<()> {
        let seed = self.run.options.seed;
        match sample_grid(model, &self.run.model, 64, PREVIEW_TEMPERATURE, seed) {
            Ok((grid, batch)) => {
                let file = format!("samples_{done:07}.png");
                log_preview(&self.out, done, &file, &batch)?;
                if let Some(why) = batch.nonfinite_message() {
                    eprintln!("step {done}: {file}: {why}; drawn as marked (striped) cells");
                }
                save_preview(&grid, &self.out.join(file), &mut Vec::new());
                Ok(())
            }
            Err(e) => {
                eprintln!("step {done}: no sample grid written: {e}");
                Ok(())
            }
        }
    }

    fn run(&self) -> &ImageRunState {
        &self.run
    }
}
