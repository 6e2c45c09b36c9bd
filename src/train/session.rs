//! The one run session every kind of run goes through: lock the run directory, start fresh or
//! resume (applying the changes a resume may make), check the steps, read and check the data,
//! initialise from data, clear a replaced run, set up the guard and the schedule, run the one
//! training loop, and finish. A kind of run plugs in as a [`Workload`]: what differs between
//! vectors and images (their data, their initialisation, their evaluation and summary), and
//! nothing else.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;

use super::run_dir::ResumeChanges;
use super::stability::Guard;
use super::trainer::{self, Hooks, Recipe, RunModel, RunState, Schedule, Task, Trained};
use super::RunIo;

/// How a session starts.
// One per run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Begin<M: RunModel> {
    /// A new run of this model config and these options.
    Fresh(M::Config, M::Options),
    /// Continue the run saved in a run (or checkpoint) directory, with these changes.
    Resume(PathBuf, ResumeChanges),
}

/// Where a session writes and how it reports.
pub(crate) struct Session<'a> {
    /// The run directory; `None`: nothing is written.
    pub out: Option<&'a Path>,
    /// Progress bar, `force`, threads and replica devices (`io.out` is not used: see `out`).
    pub io: &'a RunIo,
    /// Progress callback and cancellation.
    pub hooks: Hooks,
}

/// What a kind of run adds to the one session ([`run`]), in the order the session calls it.
pub(crate) trait Workload: Sized {
    /// The model it trains.
    type Model: RunModel;
    /// Its part of the training loop.
    type Task: Task<Model = Self::Model>;
    /// How its session ends (the model, its summary, or where it stopped).
    type End;

    /// A fresh run: check and complete `cfg` and `opts` (from the data where they depend on
    /// it) and build the model on the training `device`.
    ///
    /// # Errors
    /// An option out of range (naming it), data that cannot be read or trained on.
    fn fresh(
        &mut self,
        cfg: <Self::Model as RunModel>::Config,
        opts: <Self::Model as RunModel>::Options,
        device: &Device,
    ) -> Result<(Self::Model, RunState<Self::Model>)>;

    /// Read (or take) the run's data and check it against the run (its fingerprint and
    /// shape), refusing what the run cannot train on; may record in `run` what it learns.
    ///
    /// # Errors
    /// Data missing, changed or unusable, naming it.
    fn prepare(&mut self, model: &Self::Model, run: &mut RunState<Self::Model>) -> Result<()>;

    /// The data-dependent initialisation of a run at step 0 (ActNorm), on the training device.
    fn initialize(&mut self, model: &mut Self::Model, run: &RunState<Self::Model>, device: &Device);

    /// Files the run directory `out` holds besides the trainer's logs and checkpoints, written
    /// once everything is checked and a replaced run is cleared.
    ///
    /// # Errors
    /// A file that cannot be written.
    fn write_files(&mut self, out: &Path, run: &RunState<Self::Model>) -> Result<()>;

    /// Its part of the training loop for the run `run`, writing into `out`; `device` is the
    /// evaluation device.
    fn task(self, run: RunState<Self::Model>, out: Option<&Path>, device: &Device) -> Self::Task;

    /// The end of the session: the evaluation and summary of a finished run, or what a run
    /// stopped early keeps.
    ///
    /// # Errors
    /// A summary that cannot be written; a non-finite evaluation.
    fn finish(
        task: Self::Task,
        done: Trained<Self::Model>,
        out: Option<&Path>,
        device: &Device,
    ) -> Result<Self::End>;
}

/// Run the session of `work` from `begin` on `device` (training on its autodiff version).
///
/// # Errors
/// Whatever the workload refuses; a locked or occupied run directory; a resume that cannot be
/// made; a failed write.
pub(crate) fn run<W: Workload>(
    mut work: W,
    begin: Begin<W::Model>,
    session: Session,
    device: &Device,
) -> Result<W::End> {
    let Session { out, io, hooks } = session;
    let train_device = device.clone().autodiff();
    let resumed_from = match &begin {
        Begin::Resume(d, _) => Some(d.clone()),
        Begin::Fresh(..) => None,
    };
    let (_lock, continues_here) = trainer::open_session(out, resumed_from.as_deref(), io.force)?;
    let (mut model, optim, ema, mut run, saved) = match begin {
        Begin::Fresh(cfg, opts) => {
            let (model, run) = work.fresh(cfg, opts, &train_device)?;
            let optim = run.options.stability().build_optimizer();
            (model, optim, None, run, None)
        }
        Begin::Resume(dir, changes) => {
            let r = trainer::resume_with::<W::Model>(&dir, &changes, io.threads, &train_device)?;
            (r.model, r.optim, r.ema, r.state, Some(r.saved))
        }
    };
    let opts = run.options.clone();
    trainer::check_steps(run.step, opts.steps())?;
    work.prepare(&model, &mut run)?;
    if run.step == 0 {
        work.initialize(&mut model, &run, &train_device);
    }
    if let Some(out) = out {
        // Everything is checked: only now is an old run replaced by `force` cleared (a refused
        // run never touches the run it would have replaced).
        trainer::clear_old_run(out, continues_here, io.force)?;
        work.write_files(out, &run)?;
    }
    let guard = Guard::new(&model, opts.stability().clone(), ema, run.skipped_steps);
    let schedule = Schedule {
        out: out.map(Path::to_path_buf),
        progress: io.progress,
        first: run.step,
        steps: opts.steps(),
        log_every: opts.log_every(),
        checkpoint_every: opts.checkpoint_every(),
        time_limit_minutes: opts.time_limit_minutes(),
        train_seconds: run.train_seconds,
        append_logs: run.step > 0 || continues_here,
        saved,
        device: train_device,
        replicas: io.replicas.iter().map(|d| d.clone().autodiff()).collect(),
        hooks,
    };
    let mut task = work.task(run, out, device);
    let done = trainer::train(&mut task, model, optim, guard, schedule)?;
    W::finish(task, done, out, device)
}
