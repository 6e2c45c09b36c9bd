//! A small RGB raster (image grids), written as PNG.

use std::path::Path;

use anyhow::Result;

/// An RGB raster with 8 bits per channel; drawing outside it is clipped.
#[derive(Clone)]
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes: R, G, B per pixel, rows from the top, pixels from the left.
    pub rgb: Vec<u8>,
}

impl Canvas {
    /// A `width x height` canvas filled with `background`.
    pub fn new(width: usize, height: usize, background: [u8; 3]) -> Self {
        let rgb = background
            .iter()
            .copied()
            .cycle()
            .take(width * height * 3)
            .collect();
        Canvas { width, height, rgb }
    }

    /// Set the pixel at column `x`, row `y` (from the top left) to `c`; nothing outside the canvas.
    pub fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// The canvas encoded as an 8-bit RGB PNG.
    ///
    /// # Errors
    /// When the PNG encoder refuses the image.
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

    /// Write the canvas as a PNG to `path` atomically
    /// ([`write_atomic`](crate::fsutil::write_atomic)).
    ///
    /// # Errors
    /// When encoding fails or the file cannot be written.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.png_bytes()?)
    }
}
