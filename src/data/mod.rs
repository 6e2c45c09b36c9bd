//! Data sets.

pub mod toy2d;

pub use toy2d::{Target, ALL_TARGETS};
