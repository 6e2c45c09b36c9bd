//! Image grids: many small images tiled into one picture.

use super::Canvas;

/// Tile `n` images `[n, c, h, w]` into a square grid.
pub fn image_grid(px: &[u8], n: usize, c: usize, h: usize, w: usize) -> Canvas {
    let cols = (n as f64).sqrt().ceil() as usize;
    image_grid_cols(px, n, cols, [c, h, w])
}

/// Tile `n` images `[n, c, h, w]` into rows of `cols`.
pub fn image_grid_cols(px: &[u8], n: usize, cols: usize, [c, h, w]: [usize; 3]) -> Canvas {
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let scale = (64 / h.max(w)).max(1);
    let pad = 2;
    let (cw, ch) = (w * scale + pad, h * scale + pad);
    let mut canvas = Canvas::new(cols * cw + pad, rows * ch + pad, [40, 40, 40]);
    for i in 0..n {
        let (gx, gy) = (pad + (i % cols) * cw, pad + (i / cols) * ch);
        for y in 0..h * scale {
            for x in 0..w * scale {
                let at = |k: usize| px[((i * c + k) * h + y / scale) * w + x / scale];
                let rgb = if c >= 3 {
                    [at(0), at(1), at(2)]
                } else {
                    [at(0); 3]
                };
                canvas.set(gx + x, gy + y, rgb);
            }
        }
    }
    canvas
}
