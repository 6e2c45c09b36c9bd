//! The one abstraction every layer and model implements.
//!
//! Direction convention: `forward` maps data `x` to latent `z` and returns `log|det dz/dx|` per
//! sample, so `log p(x) = log N(z; 0, I) + logdet`. `inverse` generates and returns
//! `log|det dx/dz|`, which is the negative of the forward log-determinant at the same point.
//!
//! All tensors are `[N, C, H, W]`. Plain vectors `[N, D]` travel as `[N, D, 1, 1]`, so the same
//! layer code serves the 2D toys and image models.

use burn::tensor::Tensor;

/// An optional per-sample conditioning tensor ("context", as nflows and zuko call it), `[N, K]`:
/// a class one-hot, context columns of a table, or any embedding. Layers that do not use it
/// ignore it; coupling networks built with `K` extra inputs read it in both directions.
pub type Context<'a> = Option<&'a Tensor<2>>;

/// An invertible transform with a tractable log-determinant, optionally conditioned on a
/// [`Context`].
///
/// Implementors write the two context-taking methods; [`forward`](Flow::forward) and
/// [`inverse`](Flow::inverse) are the unconditioned shorthands. Properties a trainer must know
/// (data-dependent initialisation, batch statistics) are declared here by the layer, so no
/// trainer matches on layer kinds.
pub trait Flow {
    /// Data to latent: `(z, log|det dz/dx|)` for `x: [N, C, H, W]` and a context `[N, K]` or
    /// `None`; `z` has `x`'s shape, the log-determinant is `[N]` (nats).
    fn forward_ctx(&self, x: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>);
    /// Latent to data: `(x, log|det dx/dz|)`, the log-determinant shaped `[N]`; for the same
    /// context it inverts [`forward_ctx`](Flow::forward_ctx) and negates its log-determinant.
    fn inverse_ctx(&self, z: Tensor<4>, ctx: Context) -> (Tensor<4>, Tensor<1>);

    /// [`forward_ctx`](Flow::forward_ctx) without a context.
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        self.forward_ctx(x, None)
    }
    /// [`inverse_ctx`](Flow::inverse_ctx) without a context.
    fn inverse(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        self.inverse_ctx(z, None)
    }

    /// Data-dependent initialisation from the activations `x: [N, C, H, W]` that reach this
    /// layer (Glow §3.1's ActNorm; a coupling initialises the ActNorms inside its network).
    /// Layers without one do nothing. Must be called once, before training, on a layer whose
    /// [`needs_data_init`](Flow::needs_data_init) is true.
    fn data_init(&mut self, x: &Tensor<4>, ctx: Context) {
        let _ = (x, ctx);
    }
    /// Whether [`data_init`](Flow::data_init) has still to run (false for layers without one).
    fn needs_data_init(&self) -> bool {
        false
    }
    /// Whether the layer normalises with the statistics of the batch it is given in training
    /// (Real NVP's batch norm): such a flow needs at least 2 samples per batch, and its density
    /// of one sample depends on the others until it is put in evaluation mode.
    fn uses_batch_statistics(&self) -> bool {
        false
    }
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
