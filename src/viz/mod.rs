//! Pictures: charts drawn with plotters (corner plots, loss curves, density maps and scatter
//! plots of the plane), the inferno colour map, an RGB raster for image grids, and GIFs.

pub mod canvas;
pub mod charts;
pub mod colormap;
pub mod grid;
pub mod plots;

pub use canvas::Canvas;
pub use plots::{write_gif, DensityGrid};
