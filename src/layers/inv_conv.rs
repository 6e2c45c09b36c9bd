//! Invertible 1x1 convolution (Glow §3.2): a learned C x C matrix `W` applied at every pixel,
//! `y[:, :, h, w] = W x[:, :, h, w]`, with `log|det| = H * W * log|det W|`. On vectors this is an
//! invertible linear map (the tutorial's Glow-2D uses the 2x2 case).
//!
//! Two parametrisations:
//! - [`InvConv1x1Lu`]: `W = P L (U + diag(sign_s * exp(log_s)))`, P a fixed permutation, L unit
//!   lower triangular, U strictly upper triangular, so `log|det W| = sum(log_s)` costs O(C).
//! - [`InvConv1x1`]: `W` learned directly; `log|det W|` and its gradient `W^-T` are computed in
//!   float64 on the host (the paper's O(C^3) variant, kept for ablations).
//!
//! Inverses are computed in float64 on the host: generation is not on the training path.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use rand::Rng;

use crate::flow::{broadcast_logdet, pixels, Flow};
use crate::linalg::{self, Mat};
use crate::tensor_util::{buffer, from_vec, from_vec_f64, to_vec_f64, trainable};

/// Apply `w` ([C, C]) to the channel vector of every pixel of `x` ([N, C, H, W]).
pub fn apply_channel_matrix(x: Tensor<4>, w: Tensor<2>) -> Tensor<4> {
    let [n, c, h, wd] = x.dims();
    if h * wd == 1 {
        // Vectors: one GEMM [N, C] x [C, C]^T.
        x.reshape([n, c])
            .matmul(w.transpose())
            .reshape([n, c, 1, 1])
    } else {
        let x3 = x.reshape([n, c, h * wd]);
        w.unsqueeze::<3>().matmul(x3).reshape([n, c, h, wd])
    }
}

fn host_matrix(w: Tensor<2>) -> Mat {
    let c = w.dims()[0];
    Mat {
        n: c,
        a: to_vec_f64(w),
    }
}

/// `W^-1` computed in float64 on the host, returned in `W`'s own float type. A singular or
/// non-finite `W` gives a matrix of NaN, so the failure reaches the caller's finiteness checks
/// (the training guard, `sample`'s report) as a non-finite output of this layer, never a panic.
fn host_inverse(w: Tensor<2>) -> Tensor<2> {
    let c = w.dims()[0];
    let (device, dtype) = (w.device(), w.dtype());
    let inv = linalg::inverse(&host_matrix(w))
        .map(|m| m.a)
        .unwrap_or_else(|| vec![f64::NAN; c * c]);
    from_vec_f64(inv, [c, c], (&device, dtype))
}

/// LU-parametrised invertible 1x1 convolution.
#[derive(Module, Debug)]
pub struct InvConv1x1Lu {
    /// Fixed permutation matrix.
    pub p: Param<Tensor<2>>,
    /// Strictly lower part is used (masked); the diagonal of L is the identity.
    pub l: Param<Tensor<2>>,
    /// Strictly upper part is used (masked); the diagonal comes from `sign_s * exp(log_s)`.
    pub u: Param<Tensor<2>>,
    /// Trained log-magnitudes of U's diagonal, `[C]`: `log|det W| = sum(log_s)`.
    pub log_s: Param<Tensor<1>>,
    /// Fixed signs of U's diagonal.
    pub sign_s: Param<Tensor<1>>,
    /// Fixed strictly-lower-triangular mask of ones.
    pub lower_mask: Param<Tensor<2>>,
}

impl InvConv1x1Lu {
    /// Initialise from the LU factorisation of a random orthogonal matrix (a random signed
    /// permutation above [`linalg::MAX_DENSE_ORTHOGONAL_INIT`] channels, factored directly).
    pub fn new(channels: usize, rng: &mut impl Rng, device: &Device) -> Self {
        let c = channels;
        let f = if c > linalg::MAX_DENSE_ORTHOGONAL_INIT {
            linalg::random_signed_permutation(c, rng).1
        } else {
            let w0 = linalg::random_orthogonal(c, rng);
            linalg::lu(&w0).expect("orthogonal matrices are invertible")
        };
        let mut u_strict = f.u.clone();
        let mut log_s = Vec::with_capacity(c);
        let mut sign_s = Vec::with_capacity(c);
        for i in 0..c {
            let d = f.u.get(i, i);
            log_s.push(d.abs().ln() as f32);
            sign_s.push(d.signum() as f32);
            u_strict.set(i, i, 0.0);
        }
        let mut mask = Mat::zeros(c);
        let mut l_strict = f.l.clone();
        for i in 0..c {
            l_strict.set(i, i, 0.0);
            for j in 0..i {
                mask.set(i, j, 1.0);
            }
        }
        InvConv1x1Lu {
            p: buffer(from_vec(f.p.to_f32(), [c, c], device)),
            l: trainable(from_vec(l_strict.to_f32(), [c, c], device)),
            u: trainable(from_vec(u_strict.to_f32(), [c, c], device)),
            log_s: trainable(from_vec(log_s, [c], device)),
            sign_s: buffer(from_vec(sign_s, [c], device)),
            lower_mask: buffer(from_vec(mask.to_f32(), [c, c], device)),
        }
    }

    /// The current matrix `W = P L U`.
    pub fn weight(&self) -> Tensor<2> {
        let c = self.log_s.dims()[0];
        let device = self.log_s.device();
        let eye = Tensor::<2>::eye(c, &device).cast(self.log_s.val().dtype());
        let mask = self.lower_mask.val();
        let l = self.l.val() * mask.clone() + eye.clone();
        let diag = (self.sign_s.val() * self.log_s.val().exp()).reshape([1, c]);
        let u = self.u.val() * mask.transpose() + eye * diag;
        self.p.val().matmul(l.matmul(u))
    }

    fn logdet(&self, x: &Tensor<4>) -> Tensor<1> {
        let n = x.dims()[0];
        broadcast_logdet(self.log_s.val().sum().mul_scalar(pixels(x) as f32), n)
    }
}

impl Flow for InvConv1x1Lu {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&x);
        (apply_channel_matrix(x, self.weight()), ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&y).neg();
        let winv = host_inverse(self.weight());
        (apply_channel_matrix(y, winv), ld)
    }
}

/// Invertible 1x1 convolution with an unconstrained learned matrix.
#[derive(Module, Debug)]
pub struct InvConv1x1 {
    /// The matrix `W`, `[C, C]`, trained directly (initialised to a random orthogonal matrix).
    pub weight: Param<Tensor<2>>,
}

impl InvConv1x1 {
    /// Initialise with a random orthogonal matrix.
    pub fn new(channels: usize, rng: &mut impl Rng, device: &Device) -> Self {
        let w0 = linalg::random_orthogonal(channels, rng);
        InvConv1x1 {
            weight: trainable(from_vec(w0.to_f32(), [channels, channels], device)),
        }
    }

    /// `H * W * log|det W|` per sample. The value comes from a float64 slogdet on the host; the
    /// gradient `H * W * W^-T` is attached through a linear surrogate `sum(W * G) - sum(W0 * G)`
    /// (zero in value, gradient G), since burn has no differentiable determinant.
    fn logdet(&self, x: &Tensor<4>) -> Tensor<1> {
        let [n, ..] = x.dims();
        let w = self.weight.val();
        let c = w.dims()[0];
        let options = (&w.device(), w.dtype());
        let host = host_matrix(w.clone());
        // A singular or non-finite W has no finite log|det| or W^-T: NaN value and gradient,
        // which the training guard reports (naming this layer) and never applies.
        let (logabsdet, inv_t) = match (linalg::slogdet(&host), linalg::inverse(&host)) {
            (Some((_, l)), Some(inv)) => (l, inv.transpose().a),
            _ => (f64::NAN, vec![f64::NAN; c * c]),
        };
        let g = from_vec_f64(inv_t, [c, c], options);
        let surrogate = (w.clone() * g.clone()).sum() - (w.detach() * g).sum();
        let value = from_vec_f64(vec![logabsdet], [1], options);
        broadcast_logdet((surrogate + value).mul_scalar(pixels(x) as f32), n)
    }
}

impl Flow for InvConv1x1 {
    fn forward_ctx(&self, x: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&x);
        (apply_channel_matrix(x, self.weight.val()), ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, _ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        let ld = self.logdet(&y).neg();
        let winv = host_inverse(self.weight.val());
        (apply_channel_matrix(y, winv), ld)
    }
}
