//! Maximum-likelihood training of a vector flow, with metrics, pictures, checkpoints and exact
//! resume: on a built-in 2D target (the tutorial's experiment), or on a user's table of
//! `D`-dimensional rows, optionally conditioned on context columns (see [`TableOptions`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::run_dir::{self, apply_change, apply_changes, ResumeChanges};
use super::session::{Begin, Session, Workload};
use super::stability::StabilityOptions;
use super::trainer::{self, Task, Trained};
use crate::data::stream::{DataStream, TableData, TableOptions};
use crate::data::toy2d::Target;
use crate::error::{FieldError, InputError};
use crate::eval::vector as eval;
use crate::flow::Flow;
use crate::models::{VectorFlow, VectorFlowConfig};
use crate::tensor_util::from_vec;

/// Training hyper-parameters (defaults: the tutorial's recipe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Train2dOptions {
    /// The built-in 2D target (unused when `table` is set).
    pub target: Target,
    /// Total number of optimisation steps.
    pub steps: usize,
    /// Rows (points) per batch.
    /// (Saved before format 4 as `batch`.)
    #[serde(alias = "batch")]
    pub batch_size: usize,
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

impl Train2dOptions {
    /// The tutorial's recipe on `target`: 20,000 steps, batch 1024, lr 1e-4 halved every 10,000
    /// steps.
    pub fn new(target: Target) -> Self {
        Train2dOptions {
            target,
            steps: 20_000,
            batch_size: 1024,
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
        count("steps", "steps", self.steps, 1, MAX_STEPS)?;
        count("batch_size", "batch_size", self.batch_size, 1, 1 << 24)?;
        number("lr", "lr", self.lr, 0.0, true, crate::limits::MAX_LR)?;
        count("lr_step", "lr_step", self.lr_step, 1, MAX_STEPS)?;
        number("lr_gamma", "lr_gamma", self.lr_gamma, 0.0, true, 10.0)?;
        count("log_every", "log_every", self.log_every, 1, MAX_STEPS)?;
        count(
            "test_samples",
            "test_samples",
            self.test_samples,
            1,
            1 << 26,
        )?;
        count("grid", "grid", self.grid, 2, 4096)?;
        count("frames", "frames", self.frames, 0, 10_000)?;
        if let Some(t) = &self.table {
            let no_test = t.in_memory && t.test_fraction == 0.0;
            if !(no_test || t.test_fraction > 0.0 && t.test_fraction < 1.0) {
                return Err(FieldError::new(
                    "test_fraction",
                    "test_fraction",
                    t.test_fraction,
                    "must be in (0, 1)",
                ));
            }
        }
        // The schedule's largest rate: the first, or the last when gamma grows it.
        let peak = self.lr.max(self.lr_at(self.steps.saturating_sub(1)));
        self.stability.validate_with_lr(peak)
    }

    /// The StepLR learning rate at `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.lr_gamma.powi((step / self.lr_step) as i32)
    }
}

/// What a vector run's `state.json` holds.
pub type RunState = trainer::RunState<VectorFlow>;

impl trainer::RunState<VectorFlow> {
    /// The run's inputs to scoring and sampling: its config, table and seed.
    pub fn table_run(&self) -> eval::TableRun<'_> {
        eval::TableRun {
            config: &self.model,
            table: self.options.table.as_ref(),
            seed: self.options.seed,
        }
    }
}

impl trainer::RunModel for VectorFlow {
    const KIND: trainer::RunKind = trainer::RunKind::Vector;
    type Config = VectorFlowConfig;
    type Options = Train2dOptions;

    fn build(cfg: &VectorFlowConfig, device: &Device) -> Self {
        VectorFlow::new(cfg, device)
    }

    fn check(cfg: &VectorFlowConfig) -> std::result::Result<(), FieldError> {
        cfg.validate()
    }

    fn apply_changes(
        run: &mut RunState,
        changes: &ResumeChanges,
        threads: usize,
        changed: &mut Vec<String>,
    ) -> Result<()> {
        let opts = &mut run.options;
        apply_changes!(*changed, opts, changes; steps, lr, lr_step, lr_gamma, checkpoint_every, test_samples, frames);
        // A table given again at a new place (the same values: checked when it is read).
        match (&changes.data, opts.table.as_mut()) {
            (Some(new), Some(t)) => {
                let mut path = t.path.display().to_string();
                apply_change(changed, "data", &mut path, Some(new.clone()));
                t.path = PathBuf::from(path);
            }
            (Some(new), None) => {
                return Err(InputError::option(
                    "data",
                    new,
                    "this run trained on a built-in target, not a table",
                )
                .into())
            }
            (None, _) => {}
        }
        opts.validate().map_err(FieldError::on_option)?;
        // Runs saved before the thread count was recorded ran with the caller's.
        let mut now = run.threads.unwrap_or(threads);
        if let Some(t) = changes.threads.filter(|&t| t != now) {
            run_dir::threads_note(now, t);
            apply_change(changed, "threads", &mut now, Some(t));
        }
        run.threads = Some(now.max(1));
        Ok(())
    }
}

impl trainer::Recipe for Train2dOptions {
    fn validate(&self) -> std::result::Result<(), FieldError> {
        Train2dOptions::validate(self)
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
    /// What went wrong or looks wrong without failing the run: a degenerate table (integer
    /// columns), a picture that could not be written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Summary {
    /// The summary of the run in `state` on `target` (a target's name or a table's file) with
    /// the figures of its evaluation; `parameters` 0 (`train2d` counts the training model's
    /// trainable values).
    pub fn of_run(state: &RunState, target: String, report: eval::VectorReport) -> Self {
        Summary {
            model: state.model.model.name().into(),
            target,
            steps: state.step,
            test_nll: report.test_nll,
            entropy: report.entropy,
            test_nll_minus_entropy: report.test_nll_minus_entropy,
            off_mode_share: report.off_mode_share,
            target_off_mode_share: report.target_off_mode_share,
            train_seconds: state.train_seconds,
            seconds_per_step: state.train_seconds / state.step.max(1) as f64,
            skipped_steps: state.skipped_steps,
            parameters: 0,
            config: state.model.clone(),
            options: state.options.clone(),
            rows: report.rows,
            train_nll: report.train_nll,
            gaussian_test_nll: report.gaussian_test_nll,
            warnings: report.warnings,
        }
    }
}

/// The summary of the run in `state`: evaluated on its table `table`, or on its target (with
/// pictures into `out` on the density scale `vmax`).
pub(crate) fn evaluate(
    model: &VectorFlow,
    state: &RunState,
    table: Option<&TableData>,
    out: Option<&Path>,
    device: &Device,
    vmax: f64,
) -> Result<Summary> {
    let (cfg, opts) = (&state.model, &state.options);
    Ok(match table {
        Some(t) => {
            let report = eval::evaluate_table(model, cfg, opts.seed, t, out, device)?;
            Summary::of_run(state, t.source.clone(), report)
        }
        None => {
            let target = eval::TargetEval {
                config: cfg,
                target: opts.target,
                seed: opts.seed,
                test_samples: opts.test_samples,
                grid: opts.grid,
                frames: opts.frames,
            };
            let report = eval::evaluate_and_draw(model, &target, out, device, vmax)?;
            Summary::of_run(state, opts.target.name().into(), report)
        }
    })
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
#[derive(Clone, Debug)]
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
    /// Further devices (GPUs) for data-parallel training, besides the run's device: every
    /// batch is split in equal shards, one per device (`threads` is then not used). Results
    /// are deterministic for a given device count. Not saved with the run: a resumed run may
    /// use other devices. Empty: one device.
    pub replicas: Vec<Device>,
}

pub use crate::eval::vector::{frames_dir, saved_frames};

/// Remove the density frames of steps after `step` from run `out` (best effort).
fn remove_frames_after(out: &Path, step: usize) {
    for (s, path) in saved_frames(out).unwrap_or_default() {
        if s > step {
            std::fs::remove_file(&path).ok();
        }
    }
}

/// Load a trained vector flow for evaluation (see [`trainer::load_for_eval`]).
///
/// # Errors
/// As [`trainer::load_for_eval`].
pub fn load_trained(dir: &Path, device: &Device) -> Result<(VectorFlow, RunState)> {
    trainer::load_for_eval::<VectorFlow>(dir, device).map(|(m, s, _)| (m, s))
}

/// Refuse a batch size the model cannot use: a model that uses batch statistics (Real NVP's
/// batch norm) needs at least 2 points, and every batch must fit in memory.
fn check_batch(
    cfg: &VectorFlowConfig,
    opts: &Train2dOptions,
    batch_statistics: bool,
) -> std::result::Result<(), FieldError> {
    if batch_statistics && opts.batch_size < 2 {
        return Err(FieldError::new(
            "batch_size",
            "batch_size",
            opts.batch_size,
            "Real NVP's batch norm needs at least 2 points per batch",
        ));
    }
    // A target's test points are scored in one pass; a table's rows in chunks without a graph.
    let points = match opts.table {
        Some(_) => opts.batch_size,
        None => opts.batch_size.max(opts.test_samples.min(1 << 16)),
    };
    let need = cfg.activation_bytes_per_point() * points as f64;
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

/// The throughput [`check_cost`] assumes, floating-point operations per second (two cores of a
/// current x86 CPU: a 2,000-column table's measured step matches it to within 2x).
pub const ASSUMED_FLOPS: f64 = 2e10;

/// The longest estimated training step a run may start with: a step is the unit a signal
/// (Ctrl-C, SIGTERM) waits for, so a longer one could not be stopped in good time.
pub const MAX_STEP_SECONDS: f64 = 300.0;

/// Estimate a fresh run's set-up, step and weight memory before building the model
/// ([`VectorFlowConfig::cost`]): refuse weights that do not fit in memory or a step estimated
/// above [`MAX_STEP_SECONDS`], naming the columns, `--layers` and `--batch`; warn on stderr
/// when a step or the set-up is estimated above a few seconds.
fn check_cost(cfg: &VectorFlowConfig, opts: &Train2dOptions) -> Result<()> {
    let (setup, step, bytes) = cfg.cost(opts.batch_size);
    let data = opts.table.as_ref().map_or_else(
        || opts.target.name().to_string(),
        |t| t.path.display().to_string(),
    );
    let what = format!(
        "{} columns, `flow_steps` {}, `batch_size` {}",
        cfg.features + cfg.context,
        cfg.flow_steps,
        opts.batch_size
    );
    if let Some(why) = crate::limits::memory_shortfall(bytes) {
        let why = format!("{what}: the weights, gradients and Adam's moments {why}; use fewer columns (`columns`) or `flow_steps`");
        return Err(InputError::option("data", data, why).into());
    }
    // A batch's activations must fit before its time is worth estimating.
    check_batch(cfg, opts, false).map_err(FieldError::on_option)?;
    let (setup_s, step_s) = (setup / ASSUMED_FLOPS, step / ASSUMED_FLOPS);
    if step_s > MAX_STEP_SECONDS {
        let why = format!(
            "{what}: one training step needs about {step:.1e} floating-point operations, about {:.0} minutes at {:.0e} per second, and a signal could stop the run only between steps; use fewer columns (`columns`), `flow_steps` or `batch_size`",
            step_s / 60.0,
            ASSUMED_FLOPS
        );
        return Err(InputError::option("data", data, why).into());
    }
    if step_s > 2.0 || setup_s > 10.0 {
        crate::error::warn(&format!(
            "{what}: about {step_s:.0} s per training step and {setup_s:.0} s of set-up (estimated at {ASSUMED_FLOPS:.0e} floating-point operations per second); {} of weights and optimizer state",
            crate::limits::human_bytes(bytes)
        ));
    }
    Ok(())
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
    let run = VectorRun {
        out: Some(&io.out),
        io,
        data: None,
        hooks: trainer::Hooks::default(),
    };
    match run_vector(start, options, run, device)? {
        Outcome::Finished { summary, .. } => Ok(*summary),
        Outcome::Interrupted(done) => Err(super::interrupt::interrupted(done.step, &io.out).into()),
    }
}

/// Where a vector run writes (its directory, or nothing), its table when the caller holds it in
/// memory, and the caller's hooks.
pub(crate) struct VectorRun<'a> {
    /// The run directory; `None`: nothing is written.
    pub out: Option<&'a Path>,
    /// Progress bar, threads, `force` (`io.out` is not used: see `out`).
    pub io: &'a RunIo,
    /// The table, already in memory (a table run's `TableOptions` then only describe it).
    pub data: Option<TableData>,
    /// Progress callback and cancellation.
    pub hooks: trainer::Hooks,
}

// One per run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
/// How a vector run ended.
pub(crate) enum Outcome {
    /// Every step ran: the evaluation weights, the summary and the final run state.
    Finished {
        /// The weights to evaluate and sample with (the weight average when the run keeps one).
        model: VectorFlow,
        /// The figures.
        summary: Box<Summary>,
        /// The run's state at its last step.
        state: Box<RunState>,
    },
    /// Stopped by a signal or a cancellation after its last complete step (checkpointed when
    /// the run has a directory), before evaluation.
    Interrupted(Box<Stopped>),
}

/// A vector run stopped early: its evaluation weights, its state and its table.
pub(crate) struct Stopped {
    /// Steps done.
    pub step: usize,
    /// The weights to evaluate and sample with.
    pub model: VectorFlow,
    /// The run's state at its last step.
    pub state: RunState,
    /// The run's table (table runs).
    pub table: Option<TableData>,
    /// Trainable values of the model.
    pub parameters: usize,
}

/// The run itself, for [`train2d`] and the library's in-memory fit: the one session
/// ([`super::session::run`]) with a vector flow's [`VectorWork`].
pub(crate) fn run_vector(
    start: Start,
    options: Option<Train2dOptions>,
    vr: VectorRun<'_>,
    device: &Device,
) -> Result<Outcome> {
    let VectorRun {
        out,
        io,
        data,
        hooks,
    } = vr;
    let begin = match start {
        Start::Fresh(cfg) => Begin::Fresh(
            cfg,
            options.context("training options are required for a fresh run")?,
        ),
        Start::Resume(dir, changes) => Begin::Resume(dir, changes),
    };
    let work = VectorWork {
        io,
        out,
        preloaded: data,
        table: None,
        data: None,
        warnings: Vec::new(),
        batch_statistics: false,
    };
    super::session::run(work, begin, Session { out, io, hooks }, device)
}

/// A vector flow's part of the one session: its table (or 2D target), standardisation,
/// ActNorm initialisation, split and frames, evaluation and summary.
struct VectorWork<'a> {
    io: &'a RunIo,
    out: Option<&'a Path>,
    /// The table the caller holds in memory, not yet taken.
    preloaded: Option<TableData>,
    /// The run's table (`None`: a 2D target).
    table: Option<TableData>,
    /// The batches, once the data is checked.
    data: Option<DataStream>,
    /// Warnings about the table, for the summary.
    warnings: Vec<String>,
    /// Whether the model normalises with batch statistics (then one shard per batch).
    batch_statistics: bool,
}

impl Workload for VectorWork<'_> {
    type Model = VectorFlow;
    type Task = VectorTask;
    type End = Outcome;

    fn fresh(
        &mut self,
        mut cfg: VectorFlowConfig,
        mut opts: Train2dOptions,
        device: &Device,
    ) -> Result<(VectorFlow, RunState)> {
        opts.validate().map_err(FieldError::on_option)?;
        if let Some(t) = &mut opts.table {
            let data = match self.preloaded.take() {
                Some(d) => d,
                None => TableData::load(t, opts.seed)?,
            };
            t.fingerprint = Some(data.fingerprint.clone());
            t.resolved = Some(data.resolved.clone());
            (cfg.features, cfg.context, cfg.standardize) = (data.dim, data.context, true);
            if data.dim == 1 && cfg.coupling != crate::models::vector::CouplingKind::Spline {
                let why = "has one modelled column: an affine or additive coupling splits the \
                           columns in two; one modelled column needs `coupling` spline";
                return Err(InputError::option("data", t.path.display(), why).into());
            }
            self.table = Some(data);
        }
        cfg.validate().map_err(FieldError::on_option)?;
        check_cost(&cfg, &opts)?;
        let mut model = VectorFlow::new(&cfg, device);
        check_batch(&cfg, &opts, model.flow.uses_batch_statistics())
            .map_err(FieldError::on_option)?;
        if let Some(d) = &self.table {
            d.check_batch(opts.batch_size)?;
            let (data, context) = d.standardization()?;
            model.set_standardization((&data.0, &data.1), (&context.0, &context.1));
        }
        let mut run = RunState::fresh(cfg, opts);
        run.threads = Some(self.io.threads.max(1));
        Ok((model, run))
    }

    fn prepare(&mut self, model: &VectorFlow, run: &mut RunState) -> Result<()> {
        let opts = &run.options;
        if let (None, Some(t)) = (&self.table, &opts.table) {
            let data = match self.preloaded.take() {
                Some(d) => d,
                None if t.in_memory => {
                    return Err(InputError::option(
                        "resume",
                        self.out.map_or_else(String::new, |o| o.display().to_string()),
                        "this run was fitted by a program on rows it held in memory (no file to read them from); resume it from that program, with the same rows",
                    )
                    .into())
                }
                None => TableData::load(t, opts.seed).map_err(|e| {
                    if t.path.exists() {
                        e
                    } else {
                        e.context(format!(
                            "the run's table {} is gone; if it moved, give its new place with `data` on `resume`",
                            t.path.display()
                        ))
                    }
                })?,
            };
            if t.fingerprint
                .as_ref()
                .is_some_and(|f| *f != data.fingerprint)
            {
                return Err(InputError::option(
                    "data",
                    t.path.display(),
                    "is not the table this run was trained on (its values changed)",
                )
                .into());
            }
            self.table = Some(data);
        }
        self.batch_statistics = model.flow.uses_batch_statistics();
        if !self.io.replicas.is_empty() && self.batch_statistics {
            return Err(InputError::option(
                "device",
                format!("{} devices", 1 + self.io.replicas.len()),
                "Real NVP's batch norm normalises with batch statistics, which splitting the batch over devices would change; train it on one device",
            )
            .into());
        }
        // A degenerate table: refused (duplicate columns) or warned about (integer columns)
        // before the first step of a fresh run.
        self.warnings = match (&self.table, run.step) {
            (Some(t), 0) => t.degeneracy()?,
            _ => Vec::new(),
        }
        .iter()
        .map(|w| crate::error::warn(w))
        .collect();
        let mut data = match &self.table {
            Some(t) => DataStream::table(t, opts.seed, opts.batch_size),
            None => DataStream::new(opts.target, opts.seed, opts.batch_size),
        };
        // The model's own statistics (float64, saved with it) standardise every batch on the
        // host.
        if let Some((mean, std)) = model.standardization() {
            data.standardize_with(mean, &std);
        }
        self.data = Some(data);
        Ok(())
    }

    fn initialize(&mut self, model: &mut VectorFlow, run: &RunState, device: &Device) {
        if !model.flow.needs_data_init() {
            return;
        }
        let cfg = &run.model;
        let data = self.data.as_mut().expect("prepared before initialising");
        let (rows, n) = data.init_rows();
        let rows = from_vec(rows, [n, cfg.features + cfg.context], device);
        let (x, c) = split_context(rows, cfg.features, cfg.context);
        model.initialize_standardized(x, c.as_ref());
    }

    fn write_files(&mut self, out: &Path, run: &RunState) -> Result<()> {
        match &self.table {
            Some(d) => d.write_split(out)?,
            None => {
                std::fs::create_dir_all(frames_dir(out))?;
                // Frames past the checkpoint (drawn before a crash or a second Ctrl-C) belong
                // to steps this run will take again: drop them, as the logs drop their rows.
                remove_frames_after(out, run.step);
            }
        }
        Ok(())
    }

    fn task(self, run: RunState, out: Option<&Path>, device: &Device) -> VectorTask {
        let opts = &run.options;
        // Density frames are pictures of a 2D target's plane.
        let frames = if self.table.is_some() { 0 } else { opts.frames };
        let vmax = eval::density_scale(opts.target, opts.grid);
        let threads = run.threads.unwrap_or(1).max(1);
        VectorTask {
            shards: if self.batch_statistics { 1 } else { threads },
            frame_every: opts
                .steps
                .checked_div(frames)
                .map_or(usize::MAX, |e| e.max(1)),
            frames,
            vmax,
            data: self.data.expect("prepared before training"),
            run,
            out: out.map(Path::to_path_buf).unwrap_or_default(),
            device: device.clone(),
            table: self.table,
            warnings: self.warnings,
        }
    }

    fn finish(
        task: VectorTask,
        done: Trained<VectorFlow>,
        out: Option<&Path>,
        device: &Device,
    ) -> Result<Outcome> {
        let parameters = crate::tensor_util::trainable_count(&done.model);
        let eval = done.guard.eval_weights(done.model.valid());
        if done.interrupted {
            return Ok(Outcome::Interrupted(Box::new(Stopped {
                step: done.step,
                model: eval,
                state: done.state,
                table: task.table,
                parameters,
            })));
        }
        let (table, vmax) = (task.table.as_ref(), task.vmax);
        let mut summary = evaluate(&eval, &done.state, table, out, device, vmax)?;
        summary.parameters = parameters;
        summary.warnings.splice(0..0, task.warnings);
        if let Some(out) = out {
            // The figures first: a picture that cannot be written (a full disk) is a warning.
            super::save_summary(&summary, &out.join("summary.json"))?;
            let curve = crate::viz::charts::loss_curve(out, "step", "loss", "training NLL (nats)");
            if let Err(e) = curve {
                let w = format!("loss.png not written: {e:#}");
                eprintln!("warning: {w}");
                summary.warnings.push(w);
                super::save_summary(&summary, &out.join("summary.json"))?;
            }
        }
        Ok(Outcome::Finished {
            model: eval,
            summary: Box::new(summary),
            state: Box::new(done.state),
        })
    }
}

/// A vector flow's part of the one training loop: batches from a 2D target or a table, the
/// mean negative log-likelihood (with the context columns split off), density frames.
struct VectorTask {
    data: DataStream,
    /// The run's table (`None`: a 2D target), for the evaluation.
    table: Option<TableData>,
    /// Warnings about the table, for the summary.
    warnings: Vec<String>,
    /// The run: model config, options (`run.options`), threads, resumes.
    run: RunState,
    shards: usize,
    frames: usize,
    frame_every: usize,
    vmax: f64,
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
        split_context(x, self.run.model.features, self.run.model.context)
    }
}

impl Task for VectorTask {
    type Model = VectorFlow;

    fn metrics_header(&self) -> &'static str {
        "step,loss,lr,seconds,grad_norm_max,clipped,skipped"
    }

    fn lr(&self, step: usize) -> f64 {
        self.run.options.lr_at(step)
    }

    fn batch(&mut self, step: usize) -> Vec<f32> {
        self.data.batch_at(step)
    }

    fn width(&self) -> usize {
        self.run.model.features + self.run.model.context
    }

    fn batch_size(&self) -> usize {
        self.run.options.batch_size
    }

    fn shards(&self) -> usize {
        self.shards
    }

    fn loss(&self, model: &VectorFlow, x: burn::tensor::Tensor<2>) -> burn::tensor::Tensor<1> {
        let (x, c) = self.split(x);
        model.log_prob_standardized(x, c.as_ref()).mean().neg()
    }

    fn row(&self, loss: f64, lr: f64, seconds: f64, _rate: Option<f64>, guard: &str) -> String {
        format!("{loss:.6},{lr:e},{seconds:.3},{guard}")
    }

    fn progress(&self, loss: f64, rows_per_second: f64) -> String {
        format!(
            "loss {loss:.4}  {:.1} it/s",
            rows_per_second / self.run.options.batch_size as f64
        )
    }

    fn trace(&self, model: &VectorFlow, rows: Vec<f32>) -> Option<String> {
        let n = rows.len() / self.width();
        let (x, c) = self.split(from_vec(rows, [n, self.width()], &self.device));
        model.trace_forward_standardized(x, c.as_ref())
    }

    fn pictures_due(&self, done: usize) -> bool {
        self.frames > 0 && (done.is_multiple_of(self.frame_every) || done == self.run.options.steps)
    }

    fn pictures(&mut self, done: usize, model: &VectorFlow) -> Result<()> {
        let grid = eval::model_density_grid(
            model,
            self.run.options.target,
            self.run.options.grid,
            &self.device,
        );
        let path = frames_dir(&self.out).join(format!("{done:08}.idx"));
        crate::fsutil::write_atomic(&path, &grid.indices(self.vmax))
    }

    fn run(&self) -> &RunState {
        &self.run
    }
}
