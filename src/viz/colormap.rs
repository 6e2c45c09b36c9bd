//! An inferno-like perceptual colour map (matplotlib's inferno sampled at 11 points and
//! interpolated linearly): black for zero density, pale yellow for the top of the scale.

const INFERNO: [[f64; 3]; 11] = [
    [0.0, 0.0, 4.0],
    [22.0, 11.0, 57.0],
    [66.0, 10.0, 104.0],
    [106.0, 23.0, 110.0],
    [147.0, 38.0, 103.0],
    [188.0, 55.0, 84.0],
    [221.0, 81.0, 58.0],
    [243.0, 120.0, 25.0],
    [252.0, 165.0, 10.0],
    [246.0, 215.0, 70.0],
    [252.0, 255.0, 164.0],
];

/// Colour of `t` in [0, 1] (finite values outside are shown at the ends of the scale; callers
/// draw non-finite values in their own colour).
pub fn inferno(t: f64) -> [u8; 3] {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * 10.0;
    let i = (x.floor() as usize).min(9);
    let f = x - i as f64;
    let mut out = [0u8; 3];
    for (k, o) in out.iter_mut().enumerate() {
        *o = (INFERNO[i][k] * (1.0 - f) + INFERNO[i + 1][k] * f).round() as u8;
    }
    out
}

/// The 256-entry palette of GIF frames: inferno over entries 0..=254, then the colour of
/// non-finite values.
pub fn inferno_palette() -> Vec<u8> {
    (0..255)
        .flat_map(|i| inferno(i as f64 / 254.0))
        .chain(super::plots::NONFINITE_COLOUR)
        .collect()
}
