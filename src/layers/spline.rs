//! The monotonic rational-quadratic spline of neural spline flows (Durkan, Bekasov, Murray and
//! Papamakarios 2019, arXiv 1906.04032, §3.1–3.3, after Gregory and Delbourgo 1982): an
//! elementwise bijection of `[-B, B]` onto itself made of `K` bins, each a ratio of two
//! quadratics, with the identity outside (linear tails, §3.3).
//!
//! Parameters per value: `K` unnormalised widths, `K` unnormalised heights and `K - 1`
//! unnormalised derivatives at the inner knots (`3K - 1` in all, the layout of the paper's
//! coupling networks). Widths and heights are a softmax scaled to `2B` (each at least
//! [`MIN_BIN`] of it); inner derivatives are `MIN_DERIVATIVE + softplus(d + c)` with `c =`
//! [`derivative_shift`]`()`, so all-zero raw parameters give the identity; the derivatives at
//! `±B` are 1, so the spline joins the identity tails smoothly.
//!
//! In bin `k` (knots `x_k < x_{k+1}`, `y_k < y_{k+1}`, width `w_k`, height `h_k`, slope
//! `s_k = h_k / w_k`, knot derivatives `d_k`, `d_{k+1}`), with `ξ = (x - x_k) / w_k` (eq. 4–5):
//!
//! ```text
//! y        = y_k + h_k (s_k ξ² + d_k ξ(1-ξ)) / (s_k + (d_{k+1} + d_k - 2 s_k) ξ(1-ξ))
//! dy/dx    = s_k² (d_{k+1} ξ² + 2 s_k ξ(1-ξ) + d_k (1-ξ)²) / (s_k + (d_{k+1} + d_k - 2 s_k) ξ(1-ξ))²
//! ```
//!
//! The inverse (eq. 6–8) solves `a ξ² + b ξ + c = 0` in the bin of `y` with
//! `a = h_k (s_k - d_k) + (y - y_k)(d_{k+1} + d_k - 2 s_k)`,
//! `b = h_k d_k - (y - y_k)(d_{k+1} + d_k - 2 s_k)`, `c = -s_k (y - y_k)`, taking the root
//! `ξ = 2c / (-b - sqrt(b² - 4ac))` (the numerically stable form of the one in `[0, 1]`).
//!
//! Everything is tensor ops (any backend, float32 or float64, with autodiff); the bin of each
//! value is found by counting the knots at or below it and read with `gather`.
//!
//! [`SplineCoupling`] can follow the spline with a conditional affine map from the same
//! network (`y_b = RQS(x_b) exp(s) + t`, the vector models' default): the spline alone keeps
//! `±B` fixed and is the identity beyond, so it cannot rescale a value conditionally on the
//! other columns, which heavy-tailed, heteroscedastic tables need (sp500's daily returns, 3
//! seeds, both with a zero-initialised output layer: test NLL 14.634 with the stage against
//! 14.788 without; `docs/splines.md`).

use burn::tensor::activation::{softmax, softplus};
use burn::tensor::{Int, Tensor};

/// The smallest bin width and height, as a fraction of the interval `2B` (nflows' and zuko's
/// `1e-3`): keeps every bin's slope bounded.
pub const MIN_BIN: f64 = 1e-3;

/// The smallest knot derivative (nflows' `1e-3`): keeps the spline strictly increasing.
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// The shift `c = ln(e^(1 - MIN_DERIVATIVE) - 1)` added to raw inner derivatives, so a raw
/// value of 0 is a derivative of exactly 1 (nflows' constant for its boundary derivatives):
/// with uniform bins (equal raw widths and heights) the spline is then the identity, and a
/// coupling network whose output starts near zero starts near the identity.
pub fn derivative_shift() -> f64 {
    (1.0 - MIN_DERIVATIVE).exp_m1().ln()
}

/// The number of raw parameters per value for `bins` bins: `3 * bins - 1`.
pub fn params_per_value(bins: usize) -> usize {
    3 * bins - 1
}

/// The spline's knots and derivatives from raw parameters `[n, d, 3K - 1]`:
/// `(x knots [n, d, K+1], y knots [n, d, K+1], derivatives [n, d, K+1])`.
fn knots(params: Tensor<3>, bound: f64) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    let [_, _, p] = params.dims();
    assert!(
        p >= 2 && (p + 1) % 3 == 0,
        "spline: 3K - 1 parameters per value, got {p}"
    );
    let k = (p + 1) / 3;
    let cumulative = |raw: Tensor<3>| {
        let frac = softmax(raw, 2) * (1.0 - MIN_BIN * k as f64) + MIN_BIN;
        let zero = frac.clone().narrow(2, 0, 1).zeros_like();
        // Knots from -B to B; the last is set to B exactly (the cumulative sum may round).
        let inner = frac.cumsum(2).narrow(2, 0, k - 1) * (2.0 * bound) - bound;
        let lo = zero.clone() - bound;
        let hi = zero + bound;
        Tensor::cat(vec![lo, inner, hi], 2)
    };
    let xs = cumulative(params.clone().narrow(2, 0, k));
    let ys = cumulative(params.clone().narrow(2, k, k));
    let inner = softplus(params.narrow(2, 2 * k, k - 1) + derivative_shift(), 1.0) + MIN_DERIVATIVE;
    let one = inner.clone().narrow(2, 0, 1).ones_like();
    let ds = Tensor::cat(vec![one.clone(), inner, one], 2);
    (xs, ys, ds)
}

/// The bin (0-based, `[n, d, 1]`) of each value of `v` (`[n, d]`) among knots `[n, d, K+1]`:
/// the number of inner knots at or below it.
fn bin_of(v: Tensor<2>, knots: &Tensor<3>) -> Tensor<3, Int> {
    let [n, d, k1] = knots.dims();
    let inner = knots.clone().narrow(2, 1, k1 - 2);
    let v = v.reshape([n, d, 1]);
    inner.lower_equal(v.expand([n, d, k1 - 2])).int().sum_dim(2)
}

/// Each value's bin quantities: `(x_k, w_k, y_k, h_k, d_k, d_{k+1})`, each `[n, d]`.
type Bin = (
    Tensor<2>,
    Tensor<2>,
    Tensor<2>,
    Tensor<2>,
    Tensor<2>,
    Tensor<2>,
);

fn bin_values(bin: Tensor<3, Int>, xs: &Tensor<3>, ys: &Tensor<3>, ds: &Tensor<3>) -> Bin {
    let [n, d, _] = xs.dims();
    let at = |t: &Tensor<3>, i: Tensor<3, Int>| t.clone().gather(2, i).reshape([n, d]);
    let next = bin.clone() + 1;
    let (x0, x1) = (at(xs, bin.clone()), at(xs, next.clone()));
    let (y0, y1) = (at(ys, bin.clone()), at(ys, next.clone()));
    let (d0, d1) = (at(ds, bin), at(ds, next));
    (x0.clone(), x1 - x0, y0.clone(), y1 - y0, d0, d1)
}

/// `log dy/dx` at position `xi` in bins of slope `s` and knot derivatives `d0`, `d1` (eq. 5).
fn log_derivative(xi: Tensor<2>, s: Tensor<2>, d0: Tensor<2>, d1: Tensor<2>) -> Tensor<2> {
    let mix = xi.clone() * (xi.clone().neg() + 1.0);
    let one_minus = xi.clone().neg() + 1.0;
    let denom = s.clone() + (d1.clone() + d0.clone() - s.clone() * 2.0) * mix.clone();
    let dnum = s.clone().powi_scalar(2)
        * (d1 * xi.powi_scalar(2) + s * 2.0 * mix + d0 * one_minus.powi_scalar(2));
    dnum.log() - denom.log() * 2.0
}

/// The spline applied to `x` (`[n, d]`) with raw parameters `[n, d, 3K - 1]` on `[-bound,
/// bound]` (identity outside): `(y, log dy/dx)`, both `[n, d]` (the log-derivative is 0 in the
/// tails).
pub fn rq_spline(x: Tensor<2>, params: Tensor<3>, bound: f64) -> (Tensor<2>, Tensor<2>) {
    let inside = x
        .clone()
        .greater_equal_elem(-bound)
        .bool_and(x.clone().lower_equal_elem(bound));
    let xc = x.clone().clamp(-bound, bound);
    let (xs, ys, ds) = knots(params, bound);
    let (x0, w, y0, h, d0, d1) = bin_values(bin_of(xc.clone(), &xs), &xs, &ys, &ds);
    let s = h.clone() / w.clone();
    let xi = ((xc - x0) / w).clamp(0.0, 1.0);
    let mix = xi.clone() * (xi.clone().neg() + 1.0);
    let denom = s.clone() + (d1.clone() + d0.clone() - s.clone() * 2.0) * mix.clone();
    let num = h * (s.clone() * xi.clone().powi_scalar(2) + d0.clone() * mix.clone());
    let y = y0 + num / denom;
    let logdet = log_derivative(xi, s, d0, d1);
    let zero = logdet.zeros_like();
    (
        x.mask_where(inside.clone(), y),
        zero.mask_where(inside, logdet),
    )
}

/// The inverse of [`rq_spline`] with the same parameters: `(x, log dx/dy)` for `y` `[n, d]`.
pub fn rq_spline_inverse(y: Tensor<2>, params: Tensor<3>, bound: f64) -> (Tensor<2>, Tensor<2>) {
    let inside = y
        .clone()
        .greater_equal_elem(-bound)
        .bool_and(y.clone().lower_equal_elem(bound));
    let yc = y.clone().clamp(-bound, bound);
    let (xs, ys, ds) = knots(params, bound);
    let (x0, w, y0, h, d0, d1) = bin_values(bin_of(yc.clone(), &ys), &xs, &ys, &ds);
    let s = h.clone() / w.clone();
    let dy = yc - y0;
    let curve = d1.clone() + d0.clone() - s.clone() * 2.0;
    let a = h.clone() * (s.clone() - d0.clone()) + dy.clone() * curve.clone();
    let b = h * d0.clone() - dy.clone() * curve.clone();
    let c = s.clone().neg() * dy;
    let disc = (b.clone().powi_scalar(2) - a * c.clone() * 4.0).clamp_min(0.0);
    let xi = ((c * 2.0) / (b.neg() - disc.sqrt())).clamp(0.0, 1.0);
    // A value exactly on a bin's left knot gives 0 / 0 when the bin is flat there; ξ = 0.
    let xi = xi.clone().mask_where(xi.clone().is_nan(), xi.zeros_like());
    let x = xi.clone() * w + x0;
    let logdet = log_derivative(xi, s, d0, d1).neg();
    let zero = logdet.zeros_like();
    (
        y.mask_where(inside.clone(), x),
        zero.mask_where(inside, logdet),
    )
}

/// The default number of bins `K` of a spline coupling (the paper's tabular models use 8).
pub const DEFAULT_BINS: usize = 8;

/// The interval `[-B, B]` a spline coupling transforms (identity outside), in the coupling's
/// input units; vector flows standardise their data first, so `B = 5` covers all but the
/// farthest tails (zuko's NSF uses the same bound).
pub const SPLINE_BOUND: f64 = 5.0;

/// Rational-quadratic spline coupling (1906.04032 §3.1–3.3, "RQ-NSF (C)"): the conditioning half
/// `x_a` (with any context) gives each value of the transformed half `x_b` its own spline of
/// `bins` bins on `[-SPLINE_BOUND, SPLINE_BOUND]`; `y_b = RQS(x_b)`, `log|det J| = Σ log
/// RQS'(x_b)`.
///
/// On a one-channel input nothing conditions: the network reads a constant 1 channel (and the
/// context), so the whole input gets one spline whose parameters are learned constants, or a
/// function of the context alone (a one-dimensional density or conditional density).
#[derive(burn::module::Module, Debug)]
pub struct SplineCoupling {
    /// The conditioner: `x_a` (and context) to `C_b * (3K - 1)` channels, `[C_b, 3K - 1]` per
    /// position, then (with [`scale`](Self::scale)) `2 C_b` more: the affine stage's shift and
    /// raw log-scale.
    pub net: crate::nets::CouplingNet,
    /// Whether the second channel half conditions and the first is transformed.
    pub swap: bool,
    /// Bins `K` (rebuilt from the model's config).
    #[module(skip)]
    pub bins: usize,
    /// The affine stage after the spline, when the model has one: `y_b = RQS(x_b) exp(s) + t`
    /// with `s = tanh(raw) alpha + beta` (the tanh-bounded scale of the affine coupling,
    /// [`crate::layers::coupling::TanhScale`]), both from the same network. Flow++'s coupling
    /// composes its elementwise nonlinearity with an affine map the same way (Ho et al. 2019,
    /// arXiv 1902.00275, §3.1). The spline keeps `±B` fixed and is the identity beyond; the
    /// affine stage rescales a value conditionally on the other half everywhere, its tails
    /// included (volatility that moves with the other columns).
    pub scale: Option<crate::layers::coupling::TanhScale>,
}

impl SplineCoupling {
    /// A coupling over `net`, which must output `C_b * (3 bins - 1)` channels, plus `2 C_b`
    /// when `scale` is given (vectors only: `[n, C_b, 1, 1]`).
    pub fn new(
        net: crate::nets::CouplingNet,
        swap: bool,
        bins: usize,
        scale: Option<crate::layers::coupling::TanhScale>,
    ) -> Self {
        SplineCoupling {
            net,
            swap,
            bins,
            scale,
        }
    }

    /// The spline (or its inverse) of `v` (`[n, C_b, H, W]`) with parameters `h`
    /// (`[n, C_b (3K - 1), H, W]`, plus `[n, 2 C_b, 1, 1]` for the affine stage): the values
    /// and the per-sample log-determinant.
    fn apply(&self, v: Tensor<4>, h: Tensor<4>, inverse: bool) -> (Tensor<4>, Tensor<1>) {
        let [n, cb, hh, ww] = v.dims();
        let p = params_per_value(self.bins);
        let spline = |v: Tensor<4>, h: Tensor<4>| {
            let (out, ld) = crate::ops::rq_spline::rq_spline_values(
                v.reshape([n, cb, hh * ww]),
                h.reshape([n, cb * p, hh * ww]),
                self.bins,
                SPLINE_BOUND,
                inverse,
            );
            (out.reshape([n, cb, hh, ww]), ld)
        };
        let Some(ts) = &self.scale else {
            return spline(v, h);
        };
        assert_eq!(
            hh * ww,
            1,
            "spline coupling: the affine stage is for vectors"
        );
        let hs = h.clone().narrow(1, 0, cb * p);
        let ha = h.narrow(1, cb * p, 2 * cb);
        if !inverse {
            let (u, ld) = spline(v, hs);
            let (alpha, beta) = (ts.alpha.val(), ts.beta.val());
            let ha = ha.reshape([n, 2 * cb]);
            let (y, lda) =
                crate::ops::tanh_affine::tanh_affine(u.reshape([n, cb]), ha, alpha, beta);
            return (y.reshape([n, cb, 1, 1]), ld + lda);
        }
        // The affine coupling's inverse: the same log-scale, then the spline's inverse.
        let shift = ha.clone().narrow(1, 0, cb);
        let s = ts.log_scale(ha.narrow(1, cb, cb));
        let u = (v - shift) * s.clone().neg().exp();
        let (x, ld) = spline(u, hs);
        (x, ld - crate::layers::coupling::per_sample_sum(s))
    }
}

impl crate::flow::Flow for SplineCoupling {
    fn forward_ctx(&self, x: Tensor<4>, ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        if x.dims()[1] == 1 {
            let h = self.net.forward(x.ones_like(), ctx);
            return self.apply(x, h, false);
        }
        let (xa, xb) = crate::layers::coupling::split_halves(x, self.swap);
        let h = self.net.forward(xa.clone(), ctx);
        let (yb, ld) = self.apply(xb, h, false);
        (crate::layers::coupling::join_halves(xa, yb, self.swap), ld)
    }

    fn inverse_ctx(&self, y: Tensor<4>, ctx: crate::flow::Context) -> (Tensor<4>, Tensor<1>) {
        if y.dims()[1] == 1 {
            let h = self.net.forward(y.ones_like(), ctx);
            return self.apply(y, h, true);
        }
        let (xa, yb) = crate::layers::coupling::split_halves(y, self.swap);
        let h = self.net.forward(xa.clone(), ctx);
        let (xb, ld) = self.apply(yb, h, true);
        (crate::layers::coupling::join_halves(xa, xb, self.swap), ld)
    }

    fn data_init(&mut self, x: &Tensor<4>, ctx: crate::flow::Context) {
        if x.dims()[1] == 1 {
            return self.net.data_init(x.ones_like(), ctx);
        }
        let (xa, _) = crate::layers::coupling::split_halves(x.clone(), self.swap);
        self.net.data_init(xa, ctx);
    }

    fn needs_data_init(&self) -> bool {
        self.net.needs_data_init()
    }
}
