//! The device suite: the layer, model, conditioning and training tests, unchanged, in one test
//! executable, for a GPU machine (`--features cuda` only; `scripts/device-check.sh` builds it).
//! The suites pick their device from `GLOWFLOW_TEST_DEVICE` (`cuda`, `cuda:N`), and the
//! data-parallel test its GPUs from `GLOWFLOW_TEST_DEVICES` (`cuda:0,cuda:1`); run on the CPU
//! (`GLOWFLOW_TEST_DEVICE=flex`), a CUDA build also needs `BURN_DEVICE=flex`. One executable
//! instead of four, because each carries the LLVM that compiles the GPU kernels (~100 MB).

#[path = "layers.rs"]
mod layers;

#[path = "models.rs"]
mod models;

#[path = "conditioning.rs"]
mod conditioning;

#[path = "training.rs"]
mod training;
