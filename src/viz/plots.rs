//! The pictures of a 2D run: density maps with a colour bar, coloured scatter plots, side-by-side
//! panels and the training GIF.

use std::path::Path;

use anyhow::Result;

use super::canvas::Canvas;
use super::colormap::{inferno, inferno_palette};

pub const WHITE: [u8; 3] = [255, 255, 255];
pub const BLACK: [u8; 3] = [0, 0, 0];

/// A density evaluated on a square grid: `values[row * size + col]`, row 0 at the top
/// (y = +b), column 0 at the left (x = -b).
/// Colour of a NaN or infinite density cell (outside the inferno scale).
pub const NONFINITE_COLOUR: [u8; 3] = [0, 255, 255];

pub struct DensityGrid {
    pub size: usize,
    pub half_width: f64,
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
    /// [`nonfinite`](Self::nonfinite) and drawn in [`NONFINITE_COLOUR`] by `render`.
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

    /// Colour-map the grid on the fixed scale [0, vmax]; non-finite cells are drawn in
    /// [`NONFINITE_COLOUR`], never as zero density.
    pub fn render(&self, vmax: f64) -> Canvas {
        let mut c = Canvas::new(self.size, self.size, BLACK);
        for (i, v) in self.values.iter().enumerate() {
            let rgb = if v.is_finite() {
                inferno(v / vmax)
            } else {
                NONFINITE_COLOUR
            };
            c.set(i % self.size, i / self.size, rgb);
        }
        c
    }

    /// Palette indices 0..=255 on the scale [0, vmax] (GIF frames).
    pub fn indices(&self, vmax: f64) -> Vec<u8> {
        self.values
            .iter()
            .map(|v| {
                if v.is_finite() {
                    (v / vmax * 255.0).round().clamp(0.0, 255.0) as u8
                } else {
                    0
                }
            })
            .collect()
    }
}

/// A vertical colour bar for the scale [0, vmax] with its end labels, `height` pixels tall.
pub fn colour_bar(vmax: f64, height: usize) -> Canvas {
    let label_w = Canvas::text_width(&format_value(vmax), 1).max(Canvas::text_width("0", 1));
    let mut c = Canvas::new(16 + 6 + label_w + 2, height, WHITE);
    for y in 0..height {
        let t = 1.0 - y as f64 / (height - 1).max(1) as f64;
        c.fill_rect(0, y, 16, 1, inferno(t));
    }
    c.text(20, 0, &format_value(vmax), 1, BLACK);
    c.text(20, height.saturating_sub(7), "0", 1, BLACK);
    c
}

fn format_value(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Panels side by side, each with a title above, and a colour bar at the right if given.
pub fn panels(items: &[(String, Canvas)], bar: Option<Canvas>) -> Canvas {
    let pad = 10;
    let title_h = 22;
    let h = items.iter().map(|(_, c)| c.height).max().unwrap_or(0);
    let mut w = pad + items.iter().map(|(_, c)| c.width + pad).sum::<usize>();
    if let Some(b) = &bar {
        w += b.width + pad;
    }
    let mut out = Canvas::new(w, h + title_h + 2 * pad, WHITE);
    let mut x = pad;
    for (title, c) in items {
        let tw = Canvas::text_width(title, 2);
        out.text(x + c.width.saturating_sub(tw) / 2, pad, title, 2, BLACK);
        out.blit(c, x, pad + title_h);
        x += c.width + pad;
    }
    if let Some(b) = bar {
        out.blit(&b, x, pad + title_h + (h.saturating_sub(b.height)) / 2);
    }
    out
}

/// A scatter plot of `points` in the box `[-b, b]^2` on a dark background, each point coloured
/// by `colour_values` on [0, vmax] (inferno) or white if none.
pub fn scatter(
    points: &[[f64; 2]],
    colour_values: Option<(&[f64], f64)>,
    b: f64,
    size: usize,
) -> Canvas {
    let mut c = Canvas::new(size, size, BLACK);
    let scale = size as f64 / (2.0 * b);
    // Draw low-density points first so the dense cores stay visible on top.
    let mut order: Vec<usize> = (0..points.len()).collect();
    if let Some((vals, _)) = colour_values {
        order.sort_by(|&i, &j| vals[i].total_cmp(&vals[j]));
    }
    for i in order {
        let p = points[i];
        let col = ((p[0] + b) * scale).floor();
        let row = ((b - p[1]) * scale).floor();
        if !(0.0..size as f64).contains(&col) || !(0.0..size as f64).contains(&row) {
            continue;
        }
        let colour = match colour_values {
            Some((vals, vmax)) => inferno(0.15 + 0.85 * vals[i] / vmax),
            None => WHITE,
        };
        c.set(col as usize, row as usize, colour);
        c.set(col as usize + 1, row as usize, colour);
        c.set(col as usize, row as usize + 1, colour);
        c.set(col as usize + 1, row as usize + 1, colour);
    }
    c
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
