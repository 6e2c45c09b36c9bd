//! 2D target distributions (FFJORD's toy set plus the tutorial's 8 Gaussians), each with a
//! sampler and, where it exists in closed form or as a 1-D integral, the exact log-density.

use std::f64::consts::PI;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::distributions::LN_2PI;

/// A 2D target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Target {
    /// The tutorial's 8 Gaussians: radius 0.7, sigma 0.1.
    #[serde(rename = "normals")]
    #[cfg_attr(feature = "cli", value(name = "normals"))]
    Normals,
    /// FFJORD's 8 Gaussians: radius 4/1.414, sigma 0.5/1.414.
    #[serde(rename = "8gaussians")]
    #[cfg_attr(feature = "cli", value(name = "8gaussians"))]
    EightGaussians,
    /// FFJORD's checkerboard: uniform on 8 of the 16 squares of side 2 tiling `[-4, 4]^2`
    /// (density 1/32).
    #[serde(rename = "checkerboard")]
    #[cfg_attr(feature = "cli", value(name = "checkerboard"))]
    Checkerboard,
    /// FFJORD's rings: four concentric circles, radii 3, 2.25, 1.5 and 0.75, blurred by
    /// sigma 0.08.
    #[serde(rename = "rings")]
    #[cfg_attr(feature = "cli", value(name = "rings"))]
    Rings,
    /// FFJORD's circles: two concentric circles, radii 3 and 1.5, blurred by sigma 0.24.
    #[serde(rename = "circles")]
    #[cfg_attr(feature = "cli", value(name = "circles"))]
    Circles,
    /// FFJORD's moons: two interleaved half-circles (noise 0.1), scaled by 2 and shifted by
    /// (-1, -0.2). No closed-form density.
    #[serde(rename = "moons")]
    #[cfg_attr(feature = "cli", value(name = "moons"))]
    Moons,
    /// FFJORD's Swiss roll `t (cos t, sin t) / 5`, `t` uniform in `[1.5π, 4.5π)`, noise 0.2.
    /// No closed-form density.
    #[serde(rename = "swissroll")]
    #[cfg_attr(feature = "cli", value(name = "swissroll"))]
    Swissroll,
    /// FFJORD's two spirals, each point on either with probability 1/2. No closed-form
    /// density.
    #[serde(rename = "2spirals")]
    #[cfg_attr(feature = "cli", value(name = "2spirals"))]
    TwoSpirals,
    /// FFJORD's pinwheel: five curved arms. No closed-form density.
    #[serde(rename = "pinwheel")]
    #[cfg_attr(feature = "cli", value(name = "pinwheel"))]
    Pinwheel,
}

/// Every target, in declaration order.
pub const ALL_TARGETS: [Target; 9] = [
    Target::Normals,
    Target::EightGaussians,
    Target::Checkerboard,
    Target::Rings,
    Target::Circles,
    Target::Moons,
    Target::Swissroll,
    Target::TwoSpirals,
    Target::Pinwheel,
];

const RING_RADII: [f64; 4] = [3.0, 2.25, 1.5, 0.75];
const RING_SIGMA: f64 = 0.08;
const CIRCLE_RADII: [f64; 2] = [3.0, 1.5];
const CIRCLE_SIGMA: f64 = 0.24;

fn normal(rng: &mut impl Rng) -> f64 {
    StandardNormal.sample(rng)
}

fn eight_directions() -> Vec<[f64; 2]> {
    (0..8)
        .map(|k| {
            let a = 2.0 * PI * k as f64 / 8.0;
            [a.cos(), a.sin()]
        })
        .collect()
}

/// log of an equal mixture of isotropic Gaussians.
fn gaussian_mixture_log_prob(p: [f64; 2], centers: &[[f64; 2]], sigma: f64) -> f64 {
    let s2 = sigma * sigma;
    let terms: Vec<f64> = centers
        .iter()
        .map(|c| -((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2)) / (2.0 * s2))
        .collect();
    log_sum_exp(&terms) - (centers.len() as f64).ln() - LN_2PI - s2.ln()
}

fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// `ln I0(x)` for x >= 0 (Abramowitz & Stegun 9.8.1-9.8.2, relative error < 2e-7).
fn ln_bessel_i0(x: f64) -> f64 {
    if x < 3.75 {
        let t = (x / 3.75).powi(2);
        (1.0 + t
            * (3.5156229
                + t * (3.0899424
                    + t * (1.2067492 + t * (0.2659732 + t * (0.0360768 + t * 0.0045813))))))
            .ln()
    } else {
        let t = 3.75 / x;
        let poly = 0.39894228
            + t * (0.01328592
                + t * (0.00225319
                    + t * (-0.00157565
                        + t * (0.00916281
                            + t * (-0.02057706
                                + t * (0.02635537 + t * (-0.01647633 + t * 0.00392377)))))));
        x - 0.5 * x.ln() + poly.ln()
    }
}

/// log-density of a circle of radius `r` (uniform angle) blurred by N(0, sigma^2 I):
/// `exp(-(rho^2 + r^2) / 2 sigma^2) I0(rho r / sigma^2) / (2 pi sigma^2)`.
fn ring_log_prob(p: [f64; 2], r: f64, sigma: f64) -> f64 {
    let rho = (p[0] * p[0] + p[1] * p[1]).sqrt();
    let s2 = sigma * sigma;
    -(rho * rho + r * r) / (2.0 * s2) + ln_bessel_i0(rho * r / s2) - LN_2PI - s2.ln()
}

fn rings_mixture_log_prob(p: [f64; 2], radii: &[f64], sigma: f64) -> f64 {
    let terms: Vec<f64> = radii.iter().map(|&r| ring_log_prob(p, r, sigma)).collect();
    log_sum_exp(&terms) - (radii.len() as f64).ln()
}

/// Points on circles with evenly spaced angles (as FFJORD and sklearn draw them), a random phase
/// per call, plus isotropic noise; `n` split as evenly as possible across the circles.
fn sample_rings(n: usize, radii: &[f64], sigma: f64, rng: &mut impl Rng) -> Vec<[f64; 2]> {
    let k = radii.len();
    let mut out = Vec::with_capacity(n);
    for (i, &r) in radii.iter().enumerate() {
        let m = n / k + usize::from(i < n % k);
        let phase = rng.gen::<f64>() * 2.0 * PI;
        for j in 0..m {
            let a = phase + 2.0 * PI * j as f64 / m as f64;
            out.push([
                r * a.cos() + sigma * normal(rng),
                r * a.sin() + sigma * normal(rng),
            ]);
        }
    }
    // The rings are drawn one after another, each in angle order: shuffle, so any slice of the
    // result is an i.i.d. draw from the whole target.
    out.shuffle(rng);
    out
}

impl Target {
    /// The name on the command line and in saved configurations (`normals`, `8gaussians`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Target::Normals => "normals",
            Target::EightGaussians => "8gaussians",
            Target::Checkerboard => "checkerboard",
            Target::Rings => "rings",
            Target::Circles => "circles",
            Target::Moons => "moons",
            Target::Swissroll => "swissroll",
            Target::TwoSpirals => "2spirals",
            Target::Pinwheel => "pinwheel",
        }
    }

    /// Half-width of the square plot box `[-b, b]^2`.
    pub fn box_half_width(self) -> f64 {
        match self {
            Target::Normals => 1.0,
            _ => 4.0,
        }
    }

    /// Mode centres and their standard deviation, for mixture-of-Gaussian targets.
    pub fn modes(self) -> Option<(Vec<[f64; 2]>, f64)> {
        match self {
            Target::Normals => Some((
                eight_directions()
                    .iter()
                    .map(|d| [0.7 * d[0], 0.7 * d[1]])
                    .collect(),
                0.1,
            )),
            Target::EightGaussians => {
                let s = 4.0 / 1.414;
                Some((
                    eight_directions()
                        .iter()
                        .map(|d| [s * d[0], s * d[1]])
                        .collect(),
                    0.5 / 1.414,
                ))
            }
            _ => None,
        }
    }

    /// Draw `n` points.
    pub fn sample(self, n: usize, rng: &mut impl Rng) -> Vec<[f64; 2]> {
        match self {
            Target::Normals | Target::EightGaussians => {
                let (centers, sigma) = self.modes().expect("mixture targets have modes");
                (0..n)
                    .map(|_| {
                        let c = centers[rng.gen_range(0..centers.len())];
                        [c[0] + sigma * normal(rng), c[1] + sigma * normal(rng)]
                    })
                    .collect()
            }
            Target::Checkerboard => (0..n)
                .map(|_| {
                    let x1 = 4.0 * rng.gen::<f64>() - 2.0;
                    let x2 = rng.gen::<f64>() - 2.0 * f64::from(rng.gen_range(0..2u8))
                        + x1.floor().rem_euclid(2.0);
                    [2.0 * x1, 2.0 * x2]
                })
                .collect(),
            Target::Rings => sample_rings(n, &RING_RADII, RING_SIGMA, rng),
            Target::Circles => sample_rings(n, &CIRCLE_RADII, CIRCLE_SIGMA, rng),
            Target::Moons => {
                let outer = n - n / 2;
                let inner = n / 2;
                let mut out = Vec::with_capacity(n);
                for j in 0..outer {
                    let t = PI * j as f64 / (outer.max(2) - 1) as f64;
                    out.push([t.cos(), t.sin()]);
                }
                for j in 0..inner {
                    let t = PI * j as f64 / (inner.max(2) - 1) as f64;
                    out.push([1.0 - t.cos(), 1.0 - t.sin() - 0.5]);
                }
                let mut pts: Vec<[f64; 2]> = out
                    .into_iter()
                    .map(|p| {
                        [
                            2.0 * (p[0] + 0.1 * normal(rng)) - 1.0,
                            2.0 * (p[1] + 0.1 * normal(rng)) - 0.2,
                        ]
                    })
                    .collect();
                // Drawn along the arcs in order: shuffle, so any slice is i.i.d.
                pts.shuffle(rng);
                pts
            }
            Target::Swissroll => (0..n)
                .map(|_| {
                    let t = 1.5 * PI * (1.0 + 2.0 * rng.gen::<f64>());
                    [
                        t * t.cos() / 5.0 + 0.2 * normal(rng),
                        t * t.sin() / 5.0 + 0.2 * normal(rng),
                    ]
                })
                .collect(),
            Target::TwoSpirals => (0..n)
                .map(|_| {
                    let t = rng.gen::<f64>().sqrt() * 3.0 * PI;
                    let dx = -t.cos() * t + 0.5 * rng.gen::<f64>();
                    let dy = t.sin() * t + 0.5 * rng.gen::<f64>();
                    // Which spiral: a fair coin per point (not alternating by index).
                    let sign = if rng.gen::<bool>() { 1.0 } else { -1.0 };
                    [
                        sign * dx / 3.0 + 0.1 * normal(rng),
                        sign * dy / 3.0 + 0.1 * normal(rng),
                    ]
                })
                .collect(),
            Target::Pinwheel => (0..n)
                .map(|_| {
                    let k = rng.gen_range(0..5) as f64;
                    let f0 = 1.0 + 0.3 * normal(rng);
                    let f1 = 0.1 * normal(rng);
                    let a = 2.0 * PI * k / 5.0 + 0.25 * f0.exp();
                    let (s, c) = a.sin_cos();
                    [2.0 * (c * f0 + s * f1), 2.0 * (-s * f0 + c * f1)]
                })
                .collect(),
        }
    }

    /// Whether [`log_prob`](Self::log_prob) is available.
    pub fn has_log_prob(self) -> bool {
        self.log_prob([0.0, 0.0]).is_some()
    }

    /// Exact log-density at `p`, where known.
    pub fn log_prob(self, p: [f64; 2]) -> Option<f64> {
        match self {
            Target::Normals | Target::EightGaussians => {
                let (centers, sigma) = self.modes()?;
                Some(gaussian_mixture_log_prob(p, &centers, sigma))
            }
            Target::Checkerboard => {
                let (x1, x2) = (p[0] / 2.0, p[1] / 2.0);
                let inside = (-2.0..2.0).contains(&x1) && (-2.0..2.0).contains(&x2);
                let on = inside && ((x1.floor() + x2.floor()) as i64).rem_euclid(2) == 0;
                Some(if on { -(32f64.ln()) } else { f64::NEG_INFINITY })
            }
            Target::Rings => Some(rings_mixture_log_prob(p, &RING_RADII, RING_SIGMA)),
            Target::Circles => Some(rings_mixture_log_prob(p, &CIRCLE_RADII, CIRCLE_SIGMA)),
            Target::Moons | Target::Swissroll | Target::TwoSpirals | Target::Pinwheel => None,
        }
    }

    /// Share of `points` farther than 3 sigma from every mode (a measure of density leaking
    /// between modes), for mixture targets.
    pub fn off_mode_share(self, points: &[[f64; 2]]) -> Option<f64> {
        let (centers, sigma) = self.modes()?;
        let r2 = (3.0 * sigma).powi(2);
        let off = points
            .iter()
            .filter(|p| {
                centers
                    .iter()
                    .all(|c| (p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) > r2)
            })
            .count();
        Some(off as f64 / points.len().max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Riemann sum of exp(log_prob) over [-b, b]^2 with `m` cells a side.
    fn integral(t: Target, b: f64, m: usize) -> f64 {
        let h = 2.0 * b / m as f64;
        let mut s = 0.0;
        for i in 0..m {
            for j in 0..m {
                let p = [-b + (i as f64 + 0.5) * h, -b + (j as f64 + 0.5) * h];
                s += t.log_prob(p).unwrap().exp();
            }
        }
        s * h * h
    }

    #[test]
    fn exact_densities_integrate_to_one() {
        for (t, b) in [
            (Target::Normals, 2.0),
            (Target::EightGaussians, 6.0),
            (Target::Checkerboard, 4.0),
            (Target::Rings, 4.5),
            (Target::Circles, 5.5),
        ] {
            let z = integral(t, b, 800);
            assert!((z - 1.0).abs() < 2e-3, "{} integrates to {z}", t.name());
        }
    }

    #[test]
    fn every_target_samples_inside_its_box_mostly() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for t in ALL_TARGETS {
            let pts = t.sample(4000, &mut rng);
            assert_eq!(pts.len(), 4000);
            let b = t.box_half_width();
            let inside = pts
                .iter()
                .filter(|p| p[0].abs() <= b && p[1].abs() <= b)
                .count();
            assert!(
                inside as f64 / 4000.0 > 0.98,
                "{}: {inside}/4000 inside",
                t.name()
            );
            if t.has_log_prob() {
                // Samples land where the density is positive and finite.
                let finite = pts
                    .iter()
                    .filter(|p| t.log_prob(**p).unwrap().is_finite())
                    .count();
                assert_eq!(finite, 4000, "{}", t.name());
            }
        }
    }

    #[test]
    fn samples_follow_the_density() {
        // Mean log-density of samples (an entropy estimate) against the grid integral of -p log p.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (t, b) in [
            (Target::Normals, 2.0),
            (Target::Rings, 4.5),
            (Target::Circles, 5.5),
        ] {
            let pts = t.sample(40_000, &mut rng);
            let mc: f64 = -pts.iter().map(|p| t.log_prob(*p).unwrap()).sum::<f64>() / 40_000.0;
            let m = 600;
            let h = 2.0 * b / m as f64;
            let mut ent = 0.0;
            for i in 0..m {
                for j in 0..m {
                    let lp = t
                        .log_prob([-b + (i as f64 + 0.5) * h, -b + (j as f64 + 0.5) * h])
                        .unwrap();
                    if lp.is_finite() {
                        ent -= lp.exp() * lp * h * h;
                    }
                }
            }
            assert!(
                (mc - ent).abs() < 0.03,
                "{}: sample entropy {mc} vs grid {ent}",
                t.name()
            );
        }
    }

    #[test]
    fn normals_off_mode_share_matches_its_integral() {
        // The probability mass farther than 3 sigma from every mode, integrated on a grid. A lone
        // 2D Gaussian would put exp(-4.5) = 1.11% there; neighbouring modes are only 5.4 sigma
        // apart, so part of each tail lies within 3 sigma of the next mode and the share is lower.
        let t = Target::Normals;
        let (centers, sigma) = t.modes().unwrap();
        let (b, m) = (1.6, 1600);
        let h = 2.0 * b / m as f64;
        let mut mass = 0.0;
        for i in 0..m {
            for j in 0..m {
                let p = [-b + (i as f64 + 0.5) * h, -b + (j as f64 + 0.5) * h];
                let far = centers
                    .iter()
                    .all(|c| (p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) > 9.0 * sigma * sigma);
                if far {
                    mass += t.log_prob(p).unwrap().exp() * h * h;
                }
            }
        }
        assert!(mass > 0.005 && mass < (-4.5f64).exp(), "{mass}");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let pts = t.sample(200_000, &mut rng);
        let share = t.off_mode_share(&pts).unwrap();
        assert!(
            (share - mass).abs() < 0.0008,
            "sampled {share} vs integral {mass}"
        );
    }
}
