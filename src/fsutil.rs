//! File writing that never leaves a half-written file behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::InputError;

/// Temporary files of [`write_atomic`] calls in progress, so an interrupt can remove them
/// ([`exit_removing_pending_temps`]) before the process exits.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Remove the temporary files of every [`write_atomic`] call in progress, tell `say` how many
/// were removed, and exit the process with `code`. The signal handler calls this, so an
/// interrupted `sample` or `score` leaves no `.NAME.tmpPID` behind; the targets are untouched
/// (each keeps its previous contents, stays absent, or was already renamed whole). The registry
/// stays locked until the exit, so no write can start a new temporary file in between.
pub fn exit_removing_pending_temps(code: i32, say: impl FnOnce(usize)) -> ! {
    let mut list = pending();
    let removed = list
        .drain(..)
        .filter(|tmp| std::fs::remove_file(tmp).is_ok())
        .count();
    say(removed);
    std::process::exit(code)
}

/// A float as a CSV field: Rust's shortest round-trip decimal (every digit kept) for
/// magnitudes in [1e-6, 1e16) and zero, scientific notation (`-4.5e76`) outside it, so an
/// extreme score is not written as a 77-digit number. Both forms read back exactly.
pub fn csv_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || (1e-6..1e16).contains(&a) || !v.is_finite() {
        v.to_string()
    } else {
        format!("{v:e}")
    }
}

/// Write a CSV file (`header`, then `rows`) atomically (see [`write_atomic`]).
///
/// # Errors
/// A failed write, naming nothing more than the I/O error (callers name the flag or file).
pub fn write_csv<H, R, I, S>(path: &Path, header: &[H], rows: R) -> Result<()>
where
    H: AsRef<[u8]>,
    R: IntoIterator<Item = I>,
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        w.write_record(row)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, &bytes)
}

/// Write `bytes` to `path` through a temporary file in the same directory and an atomic rename,
/// so a crash mid-write keeps the previous file intact. On an error (a full disk) the temporary
/// file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // Created and registered under the registry's lock: an interrupt either sees the file in
    // the registry or runs before it exists (and then exits before it can be created).
    let file = {
        let mut list = pending();
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        list.push(tmp.clone());
        f
    };
    let result = write_to(file, &tmp, bytes).and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    pending().retain(|p| p != &tmp);
    result
}

/// Create `path` with `bytes` and flush it to the disk (`fsync`), so a later rename publishes
/// complete contents even after a power cut.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    write_to(f, path, bytes)
}

/// Write `bytes` to the new file `f` (at `path`, for messages) and flush it to the disk.
fn write_to(mut f: std::fs::File, path: &Path, bytes: &[u8]) -> Result<()> {
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot write {} (sync)", path.display()))
}

/// Flush a directory's entries (renames into it) to the disk; best effort.
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        f.sync_all().ok();
    }
}

/// Remove the temporary files `.NAME.tmpPID` that [`write_atomic`] calls killed mid-write left
/// in `dir`. Call only while holding the directory's run lock.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = name.starts_with('.')
            && name
                .rsplit_once(".tmp")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if stale && e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(e.path()).ok();
        }
    }
}

/// Serde helper for float fields that JSON writes as `null` when they are NaN: reads `null`
/// back as NaN, so a summary with a non-finite figure stays loadable.
pub fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The files and folders a training run writes into its directory (besides `samples_*.png`
/// grids and `frames/`), which `--force` removes and no command's output may replace.
pub const RUN_OUTPUTS: &[&str] = &[
    "checkpoint",
    ".checkpoint.old",
    "metrics.csv",
    "grad_norms.csv",
    "previews.csv",
    "summary.json",
    "frames",
    "compare.json",
    "compare.md",
    "compare.png",
    "split.csv",
    "corner.png",
    "loss.png",
    "target.png",
    "samples.png",
    "density.png",
    "training.gif",
];

/// `p` as an absolute path with symbolic links resolved as far as it exists (a file that does
/// not exist yet keeps its name under its resolved folder).
fn resolved(p: &Path) -> std::path::PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (parent.canonicalize(), p.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => p.to_path_buf(),
    }
}

/// Whether `p` names a file of a training run: one of [`RUN_OUTPUTS`] or a `samples_*.png`
/// grid in a folder that holds a run, or anything inside a run's checkpoint folder (a folder
/// with a `state.json`).
fn is_run_file(p: &Path) -> bool {
    let p = resolved(p);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return false;
    };
    let holds_run = |d: &Path| {
        d.join("checkpoint").join("state.json").exists()
            || d.join("metrics.csv").exists()
            || d.join("summary.json").exists()
    };
    let in_checkpoint = dir.join("state.json").exists();
    let named_like_run_file =
        RUN_OUTPUTS.contains(&name) || (name.starts_with("samples_") && name.ends_with(".png"));
    in_checkpoint || (holds_run(dir) && named_like_run_file)
}

/// Refuse outputs that would destroy something: an output that is one of the command's
/// inputs, the same file as another of its outputs, a directory, or a file of a training run
/// (its checkpoint, `state.json`, `metrics.csv`, `summary.json`, ...). `outputs` and `inputs`
/// are `(flag, path)` pairs; the error names the output's flag and what it would replace.
///
/// # Errors
/// [`InputError::Flag`](crate::error::InputError) naming the output's flag (exit code 2).
pub fn check_outputs(
    outputs: &[(&str, &Path)],
    inputs: &[(&str, &Path)],
) -> Result<(), crate::error::InputError> {
    use crate::error::InputError;
    for (i, (flag, out)) in outputs.iter().enumerate() {
        let r = resolved(out);
        if out.is_dir() {
            let why = "is a directory; give the name of a file to write";
            return Err(InputError::option(flag, out.display(), why));
        }
        if let Some((in_flag, _)) = inputs.iter().find(|(_, p)| resolved(p) == r) {
            let why = format!("is the same file as {in_flag}: writing it would destroy the input");
            return Err(InputError::option(flag, out.display(), why));
        }
        if let Some((other, _)) = outputs[..i].iter().find(|(_, p)| resolved(p) == r) {
            let why = format!("is the same file as {other}: one output would replace the other");
            return Err(InputError::option(flag, out.display(), why));
        }
        if is_run_file(out) {
            let why = "is a file of a training run (its checkpoint, state, logs or summary): writing it would destroy the run; choose another file name";
            return Err(InputError::option(flag, out.display(), why));
        }
    }
    Ok(())
}

/// Whether two paths name the same file or directory (after resolving links and `..`).
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A module's parameters as safetensors bytes.
pub fn model_bytes<M: Module + ModuleSnapshot>(model: &M) -> Result<Vec<u8>> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot serialise weights: {e:?}"))?;
    store
        .get_bytes()
        .map_err(|e| anyhow::anyhow!("cannot serialise weights: {e:?}"))
}

/// Load safetensors `bytes` (read from `path`, named in errors) into `model`, which must have
/// the same structure (weights of a checkpoint older than format 3 lack ActNorm's flags: load
/// those through `Checkpoint::load_model`, which restores them).
pub fn model_from_bytes<M: Module + ModuleSnapshot>(
    model: M,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<M> {
    weights_from_bytes(model, bytes, path, None, "")
}

/// [`model_from_bytes`], for a checkpoint older than format 3 when `legacy` is given (the flags
/// and the `state.json` that kept them): its weights lack ActNorm's `initialized` buffers, which
/// are set from those flags (in module order).
pub(crate) fn weights_from_bytes<M: Module + ModuleSnapshot>(
    mut model: M,
    bytes: Vec<u8>,
    path: &Path,
    legacy: Option<(&[bool], &Path)>,
    legacy_key: &str,
) -> Result<M> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes)).allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| InputError::file(path, None, format!("cannot load weights: {e:?}")))?;
    let mut missing = result.missing;
    if let Some((flags, state)) = legacy {
        missing.retain(|(p, _)| !p.ends_with(".initialized"));
        model = crate::tensor_util::set_flags(model, "initialized", flags).map_err(|e| {
            let at = Some(format!("field {legacy_key}"));
            InputError::file(state, at, format!("{e} in {}", path.display()))
        })?;
    }
    if !result.errors.is_empty() || !missing.is_empty() {
        return Err(InputError::file(
            path,
            None,
            format!(
                "weights do not match the model (missing: {:?}, errors: {:?})",
                missing, result.errors
            ),
        )
        .into());
    }
    Ok(model)
}

/// Load a safetensors weights file (e.g. a checkpoint's `model.safetensors`, without the
/// checkpoint's hash check: see `Checkpoint::load_model`) into `model` (same structure).
pub fn load_model<M: Module + ModuleSnapshot>(model: M, path: &Path) -> Result<M> {
    let bytes = std::fs::read(path)
        .map_err(|e| InputError::file(path, None, format!("cannot read weights: {e}")))?;
    model_from_bytes(model, bytes, path)
}

/// Write `value` as pretty JSON at `path`, atomically (temporary file, fsync, rename).
pub fn save_json<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    crate::fsutil::write_atomic(path, text.as_bytes())
}

/// Read JSON from `path`; errors name the file and what did not parse.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::file(path, None, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| {
        InputError::file(
            path,
            Some(format!("line {}", e.line())),
            format!("malformed: {e}"),
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::csv_number;

    #[test]
    fn csv_numbers_read_back_exactly_and_stay_short() {
        for v in [
            0.0,
            -3.5625,
            1e-6,
            123456.789,
            9.99e15,
            -4.5e76,
            3e-300,
            f64::MIN_POSITIVE,
            -1e16,
        ] {
            let s = csv_number(v);
            assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
            assert!(s.len() <= 24, "{s}");
        }
        assert_eq!(csv_number(-4.5e76), "-4.5e76");
        assert_eq!(csv_number(-3.5625), "-3.5625");
        assert_eq!(csv_number(f64::NEG_INFINITY), "-inf");
    }
}
