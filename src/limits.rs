//! Bounds on every size and number glowflow accepts, checked once where a value enters (a flag,
//! a checkpoint's `state.json`, a file header), and memory estimates checked before a large
//! allocation, so a bad value is an error naming it rather than a hang, an abort or garbage.

use crate::error::FieldError;

/// Multi-scale levels: each squeezes by 2, so 2^12 = 4096-pixel sides at most.
pub const MAX_LEVELS: usize = 12;
/// Image side after padding or resizing, in pixels.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// Flow steps per level (image) or in total (2D).
pub const MAX_FLOW_STEPS: usize = 1024;
/// Hidden width of a coupling network (channels or units).
pub const MAX_WIDTH: usize = 65_536;
/// Hidden layers of a 2D coupling network.
pub const MAX_MLP_DEPTH: usize = 64;
/// Training steps of one run.
pub const MAX_STEPS: usize = 1_000_000_000;
/// Learning rate (a huge rate diverges and the step guard stops the run, naming the step).
pub const MAX_LR: f64 = 1e9;
/// Data-parallel threads.
pub const MAX_THREADS: usize = 1024;

/// An integer in `lo..=hi`, or the error naming `field` and the `option` that sets it.
pub fn count(
    field: &'static str,
    option: &'static str,
    value: usize,
    lo: usize,
    hi: usize,
) -> Result<(), FieldError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else if value < lo {
        Err(FieldError::new(
            field,
            option,
            value,
            format!("must be at least {lo}"),
        ))
    } else {
        Err(FieldError::new(
            field,
            option,
            value,
            format!("must be at most {hi}"),
        ))
    }
}

/// A finite number with `lo < value <= hi` (`lo_open`) or `lo <= value <= hi`.
pub fn number(
    field: &'static str,
    option: &'static str,
    value: f64,
    lo: f64,
    lo_open: bool,
    hi: f64,
) -> Result<(), FieldError> {
    let above = if lo_open { value > lo } else { value >= lo };
    if value.is_finite() && above && value <= hi {
        Ok(())
    } else {
        let low = if lo_open { "(" } else { "[" };
        Err(FieldError::new(
            field,
            option,
            value,
            format!("must be a finite number in {low}{lo}, {hi}]"),
        ))
    }
}

/// Memory the system can still give this process, in bytes (`MemAvailable` of
/// `/proc/meminfo`); `None` where unknown (then no memory check is made).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// An error message when `bytes` (an estimate of what a request needs) exceeds the available
/// memory; `None` when it fits or the available memory is unknown.
pub fn memory_shortfall(bytes: f64) -> Option<String> {
    let avail = available_memory()? as f64;
    (bytes > avail).then(|| {
        format!(
            "needs about {} of memory, {} is available",
            human_bytes(bytes),
            human_bytes(avail)
        )
    })
}

/// `1.5 GiB` style.
pub fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}
