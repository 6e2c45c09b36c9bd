//! Pictures: colour map, raster canvas with a bitmap font, density maps, scatter plots, GIFs.

pub mod canvas;
pub mod charts;
pub mod colormap;
pub mod font;
pub mod plots;

pub use canvas::Canvas;
pub use plots::{colour_bar, panels, scatter, write_gif, DensityGrid};
