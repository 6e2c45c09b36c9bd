//! `bench`: time a fixed workload (training steps or generation); speed and peak memory.

use anyhow::Result;
use clap::Args;

use glowflow::limits::MAX_THREADS;

use super::common::{thread_count, DeviceFlag};
use super::parse;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum)]
    pub workload: crate::bench::Workload,
    /// Timed steps (default: per workload, a few seconds' worth).
    #[arg(long, value_parser = parse::count::<1, 1_000_000>)]
    pub steps: Option<usize>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3, value_parser = parse::count::<0, 1_000_000>)]
    pub warmup: usize,
    /// CPU threads (default: all cores): data-parallel shards of the 2D workloads and the size
    /// of the backend's thread pool.
    #[arg(long, value_parser = parse::count::<1, MAX_THREADS>)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Image training workloads (image, paper-cifar): invertible backpropagation, as
    /// `train --low-memory`.
    #[arg(long)]
    pub low_memory: bool,
    /// Image training workloads: flow steps per level instead of the workload's own (peak
    /// memory against depth).
    #[arg(long, value_parser = parse::count::<1, { glowflow::limits::MAX_FLOW_STEPS }>)]
    pub steps_per_level: Option<usize>,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let threads = thread_count(a.threads, a.device.name());
    // The backend's pool (rayon) reads this when it first starts, which is after this point.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let device = a.device.open()?;
    let steps = a.steps.unwrap_or_else(|| a.workload.default_steps());
    use crate::bench::Workload as W;
    if !matches!(a.workload, W::Image | W::PaperCifar) {
        let why = "applies to the image training workloads (image, paper-cifar) only";
        if a.low_memory {
            return Err(glowflow::error::InputError::flag("--low-memory", "", why).into());
        }
        if let Some(k) = a.steps_per_level {
            return Err(glowflow::error::InputError::flag("--steps-per-level", k, why).into());
        }
    }
    let image = crate::bench::ImageOptions {
        low_memory: a.low_memory,
        steps_per_level: a.steps_per_level,
    };
    let r = crate::bench::run(
        a.workload,
        image,
        steps,
        a.warmup,
        threads,
        a.device.name(),
        &device,
    )?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!(
            "{}{}{}: {:.2} ms/step (median {:.2}), {:.2} steps/s ({:.0} {}/s), peak RSS {} MiB [{} steps after {} warm-up, {} threads, {}; {}; gemm {}, element-wise {}]",
            a.workload.name(),
            a.steps_per_level.map_or(String::new(), |k| format!(" (K = {k})")),
            if a.low_memory { " --low-memory" } else { "" },
            r.ms_per_step,
            r.ms_per_step_median,
            r.steps_per_s,
            r.rows_per_s,
            match a.workload {
                W::ProbeImage | W::Image | W::PaperCifar | W::Sample => "images",
                W::DensityGrid => "grid points",
                _ => "points",
            },
            r.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0}")),
            r.steps,
            r.warmup,
            r.threads,
            r.backend,
            r.cpu.as_deref().unwrap_or("unknown CPU"),
            r.simd.gemm,
            r.simd.elementwise
        );
    }
    Ok(())
}
