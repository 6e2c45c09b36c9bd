//! Evaluation of a trained vector flow: log-densities of points and table rows (in parallel),
//! test NLL, the target's entropy, density grids and the pictures of a 2D run, a table run's
//! figures and corner plot, and the library side of `score` and of sampling rows.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::{DType, Device};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::stream::TableOptions;
use crate::data::stream::{test_points, TableData};
use crate::data::toy2d::Target;
use crate::error::InputError;
use crate::models::{DensityModel, VectorFlow, VectorFlowConfig};
use crate::tensor_util::{from_vec, from_vec_f64, to_vec, to_vec_f64};
use crate::viz::charts::{self, Panel};
use crate::viz::DensityGrid;

const EVAL_BATCH: usize = 8192;

/// Model log-density at each 2D point (model in evaluation mode, on a non-autodiff device).
pub fn log_prob_points(model: &VectorFlow, points: &[[f64; 2]], device: &Device) -> Vec<f64> {
    let rows: Vec<f64> = points.iter().flatten().copied().collect();
    log_prob_rows(model, &rows, 2, 0, device)
}

/// `log p(x | context)` of each row of `rows` (`[n, dim + context]` row-major: the data, then
/// the context columns), nats; model in evaluation mode, on a non-autodiff device. The rows
/// enter the model in float64 (standardised in float64, then computed in float32); a row whose
/// float32 log-density is not finite (a finite but extreme value, such as 3e38) is scored again
/// with the whole model in float64, so a finite row gets NaN only if even float64 overflows
/// (see [`score_rows`]). Chunks of at most 8192 rows run in parallel on the backend's thread
/// pool (the small per-layer ops of a vector flow do not use more than one core by themselves).
pub fn log_prob_rows(
    model: &VectorFlow,
    rows: &[f64],
    dim: usize,
    context: usize,
    device: &Device,
) -> Vec<f64> {
    let w = dim + context;
    let n = rows.len() / w;
    let score = |model: &VectorFlow, rows: &[f64]| -> Vec<f64> {
        let chunk_rows = EVAL_BATCH.min(
            (rows.len() / w)
                .div_ceil(rayon::current_num_threads())
                .max(1),
        );
        let parts: Vec<Vec<f64>> = rows
            .par_chunks(chunk_rows * w)
            .map(|chunk| {
                let k = chunk.len() / w;
                let columns = |from: usize, to: usize| -> Vec<f64> {
                    chunk
                        .chunks(w)
                        .flat_map(|r| r[from..to].iter().copied())
                        .collect()
                };
                let f64_on = (device, DType::F64);
                let x = from_vec_f64(columns(0, dim), [k, dim], f64_on);
                let c = (context > 0).then(|| from_vec_f64(columns(dim, w), [k, context], f64_on));
                to_vec_f64(model.log_prob(x, c.as_ref()))
            })
            .collect();
        parts.concat()
    };
    let mut logp = score(model, rows);
    let bad: Vec<usize> = (0..n).filter(|&i| !logp[i].is_finite()).collect();
    if !bad.is_empty() {
        let model64 = crate::tensor_util::cast_module(model.clone(), DType::F64);
        let again: Vec<f64> = bad
            .iter()
            .flat_map(|&i| rows[i * w..(i + 1) * w].iter().copied())
            .collect();
        for (&i, v) in bad.iter().zip(score(&model64, &again)) {
            logp[i] = v;
        }
    }
    logp
}

/// Mean negative log-likelihood in nats.
pub fn mean_nll(logp: &[f64]) -> f64 {
    -logp.iter().sum::<f64>() / logp.len() as f64
}

/// Monte Carlo entropy of the target over `points` (None where the density is unknown).
pub fn target_entropy(target: Target, points: &[[f64; 2]]) -> Option<f64> {
    let mut s = 0.0;
    for p in points {
        s -= target.log_prob(*p)?;
    }
    Some(s / points.len() as f64)
}

/// Exact model density on a `size x size` grid over the target's box.
pub fn model_density_grid(
    model: &VectorFlow,
    target: Target,
    size: usize,
    device: &Device,
) -> DensityGrid {
    let b = target.box_half_width();
    let pts = DensityGrid::points(size, b);
    let values = log_prob_points(model, &pts, device)
        .into_iter()
        .map(f64::exp)
        .collect();
    DensityGrid {
        size,
        half_width: b,
        values,
    }
}

/// The target density on the same grid: exact where known, else a histogram of 400k samples.
pub fn target_density_grid(target: Target, size: usize) -> DensityGrid {
    let b = target.box_half_width();
    if target.has_log_prob() {
        let pts = DensityGrid::points(size, b);
        let values = pts
            .iter()
            .map(|p| target.log_prob(*p).map_or(0.0, f64::exp))
            .collect();
        return DensityGrid {
            size,
            half_width: b,
            values,
        };
    }
    let bins = 64;
    let n = 400_000;
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    let mut counts = vec![0f64; bins * bins];
    for p in target.sample(n, &mut rng) {
        let col = ((p[0] + b) / (2.0 * b) * bins as f64).floor();
        let row = ((b - p[1]) / (2.0 * b) * bins as f64).floor();
        if (0.0..bins as f64).contains(&col) && (0.0..bins as f64).contains(&row) {
            counts[row as usize * bins + col as usize] += 1.0;
        }
    }
    let cell = (2.0 * b / bins as f64).powi(2);
    let values = (0..size * size)
        .map(|i| {
            let (r, c) = (i / size * bins / size, i % size * bins / size);
            counts[r * bins + c] / (n as f64 * cell)
        })
        .collect();
    DensityGrid {
        size,
        half_width: b,
        values,
    }
}

/// `n` model samples (temperature 1) and their model log-densities.
pub fn model_samples(
    model: &VectorFlow,
    n: usize,
    seed: u64,
    device: &Device,
) -> (Vec<[f64; 2]>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (x, logp) = model.sample_and_log_prob(n, 1.0, None, &mut rng, device);
    let xs = to_vec(x);
    let pts = xs.chunks(2).map(|c| [c[0] as f64, c[1] as f64]).collect();
    (pts, to_vec(logp).into_iter().map(f64::from).collect())
}

/// One sample per test row (for that row's context when the model is conditional), at
/// temperature 1: `[n_test, D]`.
pub fn samples_for_test(
    data: &TableData,
    model: &VectorFlow,
    seed: u64,
    device: &Device,
) -> Vec<f64> {
    let n = data.test_rows();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ctx = (data.context > 0).then(|| {
        let w = data.width();
        let v: Vec<f32> = data
            .test
            .chunks(w)
            .flat_map(|r| r[data.dim..].iter().map(|&v| v as f32))
            .collect();
        from_vec(v, [n, data.context], device)
    });
    let x = model.sample(n, 1.0, ctx.as_ref(), &mut rng, device);
    to_vec(x).into_iter().map(f64::from).collect()
}

/// A reference scale for density pictures: the target's peak density on the grid.
pub fn density_scale(target: Target, grid: usize) -> f64 {
    target_density_grid(target, grid).max().max(1e-12)
}

/// What the evaluation of a vector flow reports: the test NLL and, by kind of run, the
/// target's figures or the table's. A run's `summary.json` holds it with the run's record
/// (`train::train2d::Summary`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VectorReport {
    /// Mean negative log-likelihood of the test points (rows), nats.
    pub test_nll: f64,
    /// Targets: the target's entropy (Monte Carlo), nats, where its density is known.
    pub entropy: Option<f64>,
    /// Targets: test NLL minus the entropy, the KL divergence from target to model, nats.
    pub test_nll_minus_entropy: Option<f64>,
    /// Mixture targets: share of samples farther than 3 sigma from every mode.
    pub off_mode_share: Option<f64>,
    /// Mixture targets: the same share for the target's own samples.
    pub target_off_mode_share: Option<f64>,
    /// Tables: rows in the training and test splits.
    pub rows: Option<(usize, usize)>,
    /// Tables: mean NLL (nats per row, data units) of the training rows.
    pub train_nll: Option<f64>,
    /// Tables: test NLL of a full-covariance Gaussian fitted to the training rows.
    pub gaussian_test_nll: Option<f64>,
    /// Pictures that could not be written, and why.
    pub warnings: Vec<String>,
}

/// The inputs of a 2D target run's evaluation, explicitly: its model's config, the target, the
/// run's seed (the test points and sample draws derive from it), and the pictures' sizes.
#[derive(Clone, Debug)]
pub struct TargetEval<'a> {
    /// The model's config (its name titles the pictures).
    pub config: &'a VectorFlowConfig,
    /// The target.
    pub target: Target,
    /// The run's seed.
    pub seed: u64,
    /// Held-out points for the test NLL.
    pub test_samples: usize,
    /// Side of the density maps, in cells.
    pub grid: usize,
    /// Frames of `training.gif`.
    pub frames: usize,
}

/// The inputs of scoring, sampling and evaluating a table run, explicitly: its model's config,
/// its table's options (`None`: a run on a target), and the run's seed.
#[derive(Clone, Copy, Debug)]
pub struct TableRun<'a> {
    /// The model's config (`features`, `context`).
    pub config: &'a VectorFlowConfig,
    /// The table the run trained on: its path, split, columns and dequantised columns.
    pub table: Option<&'a TableOptions>,
    /// The run's seed (the test split's and the sample draws' seeds derive from it).
    pub seed: u64,
}

/// Test metrics and every picture of a finished run on a 2D target (`target.png`,
/// `samples.png`, `density.png`, `training.gif` from the frames in `out/frames`); `vmax` is
/// the density scale of the pictures ([`density_scale`]). A picture that cannot be written is
/// a warning (stderr and the summary's `warnings`), not an error.
///
/// # Errors
/// None today; the `Result` leaves room for evaluation failures.
pub fn evaluate_and_draw(
    model: &VectorFlow,
    opts: &TargetEval,
    out: Option<&Path>,
    device: &Device,
    vmax: f64,
) -> Result<VectorReport> {
    let target = opts.target;
    let test = test_points(target, opts.seed, opts.test_samples);
    let logp = log_prob_points(model, &test, device);
    let test_nll = mean_nll(&logp);
    let entropy = target_entropy(target, &test);
    let (samples, sample_logp) = model_samples(
        model,
        opts.test_samples,
        opts.seed ^ crate::rng::EVAL_SAMPLES,
        device,
    );
    let b = target.box_half_width();

    // target.png: data coloured by the true density where known.
    let target_pts = test.iter().take(20_000).cloned().collect::<Vec<_>>();
    let target_dens: Option<Vec<f64>> = target_pts
        .iter()
        .map(|p| target.log_prob(*p).map(f64::exp))
        .collect();
    let name = opts.config.model.name();
    // Pictures are side products: one that cannot be written (a full disk) is a warning in the
    // summary, never the loss of the run's figures.
    let mut warnings = Vec::new();
    let mut one = |path: &str, title: String, panel: Panel| {
        let Some(out) = out else { return };
        let drawn = charts::plane_panels(&out.join(path), &[(title, panel)], b, vmax);
        if let Err(e) = drawn {
            let w = format!("{path} not written: {e:#}");
            eprintln!("warning: {w}");
            warnings.push(w);
        }
    };
    one(
        "target.png",
        format!("target: {}", target.name()),
        Panel::Points(&target_pts, target_dens.as_deref()),
    );
    let sample_dens: Vec<f64> = sample_logp.iter().map(|l| l.exp()).collect();
    one(
        "samples.png",
        format!("{name} samples"),
        Panel::Points(&samples, Some(&sample_dens)),
    );
    if out.is_some() {
        let grid = model_density_grid(model, target, opts.grid, device);
        one(
            "density.png",
            format!("{name} density, nll {test_nll:.3}"),
            Panel::Density(&grid),
        );
    }
    if let Some(out) = out {
        if let Err(e) = write_training_gif(out, opts.grid, opts.frames) {
            let w = format!("training.gif not written: {e:#}");
            eprintln!("warning: {w}");
            warnings.push(w);
        }
    }

    Ok(VectorReport {
        test_nll,
        entropy,
        test_nll_minus_entropy: entropy.map(|e| test_nll - e),
        off_mode_share: target.off_mode_share(&samples),
        target_off_mode_share: target.off_mode_share(&test),
        warnings,
        ..VectorReport::default()
    })
}

/// Test figures and pictures of a run on a table: test and training NLL (nats per row, in the
/// data's units), the full-covariance Gaussian baseline, and a corner plot of test rows against
/// samples (drawn for the test rows' contexts when the model is conditional).
pub fn evaluate_table(
    model: &VectorFlow,
    config: &VectorFlowConfig,
    seed: u64,
    data: &TableData,
    out: Option<&Path>,
    device: &Device,
) -> Result<VectorReport> {
    let test_lp = log_prob_rows(model, &data.test, data.dim, data.context, device);
    let train_lp = log_prob_rows(
        model,
        &data.train_for_eval(),
        data.dim,
        data.context,
        device,
    );
    let test_nll = mean_nll(&test_lp);
    let train_nll = mean_nll(&train_lp);
    let gaussian = data.gaussian_test_nll();
    let mut warnings = Vec::new();
    if let Some(out) = out.filter(|_| data.test_rows() > 0) {
        let title = config.model.name();
        draw_corner(
            model,
            title,
            seed,
            data,
            out,
            test_nll,
            device,
            &mut warnings,
        );
    }
    Ok(VectorReport {
        test_nll,
        rows: Some((data.train_rows(), data.test_rows())),
        train_nll: Some(train_nll),
        gaussian_test_nll: gaussian,
        warnings,
        ..VectorReport::default()
    })
}

/// `corner.png`: test rows against samples (a failure is a warning in `warnings`).
#[allow(clippy::too_many_arguments)]
fn draw_corner(
    model: &VectorFlow,
    name: &str,
    seed: u64,
    data: &TableData,
    out: &Path,
    test_nll: f64,
    device: &Device,
    warnings: &mut Vec<String>,
) {
    let samples = samples_for_test(data, model, seed ^ crate::rng::EVAL_SAMPLES, device);
    let drawn = crate::viz::charts::corner_plot(
        &out.join("corner.png"),
        &data.names[..data.dim],
        &data.test,
        data.dim + data.context,
        &samples,
        &format!("{name}: test rows (blue) vs samples (orange), test NLL {test_nll:.3}"),
    );
    if let Err(e) = drawn {
        let w = format!("corner.png not written: {e:#}");
        eprintln!("warning: {w}");
        warnings.push(w);
    }
}

/// Assemble the saved density frames into `training.gif` (100 ms a frame, looping): at most
/// `count` of them, spread evenly over the run's steps ([`pick_frames`]), so a resumed run,
/// whose frames were saved at two spacings, still gets `--frames` frames.
///
/// # Errors
/// A frame that cannot be read, or the GIF that cannot be written.
pub fn write_training_gif(out: &Path, size: usize, count: usize) -> Result<()> {
    let saved = saved_frames(out)?;
    let steps: Vec<usize> = saved.iter().map(|(s, _)| *s).collect();
    let mut frames = Vec::new();
    for i in pick_frames(&steps, count) {
        let (step, path) = &saved[i];
        let bytes = std::fs::read(path)?;
        if bytes.len() == size * size {
            frames.push((*step, bytes));
        }
    }
    if frames.is_empty() {
        return Ok(());
    }
    crate::viz::write_gif(&out.join("training.gif"), &frames, size, 10)
}

/// Which of the frames saved at `steps` (ascending) a GIF of `count` frames shows: for
/// k = 1..=count the saved frame nearest to step `last·k/count`, each at most once, in order;
/// the last saved frame is always shown. Indices into `steps`.
pub fn pick_frames(steps: &[usize], count: usize) -> Vec<usize> {
    let Some(&last) = steps.last() else {
        return Vec::new();
    };
    let mut picked: Vec<usize> = Vec::with_capacity(count);
    for k in 1..=count {
        let want = (last as f64) * k as f64 / count as f64;
        let nearest = (0..steps.len())
            .min_by(|&a, &b| {
                let da = (steps[a] as f64 - want).abs();
                let db = (steps[b] as f64 - want).abs();
                da.total_cmp(&db)
            })
            .unwrap_or(0);
        if picked.last().is_none_or(|&p| p < nearest) {
            picked.push(nearest);
        }
    }
    picked
}

/// The rows a `score` of a table run reads and their log-densities: the run's held-out test
/// rows (`data` = `None`), or every row of the table `data`, its columns matched to the run's
/// by name when both tables name them, else by position. Returns `log p(x | context)` of each
/// row (nats, data units), a description of the rows, and each row's 0-based index among its
/// file's data rows (as numpy and pandas number them).
///
/// # Errors
/// Names `--checkpoint` for a run not trained on a table or whose table changed, `--data` for a
/// table without the run's columns, and the file for a malformed one.
pub fn score_rows(
    model: &VectorFlow,
    run: TableRun,
    checkpoint: &Path,
    data: Option<&Path>,
    device: &Device,
) -> Result<(Vec<f64>, String, Vec<usize>)> {
    let Some(topts) = run.table.cloned() else {
        return Err(InputError::option(
            "checkpoint",
            checkpoint.display(),
            "was trained on a built-in target, not a table (score needs a train2d `data` run)",
        )
        .into());
    };
    let (dim, k) = (run.config.features, run.config.context);
    let (rows, source, numbers) = match data {
        None => {
            let d = TableData::load(&topts, run.seed)?;
            for note in &d.notes {
                crate::error::warn(note);
            }
            if topts
                .fingerprint
                .as_ref()
                .is_some_and(|f| *f != d.fingerprint)
            {
                return Err(InputError::option(
                    "checkpoint",
                    checkpoint.display(),
                    format!(
                        "its training table {} changed since the run (its values differ), so its test rows cannot be recovered; give the rows to score with `data`",
                        topts.path.display()
                    ),
                )
                .into());
            }
            let source = match &topts.test_path {
                Some(p) => format!("test table {}", p.display()),
                None => format!("held-out test rows of {}", topts.path.display()),
            };
            (d.test, source, d.test_index)
        }
        Some(p) => {
            let t = crate::data::table::read_table_as(p, topts.numbers_header)?;
            for note in &t.notes {
                crate::error::warn(note);
            }
            // Columns by name when both tables name them, else by the training table's
            // positions.
            let by_position = |index: Vec<usize>| -> Result<Vec<String>> {
                let width = topts.resolved.as_ref().map_or(0, |r| r.width);
                if width > 0 && t.width() != width {
                    return Err(InputError::file(
                        p,
                        None,
                        format!(
                            "has {} columns where the run's training table has {width}; without a header naming the columns in both tables, they are matched by position, which needs the same columns in the same order",
                            t.width()
                        ),
                    )
                    .into());
                }
                Ok(index.iter().map(usize::to_string).collect())
            };
            let want: Vec<String> = match topts.resolved_columns()? {
                Some((names, _, true)) if t.named => names,
                Some((_, index, _)) => by_position(index)?,
                None => topts
                    .columns
                    .iter()
                    .chain(&topts.context_columns)
                    .cloned()
                    .collect(),
            };
            let idx = t.column_indices(&want, "data")?;
            if idx.len() != dim + k {
                return Err(InputError::option(
                    "data",
                    p.display(),
                    format!("needs the {} columns the model was trained on", dim + k),
                )
                .into());
            }
            let all: Vec<usize> = (0..t.rows).collect();
            let numbers = (0..t.rows).collect();
            let mut rows = t.gather(&all, &idx);
            let names: Vec<&str> = idx.iter().map(|&j| t.columns[j].as_str()).collect();
            dequantize_rows(&topts, run.seed, &mut rows, dim + k, |i, c, why| {
                InputError::file(
                    p,
                    Some(format!("{}, column '{}'", t.locate(i), names[c])),
                    why,
                )
            })?;
            (rows, p.display().to_string(), numbers)
        }
    };
    Ok((log_prob_rows(model, &rows, dim, k, device), source, numbers))
}

/// Rows to score under a table run, made as the run's test rows were: each column the run
/// dequantised (`dequantize`) must hold integers and gets one seeded draw of uniform noise in
/// [0, 1), the draw the run's test rows got (so scoring the run's test table gives its test
/// NLL). `rows` is `[n, width]` row-major, in the run's column order.
///
/// # Errors
/// A non-integer in a dequantised column: `locate(row, column, why)` builds the error, so that
/// it names the file and line, or the array and index, the rows came from.
pub fn dequantize_rows(
    table: &TableOptions,
    seed: u64,
    rows: &mut [f64],
    width: usize,
    locate: impl Fn(usize, usize, String) -> InputError,
) -> Result<(), InputError> {
    let deq = table
        .resolved
        .as_ref()
        .map_or(&[][..], |r| &r.dequantized[..]);
    for &c in deq {
        if let Some(i) = rows.chunks(width).position(|r| r[c].fract() != 0.0) {
            let why = format!(
                "{} is not an integer, but the run dequantised this column (`dequantize`): it models integers",
                rows[i * width + c]
            );
            return Err(locate(i, c, why));
        }
    }
    let seed = crate::data::stream::test_seed(table.split_seed_or(seed));
    crate::data::stream::add_uniform_noise(rows, width, deq, seed);
    Ok(())
}

/// `log p(x | context)` of rows held in memory (`[n, features + context]` row-major, the
/// modelled columns then the context columns, in data units), as `score` scores a table's rows:
/// float64, with the run's dequantisation of integer columns ([`dequantize_rows`]). Nats, `[n]`.
///
/// # Errors
/// A non-integer in a column the run dequantised; `locate` names it (see [`dequantize_rows`]).
pub fn score_values(
    model: &VectorFlow,
    run: TableRun,
    mut rows: Vec<f64>,
    device: &Device,
    locate: impl Fn(usize, usize, String) -> InputError,
) -> Result<Vec<f64>, InputError> {
    let (dim, k) = (run.config.features, run.config.context);
    if let Some(t) = run.table {
        dequantize_rows(t, run.seed, &mut rows, dim + k, locate)?;
    }
    Ok(log_prob_rows(model, &rows, dim, k, device))
}

/// Vector samples as CSV rows: the header, the rows of the finite samples, and the 0-based
/// indices of the samples left out because a value or their log-density is not finite.
pub struct SampleRows {
    /// The run's column names (`x0, x1, ...` when unknown), then `log_prob`.
    pub header: Vec<String>,
    /// One row per finite sample: its values, its context, its log-density.
    pub rows: Vec<Vec<String>>,
    /// Samples left out (non-finite), 0-based in draw order.
    pub left_out: Vec<usize>,
}

/// `n` samples of a vector flow at `temperature` (seeded `seed`) as CSV rows: each sample, its
/// `context` (conditional runs: one value per context column, in the run's order) and its
/// log-density; the header names the run's columns (`x0, x1, ...` when they are unknown) and
/// `log_prob`. Decoded with the whole model in float64 (the float32 weights cast exactly) and
/// un-standardised in float64; a sample still non-finite is left out and listed, never written
/// as NaN or inf. Columns the run dequantised are floored back to integers (`log_prob` is then
/// the density of the continuous draw before flooring).
///
/// # Errors
/// Names `--context` when its values are not finite or not one per context column.
pub fn sample_rows(
    model: &VectorFlow,
    run: TableRun,
    n: usize,
    temperature: f64,
    context: &[f64],
    seed: u64,
    device: &Device,
) -> Result<SampleRows> {
    let (d, k) = (run.config.features, run.config.context);
    let names = match run.table {
        Some(t) => t.resolved_columns()?.map(|(n, _, _)| n),
        None => None,
    }
    .unwrap_or_else(|| (0..d + k).map(|i| format!("x{i}")).collect());
    // The command line gives one context for every sample.
    if context.len() != k {
        let why = match k {
            0 => "the model has no context columns".to_string(),
            _ => format!(
                "the model is conditioned on {k} context column(s) ({}): give {k} comma-separated value(s)",
                names[d..].join(", ")
            ),
        };
        return Err(InputError::option("context", format!("{context:?}"), why).into());
    }
    let (x, logp) = sample_values(model, run, n, temperature, context, seed, device)?;
    // Each row: the sample, its context (conditional runs), its log-density.
    let context: Vec<String> = context
        .iter()
        .map(|&v| crate::fsutil::csv_number(v))
        .collect();
    let mut left_out = Vec::new();
    let mut rows = Vec::with_capacity(n);
    for (i, (row, lp)) in x.chunks(d).zip(&logp).enumerate() {
        if !lp.is_finite() || row.iter().any(|v| !v.is_finite()) {
            left_out.push(i);
            continue;
        }
        let row = row.iter().map(|&v| crate::fsutil::csv_number(v));
        rows.push(
            row.chain(context.iter().cloned())
                .chain([crate::fsutil::csv_number(*lp)])
                .collect(),
        );
    }
    let header = names.into_iter().chain(["log_prob".to_string()]).collect();
    Ok(SampleRows {
        header,
        rows,
        left_out,
    })
}

/// `n` samples of a vector flow at `temperature` (seeded `seed`), `[n, features]` row-major,
/// and their log-densities `[n]` (nats, data units): decoded with the whole model in float64
/// (the float32 weights cast exactly) and un-standardised in float64; columns the run
/// dequantised floored back to the integers they model (`log_prob` stays the density of the
/// continuous draw). `context` holds one context row (`K` values, for every sample) or one per
/// sample (`n * K`), in the run's context-column order; none for an unconditional model. A
/// sample may hold non-finite values (left for the caller to drop or report).
///
/// # Errors
/// `context` with a non-finite value, or not `0`, `K` or `n * K` values (the value is then
/// empty: the caller names what it was given).
pub fn sample_values(
    model: &VectorFlow,
    run: TableRun,
    n: usize,
    temperature: f64,
    context: &[f64],
    seed: u64,
    device: &Device,
) -> Result<(Vec<f64>, Vec<f64>), InputError> {
    let (d, k) = (run.config.features, run.config.context);
    if let Some(v) = context.iter().find(|v| !v.is_finite()) {
        return Err(InputError::option("context", v, "must be finite"));
    }
    let ctx = match (k, context.len()) {
        (0, 0) => None,
        (k, m) if k > 0 && m == k => {
            let v: Vec<f64> = (0..n).flat_map(|_| context.iter().copied()).collect();
            Some(from_vec_f64(v, [n, k], (device, DType::F64)))
        }
        (k, m) if k > 0 && m == n * k => {
            Some(from_vec_f64(context.to_vec(), [n, k], (device, DType::F64)))
        }
        (0, _) => {
            let why = "the model has no context columns";
            return Err(InputError::option("context", "", why));
        }
        (k, m) => {
            let why = format!(
                "{m} value(s) for a model conditioned on {k} context column(s): give {k} (one context for every sample) or {} (one per sample)",
                n * k
            );
            return Err(InputError::option("context", "", why));
        }
    };
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model64 = crate::tensor_util::cast_module(model.clone(), DType::F64);
    let (x, logp) = model64.sample_and_log_prob(n, temperature, ctx.as_ref(), &mut rng, device);
    let (mut x, logp) = (to_vec_f64(x), to_vec_f64(logp));
    // Dequantised columns: back to the integers they model (the cell x + [0, 1) a value falls
    // in); `log_prob` stays the density of the continuous draw.
    let deq = match run.table {
        Some(t) => t.resolved.as_ref().map(|r| r.dequantized.clone()),
        None => None,
    }
    .unwrap_or_default();
    for row in x.chunks_mut(d) {
        for &c in &deq {
            row[c] = row[c].floor();
        }
    }
    Ok((x, logp))
}

/// The density frames saved in run `out` (`frames/STEP.idx`), as `(step, path)` sorted by step.
///
/// # Errors
/// The frames folder cannot be read.
pub fn saved_frames(out: &Path) -> std::io::Result<Vec<(usize, PathBuf)>> {
    let mut saved: Vec<(usize, PathBuf)> = std::fs::read_dir(frames_dir(out))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .filter_map(|p| {
            let step = p.file_stem()?.to_str()?.parse().ok()?;
            Some((step, p))
        })
        .collect();
    saved.sort();
    Ok(saved)
}

/// Where a run on a 2D target keeps its density frames (assembled into `training.gif`).
pub fn frames_dir(out: &Path) -> PathBuf {
    out.join("frames")
}

#[cfg(test)]
mod tests {
    use super::pick_frames;

    /// A run of 200 steps saved 20 frames (every 10); resumed to 300 it saved more every 15.
    /// The GIF still has 20 frames, ending at step 300, each within half a spacing of an even
    /// split of the 300 steps.
    #[test]
    fn a_resumed_run_still_gets_its_frame_count() {
        let mut steps: Vec<usize> = (1..=20).map(|k| 10 * k).collect();
        steps.extend((201..=300).filter(|s| s % 15 == 0 || *s == 300));
        assert_eq!(steps.len(), 27);
        let picked = pick_frames(&steps, 20);
        assert_eq!(picked.len(), 20);
        assert_eq!(steps[*picked.last().unwrap()], 300);
        for (k, &i) in picked.iter().enumerate() {
            let want = 15.0 * (k + 1) as f64;
            assert!(
                (steps[i] as f64 - want).abs() <= 7.5,
                "frame {k}: step {}",
                steps[i]
            );
        }
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
        // Fewer saved frames than asked: each shown once; none saved: no frame.
        assert_eq!(pick_frames(&[5, 10], 20), vec![0, 1]);
        assert!(pick_frames(&[], 20).is_empty());
        assert!(pick_frames(&[5, 10], 0).is_empty());
    }
}
