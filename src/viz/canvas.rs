//! A small RGB raster with text, written as PNG.

use std::path::Path;

use anyhow::Result;

use super::font::glyph;

#[derive(Clone)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: [u8; 3]) -> Self {
        let rgb = background
            .iter()
            .copied()
            .cycle()
            .take(width * height * 3)
            .collect();
        Canvas { width, height, rgb }
    }

    pub fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                self.set(xx, yy, c);
            }
        }
    }

    /// Copy `other` with its top-left corner at `(x, y)`.
    pub fn blit(&mut self, other: &Canvas, x: usize, y: usize) {
        for yy in 0..other.height {
            for xx in 0..other.width {
                let i = (yy * other.width + xx) * 3;
                self.set(
                    x + xx,
                    y + yy,
                    [other.rgb[i], other.rgb[i + 1], other.rgb[i + 2]],
                );
            }
        }
    }

    /// Draw `text` with the 5x7 font magnified by `scale`, top-left at `(x, y)`.
    pub fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            let ox = x + k * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(ox + col * scale, y + row * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Width in pixels of `text` drawn at `scale`.
    pub fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * 6 * scale
    }

    pub fn png_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header()?;
            w.write_image_data(&self.rgb)?;
        }
        Ok(out)
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.png_bytes()?)
    }
}
