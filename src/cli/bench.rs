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
    let r = crate::bench::run(
        a.workload,
        steps,
        a.warmup,
        threads,
        a.device.name(),
        &device,
    )?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        use crate::bench::Workload as W;
        outln!(
            "{}: {:.2} ms/step (median {:.2}), {:.2} steps/s ({:.0} {}/s), peak RSS {} MiB [{} steps after {} warm-up, {} threads, {}; {}; gemm {}, element-wise {}]",
            a.workload.name(),
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
