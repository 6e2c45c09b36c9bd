//! Image grids: many small images tiled into one picture.

use super::Canvas;

/// Tile `n` images `[n, c, h, w]` into a square grid.
pub fn image_grid(px: &[u8], n: usize, c: usize, h: usize, w: usize) -> Canvas {
    let cols = (n as f64).sqrt().ceil() as usize;
    image_grid_cols(px, n, cols, [c, h, w])
}

/// Tile `n` images `[n, c, h, w]` into rows of `cols`.
pub fn image_grid_cols(px: &[u8], n: usize, cols: usize, shape: [usize; 3]) -> Canvas {
    image_grid_marked(px, n, cols, shape, &[])
}

/// The colours of a marked cell's diagonal stripes: magenta and
/// [`NONFINITE_COLOUR`](super::plots::NONFINITE_COLOUR) (cyan), which no grey image holds and no
/// photograph holds as a regular stripe pattern.
pub const MARKED_CELL_COLOURS: [[u8; 3]; 2] = [[255, 0, 255], super::plots::NONFINITE_COLOUR];

/// Like [`image_grid_cols`], with the images whose 0-based index is in `marked` (samples that
/// could not be drawn, such as non-finite ones) drawn as diagonal stripes of
/// [`MARKED_CELL_COLOURS`] instead of their pixels.
pub fn image_grid_marked(
    px: &[u8],
    n: usize,
    cols: usize,
    [c, h, w]: [usize; 3],
    marked: &[usize],
) -> Canvas {
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let scale = (64 / h.max(w)).max(1);
    let pad = 2;
    let (cw, ch) = (w * scale + pad, h * scale + pad);
    let mut canvas = Canvas::new(cols * cw + pad, rows * ch + pad, [40, 40, 40]);
    for i in 0..n {
        let (gx, gy) = (pad + (i % cols) * cw, pad + (i / cols) * ch);
        if marked.contains(&i) {
            for y in 0..h * scale {
                for x in 0..w * scale {
                    canvas.set(gx + x, gy + y, MARKED_CELL_COLOURS[((x + y) / 4) % 2]);
                }
            }
            continue;
        }
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
