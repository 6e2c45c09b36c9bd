//! The one training loop every workload runs: learning-rate schedule, data-parallel gradients,
//! the non-finite guard (skips, clipping, weight average), metrics and gradient-norm logs,
//! progress, periodic pictures and checkpoints, the time limit and Ctrl-C. A workload supplies
//! only what differs, as a [`Task`]: its batches, its loss, its metrics row, its pictures and
//! its run state (the vector flows in `train2d`, image Glow in `train_image`). The run state,
//! loading a trained model and resuming are written here once for every model ([`RunState`],
//! [`load_for_eval`], [`resume`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::checkpoint::{checkpoint_dir, Checkpoint, EMA_FILE, MODEL_FILE};
use super::run_dir::ResumeRecord;
use super::stability::{stop_error, write_group_norms, Guard, StabilityOptions, WeightEma, Window};
use super::{interrupt, open_run_logs, parallel, progress_bar};
use crate::error::FieldError;

/// A model a run trains: built from its config (saved in the run state with the recipe), its
/// weights (ActNorm's flags included) in the checkpoint.
pub trait RunModel: Module + burn::store::ModuleSnapshot + Clone + Send + Sync {
    /// The kind of run that trains it (saved in `state.json` as `kind`).
    const KIND: RunKind;
    /// The model's config (saved in `state.json`).
    type Config: Clone + Serialize + DeserializeOwned;
    /// The training options of its runs (saved in `state.json`).
    type Options: Recipe;
    /// The model `cfg` describes, freshly initialised on `device`.
    fn build(cfg: &Self::Config, device: &Device) -> Self;
    /// Check every value of `cfg`.
    ///
    /// # Errors
    /// Names the field and its flag.
    fn check(cfg: &Self::Config) -> std::result::Result<(), FieldError>;
    /// Apply a resume's `changes` to the saved run `run` (its options, its thread count),
    /// recording each as `name old -> new` in `changed`. `threads` is the caller's thread count
    /// (a run saved before it recorded its own ran with it). Called by [`resume_with`] after
    /// [`ResumeChanges::check`](super::run_dir::ResumeChanges::check) refused what this kind
    /// of run does not take.
    ///
    /// # Errors
    /// A change that leaves the options invalid (naming it), or data given at a new place that
    /// this run cannot take.
    fn apply_changes(
        run: &mut RunState<Self>,
        changes: &super::run_dir::ResumeChanges,
        threads: usize,
        changed: &mut Vec<String>,
    ) -> Result<()>;
}

/// A workload's training options, as far as the shared code needs them.
pub trait Recipe: Clone + Serialize + DeserializeOwned {
    /// Check every option against [`crate::limits`].
    ///
    /// # Errors
    /// Names the field and its flag.
    fn validate(&self) -> std::result::Result<(), FieldError>;
    /// Clipping, weight average, skip limit and optimizer.
    fn stability(&self) -> &StabilityOptions;
    /// Total steps of the run.
    fn steps(&self) -> usize;
    /// A metrics row every this many steps.
    fn log_every(&self) -> usize;
    /// A checkpoint every this many steps (0: at the end only).
    fn checkpoint_every(&self) -> usize;
    /// A training-time limit for this invocation, in minutes (`None`: none).
    fn time_limit_minutes(&self) -> Option<f64> {
        None
    }
}

pub use super::checkpoint::{run_kind, RunKind};

/// What a checkpoint's `state.json` holds for a run of `M`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RunState<M: RunModel> {
    /// The kind of run (absent in runs saved before it was recorded: see [`run_kind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RunKind>,
    /// The model's config.
    pub model: M::Config,
    /// The training options (the recipe).
    pub options: M::Options,
    /// Steps completed.
    pub step: usize,
    /// Training wall time so far, seconds (excluding evaluation and pictures).
    pub train_seconds: f64,
    /// Steps the guard skipped so far (non-finite loss, gradient or update).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Updates folded into the weight average saved beside the weights (`ema.safetensors`).
    #[serde(default)]
    pub ema_updates: u64,
    /// Vector runs: data-parallel threads (absent in runs saved before it was recorded; image
    /// runs keep theirs in the options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Image runs: [`ImageSet::fingerprint`](crate::data::ImageSet::fingerprint) of the
    /// training set (absent in runs saved before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
    /// Each resume and what it changed.
    #[serde(default)]
    pub resumes: Vec<ResumeRecord>,
}

impl<M: RunModel> RunState<M> {
    /// The state of a run starting now: nothing trained, nothing recorded.
    pub fn fresh(model: M::Config, options: M::Options) -> Self {
        RunState {
            kind: Some(M::KIND),
            model,
            options,
            step: 0,
            train_seconds: 0.0,
            skipped_steps: 0,
            ema_updates: 0,
            threads: None,
            data_fingerprint: None,
            resumes: Vec::new(),
        }
    }

    /// This state after `step` steps under `guard`.
    fn at(&self, step: usize, train_seconds: f64, guard: &Guard) -> Self {
        RunState {
            kind: Some(M::KIND),
            step,
            train_seconds,
            skipped_steps: guard.total_skips,
            ema_updates: guard.ema_updates(),
            ..self.clone()
        }
    }
}

/// The checkpoint of a run or checkpoint directory `dir` and its state, every value checked.
///
/// # Errors
/// A missing or damaged checkpoint; an out-of-range value (naming `state.json` and the field).
pub fn open_state<M: RunModel>(dir: &Path) -> Result<(Checkpoint, RunState<M>)> {
    let (ck, state): (Checkpoint, RunState<M>) = Checkpoint::open(dir)?;
    M::check(&state.model).map_err(|e| e.in_file(ck.state_path(), "model"))?;
    state
        .options
        .validate()
        .map_err(|e| e.in_file(ck.state_path(), "options"))?;
    if let Some(t) = state.threads {
        crate::limits::count("threads", "threads", t, 1, crate::limits::MAX_THREADS)
            .map_err(|e| e.in_file(ck.state_path(), "run"))?;
    }
    Ok((ck, state))
}

/// The trained weights of the checkpoint `ck` with `state`.
///
/// # Errors
/// Weights that do not match the config or hold a non-finite value (naming the file).
pub fn load_weights<M: RunModel>(
    ck: &Checkpoint,
    state: &RunState<M>,
    device: &Device,
) -> Result<M> {
    ck.load_model(M::build(&state.model, device), MODEL_FILE)
}

/// A trained model for evaluation and sampling, from a run or checkpoint directory: the run's
/// weight average when its checkpoint has one (`ema.safetensors`, then `true`), else the trained
/// weights.
///
/// # Errors
/// Weights that hold a non-finite value, files that do not belong to the checkpoint,
/// out-of-range values in `state.json` (naming the field).
pub fn load_for_eval<M: RunModel>(dir: &Path, device: &Device) -> Result<(M, RunState<M>, bool)> {
    let (ck, state) = open_state::<M>(dir)?;
    let model = load_weights(&ck, &state, device)?;
    if state.options.stability().ema_decay > 0.0 && ck.has(EMA_FILE) {
        // The average is saved in float64 (exact for resume); evaluation runs in float32.
        let avg = crate::tensor_util::cast_module(
            ck.load_model(model, EMA_FILE)?,
            burn::tensor::DType::F32,
        );
        return Ok((avg, state, true));
    }
    Ok((model, state, false))
}

/// A run continued from its checkpoint: weights, optimizer state, weight average, the state as
/// saved, and the checkpoint folder with its step (named if the run has to stop).
pub struct Resumed<M: RunModel> {
    /// The trained weights, on the training device.
    pub model: M,
    /// The optimizer with its saved state.
    pub optim: ModuleOptimizer,
    /// The weight average, when the recipe keeps one.
    pub ema: Option<WeightEma>,
    /// The saved state.
    pub state: RunState<M>,
    /// The checkpoint folder and its step.
    pub saved: (PathBuf, usize),
}

/// The resume of every kind of run: refuse the changes its kind does not take, load the run
/// saved in `dir` onto `device`, apply `changes` ([`RunModel::apply_changes`]) and record them
/// in the run's `resumes`.
///
/// # Errors
/// As [`resume`], and a change refused by name.
pub fn resume_with<M: RunModel>(
    dir: &Path,
    changes: &super::run_dir::ResumeChanges,
    threads: usize,
    device: &Device,
) -> Result<Resumed<M>> {
    changes.check(M::KIND)?;
    let mut r = resume::<M>(dir, device)?;
    let mut changed = Vec::new();
    M::apply_changes(&mut r.state, changes, threads, &mut changed)?;
    let step = r.state.step;
    r.state.resumes = record_resume(std::mem::take(&mut r.state.resumes), step, changed);
    Ok(r)
}

/// Load everything a resume from `dir` needs onto `device` (errors name `--resume dir`).
pub fn resume<M: RunModel>(dir: &Path, device: &Device) -> Result<Resumed<M>> {
    use anyhow::Context;
    let (ck, state) =
        open_state::<M>(dir).with_context(|| format!("`resume` {}", dir.display()))?;
    if !ck.has(super::checkpoint::OPTIMIZER_FILE) {
        let why = "holds a model saved for scoring and sampling, without the optimizer's state: it cannot be resumed (fit with a run directory to keep a resumable run)";
        return Err(crate::error::InputError::option("resume", dir.display(), why).into());
    }
    let model = load_weights(&ck, &state, device)?;
    let (optim, ema) =
        ck.load_training_state(&model, state.options.stability(), state.ema_updates)?;
    Ok(Resumed {
        model,
        optim,
        ema,
        saved: (ck.dir.clone(), state.step),
        state,
    })
}

/// What one workload supplies to [`train`].
pub trait Task: Sync {
    /// The model (on the autodiff device while training).
    type Model: RunModel;

    /// The header of `metrics.csv`; every row starts with the step.
    fn metrics_header(&self) -> &'static str;
    /// Learning rate of step `step` (0-based).
    fn lr(&self, step: usize) -> f64;
    /// The host rows of step `step`'s batch, `[batch, width]` flattened: a pure function of
    /// the seed and the step, so a resumed run sees the same data.
    fn batch(&mut self, step: usize) -> Vec<f32>;
    /// Values per row of [`batch`](Task::batch).
    fn width(&self) -> usize;
    /// Rows per batch.
    fn batch_size(&self) -> usize;
    /// Data-parallel shards of each batch (1 for models that use batch statistics).
    fn shards(&self) -> usize;
    /// Mean loss of the rows `x: [n, width]` (nats, or bits/dim for images).
    fn loss(&self, model: &Self::Model, x: Tensor<2>) -> Tensor<1>;
    /// [`loss`](Task::loss) times `weight` (returned) and its gradients, deposited into `sink`
    /// (a data-parallel shard's share of the batch's mean): ordinary backpropagation unless
    /// the task computes them otherwise (image runs with `--low-memory`: invertible
    /// backpropagation, depositing layer by layer).
    fn grads<S: parallel::GradSink>(
        &self,
        model: &Self::Model,
        x: Tensor<2>,
        weight: f64,
        sink: &mut S,
    ) -> f64 {
        let (value, grads) = parallel::backprop(model, self.loss(model, x), weight);
        sink.deposit(model, grads);
        value
    }
    /// A metrics row after its step: the loss, the learning rate, the training seconds so
    /// far, the images (rows) per second of the window (`None` on a stop row), and the guard's
    /// columns.
    fn row(&self, loss: f64, lr: f64, seconds: f64, rate: Option<f64>, guard: &str) -> String;
    /// The progress bar's message.
    fn progress(&self, loss: f64, rows_per_second: f64) -> String;
    /// Where the first non-finite value appears when `model` (evaluation weights) runs the
    /// rows `rows` of a batch; `None` when all is finite.
    fn trace(&self, model: &Self::Model, rows: Vec<f32>) -> Option<String>;
    /// Whether pictures are due after step `done` (density frames, sample grids).
    fn pictures_due(&self, done: usize) -> bool;
    /// Draw them with the evaluation weights.
    fn pictures(&mut self, done: usize, model: &Self::Model) -> Result<()>;
    /// The run's state as it stands (model config, options, threads, fingerprint, resumes);
    /// the trainer fills in the step, the time and the guard's counts.
    fn run(&self) -> &RunState<Self::Model>;
}

/// Training progress, reported to a [`Hooks::on_progress`] callback with every metrics row
/// (every `log_every` steps, and after the last step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Total steps of the run.
    pub steps: usize,
    /// Mean training loss of the steps since the last report (nats per row for vector flows,
    /// bits/dim for images).
    pub loss: f64,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Training rows (points or images) per second since the last report.
    pub rows_per_second: f64,
}

/// A progress callback (see [`Progress`]); it runs on the training thread between steps.
pub type ProgressFn = std::sync::Arc<dyn Fn(&Progress) + Send + Sync>;

/// A handle that stops a training call at the next step boundary, with the model as it stands
/// after its last complete step (a caller's Ctrl-C, a GUI's stop button, a time budget). Clones
/// share one flag: keep a clone, give one to the training call, call [`Cancel::cancel`] from any
/// thread.
#[derive(Clone, Debug, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// A handle not yet cancelled.
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Ask the training call holding a clone of this handle to stop after its current step.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`cancel`](Cancel::cancel) has been called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a caller of a training call watches and controls: a progress callback and a
/// cancellation handle.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called with every metrics row.
    pub on_progress: Option<ProgressFn>,
    /// Stops the call at the next step boundary.
    pub cancel: Cancel,
}

impl Hooks {
    /// Hooks that call `report` with every metrics row (and a cancellation handle not yet
    /// cancelled).
    pub fn with_progress(report: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        Hooks {
            on_progress: Some(std::sync::Arc::new(report)),
            cancel: Cancel::new(),
        }
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field(
                "on_progress",
                &self.on_progress.as_ref().map(|_| "Fn(&Progress)"),
            )
            .field("cancel", &self.cancel)
            .finish()
    }
}

/// The fixed settings of one call of [`train`].
pub struct Schedule {
    /// The run directory: logs, checkpoints and pictures go there. `None`: a run in memory
    /// only (nothing is written).
    pub out: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// First step to run (0, or the checkpoint's step on resume).
    pub first: usize,
    /// Total steps.
    pub steps: usize,
    /// A metrics row every this many steps.
    pub log_every: usize,
    /// A checkpoint every this many steps (0: at the end only).
    pub checkpoint_every: usize,
    /// Stop after this many minutes of this call's training time.
    pub time_limit_minutes: Option<f64>,
    /// Training seconds of the run before this call.
    pub train_seconds: f64,
    /// Append to the run's logs (resume), cutting rows past `first`, instead of starting them.
    pub append_logs: bool,
    /// The newest checkpoint that exists (folder, step), named if the run has to stop.
    pub saved: Option<(PathBuf, usize)>,
    /// The autodiff device of the model.
    pub device: Device,
    /// Further autodiff devices for data-parallel training: with any, every batch is split in
    /// equal shards over `device` and these, one each ([`parallel::loss_and_grads_on_devices`]),
    /// and [`Task::shards`] is not used.
    pub replicas: Vec<Device>,
    /// Progress callback and cancellation.
    pub hooks: Hooks,
}

/// How a call of [`train`] ended.
pub struct Trained<M: RunModel> {
    /// The trained weights (a checkpoint of them is saved).
    pub model: M,
    /// The guard, with its weight average.
    pub guard: Guard,
    /// Steps done.
    pub step: usize,
    /// Training seconds of the whole run.
    pub train_seconds: f64,
    /// The state saved with the final checkpoint.
    pub state: RunState<M>,
    /// Whether the run stopped before its last step: a signal ([`interrupt::requested`]) or
    /// [`Hooks::cancel`]. The model is that of the last complete step (and checkpointed when
    /// the run has a directory).
    pub interrupted: bool,
}

/// Run `task` from `schedule.first` to `schedule.steps` (or the time limit, a signal or a
/// cancellation: [`Trained::interrupted`]), then save a checkpoint when the run has a
/// directory.
///
/// # Errors
/// A failed log or checkpoint write; [`stop_error`] after too many consecutive skipped steps
/// (the checkpoint named in it is intact).
pub fn train<T: Task>(
    task: &mut T,
    mut model: T::Model,
    mut optim: ModuleOptimizer,
    mut guard: Guard,
    s: Schedule,
) -> Result<Trained<T::Model>> {
    let out = s.out.as_deref();
    let mut logs = match out {
        Some(out) => Some(open_run_logs(
            out,
            task.metrics_header(),
            s.append_logs.then_some(s.first),
        )?),
        None => None,
    };
    let mut saved = s.saved;
    let bar = progress_bar(s.progress, s.steps as u64, s.first as u64);
    let mut window = Window::default();
    let mut clock = Instant::now();
    let mut train_seconds = s.train_seconds;
    let (mut last, mut interrupted) = (s.first, false);
    let devices: Vec<Device> = std::iter::once(s.device.clone())
        .chain(s.replicas.iter().cloned())
        .collect();
    for step in s.first..s.steps {
        if interrupt::requested() || s.hooks.cancel.is_cancelled() {
            interrupted = true;
            break;
        }
        if let Some(limit) = s.time_limit_minutes {
            let this_call = train_seconds - s.train_seconds + clock.elapsed().as_secs_f64();
            if this_call >= limit * 60.0 {
                break;
            }
        }
        let lr = task.lr(step);
        let batch = task.batch(step);
        let (value, grads) = {
            let t: &T = task;
            if devices.len() > 1 {
                let grads = |m: &T::Model, x, w| {
                    let mut g = burn::optim::GradientsParams::new();
                    (t.grads(m, x, w, &mut g), g)
                };
                parallel::shard_grads_on_devices(&model, &batch, t.width(), &devices, grads)
            } else {
                let grads =
                    |m: &T::Model, x, w, sink: &mut parallel::ShardSink| t.grads(m, x, w, sink);
                parallel::shard_grads_into(&model, &batch, t.width(), t.shards(), &s.device, grads)
            }
        };
        let (next, outcome, report, stop) = guard.step(model, &mut optim, lr, value, grads);
        model = next;
        window.add(value, &outcome, &report.groups);
        if let Some(why) = stop {
            // The partial window's row, so the skipped steps are on record.
            let seconds = train_seconds + clock.elapsed().as_secs_f64();
            let row = task.row(
                window.mean_loss(),
                lr,
                seconds,
                None,
                &window.guard_columns(),
            );
            if let Some((metrics, _)) = &mut logs {
                writeln!(metrics, "{},{row}", step + 1)?;
                metrics.flush()?;
            }
            let place = task.trace(&model.valid(), batch);
            return Err(stop_error(step + 1, lr, &why, place, saved));
        }
        let done = step + 1;
        last = done;
        if done % s.log_every == 0 || done == s.steps {
            let dt = clock.elapsed().as_secs_f64();
            train_seconds += dt;
            clock = Instant::now();
            let rate = ((window.steps + window.skipped) * task.batch_size()) as f64 / dt.max(1e-9);
            let loss = window.mean_loss();
            let row = task.row(loss, lr, train_seconds, Some(rate), &window.guard_columns());
            if let Some((metrics, group_norms)) = &mut logs {
                writeln!(metrics, "{done},{row}")?;
                metrics.flush()?;
                write_group_norms(group_norms, done, &window.groups_max)?;
            }
            if let Some(b) = &bar {
                b.set_position(done as u64);
                b.set_message(task.progress(loss, rate));
            }
            if let Some(report) = &s.hooks.on_progress {
                report(&Progress {
                    step: done,
                    steps: s.steps,
                    loss,
                    lr,
                    rows_per_second: rate,
                });
            }
            window = Window::default();
        }
        let pictures_due = out.is_some() && task.pictures_due(done);
        let ckpt_due = out.is_some() && s.checkpoint_every > 0 && done % s.checkpoint_every == 0;
        if pictures_due || ckpt_due {
            train_seconds += clock.elapsed().as_secs_f64();
            if pictures_due {
                // Side products: a picture that cannot be written (a full disk) is a warning;
                // the checkpoint below still decides whether the step's work is kept.
                if let Err(e) = task.pictures(done, &guard.eval_weights(model.valid())) {
                    eprintln!("warning: pictures of step {done} not written: {e:#}");
                }
            }
            if let Some(out) = out.filter(|_| ckpt_due) {
                let state = task.run().at(done, train_seconds, &guard);
                save_checkpoint(out, &guard, &model, &optim, &state)?;
                saved = Some((checkpoint_dir(out), done));
            }
            clock = Instant::now();
        }
    }
    train_seconds += clock.elapsed().as_secs_f64();
    if let Some(b) = &bar {
        b.finish();
    }
    let state = task.run().at(last, train_seconds, &guard);
    if let Some(out) = out {
        if let Some((metrics, _)) = &mut logs {
            metrics.flush()?;
        }
        save_checkpoint(out, &guard, &model, &optim, &state)?;
    }
    Ok(Trained {
        model,
        guard,
        step: last,
        train_seconds,
        state,
        interrupted,
    })
}

/// Lock the run directory `out` for a run that starts fresh or resumes from the checkpoint in
/// `resumed_from`; returns the lock and whether the run continues in `out` itself (its logs
/// are then appended to). A fresh run into a folder holding a run is refused unless `force`;
/// with `force` the old run is removed only later, by [`clear_old_run`], once everything the
/// new run needs has been checked.
///
/// # Errors
/// Another process holds the lock; `out` holds a run and `force` is off.
pub fn open_run(
    out: &Path,
    resumed_from: Option<&Path>,
    force: bool,
) -> Result<(super::run_dir::RunLock, bool)> {
    let lock = super::run_dir::lock(out)?;
    let here = resumed_from
        .is_some_and(|d| super::run_dir::same_path(&super::run_dir::run_dir_of(d), out));
    if !here && !force {
        super::run_dir::prepare_fresh(out, false)?;
    }
    Ok((lock, here))
}

/// [`open_run`] when the session writes a run directory `out`; nothing (no lock, not
/// continuing in place) when it writes none.
///
/// # Errors
/// As [`open_run`].
pub fn open_session(
    out: Option<&Path>,
    resumed_from: Option<&Path>,
    force: bool,
) -> Result<(Option<super::run_dir::RunLock>, bool)> {
    match out {
        Some(out) => {
            let (lock, here) = open_run(out, resumed_from, force)?;
            Ok((Some(lock), here))
        }
        None => Ok((None, false)),
    }
}

/// Remove the old run a `--force`d fresh run replaces (see [`open_run`]); call it after every
/// check of the new run's flags and data, so a refused run leaves the old one whole.
pub fn clear_old_run(out: &Path, continues_here: bool, force: bool) -> Result<()> {
    if !continues_here && force {
        super::run_dir::prepare_fresh(out, true)?;
    }
    Ok(())
}

/// Refuse a total of `steps` below the `done` steps of a resumed checkpoint (names `--steps`).
pub fn check_steps(done: usize, steps: usize) -> Result<()> {
    if done > steps {
        return Err(crate::error::InputError::option(
            "steps",
            steps,
            format!("is below the {done} steps the checkpoint has already done"),
        )
        .into());
    }
    Ok(())
}

/// The resume records of a run continued from step `step` with the changes `changed`
/// (nothing is recorded when nothing changed).
pub fn record_resume(
    mut resumes: Vec<super::run_dir::ResumeRecord>,
    step: usize,
    changed: Vec<String>,
) -> Vec<super::run_dir::ResumeRecord> {
    if !changed.is_empty() {
        resumes.push(super::run_dir::ResumeRecord {
            step,
            changes: changed,
        });
    }
    resumes
}

/// Save `model`, the guard's weight average (in float64, when there is one), `optim` and
/// `state` into `out/checkpoint/` (see [`checkpoint::save_checkpoint`](super::checkpoint::save_checkpoint)).
fn save_checkpoint<M: Module + burn::store::ModuleSnapshot, S: Serialize>(
    out: &Path,
    guard: &Guard,
    model: &M,
    optim: &ModuleOptimizer,
    state: &S,
) -> Result<()> {
    let ema = guard
        .ema
        .as_ref()
        .map(|e| e.to_float64_module(model.valid()));
    super::checkpoint::save_checkpoint(out, model, ema.as_ref(), Some(optim), state)
}
