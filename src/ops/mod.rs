//! Hand-written operations for the CPU backend, each behind a small function that falls back to
//! plain tensor ops elsewhere.

/// Registers, in a hand-written backward, the gradient of each parent that wants one.
macro_rules! register {
    ($grads:expr, $(($node:expr, $grad:expr)),* $(,)?) => {
        $(if let Some(node) = $node {
            $grads.register::<burn::backend::Flex>(node.id, $grad);
        })*
    };
}

pub mod adam;
pub mod conv;
pub mod dense;
mod gemm;
pub mod parallel;
pub mod rq_spline;
pub mod tanh_affine;
pub mod winograd;

pub use dense::dense;

/// A row-major float32 Flex tensor of `shape` from `values`.
fn flex(values: Vec<f32>, shape: &[usize]) -> burn::backend::flex::FlexTensor {
    burn::backend::flex::FlexTensor::from_data(burn::tensor::TensorData::new(
        values,
        shape.to_vec(),
    ))
}

/// Run `f` compiled for the widest vector instructions this CPU has — AVX-512 (x86-64-v4),
/// AVX2 + FMA (v3) or the baseline — chosen at run time (pulp's dispatch), so one binary uses
/// AVX-512 where it exists and still runs on AVX2-only CPUs. `f` should be a plain loop that
/// the compiler vectorises; without fast-math nothing is fused or reordered, so the results are
/// the same bits on every path.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The instruction set [`vectorized`] picks on this CPU: `avx512` (x86-64-v4), `avx2+fma`
/// (v3) or `baseline`.
pub fn simd_level() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        match pulp::Arch::new() {
            pulp::Arch::V4(_) => "avx512",
            pulp::Arch::V3(_) => "avx2+fma",
            _ => "baseline",
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        "baseline"
    }
}
