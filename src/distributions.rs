//! Base distributions.

use burn::tensor::{Device, Tensor};

/// `ln(2π)`.
pub const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Per-sample `log N(z; 0, I)` of a `[N, C, H, W]` tensor, shaped `[N]`.
pub fn standard_normal_log_prob(z: Tensor<4>) -> Tensor<1> {
    let [n, c, h, w] = z.dims();
    let d = (c * h * w) as f64;
    z.square()
        .reshape([n, c * h * w])
        .sum_dim(1)
        .reshape([n])
        .mul_scalar(-0.5)
        .sub_scalar(0.5 * d * LN_2PI)
}

/// Draw `N(0, T^2 I)` of the given shape from a host RNG (deterministic for a seed); the
/// temperature `T` scales the standard deviation.
pub fn standard_normal_sample(
    shape: [usize; 4],
    temperature: f64,
    rng: &mut impl rand::Rng,
    device: &Device,
) -> Tensor<4> {
    use rand_distr::{Distribution as _, StandardNormal};
    let count: usize = shape.iter().product();
    let v: Vec<f32> = (0..count)
        .map(|_| {
            let s: f64 = StandardNormal.sample(rng);
            (s * temperature) as f32
        })
        .collect();
    crate::tensor_util::from_vec(v, shape, device)
}
