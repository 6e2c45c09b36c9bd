//! Hand-written operations for the CPU backend, each behind a small function that falls back to
//! plain tensor ops elsewhere.

pub mod adam;
pub mod dense;

pub use dense::dense;
