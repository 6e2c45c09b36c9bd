//! Maximum-likelihood training of a vector flow, with metrics, pictures, checkpoints and exact
//! resume: on a built-in 2D target (the tutorial's experiment), or on a user's table of
//! `D`-dimensional rows, optionally conditioned on context columns (see [`TableOptions`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, EMA_FILE, MODEL_FILE};
use super::data2d::{test_points, DataStream, TableData};
use super::eval2d;
use super::run_dir::{self, apply_change, ResumeChanges, ResumeRecord};
use super::stability::{Guard, StabilityOptions};
use super::trainer::{self, Schedule, Task};
use crate::data::toy2d::Target;
use crate::error::{FieldError, InputError};
use crate::flow::Flow;
use crate::layers::ActNormFlags;
use crate::models::{VectorFlow, VectorFlowConfig};
use crate::tensor_util::from_vec;
use crate::train::adam::optimizer;
use crate::viz::charts::{self, Panel};
use crate::viz::{self, DensityGrid};

/// Training hyper-parameters (defaults: the tutorial's recipe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Train2dOptions {
    /// The built-in 2D target (unused when `table` is set).
    pub target: Target,
    /// Total number of optimisation steps.
    pub steps: usize,
    /// Rows (points) per batch.
    pub batch: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// StepLR: multiply the learning rate by `lr_gamma` every `lr_step` steps.
    pub lr_step: usize,
    /// StepLR factor.
    pub lr_gamma: f64,
    /// Seed of the training data (the model's init seed is in its config).
    pub seed: u64,
    /// Number of density frames in the training GIF.
    pub frames: usize,
    /// Write a metrics row every this many steps.
    pub log_every: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Held-out test points.
    pub test_samples: usize,
    /// Resolution of density maps.
    pub grid: usize,
    /// Gradient clipping, weight average, skip limit and optimizer (all off by default: the
    /// tutorial's recipe; runs saved before these existed load with them off).
    #[serde(default = "StabilityOptions::off")]
    pub stability: StabilityOptions,
    /// Train on a user's table instead of `target` (runs saved before tables existed have
    /// none).
    #[serde(default)]
    pub table: Option<TableOptions>,
}

/// A user's numeric table as the training data of a vector flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableOptions {
    /// The training table, `.csv` or `.npy` (absolute path).
    pub path: PathBuf,
    /// A separate test table with the same columns (absolute), or `None`: hold out
    /// `test_fraction` of `path`'s rows (a seeded draw; the run writes it to `split.csv`).
    pub test_path: Option<PathBuf>,
    /// Share of the rows held out for testing when there is no test table, in (0, 1).
    pub test_fraction: f64,
    /// Modelled columns, names or 0-based indices (empty: every column not in the context).
    pub columns: Vec<String>,
    /// Context columns the flow is conditioned on (names or 0-based indices).
    pub context_columns: Vec<String>,
    /// [`Table::fingerprint`](crate::data::table::Table::fingerprint) of the training table,
    /// filled when the run starts; a resumed run checks it.
    pub fingerprint: Option<String>,
}

impl Train2dOptions {
    /// The tutorial's recipe on `target`: 20,000 steps, batch 1024, lr 1e-4 halved every 10,000
    /// steps.
    pub fn new(target: Target) -> Self {
        Train2dOptions {
            target,
            steps: 20_000,
            batch: 1024,
            lr: 1e-4,
            lr_step: 10_000,
            lr_gamma: 0.5,
            seed: 0,
            frames: 20,
            log_every: 10,
            checkpoint_every: 0,
            test_samples: 20_000,
            grid: 256,
            stability: StabilityOptions::off(),
            table: None,
        }
    }

    /// Check every option against [`crate::limits`]; the error names the field and its flag.
    pub fn validate(&self) -> std::result::Result<(), crate::error::FieldError> {
        use crate::limits::{count, number, MAX_STEPS};
        count("steps", "--steps", self.steps, 1, MAX_STEPS)?;
        count("batch", "--batch", self.batch, 1, 1 << 24)?;
        number("lr", "--lr", self.lr, 0.0, true, crate::limits::MAX_LR)?;
        count("lr_step", "--lr-step", self.lr_step, 1, MAX_STEPS)?;
        number("lr_gamma", "--lr-gamma", self.lr_gamma, 0.0, true, 10.0)?;
        count("log_every", "--log-every", self.log_every, 1, MAX_STEPS)?;
        count(
            "test_samples",
            "--test-samples",
            self.test_samples,
            1,
            1 << 26,
        )?;
        count("grid", "--grid", self.grid, 2, 4096)?;
        count("frames", "--frames", self.frames, 0, 10_000)?;
        if let Some(t) = &self.table {
            if !(t.test_fraction > 0.0 && t.test_fraction < 1.0) {
                return Err(FieldError::new(
                    "test_fraction",
                    "--test-fraction",
                    t.test_fraction,
                    "must be in (0, 1)",
                ));
            }
        }
        self.stability.validate()
    }

    /// The StepLR learning rate at `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.lr_gamma.powi((step / self.lr_step) as i32)
    }
}

/// What a checkpoint's `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    /// The model's config.
    pub model: VectorFlowConfig,
    /// The training options (the recipe).
    pub options: Train2dOptions,
    /// Steps completed.
    pub step: usize,
    /// The initialised flag of every ActNorm, in model order (burn saves tensors only).
    pub actnorm_initialized: Vec<bool>,
    /// Training wall time so far (excluding evaluation and pictures).
    pub train_seconds: f64,
    /// Steps the guard skipped so far (non-finite loss, gradient or update).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Updates folded into the weight average saved beside the weights.
    #[serde(default)]
    pub ema_updates: u64,
    /// Data-parallel threads of the run (absent in runs saved before it was recorded).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Each resume and what it changed.
    #[serde(default)]
    pub resumes: Vec<ResumeRecord>,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// `glow` or `realnvp`.
    pub model: String,
    /// The target's name, or the table's file.
    pub target: String,
    /// Steps trained.
    pub steps: usize,
    /// Mean negative log-likelihood of the test points (rows), nats.
    pub test_nll: f64,
    /// The target's entropy (Monte Carlo), nats, where its density is known.
    pub entropy: Option<f64>,
    /// Test NLL minus the entropy: the KL divergence from target to model, nats.
    pub test_nll_minus_entropy: Option<f64>,
    /// Share of samples farther than 3 sigma from every mode (mixture targets).
    pub off_mode_share: Option<f64>,
    /// The same share for the target's own samples.
    pub target_off_mode_share: Option<f64>,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// Training seconds per step.
    pub seconds_per_step: f64,
    /// Steps the guard skipped.
    #[serde(default)]
    pub skipped_steps: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// The model's config.
    pub config: VectorFlowConfig,
    /// The training options.
    pub options: Train2dOptions,
    /// Tables: rows in the training and test splits.
    #[serde(default)]
    pub rows: Option<(usize, usize)>,
    /// Tables: mean NLL (nats per row, data units) of the training rows.
    #[serde(default)]
    pub train_nll: Option<f64>,
    /// Tables: test NLL of a full-covariance Gaussian fitted (maximum likelihood) to the
    /// training rows, the baseline a flow must beat (conditional models: the Gaussian's
    /// conditional `p(x | context)`).
    #[serde(default)]
    pub gaussian_test_nll: Option<f64>,
}

impl Summary {
    /// The figures every run has: the run's model, steps, timing and `test_nll` on `target`
    /// (a target's name or a table's file); the target- and table-only figures empty.
    fn of_run(model: &VectorFlow, state: &RunState, target: String, test_nll: f64) -> Self {
        Summary {
            model: state.model.model.name().into(),
            target,
            steps: state.step,
            test_nll,
            entropy: None,
            test_nll_minus_entropy: None,
            off_mode_share: None,
            target_off_mode_share: None,
            train_seconds: state.train_seconds,
            seconds_per_step: state.train_seconds / state.step.max(1) as f64,
            skipped_steps: state.skipped_steps,
            parameters: model.num_params(),
            config: state.model.clone(),
            options: state.options.clone(),
            rows: None,
            train_nll: None,
            gaussian_test_nll: None,
        }
    }
}

/// How a run starts.
pub enum Start {
    /// A new run of this model config.
    Fresh(VectorFlowConfig),
    /// Continue the run saved in a run (or checkpoint) directory, with the changes a resume may
    /// make.
    Resume(PathBuf, ResumeChanges),
}

/// Where and how to report progress.
pub struct RunIo {
    /// The run directory.
    pub out: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
    /// Threads for data-parallel gradients (results are deterministic for a given count). A
    /// resumed 2D run keeps its own count unless [`ResumeChanges::threads`] says otherwise;
    /// image runs take theirs from `ImageTrainOptions::shards`.
    pub threads: usize,
    /// Replace a run already in `out` (without it, a fresh run into such a folder is refused).
    pub force: bool,
}

fn frames_dir(out: &Path) -> PathBuf {
    out.join("frames")
}

/// Load a trained model (evaluation mode, on `device`) from a run or checkpoint directory: the
/// weight average when the run kept one (`ema.safetensors`), else the trained weights. Refuses
/// weights that hold a non-finite value, files that do not belong to the checkpoint, and
/// out-of-range values in `state.json` (naming the field).
pub fn load_trained(dir: &Path, device: &Device) -> Result<(VectorFlow, RunState)> {
    let (ck, state) = open_state(dir)?;
    let mut model = ck.load_model(VectorFlow::new(&state.model, device), MODEL_FILE)?;
    model
        .flow
        .set_actnorm_flags(&state.actnorm_initialized)
        .map_err(|e| {
            InputError::file(ck.state_path(), Some("field actnorm_initialized".into()), e)
        })?;
    if state.options.stability.ema_decay > 0.0 && ck.has(EMA_FILE) {
        // The average is saved in float64 (exact for resume); evaluation runs in float32.
        model = crate::tensor_util::cast_module(
            ck.load_model(model, EMA_FILE)?,
            burn::tensor::DType::F32,
        );
    }
    Ok((model, state))
}

/// The checkpoint of `dir` and its state, every value checked (errors name `state.json` and the
/// field).
fn open_state(dir: &Path) -> Result<(Checkpoint, RunState)> {
    let (ck, state): (Checkpoint, RunState) = Checkpoint::open(dir)?;
    state
        .model
        .validate()
        .map_err(|e| e.in_file(ck.state_path(), "model"))?;
    state
        .options
        .validate()
        .map_err(|e| e.in_file(ck.state_path(), "options"))?;
    if let Some(t) = state.threads {
        crate::limits::count("threads", "--threads", t, 1, crate::limits::MAX_THREADS)
            .map_err(|e| e.in_file(ck.state_path(), "run"))?;
    }
    Ok((ck, state))
}

/// A reference scale for density pictures: the target's peak density on the grid.
pub fn density_scale(target: Target, grid: usize) -> f64 {
    eval2d::target_density_grid(target, grid).max().max(1e-12)
}

/// Refuse a batch size the model cannot use: a model that uses batch statistics (Real NVP's
/// batch norm) needs at least 2 points, and every batch must fit in memory.
fn check_batch(
    cfg: &VectorFlowConfig,
    opts: &Train2dOptions,
    batch_statistics: bool,
) -> std::result::Result<(), FieldError> {
    if batch_statistics && opts.batch < 2 {
        return Err(FieldError::new(
            "batch",
            "--batch",
            opts.batch,
            "Real NVP's batch norm needs at least 2 points per batch",
        ));
    }
    let need =
        cfg.activation_bytes_per_point() * opts.batch.max(opts.test_samples.min(1 << 16)) as f64;
    match crate::limits::memory_shortfall(need) {
        Some(why) => Err(FieldError::new("batch", "--batch", opts.batch, why)),
        None => Ok(()),
    }
}

/// Train (or resume), then evaluate and write every output into `io.out`.
///
/// The run directory is locked for the whole run (a second writer gets an error); a fresh run
/// into a directory that holds a run is refused unless `io.force`. SIGINT/SIGTERM (when
/// [`interrupt::install`](super::interrupt::install)ed) finish the step, save a checkpoint and
/// return [`Interrupted`](crate::error::Interrupted).
pub fn train2d(
    start: Start,
    options: Option<Train2dOptions>,
    io: &RunIo,
    device: &Device,
) -> Result<Summary> {
    let train_device = device.clone().autodiff();
    let out = &io.out;
    let resumed_from = match &start {
        Start::Resume(d, _) => Some(d.clone()),
        Start::Fresh(_) => None,
    };
    let (_lock, continues_here) = trainer::open_run(out, resumed_from.as_deref(), io.force)?;
    let mut resumes = Vec::new();
    let mut saved = None;
    let mut table: Option<TableData> = None;
    let (mut model, optim, opts, cfg, first_step, train_seconds, ema, skipped, threads) =
        match start {
            Start::Fresh(mut cfg) => {
                let mut opts = options.context("training options are required for a fresh run")?;
                opts.validate().map_err(FieldError::on_flag)?;
                if let Some(t) = &mut opts.table {
                    let data = TableData::load(t, opts.seed)?;
                    t.fingerprint = Some(data.fingerprint.clone());
                    cfg.dim = data.dim;
                    cfg.context = data.context;
                    cfg.standardize = true;
                    table = Some(data);
                }
                cfg.validate().map_err(FieldError::on_flag)?;
                let mut model = VectorFlow::new(&cfg, &train_device);
                check_batch(&cfg, &opts, model.flow.uses_batch_statistics())
                    .map_err(FieldError::on_flag)?;
                if let Some(d) = &table {
                    d.check_batch(opts.batch)?;
                    let (data, context) = d.standardization()?;
                    model.set_standardization((&data.0, &data.1), (&context.0, &context.1));
                }
                let optim = optimizer(opts.stability.optimizer);
                (model, optim, opts, cfg, 0, 0.0, None, 0, io.threads)
            }
            Start::Resume(dir, changes) => {
                let (ck, state) =
                    open_state(&dir).with_context(|| format!("--resume {}", dir.display()))?;
                let mut model =
                    ck.load_model(VectorFlow::new(&state.model, &train_device), MODEL_FILE)?;
                model
                    .flow
                    .set_actnorm_flags(&state.actnorm_initialized)
                    .map_err(|e| {
                        InputError::file(
                            ck.state_path(),
                            Some("field actnorm_initialized".into()),
                            e,
                        )
                    })?;
                let (optim, ema) =
                    ck.load_training_state(&model, &state.options.stability, state.ema_updates)?;
                let mut opts = state.options.clone();
                let mut changed = Vec::new();
                apply_change(&mut changed, "steps", &mut opts.steps, changes.steps);
                apply_change(&mut changed, "lr", &mut opts.lr, changes.lr);
                apply_change(&mut changed, "lr_step", &mut opts.lr_step, changes.lr_step);
                apply_change(
                    &mut changed,
                    "lr_gamma",
                    &mut opts.lr_gamma,
                    changes.lr_gamma,
                );
                apply_change(
                    &mut changed,
                    "checkpoint_every",
                    &mut opts.checkpoint_every,
                    changes.checkpoint_every,
                );
                apply_change(
                    &mut changed,
                    "test_samples",
                    &mut opts.test_samples,
                    changes.test_samples,
                );
                apply_change(&mut changed, "frames", &mut opts.frames, changes.frames);
                // A table given again at a new place (the same values: checked below).
                match (&changes.data, opts.table.as_mut()) {
                    (Some(new), Some(t)) => {
                        let mut path = t.path.display().to_string();
                        apply_change(&mut changed, "data", &mut path, Some(new.clone()));
                        t.path = PathBuf::from(path);
                    }
                    (Some(new), None) => {
                        return Err(InputError::flag(
                            "--data",
                            new,
                            "this run trained on a built-in target, not a table",
                        )
                        .into())
                    }
                    (None, _) => {}
                }
                opts.validate().map_err(FieldError::on_flag)?;
                // Runs saved before the thread count was recorded ran with the caller's.
                let mut threads = state.threads.unwrap_or(io.threads);
                if let Some(t) = changes.threads.filter(|&t| t != threads) {
                    run_dir::threads_note(threads, t);
                    apply_change(&mut changed, "threads", &mut threads, Some(t));
                }
                resumes = trainer::record_resume(state.resumes.clone(), state.step, changed);
                saved = Some((ck.dir.clone(), state.step));
                (
                    model,
                    optim,
                    opts,
                    state.model,
                    state.step,
                    state.train_seconds,
                    ema,
                    state.skipped_steps,
                    threads,
                )
            }
        };
    if let (None, Some(t)) = (&table, &opts.table) {
        let data = TableData::load(t, opts.seed).map_err(|e| {
            if t.path.exists() {
                e
            } else {
                e.context(format!(
                    "the run's table {} is gone; if it moved, give its new place with --data on --resume",
                    t.path.display()
                ))
            }
        })?;
        if t.fingerprint
            .as_ref()
            .is_some_and(|f| *f != data.fingerprint)
        {
            return Err(InputError::flag(
                "--data",
                t.path.display(),
                "is not the table this run was trained on (its values changed)",
            )
            .into());
        }
        table = Some(data);
    }
    trainer::check_steps(first_step, opts.steps)?;
    // Everything is checked: only now is an old run replaced by --force cleared (a refused run
    // never touches the run it would have replaced).
    trainer::clear_old_run(out, continues_here, io.force)?;
    if let Some(d) = &table {
        d.write_split(out)?;
    }
    if table.is_none() {
        std::fs::create_dir_all(frames_dir(out))?;
    }

    let mut data = match &table {
        Some(t) => DataStream::table(t, opts.seed, opts.batch),
        None => DataStream::new(opts.target, opts.seed, opts.batch),
    };
    if first_step == 0 && model.flow.needs_data_init() {
        let rows = from_vec(
            data.batch_at(0),
            [opts.batch, cfg.dim + cfg.context],
            &train_device,
        );
        let (x, c) = split_context(rows, cfg.dim, cfg.context);
        model.initialize(x, c.as_ref());
    }

    let guard = Guard::new(&model, opts.stability.clone(), ema, skipped);
    // Density frames are pictures of a 2D target's plane.
    let frames = if table.is_some() { 0 } else { opts.frames };
    let vmax = density_scale(opts.target, opts.grid);
    let batch_statistics = model.flow.uses_batch_statistics();
    let mut task = VectorTask {
        shards: if batch_statistics { 1 } else { threads.max(1) },
        frame_every: opts
            .steps
            .checked_div(frames)
            .map_or(usize::MAX, |e| e.max(1)),
        frames,
        vmax,
        data,
        cfg: cfg.clone(),
        opts: opts.clone(),
        threads: threads.max(1),
        resumes,
        out: out.clone(),
        device: device.clone(),
    };
    let schedule = Schedule {
        out: out.clone(),
        progress: io.progress,
        first: first_step,
        steps: opts.steps,
        log_every: opts.log_every,
        checkpoint_every: opts.checkpoint_every,
        time_limit_minutes: None,
        train_seconds,
        append_logs: first_step > 0 || continues_here,
        saved,
        device: train_device,
    };
    let done = trainer::train(&mut task, model, optim, guard, schedule)?;
    let (model, guard) = (done.model, done.guard);
    let state = task.state_at(&mut model.clone(), done.step, done.train_seconds, &guard);
    let eval = guard.eval_weights(model.valid());
    let summary = match &table {
        Some(t) => evaluate_table(&eval, &state, t, out, device)?,
        None => evaluate_and_draw(&eval, &state, out, device, vmax)?,
    };
    crate::viz::charts::loss_curve(out, "step", "loss", "training NLL (nats)")?;
    super::save_summary(&summary, &out.join("summary.json"))?;
    Ok(summary)
}

/// Test metrics and every picture of a finished run.
fn evaluate_and_draw(
    model: &VectorFlow,
    state: &RunState,
    out: &Path,
    device: &Device,
    vmax: f64,
) -> Result<Summary> {
    let opts = &state.options;
    let target = opts.target;
    let test = test_points(target, opts.seed, opts.test_samples);
    let logp = eval2d::log_prob_points(model, &test, device);
    let test_nll = eval2d::mean_nll(&logp);
    let entropy = eval2d::target_entropy(target, &test);
    let (samples, sample_logp) =
        eval2d::model_samples(model, opts.test_samples, opts.seed ^ 0x5A3D, device);
    let b = target.box_half_width();

    // target.png: data coloured by the true density where known.
    let target_pts = test.iter().take(20_000).cloned().collect::<Vec<_>>();
    let target_dens: Option<Vec<f64>> = target_pts
        .iter()
        .map(|p| target.log_prob(*p).map(f64::exp))
        .collect();
    let name = state.model.model.name();
    let one = |path: &str, title: String, panel: Panel| {
        charts::plane_panels(&out.join(path), &[(title, panel)], b, vmax)
    };
    one(
        "target.png",
        format!("target: {}", target.name()),
        Panel::Points(&target_pts, target_dens.as_deref()),
    )?;
    let sample_dens: Vec<f64> = sample_logp.iter().map(|l| l.exp()).collect();
    one(
        "samples.png",
        format!("{name} samples"),
        Panel::Points(&samples, Some(&sample_dens)),
    )?;
    let grid = eval2d::model_density_grid(model, target, opts.grid, device);
    one(
        "density.png",
        format!("{name} density, nll {test_nll:.3}"),
        Panel::Density(&grid),
    )?;

    write_training_gif(out, opts.grid)?;

    Ok(Summary {
        entropy,
        test_nll_minus_entropy: entropy.map(|e| test_nll - e),
        off_mode_share: target.off_mode_share(&samples),
        target_off_mode_share: target.off_mode_share(&test),
        ..Summary::of_run(model, state, target.name().into(), test_nll)
    })
}

/// Test figures and pictures of a run on a table: test and training NLL (nats per row, in the
/// data's units), the full-covariance Gaussian baseline, and a corner plot of test rows against
/// samples (drawn for the test rows' contexts when the model is conditional).
fn evaluate_table(
    model: &VectorFlow,
    state: &RunState,
    data: &TableData,
    out: &Path,
    device: &Device,
) -> Result<Summary> {
    let test_lp = data.log_prob_rows(model, &data.test, device);
    let train_lp = data.log_prob_rows(model, &data.train, device);
    let test_nll = eval2d::mean_nll(&test_lp);
    let train_nll = eval2d::mean_nll(&train_lp);
    let gaussian = data.gaussian_test_nll();
    let samples = data.samples_for_test(model, state.options.seed ^ 0x5A3D, device);
    crate::viz::charts::corner_plot(
        &out.join("corner.png"),
        &data.names[..data.dim],
        &data.test,
        data.dim + data.context,
        &samples,
        &format!(
            "{}: test rows (blue) vs samples (orange), test NLL {test_nll:.3}",
            state.model.model.name()
        ),
    )?;
    Ok(Summary {
        rows: Some((data.train_rows(), data.test_rows())),
        train_nll: Some(train_nll),
        gaussian_test_nll: gaussian,
        ..Summary::of_run(model, state, data.source.clone(), test_nll)
    })
}

/// Assemble the saved density frames into `training.gif` (100 ms a frame, looping).
fn write_training_gif(out: &Path, size: usize) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(frames_dir(out))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    entries.sort();
    let mut frames = Vec::new();
    for p in entries {
        let bytes = std::fs::read(&p)?;
        if bytes.len() == size * size {
            let step = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            frames.push((step, bytes));
        }
    }
    if frames.is_empty() {
        return Ok(());
    }
    viz::write_gif(&out.join("training.gif"), &frames, size, 10)
}

/// The density map of the target and several models, side by side on one scale, written as
/// PNG at `path`.
pub fn comparison_picture(
    target: Target,
    grids: &[(String, DensityGrid)],
    grid: usize,
    path: &Path,
) -> Result<()> {
    let vmax = density_scale(target, grid);
    let target_grid = eval2d::target_density_grid(target, grid);
    let mut items = vec![("target".to_string(), Panel::Density(&target_grid))];
    for (name, g) in grids {
        items.push((name.clone(), Panel::Density(g)));
    }
    charts::plane_panels(path, &items, target.box_half_width(), vmax)
}

/// A vector flow's part of the one training loop: batches from a 2D target or a table, the
/// mean negative log-likelihood (with the context columns split off), density frames.
struct VectorTask {
    data: DataStream,
    cfg: VectorFlowConfig,
    opts: Train2dOptions,
    shards: usize,
    threads: usize,
    frames: usize,
    frame_every: usize,
    vmax: f64,
    resumes: Vec<ResumeRecord>,
    out: PathBuf,
    /// The evaluation device (frames, traces).
    device: Device,
}

/// Rows `[n, dim + k]` split into the data `[n, dim]` and the context `[n, k]` (none when
/// `k = 0`).
fn split_context(
    x: burn::tensor::Tensor<2>,
    dim: usize,
    k: usize,
) -> (burn::tensor::Tensor<2>, Option<burn::tensor::Tensor<2>>) {
    if k == 0 {
        (x, None)
    } else {
        (x.clone().narrow(1, 0, dim), Some(x.narrow(1, dim, k)))
    }
}

impl VectorTask {
    /// A batch's rows split into the data and the context.
    fn split(
        &self,
        x: burn::tensor::Tensor<2>,
    ) -> (burn::tensor::Tensor<2>, Option<burn::tensor::Tensor<2>>) {
        split_context(x, self.cfg.dim, self.cfg.context)
    }

    fn state_at(
        &self,
        model: &mut VectorFlow,
        step: usize,
        train_seconds: f64,
        guard: &Guard,
    ) -> RunState {
        RunState {
            model: self.cfg.clone(),
            options: self.opts.clone(),
            step,
            actnorm_initialized: model.flow.actnorm_flags(),
            train_seconds,
            skipped_steps: guard.total_skips,
            ema_updates: guard.ema_updates(),
            threads: Some(self.threads),
            resumes: self.resumes.clone(),
        }
    }
}

impl Task for VectorTask {
    type Model = VectorFlow;
    type State = RunState;

    fn metrics_header(&self) -> &'static str {
        "step,loss,lr,seconds,grad_norm_max,clipped,skipped"
    }

    fn lr(&self, step: usize) -> f64 {
        self.opts.lr_at(step)
    }

    fn batch(&mut self, step: usize) -> Vec<f32> {
        self.data.batch_at(step)
    }

    fn width(&self) -> usize {
        self.cfg.dim + self.cfg.context
    }

    fn batch_size(&self) -> usize {
        self.opts.batch
    }

    fn shards(&self) -> usize {
        self.shards
    }

    fn loss(&self, model: &VectorFlow, x: burn::tensor::Tensor<2>) -> burn::tensor::Tensor<1> {
        let (x, c) = self.split(x);
        model.log_prob_ctx(x, c.as_ref()).mean().neg()
    }

    fn row(&self, loss: f64, lr: f64, seconds: f64, _rate: Option<f64>, guard: &str) -> String {
        format!("{loss:.6},{lr:e},{seconds:.3},{guard}")
    }

    fn progress(&self, loss: f64, rows_per_second: f64) -> String {
        format!(
            "loss {loss:.4}  {:.1} it/s",
            rows_per_second / self.opts.batch as f64
        )
    }

    fn trace(&self, model: &VectorFlow, rows: Vec<f32>) -> Option<String> {
        let n = rows.len() / self.width();
        let (x, c) = self.split(from_vec(rows, [n, self.width()], &self.device));
        model.trace_forward(x, c.as_ref())
    }

    fn pictures_due(&self, done: usize) -> bool {
        self.frames > 0 && (done.is_multiple_of(self.frame_every) || done == self.opts.steps)
    }

    fn pictures(&mut self, done: usize, model: &VectorFlow) -> Result<()> {
        let grid =
            eval2d::model_density_grid(model, self.opts.target, self.opts.grid, &self.device);
        let path = frames_dir(&self.out).join(format!("{done:08}.idx"));
        crate::fsutil::write_atomic(&path, &grid.indices(self.vmax))
    }

    fn state(
        &self,
        model: &mut VectorFlow,
        step: usize,
        train_seconds: f64,
        guard: &Guard,
    ) -> RunState {
        self.state_at(model, step, train_seconds, guard)
    }

    fn resume_command(&self) -> String {
        format!("glowflow train2d --resume {}", self.out.display())
    }
}
