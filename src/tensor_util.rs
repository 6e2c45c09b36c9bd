//! Host <-> tensor conversions and parameter construction helpers.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};

/// A float tensor of the given shape from host values.
pub fn from_vec<const D: usize>(v: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A float tensor from float64 host values, stored in the float type `options` asks for (the
/// device default when it names only a device).
pub fn from_vec_f64<const D: usize>(
    v: Vec<f64>,
    shape: [usize; D],
    options: impl Into<TensorCreationOptions>,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, shape), options)
}

/// Host float64 copy of a float tensor, exact whatever its float type.
pub fn to_vec_f64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().iter::<f64>().collect()
}

/// The same module with every float parameter and buffer cast to `dtype` (identities kept):
/// float64 copies of a trained model make reconstruction checks free of float32 round-off.
pub fn cast_module<M: Module>(module: M, dtype: DType) -> M {
    struct Cast(DType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            p.map(|t| t.cast(dtype))
        }
    }
    module.map(&mut Cast(dtype))
}

/// The float type of a module's first float parameter (`None` for a module without one).
pub fn first_float_dtype<M: Module>(module: &M) -> Option<DType> {
    struct First(Option<DType>);
    impl burn::module::ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(p.val().dtype());
            }
        }
    }
    let mut v = First(None);
    module.visit(&mut v);
    v.0
}

/// Host copy of a float tensor (synchronises with the device). A float32 tensor's buffer is
/// taken over without copying when the tensor holds it alone.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let data = t.into_data();
    if data.dtype() == DType::F32 {
        data.try_into_vec::<f32>().expect("float32 tensor data")
    } else {
        data.convert::<f32>().iter::<f32>().collect()
    }
}

/// Number of NaN or infinite entries of a float tensor.
pub fn count_nonfinite<const D: usize>(t: Tensor<D>) -> usize {
    to_vec_f64(t).iter().filter(|v| !v.is_finite()).count()
}

/// Largest value, treating NaN as a failure: `Err(count of non-finite values)` when any value
/// is NaN or infinite, `Ok(max)` otherwise (`Ok(-inf)` for an empty slice).
pub fn finite_max(values: &[f64]) -> Result<f64, usize> {
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(bad);
    }
    Ok(values.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

/// Whether `device` (with or without autodiff) is the Flex CPU backend, where the hand-written
/// CPU operations apply.
pub fn is_flex_device(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

/// A trainable parameter.
pub fn trainable<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t)
}

/// A fixed buffer that is saved with the model but never trained (permutation matrices, signs,
/// masks). burn only saves `Param` fields, hence a `Param` without gradient.
pub fn buffer<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t).set_require_grad(false)
}

/// Replace a parameter's value, keeping its identity (optimizer state is keyed by `ParamId`).
/// The result is trainable: use [`replace_buffer`] for a fixed buffer.
pub fn replace<const D: usize>(p: &Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    let id: ParamId = p.id;
    let mut np = Param::from_tensor(value);
    np.id = id;
    np
}

/// Replace a fixed buffer's value, keeping its identity; it stays out of training.
pub fn replace_buffer<const D: usize>(p: &Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    let mut np = buffer(value);
    np.id = p.id;
    np
}

/// Number a module's parameters 1, 2, 3, ... in module order, so a model rebuilt from the same
/// config has the same identities and a saved optimizer state (keyed by `ParamId`) reattaches
/// on resume. ActNorm's `initialized` flags are numbered apart (from 2^48), so adding them
/// (checkpoint format 3) left every other identity, and older optimizer states, as they were.
pub fn with_sequential_param_ids<M: Module>(module: M) -> M {
    #[derive(Default)]
    struct Numbering {
        count: u64,
        flags: u64,
        path: PathStack,
    }
    impl Numbering {
        fn next(&mut self) -> ParamId {
            if self.path.0.last().is_some_and(|n| n == "initialized") {
                self.flags += 1;
                return ParamId::from((1u64 << 48) + self.flags);
            }
            self.count += 1;
            ParamId::from(self.count)
        }
    }
    impl ModuleMapper for Numbering {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, mut p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.id = self.next();
            p
        }
        fn map_int<const D: usize>(
            &mut self,
            mut p: Param<Tensor<D, burn::tensor::Int>>,
        ) -> Param<Tensor<D, burn::tensor::Int>> {
            p.id = self.next();
            p
        }
    }
    module.map(&mut Numbering::default())
}

/// Tracks the module path during a visit (burn calls `enter_module`/`exit_module` with field
/// names, variant names and `Vec` indices).
#[derive(Default)]
pub struct PathStack(pub Vec<String>);

impl PathStack {
    /// Entering the module (field, variant or index) `name`.
    pub fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    /// Leaving the innermost module.
    pub fn exit(&mut self) {
        self.0.pop();
    }
    /// The path so far, dot-separated (`levels.1.flow.layers.5`).
    pub fn joined(&self) -> String {
        self.0.join(".")
    }
}

/// Path of the first float parameter (or buffer) of `model` holding a NaN or infinity.
pub fn first_nonfinite_param<M: Module>(model: &M) -> Option<String> {
    struct V {
        path: PathStack,
        found: Option<String>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none() && to_vec(param.val()).iter().any(|v| !v.is_finite()) {
                self.found = Some(self.path.joined());
            }
        }
    }
    let mut v = V {
        path: PathStack::default(),
        found: None,
    };
    model.visit(&mut v);
    v.found
}

/// `model` with the float state named in `values` set to those values, stored in `dtype` (or
/// each parameter's own float type). A running statistic is written into its shared cell.
pub fn set_values<M: Module>(
    model: M,
    values: &HashMap<ParamId, Vec<f64>>,
    dtype: Option<DType>,
) -> M {
    struct Mp<'a>(&'a HashMap<ParamId, Vec<f64>>, Option<DType>);
    impl ModuleMapper for Mp<'_> {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.1;
            match self.0.get(&p.id) {
                Some(v) => p.map(|t| {
                    let dtype = dtype.unwrap_or(t.dtype());
                    from_vec_f64(v.clone(), t.dims(), (&t.device(), dtype))
                }),
                None => p,
            }
        }
    }
    model.map(&mut Mp(values, dtype))
}

/// The float state of `model` that is not trained (running statistics, fixed buffers), on the
/// host.
pub fn host_buffers<M: Module>(model: &M) -> HashMap<ParamId, Vec<f64>> {
    struct V(HashMap<ParamId, Vec<f64>>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if !t.is_require_grad() {
                self.0.insert(param.id, to_vec_f64(t));
            }
        }
    }
    let mut v = V(HashMap::new());
    model.visit(&mut v);
    v.0
}

/// Every float parameter of `model` on the host, exactly (float64 holds float32 values).
pub fn host_params<M: Module>(model: &M) -> HashMap<ParamId, Vec<f64>> {
    struct V(HashMap<ParamId, Vec<f64>>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.insert(param.id, to_vec_f64(param.val()));
        }
    }
    let mut v = V(HashMap::new());
    model.visit(&mut v);
    v.0
}

/// `module` with its float buffers named `name` (the last part of their path) set to 1 or 0 from
/// `flags`, in module order.
///
/// # Errors
/// `flags` does not have one value per such buffer (nothing is then meant to be used).
pub fn set_flags<M: Module>(module: M, name: &str, flags: &[bool]) -> Result<M, String> {
    struct Flags<'a> {
        name: &'a str,
        flags: &'a [bool],
        seen: usize,
        path: PathStack,
    }
    impl ModuleMapper for Flags<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if self.path.0.last().map(String::as_str) != Some(self.name) {
                return p;
            }
            let on = self.flags.get(self.seen).copied().unwrap_or(false);
            self.seen += 1;
            let value = Tensor::full(p.dims(), if on { 1.0 } else { 0.0 }, &p.device());
            replace_buffer(&p, value)
        }
    }
    let mut m = Flags {
        name,
        flags,
        seen: 0,
        path: PathStack::default(),
    };
    let module = module.map(&mut m);
    if m.seen != flags.len() {
        return Err(format!(
            "{} flags for {} {name} buffers",
            flags.len(),
            m.seen
        ));
    }
    Ok(module)
}

/// Number of trainable values of `module` (a model on an autodiff device): fixed buffers
/// (standardisation, batch-norm running statistics, ActNorm's flag) are not counted.
pub fn trainable_count<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            if t.is_require_grad() {
                self.0 += t.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}
