//! `train2d` (alias `train-vectors`): train a vector flow on a built-in 2D target or a table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::models::{ModelKind, Permutation};
use glowflow::train::checkpoint::RunKind;
use glowflow::train::{interrupt, train2d, RunIo, Start};

use super::common::{
    absolute, check_utf8_paths, out_dir, print_json, refuse_given, resume_changes, train_devices,
    vector_model, vector_recipe,
};
use super::vector_flags::{check_table_flags, CommonArgs};

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

/// Runs `train2d`: a fresh run, or with `--resume` the saved run with the changes the library's
/// one list allows ([`ResumeChanges`](glowflow::train::run_dir::ResumeChanges)).
pub fn run(a: Train2dArgs, given: &[(String, String)]) -> Result<()> {
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
            let mut changes = resume_changes(given, RunKind::Vector)?;
            // A moved table is found from where the command runs.
            changes.data = changes
                .data
                .map(|p| absolute(std::path::Path::new(&p)).display().to_string());
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
