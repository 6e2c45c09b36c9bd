//! What keeps maximum-likelihood training of a flow trustworthy, shared by every trainer:
//!
//! - [`GradReport`]: the global gradient L2 norm, the norm per layer group (`L0.coupling`,
//!   `L1.actnorm`, `top`, ...) and the first parameter whose gradient is non-finite;
//! - [`clip_gradients`]: gradient-norm clipping (Pascanu et al. 2013; TarFlow, Zhai et al. 2024);
//! - [`first_nonfinite_param`]: the finiteness check applied to the updated weights and to every
//!   checkpoint before it is written;
//! - [`WeightEma`]: an exponential moving average of the weights (Polyak averaging, as
//!   openai/glow evaluates with), kept on the host in float32 and saved with the checkpoint.
//!
//! The trainers combine them into one guard: a step whose loss, gradient or updated weights is
//! non-finite is skipped (weights and optimizer state stay as they were) and logged; a stated
//! number of consecutive skips stops the run with the step and the first layer whose output went
//! non-finite.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::tensor_util::{
    first_nonfinite_param, host_buffers, host_params, set_values, to_vec, to_vec_f64, PathStack,
};

/// Recipe knobs of the stability guard, part of a run's options (defaults: see [`Default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StabilityOptions {
    /// Clip the global gradient L2 norm to this value (0: no clipping). Units: the gradient of
    /// the training loss (bits/dim for images, nats for vectors) with respect to the weights.
    pub clip_grad_norm: f64,
    /// Decay of the weights' exponential moving average (0: no average; evaluation and samples
    /// then use the raw weights). The effective decay at update `t` is
    /// `min(decay, (1 + t) / (10 + t))`, so short runs average over their recent steps.
    pub ema_decay: f64,
    /// Stop after this many consecutive skipped (non-finite) steps.
    pub max_skips: usize,
    /// Optimizer: Adam (default) or Adamax (openai/glow's choice).
    pub optimizer: OptimizerKind,
    /// Decoupled weight decay (AdamW, Loshchilov & Hutter 2019; 0: none, the default): each
    /// step multiplies every parameter of two or more dimensions (weight matrices, convolution
    /// kernels, image Glow's learned top prior) by `1 - lr * weight_decay` before the
    /// optimizer's update; biases, ActNorm and scales do not decay
    /// ([`crate::ops::adam::decay`]). Runs saved before it existed read 0.
    #[serde(default)]
    pub weight_decay: f64,
}

impl Default for StabilityOptions {
    /// [`StabilityOptions::off`]: each command states its own defaults (`train`:
    /// `train_image::image_recipe_stability`).
    fn default() -> Self {
        Self::off()
    }
}

impl StabilityOptions {
    /// Everything off and Adam: the recipe of runs saved before these options existed.
    pub fn off() -> Self {
        StabilityOptions {
            clip_grad_norm: 0.0,
            ema_decay: 0.0,
            max_skips: 20,
            optimizer: OptimizerKind::Adam,
            weight_decay: 0.0,
        }
    }

    /// Reject meaningless values, naming the flag.
    pub fn validate(&self) -> Result<(), crate::error::FieldError> {
        use crate::limits::{count, number};
        number(
            "stability.clip_grad_norm",
            "clip_grad_norm",
            self.clip_grad_norm,
            0.0,
            false,
            1e12,
        )?;
        if !(self.ema_decay.is_finite() && (0.0..1.0).contains(&self.ema_decay)) {
            return Err(crate::error::FieldError::new(
                "stability.ema_decay",
                "ema_decay",
                self.ema_decay,
                "must be in [0, 1) (0: off)",
            ));
        }
        number(
            "stability.weight_decay",
            "weight_decay",
            self.weight_decay,
            0.0,
            false,
            1e6,
        )?;
        count(
            "stability.max_skips",
            "max_skips",
            self.max_skips,
            1,
            1_000_000,
        )
    }

    /// A fresh optimizer of this recipe: [`optimizer`](Self::optimizer) with
    /// [`weight_decay`](Self::weight_decay).
    pub fn build_optimizer(&self) -> burn::optim::ModuleOptimizer {
        crate::ops::adam::optimizer(self.optimizer, self.weight_decay)
    }

    /// [`validate`](Self::validate), and refuse a weight decay that the schedule's largest
    /// learning rate `lr` would turn into a factor `1 - lr * weight_decay` at or below 0 (every
    /// weight matrix zeroed or sign-flipped each step).
    pub fn validate_with_lr(&self, lr: f64) -> Result<(), crate::error::FieldError> {
        self.validate()?;
        if lr * self.weight_decay >= 1.0 {
            return Err(crate::error::FieldError::new(
                "stability.weight_decay",
                "weight_decay",
                self.weight_decay,
                format!(
                    "times the learning rate ({lr}) must be below 1: each step multiplies the \
                     weight matrices by 1 - lr * weight_decay"
                ),
            ));
        }
        Ok(())
    }
}

pub use crate::ops::adam::OptimizerKind;

/// Gradient statistics of one step.
#[derive(Clone, Debug, Default)]
pub struct GradReport {
    /// Global L2 norm over every parameter's gradient (NaN or inf when any entry is).
    pub norm: f64,
    /// L2 norm per layer group, in model order.
    pub groups: Vec<(String, f64)>,
    /// Path of the first parameter whose gradient holds a non-finite value.
    pub first_nonfinite: Option<String>,
}

/// A short group name for a parameter path: the level (if any) and the layer kind, e.g.
/// `levels.1.flow.layers.5.AffineCoupling.net...` -> `L1.coupling`, `top` -> `top`,
/// `levels.0.split.conv...` -> `L0.prior`, `flow.layers.3.InvConv1x1Lu.l` -> `inv_conv`.
pub fn group_of(path: &[String]) -> String {
    let level = path
        .iter()
        .position(|p| p == "levels")
        .and_then(|i| path.get(i + 1))
        .map(|l| format!("L{l}."));
    let kind = if path.iter().any(|p| p == "split") {
        "prior".to_string()
    } else if let Some(i) = path.iter().position(|p| p == "layers") {
        match path.get(i + 2).map(String::as_str) {
            Some("ActNorm") => "actnorm".into(),
            Some("InvConv1x1Lu") | Some("InvConv1x1") => "inv_conv".into(),
            Some("AffineCoupling") | Some("AdditiveCoupling") => "coupling".into(),
            Some("FlowBatchNorm") => "batchnorm".into(),
            Some(other) => other.to_lowercase(),
            None => "other".into(),
        }
    } else {
        path.first().cloned().unwrap_or_else(|| "other".into())
    };
    format!("{}{kind}", level.unwrap_or_default())
}

/// Norms (total and per group) and finiteness of `grads`, the gradients of `model`'s parameters.
pub fn grad_report<M: Module>(model: &M, grads: &GradientsParams) -> GradReport {
    struct V<'a> {
        grads: &'a GradientsParams,
        path: PathStack,
        total: f64,
        groups: Vec<(String, f64)>,
        first_nonfinite: Option<String>,
    }
    impl ModuleVisitor for V<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(g) = self.grads.get::<D>(param.id) else {
                return;
            };
            let mut sq = 0f64;
            let mut finite = true;
            for v in to_vec(g) {
                finite &= v.is_finite();
                sq += (v as f64) * (v as f64);
            }
            if !finite {
                sq = f64::NAN;
                if self.first_nonfinite.is_none() {
                    self.first_nonfinite = Some(self.path.joined());
                }
            }
            self.total += sq;
            let group = group_of(&self.path.0);
            match self.groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, s)) => *s += sq,
                None => self.groups.push((group, sq)),
            }
        }
    }
    let mut v = V {
        grads,
        path: PathStack::default(),
        total: 0.0,
        groups: Vec::new(),
        first_nonfinite: None,
    };
    model.visit(&mut v);
    GradReport {
        norm: v.total.sqrt(),
        groups: v.groups.into_iter().map(|(g, s)| (g, s.sqrt())).collect(),
        first_nonfinite: v.first_nonfinite,
    }
}

/// Multiply every gradient of `model`'s parameters by `factor` (clipping: `max_norm / norm`).
pub fn scale_gradients<M: Module>(
    model: &M,
    mut grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    struct V<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut V {
        grads: &mut grads,
        factor,
    });
    grads
}

/// Clip the global gradient norm to `max_norm` (no-op when `max_norm` is 0 or the norm is
/// within it). Returns the gradients and whether they were scaled.
pub fn clip_gradients<M: Module>(
    model: &M,
    grads: GradientsParams,
    norm: f64,
    max_norm: f64,
) -> (GradientsParams, bool) {
    if max_norm > 0.0 && norm > max_norm {
        (scale_gradients(model, grads, max_norm / norm), true)
    } else {
        (grads, false)
    }
}

/// Exponential moving average of a model's float parameters, accumulated on the host in
/// float64 (a float32 accumulator would drop updates smaller than half an ulp), keyed by the
/// parameters' stable ids (see `tensor_util::with_sequential_param_ids`). Saved in float64
/// ([`to_float64_module`](Self::to_float64_module)), so a resumed run continues it exactly.
#[derive(Clone, Debug)]
pub struct WeightEma {
    /// Nominal decay; the effective decay at update `t` is `min(decay, (1 + t) / (10 + t))`.
    pub decay: f64,
    /// Updates so far.
    pub updates: u64,
    values: HashMap<ParamId, Vec<f64>>,
}

impl WeightEma {
    /// An average that starts at `model`'s current weights (read exactly, whatever their float
    /// type: a float64 module restored from a checkpoint gives back the saved accumulators).
    pub fn new<M: Module>(model: &M, decay: f64, updates: u64) -> Self {
        WeightEma {
            decay,
            updates,
            values: host_params(model),
        }
    }

    /// Fold `model`'s current weights into the average. A parameter the average does not hold
    /// yet (or whose size changed) starts at its current value.
    pub fn update<M: Module>(&mut self, model: &M) {
        let t = self.updates as f64;
        let d = self.decay.min((1.0 + t) / (10.0 + t));
        struct V<'a> {
            values: &'a mut HashMap<ParamId, Vec<f64>>,
            d: f64,
        }
        impl ModuleVisitor for V<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let cur = to_vec_f64(param.val());
                match self.values.get_mut(&param.id) {
                    Some(avg) if avg.len() == cur.len() => {
                        for (a, c) in avg.iter_mut().zip(cur) {
                            *a = self.d * *a + (1.0 - self.d) * c;
                        }
                    }
                    _ => {
                        self.values.insert(param.id, cur);
                    }
                }
            }
        }
        model.visit(&mut V {
            values: &mut self.values,
            d,
        });
        self.updates += 1;
    }

    /// `model` with its float parameters replaced by the averages, in each parameter's own
    /// float type (identities, shapes and devices kept; parameters the average does not hold
    /// are left as they are).
    pub fn apply<M: Module>(&self, model: M) -> M {
        set_values(model, &self.values, None)
    }

    /// `model` holding the averages exactly, every float parameter in float64: what the
    /// checkpoint saves.
    pub fn to_float64_module<M: Module>(&self, model: M) -> M {
        set_values(model, &self.values, Some(DType::F64))
    }
}

/// The outcome of one guarded step, for metrics.
#[derive(Clone, Debug, Default)]
pub struct StepOutcome {
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the gradient was clipped.
    pub clipped: bool,
    /// Why the step was skipped (non-finite loss, gradient or updated weight), if it was.
    pub skipped: Option<String>,
}

/// Running totals of a metrics window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Sum of the applied steps' losses.
    pub loss_sum: f64,
    /// Steps applied.
    pub steps: usize,
    /// Largest global gradient norm seen.
    pub grad_norm_max: f64,
    /// Steps whose gradient was clipped.
    pub clipped: usize,
    /// Steps skipped.
    pub skipped: usize,
    /// Largest gradient norm per layer group.
    pub groups_max: Vec<(String, f64)>,
}

impl Window {
    /// Add one step: its loss (only counted when the step was applied) and its gradients.
    pub fn add(&mut self, loss: f64, outcome: &StepOutcome, groups: &[(String, f64)]) {
        if outcome.skipped.is_some() {
            self.skipped += 1;
        } else {
            self.loss_sum += loss;
            self.steps += 1;
        }
        // A non-finite norm makes the window's maximum NaN: it is never hidden as a smaller one.
        self.grad_norm_max = if outcome.grad_norm.is_finite() && !self.grad_norm_max.is_nan() {
            self.grad_norm_max.max(outcome.grad_norm)
        } else {
            f64::NAN
        };
        self.clipped += outcome.clipped as usize;
        for (g, n) in groups {
            let n = if n.is_finite() { *n } else { f64::NAN };
            match self.groups_max.iter_mut().find(|(k, _)| k == g) {
                Some((_, m)) if m.is_nan() => {}
                Some((_, m)) => *m = if n.is_nan() { n } else { m.max(n) },
                None => self.groups_max.push((g.clone(), n)),
            }
        }
    }

    /// Mean loss of the applied steps (NaN when every step of the window was skipped).
    pub fn mean_loss(&self) -> f64 {
        if self.steps == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.steps as f64
        }
    }
}

/// The guard around every optimizer step: clipping, the finiteness checks, skip counting and
/// the weight average.
pub struct Guard {
    /// Clipping, averaging, skip limit and optimizer.
    pub options: StabilityOptions,
    /// Values of the model's non-trained float state (batch-norm running statistics, fixed
    /// buffers) after the last applied step: the forward pass of a step updates running
    /// statistics before the guard sees its loss, so a skipped step restores them from here.
    buffers: HashMap<ParamId, Vec<f64>>,
    /// Consecutive skipped steps so far.
    pub consecutive: usize,
    /// Skipped steps over the whole run (carried across resume).
    pub total_skips: usize,
    /// The weight average (when `ema_decay > 0`).
    pub ema: Option<WeightEma>,
}

impl Guard {
    /// A guard for `model` (whose average, when the options ask for one, starts at `ema`
    /// restored from a checkpoint or at the model's current weights).
    pub fn new<M: Module>(
        model: &M,
        options: StabilityOptions,
        ema: Option<WeightEma>,
        total_skips: usize,
    ) -> Self {
        let ema = (options.ema_decay > 0.0)
            .then(|| ema.unwrap_or_else(|| WeightEma::new(model, options.ema_decay, 0)));
        Guard {
            options,
            buffers: host_buffers(model),
            consecutive: 0,
            total_skips,
            ema,
        }
    }

    /// Apply one step: returns the model (unchanged, running statistics included, when the
    /// step is skipped), what happened, the gradient report, and, when `max_skips` consecutive
    /// steps have been skipped, the reason to stop.
    #[allow(clippy::type_complexity)]
    pub fn step<M: Module + Clone>(
        &mut self,
        model: M,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: f64,
        loss: f64,
        grads: GradientsParams,
    ) -> (M, StepOutcome, GradReport, Option<String>) {
        let report = grad_report(&model, &grads);
        let mut outcome = StepOutcome {
            grad_norm: report.norm,
            ..Default::default()
        };
        let model = if !loss.is_finite() {
            outcome.skipped = Some(format!("the loss is {loss}"));
            model
        } else if let Some(p) = &report.first_nonfinite {
            outcome.skipped = Some(format!("the gradient of {p} is non-finite"));
            model
        } else {
            let (grads, clipped) =
                clip_gradients(&model, grads, report.norm, self.options.clip_grad_norm);
            outcome.clipped = clipped;
            let backup = (model.clone(), optim.clone());
            let updated = optim.step(lr, model, grads);
            match first_nonfinite_param(&updated) {
                Some(p) => {
                    outcome.skipped = Some(format!("the update made {p} non-finite"));
                    *optim = backup.1;
                    backup.0
                }
                None => {
                    if let Some(e) = &mut self.ema {
                        e.update(&updated);
                    }
                    updated
                }
            }
        };
        let model = if outcome.skipped.is_some() {
            set_values(model, &self.buffers, None)
        } else {
            self.buffers = host_buffers(&model);
            model
        };
        let stop = if let Some(why) = &outcome.skipped {
            self.consecutive += 1;
            self.total_skips += 1;
            (self.consecutive >= self.options.max_skips).then(|| {
                format!(
                    "{} consecutive steps were skipped (`max_skips` {}); at the last one {why}",
                    self.consecutive, self.options.max_skips
                )
            })
        } else {
            self.consecutive = 0;
            None
        };
        (model, outcome, report, stop)
    }

    /// Updates folded into the weight average so far (0 without one), for the run state.
    pub fn ema_updates(&self) -> u64 {
        self.ema.as_ref().map_or(0, |e| e.updates)
    }

    /// The weights to evaluate and sample with: the average when there is one.
    pub fn eval_weights<M: Module>(&self, model: M) -> M {
        match &self.ema {
            Some(e) => e.apply(model),
            None => model,
        }
    }
}

impl Window {
    /// The guard-related columns of a metrics row: `grad_norm_max,clipped,skipped`.
    pub fn guard_columns(&self) -> String {
        format!(
            "{:.5e},{},{}",
            self.grad_norm_max, self.clipped, self.skipped
        )
    }
}

/// The error that ends a run after too many consecutive skipped steps: the step, the reason,
/// where the first non-finite value appears on the step's batch (`place`, from a layer trace;
/// `None` when every layer's output is finite with the last finite weights), and the state of
/// the run's checkpoint (`saved`: the folder and step of the newest checkpoint that exists).
pub fn stop_error(
    step: usize,
    lr: f64,
    why: &str,
    place: Option<String>,
    saved: Option<(std::path::PathBuf, usize)>,
) -> anyhow::Error {
    let place = place.unwrap_or_else(|| {
        "none (every layer's output on this batch is finite with the last finite weights)".into()
    });
    anyhow::anyhow!(
        "training stopped at step {step} (lr {lr:e}): {why}; first non-finite value on this batch: {place}; {}",
        intact_message(saved)
    )
}

/// Append one row per layer group (`step,group,grad_norm_max`) to `grad_norms.csv`.
pub fn write_group_norms(
    out: &mut impl std::io::Write,
    step: usize,
    groups: &[(String, f64)],
) -> std::io::Result<()> {
    for (g, n) in groups {
        writeln!(out, "{step},{g},{n:.5e}")?;
    }
    Ok(())
}

/// What a stopped run can say about its checkpoint: that the one in `saved.0` (at step
/// `saved.1`) is intact, or that none was written.
pub fn intact_message(saved: Option<(std::path::PathBuf, usize)>) -> String {
    match saved {
        Some((ck, step)) => format!(
            "the last checkpoint, {} (step {step}), is intact",
            ck.display()
        ),
        None => "no checkpoint was written (use `checkpoint_every` to keep one)".into(),
    }
}
