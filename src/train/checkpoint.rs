//! Checkpoints: `model.safetensors` (weights and fixed buffers), `optimizer.bpk` (burn's Adam
//! moments, keyed by the model's stable parameter ids) and `state.json` (config, step, ActNorm
//! initialisation flags, ...). Every file is written to a temporary name and renamed, and
//! `state.json` is written last, so an interrupted save leaves the previous checkpoint usable.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{de::DeserializeOwned, Serialize};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const STATE_FILE: &str = "state.json";
/// The exponential moving average of the weights (same structure as `model.safetensors`, in
/// float64: the average's accumulators, so a resumed run continues it exactly).
pub const EMA_FILE: &str = "ema.safetensors";

/// An error naming `path` when `model` holds a NaN or infinite parameter: such weights are never
/// written to a checkpoint, and never evaluated or sampled from.
pub fn refuse_nonfinite<M: Module>(model: &M, path: &Path) -> Result<()> {
    if let Some(p) = crate::train::stability::first_nonfinite_param(model) {
        bail!(
            "{}: parameter {p} holds non-finite values (NaN or infinity); these weights are unusable",
            path.display()
        );
    }
    Ok(())
}

/// What a stopped run can say about its checkpoint: that the one in `saved.0` (at step
/// `saved.1`) is intact, or that none was written.
pub fn intact_message(saved: Option<(PathBuf, usize)>) -> String {
    match saved {
        Some((ck, step)) => format!(
            "the last checkpoint, {} (step {step}), is intact",
            ck.display()
        ),
        None => "no checkpoint was written (use --checkpoint-every to keep one)".into(),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Save a module's parameters as safetensors, atomically.
pub fn save_model<M: Module + ModuleSnapshot>(model: &M, path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot write weights to {}: {e:?}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move weights to {}", path.display()))
}

/// Load parameters saved by [`save_model`] into `model` (which must have the same structure).
pub fn load_model<M: Module + ModuleSnapshot>(mut model: M, path: &Path) -> Result<M> {
    if !path.exists() {
        bail!("{}: checkpoint weights not found", path.display());
    }
    let mut store = SafetensorsStore::from_file(path);
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: cannot load weights: {e:?}", path.display()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        bail!(
            "{}: weights do not match the model (missing: {:?}, errors: {:?})",
            path.display(),
            result.missing,
            result.errors
        );
    }
    Ok(model)
}

pub fn save_optimizer(optim: &ModuleOptimizer, path: &Path) -> Result<()> {
    let tmp = tmp_path(path);
    optim
        .save(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write optimizer state {}: {e:?}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {}", path.display()))
}

pub fn load_optimizer(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    if !path.exists() {
        bail!("{}: optimizer state not found", path.display());
    }
    optim
        .load(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load optimizer state: {e:?}", path.display()))
}

pub fn save_json<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    crate::fsutil::write_atomic(path, text.as_bytes())
}

pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read checkpoint state", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed checkpoint state", path.display()))
}

/// The checkpoint folder of a run directory.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// The checkpoint folder named by `dir`: a run directory or its `checkpoint/` folder itself.
pub fn locate(dir: &Path) -> PathBuf {
    if dir.join(STATE_FILE).exists() {
        dir.to_path_buf()
    } else {
        checkpoint_dir(dir)
    }
}

/// Save weights, their average (if any), optimizer state and the JSON state (last) into
/// `out/checkpoint/`. Refuses, before writing anything, weights that hold a non-finite value.
pub fn save_checkpoint<M: Module + ModuleSnapshot, E: Module + ModuleSnapshot, S: Serialize>(
    out: &Path,
    model: &M,
    ema: Option<&E>,
    optim: &ModuleOptimizer,
    state: &S,
) -> Result<()> {
    let ck = checkpoint_dir(out);
    refuse_nonfinite(model, &ck.join(MODEL_FILE))?;
    if let Some(e) = ema {
        refuse_nonfinite(e, &ck.join(EMA_FILE))?;
    }
    std::fs::create_dir_all(&ck).with_context(|| format!("cannot create {}", ck.display()))?;
    save_model(model, &ck.join(MODEL_FILE))?;
    if let Some(e) = ema {
        save_model(e, &ck.join(EMA_FILE))?;
    }
    save_optimizer(optim, &ck.join(OPTIMIZER_FILE))?;
    save_json(state, &ck.join(STATE_FILE))
}

/// The optimizer state and, when the recipe keeps one, the weight average of the checkpoint in
/// `ck`, for resuming `model` (whose structure the files must match).
pub fn load_training_state<M: Module + ModuleSnapshot + Clone>(
    model: &M,
    ck: &Path,
    stability: &crate::train::stability::StabilityOptions,
    ema_updates: u64,
) -> Result<(ModuleOptimizer, Option<crate::train::stability::WeightEma>)> {
    let optim = load_optimizer(
        crate::train::adam::optimizer(stability.optimizer),
        &ck.join(OPTIMIZER_FILE),
    )?;
    let ema = if stability.ema_decay > 0.0 {
        // Into an evaluation copy: loading maps every state cell, and a clone of the training
        // model would share (and overwrite) its running statistics.
        let avg = load_model(model.valid(), &ck.join(EMA_FILE))?;
        refuse_nonfinite(&avg, &ck.join(EMA_FILE))?;
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
