//! Squeeze: `[C, H, W] -> [4C, H/2, W/2]`, each 2x2 spatial block moved into channels
//! (channel `c * 4 + 2 * dy + dx`). A permutation of coordinates: log-determinant 0.

use burn::tensor::Tensor;

/// Squeeze `[N, C, H, W]` to `[N, 4C, H/2, W/2]` (Real NVP §3.6, Glow's multi-scale
/// architecture). `H` and `W` must be even.
pub fn squeeze(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / 2, 2, w / 2, 2])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([n, c * 4, h / 2, w / 2])
}

/// The inverse of [`squeeze`]: `[N, C, H, W]` to `[N, C/4, 2H, 2W]`; `C` must be a multiple
/// of 4.
pub fn unsqueeze(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c / 4, 2, 2, h, w])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([n, c / 4, h * 2, w * 2])
}

/// [`squeeze`] as a flow layer: `[N, C, H, W]` to `[N, 4C, H/2, W/2]` and back; a permutation of
/// the values, so its log-determinant is 0. Multi-scale Glow squeezes with it at every level.
#[derive(Clone, Copy, Debug, Default)]
pub struct Squeeze;

impl crate::flow::Flow for Squeeze {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = crate::flow::zero_logdet(&x);
        (squeeze(x), ld)
    }

    fn inverse_ctx(&self, z: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = crate::flow::zero_logdet(&z);
        (unsqueeze(z), ld)
    }
}
