//! The side-by-side comparison of Real NVP and Glow (`glowflow compare`): both trained with one
//! recipe on one 2D target or table, their density maps in one picture, and a report
//! (`compare.json`, `compare.md`).

use std::path::Path;

use anyhow::Result;
use burn::tensor::Device;
use serde_json::json;

use crate::data::toy2d::Target;
use crate::error::FieldError;
use crate::eval::vector::{density_scale, target_density_grid};
use crate::models::VectorFlowConfig;
use crate::train::train2d::{load_trained, train2d, Summary};
use crate::train::{run_dir, RunIo, Start, Train2dOptions};
use crate::viz::charts::{self, Panel};
use crate::viz::DensityGrid;

/// Default step budget of a comparison: both models within about 10 minutes on 2 cores.
pub const DEFAULT_STEPS: usize = 3_000;

/// Train every model of `models` (title, config; one of each kind) with `opts` into
/// `out/<model name>`, then write `compare.png` (2D targets), `compare.json` and `compare.md`
/// into `out`; returns the report. `io.out` is unused (each model trains in its own folder).
///
/// # Errors
/// A bad option or config (naming its flag) or an unreadable table, before anything in `out`
/// is touched (a refused comparison leaves an old one whole); any error of [`train2d`].
pub fn compare(
    out: &Path,
    opts: &Train2dOptions,
    models: &[(&str, VectorFlowConfig)],
    io: &RunIo,
    device: &Device,
) -> Result<serde_json::Value> {
    opts.validate().map_err(FieldError::on_option)?;
    for (i, (_, cfg)) in models.iter().enumerate() {
        cfg.validate().map_err(FieldError::on_option)?;
        // Each model trains in the folder of its kind, and the report is keyed by it.
        if models[..i].iter().any(|(_, c)| c.model == cfg.model) {
            anyhow::bail!("compare: two models of kind {}", cfg.model.name());
        }
    }
    if let Some(t) = &opts.table {
        crate::data::stream::TableData::load(t, opts.seed)?.check_batch(opts.batch_size)?;
    }
    let lock = run_dir::lock(out)?;
    // A comparison is not resumable: name the choices it has.
    let held = std::iter::once(out.to_path_buf())
        .chain(models.iter().map(|(_, c)| out.join(c.model.name())))
        .find_map(|d| run_dir::existing_run(&d));
    if let (Some(what), false) = (held, io.force) {
        return Err(crate::error::InputError::option(
            "out",
            out.display(),
            format!("already holds {what}; choose another `out` or replace it with `force`"),
        )
        .into());
    }
    run_dir::prepare_fresh(out, io.force)?;
    for (_, cfg) in models {
        run_dir::prepare_fresh(&out.join(cfg.model.name()), io.force)?;
    }
    let mut results = serde_json::Map::new();
    let (mut grids, mut rows, mut entropy) = (Vec::new(), Vec::new(), None);
    let data_name = match &opts.table {
        Some(t) => t.path.display().to_string(),
        None => opts.target.name().to_string(),
    };
    for (title, cfg) in models {
        let run = out.join(cfg.model.name());
        if io.progress {
            eprintln!(
                "training {title} on {data_name} for {} steps -> {}",
                opts.steps,
                run.display()
            );
        }
        let io = RunIo {
            out: run.clone(),
            ..io.clone()
        };
        let s = train2d(Start::Fresh(cfg.clone()), Some(opts.clone()), &io, device)?;
        if opts.table.is_none() {
            let (model, _) = load_trained(&run, device)?;
            let grid =
                crate::eval::vector::model_density_grid(&model, opts.target, opts.grid, device);
            grids.push((title.to_string(), grid));
        }
        entropy = s.entropy;
        results.insert(
            cfg.model.name().into(),
            json!({
                "test_nll": s.test_nll,
                "test_nll_minus_entropy": s.test_nll_minus_entropy,
                "off_mode_share": s.off_mode_share,
                "train_seconds": s.train_seconds,
                "seconds_per_step": s.seconds_per_step,
                "parameters": s.parameters,
                "gaussian_test_nll": s.gaussian_test_nll,
            }),
        );
        rows.push((*title, s));
    }
    if opts.table.is_none() {
        comparison_picture(opts.target, &grids, opts.grid, &out.join("compare.png"))?;
    }
    let report = json!({
        "target": data_name,
        "steps": opts.steps,
        "entropy": entropy,
        "models": results,
    });
    crate::train::checkpoint::save_json(&report, &out.join("compare.json"))?;
    let md = markdown(&data_name, opts, &rows, entropy, io.threads);
    crate::fsutil::write_atomic(&out.join("compare.md"), md.as_bytes())?;
    drop(lock);
    Ok(report)
}

/// `compare.md`: one table row per model.
fn markdown(
    data_name: &str,
    opts: &Train2dOptions,
    rows: &[(&str, Summary)],
    entropy: Option<f64>,
    threads: usize,
) -> String {
    let names: Vec<&str> = rows.iter().map(|(t, _)| *t).collect();
    let mut md = format!(
        "# {data_name} — {}, {} steps, batch {}, seed {}\n\n",
        names.join(" vs "),
        opts.steps,
        opts.batch_size,
        opts.seed
    );
    md.push_str("| model | test NLL (nats) | NLL − entropy | off-mode share | train s | s/step | parameters |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    let fmt = |v: Option<f64>, pct: bool| match v {
        Some(x) if pct => format!("{:.2}%", 100.0 * x),
        Some(x) => format!("{x:.4}"),
        None => "n/a".into(),
    };
    for (title, s) in rows {
        md.push_str(&format!(
            "| {title} | {:.4} | {} | {} | {:.1} | {:.4} | {} |\n",
            s.test_nll,
            fmt(s.test_nll_minus_entropy, false),
            fmt(s.off_mode_share, true),
            s.train_seconds,
            s.seconds_per_step,
            s.parameters
        ));
    }
    if let Some(e) = entropy {
        md.push_str(&format!(
            "\nTarget entropy (Monte Carlo over the test set): {e:.4} nats.\n"
        ));
    }
    md.push_str(&format!(
        "\nGlow computes its gradients on {threads} batch shards in parallel; Real NVP's batch norm \
         needs the statistics of the whole batch, so it runs unsharded. Off-mode share: samples \
         farther than 3 sigma from every mode (mixture targets only).\n"
    ));
    md
}

/// The density map of the target and several models, side by side on one scale, written as
/// PNG at `path`.
pub fn comparison_picture(
    target: Target,
    grids: &[(String, DensityGrid)],
    grid: usize,
    path: &Path,
) -> Result<()> {
    let vmax = density_scale(target, grid);
    let target_grid = target_density_grid(target, grid);
    let mut items = vec![("target".to_string(), Panel::Density(&target_grid))];
    for (name, g) in grids {
        items.push((name.clone(), Panel::Density(g)));
    }
    charts::plane_panels(path, &items, target.box_half_width(), vmax)
}
