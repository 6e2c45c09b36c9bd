//! The named random streams of training and evaluation. Every random draw of a run comes from a
//! ChaCha8 generator seeded by the run's seed XOR one of these names (and, where a draw repeats
//! per step or per epoch, a ChaCha stream number), so draws of different purposes never share a
//! generator and every batch, noise draw and test set is a pure function of the seed: a resumed
//! run draws what an uninterrupted one would. The values are part of the results (changing one
//! changes every figure drawn from it), so they are fixed here once.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Pools of a 2D target's training samples (stream: the pool's number + 1); also the
/// multiplier that spreads a table step's dequantisation-noise index.
pub const TARGET_POOLS: u64 = 0x9E37_79B9_7F4A_7C15;
/// The held-out test points of a 2D target (after the seed's LCG step, [`crate::data::stream::test_seed`]).
pub const TEST_POINTS: u64 = 0x7E57;
/// The held-out rows of a table (the permutation whose tail is the test split).
pub const TABLE_SPLIT: u64 = 0x7AB1E;
/// Uniform dequantisation noise of table values.
pub const TABLE_NOISE: u64 = 0xDE0A;
/// The one draw of that noise for the training rows' evaluation figures (a seed, not XORed).
pub const TABLE_EVAL_NOISE: u64 = 0xDE0A_7A11;
/// Epoch permutations of the training rows or images (stream: the epoch).
pub const EPOCHS: u64 = 0xD1CE;
/// Each training step's pixel dequantisation noise (stream: the step + 1).
pub const STEPS: u64 = 0x5EED;
/// The images the ActNorm initialisation of image Glow reads (an epoch order of its own).
pub const IMAGE_INIT: u64 = 0x1417;
/// Label dropout of class-conditional image runs (XORed before [`STEPS`]).
pub const LABEL_DROPOUT: u64 = 0xD809;
/// Samples drawn for evaluation pictures (a 2D target's samples, a table's corner plot).
pub const EVAL_SAMPLES: u64 = 0x5A3D;
/// The `quality` classifier's training order and initial weights.
pub const CLASSIFIER: u64 = 0x5eed;

/// A ChaCha8 generator of stream `name` of `seed` (`seed ^ name`).
pub fn seeded(seed: u64, name: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ name)
}
