//! The flags of vector-flow training that `train2d` and `compare` share, and their checks.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use glowflow::data::stream::TableOptions;
use glowflow::data::stream::DEFAULT_TEST_FRACTION;
use glowflow::data::Target;
use glowflow::limits::{MAX_FLOW_STEPS, MAX_STEPS, MAX_THREADS, MAX_WIDTH};
use glowflow::models::{CouplingKind, ModelKind, Permutation, VectorFlowConfig};
use glowflow::train::stability::StabilityOptions;
use glowflow::train::Train2dOptions;

use super::common::{
    absolute, check_utf8_paths, refuse_given, thread_count, vector_model, vector_recipe,
    StabilityArgs,
};
use super::parse;

/// Options shared by `train2d` and `compare`.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Target distribution.
    #[arg(long, value_enum, default_value_t = vector_recipe().target)]
    pub target: Target,
    /// Train on this table instead of a target: CSV (header row optional) or NumPy .npy, one
    /// row per sample, at least 1 modelled column (one needs --coupling spline). Standardised
    /// inside the model (its log-determinant included, so NLLs are in the data's units).
    #[arg(long, conflicts_with = "target")]
    pub data: Option<PathBuf>,
    /// Test rows in a separate table with the same columns [default: hold out
    /// --test-fraction of --data].
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// Share of --data's rows held out for the test NLL (a seeded draw, written to split.csv).
    #[arg(long, default_value_t = DEFAULT_TEST_FRACTION, value_parser = parse::fraction)]
    pub test_fraction: f64,
    /// Seed of that draw, apart from --seed, so runs of several seeds share one test set.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Dequantise every modelled column that holds only integers: add uniform noise in [0, 1)
    /// (fresh each step; one seeded draw for the test rows), so the NLL is an upper bound on
    /// the discrete NLL of those columns instead of an unbounded continuous density.
    #[arg(long)]
    pub dequantize: bool,
    /// Modelled columns of --data, by header name or 0-based index, comma-separated
    /// [default: every column not in --context-columns].
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Context columns of --data the flow is conditioned on (every coupling network reads
    /// them); samples are drawn for given contexts.
    #[arg(long, value_delimiter = ',')]
    pub context_columns: Vec<String>,
    /// Training steps (total, including those of a resumed checkpoint).
    #[arg(long, value_parser = parse::count::<1, MAX_STEPS>)]
    pub steps: Option<usize>,
    /// Batch size.
    #[arg(long, visible_alias = "batch", default_value_t = vector_recipe().batch_size, value_parser = parse::count::<1, 16_777_216>)]
    pub batch_size: usize,
    /// Adam learning rate (may change on train2d --resume; recorded).
    #[arg(long, default_value_t = vector_recipe().lr, value_parser = parse::learning_rate)]
    pub lr: f64,
    /// Multiply the learning rate by --lr-gamma every this many steps (StepLR).
    #[arg(long, default_value_t = vector_recipe().lr_step, value_parser = parse::count::<1, MAX_STEPS>)]
    pub lr_step: usize,
    /// StepLR factor.
    #[arg(long, default_value_t = vector_recipe().lr_gamma, value_parser = parse::factor)]
    pub lr_gamma: f64,
    /// Number of flow steps K.
    #[arg(long, visible_alias = "layers", default_value_t = vector_model().flow_steps, value_parser = parse::count::<1, MAX_FLOW_STEPS>)]
    pub flow_steps: usize,
    /// Coupling-network hidden width.
    #[arg(long, visible_alias = "hidden", default_value_t = vector_model().net_width, value_parser = parse::count::<1, MAX_WIDTH>)]
    pub net_width: usize,
    /// Coupling-network hidden layers.
    #[arg(long, visible_alias = "depth", default_value_t = vector_model().net_depth, value_parser = parse::count::<1, 64>)]
    pub net_depth: usize,
    /// Coupling form: tanh (the tutorial's x * exp(tanh(s) * a + b) + t), sigmoid (Glow's
    /// (x + t) * sigmoid(s + 2), which can only contract), additive, or spline (neural spline
    /// flows' rational-quadratic spline on [-5, 5], identity outside).
    #[arg(long, value_enum, default_value_t = vector_model().coupling)]
    pub coupling: CouplingKind,
    /// Width E of a learned context embedding (with --context-columns): an MLP
    /// context -> [E, ReLU] -> E applied once per row, whose output every coupling network
    /// reads instead of the context itself, trained with the flow (0: none).
    #[arg(long, default_value_t = 0, value_parser = parse::count::<0, MAX_WIDTH>)]
    pub context_embedding: usize,
    /// Bins K of each spline (--coupling spline): 3K - 1 network outputs per transformed value.
    #[arg(long, default_value_t = vector_model().spline_bins, value_parser = parse::count::<2, 64>)]
    pub spline_bins: usize,
    /// Follow each spline (--coupling spline) by a conditional affine map from the same
    /// network, y = spline(x) * exp(s) + t (true, the default), or use the plain spline of
    /// neural spline flows (false).
    #[arg(long, default_value_t = vector_model().spline_affine, action = clap::ArgAction::Set)]
    pub spline_affine: bool,
    /// Scale of sigmoid couplings: bounded (sigmoid(s + 2) floored at 1e-5, so a sample
    /// cannot overflow) or glow (Glow's exact sigmoid(s + 2), unbounded below).
    #[arg(long, value_enum, default_value_t = vector_model().affine_scale)]
    pub affine_scale: glowflow::layers::AffineScale,
    /// Seed for initialisation and data.
    #[arg(long, default_value_t = vector_recipe().seed)]
    pub seed: u64,
    /// Number of density frames in training.gif.
    #[arg(long, default_value_t = vector_recipe().frames, value_parser = parse::count::<0, 10_000>)]
    pub frames: usize,
    /// Save a checkpoint every this many steps (0: at the end only; Ctrl-C also saves).
    #[arg(long, default_value_t = vector_recipe().checkpoint_every, value_parser = parse::count::<0, MAX_STEPS>)]
    pub checkpoint_every: usize,
    /// Held-out samples for the test NLL.
    #[arg(long, default_value_t = vector_recipe().test_samples, value_parser = parse::count::<1, 67_108_864>)]
    pub test_samples: usize,
    /// A metrics.csv row every this many steps.
    #[arg(long, default_value_t = vector_recipe().log_every, value_parser = parse::count::<1, MAX_STEPS>)]
    pub log_every: usize,
    /// Side of the density maps and frames, in cells.
    #[arg(long, default_value_t = vector_recipe().grid, value_parser = parse::count::<2, 4096>)]
    pub grid: usize,
    /// Compute device: flex (CPU), cuda or cuda:N. `train2d` also takes a list of GPUs
    /// (cuda:0,cuda:1): data-parallel training, one equal shard of every batch per GPU.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Threads for data-parallel training (default: all cores). Runs are deterministic for a
    /// given thread count; a resumed run keeps its own unless this is given (with a note).
    #[arg(long, value_parser = parse::count::<1, MAX_THREADS>)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub stability: StabilityArgs,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    pub fn threads(&self) -> usize {
        thread_count(self.threads, &self.device)
    }

    pub fn options(&self, default_steps: usize) -> Train2dOptions {
        let mut o = Train2dOptions::new(self.target);
        o.steps = self.steps.unwrap_or(default_steps);
        o.batch_size = self.batch_size;
        o.lr = self.lr;
        o.lr_step = self.lr_step;
        o.lr_gamma = self.lr_gamma;
        o.seed = self.seed;
        o.frames = self.frames;
        o.checkpoint_every = self.checkpoint_every;
        o.test_samples = self.test_samples;
        o.log_every = self.log_every;
        o.grid = self.grid;
        o.stability = self.stability.options(StabilityOptions::off());
        o.table = self.data.as_ref().map(|p| TableOptions {
            path: absolute(p),
            test_path: self.test_data.as_deref().map(absolute),
            test_fraction: self.test_fraction,
            split_seed: Some(self.split_seed),
            columns: self.columns.clone(),
            context_columns: self.context_columns.clone(),
            fingerprint: None,
            resolved: None,
            dequantize: self.dequantize,
            numbers_header: true,
            in_memory: false,
        });
        o
    }

    pub fn config(&self, model: ModelKind, permutation: Permutation) -> VectorFlowConfig {
        let mut c = VectorFlowConfig::new(model);
        c.flow_steps = self.flow_steps;
        c.net_width = self.net_width;
        c.net_depth = self.net_depth;
        c.coupling = self.coupling;
        c.spline_bins = self.spline_bins;
        c.spline_affine = self.spline_affine;
        c.context_embedding = self.context_embedding;
        c.affine_scale = self.affine_scale;
        c.permutation = permutation;
        c.init_seed = self.seed;
        c
    }
}

/// Refuse the table flags without `--data` (they select and split a table's rows).
pub fn check_table_flags(c: &CommonArgs, given: &[(String, String)]) -> Result<()> {
    check_utf8_paths(&[
        ("--data", c.data.as_deref()),
        ("--test-data", c.test_data.as_deref()),
    ])?;
    if c.coupling != CouplingKind::Sigmoid {
        let why = "shapes the scale of sigmoid couplings: it needs --coupling sigmoid";
        refuse_given(given, &["--affine-scale"], why)?;
    }
    if c.coupling != CouplingKind::Spline {
        let why = "shapes spline couplings: it needs --coupling spline";
        refuse_given(given, &["--spline-bins", "--spline-affine"], why)?;
    }
    if c.data.is_some() {
        if c.test_data.is_some() {
            let why = "shapes the share of --data held out for testing; with --test-data no rows are held out";
            refuse_given(given, &["--test-fraction", "--split-seed"], why)?;
        }
        let why =
            "shapes the pictures and test points of a built-in 2D target; a table run has none";
        return refuse_given(given, &["--test-samples", "--grid", "--frames"], why);
    }
    let flags = [
        "--test-data",
        "--test-fraction",
        "--split-seed",
        "--columns",
        "--context-columns",
        "--dequantize",
    ];
    refuse_given(given, &flags, "needs --data FILE (a table to train on)")
}
