//! `ablation`: Glow's Fig. 3, {reverse, shuffle, LU 1x1} x {additive, affine} trained alike.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::train::{interrupt, RunIo};

use super::common::{print_json, refuse_given, train_devices, was_given};
use super::parse;
use super::train::{check_dequant_flags, fresh_image_run, TrainArgs};

/// `ablation`'s flags: `train`'s (the budget is `--steps`; `--permutation`, `--coupling`,
/// `--resume` and `--classes` are what the ablation sets or does not do) and these.
#[derive(Args, Debug)]
pub struct AblationArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Test evaluations per run, evenly spaced (the points of each curve).
    #[arg(long, default_value_t = 5, value_parser = parse::count::<1, 1_000>)]
    pub stages: usize,
    /// Samples and test images of each final model's `fd_classifier` (0: not measured).
    #[arg(long, default_value_t = 1000, value_parser = parse::count::<0, 1_000_000>)]
    pub quality_n: usize,
    /// Training steps of the quality classifier.
    #[arg(long, default_value_t = glowflow::eval::quality::ClassifierOptions::default().steps, value_parser = parse::count::<1, 10_000_000>)]
    pub classifier_steps: usize,
    /// Where the quality classifier is cached [default: ~/.cache/glowflow].
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

pub fn run(a: AblationArgs, given: &[(String, String)]) -> Result<()> {
    use glowflow::eval::quality::{default_cache_dir, ClassifierOptions, QualityOptions};
    let flags = [
        "--permutation",
        "--coupling",
        "--resume",
        "--classes",
        "--weight-y",
        "--time-limit",
    ];
    let why = "is not an ablation option: the ablation trains every permutation and coupling, unconditional, from scratch, to the same --steps";
    refuse_given(given, &flags, why)?;
    let (device, replicas) = train_devices(&a.train.device)?;
    interrupt::install();
    check_dequant_flags(&a.train, given)?;
    let (cfg, mut opts) = fresh_image_run(&a.train)?;
    // The curves are test evaluations, six runs times --stages of them: 2,000 test images each
    // unless --test-limit says otherwise (0: the whole split).
    if !was_given(given, "--test-limit") {
        opts.test_limit = 2000;
    }
    let out = a
        .train
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/ablation"));
    let quality = (a.quality_n > 0).then(|| QualityOptions {
        n: a.quality_n,
        draw: glowflow::eval::images::Draw::for_model(&cfg, 0.7),
        seed: 0,
        classifier: ClassifierOptions {
            steps: a.classifier_steps,
            ..ClassifierOptions::default()
        },
        cache: a.cache.clone().unwrap_or_else(default_cache_dir),
    });
    let io = RunIo {
        out: out.clone(),
        progress: !a.train.quiet,
        threads: 1,
        force: a.train.force,
        replicas,
    };
    let rows =
        glowflow::ablation::ablation(&out, &cfg, &opts, a.stages, quality.as_ref(), &io, &device)?;
    print_json(&rows)
}
