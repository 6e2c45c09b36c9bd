//! `reconstruct`: max abs error of inverse(forward(x)) over a batch of test images (`eval`'s
//! flags; `--n` images).

use anyhow::Result;
use burn::tensor::DType;
use serde_json::json;

use glowflow::error::InputError;

use super::eval::{finish, load, EvalArgs};

pub fn run(a: EvalArgs) -> Result<()> {
    use glowflow::eval::images::reconstruction_error;
    let l = load(&a, |state| {
        if let Some(k) = a.importance_samples {
            let why = "is for eval (reconstruct measures the inverse)";
            return Err(InputError::flag("--importance-samples", k, why).into());
        }
        // Float64 activations (twice the float32 estimate) of a forward and an inverse pass.
        let need = state.model.activation_bytes_per_image() * 4.0 * a.n as f64;
        if let Some(why) = glowflow::limits::memory_shortfall(need) {
            return Err(InputError::flag("--n", a.n, why).into());
        }
        Ok(())
    })?;
    let cfg = &l.state.model;
    let mut failure = None;
    // float64 measures the inverse itself; float32 is the training precision's round-off.
    let mut errs = Vec::new();
    for dtype in [DType::F64, DType::F32] {
        match reconstruction_error(&l.model, &l.data.test, cfg.n_bits, a.n, dtype, &l.device) {
            Ok(e) => errs.push(json!(e)),
            Err(e) => {
                errs.push(json!(e.to_string()));
                failure.get_or_insert(e);
            }
        }
    }
    let report = json!({
        "checkpoint": a.checkpoint,
        "ema_weights": l.ema,
        "images": a.n.min(l.data.test.n),
        "max_abs_error": errs[0],
        "max_abs_error_float32": errs[1],
    });
    finish(&a, &report, None, failure)
}
