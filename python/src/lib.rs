//! `glowflow._core`: the Rust side of the Python package. Thin calls of the library's fit,
//! scoring, sampling, save and load on numpy arrays; the Python classes (`glowflow.VectorFlow`,
//! `glowflow.ImageGlow`) convert inputs, show progress and document the API.
//!
//! Every call releases the GIL while it computes, turns the library's errors into
//! `ValueError` (bad input, naming the option, column or row) or `RuntimeError` (anything
//! else), and never lets a Rust panic cross into Python (it becomes a `RuntimeError`). A fit
//! runs on a worker thread while the calling thread reports progress and checks for Ctrl-C:
//! `KeyboardInterrupt` cancels it at the next step boundary and the model of the last complete
//! step is kept.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use numpy::ndarray::{Array1, Array2, Array4};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArray4, PyReadonlyArray1, PyReadonlyArray2};
use numpy::{PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use glowflow::data::table::Table;
use glowflow::data::{ImageSet, Splits};
use glowflow::error::{FieldError, InputError};
use glowflow::eval::vector::{sample_values, score_values};
use glowflow::models::{
    DensityModel, GlowImage, GlowImageConfig, ModelKind, VectorFlow, VectorFlowConfig,
};
use glowflow::train::fit::{save_model, Fitted, FittedImage};
use glowflow::train::stability::StabilityOptions;
use glowflow::train::train2d::RunState;
use glowflow::train::train_image::ImageRunState;
use glowflow::train::{Cancel, FitOptions, Hooks, Progress};

// Fitting allocates and frees many small tensors per step: mimalloc, as in the command line,
// keeps them on thread-local free lists (about 10% of a small table model's step against the
// system allocator). Only this extension's Rust allocations use it; Python's are its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The keyword of this package for an option of the library where the two differ (`class`
/// is `label` here); every other option is a keyword of the same name.
fn option_keyword(option: &str) -> Option<String> {
    (option == "class").then(|| "`label`".to_string())
}

/// A library error as the Python exception a user expects.
fn py_error(e: anyhow::Error) -> PyErr {
    // Options named as this package's keywords spell them (see `option_keyword`).
    let msg = glowflow::error::name_options(&format!("{e:#}"));
    let missing = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    };
    if e.chain()
        .any(|c| c.is::<InputError>() || c.is::<FieldError>())
    {
        PyValueError::new_err(msg)
    } else if e.chain().any(missing) {
        PyFileNotFoundError::new_err(msg)
    } else {
        PyRuntimeError::new_err(msg)
    }
}

/// The message of a caught panic.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in glowflow (please report it): {what}")
}

/// Run `f` with the GIL released; its error or panic as a Python exception.
fn compute<T: Send>(py: Python<'_>, f: impl FnOnce() -> anyhow::Result<T> + Send) -> PyResult<T> {
    py.detach(|| match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(py_error(e)),
        Err(p) => Err(PyRuntimeError::new_err(panic_message(p))),
    })
}

/// Run the fit `work` (given the hooks to report through and cancel with) on a worker thread;
/// this thread, taking the GIL between short waits, passes each progress report to `report`
/// and checks for signals. Ctrl-C (or an exception raised by `report`) cancels the fit at its
/// next step boundary; the fit's result comes back with that exception, for the caller to keep
/// the model and then raise it.
fn fit_with_reports<T: Send>(
    py: Python<'_>,
    report: Option<Bound<'_, PyAny>>,
    work: impl FnOnce(Hooks) -> anyhow::Result<T> + Send,
) -> PyResult<(T, Option<PyErr>)> {
    let (tx, rx) = mpsc::channel::<Progress>();
    // Waited on with the GIL released, so shared with that closure.
    let rx = std::sync::Mutex::new(rx);
    let cancel = Cancel::new();
    let hooks = Hooks {
        on_progress: Some(Arc::new(move |p: &Progress| {
            let _ = tx.send(*p);
        })),
        cancel: cancel.clone(),
    };
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || catch_unwind(AssertUnwindSafe(|| work(hooks))));
        let mut pending: Option<PyErr> = None;
        loop {
            let got = py.detach(|| {
                let rx = rx.lock().expect("one waiter");
                rx.recv_timeout(Duration::from_millis(50))
            });
            match got {
                Ok(p) => {
                    if let (Some(r), None) = (&report, &pending) {
                        if let Err(e) = r.call1((p.step, p.steps, p.loss, p.lr, p.rows_per_second))
                        {
                            cancel.cancel();
                            pending = Some(e);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if worker.is_finished() => {
                    // Reports still queued are drained by the next turns; none: done.
                    if let Ok(p) = rx.lock().expect("one waiter").try_recv() {
                        if let (Some(r), None) = (&report, &pending) {
                            let _ = r.call1((p.step, p.steps, p.loss, p.lr, p.rows_per_second));
                        }
                        continue;
                    }
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if pending.is_none() {
                if let Err(e) = py.check_signals() {
                    cancel.cancel();
                    pending = Some(e);
                }
            }
        }
        let joined = py.detach(|| worker.join());
        match joined {
            Ok(Ok(Ok(v))) => Ok((v, pending)),
            Ok(Ok(Err(e))) => Err(pending.unwrap_or_else(|| py_error(e))),
            Ok(Err(p)) | Err(p) => Err(PyRuntimeError::new_err(panic_message(p))),
        }
    })
}

/// A value of one of the library's enums from its name (`"glow"`, `"affine"`, `"lu"`); the
/// error lists the `accepted` names.
fn named<T: serde::de::DeserializeOwned>(
    option: &str,
    name: &str,
    accepted: &[&str],
) -> PyResult<T> {
    serde_json::from_value(serde_json::Value::String(name.into())).map_err(|_| {
        PyValueError::new_err(format!(
            "`{option}` {name:?}: not one of {}",
            accepted.join(", ")
        ))
    })
}

/// The names `permutation` accepts.
const PERMUTATIONS: &[&str] = &["lu", "plain", "shuffle", "reverse"];

/// Rows `[n, w]` of a float64 array, row-major.
fn rows_of(x: &PyReadonlyArray2<'_, f64>) -> (Vec<f64>, usize, usize) {
    let a = x.as_array();
    let (n, w) = a.dim();
    (a.iter().copied().collect(), n, w)
}

/// Samples `[n, features]` and their log-densities `[n]`.
type Samples<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<f64>>);

/// A fitted vector flow: the model, its run state and the figures of its fit.
#[pyclass(module = "glowflow._core", frozen)]
struct VectorCore {
    model: VectorFlow,
    state: RunState,
    figures: serde_json::Value,
}

#[pymethods]
impl VectorCore {
    /// `log p(x | context)` of each row `[n, features + context]` (the modelled columns, then
    /// the context columns), nats, float64 `[n]`.
    fn log_prob<'py>(
        &self,
        py: Python<'py>,
        rows: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let (d, k) = (self.state.model.features, self.state.model.context);
        let (values, _, w) = rows_of(&rows);
        if w != d + k {
            let why = format!("{w} columns for a model of {d} feature(s) and {k} context value(s)");
            return Err(PyValueError::new_err(why));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let why = format!("row {}, column {}: not a finite number", i / w, i % w);
            return Err(PyValueError::new_err(why));
        }
        let columns = self.columns()?;
        let run = self.state.table_run();
        let device = glowflow::default_device();
        let lp = compute(py, || {
            let at = |i: usize, c: usize, why: String| {
                InputError::option("X", format!("row {i}, column '{}'", columns[c]), why)
            };
            Ok(score_values(&self.model, run, values, &device, at)?)
        })?;
        Ok(Array1::from(lp).into_pyarray(py))
    }

    /// `n` samples `[n, features]` and their log-densities `[n]` at `temperature`, seeded;
    /// `context`: none, one row `[1, K]` for every sample, or `[n, K]`.
    #[pyo3(signature = (n, temperature, context, seed))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        temperature: f64,
        context: Option<PyReadonlyArray2<'py, f64>>,
        seed: u64,
    ) -> PyResult<Samples<'py>> {
        check_temperature(temperature)?;
        let ctx = context.map(|c| rows_of(&c).0).unwrap_or_default();
        let run = self.state.table_run();
        let device = glowflow::default_device();
        let (x, lp) = compute(py, || {
            Ok(sample_values(
                &self.model,
                run,
                n,
                temperature,
                &ctx,
                seed,
                &device,
            )?)
        })?;
        let d = self.state.model.features;
        let x = Array2::from_shape_vec((n, d), x).expect("n rows of d values");
        Ok((x.into_pyarray(py), Array1::from(lp).into_pyarray(py)))
    }

    /// Save into the directory `path` (a checkpoint for scoring and sampling).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        compute(py, || save_model(&path, &self.model, &self.state))
    }

    /// The model's config as JSON (`state.json`'s `model`).
    fn config_json(&self) -> String {
        serde_json::to_string(&self.state.model).expect("a config serialises")
    }

    /// The training options as JSON (`state.json`'s `options`).
    fn options_json(&self) -> String {
        serde_json::to_string(&self.state.options).expect("options serialise")
    }

    /// The figures of the fit (steps, NLLs, seconds) as JSON.
    fn figures_json(&self) -> String {
        self.figures.to_string()
    }

    /// Column names: the modelled columns, then the context columns (`x0, x1, ...` when the
    /// run's table did not name them).
    fn columns(&self) -> PyResult<Vec<String>> {
        let (d, k) = (self.state.model.features, self.state.model.context);
        let names = match &self.state.options.table {
            Some(t) => t.resolved_columns().map_err(py_error)?.map(|(n, _, _)| n),
            None => None,
        };
        Ok(names.unwrap_or_else(|| (0..d + k).map(|i| format!("x{i}")).collect()))
    }
}

impl VectorCore {
    fn of(f: Fitted) -> Self {
        let figures = serde_json::json!({
            "steps": f.steps,
            "interrupted": f.interrupted,
            "train_nll": f.train_nll,
            "test_nll": f.test_nll,
            "gaussian_test_nll": f.gaussian_test_nll,
            "parameters": f.parameters,
            "train_seconds": f.train_seconds,
            "warnings": f.warnings,
        });
        VectorCore {
            model: f.model,
            state: f.state,
            figures,
        }
    }
}

/// Fit a vector flow (see `glowflow.VectorFlow.fit`). Returns the fitted core and the exception
/// that stopped it early (Ctrl-C, or one raised by `report`), if any.
#[pyfunction]
#[pyo3(signature = (model, flow_steps, net_width, net_depth, coupling, spline_bins,
    spline_affine, context_embedding, permutation, columns,
    data, context_columns, validation, steps, batch_size, lr, seed, run_dir, resume, threads,
    log_every, ema_decay, clip_grad_norm, weight_decay, report))]
#[allow(clippy::too_many_arguments)]
fn fit_vectors<'py>(
    py: Python<'py>,
    model: &str,
    flow_steps: usize,
    net_width: usize,
    net_depth: usize,
    coupling: &str,
    spline_bins: usize,
    spline_affine: bool,
    context_embedding: usize,
    permutation: &str,
    columns: Vec<String>,
    data: PyReadonlyArray2<'py, f64>,
    context_columns: Vec<String>,
    validation: Option<PyReadonlyArray2<'py, f64>>,
    steps: usize,
    batch_size: usize,
    lr: f64,
    seed: u64,
    run_dir: Option<PathBuf>,
    resume: bool,
    threads: Option<usize>,
    log_every: usize,
    ema_decay: f64,
    clip_grad_norm: f64,
    weight_decay: f64,
    report: Option<Bound<'py, PyAny>>,
) -> PyResult<(VectorCore, Option<PyErr>)> {
    let mut cfg = VectorFlowConfig::new(named::<ModelKind>("model", model, &["glow", "realnvp"])?);
    cfg.flow_steps = flow_steps;
    cfg.net_width = net_width;
    cfg.net_depth = net_depth;
    cfg.coupling = named(
        "coupling",
        coupling,
        &["tanh", "sigmoid", "additive", "spline"],
    )?;
    cfg.spline_bins = spline_bins;
    cfg.spline_affine = spline_affine;
    cfg.context_embedding = context_embedding;
    cfg.permutation = named("permutation", permutation, PERMUTATIONS)?;
    let table = {
        let (values, _, _) = rows_of(&data);
        Table::from_rows("X", columns.clone(), values).map_err(|e| py_error(e.into()))?
    };
    let validation = match validation {
        Some(v) => {
            let (values, _, _) = rows_of(&v);
            Some(Table::from_rows("validation", columns, values).map_err(|e| py_error(e.into()))?)
        }
        None => None,
    };
    let (fitted, pending) = fit_with_reports(py, report, move |hooks| {
        let defaults = FitOptions::vectors();
        // None: the library's default, every core.
        let threads = threads.unwrap_or(defaults.threads);
        let stability = StabilityOptions {
            ema_decay,
            clip_grad_norm,
            weight_decay,
            ..defaults.stability.clone()
        };
        let opts = FitOptions {
            steps,
            batch_size,
            lr,
            seed,
            stability,
            context_columns,
            validation,
            run_dir,
            resume,
            threads,
            log_every,
            progress: false,
            hooks,
            ..defaults
        };
        VectorFlow::fit(&cfg, &table, &opts)
    })?;
    Ok((VectorCore::of(fitted), pending))
}

/// A fitted image Glow: the model and its run state.
#[pyclass(module = "glowflow._core", frozen)]
struct ImageCore {
    model: GlowImage,
    state: ImageRunState,
    figures: serde_json::Value,
}

/// Images `[N, H, W, C]` uint8 as the library's set (`[N, C, H, W]` order).
fn image_set(images: &PyReadonlyArray4<'_, u8>) -> PyResult<ImageSet> {
    let a = images.as_array();
    let (n, h, w, c) = a.dim();
    let mut px = Vec::with_capacity(n * c * h * w);
    for i in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    px.push(a[[i, y, x, ch]]);
                }
            }
        }
    }
    ImageSet::from_pixels(c, h, w, px).map_err(|e| py_error(e.into()))
}

/// Pixels `[n, C, H, W]` (the library's order) as `[n, H, W, C]` uint8.
fn nhwc(px: &[u8], n: usize, c: usize, h: usize, w: usize) -> Array4<u8> {
    Array4::from_shape_fn((n, h, w, c), |(i, y, x, ch)| {
        px[((i * c + ch) * h + y) * w + x]
    })
}

#[pymethods]
impl ImageCore {
    /// Bits/dim of each image `[N, H, W, C]` uint8 (one dequantisation draw, fixed seed), with
    /// `labels` `[N]` for a class-conditional model; float64 `[N]`.
    #[pyo3(signature = (images, labels))]
    fn bits_per_dim<'py>(
        &self,
        py: Python<'py>,
        images: PyReadonlyArray4<'py, u8>,
        labels: Option<PyReadonlyArray1<'py, u8>>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let set = image_set(&images)?;
        let cfg = &self.state.model;
        if [set.c, set.h, set.w] != [cfg.channels, cfg.height, cfg.width] {
            let why = format!(
                "images of {}x{}x{} (HxWxC) for a model of {}x{}x{}",
                set.h, set.w, set.c, cfg.height, cfg.width, cfg.channels
            );
            return Err(PyValueError::new_err(why));
        }
        let labels: Option<Vec<u8>> = labels.map(|l| l.as_array().iter().copied().collect());
        if let Some(l) = &labels {
            check_labels(l, set.n, cfg.classes)?;
        }
        let device = glowflow::default_device();
        let v = compute(py, || {
            let f = glowflow::eval::images::class_eval(
                &self.model,
                &set,
                labels.as_deref(),
                cfg,
                256,
                &device,
            );
            Ok(f.bpd)
        })?;
        Ok(Array1::from(v).into_pyarray(py))
    }

    /// `n` images `[n, H, W, C]` uint8 at `temperature`, seeded; for a class-conditional model
    /// of class `label` (guided with weight `guidance` when given), else unconditional.
    #[pyo3(signature = (n, temperature, label, guidance, seed))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        temperature: f64,
        label: Option<usize>,
        guidance: Option<f64>,
        seed: u64,
    ) -> PyResult<Bound<'py, PyArray4<u8>>> {
        check_temperature(temperature)?;
        let cfg = &self.state.model;
        glowflow::eval::images::check_class(label, cfg.classes).map_err(py_error)?;
        if guidance.is_some() && label.is_none() {
            return Err(PyValueError::new_err("`guidance` needs a `label`"));
        }
        let (c, h, w) = (cfg.channels, cfg.height, cfg.width);
        let px = compute(py, || {
            use glowflow::eval::images::{sample_batch_drawn, Draw};
            // The command line's draw: guided when asked, denoised when noise-augmented.
            let draw = Draw {
                guidance,
                ..Draw::for_model(cfg, temperature)
            };
            let labels = label.map(|l| vec![l; n]);
            let batch = sample_batch_drawn(&self.model, n, &draw, seed, labels.as_deref());
            if let Some(why) = batch.nonfinite_message() {
                anyhow::bail!("{why} (at temperature {temperature}); try a lower temperature");
            }
            let v: Vec<f32> = batch.values.iter().map(|&v| v as f32).collect();
            Ok(glowflow::data::dequant::to_pixels(&v, cfg.n_bits))
        })?;
        Ok(nhwc(&px, n, c, h, w).into_pyarray(py))
    }

    /// The latents of images `[N, H, W, C]` uint8 (at their bins' centres), one float32 array
    /// per level `[N, C_l, H_l, W_l]` (the flow's bijection; a model whose couplings read the
    /// class reads `labels` `[N]`, the null class without them).
    #[pyo3(signature = (images, labels))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        images: PyReadonlyArray4<'py, u8>,
        labels: Option<PyReadonlyArray1<'py, u8>>,
    ) -> PyResult<Vec<Bound<'py, PyArray4<f32>>>> {
        let set = image_set(&images)?;
        let cfg = &self.state.model;
        let device = glowflow::default_device();
        let ctx = class_context(labels, set.n, cfg.classes, &device)?;
        let zs = compute(py, || {
            let centres = glowflow::data::dequant::bin_centres(&set.pixels, cfg.n_bits);
            let x = glowflow::tensor_util::from_vec(centres, [set.n, set.c, set.h, set.w], &device);
            let zs = self.model.encode(x, ctx.as_ref());
            Ok(zs
                .into_iter()
                .map(|z| {
                    let dims = z.dims();
                    (dims, glowflow::tensor_util::to_vec(z))
                })
                .collect::<Vec<_>>())
        })?;
        Ok(zs
            .into_iter()
            .map(|(d, v)| {
                Array4::from_shape_vec((d[0], d[1], d[2], d[3]), v)
                    .expect("a latent's values")
                    .into_pyarray(py)
            })
            .collect())
    }

    /// The images `[N, H, W, C]` uint8 of latents (one array per level, as `encode` gives),
    /// for `labels` as in `encode`.
    #[pyo3(signature = (latents, labels))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        latents: Vec<PyReadonlyArray4<'py, f32>>,
        labels: Option<PyReadonlyArray1<'py, u8>>,
    ) -> PyResult<Bound<'py, PyArray4<u8>>> {
        let cfg = &self.state.model;
        if latents.len() != cfg.levels {
            let why = format!(
                "{} latents for a model of {} levels",
                latents.len(),
                cfg.levels
            );
            return Err(PyValueError::new_err(why));
        }
        let parts: Vec<([usize; 4], Vec<f32>)> = latents
            .iter()
            .map(|z| {
                let s = z.shape();
                (
                    [s[0], s[1], s[2], s[3]],
                    z.as_array().iter().copied().collect(),
                )
            })
            .collect();
        let device = glowflow::default_device();
        let n = parts[0].0[0];
        let (c, h, w) = (cfg.channels, cfg.height, cfg.width);
        let ctx = class_context(labels, n, cfg.classes, &device)?;
        let px = compute(py, || {
            let zs = parts
                .into_iter()
                .map(|(d, v)| glowflow::tensor_util::from_vec(v, d, &device))
                .collect();
            let x = glowflow::tensor_util::to_vec(self.model.decode(&zs, ctx.as_ref()));
            Ok(glowflow::data::dequant::to_pixels(&x, cfg.n_bits))
        })?;
        Ok(nhwc(&px, n, c, h, w).into_pyarray(py))
    }

    /// Save into the directory `path` (a checkpoint for evaluation and sampling).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        compute(py, || save_model(&path, &self.model, &self.state))
    }

    /// The model's config as JSON (`state.json`'s `model`).
    fn config_json(&self) -> String {
        serde_json::to_string(&self.state.model).expect("a config serialises")
    }

    /// The training options as JSON (`state.json`'s `options`).
    fn options_json(&self) -> String {
        serde_json::to_string(&self.state.options).expect("options serialise")
    }

    /// The figures of the fit as JSON.
    fn figures_json(&self) -> String {
        self.figures.to_string()
    }
}

/// A sampling temperature: finite and above zero (the prior's standard deviation is scaled by it).
fn check_temperature(t: f64) -> PyResult<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        let why = format!("`temperature` {t}: must be a finite number above 0");
        Err(PyValueError::new_err(why))
    }
}

fn check_labels(labels: &[u8], n: usize, classes: usize) -> PyResult<()> {
    if labels.len() != n {
        let why = format!("{} labels for {n} images", labels.len());
        return Err(PyValueError::new_err(why));
    }
    if let Some(i) = labels.iter().position(|&l| l as usize >= classes.max(1)) {
        let why = format!(
            "label {} of image {i} is not below classes={classes}",
            labels[i]
        );
        return Err(PyValueError::new_err(why));
    }
    Ok(())
}

impl ImageCore {
    fn of(f: FittedImage) -> Self {
        let figures = serde_json::json!({
            "steps": f.steps,
            "interrupted": f.interrupted,
            "summary": f.summary,
        });
        ImageCore {
            model: f.model,
            state: f.state,
            figures,
        }
    }
}

/// The class one-hots `[n, classes]` of `labels` (checked against `n` and `classes`), or none.
fn class_context(
    labels: Option<PyReadonlyArray1<'_, u8>>,
    n: usize,
    classes: usize,
    device: &burn::tensor::Device,
) -> PyResult<Option<burn::tensor::Tensor<2>>> {
    let Some(l) = labels else {
        return Ok(None);
    };
    if classes == 0 {
        let why = "`labels` given to an unconditional model (it was fitted without `classes`)";
        return Err(PyValueError::new_err(why));
    }
    let l: Vec<u8> = l.as_array().iter().copied().collect();
    check_labels(&l, n, classes)?;
    let idx: Vec<usize> = l.iter().map(|&k| k as usize).collect();
    Ok(Some(glowflow::models::glow_image::one_hot(
        &idx, classes, device,
    )))
}

/// Fit image Glow (see `glowflow.ImageGlow.fit`). Returns the fitted core and the exception
/// that stopped it early, if any.
#[pyfunction]
#[pyo3(signature = (levels, steps_per_level, net_width, coupling, permutation, classes,
    class_conditioning, n_bits, images, labels, test_images, test_labels, steps, batch_size, lr, warmup, seed, run_dir,
    resume, threads, log_every, test_limit, ema_decay, clip_grad_norm, weight_decay, low_memory,
    report))]
#[allow(clippy::too_many_arguments)]
fn fit_images<'py>(
    py: Python<'py>,
    levels: usize,
    steps_per_level: usize,
    net_width: usize,
    coupling: &str,
    permutation: &str,
    classes: usize,
    class_conditioning: &str,
    n_bits: u32,
    images: PyReadonlyArray4<'py, u8>,
    labels: Option<PyReadonlyArray1<'py, u8>>,
    test_images: PyReadonlyArray4<'py, u8>,
    test_labels: Option<PyReadonlyArray1<'py, u8>>,
    steps: usize,
    batch_size: usize,
    lr: f64,
    warmup: usize,
    seed: u64,
    run_dir: Option<PathBuf>,
    resume: bool,
    threads: Option<usize>,
    log_every: usize,
    test_limit: usize,
    ema_decay: f64,
    clip_grad_norm: f64,
    weight_decay: f64,
    low_memory: bool,
    report: Option<Bound<'py, PyAny>>,
) -> PyResult<(ImageCore, Option<PyErr>)> {
    let (train, test) = (image_set(&images)?, image_set(&test_images)?);
    let cfg = GlowImageConfig {
        levels,
        steps_per_level,
        net_width,
        coupling: named("coupling", coupling, &["affine", "additive", "spline"])?,
        permutation: named("permutation", permutation, PERMUTATIONS)?,
        classes,
        class_conditioning: named(
            "class_conditioning",
            class_conditioning,
            &["prior", "couplings"],
        )?,
        n_bits,
        ..GlowImageConfig::new(train.c, train.h, train.w)
    };
    let lab = |l: Option<PyReadonlyArray1<'py, u8>>, n: usize| -> PyResult<Option<Vec<u8>>> {
        let l: Option<Vec<u8>> = l.map(|l| l.as_array().iter().copied().collect());
        if let Some(v) = &l {
            check_labels(v, n, classes)?;
        }
        Ok(l)
    };
    let data = Splits {
        train_labels: lab(labels, train.n)?,
        test_labels: lab(test_labels, test.n)?,
        ..Splits::unlabelled(train, test)
    };
    let (fitted, pending) = fit_with_reports(py, report, move |hooks| {
        let defaults = FitOptions::images();
        let threads = threads.unwrap_or(defaults.threads);
        let stability = StabilityOptions {
            ema_decay,
            clip_grad_norm,
            weight_decay,
            ..defaults.stability.clone()
        };
        let opts = FitOptions {
            steps,
            batch_size,
            lr,
            warmup,
            stability,
            seed,
            run_dir,
            resume,
            threads,
            log_every,
            test_limit,
            low_memory,
            progress: false,
            hooks,
            ..defaults
        };
        GlowImage::fit(&cfg, &data, &opts)
    })?;
    Ok((ImageCore::of(fitted), pending))
}

/// Load what `save` writes, or a command-line run directory (or its `checkpoint/`): a
/// `VectorCore` or an `ImageCore` by the run's kind.
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<Py<PyAny>> {
    use glowflow::train::trainer::{load_for_eval, RunKind};
    let kind = compute(py, || glowflow::train::checkpoint::run_kind(&path))?;
    let device = glowflow::default_device();
    match kind {
        RunKind::Vector => {
            let (model, state, _) = compute(py, || load_for_eval::<VectorFlow>(&path, &device))?;
            let figures = serde_json::json!({ "steps": state.step });
            Ok(Py::new(
                py,
                VectorCore {
                    model,
                    state,
                    figures,
                },
            )?
            .into_any())
        }
        RunKind::Image => {
            let (model, state, _) = compute(py, || load_for_eval::<GlowImage>(&path, &device))?;
            let figures = serde_json::json!({ "steps": state.step });
            Ok(Py::new(
                py,
                ImageCore {
                    model,
                    state,
                    figures,
                },
            )?
            .into_any())
        }
    }
}

/// Panics inside a computation, for the test that a Rust panic reaches Python as a
/// `RuntimeError` and leaves the interpreter running (not part of the API).
#[pyfunction]
fn _panic_for_test(py: Python<'_>) -> PyResult<()> {
    compute(py, || -> anyhow::Result<()> {
        panic!("a panic raised on purpose by a test")
    })
}

/// The Rust side of the `glowflow` package.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // As the command line does: freed memory is kept for reuse, not handed back to the OS
    // (re-faulting zeroed pages every step is a measurable share of a step). mimalloc v3's
    // `mi_option_purge_delay` is 15 (its `mimalloc.h`; the -sys crate has no constant).
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    // The library's errors, notes and warnings name options by this package's keywords.
    glowflow::error::set_option_namer(option_keyword);
    m.add_class::<VectorCore>()?;
    m.add_class::<ImageCore>()?;
    m.add_function(wrap_pyfunction!(fit_vectors, m)?)?;
    m.add_function(wrap_pyfunction!(fit_images, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
