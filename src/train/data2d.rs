//! The 2D training data stream: pools of fresh target samples (the tutorial's 65,536), redrawn
//! when used up. Pool `r` is drawn from its own RNG seeded by `(seed, r)`, so the batch of any
//! step is a pure function of the seed and the step: resuming reproduces the data exactly.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::toy2d::Target;

pub struct DataStream {
    target: Target,
    seed: u64,
    batch: usize,
    pool_size: usize,
    pool_index: Option<usize>,
    pool: Vec<[f64; 2]>,
}

/// The tutorial's pool size; rounded up to a multiple of the batch.
pub const DEFAULT_POOL: usize = 65_536;

impl DataStream {
    pub fn new(target: Target, seed: u64, batch: usize) -> Self {
        let pool_size = DEFAULT_POOL.div_ceil(batch) * batch;
        DataStream {
            target,
            seed,
            batch,
            pool_size,
            pool_index: None,
            pool: Vec::new(),
        }
    }

    /// The batch of training step `step` (0-based), as flat `[batch * 2]` f32.
    pub fn batch_at(&mut self, step: usize) -> Vec<f32> {
        let start = step * self.batch;
        let r = start / self.pool_size;
        if self.pool_index != Some(r) {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x9E37_79B9_7F4A_7C15);
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
        ^ 0x7E57
}

/// `n` held-out test points for a run seeded `seed`.
pub fn test_points(target: Target, seed: u64, n: usize) -> Vec<[f64; 2]> {
    let mut rng = ChaCha8Rng::seed_from_u64(test_seed(seed));
    rng.set_stream(0);
    target.sample(n, &mut rng)
}
