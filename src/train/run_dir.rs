//! A run directory (`--out`): one writer at a time (a lock), never replaced without `--force`,
//! and logs cut back to the checkpoint a resumed run continues from.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::checkpoint::{self, RunKind, STATE_FILE};
use crate::error::InputError;

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".glowflow.lock";

/// The exclusive lock of a run directory, held while a process writes into it (released when
/// dropped, or by the operating system when the process dies, even by `kill -9`).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
    /// The locked run directory.
    pub dir: PathBuf,
    /// Whether [`lock`] created the directory: a run refused before writing anything then
    /// leaves no empty folder behind.
    created: bool,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let only_lock = std::fs::read_dir(&self.dir).is_ok_and(|entries| {
            entries
                .flatten()
                .all(|e| e.file_name().to_string_lossy() == LOCK_FILE)
        });
        if only_lock {
            std::fs::remove_file(self.dir.join(LOCK_FILE)).ok();
            std::fs::remove_dir(&self.dir).ok();
        }
    }
}

/// Create `out` if needed and lock it for writing. A second process gets an error naming the
/// directory, the flag it came from (`--out`) and the holder's process id. Then repairs what an
/// earlier, killed writer may have left: a checkpoint moved aside, temporary files.
pub fn lock(out: &Path) -> Result<RunLock> {
    let created = !out.exists();
    std::fs::create_dir_all(out)
        .map_err(|e| InputError::option("out", out.display(), format!("cannot create: {e}")))?;
    let path = out.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| InputError::option("out", out.display(), format!("cannot lock: {e}")))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            let holder = holder.trim();
            return Err(InputError::option(
                "out",
                out.display(),
                format!(
                    "another glowflow process{} is writing this run directory; wait for it to \
                     finish or choose another `out`",
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    }
                ),
            )
            .into());
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(
                InputError::option("out", out.display(), format!("cannot lock: {e}")).into(),
            )
        }
    }
    file.set_len(0).ok();
    file.rewind().ok();
    write!(file, "{}", std::process::id()).ok();
    crate::fsutil::remove_stale_temps(out);
    checkpoint::recover(out)?;
    Ok(RunLock {
        _file: file,
        dir: out.to_path_buf(),
        created,
    })
}

/// What an existing run in `out` looks like (`checkpoint at step 1200`), or `None` when `out`
/// holds no run.
pub fn existing_run(out: &Path) -> Option<String> {
    let ck = checkpoint::locate(out);
    if ck.join(STATE_FILE).exists() {
        let step = checkpoint::load_json::<serde_json::Value>(&ck.join(STATE_FILE))
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
        return Some(match step {
            Some(s) => format!("a run with a checkpoint at step {s}"),
            None => "a run with a checkpoint".into(),
        });
    }
    ["metrics.csv", "summary.json", "compare.json"]
        .iter()
        .find(|f| out.join(f).exists())
        .map(|f| format!("a run ({f})"))
}

use crate::fsutil::RUN_OUTPUTS;

/// Before a fresh run writes into `out` (locked by the caller): refuse when it already holds a
/// run, unless `force`, in which case the old run's checkpoint, logs and frames are removed
/// (other files in the folder are left alone).
pub fn prepare_fresh(out: &Path, force: bool) -> Result<()> {
    if let Some(what) = existing_run(out) {
        if !force {
            return Err(InputError::option(
                "out",
                out.display(),
                format!(
                    "already holds {what}; continue it with `resume` {} or replace it with `force`",
                    out.display()
                ),
            )
            .into());
        }
        for name in RUN_OUTPUTS {
            let p = out.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else if p.exists() {
                std::fs::remove_file(&p)
            } else {
                Ok(())
            }
            .with_context(|| format!("`force`: cannot remove {}", p.display()))?;
        }
        if let Ok(entries) = std::fs::read_dir(out) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("samples_") && name.ends_with(".png") {
                    std::fs::remove_file(e.path()).ok();
                }
            }
        }
    }
    Ok(())
}

/// The run directory a `--resume` path names: the path itself, or the folder above it when it is
/// a checkpoint folder.
pub fn run_dir_of(resume: &Path) -> PathBuf {
    let ck = checkpoint::locate(resume);
    if ck == resume && resume.join(STATE_FILE).exists() {
        resume
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    } else {
        resume.to_path_buf()
    }
}

pub use crate::fsutil::same_path;

/// Cut a CSV log whose first column is the step back to the rows of steps `<= step` (the
/// checkpoint a run resumes from), dropping torn rows (a wrong field count, a step that is not a
/// number, a last line without its newline). Rewrites the file atomically when anything is cut.
pub fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    // `split` leaves "" after a final newline; anything else there is a torn last row.
    lines.pop();
    let Some((header, rows)) = lines.split_first() else {
        return Ok(());
    };
    let width = header.split(',').count();
    let keep: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|r| {
            let fields: Vec<&str> = r.split(',').collect();
            fields.len() == width && fields[0].parse::<usize>().is_ok_and(|s| s <= step)
        })
        .collect();
    if keep.len() == rows.len() && text.ends_with('\n') {
        return Ok(());
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(header);
    out.push('\n');
    for r in keep {
        out.push_str(r);
        out.push('\n');
    }
    crate::fsutil::write_atomic(path, out.as_bytes())
}

/// Defines [`ResumeChanges`] from one list: each option a resume may change, its type and the
/// kinds of run it applies to.
macro_rules! resume_changes {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty => [$($kind:ident),+],)+) => {
        /// Settings a resumed run may change; every other setting is part of the saved run. Each
        /// change is applied from the resumed step on and recorded in the checkpoint
        /// (`resumes`). The list is the one place that says what a resume may change: the
        /// command line reads it ([`ResumeChanges::from_options`]) and a resume refuses a change
        /// its kind of run does not take ([`ResumeChanges::check`]).
        #[derive(Clone, Debug, Default)]
        pub struct ResumeChanges {
            $($(#[doc = $doc])* pub $name: Option<$ty>,)+
        }

        impl ResumeChanges {
            /// Every option of the list with the kinds of run it applies to.
            pub const OPTIONS: &'static [(&'static str, &'static [RunKind])] =
                &[$((stringify!($name), &[$(RunKind::$kind),+]),)+];

            /// The changes of `given` (option name, value as text) for a run of `kind`. An option
            /// that a resume of this kind may not change, or a value that does not parse, is an
            /// [`InputError`] naming it.
            pub fn from_options<'a>(
                kind: RunKind,
                given: impl IntoIterator<Item = (&'a str, &'a str)>,
            ) -> Result<Self, InputError> {
                let mut changes = ResumeChanges::default();
                for (option, value) in given {
                    match option {
                        $(stringify!($name) if [$(RunKind::$kind),+].contains(&kind) => {
                            changes.$name = Some(value.parse().map_err(|e| {
                                InputError::option(option, value, format!("{e}"))
                            })?);
                        })+
                        _ => return Err(InputError::option(option, value, Self::refusal(kind))),
                    }
                }
                Ok(changes)
            }

            /// Refuse a change that a run of `kind` does not take, naming it.
            pub fn check(&self, kind: RunKind) -> Result<(), InputError> {
                $(if self.$name.is_some() && ![$(RunKind::$kind),+].contains(&kind) {
                    return Err(InputError::option(stringify!($name), "", Self::refusal(kind)));
                })+
                Ok(())
            }
        }
    };
}

resume_changes! {
    /// A new total step count.
    steps: usize => [Vector, Image],
    /// A new (base) learning rate.
    lr: f64 => [Vector, Image],
    /// A new StepLR period.
    lr_step: usize => [Vector],
    /// A new StepLR factor.
    lr_gamma: f64 => [Vector],
    /// The data at a new place (the same rows or images: checked by their fingerprint).
    data: String => [Vector, Image],
    /// A training-time limit in minutes for this invocation.
    time_limit: f64 => [Image],
    /// Data-parallel threads: allowed, but results then differ from an uninterrupted run in
    /// float32 summation order (a note says so).
    threads: usize => [Vector, Image],
    /// A new checkpoint interval.
    checkpoint_every: usize => [Vector, Image],
    /// A new sample-grid period.
    sample_every: usize => [Image],
    /// A new test-image limit.
    test_limit: usize => [Image],
    /// Invertible backpropagation on (`true`) or off: the same gradients up to float32
    /// round-off, less memory (the command line's `--low-memory` switches it on; a program's
    /// `fit` sets what it is given).
    low_memory: bool => [Image],
    /// New held-out points of a target run.
    test_samples: usize => [Vector],
    /// A new number of density frames.
    frames: usize => [Vector],
}

impl ResumeChanges {
    /// The options a resume of a run of `kind` may change.
    pub fn options(kind: RunKind) -> Vec<&'static str> {
        Self::OPTIONS
            .iter()
            .filter(|(_, kinds)| kinds.contains(&kind))
            .map(|(name, _)| *name)
            .collect()
    }

    fn refusal(kind: RunKind) -> String {
        let names: Vec<String> = Self::options(kind)
            .iter()
            .map(|o| format!("`{o}`"))
            .collect();
        format!(
            "may not be given on `resume`, even with the run's own value: it is part of the \
             saved run (its checkpoint's state.json); a resume may change only {}",
            names.join(", ")
        )
    }
}

/// One resume of a run, as recorded in its `state.json`: the step it continued from and what
/// changed (`lr 0.001 -> 0.0003`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResumeRecord {
    /// The step the resume started from.
    pub step: usize,
    /// What it changed, as `name: old -> new`.
    pub changes: Vec<String>,
}

/// Set `*slot` to `new` when given and different, recording `name old -> new` in `changes`.
pub fn apply_change<T: PartialEq + std::fmt::Display + Clone>(
    changes: &mut Vec<String>,
    name: &str,
    slot: &mut T,
    new: Option<T>,
) {
    if let Some(v) = new {
        if *slot != v {
            changes.push(format!("{name} {} -> {v}", slot));
            *slot = v;
        }
    }
}

/// [`apply_change`] for each named field, the same name in the options and in
/// [`ResumeChanges`]: `apply_changes!(changed, opts, changes; steps, lr)`.
macro_rules! apply_changes {
    ($changed:expr, $opts:expr, $changes:expr; $($field:ident),+) => {
        $($crate::train::run_dir::apply_change(
            &mut $changed,
            stringify!($field),
            &mut $opts.$field,
            $changes.$field,
        );)+
    };
}
pub(crate) use apply_changes;

/// The note printed when a resume changes the thread count.
pub fn threads_note(old: usize, new: usize) {
    eprintln!(
        "note: {}",
        crate::error::name_options(&format!(
            "`threads` {new} differs from the run's {old}: the resumed run is no longer \
             bit-identical to an uninterrupted one (float32 sums in another order)"
        ))
    );
}
