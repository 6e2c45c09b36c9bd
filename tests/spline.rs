//! The rational-quadratic spline (Durkan et al. 2019, §3): inverse, exact log-derivative, tails,
//! knots, and a case worked by hand from the paper's formulas.

use burn::tensor::{DType, Tensor};
use glowflow::layers::spline::{params_per_value, rq_spline, rq_spline_inverse, MIN_DERIVATIVE};
use glowflow::tensor_util::{from_vec_f64, to_vec_f64};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const B: f64 = 3.0;

fn f64_tensor<const D: usize>(v: Vec<f64>, shape: [usize; D]) -> Tensor<D> {
    from_vec_f64(v, shape, (&glowflow::default_device(), DType::F64))
}

/// Random raw parameters `[n, d, 3K - 1]` and values `[n, d]` spread over and past `[-B, B]`.
fn case(n: usize, d: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let p = (0..n * d * params_per_value(k))
        .map(|_| rng.gen_range(-2.0..2.0))
        .collect();
    let x = (0..n * d)
        .map(|_| rng.gen_range(-1.4 * B..1.4 * B))
        .collect();
    (p, x)
}

fn spline(x: &[f64], p: &[f64], n: usize, d: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let (y, ld) = rq_spline(
        f64_tensor(x.to_vec(), [n, d]),
        f64_tensor(p.to_vec(), [n, d, params_per_value(k)]),
        B,
    );
    (to_vec_f64(y), to_vec_f64(ld))
}

#[test]
fn inverse_undoes_forward_in_float64_and_log_derivatives_cancel() {
    for (k, seed) in [(2, 1), (8, 2), (16, 3)] {
        let (n, d) = (64, 3);
        let (p, x) = case(n, d, k, seed);
        let (y, ld) = spline(&x, &p, n, d, k);
        let (back, ld_inv) = rq_spline_inverse(
            f64_tensor(y.clone(), [n, d]),
            f64_tensor(p.clone(), [n, d, params_per_value(k)]),
            B,
        );
        let (back, ld_inv) = (to_vec_f64(back), to_vec_f64(ld_inv));
        for i in 0..n * d {
            assert!(
                (back[i] - x[i]).abs() < 1e-10,
                "K={k}: x {} -> {} -> {}",
                x[i],
                y[i],
                back[i]
            );
            assert!(
                (ld[i] + ld_inv[i]).abs() < 1e-9,
                "K={k}: log-derivatives {} {}",
                ld[i],
                ld_inv[i]
            );
        }
    }
}

#[test]
fn log_derivative_equals_central_differences() {
    let (n, d, k) = (50, 2, 8);
    let (p, x) = case(n, d, k, 7);
    let (_, ld) = spline(&x, &p, n, d, k);
    let eps = 1e-6;
    let shifted = |e: f64| spline(&x.iter().map(|v| v + e).collect::<Vec<_>>(), &p, n, d, k).0;
    let (up, down) = (shifted(eps), shifted(-eps));
    for i in 0..n * d {
        let numeric = (up[i] - down[i]) / (2.0 * eps);
        let exact = ld[i].exp();
        // A knot between x - eps and x + eps bends the difference quotient: skip those.
        let near_knot = (numeric - exact).abs() / exact > 1e-4;
        if !near_knot {
            assert!(
                (numeric - exact).abs() / exact < 1e-6,
                "x {}: {numeric} vs {exact}",
                x[i]
            );
        }
    }
    // Almost every point is away from a knot.
    let checked = (0..n * d)
        .filter(|&i| ((up[i] - down[i]) / (2.0 * eps) - ld[i].exp()).abs() / ld[i].exp() <= 1e-4)
        .count();
    assert!(checked >= n * d - 4, "{checked} of {}", n * d);
}

#[test]
fn identity_in_the_tails_and_fixed_ends() {
    let (n, d, k) = (4, 1, 5);
    let (p, _) = case(n, d, k, 11);
    let x = vec![-10.0, -B, B, 7.5];
    let (y, ld) = spline(&x, &p, n, d, k);
    assert_eq!(y[0], -10.0);
    assert_eq!(y[3], 7.5);
    assert_eq!((ld[0], ld[3]), (0.0, 0.0));
    assert!(
        (y[1] + B).abs() < 1e-12 && (y[2] - B).abs() < 1e-12,
        "ends: {y:?}"
    );
    // The derivative at ±B is 1, matching the tails.
    assert!(ld[1].abs() < 1e-9 && ld[2].abs() < 1e-9, "{ld:?}");
}

#[test]
fn strictly_increasing_on_a_fine_grid() {
    let k = 10;
    let (p, _) = case(1, 1, k, 5);
    let m = 4001;
    let x: Vec<f64> = (0..m)
        .map(|i| -B + 2.0 * B * i as f64 / (m - 1) as f64)
        .collect();
    let p_rep: Vec<f64> = (0..m).flat_map(|_| p.iter().copied()).collect();
    let (y, ld) = spline(&x, &p_rep, m, 1, k);
    assert!(y.windows(2).all(|w| w[1] > w[0]));
    // The derivative is at least the smallest allowed knot derivative's order of magnitude.
    assert!(ld
        .iter()
        .all(|v| v.is_finite() && *v > MIN_DERIVATIVE.ln() - 1.0));
}

#[test]
fn a_case_worked_by_hand() {
    // K = 2, raw widths and heights 0: knots at -B, 0, B in x and y (softmax of equal values);
    // raw inner derivative 1: delta = softplus(1 + c) + MIN_DERIVATIVE with the shift
    // c = ln(e^(1 - MIN_DERIVATIVE) - 1) (a raw 0 is a derivative of 1). At x = B/2 (bin 1,
    // xi = 1/2, slope s = 1, d_k = delta, d_{k+1} = 1), eq. 4 gives
    // y = B (1/4 + delta/4) / (1 + (delta - 1)/4) = B (1 + delta) / (3 + delta), and eq. 5
    // dy/dx = (1/4 + 1/2 + delta/4) / ((3 + delta)/4)^2 = 4 / (3 + delta).
    let c = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
    let delta = (1.0 + (1.0 + c).exp()).ln() + MIN_DERIVATIVE;
    let raw = [0.0, 0.0, 0.0, 0.0, 1.0];
    let (y, ld) = spline(&[B / 2.0], &raw, 1, 1, 2);
    assert!(
        (y[0] - B * (1.0 + delta) / (3.0 + delta)).abs() < 1e-12,
        "{}",
        y[0]
    );
    assert!(
        (ld[0] - (4.0 / (3.0 + delta)).ln()).abs() < 1e-12,
        "{}",
        ld[0]
    );
    // And by symmetry of the knots, x = -B/2 sits in bin 0 with d_k = 1, d_{k+1} = delta:
    // y = -B + B (1/4 + 1/4) / (1 + (delta - 1)/4) = -B + 2B / (3 + delta).
    let (y, _) = spline(&[-B / 2.0], &raw, 1, 1, 2);
    assert!(
        (y[0] - (-B + 2.0 * B / (3.0 + delta))).abs() < 1e-12,
        "{}",
        y[0]
    );
}

#[test]
fn all_zero_raw_parameters_are_the_identity() {
    let k = 8;
    let x: Vec<f64> = (0..41).map(|i| -B + 2.0 * B * i as f64 / 40.0).collect();
    let (y, ld) = spline(&x, &vec![0.0; 41 * params_per_value(k)], 41, 1, k);
    for ((x, y), ld) in x.iter().zip(&y).zip(&ld) {
        assert!(
            (x - y).abs() < 1e-12 && ld.abs() < 1e-12,
            "{x} -> {y}, log-derivative {ld}"
        );
    }
}

#[test]
fn autodiff_gradients_match_finite_differences() {
    // d/dparams and d/dx of sum(w * y) + sum(v * log dy/dx), in float64, against central
    // differences of the same expression.
    let (n, d, k) = (6, 2, 4);
    let (p, x) = case(n, d, k, 13);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let (w, v): (Vec<f64>, Vec<f64>) = (0..n * d)
        .map(|_| (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0)))
        .unzip();
    let objective = |x: &[f64], p: &[f64]| -> f64 {
        let (y, ld) = spline(x, p, n, d, k);
        (0..n * d).map(|i| w[i] * y[i] + v[i] * ld[i]).sum()
    };
    let device = glowflow::default_device().autodiff();
    let opts = (&device, DType::F64);
    let xt = from_vec_f64(x.clone(), [n, d], opts).require_grad();
    let pt = from_vec_f64(p.clone(), [n, d, params_per_value(k)], opts).require_grad();
    let (y, ld) = rq_spline(xt.clone(), pt.clone(), B);
    let loss = (y * from_vec_f64(w.clone(), [n, d], opts)).sum()
        + (ld * from_vec_f64(v.clone(), [n, d], opts)).sum();
    let g = loss.backward();
    let (gx, gp) = (
        to_vec_f64(xt.grad(&g).unwrap()),
        to_vec_f64(pt.grad(&g).unwrap()),
    );
    let eps = 1e-6;
    for i in 0..n * d {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[i] += eps;
        down[i] -= eps;
        let numeric = (objective(&up, &p) - objective(&down, &p)) / (2.0 * eps);
        assert!(
            (numeric - gx[i]).abs() < 1e-5 * (1.0 + numeric.abs()),
            "dx[{i}]: {numeric} vs {}",
            gx[i]
        );
    }
    for j in 0..p.len() {
        let (mut up, mut down) = (p.clone(), p.clone());
        up[j] += eps;
        down[j] -= eps;
        let numeric = (objective(&x, &up) - objective(&x, &down)) / (2.0 * eps);
        assert!(
            (numeric - gp[j]).abs() < 1e-5 * (1.0 + numeric.abs()),
            "dp[{j}]: {numeric} vs {}",
            gp[j]
        );
    }
}

#[test]
fn fused_spline_matches_tensor_ops_values_and_gradients_both_directions() {
    // The fused CPU op (float32 in and out, float64 inside) against the tensor ops in float64 on
    // the same float32 inputs: values, summed log-derivatives and the gradients of
    // sum(r * out) + sum(rl * logdet) with respect to the values and the raw parameters.
    use glowflow::ops::rq_spline::{rq_spline_values, rq_spline_values_composed};
    let device = glowflow::default_device().autodiff();
    // The last case is past one rayon task (rows_per_task), so chunked rows are checked too.
    for (n, c, s, k, seed) in [
        (9, 2, 1, 8, 31),
        (3, 3, 5, 4, 32),
        (5, 1, 4, 2, 33),
        (30_000, 1, 1, 2, 34),
    ] {
        let p = params_per_value(k);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |len: usize, r: f64| -> Vec<f64> {
            (0..len)
                .map(|_| (rng.gen_range(-r..r) as f32) as f64)
                .collect()
        };
        // Values spread over and past [-B, B]; one column more, so v is a strided slice.
        let wide = draw(n * (c + 1) * s, 1.4 * B);
        let h = draw(n * c * p * s, 2.0);
        let (r, rl) = (draw(n * c * s, 1.0), draw(n, 1.0));
        for inverse in [false, true] {
            let run = |dtype: DType| {
                let opts = (&device, dtype);
                let wt = from_vec_f64(wide.clone(), [n, c + 1, s], opts).require_grad();
                let ht = from_vec_f64(h.clone(), [n, c * p, s], opts).require_grad();
                let v = wt.clone().narrow(1, 1, c);
                let (out, ld) = if dtype == DType::F32 {
                    rq_spline_values(v, ht.clone(), k, B, inverse)
                } else {
                    rq_spline_values_composed(v, ht.clone(), k, B, inverse)
                };
                let loss = (out.clone() * from_vec_f64(r.clone(), [n, c, s], opts)).sum()
                    + (ld.clone() * from_vec_f64(rl.clone(), [n], opts)).sum();
                let g = loss.backward();
                let gw = to_vec_f64(wt.grad(&g).unwrap());
                let gh = to_vec_f64(ht.grad(&g).unwrap());
                [to_vec_f64(out), to_vec_f64(ld), gw, gh]
            };
            let (fused, exact) = (run(DType::F32), run(DType::F64));
            for (name, u, v) in [
                ("values", &fused[0], &exact[0]),
                ("log-det", &fused[1], &exact[1]),
                ("d/dv", &fused[2], &exact[2]),
                ("d/dh", &fused[3], &exact[3]),
            ] {
                let scale = v.iter().fold(1f64, |m, x| m.max(x.abs()));
                let e = u.iter().zip(v).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
                assert!(
                    e < 1e-5,
                    "{n}x{c}x{s} K{k} inverse {inverse}: {name} differs by {e} (relative)"
                );
            }
        }
    }
}
