//! `compare`: train Glow and Real NVP on identical data and budget and compare them.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::models::{ModelKind, Permutation};
use glowflow::train::{interrupt, RunIo};

use super::common::{device, print_json};
use super::vector_flags::{check_table_flags, CommonArgs};

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

pub fn run(a: CompareArgs, given: &[(String, String)]) -> Result<()> {
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
