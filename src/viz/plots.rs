//! The density grid of a 2D run and its training GIF (the pictures themselves are drawn with
//! plotters in [`charts`](super::charts)).

use std::path::Path;

use anyhow::Result;

use super::colormap::inferno_palette;

/// Colour of a NaN or infinite density cell (outside the inferno scale).
pub const NONFINITE_COLOUR: [u8; 3] = [0, 255, 255];

/// A density evaluated on a square grid: `values[row * size + col]`, row 0 at the top
/// (y = +b), column 0 at the left (x = -b).
pub struct DensityGrid {
    /// Cells per side.
    pub size: usize,
    /// `b`: the grid covers the box `[-b, b]^2`.
    pub half_width: f64,
    /// The `size * size` values, row-major as above.
    pub values: Vec<f64>,
}

impl DensityGrid {
    /// Centres of the grid cells, in the row-major order of `values`.
    pub fn points(size: usize, half_width: f64) -> Vec<[f64; 2]> {
        let h = 2.0 * half_width / size as f64;
        let mut pts = Vec::with_capacity(size * size);
        for row in 0..size {
            for col in 0..size {
                pts.push([
                    -half_width + (col as f64 + 0.5) * h,
                    half_width - (row as f64 + 0.5) * h,
                ]);
            }
        }
        pts
    }

    /// Largest finite value (0 when none); non-finite cells are counted by
    /// [`nonfinite`](Self::nonfinite) and drawn in [`NONFINITE_COLOUR`] by the density maps.
    pub fn max(&self) -> f64 {
        self.values
            .iter()
            .cloned()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    }

    /// Number of NaN or infinite cells.
    pub fn nonfinite(&self) -> usize {
        self.values.iter().filter(|v| !v.is_finite()).count()
    }

    /// Palette indices of [`inferno_palette`](super::colormap::inferno_palette): 0..=254 on the
    /// scale [0, vmax], 255 ([`NONFINITE_COLOUR`]) for a non-finite cell, never zero density.
    pub fn indices(&self, vmax: f64) -> Vec<u8> {
        self.values
            .iter()
            .map(|v| {
                if v.is_finite() {
                    (v / vmax * 254.0).round().clamp(0.0, 254.0) as u8
                } else {
                    255
                }
            })
            .collect()
    }
}

/// Write density frames as a looping GIF with the inferno palette (`delay_cs` per frame, in
/// hundredths of a second).
pub fn write_gif(
    path: &Path,
    frames: &[(usize, Vec<u8>)],
    size: usize,
    delay_cs: u16,
) -> Result<()> {
    let palette = inferno_palette();
    let mut bytes = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut bytes, size as u16, size as u16, &palette)?;
        enc.set_repeat(gif::Repeat::Infinite)?;
        for (_, idx) in frames {
            let mut f =
                gif::Frame::from_indexed_pixels(size as u16, size as u16, idx.clone(), None);
            f.delay = delay_cs;
            enc.write_frame(&f)?;
        }
    }
    crate::fsutil::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gif_frames_never_draw_a_nonfinite_cell_as_zero_density() {
        let g = DensityGrid {
            size: 2,
            half_width: 1.0,
            values: vec![f64::NAN, 0.0, 2.0, f64::INFINITY],
        };
        assert_eq!(g.indices(2.0), vec![255, 0, 254, 255]);
        let p = inferno_palette();
        assert_eq!(p.len(), 256 * 3);
        assert_eq!(&p[255 * 3..], &NONFINITE_COLOUR);
        assert_ne!(&p[..3], &NONFINITE_COLOUR);
    }
}
