//! Fused 2D convolution `y = act(conv(x, W) + b)` as one operation on the Flex CPU backend.
//!
//! Image Glow spends most of a step in its coupling networks' convolutions. Written with tensor
//! ops ([`conv2d_composed`]), a 3x3 convolution is a padding, nine slices and a concatenation
//! (im2col), a permuted weight, a batched matmul, a bias broadcast-add and a ReLU, and the
//! backward pass about twice as many: every one allocates a tensor (the Flex backend zero-fills
//! and then copies each matmul output to align it) and records a graph node. Measured on
//! `probe-image`, the multiply-adds took under half of the step; the rest was those copies.
//!
//! Here the convolution is one graph node with a hand-written backward, per image:
//! - 1x1: `Y = W X` (`W: [C_out, C_in]`, `X: [C_in, H W]`); `dX = Wᵀ dY`, `dW += dY Xᵀ`.
//! - k x k with `C_in <= C_out` (few input channels): the im2col columns `U: [C_in k k, H W]`
//!   (the `k k` zero-padded shifts of each input channel, in the weight's own `(c, ky, kx)`
//!   order) and `Y = W U`; the backward pass rebuilds `U` from the saved input (nothing of size
//!   `k k C_in H W` is kept between the passes), `dW += dY Uᵀ`, `dX = col2im(Wᵀ dY)`.
//! - k x k with `C_in > C_out` (few output channels): one response per kernel offset,
//!   `Z = W' X` with `W': [k k C_out, C_in]`, and `Y` the sum of the `k k` shifted responses, so
//!   the shifting happens on the small side; backward `dZ` = the shifts' adjoints of `dY`,
//!   `dX = W'ᵀ dZ`, `dW' += dZ Xᵀ`.
//!
//! Bias and ReLU follow the GEMM in one pass over the output; the backward pass masks the
//! incoming gradient in place. Outputs of the 1x1 and im2col forward passes, and the input
//! gradients of the 1x1 and shifted-response cases, are written by the GEMM into fresh buffers
//! without zero-filling (the others are sums of shifted blocks into a zeroed buffer). The products are the same as the composition's, summed in another order, so
//! results agree to float32 round-off (tested against [`conv2d_composed`] and the backend's
//! `conv2d`, outputs and all three gradients).
//!
//! [`conv2d`] is the interface: it takes this path for float32 tensors on the Flex device and
//! the composition everywhere else (other backends, float64). `GLOWFLOW_CONV=composed` forces
//! the composition (benchmarks, tests).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::activation::relu;
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Tensor};

use super::dense::relu_mask;
use super::flex;
use super::gemm::{as_uninit, assume_init, gemm_acc, gemm_into, Mat, Split};
use crate::tensor_util::is_flex_device;

/// `act(conv(x, weight) + bias)`: the 2D cross-correlation of `x: [N, C_in, H, W]` with
/// `weight: [C_out, C_in, k, k]` (odd `k`), zero padding `padding` on every side, stride 1,
/// plus `bias: [C_out]` when given, then ReLU when `relu_out` is set: `[N, C_out, H', W']` with
/// `H' = H + 2 padding - k + 1` (the same size for `padding = k / 2`).
///
/// An even kernel, or another padding than `k / 2`, takes the tensor-op composition.
///
/// # Panics
/// On mismatched channel counts (a programming error, not user input).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    padding: usize,
    relu_out: bool,
) -> Tensor<4> {
    conv2d_scaled(x, weight, bias, None, padding, relu_out)
}

/// `act((conv(x, weight) + shift) * exp(log_scale))`: [`conv2d`] followed by a per-channel
/// affine map, as a convolution followed by ActNorm (Glow §3.1: `shift` = ActNorm's bias,
/// `log_scale` = its log-scale, both `[C_out]`) in Glow's coupling network; `None` leaves
/// either out. One fused operation on the CPU in float32 (the gradients of `shift` and
/// `log_scale` included), the tensor-op composition elsewhere.
///
/// # Panics
/// On mismatched channel counts (a programming error, not user input).
pub fn conv2d_scaled(
    x: Tensor<4>,
    weight: Tensor<4>,
    shift: Option<Tensor<1>>,
    log_scale: Option<Tensor<1>>,
    padding: usize,
    relu_out: bool,
) -> Tensor<4> {
    let f32s = [shift.as_ref(), log_scale.as_ref()]
        .into_iter()
        .flatten()
        .all(|t| t.dtype() == DType::F32);
    if f32s && fused_supported(&x, &weight, None, padding) {
        let cout = weight.dims()[0];
        let zeros = || Tensor::zeros([cout], &x.device());
        let scaled = log_scale.is_some();
        let shift = shift.unwrap_or_else(zeros);
        let log_scale = log_scale.unwrap_or_else(zeros);
        Tensor::from_dispatch(<Dispatch as FusedConvBackend>::fused_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            shift.into_dispatch(),
            log_scale.into_dispatch(),
            padding,
            scaled,
            relu_out,
        ))
    } else {
        conv2d_composed(x, weight, shift, log_scale, padding, relu_out)
    }
}

/// Whether [`conv2d`] takes the fused path for these operands: float32 on the Flex device, a
/// square odd kernel with `padding = k / 2`, and `GLOWFLOW_CONV` not set to `composed`.
pub fn fused_supported(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    padding: usize,
) -> bool {
    let [_, _, kh, kw] = weight.dims();
    is_flex_device(&x.device())
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.is_none_or(|b| b.dtype() == DType::F32)
        && kh == kw
        && kh % 2 == 1
        && padding == kh / 2
        && !composed_forced()
}

/// Whether float32 training on `device` runs its convolutions fused ([`conv2d`]): the Flex
/// device, `GLOWFLOW_CONV` not set to `composed`. Fused convolutions keep about a third of the
/// composition's activations (memory estimates use it).
pub fn fused_on(device: &burn::tensor::Device) -> bool {
    is_flex_device(device) && !composed_forced()
}

fn composed_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("GLOWFLOW_CONV").as_deref() == Ok("composed"))
}

/// The same operation as [`conv2d_scaled`] from plain tensor ops (any backend, any float
/// type): batched GEMMs `[C_out, K] x [K, H W]` per image, as described in the module docs
/// (im2col by slices and a concatenation, or the shifted responses summed by padding and
/// slicing), then `+ bias`, `* exp(log_scale)` and the ReLU.
pub fn conv2d_composed(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    log_scale: Option<Tensor<1>>,
    padding: usize,
    relu_out: bool,
) -> Tensor<4> {
    let [n, cin, h, w] = x.dims();
    let [cout, _, k, _] = weight.dims();
    let p = padding;
    let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
    let y = if k == 1 && p == 0 {
        let wm = weight.reshape([1, cout, cin]);
        wm.matmul(x.reshape([n, cin, h * w]))
    } else if cin <= cout {
        let xp = x.pad([(p, p), (p, p)], PadMode::Constant(0.0));
        let cols: Vec<Tensor<4>> = offsets(k)
            .map(|(dy, dx)| xp.clone().slice([0..n, 0..cin, dy..dy + ho, dx..dx + wo]))
            .collect();
        let cols = Tensor::cat(cols, 1).reshape([n, k * k * cin, ho * wo]);
        // [C_out, C_in, kh, kw] -> [C_out, kh, kw, C_in]: the column order of `cols`.
        let wm = weight.permute([0, 2, 3, 1]).reshape([1, cout, k * k * cin]);
        wm.matmul(cols)
    } else {
        // [C_out, C_in, kh, kw] -> [kh, kw, C_out, C_in]: one C_out block per offset.
        let wm = weight.permute([2, 3, 0, 1]).reshape([1, k * k * cout, cin]);
        let z = wm
            .matmul(x.reshape([n, cin, h * w]))
            .reshape([n, k * k * cout, h, w]);
        let mut acc: Option<Tensor<4>> = None;
        for (o, (dy, dx)) in offsets(k).enumerate() {
            // y[i, j] += z_o[i + dy - p, j + dx - p], zero outside the image.
            let shifted = z
                .clone()
                .narrow(1, o * cout, cout)
                .pad([(p, p), (p, p)], PadMode::Constant(0.0))
                .slice([0..n, 0..cout, dy..dy + ho, dx..dx + wo]);
            acc = Some(match acc {
                Some(a) => a + shifted,
                None => shifted,
            });
        }
        acc.expect("kernel has at least one offset")
            .reshape([n, cout, ho * wo])
    };
    let y = match bias {
        Some(b) => y + b.reshape([1, cout, 1]),
        None => y,
    };
    let y = match log_scale {
        Some(ls) => y * ls.reshape([1, cout, 1]).exp(),
        None => y,
    };
    let y = y.reshape([n, cout, ho, wo]);
    if relu_out {
        relu(y)
    } else {
        y
    }
}

/// Kernel offsets `(dy, dx)` in row-major order.
fn offsets(k: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k).flat_map(move |dy| (0..k).map(move |dx| (dy, dx)))
}

/// The fused convolution as a burn backend extension: implemented for Flex (float32) and for
/// Autodiff over Flex (one graph node with a hand-written backward). Call it through
/// [`conv2d`], which checks that the operands qualify.
#[backend_extension(Flex, Autodiff)]
pub trait FusedConvBackend: Backend {
    /// `act((conv(x, weight) + shift) * s)` for float32 `x: [N, C_in, H, W]`, `weight: [C_out,
    /// C_in, k, k]` (odd `k`, `padding = k / 2`), `shift: [C_out]`, `log_scale: [C_out]` with
    /// `s = exp(log_scale)` when `scaled` (else `s = 1` and `log_scale` unused), giving `[N,
    /// C_out, H, W]`; `act` is ReLU when `relu_out` is set, the identity otherwise.
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        log_scale: FloatTensor<Self>,
        padding: usize,
        scaled: bool,
        relu_out: bool,
    ) -> FloatTensor<Self>;
}

impl FusedConvBackend for Flex {
    fn fused_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        shift: FlexTensor,
        log_scale: FlexTensor,
        padding: usize,
        scaled: bool,
        relu_out: bool,
    ) -> FlexTensor {
        let (x, w) = (Images::of(&x), Kernel::of(&weight, padding));
        let scale = scaled.then(|| scale_values(&log_scale));
        forward(&x, &w, &bias_values(&shift), scale.as_deref(), relu_out)
    }
}

/// Saved for the backward pass: the input, the weight, the padding, the output when the ReLU
/// mask or the log-scale's gradient needs it, the scale `exp(log_scale)` when scaled, and
/// whether the ReLU was applied.
type ConvState = (
    FlexTensor,
    FlexTensor,
    usize,
    Option<FlexTensor>,
    Option<Vec<f32>>,
    bool,
);

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 4> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b, node_s] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, w, padding, out, scale, relu_out) = ops.state;
        let parts = backward(
            &Images::of(&x),
            &Kernel::of(&w, padding),
            Output {
                values: out.as_ref(),
                relu: relu_out,
                scale: scale.as_deref(),
            },
            grad,
            [
                node_x.is_some(),
                node_w.is_some(),
                node_b.is_some(),
                node_s.is_some(),
            ],
        );
        for (node, g) in [node_x, node_w, node_b, node_s].into_iter().zip(parts) {
            if let (Some(node), Some(g)) = (node, g) {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

impl<C: CheckpointStrategy> FusedConvBackend for Autodiff<Flex, C> {
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        log_scale: FloatTensor<Self>,
        padding: usize,
        scaled: bool,
        relu_out: bool,
    ) -> FloatTensor<Self> {
        let prepared = ConvBackward
            .prepare::<C>([x.node(), weight.node(), shift.node(), log_scale.node()])
            .compute_bound()
            .stateful();
        let scale = scaled.then(|| scale_values(log_scale.primitive()));
        let out = forward(
            &Images::of(x.primitive()),
            &Kernel::of(weight.primitive(), padding),
            &bias_values(shift.primitive()),
            scale.as_deref(),
            relu_out,
        );
        match prepared {
            OpsKind::Tracked(prep) => {
                let state = (
                    x.into_primitive(),
                    weight.into_primitive(),
                    padding,
                    (relu_out || scaled).then(|| out.clone()),
                    scale,
                    relu_out,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// A float32 `[N, C, H, W]` tensor whose channel planes are each contiguous (`H W` values in
/// row-major order), as a contiguous tensor or a channel slice of one (a coupling's half) is;
/// other layouts are copied to contiguous first.
struct Images {
    tensor: FlexTensor,
    dims: [usize; 4],
    /// Element offset of image 0, channel 0.
    start: usize,
    /// Element strides of the image and channel dimensions.
    image_stride: usize,
    channel_stride: usize,
}

impl Images {
    fn of(t: &FlexTensor) -> Self {
        let s = t.layout().shape();
        assert_eq!(s.num_dims(), 4, "fused conv2d: expected [N, C, H, W]");
        let dims = [s[0], s[1], s[2], s[3]];
        let st = t.layout().strides();
        let planes_contiguous = (dims[3] <= 1 || st[3] == 1)
            && (dims[2] <= 1 || st[2] == dims[3] as isize)
            && st[0] >= 0
            && st[1] >= 0;
        let tensor = match planes_contiguous {
            true => t.clone(),
            false => t.to_contiguous(),
        };
        let st = tensor.layout().strides();
        Images {
            start: tensor.layout().start_offset(),
            image_stride: st[0] as usize,
            channel_stride: st[1] as usize,
            tensor,
            dims,
        }
    }

    /// The values, shareable between threads.
    fn view(&self) -> ImageData<'_> {
        ImageData {
            data: self.tensor.storage::<f32>(),
            dims: self.dims,
            start: self.start,
            image_stride: self.image_stride,
            channel_stride: self.channel_stride,
        }
    }
}

/// [`Images`]' values and layout.
#[derive(Clone, Copy)]
struct ImageData<'a> {
    data: &'a [f32],
    dims: [usize; 4],
    start: usize,
    image_stride: usize,
    channel_stride: usize,
}

impl<'a> ImageData<'a> {
    /// Image `i` as the matrix `[C, H W]`.
    fn matrix(&self, i: usize) -> Mat<'a> {
        let [_, c, h, w] = self.dims;
        Mat {
            data: self.data,
            offset: self.start + i * self.image_stride,
            rows: c,
            cols: h * w,
            row_stride: self.channel_stride as isize,
            col_stride: 1,
        }
    }

    /// Channel `c` of image `i`, `H W` values.
    fn plane(&self, i: usize, c: usize) -> &'a [f32] {
        let [_, _, h, w] = self.dims;
        let at = self.start + i * self.image_stride + c * self.channel_stride;
        &self.data[at..at + h * w]
    }
}

/// The images `0..n` in contiguous runs, one per worker: one run inside a data-parallel shard
/// (already on its own thread) or a rayon worker, else one per thread of the pool. Fixed for a
/// given thread count, so the order of every sum is too.
fn image_runs(n: usize) -> Vec<std::ops::Range<usize>> {
    let threads = match rayon::current_thread_index() {
        Some(_) => 1,
        None => rayon::current_num_threads(),
    };
    let parts = threads.min(n).max(1);
    (0..parts)
        .map(|j| (j * n / parts)..((j + 1) * n / parts))
        .collect()
}

/// Run `f` on every run of [`image_runs`] with its part of `buf` (`per_image` values per image),
/// in parallel when there are several, and collect the results in run order.
fn over_runs<T: Send, R: Send>(
    n: usize,
    buf: &mut [T],
    per_image: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<R> {
    use rayon::prelude::*;
    let runs = image_runs(n);
    let mut parts = Vec::with_capacity(runs.len());
    let mut rest = buf;
    for r in &runs {
        let (head, tail) = rest.split_at_mut(r.len() * per_image);
        parts.push(head);
        rest = tail;
    }
    if runs.len() == 1 {
        let part = parts.pop().expect("one run");
        return vec![f(runs[0].clone(), part)];
    }
    runs.into_par_iter()
        .zip(parts)
        .map(|(r, part)| f(r, part))
        .collect()
}

/// The kernel `[C_out, C_in, k, k]` as the GEMM operand its case needs (module docs).
struct Kernel {
    cout: usize,
    cin: usize,
    k: usize,
    padding: usize,
    /// 1x1 and im2col: `[C_out, C_in k k]` in the weight's own order; shifted responses:
    /// `[k k C_out, C_in]`, rows `(offset, output channel)`.
    matrix: Vec<f32>,
}

impl Kernel {
    fn of(t: &FlexTensor, padding: usize) -> Self {
        let s = t.layout().shape();
        assert_eq!(
            s.num_dims(),
            4,
            "fused conv2d: expected [C_out, C_in, k, k]"
        );
        let (cout, cin, k) = (s[0], s[1], s[2]);
        assert!(
            s[3] == k && k % 2 == 1 && padding == k / 2,
            "fused conv2d: needs a square odd kernel with padding k / 2"
        );
        let contiguous = t.to_contiguous();
        let w = contiguous
            .as_slice::<f32>()
            .expect("fused conv2d: float32 kernel");
        let matrix = if k == 1 || cin <= cout {
            w.to_vec()
        } else {
            let kk = k * k;
            let mut m = vec![0.0f32; kk * cout * cin];
            for co in 0..cout {
                for ci in 0..cin {
                    for o in 0..kk {
                        m[(o * cout + co) * cin + ci] = w[(co * cin + ci) * kk + o];
                    }
                }
            }
            m
        };
        Kernel {
            cout,
            cin,
            k,
            padding,
            matrix,
        }
    }

    fn shifted_responses(&self) -> bool {
        self.k > 1 && self.cin > self.cout
    }

    /// The GEMM operand: `[C_out, C_in k k]`, or `[k k C_out, C_in]` for shifted responses.
    fn mat(&self) -> Mat<'_> {
        let (rows, cols) = match self.shifted_responses() {
            true => (self.k * self.k * self.cout, self.cin),
            false => (self.cout, self.cin * self.k * self.k),
        };
        Mat {
            data: &self.matrix,
            offset: 0,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// A gradient of [`mat`](Self::mat)'s shape as the weight's `[C_out, C_in, k, k]` values.
    fn to_weight_order(&self, g: Vec<f32>) -> Vec<f32> {
        if !self.shifted_responses() {
            return g;
        }
        let (kk, cout, cin) = (self.k * self.k, self.cout, self.cin);
        let mut w = vec![0.0f32; kk * cout * cin];
        for co in 0..cout {
            for ci in 0..cin {
                for o in 0..kk {
                    w[(co * cin + ci) * kk + o] = g[(o * cout + co) * cin + ci];
                }
            }
        }
        w
    }
}

/// `exp(log_scale)` per channel, as ActNorm computes its scale.
fn scale_values(log_scale: &FlexTensor) -> Vec<f32> {
    bias_values(log_scale).into_iter().map(f32::exp).collect()
}

fn bias_values(b: &FlexTensor) -> Vec<f32> {
    b.to_contiguous()
        .as_slice::<f32>()
        .expect("fused conv2d: float32 bias")
        .to_vec()
}

/// A per-thread scratch buffer, reused across calls so that the im2col columns and shifted
/// responses of every convolution do not each fault in fresh zeroed pages; handed back to the
/// thread when dropped. Its values are whatever the last user left: every user writes the
/// part it reads first.
struct Scratch(Vec<f32>);

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Scratch {
    fn take(len: usize) -> Self {
        let mut v = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        if v.len() < len {
            v.resize(len, 0.0);
        }
        Scratch(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if v.capacity() > s.capacity() {
                *s = v;
            }
        });
    }
}

/// The im2col columns of image `i` into `cols: [C_in k k, H W]` (rows in the weight's
/// `(c, ky, kx)` order): `cols[(c, ky, kx), (y, x)] = x[c, y + ky - p, x + kx - p]`, zero
/// outside the image.
fn im2col(x: &ImageData, i: usize, k: usize, p: usize, cols: &mut [f32]) {
    let [_, cin, h, w] = x.dims;
    let hw = h * w;
    for c in 0..cin {
        let plane = x.plane(i, c);
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * hw..][..hw];
                shift_copy(
                    plane,
                    row,
                    h,
                    w,
                    ky as isize - p as isize,
                    kx as isize - p as isize,
                );
            }
        }
    }
}

/// `dst[y, x] = src[y + dy, x + dx]`, zero where that falls outside the `h x w` plane.
fn shift_copy(src: &[f32], dst: &mut [f32], h: usize, w: usize, dy: isize, dx: isize) {
    let (x0, x1) = column_range(w, dx);
    for y in 0..h {
        let out = &mut dst[y * w..(y + 1) * w];
        let sy = y as isize + dy;
        if sy < 0 || sy >= h as isize || x0 >= x1 {
            out.fill(0.0);
            continue;
        }
        let s = &src[sy as usize * w..][..w];
        out[..x0].fill(0.0);
        out[x0..x1].copy_from_slice(&s[(x0 as isize + dx) as usize..(x1 as isize + dx) as usize]);
        out[x1..].fill(0.0);
    }
}

/// `dst[y + dy, x + dx] += src[y, x]` where that falls inside the `h x w` plane (the adjoint of
/// [`shift_copy`]).
fn shift_add(src: &[f32], dst: &mut [f32], h: usize, w: usize, dy: isize, dx: isize) {
    let (x0, x1) = column_range(w, dx);
    if x0 >= x1 {
        return;
    }
    for y in 0..h {
        let ty = y as isize + dy;
        if ty < 0 || ty >= h as isize {
            continue;
        }
        let s = &src[y * w..][x0..x1];
        let d =
            &mut dst[ty as usize * w..][(x0 as isize + dx) as usize..(x1 as isize + dx) as usize];
        add_into(d, s);
    }
}

/// The columns `x0..x1` of a row of width `w` whose shift by `dx` stays inside the row.
fn column_range(w: usize, dx: isize) -> (usize, usize) {
    let x0 = (-dx).clamp(0, w as isize) as usize;
    let x1 = (w as isize - dx).clamp(0, w as isize) as usize;
    (x0, x1)
}

#[inline(never)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    super::vectorized(|| {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    })
}

// Kept out of line, like `dense`'s: small loops are reliably vectorised that way.
#[inline(never)]
fn add_bias_relu(row: &mut [f32], bias: f32) {
    super::vectorized(|| {
        for v in row.iter_mut() {
            let y = *v + bias;
            *v = if y < 0.0 { 0.0 } else { y };
        }
    })
}

/// `act((v + shift) * scale)`, ActNorm's order of operations.
#[inline(never)]
fn shift_scale(row: &mut [f32], shift: f32, scale: f32, relu_out: bool) {
    super::vectorized(|| {
        for v in row.iter_mut() {
            let y = (*v + shift) * scale;
            *v = if relu_out && y < 0.0 { 0.0 } else { y };
        }
    })
}

#[inline(never)]
fn scale_row(row: &mut [f32], s: f32) {
    super::vectorized(|| {
        for v in row.iter_mut() {
            *v *= s;
        }
    })
}

#[inline(never)]
fn add_bias(row: &mut [f32], bias: f32) {
    super::vectorized(|| {
        for v in row.iter_mut() {
            *v += bias;
        }
    })
}

fn forward(
    x: &Images,
    w: &Kernel,
    bias: &[f32],
    scale: Option<&[f32]>,
    relu_out: bool,
) -> FlexTensor {
    let [n, cin, h, wd] = x.dims;
    assert_eq!(
        cin, w.cin,
        "fused conv2d: input channels differ from the kernel's"
    );
    assert_eq!(bias.len(), w.cout, "fused conv2d: bias length differs");
    let (cout, k, p, hw) = (w.cout, w.k, w.padding, h * wd);
    let per_image = cout * hw;
    let mut out: Vec<f32> = Vec::with_capacity(n * per_image);
    let (xs, wm) = (x.view(), w.mat());
    over_runs(
        n,
        &mut out.spare_capacity_mut()[..n * per_image],
        per_image,
        |run, buf| {
            let len = match (k > 1, w.shifted_responses()) {
                (false, _) => 0,
                (true, false) => cin * k * k * hw,
                (true, true) => k * k * cout * hw,
            };
            let mut scratch = Scratch::take(len);
            let cols = &mut scratch.0[..len];
            for (i, dst) in run.zip(buf.chunks_exact_mut(per_image.max(1))) {
                if k == 1 {
                    gemm_into(dst, false, wm, xs.matrix(i), Split::Outside);
                } else if !w.shifted_responses() {
                    im2col(&xs, i, k, p, cols);
                    gemm_into(
                        dst,
                        false,
                        wm,
                        Mat::dense(cols, cin * k * k, hw),
                        Split::Outside,
                    );
                } else {
                    // Safety: the GEMM writes values only.
                    gemm_into(
                        unsafe { as_uninit(cols) },
                        false,
                        wm,
                        xs.matrix(i),
                        Split::Outside,
                    );
                    let z = &*cols;
                    let dst = init_zero(dst);
                    for (o, (ky, kx)) in offsets(k).enumerate() {
                        for co in 0..cout {
                            // y[y, x] += z_o[y + ky - p, x + kx - p]: z_o shifted by (p - ky, p - kx).
                            shift_add(
                                &z[(o * cout + co) * hw..][..hw],
                                &mut dst[co * hw..(co + 1) * hw],
                                h,
                                wd,
                                p as isize - ky as isize,
                                p as isize - kx as isize,
                            );
                        }
                    }
                }
                // Safety: the block was written above.
                let dst: &mut [f32] = unsafe { assume_init(dst) };
                for (c, row) in dst.chunks_exact_mut(hw.max(1)).enumerate() {
                    match (scale, relu_out) {
                        (None, true) => add_bias_relu(row, bias[c]),
                        (None, false) => add_bias(row, bias[c]),
                        (Some(s), _) => shift_scale(row, bias[c], s[c], relu_out),
                    }
                }
            }
        },
    );
    // Safety: every image's block was written above (the runs cover 0..n).
    unsafe { out.set_len(n * per_image) };
    flex(out, &[n, cout, h, wd])
}

/// The forward output as the backward pass needs it.
struct Output<'a> {
    /// The output (kept for the ReLU mask and the log-scale's gradient).
    values: Option<&'a FlexTensor>,
    relu: bool,
    /// `exp(log_scale)` per channel, when scaled.
    scale: Option<&'a [f32]>,
}

/// Gradients `[dx, dW, d shift, d log_scale]` for the output gradient `grad`; only the
/// `wanted` ones are computed. Each run of images sums its own kernel gradient; the runs' sums
/// are added in run order.
fn backward(
    x: &Images,
    w: &Kernel,
    out: Output,
    grad: FlexTensor,
    wanted: [bool; 4],
) -> [Option<FlexTensor>; 4] {
    let [n, cin, h, wd] = x.dims;
    let (cout, k, p, hw) = (w.cout, w.k, w.padding, h * wd);
    let mut g = grad
        .into_data()
        .try_into_vec::<f32>()
        .expect("fused conv2d: float32 gradient");
    let values = out.values.map(|o| {
        o.as_slice::<f32>()
            .expect("fused conv2d: contiguous output")
    });
    if out.relu {
        relu_mask(
            &mut g,
            values.expect("fused conv2d: output kept for the ReLU"),
        );
    }
    // y = act((v + shift) s): d log_s = sum(dy y) (zero where the ReLU cut), then dv = dy s.
    let d_log_scale = match (out.scale, wanted[3]) {
        (Some(_), true) => {
            let y = values.expect("fused conv2d: output kept for the log-scale");
            let mut d = vec![0.0f32; cout];
            let (gs, ys) = (g.chunks_exact(hw.max(1)), y.chunks_exact(hw.max(1)));
            for (r, (gr, yr)) in gs.zip(ys).enumerate() {
                d[r % cout.max(1)] += gr.iter().zip(yr).map(|(a, b)| a * b).sum::<f32>();
            }
            Some(flex(d, &[cout]))
        }
        _ => None,
    };
    if let Some(s) = out.scale {
        for (r, row) in g.chunks_exact_mut(hw.max(1)).enumerate() {
            scale_row(row, s[r % cout.max(1)]);
        }
    }
    let per_image = cout * hw;
    let (xs, wm, g) = (x.view(), w.mat(), &g[..]);
    let gy = |i: usize| Mat::dense(&g[i * per_image..(i + 1) * per_image], cout, hw);
    let [want_x, want_w, want_b, _] = wanted;
    // dx is written image by image; without it the runs still split the images.
    let mut dx: Vec<f32> = Vec::with_capacity(if want_x { n * cin * hw } else { 0 });
    let mut none: Vec<std::mem::MaybeUninit<f32>> = Vec::new();
    let (buf, per_x) = match want_x {
        true => (&mut dx.spare_capacity_mut()[..n * cin * hw], cin * hw),
        false => {
            none.resize_with(n, std::mem::MaybeUninit::uninit);
            (&mut none[..], 1)
        }
    };
    let partial = over_runs(n, buf, per_x, |run, buf| {
        let mut dw = want_w.then(|| vec![0.0f32; wm.rows * wm.cols]);
        let rows = match w.shifted_responses() {
            true => k * k * cout,
            false => cin * k * k,
        };
        let len = if k > 1 { rows * hw } else { 0 };
        let mut taken = Scratch::take(len);
        let scratch = &mut taken.0[..len];
        for (i, dxi) in run.zip(buf.chunks_exact_mut(per_x.max(1))) {
            if k == 1 {
                if want_x {
                    gemm_into(dxi, false, wm.t(), gy(i), Split::Outside);
                }
                if let Some(dw) = &mut dw {
                    gemm_acc(dw, gy(i), xs.matrix(i).t(), Split::Outside);
                }
            } else if !w.shifted_responses() {
                if let Some(dw) = &mut dw {
                    im2col(&xs, i, k, p, scratch);
                    gemm_acc(dw, gy(i), Mat::dense(scratch, rows, hw).t(), Split::Outside);
                }
                if want_x {
                    // dcols = Wᵀ dy, then col2im: the adjoint of im2col.
                    // Safety: the GEMM writes values only.
                    gemm_into(
                        unsafe { as_uninit(scratch) },
                        false,
                        wm.t(),
                        gy(i),
                        Split::Outside,
                    );
                    let image = init_zero(dxi);
                    for c in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let r = (c * k + ky) * k + kx;
                                shift_add(
                                    &scratch[r * hw..(r + 1) * hw],
                                    &mut image[c * hw..(c + 1) * hw],
                                    h,
                                    wd,
                                    ky as isize - p as isize,
                                    kx as isize - p as isize,
                                );
                            }
                        }
                    }
                }
            } else {
                let gi = &g[i * per_image..(i + 1) * per_image];
                // dz_o[a, b] = dy[a - (ky - p), b - (kx - p)]: the adjoint of the shifted sum.
                for (o, (ky, kx)) in offsets(k).enumerate() {
                    for co in 0..cout {
                        shift_copy(
                            &gi[co * hw..(co + 1) * hw],
                            &mut scratch[(o * cout + co) * hw..][..hw],
                            h,
                            wd,
                            p as isize - ky as isize,
                            p as isize - kx as isize,
                        );
                    }
                }
                let dz = Mat::dense(scratch, rows, hw);
                if want_x {
                    gemm_into(dxi, false, wm.t(), dz, Split::Outside);
                }
                if let Some(dw) = &mut dw {
                    gemm_acc(dw, dz, xs.matrix(i).t(), Split::Outside);
                }
            }
        }
        dw
    });
    if want_x {
        // Safety: every image's block was written above (the runs cover 0..n).
        unsafe { dx.set_len(n * cin * hw) };
    }
    let dw = want_w.then(|| {
        let mut parts = partial.into_iter().flatten();
        let mut total = parts
            .next()
            .unwrap_or_else(|| vec![0.0f32; wm.rows * wm.cols]);
        for part in parts {
            add_into(&mut total, &part);
        }
        flex(w.to_weight_order(total), &[cout, cin, k, k])
    });
    let db = want_b.then(|| {
        let mut db = vec![0.0f32; cout];
        for (r, row) in g.chunks_exact(hw.max(1)).enumerate() {
            db[r % cout.max(1)] += row.iter().sum::<f32>();
        }
        flex(db, &[cout])
    });
    [
        want_x.then(|| flex(dx, &[n, cin, h, wd])),
        dw,
        db,
        d_log_scale,
    ]
}

/// Zero `v` and hand it back initialised.
fn init_zero(v: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    v.iter_mut().for_each(|e| {
        e.write(0.0);
    });
    // Safety: every element was just written.
    unsafe { assume_init(v) }
}
