//! The `glowflow` command line: a thin layer over the library.
//!
//! Every number is checked by its value parser ([`parse`]) before anything runs; errors a user
//! can fix exit with code 2, an interrupted run with 130 ([`glowflow::error::exit_code`]).

#[macro_use]
mod common;

mod ablation;
mod attribute;
mod bench;
mod compare;
mod eval;
mod interpolate;
pub mod message;
pub mod parse;
mod quality;
mod reconstruct;
mod sample;
mod score;
mod temperatures;
mod train;
mod train2d;
mod trained;
mod vector_flags;

use std::ffi::OsString;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use glowflow::error::InputError;
use glowflow::train::interrupt;

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
    Train2d(train2d::Train2dArgs),
    /// Write each row's log-density under a trained vector flow to CSV (anomaly and
    /// out-of-distribution scores).
    #[command(allow_negative_numbers = true)]
    Score(score::ScoreArgs),
    /// Train Glow and Real NVP on identical data and budget and compare them.
    #[command(allow_negative_numbers = true)]
    Compare(compare::CompareArgs),
    /// Train a multi-scale Glow on images.
    #[command(allow_negative_numbers = true)]
    Train(train::TrainArgs),
    /// Test bits/dim of a trained image model over the whole test split.
    #[command(allow_negative_numbers = true)]
    Eval(eval::EvalArgs),
    /// Sample a trained model: a grid of images (by class for class-conditional models), or CSV
    /// rows from a vector flow trained on a table (for a given --context).
    #[command(allow_negative_numbers = true)]
    Sample(sample::SampleArgs),
    /// Sample quality of a trained image model: the Fréchet distance between samples and test
    /// images in the features of a classifier trained (once, then cached) on the data set
    /// (`fd_classifier`, not comparable with published FIDs), and the classifier's accuracy on
    /// class-conditional samples.
    #[command(allow_negative_numbers = true)]
    Quality(quality::QualityArgs),
    /// Glow's ablation (Fig. 3): {reverse, shuffle, LU 1x1} x {additive, affine} trained with the
    /// same data, seeds and step budget; one picture of the six test-bpd curves and a table.
    #[command(allow_negative_numbers = true)]
    Ablation(ablation::AblationArgs),
    /// Interpolate between pairs of test images through every level's latents (one row of
    /// images per pair).
    #[command(allow_negative_numbers = true)]
    Interpolate(interpolate::InterpolateArgs),
    /// Move test images along a class's attribute direction (mean latent of the training
    /// images of that class minus the mean of the others), one column per scale.
    #[command(allow_negative_numbers = true)]
    Attribute(attribute::AttributeArgs),
    /// Sample at several temperatures, the same draws in every row (one row per temperature).
    #[command(allow_negative_numbers = true)]
    Temperatures(temperatures::TemperaturesArgs),
    /// Max abs error of inverse(forward(x)) over a batch of test images.
    #[command(allow_negative_numbers = true)]
    Reconstruct(eval::EvalArgs),
    /// Time a fixed workload (training steps or generation) and report speed and peak memory.
    #[command(allow_negative_numbers = true)]
    Bench(bench::BenchArgs),
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

pub fn run<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(args: I) -> Result<()> {
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(usage_error)?;
    let cli = Cli::from_arg_matches(&matches).map_err(usage_error)?;
    // Training commands switch the handler to finish-the-step mode (`interrupt::install`).
    interrupt::install_immediate();
    let given = matches
        .subcommand()
        .map(|(_, m)| common::given_flags(m))
        .unwrap_or_default();
    match cli.command {
        Command::Train2d(a) => train2d::run(a, &given),
        Command::Score(a) => score::run(a),
        Command::Compare(a) => compare::run(a, &given),
        Command::Train(a) => train::run(a, &given),
        Command::Eval(a) => eval::run(a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Quality(a) => quality::run(a),
        Command::Ablation(a) => ablation::run(a, &given),
        Command::Interpolate(a) => interpolate::run(a),
        Command::Attribute(a) => attribute::run(a),
        Command::Temperatures(a) => temperatures::run(a),
        Command::Bench(a) => bench::run(a),
    }
}
