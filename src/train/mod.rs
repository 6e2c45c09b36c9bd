//! Training: the one loop ([`trainer`]) and each workload's part ([`train2d`], [`train_image`]),
//! the non-finite guard, checkpoints, run directories and their logs.

pub mod checkpoint;
pub mod fit;
pub mod interrupt;
pub mod low_memory;
pub use crate::ops::parallel;
pub mod run_dir;
mod session;
pub mod stability;
pub mod train2d;
pub mod train_image;
pub mod trainer;

pub use fit::{FitOptions, Fitted, FittedImage};
pub use train2d::{train2d, RunIo, Start, Summary, Train2dOptions};
pub use trainer::{Cancel, Hooks, Progress};

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

/// A run's two logs in `out`: `metrics.csv` with `header`, and `grad_norms.csv` (the gradient
/// norm per layer group), each created fresh, or, for a run resumed from the checkpoint at step
/// `resume_from`, appended to after cutting rows past that step (see [`open_metrics`]).
pub fn open_run_logs(
    out: &std::path::Path,
    header: &str,
    resume_from: Option<usize>,
) -> anyhow::Result<(LogFile, LogFile)> {
    Ok((
        open_metrics(&out.join("metrics.csv"), header, resume_from)?,
        open_metrics(
            &out.join("grad_norms.csv"),
            "step,group,grad_norm_max",
            resume_from,
        )?,
    ))
}

/// The metrics CSV of a run: created with `header` for a fresh run, appended to on resume from
/// the checkpoint at step `resume_from`. On resume a missing or empty file gets the header
/// first, a file written with fewer columns (a run saved before some were added) is rewritten
/// with `header`, its old rows padded with empty fields, so the file stays one table, and rows
/// past the checkpoint's step (logged before the run was killed) or torn are cut
/// ([`run_dir::truncate_log`]), so no step appears twice.
pub fn open_metrics(
    path: &std::path::Path,
    header: &str,
    resume_from: Option<usize>,
) -> anyhow::Result<LogFile> {
    use anyhow::Context;
    use std::io::Write;
    let existing = match resume_from {
        None => None,
        Some(_) => std::fs::read_to_string(path).ok().filter(|t| !t.is_empty()),
    };
    match existing {
        None => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(f, "{header}")?;
            Ok(LogFile::new(f, path))
        }
        Some(text) => {
            let old = text.lines().next().unwrap_or_default();
            if old != header {
                let width = header.split(',').count();
                let mut out = format!("{header}\n");
                for row in text.lines().skip(1) {
                    let pad = width.saturating_sub(row.split(',').count());
                    out.push_str(row);
                    out.push_str(&",".repeat(pad));
                    out.push('\n');
                }
                crate::fsutil::write_atomic(path, out.as_bytes())?;
            }
            run_dir::truncate_log(path, resume_from.unwrap_or(0))?;
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(|f| LogFile::new(f, path))
                .with_context(|| format!("cannot open {}", path.display()))
        }
    }
}

/// Write a run's `summary.json`. When the write fails (a full disk), the figures already
/// computed are printed on standard output before the error is returned, so they are never lost.
pub fn save_summary<T: serde::Serialize>(
    summary: &T,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    checkpoint::save_json(summary, path).map_err(|e| {
        use std::io::Write;
        if let Ok(text) = serde_json::to_string_pretty(summary) {
            let _ = writeln!(std::io::stdout(), "{text}");
        }
        e.context(format!(
            "{} not written (the checkpoint is saved; the summary is printed above)",
            path.display()
        ))
    })
}

/// A run log open for appending whose write errors name the file (`metrics.csv: No space left
/// on device`).
pub struct LogFile {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl LogFile {
    fn new(file: std::fs::File, path: &std::path::Path) -> Self {
        LogFile {
            file,
            path: path.to_path_buf(),
        }
    }

    fn named(&self, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
    }
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).map_err(|e| self.named(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().map_err(|e| self.named(e))
    }
}
