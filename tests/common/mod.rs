//! Helpers shared by the integration tests: parameter perturbation (so zero-initialised layers
//! are not trivially the identity) and brute-force Jacobian log-determinants.
#![allow(dead_code)]

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};
use glowflow::linalg::{slogdet, Mat};
use glowflow::tensor_util::{from_vec, to_vec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The device the layer and model tests run on: `GLOWFLOW_TEST_DEVICE` (`flex` by default,
/// `cuda` in a build with `--features cuda`), with autodiff.
pub fn ad_device() -> Device {
    plain_device().autodiff()
}

/// [`ad_device`] without autodiff.
pub fn plain_device() -> Device {
    match std::env::var("GLOWFLOW_TEST_DEVICE") {
        Ok(name) => glowflow::device_by_name(&name)
            .unwrap_or_else(|e| panic!("GLOWFLOW_TEST_DEVICE={name}: {e:#}")),
        Err(_) => glowflow::default_device(),
    }
}

/// A committed fixture: `tests/fixtures/<name>` of the source tree the tests were built in, or,
/// where that tree is not (a test executable copied to a GPU machine), of the current
/// directory.
pub fn fixture(name: &str) -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let root = if built.is_dir() {
        built
    } else {
        std::path::PathBuf::from("tests/fixtures")
    };
    root.join(name)
}

/// Add N(0, scale^2) noise to every trainable parameter (fixed buffers are left alone).
pub fn perturb<M: Module>(m: M, scale: f32, seed: u64) -> M {
    struct Noise(ChaCha8Rng, f32);
    impl ModuleMapper for Noise {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let v = p.val();
            if !v.is_require_grad() {
                return p;
            }
            let shape = v.dims();
            let vals: Vec<f32> = to_vec(v)
                .into_iter()
                .map(|a| a + self.0.gen_range(-1.0f32..1.0) * self.1)
                .collect();
            let nv = from_vec(vals, shape, &p.device());
            glowflow::tensor_util::replace(&p, nv)
        }
    }
    m.map(&mut Noise(ChaCha8Rng::seed_from_u64(seed), scale))
}

/// Uniform random input in [-1.5, 1.5) of the given shape.
pub fn random_input(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    from_vec(
        (0..n).map(|_| rng.gen_range(-1.5f32..1.5)).collect(),
        shape,
        device,
    )
}

/// Max |a - b|; NaN when any difference is NaN, so `err < tol` fails on it.
pub fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    nan_max_abs(&to_vec(a - b))
}

/// Max |a - b| of 1-D tensors; NaN when any difference is NaN.
pub fn max_abs_diff1(a: Tensor<1>, b: Tensor<1>) -> f32 {
    nan_max_abs(&to_vec(a - b))
}

fn nan_max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| {
        if m.is_nan() || x.is_nan() {
            f32::NAN
        } else {
            m.max(x.abs())
        }
    })
}

/// Per-sample `log|det dz/dx|` of `f` at `x` (on an autodiff device) by autodiff: one backward
/// pass per output dimension gives that row of every sample's Jacobian (samples must not
/// interact), then a float64 determinant.
pub fn jacobian_logdets(f: impl Fn(Tensor<4>) -> Tensor<4>, x: Tensor<4>) -> Vec<f64> {
    let [b, c, h, w] = x.dims();
    let d = c * h * w;
    let mut jac = vec![Mat::zeros(d); b];
    for i in 0..d {
        let xg = x.clone().detach().require_grad();
        let z = f(xg.clone());
        let sel = z.reshape([b, d]).narrow(1, i, 1).sum();
        let grads = sel.backward();
        let g = to_vec(xg.grad(&grads).expect("input takes part in the output"));
        for (s, m) in jac.iter_mut().enumerate() {
            for j in 0..d {
                m.set(i, j, g[s * d + j] as f64);
            }
        }
    }
    jac.iter()
        .map(|m| slogdet(m).expect("Jacobian is invertible").1)
        .collect()
}

/// The same by central finite differences in float32 (exact for affine maps up to rounding).
pub fn fd_jacobian_logdets(f: impl Fn(Tensor<4>) -> Tensor<4>, x: Tensor<4>, eps: f32) -> Vec<f64> {
    let [b, c, h, w] = x.dims();
    let d = c * h * w;
    let device = x.device();
    let base = to_vec(x);
    let mut jac = vec![Mat::zeros(d); b];
    for j in 0..d {
        let mut plus = base.clone();
        let mut minus = base.clone();
        for s in 0..b {
            plus[s * d + j] += eps;
            minus[s * d + j] -= eps;
        }
        let zp = to_vec(f(from_vec(plus, [b, c, h, w], &device)));
        let zm = to_vec(f(from_vec(minus, [b, c, h, w], &device)));
        for (s, m) in jac.iter_mut().enumerate() {
            for i in 0..d {
                m.set(i, j, ((zp[s * d + i] - zm[s * d + i]) / (2.0 * eps)) as f64);
            }
        }
    }
    jac.iter()
        .map(|m| slogdet(m).expect("Jacobian is invertible").1)
        .collect()
}

/// Copy a fixture run folder (recursively) into `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A float64 copy of `m` whose trainable parameters are fresh autodiff leaves (optimizer steps
/// and backward passes on it take the tensor-op paths). A cast is recorded and does not keep
/// the trainable flag, so it is read from `m` first; everything else is detached.
pub fn float64_leaves<M: Module>(m: M) -> M {
    struct Trainable(std::collections::HashSet<burn::module::ParamId>);
    impl burn::module::ModuleVisitor for Trainable {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if p.is_require_grad() {
                self.0.insert(p.id);
            }
        }
    }
    struct Leaf(std::collections::HashSet<burn::module::ParamId>);
    impl ModuleMapper for Leaf {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let trainable = self.0.contains(&p.id);
            p.map(|t| {
                let t = t.detach();
                if trainable {
                    t.require_grad()
                } else {
                    t
                }
            })
        }
    }
    let mut ids = Trainable(Default::default());
    m.visit(&mut ids);
    glowflow::tensor_util::cast_module(m, burn::tensor::DType::F64).map(&mut Leaf(ids.0))
}
