//! Pieces every command shares: the `outln!` macro, the `--device` flag and the stability flags
//! (each written once and flattened where used), the library's defaults the flags show, devices,
//! output, and the flag policy (which flags were given, which a `--resume` refuses).

/// `println!` that never panics: a closed standard output (`| head`) or a full disk loses the
/// line, not the command (its files are already written).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::PathBuf;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use glowflow::data::Target;
use glowflow::error::InputError;
use glowflow::models::{GlowImageConfig, ModelKind, VectorFlowConfig};
use glowflow::train::checkpoint::RunKind;
use glowflow::train::run_dir::{self, ResumeChanges};
use glowflow::train::stability::StabilityOptions;
use glowflow::train::train_image::ImageTrainOptions;
use glowflow::train::Train2dOptions;

use super::parse;

/// `--device` of the commands that run on one device and say no more about it.
#[derive(Args, Debug)]
pub struct DeviceFlag {
    #[arg(long, default_value = "flex")]
    pub device: String,
}

impl DeviceFlag {
    /// The device's name as given.
    pub fn name(&self) -> &str {
        &self.device
    }

    /// The device itself.
    pub fn open(&self) -> Result<burn::tensor::Device> {
        device(&self.device)
    }
}

/// Training-stability flags shared by `train`, `train2d` and `compare` (their defaults differ:
/// see each command's help).
#[derive(Args, Debug, Clone)]
pub struct StabilityArgs {
    /// Clip the global gradient L2 norm to this value; 0 turns clipping off
    /// [default: train 50, train2d/compare 0].
    #[arg(long, value_parser = parse::threshold)]
    pub clip_grad_norm: Option<f64>,
    /// Decay of the exponential moving average of the weights used for evaluation and samples;
    /// 0 turns it off [default: train 0.999, train2d/compare 0].
    #[arg(long, value_parser = parse::decay)]
    pub ema_decay: Option<f64>,
    /// Stop after this many consecutive steps skipped for a non-finite loss, gradient or update
    /// [default: 20].
    #[arg(long, value_parser = parse::count::<1, 1_000_000>)]
    pub max_skips: Option<usize>,
    /// Optimizer [default: adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<glowflow::train::stability::OptimizerKind>,
    /// Decoupled weight decay (AdamW): each step multiplies every parameter of two or more
    /// dimensions (weight matrices, convolution kernels, a learned top prior) by
    /// 1 - lr * WEIGHT_DECAY; biases, ActNorm and scales do not decay [default: 0].
    #[arg(long, value_parser = parse::weight_decay)]
    pub weight_decay: Option<f64>,
}

impl StabilityArgs {
    pub fn options(&self, defaults: StabilityOptions) -> StabilityOptions {
        StabilityOptions {
            clip_grad_norm: self.clip_grad_norm.unwrap_or(defaults.clip_grad_norm),
            ema_decay: self.ema_decay.unwrap_or(defaults.ema_decay),
            max_skips: self.max_skips.unwrap_or(defaults.max_skips),
            optimizer: self.optimizer.unwrap_or(defaults.optimizer),
            weight_decay: self.weight_decay.unwrap_or(defaults.weight_decay),
        }
    }
}

/// The library's defaults, the one place they are written: image Glow's recipe and model, the
/// vector flows' recipe and model. Flags show and take them.
pub fn image_recipe() -> ImageTrainOptions {
    ImageTrainOptions::recipe(String::new())
}

pub fn image_model() -> GlowImageConfig {
    GlowImageConfig::new(1, 32, 32)
}

pub fn vector_recipe() -> Train2dOptions {
    Train2dOptions::new(Target::Normals)
}

pub fn vector_model() -> VectorFlowConfig {
    VectorFlowConfig::new(ModelKind::Glow)
}

/// `--threads` (at least 1: its parser checks): data-parallel shards, one thread each. CPU
/// cores by default; a GPU gets the whole batch in one piece (shards only help CPU cores).
pub fn thread_count(threads: Option<usize>, device: &str) -> usize {
    match threads {
        Some(t) => t,
        None if device.starts_with("cuda") => 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// `--device` of a training command: the model's device and, for a list of GPUs, the others
/// (data-parallel replicas).
pub fn train_devices(names: &str) -> Result<(burn::tensor::Device, Vec<burn::tensor::Device>)> {
    let mut devices = glowflow::devices_by_name(names)?;
    let first = devices.remove(0);
    cpu_default(&first);
    Ok((first, devices))
}

/// `--device` of a one-device command.
pub fn device(name: &str) -> Result<burn::tensor::Device> {
    let d = glowflow::device_by_name(name)?;
    cpu_default(&d);
    Ok(d)
}

/// With the CPU chosen in a CUDA build, make it burn's default device too (`BURN_DEVICE`,
/// unless set): burn creates some state on its default device (the optimizer state read on
/// resume), which such a build takes to be a GPU that may not exist. Called while the process
/// has one thread, before any work.
pub fn cpu_default(device: &burn::tensor::Device) {
    #[cfg(feature = "cuda")]
    if glowflow::tensor_util::is_flex_device(device) && std::env::var_os("BURN_DEVICE").is_none() {
        std::env::set_var("BURN_DEVICE", "flex");
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// Print a result as pretty JSON on stdout; a failed write (a closed pipe, a full disk) is an
/// error, not a panic.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write the result to standard output: {e}"))
}

/// A path made absolute against the working directory (kept as given when that fails; the
/// reader then names it).
pub fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Refuse a path that is not valid UTF-8: a run stores its paths in `state.json` (JSON text), so
/// such a run would train to the end and then fail to save.
pub fn check_utf8_paths(paths: &[(&str, Option<&std::path::Path>)]) -> Result<()> {
    for (flag, p) in paths {
        if let Some(p) = p.filter(|p| p.to_str().is_none()) {
            let why = "is not valid UTF-8; a run records its paths as text in state.json (rename the file or folder)";
            return Err(InputError::flag(flag, p.display(), why).into());
        }
    }
    Ok(())
}

/// The output directory of a training command: `--out`, else with `--resume` the resumed run's
/// own directory, else `default`.
pub fn out_dir(out: &Option<PathBuf>, resume: &Option<PathBuf>, default: &str) -> PathBuf {
    match (out, resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => run_dir::run_dir_of(r),
        (None, None) => PathBuf::from(default),
    }
}

/// The flags given on the command line (not defaults), as typed (`--lr`), with their values.
pub fn given_flags(m: &ArgMatches) -> Vec<(String, String)> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| {
            let value = m
                .get_raw(id.as_str())
                .map(|v| {
                    v.map(|x| x.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            (format!("--{}", id.as_str().replace('_', "-")), value)
        })
        .collect()
}

/// With `--resume`: the changes of the flags given, from the library's one list of what a
/// resume of a run of `kind` may change ([`ResumeChanges`]); any other flag is refused by name.
pub fn resume_changes(given: &[(String, String)], kind: RunKind) -> Result<ResumeChanges> {
    let options: Vec<(String, &str)> = given
        .iter()
        .filter(|(f, _)| !RESUME_NEUTRAL_FLAGS.contains(&f.as_str()))
        .map(|(f, v)| (f.trim_start_matches("--").replace('-', "_"), v.as_str()))
        .collect();
    Ok(ResumeChanges::from_options(
        kind,
        options.iter().map(|(o, v)| (o.as_str(), *v)),
    )?)
}

/// Whether `flag` was given on the command line.
pub fn was_given(given: &[(String, String)], flag: &str) -> bool {
    given.iter().any(|(f, _)| f == flag)
}

/// Flags every `--resume` accepts: where and how the run is continued, not what it computes.
pub const RESUME_NEUTRAL_FLAGS: &[&str] = &["--resume", "--out", "--force", "--quiet", "--device"];

/// Refuse the first of `flags` (in their order) that was given on the command line, with `why`.
pub fn refuse_given(given: &[(String, String)], flags: &[&str], why: &str) -> Result<()> {
    match flags
        .iter()
        .find_map(|flag| given.iter().find(|(f, _)| f == flag))
    {
        Some((flag, v)) => Err(InputError::flag(flag, v, why).into()),
        None => Ok(()),
    }
}
