//! `score`: each row's log-density under a trained vector flow, as CSV.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use glowflow::error::InputError;
use glowflow::train::train2d::load_trained;

use super::common::{print_json, DeviceFlag};

/// `score`'s flags.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A run directory of `train2d --data` (or its checkpoint/ folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The table to score (.csv or .npy) with the columns the model was trained on (by name
    /// when both have a header, else by position); default: the run's test rows.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output CSV (`index,log_prob`: the row's 0-based index among the file's data rows, as
    /// numpy and pandas number them; nats in the data's units).
    #[arg(long, default_value = "scores.csv")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceFlag,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    use glowflow::eval::vector::score_rows;
    let inputs: Vec<(&str, &std::path::Path)> =
        a.data.iter().map(|p| ("--data", p.as_path())).collect();
    glowflow::fsutil::check_outputs(&[("--out", &a.out)], &inputs)?;
    let device = a.device.open()?;
    let (model, state) = load_trained(&a.checkpoint, &device)
        .with_context(|| format!("--checkpoint {}", a.checkpoint.display()))?;
    let (mut lp, source, numbers) = score_rows(
        &model,
        state.table_run(),
        &a.checkpoint,
        a.data.as_deref(),
        &device,
    )?;
    // Rows even float64 cannot score (values near float64's range): ranked lowest, as -inf
    // (the density's limit), never NaN, and named.
    let beyond: Vec<usize> = (0..lp.len()).filter(|&i| !lp[i].is_finite()).collect();
    for &i in &beyond {
        lp[i] = f64::NEG_INFINITY;
    }
    if !beyond.is_empty() {
        let rows: Vec<usize> = beyond.iter().take(20).map(|&i| numbers[i]).collect();
        eprintln!(
            "warning: {} of {} rows are beyond the range the model can score even in float64 (0-based indices {rows:?}); written as log_prob -inf, ranked lowest",
            beyond.len(),
            lp.len()
        );
    }
    let scores = numbers
        .iter()
        .zip(&lp)
        .map(|(n, v)| [n.to_string(), glowflow::fsutil::csv_number(*v)]);
    // The scores are the output: written first, then reported.
    glowflow::fsutil::write_csv(&a.out, &["index", "log_prob"], scores)
        .map_err(|e| InputError::flag("--out", a.out.display(), format!("{e:#}")))?;
    let finite: Vec<f64> = lp.iter().copied().filter(|v| v.is_finite()).collect();
    print_json(&json!({
        "checkpoint": a.checkpoint,
        "data": source,
        "rows": lp.len(),
        "mean_log_prob": finite.iter().sum::<f64>() / finite.len().max(1) as f64,
        "beyond_range": lp.len() - finite.len(),
        "out": a.out,
    }))
}
