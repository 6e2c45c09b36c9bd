//! Checkpoints: a folder `checkpoint/` holding `model.safetensors` (weights and fixed buffers),
//! `ema.safetensors` (the weight average, when the recipe keeps one), `optimizer.bpk` (the
//! optimizer's moments, keyed by the model's stable parameter ids) and `state.json` (config,
//! options, step, ... and the SHA-256 of every other file). ActNorm's initialised flags are
//! buffers in the weights (format 3); older checkpoints kept them in `state.json`.
//!
//! A checkpoint is one unit, all old or all new: a save writes every file into a fresh hidden
//! folder (`.checkpoint.new<pid>`), syncs it, then moves the previous checkpoint aside
//! (`.checkpoint.old`) and the new one into place, and only then deletes the old one. A process
//! killed at any point leaves either the previous or the new checkpoint complete; a reader
//! finds the previous one under `.checkpoint.old` in the one window where `checkpoint/` is
//! missing, and the next save restores it. Loading checks every file against the hashes in
//! `state.json`, so a file from another run or another save is refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleSnapshot;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::error::InputError;

/// The trained weights (safetensors).
pub const MODEL_FILE: &str = "model.safetensors";
/// Adam's (or Adamax's) moments and step count.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// The run state: config, options, step, the files' SHA-256 and the format version.
pub const STATE_FILE: &str = "state.json";
/// The exponential moving average of the weights (same structure as `model.safetensors`, in
/// float64: the average's accumulators, so a resumed run continues it exactly).
pub const EMA_FILE: &str = "ema.safetensors";
/// The key of `state.json` that lists the checkpoint's other files and their SHA-256.
pub const FILES_KEY: &str = "files";

/// Key of `state.json` holding the checkpoint format version (absent: format 1).
pub const FORMAT_KEY: &str = "format";

/// The checkpoint format this build writes. 1: state and weights (no version key);
/// 2: adds `format`, vector models' `dim`/`context`/`standardize` and their standardisation
/// buffers, class-conditional image models' `classes` and class prior/head; 3: every ActNorm's
/// initialised flag is a buffer in the weights instead of `state.json`'s `actnorm_initialized`
/// (older checkpoints load: their flags move into the weights, see [`Checkpoint::load_model`]);
/// 4: one vocabulary (see [`crate::error`]): vector models' `layers`/`hidden`/`depth`/`dim` are
/// `flow_steps`/`net_width`/`net_depth`/`features`, image models' `depth`/`hidden` are
/// `steps_per_level`/`net_width`, both runs' `batch` is `batch_size`, and `kind` tags the run
/// (older names load as aliases). Every format up to this one loads; a newer one is refused
/// with its number.
pub const FORMAT_VERSION: u64 = 4;
/// Key of a format 1 or 2 `state.json` holding every ActNorm's initialised flag.
const LEGACY_FLAGS_KEY: &str = "actnorm_initialized";
/// Where the previous checkpoint waits while the new one is moved into place.
const OLD_DIR: &str = ".checkpoint.old";
const NEW_PREFIX: &str = ".checkpoint.new";

/// An error naming `path` when `model` holds a NaN or infinite parameter: such weights are never
/// written to a checkpoint, and never evaluated or sampled from.
pub fn refuse_nonfinite<M: Module>(model: &M, path: &Path) -> Result<()> {
    if let Some(p) = crate::tensor_util::first_nonfinite_param(model) {
        bail!(
            "{}: parameter {p} holds non-finite values (NaN or infinity); these weights are unusable",
            path.display()
        );
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

use crate::fsutil::weights_from_bytes;
pub use crate::fsutil::{load_json, load_model, model_bytes, model_from_bytes, save_json};

/// What a run trains: a vector flow (`train2d`, the library's `VectorFlow::fit`) or image Glow
/// (`train`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// A vector flow on a 2D target or a table.
    Vector,
    /// Multi-scale Glow on images.
    Image,
}

/// The kind of the run or checkpoint in `dir`: its `state.json`'s `kind`, or for a run saved
/// before the kind was recorded, what its model config holds (flow steps `layers` and no image
/// `channels`: a vector flow).
///
/// # Errors
/// A missing or damaged checkpoint (naming it).
pub fn run_kind(dir: &Path) -> Result<RunKind> {
    let (_, v) = Checkpoint::open::<serde_json::Value>(dir)?;
    Ok(kind_of_state(&v).unwrap_or(RunKind::Image))
}

/// The kind a `state.json` records, or for one saved before it was recorded, what its model
/// config holds (image `channels`: image Glow; flow steps `layers`: a vector flow).
fn kind_of_state(state: &serde_json::Value) -> Option<RunKind> {
    if let Ok(kind) = serde_json::from_value::<RunKind>(state["kind"].clone()) {
        return Some(kind);
    }
    match &state["model"] {
        m if m.get("channels").is_some() => Some(RunKind::Image),
        m if m.get("flow_steps").is_some() || m.get("layers").is_some() => Some(RunKind::Vector),
        _ => None,
    }
}

/// The checkpoint folder of a run directory.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// The checkpoint folder named by `dir`: `dir` itself when it holds a `state.json`, else its
/// `checkpoint/` folder, else (a save was interrupted between its two renames) the previous
/// checkpoint waiting in `.checkpoint.old/`.
pub fn locate(dir: &Path) -> PathBuf {
    if dir.join(STATE_FILE).exists() {
        return dir.to_path_buf();
    }
    let ck = checkpoint_dir(dir);
    let old = dir.join(OLD_DIR);
    if !ck.join(STATE_FILE).exists() && old.join(STATE_FILE).exists() {
        return old;
    }
    ck
}

/// A saved checkpoint opened for reading: its folder and the hashes its `state.json` lists
/// (none for checkpoints written before hashes were kept).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The checkpoint folder.
    pub dir: PathBuf,
    hashes: Option<BTreeMap<String, String>>,
    /// Formats 1 and 2: the ActNorm flags `state.json` kept beside the weights.
    legacy_flags: Option<Vec<bool>>,
}

impl Checkpoint {
    /// Open the checkpoint of a run directory (or a checkpoint folder) and parse its
    /// `state.json` as `T`. Errors name the file.
    pub fn open<T: DeserializeOwned>(dir: &Path) -> Result<(Checkpoint, T)> {
        let ck = locate(dir);
        let path = ck.join(STATE_FILE);
        if !path.exists() {
            return Err(InputError::file(
                dir,
                None,
                "no checkpoint here (expected a run directory with checkpoint/state.json)",
            )
            .into());
        }
        let mut value: serde_json::Value = load_json(&path)?;
        let format = match value.as_object_mut().and_then(|o| o.remove(FORMAT_KEY)) {
            None => 1,
            Some(v) => v.as_u64().ok_or_else(|| {
                InputError::file(
                    &path,
                    Some(format!("field {FORMAT_KEY}")),
                    "not a version number",
                )
            })?,
        };
        if format > FORMAT_VERSION {
            return Err(InputError::file(
                &path,
                Some(format!("field {FORMAT_KEY}")),
                format!(
                    "checkpoint format {format} was written by a newer glowflow; this build reads formats 1 to {FORMAT_VERSION}"
                ),
            )
            .into());
        }
        let hashes = match value.as_object_mut().and_then(|o| o.remove(FILES_KEY)) {
            None => None,
            Some(v) => Some(serde_json::from_value(v).map_err(|e| {
                InputError::file(&path, Some(format!("field {FILES_KEY}")), e.to_string())
            })?),
        };
        let legacy_flags = match value
            .as_object_mut()
            .and_then(|o| o.remove(LEGACY_FLAGS_KEY))
        {
            Some(v) if format < 3 => Some(serde_json::from_value(v).map_err(|e| {
                InputError::file(
                    &path,
                    Some(format!("field {LEGACY_FLAGS_KEY}")),
                    e.to_string(),
                )
            })?),
            _ => None,
        };
        if format < 4 {
            crate::models::objective::Dequantization::migrate_legacy(&mut value["model"]);
        }
        // The run's kind, to name it when a command is given a run of the other kind.
        let kind = kind_of_state(&value).map(|k| match k {
            RunKind::Image => "an image Glow run (`train`)",
            RunKind::Vector => "a vector flow run (`train2d`/`compare`)",
        });
        let state = serde_json::from_value(value).map_err(|e| {
            let why = match (kind, std::any::type_name::<T>().contains("GlowImage")) {
                (Some(k), true) if k.starts_with("a vector") => format!(
                    "is {k}; this command takes an image run (`train`): use `score` or `sample` for a vector flow"
                ),
                (Some(k), false) if k.starts_with("an image") => format!(
                    "is {k}; this command takes a vector flow run (`train2d`): use `eval`, `sample` or a resume of `train` for an image run"
                ),
                _ => format!("not a state of this kind: {e}"),
            };
            InputError::file(&path, None, why)
        })?;
        let ck = Checkpoint {
            dir: ck,
            hashes,
            legacy_flags,
        };
        Ok((ck, state))
    }

    /// The path of one of the checkpoint's files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The path of `state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.path(STATE_FILE)
    }

    /// Whether the checkpoint has the file `name`.
    pub fn has(&self, name: &str) -> bool {
        match &self.hashes {
            Some(h) => h.contains_key(name),
            None => self.path(name).exists(),
        }
    }

    /// The bytes of the file `name`, checked against the SHA-256 in `state.json`.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name);
        let expected = match &self.hashes {
            Some(h) => Some(h.get(name).ok_or_else(|| {
                InputError::file(self.state_path(), None, format!("lists no {name}"))
            })?),
            None => None,
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| InputError::file(&path, None, format!("cannot read: {e}")))?;
        if let Some(want) = expected {
            let got = sha256_hex(&bytes);
            if &got != want {
                return Err(InputError::file(
                    &path,
                    None,
                    format!(
                        "does not belong to this checkpoint (SHA-256 {}… where state.json lists {}…): \
                         the file was replaced or damaged",
                        &got[..12],
                        &want[..12.min(want.len())]
                    ),
                )
                .into());
            }
        }
        Ok(bytes)
    }

    /// Load the weights file `name` into `model` (same structure), refusing non-finite values.
    /// Weights of a checkpoint older than format 3 get their ActNorm flags from its
    /// `state.json`.
    pub fn load_model<M: Module + ModuleSnapshot>(&self, model: M, name: &str) -> Result<M> {
        let state = self.state_path();
        let legacy = self.legacy_flags.as_deref().map(|f| (f, state.as_path()));
        let model = weights_from_bytes(
            model,
            self.read(name)?,
            &self.path(name),
            legacy,
            LEGACY_FLAGS_KEY,
        )?;
        refuse_nonfinite(&model, &self.path(name))?;
        Ok(model)
    }

    /// The optimizer state, into a fresh optimizer of the recipe `stability`.
    pub fn load_optimizer(
        &self,
        stability: &crate::train::stability::StabilityOptions,
    ) -> Result<ModuleOptimizer> {
        let path = self.path(OPTIMIZER_FILE);
        let bytes = self.read(OPTIMIZER_FILE)?;
        stability
            .build_optimizer()
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| {
                InputError::file(&path, None, format!("cannot load optimizer state: {e:?}")).into()
            })
    }

    /// The optimizer state and, when the recipe keeps one, the weight average, for resuming
    /// `model` (whose structure the files must match).
    pub fn load_training_state<M: Module + ModuleSnapshot + Clone>(
        &self,
        model: &M,
        stability: &crate::train::stability::StabilityOptions,
        ema_updates: u64,
    ) -> Result<(ModuleOptimizer, Option<crate::train::stability::WeightEma>)> {
        let optim = self.load_optimizer(stability)?;
        let ema = if stability.ema_decay > 0.0 {
            // Into an evaluation copy: loading maps every state cell, and a clone of the
            // training model would share (and overwrite) its running statistics.
            let avg = self.load_model(model.valid(), EMA_FILE)?;
            Some(crate::train::stability::WeightEma::new(
                &avg,
                stability.ema_decay,
                ema_updates,
            ))
        } else {
            None
        };
        Ok((optim, ema))
    }
}

/// Put the previous checkpoint back when a save was interrupted between its two renames, and
/// remove folders that interrupted saves left behind. Run by the one process that holds the
/// run directory's lock, before it saves.
pub fn recover(out: &Path) -> Result<()> {
    let ck = checkpoint_dir(out);
    let old = out.join(OLD_DIR);
    if old.exists() {
        if !ck.join(STATE_FILE).exists() && old.join(STATE_FILE).exists() {
            if ck.exists() {
                std::fs::remove_dir_all(&ck)
                    .with_context(|| format!("cannot remove incomplete {}", ck.display()))?;
            }
            std::fs::rename(&old, &ck).with_context(|| {
                format!("cannot restore {} from {}", ck.display(), old.display())
            })?;
        } else {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(NEW_PREFIX) {
                std::fs::remove_dir_all(e.path()).ok();
            }
        }
    }
    Ok(())
}

/// Save weights, their average (if any), optimizer state (if any: a model saved for scoring and
/// sampling has none, and cannot be resumed) and the JSON state into `out/checkpoint/` as one
/// unit (see the module documentation): on any error, the previous
/// checkpoint is unchanged and nothing new is left behind. Refuses, before writing anything,
/// weights that hold a non-finite value.
pub fn save_checkpoint<M: Module + ModuleSnapshot, E: Module + ModuleSnapshot, S: Serialize>(
    out: &Path,
    model: &M,
    ema: Option<&E>,
    optim: Option<&ModuleOptimizer>,
    state: &S,
) -> Result<()> {
    let ck = checkpoint_dir(out);
    refuse_nonfinite(model, &ck.join(MODEL_FILE))?;
    if let Some(e) = ema {
        refuse_nonfinite(e, &ck.join(EMA_FILE))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    recover(out)?;
    let new = out.join(format!("{NEW_PREFIX}{}", std::process::id()));
    let write = || -> Result<()> {
        std::fs::create_dir(&new).with_context(|| format!("cannot create {}", new.display()))?;
        let mut hashes = BTreeMap::new();
        let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
            crate::fsutil::write_synced(&new.join(name), bytes)?;
            hashes.insert(name.to_string(), sha256_hex(bytes));
            Ok(())
        };
        put(MODEL_FILE, &model_bytes(model)?)?;
        if let Some(e) = ema {
            put(EMA_FILE, &model_bytes(e)?)?;
        }
        if let Some(optim) = optim {
            let optim_bytes = optim
                .into_bytes()
                .map_err(|e| anyhow::anyhow!("cannot serialise optimizer state: {e:?}"))?;
            put(OPTIMIZER_FILE, &optim_bytes)?;
        }
        let mut value = serde_json::to_value(state)?;
        let obj = value
            .as_object_mut()
            .context("checkpoint state must be a JSON object")?;
        obj.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
        obj.insert(FILES_KEY.into(), serde_json::to_value(&hashes)?);
        crate::fsutil::write_synced(
            &new.join(STATE_FILE),
            serde_json::to_string_pretty(&value)?.as_bytes(),
        )?;
        crate::fsutil::sync_dir(&new);
        Ok(())
    };
    if let Err(e) = write() {
        std::fs::remove_dir_all(&new).ok();
        return Err(e.context(format!(
            "checkpoint not saved; {} is unchanged",
            ck.display()
        )));
    }
    // The swap: the previous checkpoint aside, the new one in, the previous one gone.
    let old = out.join(OLD_DIR);
    let had_previous = ck.exists();
    if had_previous {
        if let Err(e) = std::fs::rename(&ck, &old) {
            std::fs::remove_dir_all(&new).ok();
            return Err(anyhow::Error::new(e).context(format!(
                "checkpoint not saved: cannot move {} aside",
                ck.display()
            )));
        }
    }
    if let Err(e) = std::fs::rename(&new, &ck) {
        if had_previous {
            std::fs::rename(&old, &ck).ok();
        }
        std::fs::remove_dir_all(&new).ok();
        return Err(anyhow::Error::new(e).context(format!(
            "checkpoint not saved: cannot move it to {}",
            ck.display()
        )));
    }
    crate::fsutil::sync_dir(out);
    if had_previous {
        std::fs::remove_dir_all(&old).ok();
    }
    Ok(())
}
