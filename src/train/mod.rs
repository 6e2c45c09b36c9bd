//! Training loops, evaluation, checkpoints.

pub mod adam;
pub mod checkpoint;
pub mod data2d;
pub mod eval2d;
pub mod parallel;
pub mod stability;
pub mod train2d;
pub mod train_image;

pub use train2d::{train2d, RunIo, Start, Summary, Train2dOptions};

/// A progress bar (step, message, ETA) when `enabled`.
pub fn progress_bar(enabled: bool, len: u64, pos: u64) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (eta {eta})",
        )
        .expect("valid progress template")
        .progress_chars("=> "),
    );
    b.set_position(pos);
    Some(b)
}

/// The metrics CSV of a run: created with `header` for a fresh run, appended to on resume.
pub fn open_metrics(
    path: &std::path::Path,
    header: &str,
    fresh: bool,
) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    use std::io::Write;
    if fresh {
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        writeln!(f, "{header}")?;
        Ok(f)
    } else {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))
    }
}
