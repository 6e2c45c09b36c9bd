//! The vector affine coupling's transform with the tutorial's bounded scale, fused: from the
//! coupling network's output `h = [shift | raw]` (`[n, 2 C_b]`), the learned scalars `alpha`,
//! `beta` and the transformed half `x_b` (`[n, C_b]`),
//!
//! ```text
//! s   = tanh(raw) * alpha + beta                     (log-scale, [n, C_b])
//! y_b = x_b * exp(s) + shift                         (tanh_affine)
//! log|det J| = sum_j s_j                             (tanh_logdet, per row)
//! ```
//!
//! Written with tensor ops these are two narrows of `h`, eight element-wise ops with scalar
//! broadcasts and a row sum, each an autodiff node (a narrow's backward builds a zero tensor
//! the size of `h` and writes into it). Here the log-scale is one node (`tanh` once per value,
//! kept for the backward) and the transform another (`exp` once, kept); the row sum is a tensor
//! op.
//!
//! [`tanh_affine`] takes this path for float32 tensors on the Flex device and falls back to the
//! tensor-op composition ([`tanh_affine_composed`]) everywhere else (other backends, float64),
//! so the two are compared in tests. Element-wise arithmetic is the composition's, operation
//! for operation (`tanh`, then `* alpha`, then `+ beta`, `exp`, `* e`, `+ shift`; no fused
//! multiply-add), so the forward values are the same bits.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};

use super::flex;

use crate::tensor_util::is_flex_device;

/// `(y_b, log|det J|)`: `y_b = x_b * exp(s) + shift` (`[n, C_b]`) and the row sums of
/// `s = tanh(raw) * alpha + beta` (`[n]`), with `h = [shift | raw]`: `xb: [n, C_b]`,
/// `h: [n, 2 C_b]`, `alpha`, `beta: [1]`.
pub fn tanh_affine(
    xb: Tensor<2>,
    h: Tensor<2>,
    alpha: Tensor<1>,
    beta: Tensor<1>,
) -> (Tensor<2>, Tensor<1>) {
    let ok = is_flex_device(&h.device())
        && [xb.dtype(), h.dtype(), alpha.dtype(), beta.dtype()] == [DType::F32; 4];
    if !ok {
        return tanh_affine_composed(xb, h, alpha, beta);
    }
    let n = h.dims()[0];
    let s: Tensor<2> = Tensor::from_dispatch(<Dispatch as FusedTanhAffine>::fused_tanh_log_scale(
        h.clone().into_dispatch(),
        alpha.into_dispatch(),
        beta.into_dispatch(),
    ));
    let yb: Tensor<2> = Tensor::from_dispatch(<Dispatch as FusedTanhAffine>::fused_affine_shift(
        xb.into_dispatch(),
        h.into_dispatch(),
        s.clone().into_dispatch(),
    ));
    (yb, s.sum_dim(1).reshape([n]))
}

/// [`tanh_affine`] from plain tensor ops (any backend, any float type).
pub fn tanh_affine_composed(
    xb: Tensor<2>,
    h: Tensor<2>,
    alpha: Tensor<1>,
    beta: Tensor<1>,
) -> (Tensor<2>, Tensor<1>) {
    let [n, w] = h.dims();
    let cb = w / 2;
    let shift = h.clone().narrow(1, 0, cb);
    let s = h.narrow(1, cb, cb).tanh() * alpha.reshape([1, 1]) + beta.reshape([1, 1]);
    (xb * s.clone().exp() + shift, s.sum_dim(1).reshape([n]))
}

/// The two fused ops as a burn backend extension, for Flex (float32) and Autodiff over Flex
/// (one graph node each, hand-written backward). Call them through [`tanh_affine`], which
/// checks that the operands qualify.
#[backend_extension(Flex, Autodiff)]
pub trait FusedTanhAffine: Backend {
    /// `s = tanh(raw) * alpha + beta` from `h = [shift | raw]` (`[n, 2 C_b]`), `[n, C_b]`.
    fn fused_tanh_log_scale(
        h: FloatTensor<Self>,
        alpha: FloatTensor<Self>,
        beta: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x_b * exp(s) + shift` with `h = [shift | raw]`, `[n, C_b]`.
    fn fused_affine_shift(
        xb: FloatTensor<Self>,
        h: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// A float32 matrix's values in row-major order, whatever its strides.
fn matrix(t: &FlexTensor) -> (Vec<f32>, usize, usize) {
    let layout = t.layout();
    let dims = layout.shape();
    assert_eq!(dims.num_dims(), 2, "tanh affine: expected a matrix");
    let (rows, cols) = (dims[0], dims[1]);
    let data = t.storage::<f32>();
    if layout.is_contiguous() {
        let start = layout.start_offset();
        return (data[start..start + rows * cols].to_vec(), rows, cols);
    }
    let s = layout.strides();
    let at = |i: usize, j: usize| {
        (layout.start_offset() as isize + i as isize * s[0] + j as isize * s[1]) as usize
    };
    let v = (0..rows)
        .flat_map(|i| (0..cols).map(move |j| (i, j)))
        .map(|(i, j)| data[at(i, j)])
        .collect();
    (v, rows, cols)
}

/// A float32 scalar (`[1]`).
fn scalar(t: &FlexTensor) -> f32 {
    t.storage::<f32>()[t.layout().start_offset()]
}

/// `s` and `tanh(raw)` (kept for the backward), both `[n, C_b]` row-major.
fn log_scale_forward(h: &FlexTensor, alpha: f32, beta: f32) -> (Vec<f32>, Vec<f32>, usize, usize) {
    let (h, n, w) = matrix(h);
    let cb = w / 2;
    let mut t = Vec::with_capacity(n * cb);
    for hr in h.chunks_exact(w.max(1)) {
        t.extend(hr[cb..].iter().map(|r| r.tanh()));
    }
    let s = t.iter().map(|&t| t * alpha + beta).collect();
    (s, t, n, cb)
}

/// `x_b * e + shift` and `e = exp(s)` (kept for the backward).
fn affine_forward(
    xb: &FlexTensor,
    h: &FlexTensor,
    s: &FlexTensor,
) -> (Vec<f32>, Vec<f32>, usize, usize) {
    let (x, n, cb) = matrix(xb);
    let (h, hn, w) = matrix(h);
    let (s, _, _) = matrix(s);
    assert!(hn == n && w == 2 * cb, "tanh affine: h must be [n, 2 C_b]");
    let e: Vec<f32> = s.iter().map(|v| v.exp()).collect();
    let mut y = Vec::with_capacity(n * cb);
    for ((xr, hr), er) in x
        .chunks_exact(cb.max(1))
        .zip(h.chunks_exact(w.max(1)))
        .zip(e.chunks_exact(cb.max(1)))
    {
        for j in 0..cb {
            y.push(xr[j] * er[j] + hr[j]);
        }
    }
    (y, e, n, cb)
}

impl FusedTanhAffine for Flex {
    fn fused_tanh_log_scale(h: FlexTensor, alpha: FlexTensor, beta: FlexTensor) -> FlexTensor {
        let (s, _, n, cb) = log_scale_forward(&h, scalar(&alpha), scalar(&beta));
        flex(s, &[n, cb])
    }

    fn fused_affine_shift(xb: FlexTensor, h: FlexTensor, s: FlexTensor) -> FlexTensor {
        let (y, _, n, cb) = affine_forward(&xb, &h, &s);
        flex(y, &[n, cb])
    }
}

#[derive(Debug)]
struct LogScaleBackward;

impl Backward<Flex, 3> for LogScaleBackward {
    /// `tanh(raw)` `[n, C_b]`, `n`, `C_b`, `alpha`.
    type State = (Vec<f32>, usize, usize, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_h, node_a, node_b] = ops.parents;
        let (g, _, _) = matrix(&grads.consume::<Flex>(&ops.node));
        let (t, n, cb, alpha) = ops.state;
        let w = 2 * cb;
        let mut dh = vec![0f32; n * w];
        let (mut da, mut db) = (0f32, 0f32);
        for i in 0..n {
            for j in 0..cb {
                let (gij, tij) = (g[i * cb + j], t[i * cb + j]);
                dh[i * w + cb + j] = gij * alpha * (1.0 - tij * tij);
                da += gij * tij;
                db += gij;
            }
        }
        register!(
            grads,
            (node_h, flex(dh, &[n, w])),
            (node_a, flex(vec![da], &[1])),
            (node_b, flex(vec![db], &[1])),
        );
    }
}

#[derive(Debug)]
struct AffineBackward;

impl Backward<Flex, 3> for AffineBackward {
    /// `x_b` and `e = exp(s)`, `[n, C_b]` row-major, `n`, `C_b`.
    type State = (Vec<f32>, Vec<f32>, usize, usize);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_h, node_s] = ops.parents;
        let (g, _, _) = matrix(&grads.consume::<Flex>(&ops.node));
        let (x, e, n, cb) = ops.state;
        let w = 2 * cb;
        let dx: Vec<f32> = g.iter().zip(&e).map(|(g, e)| g * e).collect();
        let ds: Vec<f32> = dx.iter().zip(&x).map(|(ge, x)| ge * x).collect();
        let mut dh = vec![0f32; n * w];
        for i in 0..n {
            dh[i * w..i * w + cb].copy_from_slice(&g[i * cb..(i + 1) * cb]);
        }
        register!(
            grads,
            (node_x, flex(dx, &[n, cb])),
            (node_h, flex(dh, &[n, w])),
            (node_s, flex(ds, &[n, cb])),
        );
    }
}

impl<C: CheckpointStrategy> FusedTanhAffine for Autodiff<Flex, C> {
    fn fused_tanh_log_scale(
        h: FloatTensor<Self>,
        alpha: FloatTensor<Self>,
        beta: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prepared = LogScaleBackward
            .prepare::<C>([h.node(), alpha.node(), beta.node()])
            .compute_bound()
            .stateful();
        let a = scalar(alpha.primitive());
        let (s, t, n, cb) = log_scale_forward(h.primitive(), a, scalar(beta.primitive()));
        let out = flex(s, &[n, cb]);
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((t, n, cb, a), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_affine_shift(
        xb: FloatTensor<Self>,
        h: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prepared = AffineBackward
            .prepare::<C>([xb.node(), h.node(), s.node()])
            .compute_bound()
            .stateful();
        let (y, e, n, cb) = affine_forward(xb.primitive(), h.primitive(), s.primitive());
        let out = flex(y, &[n, cb]);
        match prepared {
            OpsKind::Tracked(prep) => {
                let (x, _, _) = matrix(xb.primitive());
                prep.finish((x, e, n, cb), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
