//! Batch streams: the training data of vector flows, and the epoch order of any training set.
//!
//! - 2D targets: pools of fresh target samples (the tutorial's 65,536), redrawn when used up.
//!   Pool `r` is drawn from its own RNG seeded by `(seed, r)`.
//! - Tables ([`TableData`]): the training rows in seeded epoch permutations.
//!
//! Either way the batch of any step is a pure function of the seed and the step: resuming
//! reproduces the data exactly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use anyhow::Result;
use burn::tensor::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::dequant::dequantize;
use super::ImageSet;
use crate::tensor_util::from_vec;

use crate::data::table::read_table_as;
use crate::data::toy2d::Target;
use crate::error::InputError;

/// The batches of a vector-flow run, as flat `[batch * width]` float32 rows.
pub struct DataStream {
    /// Rows of a table (`width` values each) when the run trains on one.
    rows: Option<(Arc<Vec<f64>>, usize)>,
    target: Target,
    seed: u64,
    batch: usize,
    pool_size: usize,
    pool_index: Option<usize>,
    pool: Vec<[f64; 2]>,
    /// Per-column `(mean, 1 / std)` a table's rows are standardised with, in float64, before
    /// they become float32 (see [`DataStream::standardize_with`]).
    standardize: Option<(Vec<f64>, Vec<f64>)>,
    /// Columns that get fresh uniform dequantisation noise in every batch.
    dequantized: Vec<usize>,
}

/// The most values (rows times columns) a table run's ActNorm initialisation reads: up to this
/// many training rows, not one batch, so a rare column's few non-zero values are seen.
pub const INIT_VALUES: usize = 1 << 20;

/// The tutorial's pool size; rounded up to a multiple of the batch.
pub const DEFAULT_POOL: usize = 65_536;

impl DataStream {
    /// The stream of a 2D target's samples for `seed`, `batch` points per step.
    pub fn new(target: Target, seed: u64, batch: usize) -> Self {
        let pool_size = DEFAULT_POOL.div_ceil(batch) * batch;
        DataStream {
            rows: None,
            target,
            seed,
            batch,
            pool_size,
            pool_index: None,
            pool: Vec::new(),
            standardize: None,
            dequantized: Vec::new(),
        }
    }

    /// The training rows of a table, in seeded epoch permutations.
    pub fn table(data: &TableData, seed: u64, batch: usize) -> Self {
        let mut s = DataStream::new(Target::Normals, seed, batch);
        s.rows = Some((Arc::clone(&data.train), data.dim + data.context));
        s.dequantized.clone_from(&data.dequantized);
        s
    }

    /// Standardise a table's rows with per-column `mean` and `std` (float64, every column:
    /// data then context) before they become float32, so a column like `1e9 + N(0, 1)` keeps
    /// its spread. Targets' points are not affected.
    pub fn standardize_with(&mut self, mean: Vec<f64>, std: &[f64]) {
        self.standardize = Some((mean, std.iter().map(|s| 1.0 / s).collect()));
    }

    /// Rows `idx` of the table, dequantised (when set: noise stream `noise`, so a step's
    /// batch is the same on resume), standardised (when set) in float64, as float32.
    fn table_rows(&self, rows: &[f64], width: usize, idx: &[usize], noise: u64) -> Vec<f32> {
        let mut picked: Vec<f64> = idx
            .iter()
            .flat_map(|&i| rows[i * width..(i + 1) * width].iter().copied())
            .collect();
        add_uniform_noise(
            &mut picked,
            width,
            &self.dequantized,
            self.seed ^ noise.wrapping_mul(crate::rng::TARGET_POOLS),
        );
        picked
            .chunks(width)
            .flat_map(|row| {
                row.iter()
                    .enumerate()
                    .map(move |(c, &v)| match &self.standardize {
                        Some((m, inv)) => ((v - m[c]) * inv[c]) as f32,
                        None => v as f32,
                    })
            })
            .collect()
    }

    /// The rows a table run's ActNorms initialise from: the first epoch's order, up to
    /// [`INIT_VALUES`] values (flat `[rows * width]`, standardised like the batches), and the
    /// row count; a target's first batch otherwise.
    pub fn init_rows(&mut self) -> (Vec<f32>, usize) {
        if let Some((rows, width)) = &self.rows {
            let n = rows.len() / width;
            let take = n.min((INIT_VALUES / width).max(self.batch)).max(1);
            let mut idx = Vec::with_capacity(take);
            let mut step = 0;
            while idx.len() < take {
                idx.extend(epoch_batch(n, self.batch, self.seed, step));
                step += 1;
            }
            idx.truncate(take);
            return (self.table_rows(rows, *width, &idx, 0), take);
        }
        (self.batch_at(0), self.batch)
    }

    /// The batch of training step `step` (0-based), as flat `[batch * width]` f32 (width 2 for
    /// a target; a table's data then context columns, standardised when set).
    pub fn batch_at(&mut self, step: usize) -> Vec<f32> {
        if let Some((rows, width)) = &self.rows {
            let n = rows.len() / width;
            let idx = epoch_batch(n, self.batch, self.seed, step);
            return self.table_rows(rows, *width, &idx, step as u64 + 1);
        }
        let start = step * self.batch;
        let r = start / self.pool_size;
        if self.pool_index != Some(r) {
            let mut rng = crate::rng::seeded(self.seed, crate::rng::TARGET_POOLS);
            rng.set_stream(r as u64 + 1);
            self.pool = self.target.sample(self.pool_size, &mut rng);
            self.pool_index = Some(r);
        }
        let off = start % self.pool_size;
        self.pool[off..off + self.batch]
            .iter()
            .flat_map(|p| [p[0] as f32, p[1] as f32])
            .collect()
    }
}

/// Seed of the held-out test sample, distinct from every training pool of the same seed.
pub fn test_seed(seed: u64) -> u64 {
    seed.wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        ^ crate::rng::TEST_POINTS
}

/// `n` held-out test points for a run seeded `seed`.
pub fn test_points(target: Target, seed: u64, n: usize) -> Vec<[f64; 2]> {
    let mut rng = ChaCha8Rng::seed_from_u64(test_seed(seed));
    rng.set_stream(0);
    target.sample(n, &mut rng)
}

/// A table run's data: the training and test rows (data columns, then context columns), their
/// names, and where the test rows came from.
pub struct TableData {
    /// The training table's path, as the summary names it.
    pub source: String,
    /// Column names: the `dim` data columns, then the `context` columns.
    pub names: Vec<String>,
    /// Number of modelled columns `D`.
    pub dim: usize,
    /// Number of context columns `K`.
    pub context: usize,
    /// Training rows, `[n_train, D + K]` row-major (shared with the batch stream, not copied).
    pub train: Arc<Vec<f64>>,
    /// Test rows, `[n_test, D + K]`.
    pub test: Vec<f64>,
    /// For a held-out split: 1 for each row of the file that is a test row.
    pub split: Option<Vec<u8>>,
    /// The 0-based index of each test row among its file's data rows (the test table's, or
    /// `path`'s), as numpy and pandas number them.
    pub test_index: Vec<usize>,
    /// [`Table::fingerprint`](crate::data::table::Table::fingerprint) of the training table.
    pub fingerprint: String,
    /// The modelled then context columns as names, as indices into the training table, and
    /// whether that table names its columns (what a run saves: [`TableOptions::resolved`]).
    pub resolved: ResolvedColumns,
    /// Modelled columns (positions in a row, below `dim`) dequantised with uniform noise
    /// ([`TableOptions::dequantize`]); empty without it. `test` holds the test rows with their
    /// one seeded draw already added; `train` holds the raw rows (each step draws afresh).
    pub dequantized: Vec<usize>,
    /// What the table readers decided that a user should know ([`Table::notes`](crate::data::table::Table::notes) of the
    /// training and test tables); [`TableData::degeneracy`] returns them first.
    pub notes: Vec<String>,
}

/// A table run's columns as the run saw them: kept in the run, so a moved or rewritten
/// training table cannot rename them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolvedColumns {
    /// Names: the modelled columns, then the context columns (`c3` for column 3 of a table
    /// without a header).
    pub names: Vec<String>,
    /// The same columns' 0-based indices in the training table.
    pub index: Vec<usize>,
    /// Whether the training table names its columns (a header row).
    pub named: bool,
    /// The training table's number of columns (0: unknown), so a table matched by position
    /// must have as many.
    #[serde(default)]
    pub width: usize,
    /// Modelled columns (positions among `names`) the run dequantised (`--dequantize`):
    /// `sample` floors them back to integers, `score` adds the noise to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dequantized: Vec<usize>,
}

/// Refuse a training or test value beyond float32's range (finite in the file, but the model
/// computes in float32: such a value is a sentinel or a unit error, and it would dominate its
/// column's standardisation), naming the file, row and column.
fn check_float32_range(table: &crate::data::table::Table, cols: &[usize]) -> Result<()> {
    let max = f32::MAX as f64;
    for r in 0..table.rows {
        let row = table.row(r);
        if let Some(&c) = cols.iter().find(|&&c| row[c].abs() > max) {
            return Err(InputError::file(
                &table.source,
                Some(format!("{}, column '{}'", table.locate(r), table.columns[c])),
                format!(
                    "{:e} is beyond float32's range (±3.4e38), which the model computes in; rescale the column or drop the row",
                    row[c]
                ),
            )
            .into());
        }
    }
    Ok(())
}

impl TableData {
    /// Read the table(s) `opts` names, select the columns and split off the test rows (a seeded
    /// draw of `test_fraction` of the rows, kept in file order) unless a test table is given.
    ///
    /// # Errors
    /// Names the file, row and column of a bad cell ([`read_table_as`]), `--columns` /
    /// `--context-columns` for an unknown column, `--data` for no modelled column or
    /// too few rows, `--test-data` for a test table whose columns differ.
    pub fn load(opts: &TableOptions, seed: u64) -> Result<Self> {
        if let Some(t) = &opts.test_path {
            // The same file twice would test on the training rows and report it as held out.
            if crate::fsutil::same_path(t, &opts.path) {
                let why = "is the `data` file itself: a test table must hold other rows (or leave it out to hold out `test_fraction`)";
                return Err(InputError::option("test_data", t.display(), why).into());
            }
        }
        let table = read_table_as(&opts.path, opts.numbers_header)?;
        let test = match &opts.test_path {
            Some(p) => Some(read_table_as(p, opts.numbers_header)?),
            None => None,
        };
        Self::from_tables(&table, test.as_ref(), opts, seed)
    }

    /// [`load`](Self::load) of tables already in memory: `table` is the training table,
    /// `test` the test table (`opts.test_path` only names it in messages); without one,
    /// `opts.test_fraction` of the rows are held out, or none when it is 0 (a fit on every row
    /// of a table in memory: `opts.in_memory`).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn from_tables(
        table: &crate::data::table::Table,
        test: Option<&crate::data::table::Table>,
        opts: &TableOptions,
        seed: u64,
    ) -> Result<Self> {
        let ctx = table.column_indices(&opts.context_columns, "context_columns")?;
        let cols = if opts.columns.is_empty() {
            (0..table.width()).filter(|c| !ctx.contains(c)).collect()
        } else {
            table.column_indices(&opts.columns, "columns")?
        };
        if let Some(c) = cols.iter().find(|c| ctx.contains(c)) {
            return Err(InputError::option(
                "context_columns",
                &table.columns[*c],
                "is also a modelled column (`columns`)",
            )
            .into());
        }
        if cols.is_empty() {
            return Err(InputError::option(
                "data",
                opts.path.display(),
                format!(
                    "has no modelled column; a flow needs at least 1 (columns: {})",
                    table.columns.join(", ")
                ),
            )
            .into());
        }
        let all: Vec<usize> = cols.iter().chain(&ctx).copied().collect();
        check_float32_range(table, &all)?;
        let names: Vec<String> = all.iter().map(|&c| table.columns[c].clone()).collect();
        let mut resolved = ResolvedColumns {
            names: if table.named {
                names.clone()
            } else {
                all.iter().map(|&c| format!("c{c}")).collect()
            },
            index: all.clone(),
            named: table.named,
            width: table.width(),
            dequantized: Vec::new(),
        };
        let mut notes = table.notes.clone();
        let mut dequantized = Vec::new();
        if opts.dequantize && test.is_none() {
            dequantized = integer_columns(table, &cols, None)?;
        }
        let (train, test, split, test_index) = match test {
            Some(t) => {
                let p = &t.source;
                notes.extend(t.notes.iter().cloned());
                // The same columns by name when both tables have a header, else by position.
                let test_cols = if t.named && table.named {
                    let names: Vec<String> =
                        all.iter().map(|&c| table.columns[c].clone()).collect();
                    t.column_indices(&names, "test_data")?
                } else if t.width() == table.width() {
                    all.clone()
                } else {
                    return Err(InputError::option(
                        "test_data",
                        p.display(),
                        format!(
                            "has {} columns but the training table {} (without a header on both, columns match by position)",
                            t.width(),
                            table.width()
                        ),
                    )
                    .into());
                };
                check_float32_range(t, &test_cols)?;
                if opts.dequantize {
                    dequantized = integer_columns(table, &cols, Some((t, &test_cols)))?;
                }
                let every = |n: usize| (0..n).collect::<Vec<_>>();
                (
                    table.gather(&every(table.rows), &all),
                    t.gather(&every(t.rows), &test_cols),
                    None,
                    (0..t.rows).collect(),
                )
            }
            None if opts.in_memory && opts.test_fraction == 0.0 => {
                let every: Vec<usize> = (0..table.rows).collect();
                (table.gather(&every, &all), Vec::new(), None, Vec::new())
            }
            None => {
                let n = table.rows;
                let n_test = ((n as f64) * opts.test_fraction).round() as usize;
                if n_test == 0 || n_test >= n {
                    return Err(InputError::option(
                        "test_fraction",
                        opts.test_fraction,
                        format!("leaves {n_test} of {n} rows for testing; need at least one on each side"),
                    )
                    .into());
                }
                let mut perm: Vec<usize> = (0..n).collect();
                perm.shuffle(&mut ChaCha8Rng::seed_from_u64(
                    opts.split_seed_or(seed) ^ crate::rng::TABLE_SPLIT,
                ));
                let mut flag = vec![0u8; n];
                for &i in &perm[n - n_test..] {
                    flag[i] = 1;
                }
                let pick = |want: u8| (0..n).filter(|&i| flag[i] == want).collect::<Vec<_>>();
                let test_rows = pick(1);
                (
                    table.gather(&pick(0), &all),
                    table.gather(&test_rows, &all),
                    Some(flag),
                    test_rows,
                )
            }
        };
        let dim = cols.len();
        resolved.dequantized.clone_from(&dequantized);
        let mut test = test;
        add_uniform_noise(
            &mut test,
            all.len(),
            &dequantized,
            test_seed(opts.split_seed_or(seed)),
        );
        Ok(TableData {
            source: opts.path.display().to_string(),
            names,
            dim,
            context: ctx.len(),
            train: Arc::new(train),
            test,
            split,
            test_index,
            fingerprint: table.fingerprint(),
            resolved,
            dequantized,
            notes,
        })
    }

    /// The training rows as evaluation sees them: with one seeded draw of the dequantisation
    /// noise when columns are dequantised (the training NLL and the Gaussian baseline are then
    /// figures of the same dequantised data as the test NLL), else the rows themselves.
    pub fn train_for_eval(&self) -> std::borrow::Cow<'_, [f64]> {
        if self.dequantized.is_empty() {
            return std::borrow::Cow::Borrowed(&self.train[..]);
        }
        let mut rows = self.train.to_vec();
        add_uniform_noise(
            &mut rows,
            self.width(),
            &self.dequantized,
            crate::rng::TABLE_EVAL_NOISE,
        );
        std::borrow::Cow::Owned(rows)
    }

    /// Values per row: the `D` modelled columns, then the `K` context columns.
    pub fn width(&self) -> usize {
        self.dim + self.context
    }

    /// Training rows.
    pub fn train_rows(&self) -> usize {
        self.train.len() / self.width()
    }

    /// Test rows.
    pub fn test_rows(&self) -> usize {
        self.test.len() / self.width()
    }

    /// Refuse a batch larger than the training split (errors name `--batch`).
    pub fn check_batch(&self, batch: usize) -> Result<()> {
        if batch > self.train_rows() {
            return Err(InputError::option(
                "batch_size",
                batch,
                format!("is larger than the training rows ({})", self.train_rows()),
            )
            .into());
        }
        Ok(())
    }

    /// Per-column mean and population standard deviation of the training rows, for the data
    /// and the context columns. A constant column is refused (no density exists on a point).
    #[allow(clippy::type_complexity)]
    pub fn standardization(&self) -> Result<((Vec<f64>, Vec<f64>), (Vec<f64>, Vec<f64>))> {
        let w = self.width();
        let n = self.train_rows() as f64;
        let mut mean = vec![0.0; w];
        for r in self.train.chunks(w) {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; w];
        for r in self.train.chunks(w) {
            for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        let std: Vec<f64> = var.iter().map(|v| v.sqrt()).collect();
        let (d, k) = (self.dim, self.context);
        // Exactly constant: every training value equal to the first row's.
        let constant = |c: usize| self.train.chunks(w).all(|r| r[c] == self.train[c]);
        if let Some(c) = (0..w).find(|&c| constant(c)) {
            let why = if c < d {
                format!(
                    "column '{}' is constant in the training rows (every value {}): no density exists on a point; leave it out of `columns`",
                    self.names[c], self.train[c]
                )
            } else {
                format!(
                    "context column '{}' is constant in the training rows (every value {}): it carries no information to condition on; leave it out of `context_columns`",
                    self.names[c], self.train[c]
                )
            };
            return Err(InputError::option("data", &self.source, why).into());
        }
        // Not constant, but varying only in the last digits float64 keeps of its values.
        if let Some(c) = (0..w).find(|&c| std[c] <= 1e-10 * mean[c].abs()) {
            return Err(InputError::option(
                "data",
                &self.source,
                format!(
                    "column '{}' varies by {:e} around {:e}, within float64's rounding of its values ({:e} relative): its spread cannot be resolved; subtract its mean before saving the table",
                    self.names[c],
                    std[c],
                    mean[c],
                    std[c] / mean[c].abs()
                ),
            )
            .into());
        }
        // Dequantised columns: the moments of x + u, u ~ U[0, 1) independent of x.
        let (mut mean, mut std) = (mean, std);
        for &c in &self.dequantized {
            mean[c] += 0.5;
            std[c] = (var[c] + 1.0 / 12.0).sqrt();
        }
        Ok((
            (mean[..d].to_vec(), std[..d].to_vec()),
            (mean[d..d + k].to_vec(), std[d..d + k].to_vec()),
        ))
    }

    /// Look for a table a continuous density cannot model well: two modelled columns that are
    /// exact copies of each other, or (up to 64 columns) linearly dependent (|correlation| ≥ 1 −
    /// 1e-9), are refused, since the density is singular there and the loss falls without
    /// bound; a modelled column holding only integers is a warning, returned (a continuous
    /// density of discrete values is unbounded too: its NLL can fall far below the discrete
    /// entropy). Linear dependence among three or more columns is not looked for. The readers'
    /// [`notes`](Self::notes) come first.
    ///
    /// # Errors
    /// Names `--data` and the two columns.
    pub fn degeneracy(&self) -> Result<Vec<String>> {
        let (w, d) = (self.width(), self.dim);
        let n = self.train_rows();
        let col = |c: usize| self.train.chunks(w).map(move |r| r[c]);
        let singular = |a: usize, b: usize, what: String| -> anyhow::Error {
            InputError::option(
                "data",
                &self.source,
                format!(
                    "columns '{}' and '{}' {what} in the training rows: the density is singular there (its loss falls without bound); leave one out of `columns`",
                    self.names[a], self.names[b]
                ),
            )
            .into()
        };
        for a in 0..d {
            for b in a + 1..d {
                if col(a).zip(col(b)).all(|(x, y)| x == y) {
                    return Err(singular(a, b, "are exact copies of each other".into()));
                }
            }
        }
        if d <= 64 && n > 2 {
            let mean: Vec<f64> = (0..d).map(|c| col(c).sum::<f64>() / n as f64).collect();
            let mean = &mean;
            let centred = |c: usize| col(c).map(move |v| v - mean[c]);
            let norm: Vec<f64> = (0..d)
                .map(|c| centred(c).map(|v| v * v).sum::<f64>().sqrt())
                .collect();
            for a in 0..d {
                for b in a + 1..d {
                    let r = centred(a).zip(centred(b)).map(|(x, y)| x * y).sum::<f64>()
                        / (norm[a] * norm[b]);
                    if r.abs() >= 1.0 - 1e-9 {
                        return Err(singular(
                            a,
                            b,
                            format!("are linearly dependent (correlation {r:.12})"),
                        ));
                    }
                }
            }
        }
        let mut warnings = self.notes.clone();
        for c in 0..d {
            if !self.dequantized.contains(&c) && col(c).all(|v| v.fract() == 0.0) {
                let mut distinct: Vec<f64> = col(c).collect();
                distinct.sort_by(f64::total_cmp);
                distinct.dedup();
                warnings.push(format!(
                    "column '{}' holds only integers ({} distinct values): a continuous density of discrete data is unbounded, so its NLL can fall far below the data's discrete entropy and is not a likelihood of the data; train with `dequantize` (uniform noise in [0, 1) added to each integer column) to get an upper bound on the discrete NLL instead",
                    self.names[c],
                    distinct.len()
                ));
            }
        }
        Ok(warnings)
    }

    /// Write the held-out split (`split.csv`: `index,test`, the 0-based index of each data row
    /// of the file, as numpy and pandas number them, and 1 for a test row) into the run
    /// directory, so another program can train on exactly the same rows.
    pub fn write_split(&self, out: &Path) -> Result<()> {
        let Some(flag) = &self.split else {
            return Ok(());
        };
        let rows = flag
            .iter()
            .enumerate()
            .map(|(i, f)| [i.to_string(), f.to_string()]);
        crate::fsutil::write_csv(&out.join("split.csv"), &["index", "test"], rows)
    }

    /// Test NLL of a full-covariance Gaussian fitted by maximum likelihood to the training
    /// rows (conditional models: `log N(x, c) - log N(c)`, the Gaussian's `p(x | c)`); `None`
    /// when the covariance is singular. Dequantised columns: fitted to and scored on the
    /// dequantised rows, like the flow.
    pub fn gaussian_test_nll(&self) -> Option<f64> {
        if self.test_rows() == 0 {
            return None;
        }
        let w = self.width();
        let train = self.train_for_eval();
        let joint = Gaussian::fit(&train, w, &(0..w).collect::<Vec<_>>())?;
        let ctx: Vec<usize> = (self.dim..w).collect();
        let marginal = if ctx.is_empty() {
            None
        } else {
            Some(Gaussian::fit(&train, w, &ctx)?)
        };
        let mut total = 0.0;
        for r in self.test.chunks(w) {
            let mut lp = joint.log_prob(r);
            if let Some(m) = &marginal {
                lp -= m.log_prob(&r[self.dim..]);
            }
            total -= lp;
        }
        Some(total / self.test_rows() as f64)
    }
}

/// A Gaussian `N(mean, cov)` over some columns, its covariance factored for log-densities.
struct Gaussian {
    cols: Vec<usize>,
    mean: Vec<f64>,
    inv: crate::linalg::Mat,
    log_det: f64,
}

impl Gaussian {
    /// Maximum-likelihood fit to the columns `cols` of `rows` (`width` values each); `None`
    /// when the covariance is singular.
    fn fit(rows: &[f64], width: usize, cols: &[usize]) -> Option<Gaussian> {
        let d = cols.len();
        let n = (rows.len() / width) as f64;
        let mut mean = vec![0.0; d];
        for r in rows.chunks(width) {
            for (m, &c) in mean.iter_mut().zip(cols) {
                *m += r[c] / n;
            }
        }
        let mut cov = crate::linalg::Mat::zeros(d);
        for r in rows.chunks(width) {
            for i in 0..d {
                let a = r[cols[i]] - mean[i];
                for j in 0..d {
                    let b = r[cols[j]] - mean[j];
                    cov.set(i, j, cov.get(i, j) + a * b / n);
                }
            }
        }
        let (sign, log_det) = crate::linalg::slogdet(&cov)?;
        if sign <= 0.0 || !log_det.is_finite() {
            return None;
        }
        Some(Gaussian {
            cols: cols.to_vec(),
            mean,
            inv: crate::linalg::inverse(&cov)?,
            log_det,
        })
    }

    /// `log N(x)` of the values `x` (already restricted to this Gaussian's columns when it has
    /// as many values as columns; otherwise the columns are picked from a full row).
    fn log_prob(&self, x: &[f64]) -> f64 {
        let d = self.cols.len();
        let v: Vec<f64> = if x.len() == d {
            x.iter().zip(&self.mean).map(|(a, m)| a - m).collect()
        } else {
            self.cols
                .iter()
                .zip(&self.mean)
                .map(|(&c, m)| x[c] - m)
                .collect()
        };
        let mut q = 0.0;
        for i in 0..d {
            for j in 0..d {
                q += v[i] * self.inv.get(i, j) * v[j];
            }
        }
        -0.5 * (d as f64 * crate::distributions::LN_2PI + self.log_det + q)
    }
}

/// Add uniform noise `u ~ U[0, 1)` to the columns `cols` of `rows` (`width` values each), one
/// seeded draw per value in row order.
pub fn add_uniform_noise(rows: &mut [f64], width: usize, cols: &[usize], seed: u64) {
    use rand::Rng;
    if cols.is_empty() {
        return;
    }
    let mut rng = crate::rng::seeded(seed, crate::rng::TABLE_NOISE);
    for r in rows.chunks_mut(width) {
        for &c in cols {
            r[c] += rng.gen::<f64>();
        }
    }
}

/// The modelled columns (positions among `cols`, the training table's modelled columns) whose
/// values are all integers in the training table, for `--dequantize`; a value that is not an
/// integer in one of them in the test table (`test`: the table and its columns, in the same
/// order) is refused, naming its row.
fn integer_columns(
    table: &crate::data::table::Table,
    cols: &[usize],
    test: Option<(&crate::data::table::Table, &[usize])>,
) -> Result<Vec<usize>> {
    let integer = |c: usize| (0..table.rows).all(|r| table.row(r)[c].fract() == 0.0);
    let found: Vec<usize> = (0..cols.len()).filter(|&j| integer(cols[j])).collect();
    if found.is_empty() {
        return Err(InputError::option(
            "dequantize",
            table.source.display(),
            "no modelled column holds only integers: there is nothing to dequantise",
        )
        .into());
    }
    // Float64 keeps 9 bits of the noise below the integer up to 2^43.
    const MAX_DEQUANTIZED: f64 = (1u64 << 43) as f64;
    for &j in &found {
        let c = cols[j];
        if let Some(r) = (0..table.rows).find(|&r| table.row(r)[c].abs() > MAX_DEQUANTIZED) {
            return Err(InputError::file(
                &table.source,
                Some(format!("{}, column '{}'", table.locate(r), table.columns[c])),
                format!(
                    "{} is too large for `dequantize`: above 2^43, float64 cannot hold noise in [0, 1) beside it; subtract an offset from the column first",
                    table.row(r)[c]
                ),
            )
            .into());
        }
    }
    if let Some((t, tcols)) = test {
        for &j in &found {
            let c = tcols[j];
            if let Some(r) = (0..t.rows).find(|&r| t.row(r)[c].fract() != 0.0) {
                return Err(InputError::file(
                    &t.source,
                    Some(format!("{}, column '{}'", t.locate(r), t.columns[c])),
                    format!(
                        "{} is not an integer, but this column holds only integers in the training table and `dequantize` models it as integers",
                        t.row(r)[c]
                    ),
                )
                .into());
            }
        }
    }
    Ok(found)
}

/// Share of a table's rows held out for testing when no test table is given.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;

/// A user's numeric table as the training data of a vector flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableOptions {
    /// The training table, `.csv` or `.npy` (absolute path).
    pub path: PathBuf,
    /// A separate test table with the same columns (absolute), or `None`: hold out
    /// `test_fraction` of `path`'s rows (a seeded draw; the run writes it to `split.csv`).
    pub test_path: Option<PathBuf>,
    /// Share of the rows held out for testing when there is no test table, in (0, 1).
    pub test_fraction: f64,
    /// Seed of the held-out split, kept apart from the training seed so runs of several seeds
    /// share one test set (`None` in runs saved before it existed: their training seed drew
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    /// Modelled columns, names or 0-based indices (empty: every column not in the context).
    pub columns: Vec<String>,
    /// Context columns the flow is conditioned on (names or 0-based indices).
    pub context_columns: Vec<String>,
    /// [`Table::fingerprint`](crate::data::table::Table::fingerprint) of the training table,
    /// filled when the run starts; a resumed run checks it.
    pub fingerprint: Option<String>,
    /// The columns as the run resolved them, filled when the run starts (runs saved before it
    /// existed: `None`, and their names are read from the table again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedColumns>,
    /// Uniform dequantisation of every modelled column that holds only integers (`--dequantize`):
    /// each value `x` becomes `x + u`, `u ~ U[0, 1)`, fresh noise every training step and one
    /// seeded draw for the test rows, so the flow's NLL bounds the discrete NLL of those
    /// columns from above (Theis et al. 2016, §3.1; Ho et al. 2019, Flow++ §3.1).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dequantize: bool,
    /// Whether a CSV's first row `0,1,2,...` is read as a header of column numbers (pandas'
    /// header for unnamed columns). Runs saved before it was recognised (`false`) read that
    /// row as data, and keep reading their tables that way.
    #[serde(default)]
    pub numbers_header: bool,
    /// The rows were given in memory by a program (the library's `fit`), not read from
    /// `path` (which then only names them): such a run resumes only from a program holding
    /// the same rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_memory: bool,
}

/// Row indices of training step `step` over a set of `n` rows: epochs are seeded permutations,
/// so any step's batch is reproducible on resume (a batch that runs past an epoch's end wraps
/// to its start).
pub fn epoch_batch(n: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    let per_epoch = (n / batch).max(1);
    let (epoch, k) = (step / per_epoch, step % per_epoch);
    let perm = epoch_permutation(n, seed, epoch);
    (0..batch).map(|j| perm[(k * batch + j) % n]).collect()
}

/// The seeded permutation of `n` rows for epoch `epoch`. The last one drawn is kept per
/// thread: consecutive steps of an epoch reuse it instead of shuffling every row again (a
/// shuffle of 80,000 rows costs about as much as a small model's training step).
fn epoch_permutation(n: usize, seed: u64, epoch: usize) -> std::rc::Rc<Vec<usize>> {
    use rand::seq::SliceRandom;
    use std::cell::RefCell;
    use std::rc::Rc;
    type Key = (usize, u64, usize);
    thread_local! {
        static LAST: RefCell<Option<(Key, Rc<Vec<usize>>)>> = const { RefCell::new(None) };
    }
    let key = (n, seed, epoch);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((k, perm)) = last.as_ref() {
            if *k == key {
                return Rc::clone(perm);
            }
        }
        let mut rng = crate::rng::seeded(seed, crate::rng::EPOCHS);
        rng.set_stream(epoch as u64);
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut rng);
        let perm = Rc::new(perm);
        *last = Some((key, Rc::clone(&perm)));
        perm
    })
}

/// Rows of `d` values followed by the one-hot (`k` wide) of each row's label.
pub fn with_one_hot(rows: &[f32], d: usize, idx: &[usize], labels: &[u8], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * (d + k));
    for (row, &i) in rows.chunks(d).zip(idx) {
        out.extend_from_slice(row);
        let mut hot = vec![0f32; k];
        hot[labels[i] as usize] = 1.0;
        out.extend_from_slice(&hot);
    }
    out
}

/// Label dropout for classifier-free guidance: set the one-hot of each row (`width` values,
/// then `classes` one-hot columns) to zero with probability `p` (the null class), drawing from
/// `rng`. Returns how many rows were dropped.
pub fn drop_labels(
    rows: &mut [f32],
    width: usize,
    classes: usize,
    p: f64,
    rng: &mut impl rand::Rng,
) -> usize {
    let mut dropped = 0;
    for row in rows.chunks_mut(width + classes) {
        if rng.gen::<f64>() < p {
            row[width..].fill(0.0);
            dropped += 1;
        }
    }
    dropped
}

/// [`image_rows`] as a tensor `[idx.len(), c, h, w]` on `device`.
pub fn image_batch(
    set: &ImageSet,
    idx: &[usize],
    n_bits: u32,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Tensor<4> {
    from_vec(
        image_rows(set, idx, n_bits, rng),
        [idx.len(), set.c, set.h, set.w],
        device,
    )
}

/// The images `idx` of `set` dequantised (`n_bits`, noise from `rng`) and flattened on the
/// host, one image per row: `[idx.len(), c * h * w]`.
pub fn image_rows(set: &ImageSet, idx: &[usize], n_bits: u32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut px = Vec::with_capacity(idx.len() * set.dims());
    for &i in idx {
        px.extend_from_slice(set.image(i));
    }
    dequantize(&px, n_bits, rng)
}

/// The RNG of training step `step`'s dequantisation noise (its own stream of `seed`), so a
/// resumed run draws the same noise.
pub fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    let mut rng = crate::rng::seeded(seed, crate::rng::STEPS);
    rng.set_stream(step as u64 + 1);
    rng
}

impl TableOptions {
    /// The held-out split's seed: its own (`--split-seed`), or, in runs saved before it
    /// existed, the training seed `seed`. The test rows' dequantisation draw uses it too.
    pub fn split_seed_or(&self, seed: u64) -> u64 {
        self.split_seed.unwrap_or(seed)
    }

    /// The modelled then context columns of this table run, as names and as indices into its training
    /// table, and whether that table names its columns; `None` when it is no longer readable.
    ///
    /// # Errors
    /// A column flag naming a column the table lacks.
    #[allow(clippy::type_complexity)]
    pub fn resolved_columns(&self) -> Result<Option<(Vec<String>, Vec<usize>, bool)>> {
        if let Some(r) = &self.resolved {
            return Ok(Some((r.names.clone(), r.index.clone(), r.named)));
        }
        let Ok(tr) = read_table_as(&self.path, self.numbers_header) else {
            return Ok(None);
        };
        let ctx = tr.column_indices(&self.context_columns, "context_columns")?;
        let cols: Vec<usize> = if self.columns.is_empty() {
            (0..tr.width()).filter(|c| !ctx.contains(c)).collect()
        } else {
            tr.column_indices(&self.columns, "columns")?
        };
        let index: Vec<usize> = cols.iter().chain(&ctx).copied().collect();
        let names = if tr.named {
            index.iter().map(|&c| tr.columns[c].clone()).collect()
        } else {
            index.iter().map(|&c| format!("c{c}")).collect()
        };
        Ok(Some((names, index, tr.named)))
    }
}

#[cfg(test)]
mod tests {
    use super::epoch_batch;

    /// The batch of `step` with its epoch's permutation drawn afresh (no cache).
    fn fresh(n: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let per_epoch = (n / batch).max(1);
        let (epoch, k) = (step / per_epoch, step % per_epoch);
        let mut rng = crate::rng::seeded(seed, crate::rng::EPOCHS);
        rng.set_stream(epoch as u64);
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut rng);
        (0..batch).map(|j| perm[(k * batch + j) % n]).collect()
    }

    #[test]
    fn cached_epochs_give_the_batches_of_fresh_permutations() {
        // Steps across epoch boundaries, interleaved with other tables and seeds, and a step
        // revisited out of order (as a resume does).
        let calls = [
            (100, 30, 7, 0),
            (100, 30, 7, 1),
            (57, 8, 7, 0),
            (100, 30, 7, 2),
            (100, 30, 7, 3),
            (100, 30, 8, 3),
            (100, 30, 7, 4),
            (100, 30, 7, 1),
            (5, 8, 1, 9),
        ];
        for &(n, b, seed, step) in &calls {
            assert_eq!(
                epoch_batch(n, b, seed, step),
                fresh(n, b, seed, step),
                "{n} {b} {seed} {step}"
            );
        }
        // Every row once per epoch.
        let mut seen: Vec<usize> = (0..3).flat_map(|s| epoch_batch(90, 30, 3, s)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..90).collect::<Vec<_>>());
    }
}
