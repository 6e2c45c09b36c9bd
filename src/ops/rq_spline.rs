//! The spline coupling's transform, fused: for values `v` (`[n, C, S]`, `S` spatial positions,
//! 1 for vectors) and the coupling network's raw spline parameters `h` (`[n, C (3K - 1), S]`,
//! channel `c (3K - 1) + q` holding parameter `q` of channel `c`), the rational-quadratic spline
//! of [`crate::layers::spline`] (or its inverse) of every value and each row's summed
//! log-derivative.
//!
//! Written with tensor ops the spline is some forty autodiff nodes over `[n, C, S, K + 1]`
//! tensors (softmax, cumulative sums, concatenations, comparisons, gathers); here the forward is
//! one node that keeps its inputs and the backward recomputes each value's knots and applies
//! hand-derived partial derivatives:
//!
//! ```text
//! R = (s ξ² + d_k ξ(1-ξ)) / D,  D = s + (d_{k+1} + d_k - 2s) ξ(1-ξ),  y = y_k + h R
//! L = log dy/dx = 2 log s + log N - 2 log D,  N = d_{k+1} ξ² + 2 s ξ(1-ξ) + d_k (1-ξ)²
//! ```
//!
//! then through `ξ = (x - x_k)/w`, `s = h/w`, the knots (cumulative sums of the floored
//! softmax) and the softplus of the inner derivatives. The inverse's gradients come from the
//! forward's by the implicit-function rule (`dx/dθ = -(∂y/∂θ) / (dy/dx)`), so the inverse is
//! differentiable too. Each value is computed in float64 (the log-derivative's terms cancel
//! near a knot; the exponentials of the softmaxes and softplus are float32), stored as float32.
//!
//! [`rq_spline_values`] takes this path for float32 tensors on the Flex device and falls back to
//! the tensor ops of [`crate::layers::spline`] everywhere else (other backends, float64); tests
//! compare the two, values and gradients.

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
use rayon::prelude::*;

use crate::layers::spline::{
    derivative_shift, params_per_value, rq_spline, rq_spline_inverse, MIN_BIN, MIN_DERIVATIVE,
};
use crate::tensor_util::is_flex_device;

/// The spline (or, with `inverse`, its inverse) of `v` (`[n, C, S]`) with raw parameters `h`
/// (`[n, C (3 bins - 1), S]`) on `[-bound, bound]`, identity outside: the transformed values
/// (`[n, C, S]`) and each row's summed log-derivative (`[n]`, nats).
pub fn rq_spline_values(
    v: Tensor<3>,
    h: Tensor<3>,
    bins: usize,
    bound: f64,
    inverse: bool,
) -> (Tensor<3>, Tensor<1>) {
    let ok = is_flex_device(&h.device()) && [v.dtype(), h.dtype()] == [DType::F32; 2];
    if !ok {
        return rq_spline_values_composed(v, h, bins, bound, inverse);
    }
    let [n, c, s] = v.dims();
    let m = c * s;
    let out: Tensor<2> = Tensor::from_dispatch(<Dispatch as FusedRqSpline>::fused_rq_spline(
        v.into_dispatch(),
        h.into_dispatch(),
        [bins, usize::from(inverse)],
        bound,
    ));
    let y = out.clone().narrow(1, 0, m).reshape([n, c, s]);
    (y, out.narrow(1, m, 1).reshape([n]))
}

/// [`rq_spline_values`] from the tensor ops of [`crate::layers::spline`] (any backend, any float
/// type).
pub fn rq_spline_values_composed(
    v: Tensor<3>,
    h: Tensor<3>,
    bins: usize,
    bound: f64,
    inverse: bool,
) -> (Tensor<3>, Tensor<1>) {
    let [n, c, s] = v.dims();
    let p = params_per_value(bins);
    let m = n * c * s;
    let params = h
        .reshape([n, c, p, s])
        .permute([0, 1, 3, 2])
        .reshape([m, 1, p]);
    let v = v.reshape([m, 1]);
    let (out, ld) = if inverse {
        rq_spline_inverse(v, params, bound)
    } else {
        rq_spline(v, params, bound)
    };
    let ld = ld.reshape([n, c * s]).sum_dim(1).reshape([n]);
    (out.reshape([n, c, s]), ld)
}

/// The fused spline as a burn backend extension, for Flex (float32) and Autodiff over Flex.
/// Call it through [`rq_spline_values`], which checks that the operands qualify.
#[backend_extension(Flex, Autodiff)]
pub trait FusedRqSpline: Backend {
    /// `[y | log-det]` (`[n, C S + 1]`) for `v: [n, C, S]`, `h: [n, C (3K - 1), S]`;
    /// `shape = [K, inverse as 0 or 1]`.
    fn fused_rq_spline(
        v: FloatTensor<Self>,
        h: FloatTensor<Self>,
        shape: [usize; 2],
        bound: f64,
    ) -> FloatTensor<Self>;
}

/// A float32 tensor's values in row-major order and its dimensions.
fn values(t: &FlexTensor) -> (Vec<f32>, Vec<usize>) {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    };
    let layout = t.layout();
    let dims: Vec<usize> = (0..layout.shape().num_dims())
        .map(|i| layout.shape()[i])
        .collect();
    let len: usize = dims.iter().product();
    let start = layout.start_offset();
    (t.storage::<f32>()[start..start + len].to_vec(), dims)
}

/// `(softplus(r), sigmoid(r))` from one float32 `exp` (the raw parameters are float32; the
/// results are used in float64).
fn softplus_sigmoid(r: f64) -> (f64, f64) {
    let e = (-(r.abs() as f32)).exp();
    let softplus = r.max(0.0) + e.ln_1p() as f64;
    let e = e as f64;
    (
        softplus,
        if r >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        },
    )
}

/// One value's spline: knots, derivatives and what the backward needs of the softmaxes.
struct Knots {
    k: usize,
    bound: f64,
    xs: Vec<f64>,
    ys: Vec<f64>,
    ds: Vec<f64>,
    /// Softmax probabilities of the widths and heights, and `sigmoid` of the raw inner
    /// derivatives (`sig[j]` for knot `j`).
    pw: Vec<f64>,
    ph: Vec<f64>,
    sig: Vec<f64>,
}

/// One value's place in its bin, with everything its partial derivatives need.
struct Local {
    k: usize,
    w: f64,
    h: f64,
    s: f64,
    xi: f64,
    d0: f64,
    d1: f64,
    /// `R`'s numerator, `D` and `N` of the module formulas.
    a: f64,
    den: f64,
    num: f64,
}

impl Local {
    fn y(&self, ys: &[f64]) -> f64 {
        ys[self.k] + self.h * self.a / self.den
    }

    fn log_derivative(&self) -> f64 {
        2.0 * self.s.ln() + self.num.ln() - 2.0 * self.den.ln()
    }

    /// `∂L/∂ξ`.
    fn dl_dxi(&self) -> f64 {
        let (xi, s, d0, d1) = (self.xi, self.s, self.d0, self.d1);
        (2.0 * d1 * xi + 2.0 * s * (1.0 - 2.0 * xi) - 2.0 * d0 * (1.0 - xi)) / self.num
            - 2.0 * (d1 + d0 - 2.0 * s) * (1.0 - 2.0 * xi) / self.den
    }
}

impl Knots {
    fn new(k: usize, bound: f64) -> Self {
        Knots {
            k,
            bound,
            xs: vec![0.0; k + 1],
            ys: vec![0.0; k + 1],
            ds: vec![1.0; k + 1],
            pw: vec![0.0; k],
            ph: vec![0.0; k],
            sig: vec![0.0; k + 1],
        }
    }

    /// The knots from raw parameters `raw(q)`, `q < 3K - 1`.
    fn set(&mut self, raw: impl Fn(usize) -> f64) {
        let (k, b) = (self.k, self.bound);
        let scale = 1.0 - MIN_BIN * k as f64;
        for (part, probs, knots) in [
            (0, &mut self.pw, &mut self.xs),
            (1, &mut self.ph, &mut self.ys),
        ] {
            let top = (0..k)
                .map(|j| raw(part * k + j))
                .fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0.0;
            for (j, p) in probs.iter_mut().enumerate() {
                *p = ((raw(part * k + j) - top) as f32).exp() as f64;
                total += *p;
            }
            let mut acc = 0.0;
            knots[0] = -b;
            for j in 0..k {
                probs[j] /= total;
                acc += probs[j] * scale + MIN_BIN;
                knots[j + 1] = acc * 2.0 * b - b;
            }
            knots[k] = b;
        }
    }

    /// Sets the derivatives at knots `k` and `k + 1` (the bin's ends; the only ones its value
    /// and gradients read) from raw parameters `raw(q)`.
    fn set_derivatives(&mut self, k: usize, raw: impl Fn(usize) -> f64) {
        for j in [k, k + 1] {
            if inner_knot(j, self.k) {
                let (softplus, sigmoid) =
                    softplus_sigmoid(raw(2 * self.k + j - 1) + derivative_shift());
                self.ds[j] = MIN_DERIVATIVE + softplus;
                self.sig[j] = sigmoid;
            }
        }
    }

    /// The bin of `v` among `knots`: the number of inner knots at or below it.
    fn bin(&self, knots: &[f64], v: f64) -> usize {
        knots[1..self.k].iter().filter(|&&t| t <= v).count()
    }

    fn local(&self, k: usize, xi: f64) -> Local {
        let w = self.xs[k + 1] - self.xs[k];
        let h = self.ys[k + 1] - self.ys[k];
        let s = h / w;
        let (d0, d1) = (self.ds[k], self.ds[k + 1]);
        let mix = xi * (1.0 - xi);
        Local {
            k,
            w,
            h,
            s,
            xi,
            d0,
            d1,
            a: s * xi * xi + d0 * mix,
            den: s + (d1 + d0 - 2.0 * s) * mix,
            num: d1 * xi * xi + 2.0 * s * mix + d0 * (1.0 - xi) * (1.0 - xi),
        }
    }

    /// The forward place of `x` (inside `[-B, B]`); `raw` as for [`Knots::set`].
    fn at_x(&mut self, x: f64, raw: impl Fn(usize) -> f64) -> Local {
        let k = self.bin(&self.xs, x);
        self.set_derivatives(k, raw);
        let xi = ((x - self.xs[k]) / (self.xs[k + 1] - self.xs[k])).clamp(0.0, 1.0);
        self.local(k, xi)
    }

    /// The place whose image is `y` (inside `[-B, B]`): the root of eq. 6–8.
    fn at_y(&mut self, y: f64, raw: impl Fn(usize) -> f64) -> Local {
        let k = self.bin(&self.ys, y);
        self.set_derivatives(k, raw);
        let w = self.xs[k + 1] - self.xs[k];
        let h = self.ys[k + 1] - self.ys[k];
        let s = h / w;
        let (d0, d1) = (self.ds[k], self.ds[k + 1]);
        let dy = y - self.ys[k];
        let curve = d1 + d0 - 2.0 * s;
        let a = h * (s - d0) + dy * curve;
        let b = h * d0 - dy * curve;
        let c = -s * dy;
        let disc = (b * b - 4.0 * a * c).max(0.0);
        let xi = (2.0 * c) / (-b - disc.sqrt());
        let xi = if xi.is_nan() { 0.0 } else { xi.clamp(0.0, 1.0) };
        self.local(k, xi)
    }

    /// Accumulates into `graw` the raw-parameter gradient of `gy · y + gl · L` at `p`, and
    /// returns its derivative with respect to `x`.
    fn backprop(&self, p: &Local, gy: f64, gl: f64, graw: &mut [f64]) -> f64 {
        let (k, kk, b2) = (p.k, self.k, 2.0 * self.bound);
        let (xi, s, d0, d1, den, num, a) = (p.xi, p.s, p.d0, p.d1, p.den, p.num, p.a);
        let mix = xi * (1.0 - xi);
        let den2 = den * den;
        // Partials of R = a / den and of L in ξ, s, d_k, d_{k+1}.
        let r_xi = ((2.0 * s * xi + d0 * (1.0 - 2.0 * xi)) * den
            - a * (d1 + d0 - 2.0 * s) * (1.0 - 2.0 * xi))
            / den2;
        let r_s = (xi * xi * den - a * (1.0 - 2.0 * mix)) / den2;
        let r_d0 = mix * (den - a) / den2;
        let r_d1 = -a * mix / den2;
        let l_s = 2.0 / s + 2.0 * mix / num - 2.0 * (1.0 - 2.0 * mix) / den;
        let l_d0 = (1.0 - xi) * (1.0 - xi) / num - 2.0 * mix / den;
        let l_d1 = xi * xi / num - 2.0 * mix / den;
        let g_xi = gy * p.h * r_xi + gl * p.dl_dxi();
        let g_s = gy * p.h * r_s + gl * l_s;
        let g_h = gy * a / den + g_s / p.w;
        let g_d0 = gy * p.h * r_d0 + gl * l_d0;
        let g_d1 = gy * p.h * r_d1 + gl * l_d1;
        let g_w = -g_xi * xi / p.w - g_s * s / p.w;
        let g_x0 = -g_xi / p.w;
        // Knot gradients: x_k = X[k], w = X[k+1] - X[k]; y_k = Y[k], h = Y[k+1] - Y[k].
        let knot_grads = [(g_x0 - g_w, g_w), (gy - g_h, g_h)];
        for (part, ((g_lo, g_hi), probs)) in
            knot_grads.into_iter().zip([&self.pw, &self.ph]).enumerate()
        {
            // X[j] = -B + 2B Σ_{i<j} f_i for inner j; f_i gets 2B Σ_{inner j > i} g_X[j].
            let inner = |j: usize| j >= 1 && j < kk;
            let g_f = |i: usize| {
                let mut g = 0.0;
                if inner(k) && i < k {
                    g += g_lo;
                }
                if inner(k + 1) && i < k + 1 {
                    g += g_hi;
                }
                g * b2
            };
            let dot: f64 = (0..kk).map(|i| probs[i] * g_f(i)).sum();
            let scale = 1.0 - MIN_BIN * kk as f64;
            for i in 0..kk {
                graw[part * kk + i] += scale * probs[i] * (g_f(i) - dot);
            }
        }
        if inner_knot(k, kk) {
            graw[2 * kk + k - 1] += g_d0 * self.sig[k];
        }
        if inner_knot(k + 1, kk) {
            graw[2 * kk + k] += g_d1 * self.sig[k + 1];
        }
        g_xi / p.w
    }
}

fn inner_knot(j: usize, k: usize) -> bool {
    j >= 1 && j < k
}

/// Panics unless `v` is `[n, C, S]` and `h` is `[n, C (3K - 1), S]` (checked once, where the op
/// is entered; the forward and backward loops then read the shape from `v`).
fn check_dims(vd: &[usize], hd: &[usize], k: usize) {
    let p = params_per_value(k);
    assert!(
        vd.len() == 3 && hd.len() == 3 && hd[0] == vd[0] && hd[1] == vd[1] * p && hd[2] == vd[2],
        "rq spline: expected v [n, C, S] and h [n, C (3K - 1), S], got {vd:?} and {hd:?}"
    );
}

/// Rows per rayon task: enough work (values × parameters) to pay for a task, so a vector
/// flow's batch is one task and an image batch is split.
fn rows_per_task(m: usize, p: usize) -> usize {
    ((1 << 17) / (m * p).max(1)).max(1)
}

/// `[y | log-det]` rows, `[n, C S + 1]` row-major.
fn forward(v: &[f32], h: &[f32], dv: &[usize], k: usize, bound: f64, inverse: bool) -> Vec<f32> {
    let (n, c, s, p) = (dv[0], dv[1], dv[2], params_per_value(k));
    let m = c * s;
    let mut out = vec![0f32; n * (m + 1)];
    out.par_chunks_mut((m + 1) * rows_per_task(m, p))
        .enumerate()
        .for_each(|(t, rows)| {
            let mut kn = Knots::new(k, bound);
            let first = t * rows_per_task(m, p);
            for (r, row) in rows.chunks_mut(m + 1).enumerate() {
                let i = first + r;
                let mut total = 0.0;
                for ci in 0..c {
                    for si in 0..s {
                        let val = v[(i * c + ci) * s + si] as f64;
                        let (y, l) = if !(val >= -bound && val <= bound) {
                            (val, 0.0)
                        } else {
                            let raw = |q| h[((i * c + ci) * p + q) * s + si] as f64;
                            kn.set(raw);
                            if inverse {
                                let loc = kn.at_y(val, raw);
                                (kn.xs[loc.k] + loc.xi * loc.w, -loc.log_derivative())
                            } else {
                                let loc = kn.at_x(val, raw);
                                (loc.y(&kn.ys), loc.log_derivative())
                            }
                        };
                        row[ci * s + si] = y as f32;
                        total += l;
                    }
                }
                row[m] = total as f32;
            }
        });
    out
}

/// Gradients `(dv [n, C, S], dh [n, C P, S])` from the output's gradient `g` (`[n, C S + 1]`).
fn backward(
    v: &[f32],
    h: &[f32],
    g: &[f32],
    dv: &[usize],
    k: usize,
    bound: f64,
    inverse: bool,
) -> (Vec<f32>, Vec<f32>) {
    let (n, c, s, p) = (dv[0], dv[1], dv[2], params_per_value(k));
    let m = c * s;
    let mut gv = vec![0f32; n * m];
    let mut gh = vec![0f32; n * m * p];
    let per = rows_per_task(m, p);
    gv.par_chunks_mut(m * per)
        .zip(gh.par_chunks_mut(m * p * per))
        .enumerate()
        .for_each(|(t, (gv_rows, gh_rows))| {
            let mut kn = Knots::new(k, bound);
            let mut graw = vec![0f64; p];
            for r in 0..gv_rows.len() / m.max(1) {
                let i = t * per + r;
                let gl = g[i * (m + 1) + m] as f64;
                for ci in 0..c {
                    for si in 0..s {
                        let val = v[(i * c + ci) * s + si] as f64;
                        let gy = g[i * (m + 1) + ci * s + si] as f64;
                        if !(val >= -bound && val <= bound) {
                            gv_rows[r * m + ci * s + si] = gy as f32;
                            continue;
                        }
                        let raw = |q| h[((i * c + ci) * p + q) * s + si] as f64;
                        kn.set(raw);
                        graw.iter_mut().for_each(|g| *g = 0.0);
                        let gin = if inverse {
                            // x = f⁻¹(y), L_inv = -L(x): dG/dy = (g_x - g_l L_x) / f'(x) and
                            // dG/dθ = -(dG/dy · ∂f/∂θ + g_l ∂L/∂θ).
                            let loc = kn.at_y(val, raw);
                            let slope = loc.log_derivative().exp();
                            let l_x = loc.dl_dxi() / loc.w;
                            let g_y = (gy - gl * l_x) / slope;
                            kn.backprop(&loc, g_y, gl, &mut graw);
                            graw.iter_mut().for_each(|g| *g = -*g);
                            g_y
                        } else {
                            let loc = kn.at_x(val, raw);
                            kn.backprop(&loc, gy, gl, &mut graw)
                        };
                        gv_rows[r * m + ci * s + si] = gin as f32;
                        for (q, gq) in graw.iter().enumerate() {
                            gh_rows[((r * c + ci) * p + q) * s + si] = *gq as f32;
                        }
                    }
                }
            }
        });
    (gv, gh)
}

fn out_dims(dv: &[usize]) -> [usize; 2] {
    [dv[0], dv[1] * dv[2] + 1]
}

impl FusedRqSpline for Flex {
    fn fused_rq_spline(v: FlexTensor, h: FlexTensor, shape: [usize; 2], bound: f64) -> FlexTensor {
        let (vv, dv) = values(&v);
        let (hv, dh) = values(&h);
        check_dims(&dv, &dh, shape[0]);
        let out = forward(&vv, &hv, &dv, shape[0], bound, shape[1] == 1);
        flex(out, &out_dims(&dv))
    }
}

#[derive(Debug)]
struct SplineBackward;

/// The inputs `v`, `h` (row-major), `v`'s and `h`'s dimensions, `K`, the bound and the
/// direction.
type SplineState = (Vec<f32>, Vec<f32>, Vec<usize>, Vec<usize>, usize, f64, bool);

impl Backward<Flex, 2> for SplineBackward {
    type State = SplineState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_v, node_h] = ops.parents;
        let (g, _) = values(&grads.consume::<Flex>(&ops.node));
        let (v, h, dv, dh, k, bound, inverse) = ops.state;
        let (gv, gh) = backward(&v, &h, &g, &dv, k, bound, inverse);
        register!(grads, (node_v, flex(gv, &dv)), (node_h, flex(gh, &dh)));
    }
}

impl<C: CheckpointStrategy> FusedRqSpline for Autodiff<Flex, C> {
    fn fused_rq_spline(
        v: FloatTensor<Self>,
        h: FloatTensor<Self>,
        shape: [usize; 2],
        bound: f64,
    ) -> FloatTensor<Self> {
        let prepared = SplineBackward
            .prepare::<C>([v.node(), h.node()])
            .compute_bound()
            .stateful();
        let (vv, dv) = values(v.primitive());
        let (hv, dh) = values(h.primitive());
        check_dims(&dv, &dh, shape[0]);
        let inverse = shape[1] == 1;
        let out = flex(
            forward(&vv, &hv, &dv, shape[0], bound, inverse),
            &out_dims(&dv),
        );
        match prepared {
            OpsKind::Tracked(prep) => prep.finish((vv, hv, dv, dh, shape[0], bound, inverse), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
