//! Fixed channel permutations (Real NVP's reversal and Glow's random-shuffle ablation).
//! Volume preserving: log-determinant 0.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::flow::{zero_logdet, Flow};

/// Reverse the channel order.
#[derive(Module, Debug)]
pub struct Reverse {
    /// Number of channels `C` (the reversal itself flips whatever channel count it is given).
    pub channels: usize,
}

impl Flow for Reverse {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = zero_logdet(&x);
        (x.flip([1]), ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        self.forward(y)
    }
}

/// A fixed random channel permutation, saved with the model.
#[derive(Module, Debug)]
pub struct Shuffle {
    /// The permutation, `[C]`: output channel `i` is input channel `perm[i]`.
    pub perm: Param<Tensor<1, Int>>,
    /// The inverse permutation, `[C]`, used by `inverse`.
    pub inv_perm: Param<Tensor<1, Int>>,
}

impl Shuffle {
    /// A uniformly random permutation of `channels` channels, drawn from `rng`.
    pub fn new(channels: usize, rng: &mut impl Rng, device: &Device) -> Self {
        let mut perm: Vec<i64> = (0..channels as i64).collect();
        perm.shuffle(rng);
        let mut inv = vec![0i64; channels];
        for (i, &p) in perm.iter().enumerate() {
            inv[p as usize] = i as i64;
        }
        let int = |v: Vec<i64>| {
            Param::initialized(
                ParamId::new(),
                Tensor::<1, Int>::from_data(TensorData::new(v, [channels]), device),
            )
        };
        Shuffle {
            perm: int(perm),
            inv_perm: int(inv),
        }
    }
}

impl Flow for Shuffle {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = zero_logdet(&x);
        (x.select(1, self.perm.val()), ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = zero_logdet(&y);
        (y.select(1, self.inv_perm.val()), ld)
    }
}
