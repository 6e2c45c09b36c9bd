//! Evaluation of a trained 2D model: test NLL, target entropy, density grids, samples.

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::data::stream::TableData;
use crate::data::toy2d::Target;
use crate::models::VectorFlow;
use crate::tensor_util::{from_vec, to_vec};
use crate::viz::DensityGrid;

const EVAL_BATCH: usize = 8192;

/// Model log-density at each 2D point (model in evaluation mode, on a non-autodiff device).
pub fn log_prob_points(model: &VectorFlow, points: &[[f64; 2]], device: &Device) -> Vec<f64> {
    let rows: Vec<f64> = points.iter().flatten().copied().collect();
    log_prob_rows(model, &rows, 2, 0, device)
}

/// `log p(x | context)` of each row of `rows` (`[n, dim + context]` row-major: the data, then
/// the context columns), nats; model in evaluation mode, on a non-autodiff device. Chunks of
/// at most 8192 rows run in parallel on the backend's thread pool (the small per-layer ops of a
/// vector flow do not use more than one core by themselves).
pub fn log_prob_rows(
    model: &VectorFlow,
    rows: &[f64],
    dim: usize,
    context: usize,
    device: &Device,
) -> Vec<f64> {
    let w = dim + context;
    let n = rows.len() / w;
    let chunk_rows = EVAL_BATCH.min(n.div_ceil(rayon::current_num_threads()).max(1));
    let columns = |chunk: &[f64], from: usize, to: usize| -> Vec<f32> {
        chunk
            .chunks(w)
            .flat_map(|r| r[from..to].iter().map(|&v| v as f32))
            .collect()
    };
    let parts: Vec<Vec<f64>> = rows
        .par_chunks(chunk_rows * w)
        .map(|chunk| {
            let k = chunk.len() / w;
            let x = from_vec(columns(chunk, 0, dim), [k, dim], device);
            let c = (context > 0).then(|| from_vec(columns(chunk, dim, w), [k, context], device));
            to_vec(model.log_prob_ctx(x, c.as_ref()))
                .into_iter()
                .map(f64::from)
                .collect()
        })
        .collect();
    parts.concat()
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
    let (x, logp) = model.sample(n, 1.0, &mut rng, device);
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
    let (x, _) = model.sample_ctx(n, 1.0, ctx.as_ref(), &mut rng, device);
    to_vec(x).into_iter().map(f64::from).collect()
}
