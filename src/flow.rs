//! The one abstraction every layer and model implements.
//!
//! Direction convention: `forward` maps data `x` to latent `z` and returns `log|det dz/dx|` per
//! sample, so `log p(x) = log N(z; 0, I) + logdet`. `inverse` generates and returns
//! `log|det dx/dz|`, which is the negative of the forward log-determinant at the same point.
//!
//! All tensors are `[N, C, H, W]`. Plain vectors `[N, D]` travel as `[N, D, 1, 1]`, so the same
//! layer code serves the 2D toys and image models.

use burn::tensor::Tensor;

/// An invertible transform with a tractable log-determinant.
pub trait Flow {
    /// Data to latent: `(z, log|det dz/dx|)`, the log-determinant shaped `[N]`.
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>);
    /// Latent to data: `(x, log|det dx/dz|)`, the log-determinant shaped `[N]`.
    fn inverse(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<1>);
}

/// A per-sample log-determinant of zeros for the batch `x`, on its device and in its float type
/// (so a float64 pass stays float64 throughout).
pub fn zero_logdet(x: &Tensor<4>) -> Tensor<1> {
    Tensor::zeros([x.dims()[0]], (&x.device(), x.dtype()))
}

/// Broadcast a scalar log-determinant (a `[1]` tensor) to every sample of a batch of `n`.
pub fn broadcast_logdet(scalar: Tensor<1>, n: usize) -> Tensor<1> {
    scalar.expand([n])
}

/// Number of spatial positions `H * W` of a `[N, C, H, W]` tensor (1 for vectors).
pub fn pixels(x: &Tensor<4>) -> usize {
    let [_, _, h, w] = x.dims();
    h * w
}

/// View `[N, D]` vectors as `[N, D, 1, 1]`.
pub fn vec_to_nchw(x: Tensor<2>) -> Tensor<4> {
    let [n, d] = x.dims();
    x.reshape([n, d, 1, 1])
}

/// View `[N, D, 1, 1]` as `[N, D]`.
pub fn nchw_to_vec(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c * h * w])
}
