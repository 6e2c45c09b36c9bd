//! Training loops, evaluation, checkpoints.

pub mod checkpoint;
pub mod data2d;
pub mod eval2d;
pub mod parallel;
pub mod train2d;
pub mod train_image;

pub use train2d::{train2d, RunIo, Start, Summary, Train2dOptions};
