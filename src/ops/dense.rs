//! Fused dense layer `y = act(x W + b)` as one operation on the Flex CPU backend.
//!
//! The 2D models spend most of a training step in small MLPs (batch rows x 128). Written with
//! tensor ops, one dense layer is a matmul, a bias broadcast-add and a ReLU in the forward pass
//! and about twice as many ops in the backward pass, each allocating a tensor and recording an
//! autodiff node. Here the GEMM writes the output, bias and ReLU follow in one pass over it, and
//! the backward pass (ReLU mask applied in place to the incoming gradient, bias sum, two GEMMs)
//! is one hand-written step: one graph node per layer.
//!
//! [`dense`] is the interface: it takes this path for float32 tensors on the Flex device and the
//! plain tensor-op composition everywhere else (other backends, float64), so the two can be
//! compared in tests.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor, TensorData};

use super::gemm::{gemm_new, Mat, Split};
use crate::tensor_util::is_flex_device;

/// `act(x W + b)` with `x: [n, k]`, `W: [k, m]`, `b: [m]`; `act` is ReLU when `relu_out` is set,
/// the identity otherwise.
pub fn dense(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>, relu_out: bool) -> Tensor<2> {
    if fused_supported(&x, &weight, &bias) {
        Tensor::from_dispatch(<Dispatch as FusedDenseBackend>::fused_dense(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            relu_out,
        ))
    } else {
        dense_composed(x, weight, bias, relu_out)
    }
}

/// The same layer from plain tensor ops (any backend, any float type).
pub fn dense_composed(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    relu_out: bool,
) -> Tensor<2> {
    let m = bias.dims()[0];
    let y = x.matmul(weight) + bias.reshape([1, m]);
    if relu_out {
        relu(y)
    } else {
        y
    }
}

/// Whether [`dense`] takes the fused path for these operands.
pub fn fused_supported(x: &Tensor<2>, weight: &Tensor<2>, bias: &Tensor<1>) -> bool {
    is_flex_device(&x.device()) && [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3]
}

/// The fused dense layer as a burn backend extension: implemented for Flex (float32) and for
/// Autodiff over Flex (one graph node with a hand-written backward). Call it through [`dense`],
/// which checks that the operands qualify.
#[backend_extension(Flex, Autodiff)]
pub trait FusedDenseBackend: Backend {
    /// `act(x W + b)` for float32 `x: [n, k]`, `W: [k, m]`, `b: [m]`, giving `[n, m]`; `act` is
    /// ReLU when `relu_out` is set, the identity otherwise.
    fn fused_dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu_out: bool,
    ) -> FloatTensor<Self>;
}

impl FusedDenseBackend for Flex {
    fn fused_dense(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        relu_out: bool,
    ) -> FlexTensor {
        forward(&x, &weight, &bias, relu_out)
    }
}

/// Saved for the backward pass: the input, the weight and, for ReLU, the output (its sign is
/// the ReLU mask).
type DenseState = (FlexTensor, FlexTensor, Option<FlexTensor>);

#[derive(Debug)]
struct DenseBackward;

impl Backward<Flex, 3> for DenseBackward {
    type State = DenseState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, w, out) = ops.state;
        let parts = backward(
            &x,
            &w,
            out.as_ref(),
            grad,
            [node_x.is_some(), node_w.is_some(), node_b.is_some()],
        );
        for (node, g) in [node_x, node_w, node_b].into_iter().zip(parts) {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

impl<C: CheckpointStrategy> FusedDenseBackend for Autodiff<Flex, C> {
    fn fused_dense(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        relu_out: bool,
    ) -> FloatTensor<Self> {
        let prepared = DenseBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let out = forward(
            x.primitive(),
            weight.primitive(),
            bias.primitive(),
            relu_out,
        );
        match prepared {
            OpsKind::Tracked(prep) => {
                let state = (
                    x.into_primitive(),
                    weight.into_primitive(),
                    relu_out.then(|| out.clone()),
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

// Kept out of line, like `relu_mask`: a small function of one simple loop is reliably
// vectorised, the same loop inlined into a larger body was not (measured: 3x slower).
#[inline(never)]
fn add_bias_relu(row: &mut [f32], bias: &[f32]) {
    super::vectorized(|| {
        for (v, b) in row.iter_mut().zip(bias) {
            let y = *v + b;
            *v = if y < 0.0 { 0.0 } else { y };
        }
    })
}

fn vector(t: &FlexTensor) -> Vec<f32> {
    let layout = t.layout();
    let n = layout.shape()[0];
    let stride = layout.strides()[0];
    let data = t.storage::<f32>();
    (0..n)
        .map(|i| data[(layout.start_offset() as isize + i as isize * stride) as usize])
        .collect()
}

fn forward(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor, relu_out: bool) -> FlexTensor {
    let (x, w) = (Mat::of(x), Mat::of(w));
    let bias = vector(b);
    let (n, m) = (x.rows, w.cols);
    assert_eq!(
        bias.len(),
        m,
        "fused dense: bias length differs from the output width"
    );
    let mut out = gemm_new(x, w, Split::Never);
    // Bias and ReLU in one pass; the ReLU is a select, not a branch, so it vectorises, and
    // `v < 0` keeps NaN as NaN.
    for row in out.chunks_exact_mut(m.max(1)) {
        if relu_out {
            add_bias_relu(row, &bias);
        } else {
            row.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
        }
    }
    FlexTensor::from_data(TensorData::new(out, [n, m]))
}

/// Gradients `[dx, dW, db]` of the layer for the output gradient `grad`; only the `wanted` ones
/// are computed.
fn backward(
    x: &FlexTensor,
    w: &FlexTensor,
    out: Option<&FlexTensor>,
    grad: FlexTensor,
    wanted: [bool; 3],
) -> [Option<FlexTensor>; 3] {
    let (x, w) = (Mat::of(x), Mat::of(w));
    let (n, k, m) = (x.rows, x.cols, w.cols);
    // Gradient at the pre-activation, contiguous n x m: the incoming gradient itself when this
    // step owns it (masked in place), else a copy.
    let mut gp = take_contiguous(grad);
    if let Some(out) = out {
        // `out` is this layer's own forward output, built contiguous.
        let out = out
            .as_slice::<f32>()
            .expect("fused dense: contiguous output");
        relu_mask(&mut gp, out);
    }
    let gp_ref = Mat::dense(&gp, n, m);
    let dx = wanted[0].then(|| {
        let dx = gemm_new(gp_ref, w.t(), Split::Never);
        FlexTensor::from_data(TensorData::new(dx, [n, k]))
    });
    let dw = wanted[1].then(|| {
        let dw = gemm_new(x.t(), gp_ref, Split::Never);
        FlexTensor::from_data(TensorData::new(dw, [k, m]))
    });
    let db = wanted[2].then(|| {
        let mut db = vec![0.0f32; m];
        // Column sums, rows in order (the same additions on every instruction set).
        super::vectorized(|| {
            for row in gp.chunks_exact(m.max(1)) {
                for (acc, v) in db.iter_mut().zip(row) {
                    *acc += v;
                }
            }
        });
        FlexTensor::from_data(TensorData::new(db, [m]))
    });
    [dx, dw, db]
}

/// Zero `grad` where the ReLU output `out` is not positive (its backward pass; shared with
/// `ops::conv`).
#[inline(never)]
pub(super) fn relu_mask(grad: &mut [f32], out: &[f32]) {
    super::vectorized(|| {
        for (d, &o) in grad.iter_mut().zip(out) {
            *d = if o > 0.0 { *d } else { 0.0 };
        }
    })
}

/// The values of a float32 tensor in row-major order; no copy when it is contiguous and not
/// shared (an incoming gradient usually is both).
fn take_contiguous(t: FlexTensor) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("fused dense: float32 gradient")
}
