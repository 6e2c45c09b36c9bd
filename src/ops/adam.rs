//! Adam with the update fused into one host loop per parameter on the CPU backend.
//!
//! burn's Adam spends about ten tensor ops (each allocating) per parameter and step; the 2D
//! models have one to several hundred small parameter tensors, so that is mostly overhead
//! (1.7 ms of a 25 ms `probe2d` step, run serially). On the Flex CPU backend with float32 parameters this optimizer does the
//! same arithmetic in one pass over the parameter, gradient and moments; elsewhere (GPU, float64)
//! it defers to burn's Adam. The state is burn's `AdamState`, so optimizer checkpoints are the
//! same files either way.

use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::tensor::{DType, Device, Tensor};

use crate::tensor_util::{from_vec, is_flex_device, to_vec};

/// The first-order optimizer of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba 2015), betas 0.9 / 0.999.
    #[default]
    Adam,
    /// Adamax (Kingma & Ba 2015, §7.1; openai/glow's default): infinity-norm second moment.
    Adamax,
}

/// Adam (no weight decay, no AMSGrad) with the given `epsilon` and betas 0.9, 0.999.
pub fn adam(epsilon: f32) -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdam::new(0.9, 0.999, epsilon))
}

/// The optimizer a run's recipe names: Adam or Adamax, both with betas 0.9 / 0.999 and
/// epsilon 1e-8, and decoupled weight decay `weight_decay` (0: none; see [`decay`]). Both keep
/// burn's `AdamState` (Adamax stores its infinity norm `u` in the second moment), so
/// checkpoints have one format.
pub fn optimizer(kind: OptimizerKind, weight_decay: f64) -> ModuleOptimizer {
    let weight_decay = weight_decay as f32;
    match kind {
        OptimizerKind::Adam => ModuleOptimizer::from(FusedAdam {
            weight_decay,
            ..FusedAdam::new(0.9, 0.999, 1e-8)
        }),
        OptimizerKind::Adamax => ModuleOptimizer::from(Adamax {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay,
        }),
    }
}

/// Decoupled weight decay (AdamW, Loshchilov & Hutter 2019, arXiv 1711.05101, Algorithm 2):
/// before the optimizer's own update, a parameter of two or more dimensions (a dense layer's
/// weight matrix, a convolution kernel, the 1x1 convolution's `W` or its `L` and `U`, image
/// Glow's learned top prior `[2C, H, W]`, which it pulls toward N(0, I)) is multiplied by
/// `1 - lr * weight_decay`; vectors (biases, ActNorm, scales, log-determinant terms) are left
/// alone, as the usual AdamW recipes exclude biases and normalisation parameters. The factor
/// for a parameter of `D` dimensions, `None` when nothing decays.
pub fn decay<const D: usize>(lr: LearningRate, weight_decay: f32) -> Option<f32> {
    (D >= 2 && weight_decay > 0.0).then_some(1.0 - lr as f32 * weight_decay)
}

/// `tensor` after [`decay`]'s factor, by tensor ops (the paths that do not run host loops).
fn decayed<const D: usize>(tensor: Tensor<D>, factor: Option<f32>) -> Tensor<D> {
    match factor {
        Some(f) => tensor.mul_scalar(f),
        None => tensor,
    }
}

/// Adam with burn's arithmetic, one host pass per parameter on the Flex CPU backend.
#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// Decoupled weight decay ([`decay`]; 0: none).
    weight_decay: f32,
    fallback: Adam,
}

/// Adamax (Kingma & Ba 2015, Algorithm 2): `m = b1 m + (1 - b1) g`, `u = max(b2 u, |g|)`,
/// `p -= lr / (1 - b1^t) * m / (u + eps)`. The step of every weight is bounded by `lr` (times
/// the bias correction), whatever the gradient's size. Host arithmetic on the Flex device,
/// tensor ops elsewhere.
#[derive(Clone)]
pub struct Adamax {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// Decoupled weight decay ([`decay`]; 0: none).
    weight_decay: f32,
}

impl Optimizer for Adamax {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let tensor = decayed(tensor, decay::<D>(lr, self.weight_decay));
        let device = tensor.device();
        let dims: [usize; D] = tensor.dims();
        let (b1, b2, eps) = (self.beta_1, self.beta_2, self.epsilon);
        let (time, m, u) = match state {
            Some(s) => {
                let s = s.momentum;
                (s.time + 1, Some(s.moment_1), Some(s.moment_2))
            }
            None => (1, None, None),
        };
        let step = lr as f32 / (1.0 - b1.powi(time as i32));
        let float32 = tensor.dtype() == DType::F32 && grad.dtype() == DType::F32;
        let (param, m, u) = if is_flex_device(&device) && float32 {
            let mut p = to_vec(tensor);
            let g = to_vec(grad);
            let mut m = m.map_or_else(|| vec![0.0; g.len()], to_vec);
            let mut u = u.map_or_else(|| vec![0.0; g.len()], to_vec);
            for (((p, &g), m), u) in p.iter_mut().zip(&g).zip(m.iter_mut()).zip(u.iter_mut()) {
                *m = *m * b1 + g * (1.0 - b1);
                // f32::max would drop a NaN gradient; keep it visible.
                let a = g.abs();
                *u = if a.is_nan() { a } else { (*u * b2).max(a) };
                *p -= step * *m / (*u + eps);
            }
            (
                from_vec(p, dims, &device),
                from_vec(m, dims, &device),
                from_vec(u, dims, &device),
            )
        } else {
            let m = match m {
                Some(m) => m.mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1),
                None => grad.clone().mul_scalar(1.0 - b1),
            };
            let u = match u {
                Some(u) => u.mul_scalar(b2).max_pair(grad.abs()),
                None => grad.abs(),
            };
            let p = tensor - m.clone().div(u.clone().add_scalar(eps)).mul_scalar(step);
            (p, m, u)
        };
        let momentum = AdaptiveMomentumState::new(time, m, u);
        (param, Some(AdamState::new(momentum)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

impl FusedAdam {
    /// Adam with the given betas and epsilon.
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32) -> Self {
        let fallback = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .build();
        FusedAdam {
            beta_1,
            beta_2,
            epsilon,
            weight_decay: 0.0,
            fallback,
        }
    }
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let on_flex = is_flex_device(&device);
        let float32 = tensor.dtype() == DType::F32 && grad.dtype() == DType::F32;
        let moments_f32 = state.as_ref().is_none_or(|s| {
            let m = &s.momentum;
            m.moment_1.dtype() == DType::F32 && m.moment_2.dtype() == DType::F32
        });
        let factor = decay::<D>(lr, self.weight_decay);
        if !(on_flex && float32 && moments_f32) {
            return self.fallback.step(lr, decayed(tensor, factor), grad, state);
        }
        let dims: [usize; D] = tensor.dims();
        let mut param = to_vec(tensor);
        let g = to_vec(grad);
        let (time, mut m, mut v) = match state {
            Some(s) => {
                let s = s.momentum;
                (s.time + 1, to_vec(s.moment_1), to_vec(s.moment_2))
            }
            None => (1, vec![0.0; g.len()], vec![0.0; g.len()]),
        };
        // The same arithmetic, in the same order, as burn's Adam (see `adam_update`).
        let (b1, b2) = (self.beta_1, self.beta_2);
        let bias_correction2_sqrt = (1.0 - b2.powi(time as i32)).sqrt();
        let combined = bias_correction2_sqrt / (1.0 - b1.powi(time as i32));
        let eps = self.epsilon * bias_correction2_sqrt;
        let lr = lr as f32;
        if let Some(f) = factor {
            param.iter_mut().for_each(|p| *p *= f);
        }
        adam_update(&mut param, &g, &mut m, &mut v, [b1, b2, combined, eps, lr]);
        let momentum = AdaptiveMomentumState::new(
            time,
            from_vec(m, dims, &device),
            from_vec(v, dims, &device),
        );
        (
            from_vec(param, dims, &device),
            Some(AdamState::new(momentum)),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

/// One Adam update in place; `k = [beta_1, beta_2, combined bias correction, epsilon', lr]`.
#[inline(never)]
fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 5]) {
    let [b1, b2, combined, eps, lr] = k;
    super::vectorized(|| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            *p -= (*m * combined / (v.sqrt() + eps)) * lr;
        }
    })
}
