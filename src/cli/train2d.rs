//! `train2d` (alias `train-vectors`): train a vector flow on a built-in 2D target or a table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::models::{ModelKind, Permutation};
use glowflow::train::run_dir::ResumeChanges;
use glowflow::train::{interrupt, train2d, RunIo, Start};

use super::common::{
    absolute, check_utf8_paths, out_dir, print_json, refuse_given, refuse_on_resume, train_devices,
    vector_model, vector_recipe, was_given,
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

/// Settings `train2d --resume` may change (besides
/// [`RESUME_NEUTRAL_FLAGS`](super::common::RESUME_NEUTRAL_FLAGS)); every other flag is refused
/// by name.
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
