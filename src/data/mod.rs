//! Data sets: 2D toy targets and image loaders.

pub mod cifar;
pub mod dequant;
pub mod folder;
pub mod idx;
pub mod images;
pub mod stream;
pub mod table;
pub mod toy2d;

pub use images::{DataSpec, ImageSet, LoadOptions, Splits};
pub use toy2d::{Target, ALL_TARGETS};
