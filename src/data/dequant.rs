//! Uniform dequantisation and the bits-per-dimension arithmetic (DESIGN §3).
//!
//! With `n_bins = 2^n_bits`, a pixel p in 0..=255 becomes `floor(p / 2^(8 - n_bits)) / n_bins
//! - 0.5 + u`, `u ~ U(0, 1/n_bins)`: a continuous value in [-0.5, 0.5). The discrete NLL of an
//! image is the continuous NLL plus `D * ln(n_bins)` (the bin volume), per image.

use rand::Rng;

/// Dequantised values of `pixels` (f32, one per pixel).
pub fn dequantize(pixels: &[u8], n_bits: u32, rng: &mut impl Rng) -> Vec<f32> {
    let n_bins = (1u32 << n_bits) as f32;
    let shift = 8 - n_bits;
    pixels
        .iter()
        .map(|&p| ((p >> shift) as f32) / n_bins - 0.5 + rng.gen::<f32>() / n_bins)
        .collect()
}

/// The centre of each pixel's bin (no noise): for sampling targets and reconstruction checks.
pub fn bin_centres(pixels: &[u8], n_bits: u32) -> Vec<f32> {
    let n_bins = (1u32 << n_bits) as f32;
    let shift = 8 - n_bits;
    pixels
        .iter()
        .map(|&p| ((p >> shift) as f32 + 0.5) / n_bins - 0.5)
        .collect()
}

/// The lower edge of each pixel's bin, `floor(p / 2^(8 - n_bits)) / n_bins - 0.5`: what
/// variational dequantisation adds its `u / n_bins` to.
pub fn bin_edges(pixels: &[u8], n_bits: u32) -> Vec<f32> {
    let n_bins = (1u32 << n_bits) as f32;
    let shift = 8 - n_bits;
    pixels
        .iter()
        .map(|&p| ((p >> shift) as f32) / n_bins - 0.5)
        .collect()
}

/// Map model-space values back to 8-bit pixels.
pub fn to_pixels(x: &[f32], n_bits: u32) -> Vec<u8> {
    let n_bins = (1u32 << n_bits) as f32;
    let shift = 8 - n_bits;
    x.iter()
        .map(|&v| {
            let bin = ((v + 0.5) * n_bins).floor().clamp(0.0, n_bins - 1.0) as u32;
            (bin << shift) as u8
        })
        .collect()
}

/// Bits per dimension of one image from its continuous log-density (nats) and dimension `d`.
pub fn bits_per_dim(log_prob_continuous: f64, d: usize, n_bits: u32) -> f64 {
    let n_bins = (1u64 << n_bits) as f64;
    let nll_discrete = -log_prob_continuous + d as f64 * n_bins.ln();
    nll_discrete / (d as f64 * std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn dequantised_values_stay_in_their_bins() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let px: Vec<u8> = (0..=255).collect();
        for bits in [8, 5, 1] {
            let x = dequantize(&px, bits, &mut rng);
            assert_eq!(
                to_pixels(&x, bits),
                px.iter()
                    .map(|&p| (p >> (8 - bits)) << (8 - bits))
                    .collect::<Vec<_>>()
            );
            assert!(x.iter().all(|v| (-0.5..0.5).contains(v)));
        }
    }

    #[test]
    fn bits_per_dim_by_hand() {
        // A uniform density on [-0.5, 0.5)^D has log-density 0: every 8-bit image then costs
        // exactly 8 bits per dimension, whatever D.
        assert!((bits_per_dim(0.0, 3072, 8) - 8.0).abs() < 1e-12);
        assert!((bits_per_dim(0.0, 784, 5) - 5.0).abs() < 1e-12);
        // Doubling the density everywhere saves exactly one bit in total: -ln 2 nats.
        let d = 4;
        assert!((bits_per_dim(2f64.ln(), d, 8) - (8.0 - 1.0 / d as f64)).abs() < 1e-12);
    }
}
