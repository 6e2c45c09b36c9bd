//! Small dense linear algebra on the host in float64: the one-time LU at initialisation, matrix
//! inverses for generation, and `log|det|` for the plain 1x1 convolution. Channel counts are
//! small (C <= 512), so O(C^3) host work is negligible next to a training step, and float64 keeps
//! log-determinants and inverses exact to float32 output precision.

/// Row-major square matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    /// Side length.
    pub n: usize,
    /// The `n * n` entries, row-major: `(i, j)` at `i * n + j`.
    pub a: Vec<f64>,
}

impl Mat {
    /// The `n x n` zero matrix.
    pub fn zeros(n: usize) -> Self {
        Mat {
            n,
            a: vec![0.0; n * n],
        }
    }
    /// The `n x n` identity.
    pub fn eye(n: usize) -> Self {
        let mut m = Self::zeros(n);
        for i in 0..n {
            m.a[i * n + i] = 1.0;
        }
        m
    }
    /// From `n * n` row-major float32 values; panics when `v.len() != n * n`.
    pub fn from_f32(n: usize, v: &[f32]) -> Self {
        assert_eq!(v.len(), n * n, "matrix data of the wrong length");
        Mat {
            n,
            a: v.iter().map(|&x| x as f64).collect(),
        }
    }
    /// The entries rounded to float32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        self.a.iter().map(|&x| x as f32).collect()
    }
    /// Entry `(i, j)`: row `i`, column `j`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.n + j]
    }
    /// Set entry `(i, j)` to `v`.
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.a[i * self.n + j] = v;
    }
    /// The product `self · o` (both `n x n`).
    pub fn matmul(&self, o: &Mat) -> Mat {
        let n = self.n;
        let mut r = Mat::zeros(n);
        for i in 0..n {
            for k in 0..n {
                let aik = self.get(i, k);
                if aik == 0.0 {
                    continue;
                }
                for j in 0..n {
                    r.a[i * n + j] += aik * o.a[k * n + j];
                }
            }
        }
        r
    }
    /// The transpose.
    pub fn transpose(&self) -> Mat {
        let n = self.n;
        let mut r = Mat::zeros(n);
        for i in 0..n {
            for j in 0..n {
                r.set(j, i, self.get(i, j));
            }
        }
        r
    }
}

/// LU factorisation with partial pivoting: `A = P L U`, `L` unit lower triangular.
pub struct Lu {
    /// The row permutation `P`, a permutation matrix.
    pub p: Mat,
    /// Unit lower triangular `L`.
    pub l: Mat,
    /// Upper triangular `U`; its diagonal holds the pivots.
    pub u: Mat,
}

/// Factor `a` as `P L U`. Returns `None` for a (numerically) singular matrix.
pub fn lu(a: &Mat) -> Option<Lu> {
    let n = a.n;
    let mut u = a.clone();
    let mut l = Mat::eye(n);
    let mut perm: Vec<usize> = (0..n).collect();
    for k in 0..n {
        let piv = (k..n).max_by(|&i, &j| u.get(i, k).abs().total_cmp(&u.get(j, k).abs()))?;
        if u.get(piv, k) == 0.0 {
            return None;
        }
        if piv != k {
            for j in 0..n {
                u.a.swap(k * n + j, piv * n + j);
            }
            for j in 0..k {
                l.a.swap(k * n + j, piv * n + j);
            }
            perm.swap(k, piv);
        }
        for i in k + 1..n {
            let f = u.get(i, k) / u.get(k, k);
            l.set(i, k, f);
            for j in k..n {
                let v = u.get(i, j) - f * u.get(k, j);
                u.set(i, j, v);
            }
        }
    }
    // Row k of the factored matrix is row perm[k] of `a`: (P^T A) = L U, so A = P L U with
    // P[perm[k], k] = 1.
    let mut p = Mat::zeros(n);
    for (k, &r) in perm.iter().enumerate() {
        p.set(r, k, 1.0);
    }
    Some(Lu { p, l, u })
}

/// `(sign of det a, log|det a|)`; `None` when a pivot is exactly zero (a NaN matrix gives
/// NaN, not `None`).
pub fn slogdet(a: &Mat) -> Option<(f64, f64)> {
    let f = lu(a)?;
    let mut sign = permutation_sign(&f.p);
    let mut logdet = 0.0;
    for i in 0..a.n {
        let d = f.u.get(i, i);
        sign *= d.signum();
        logdet += d.abs().ln();
    }
    Some((sign, logdet))
}

fn permutation_sign(p: &Mat) -> f64 {
    let n = p.n;
    let mut perm: Vec<usize> = (0..n)
        .map(|k| (0..n).find(|&r| p.get(r, k) == 1.0).unwrap_or(k))
        .collect();
    let mut sign = 1.0;
    for i in 0..n {
        while perm[i] != i {
            let j = perm[i];
            perm.swap(i, j);
            sign = -sign;
        }
    }
    sign
}

/// Inverse by Gauss-Jordan elimination with partial pivoting; `None` if singular.
pub fn inverse(a: &Mat) -> Option<Mat> {
    let n = a.n;
    let mut m = a.clone();
    let mut inv = Mat::eye(n);
    for k in 0..n {
        let piv = (k..n).max_by(|&i, &j| m.get(i, k).abs().total_cmp(&m.get(j, k).abs()))?;
        let pv = m.get(piv, k);
        if pv == 0.0 || !pv.is_finite() {
            return None;
        }
        for j in 0..n {
            m.a.swap(k * n + j, piv * n + j);
            inv.a.swap(k * n + j, piv * n + j);
        }
        let d = m.get(k, k);
        for j in 0..n {
            m.a[k * n + j] /= d;
            inv.a[k * n + j] /= d;
        }
        for i in 0..n {
            if i != k {
                let f = m.get(i, k);
                if f != 0.0 {
                    for j in 0..n {
                        m.a[i * n + j] -= f * m.a[k * n + j];
                        inv.a[i * n + j] -= f * inv.a[k * n + j];
                    }
                }
            }
        }
    }
    Some(inv)
}

/// The largest size [`random_orthogonal`] draws a dense (Haar) rotation for; above it the
/// `O(n³)` Gram-Schmidt would dominate a run's set-up (minutes at a few thousand columns), and a
/// random signed permutation, also orthogonal, is drawn in `O(n)` instead.
pub const MAX_DENSE_ORTHOGONAL_INIT: usize = 512;

/// A random signed permutation matrix `P · diag(±1)` of size `n` and its factors `(P, L = I,
/// U = diag(±1))`: the initialisation of mixing layers wider than
/// [`MAX_DENSE_ORTHOGONAL_INIT`], built in `O(n²)` writes without an `O(n³)` factorisation.
pub fn random_signed_permutation(n: usize, rng: &mut impl rand::Rng) -> (Mat, Lu) {
    use rand::seq::SliceRandom;
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    let signs: Vec<f64> = (0..n)
        .map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 })
        .collect();
    let (mut w, mut p, mut u) = (Mat::zeros(n), Mat::zeros(n), Mat::zeros(n));
    for j in 0..n {
        // Column j of P is the unit vector e_perm[j]; W = P · diag(signs).
        p.set(perm[j], j, 1.0);
        w.set(perm[j], j, signs[j]);
        u.set(j, j, signs[j]);
    }
    (
        w,
        Lu {
            p,
            l: Mat::eye(n),
            u,
        },
    )
}

/// A random orthogonal matrix: Gram-Schmidt (twice, for stability) on a Gaussian matrix; above
/// [`MAX_DENSE_ORTHOGONAL_INIT`], a random signed permutation.
pub fn random_orthogonal(n: usize, rng: &mut impl rand::Rng) -> Mat {
    if n > MAX_DENSE_ORTHOGONAL_INIT {
        return random_signed_permutation(n, rng).0;
    }
    use rand_distr::{Distribution, StandardNormal};
    let mut cols: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..n).map(|_| StandardNormal.sample(rng)).collect())
        .collect();
    for k in 0..n {
        for _ in 0..2 {
            for j in 0..k {
                let (done, rest) = cols.split_at_mut(k);
                let (ck, cj) = (&mut rest[0], &done[j]);
                let d: f64 = ck.iter().zip(cj).map(|(a, b)| a * b).sum();
                ck.iter_mut().zip(cj).for_each(|(a, b)| *a -= d * b);
            }
        }
        let norm = cols[k].iter().map(|v| v * v).sum::<f64>().sqrt();
        cols[k].iter_mut().for_each(|v| *v /= norm);
    }
    let mut m = Mat::zeros(n);
    for (j, col) in cols.iter().enumerate() {
        for (i, &v) in col.iter().enumerate() {
            m.set(i, j, v);
        }
    }
    m
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: `(values, vectors)`
/// with `a = V diag(values) Vᵀ`, the eigenvectors as the columns of `V`. Accurate to float64
/// rounding for the sizes here (feature covariances, n <= a few hundred); only the upper
/// triangle's symmetry is assumed, not checked. Golub & Van Loan, *Matrix Computations*, §8.5.
pub fn symmetric_eigen(a: &Mat) -> (Vec<f64>, Mat) {
    let n = a.n;
    let mut m = a.clone();
    let mut v = Mat::eye(n);
    let norm: f64 = m.a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m.get(i, j).powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m.get(p, q);
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes (p, q): tan θ = t, chosen with |θ| <= π/4.
                let theta = (m.get(q, q) - m.get(p, p)) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (m.get(k, p), m.get(k, q));
                    m.set(k, p, c * akp - s * akq);
                    m.set(k, q, s * akp + c * akq);
                }
                for k in 0..n {
                    let (apk, aqk) = (m.get(p, k), m.get(q, k));
                    m.set(p, k, c * apk - s * aqk);
                    m.set(q, k, s * apk + c * aqk);
                }
                for k in 0..n {
                    let (vkp, vkq) = (v.get(k, p), v.get(k, q));
                    v.set(k, p, c * vkp - s * vkq);
                    v.set(k, q, s * vkp + c * vkq);
                }
                // The rotation zeroes (p, q) in exact arithmetic: make it exact, so the
                // off-diagonal norm can reach the stopping threshold.
                m.set(p, q, 0.0);
                m.set(q, p, 0.0);
            }
        }
    }
    ((0..n).map(|i| m.get(i, i)).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn lu_reconstructs_and_inverse_is_inverse() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = random_orthogonal(7, &mut rng);
        let f = lu(&a).unwrap();
        let r = f.p.matmul(&f.l).matmul(&f.u);
        for (x, y) in r.a.iter().zip(&a.a) {
            assert!((x - y).abs() < 1e-12);
        }
        let ai = inverse(&a).unwrap();
        let e = a.matmul(&ai);
        for i in 0..7 {
            for j in 0..7 {
                assert!((e.get(i, j) - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        // Orthogonal: |det| = 1.
        assert!(slogdet(&a).unwrap().1.abs() < 1e-12);
    }

    #[test]
    fn slogdet_matches_hand_computed() {
        let a = Mat {
            n: 2,
            a: vec![0.0, 2.0, -3.0, 1.0],
        }; // det = 6
        let (s, l) = slogdet(&a).unwrap();
        assert_eq!(s, 1.0);
        assert!((l - 6f64.ln()).abs() < 1e-12);
        let b = Mat {
            n: 2,
            a: vec![0.0, 2.0, 3.0, 1.0],
        }; // det = -6
        assert_eq!(slogdet(&b).unwrap().0, -1.0);
        assert!(slogdet(&Mat {
            n: 2,
            a: vec![1.0, 2.0, 2.0, 4.0]
        })
        .is_none());
    }

    #[test]
    fn symmetric_eigen_reconstructs_the_matrix() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = 40;
        let mut a = Mat::zeros(n);
        for i in 0..n {
            for j in i..n {
                let x: f64 = rand::Rng::gen_range(&mut rng, -1.0..1.0);
                a.set(i, j, x);
                a.set(j, i, x);
            }
        }
        let (values, v) = symmetric_eigen(&a);
        let mut d = Mat::zeros(n);
        for (i, &l) in values.iter().enumerate() {
            d.set(i, i, l);
        }
        let back = v.matmul(&d).matmul(&v.transpose());
        let err = back
            .a
            .iter()
            .zip(&a.a)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-10, "reconstruction error {err}");
        let vtv = v.transpose().matmul(&v);
        let orth = vtv
            .a
            .iter()
            .zip(&Mat::eye(n).a)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(orth < 1e-10, "VᵀV - I: {orth}");
        // The trace is the sum of the eigenvalues.
        let trace: f64 = (0..n).map(|i| a.get(i, i)).sum();
        assert!((values.iter().sum::<f64>() - trace).abs() < 1e-10);
    }
}
