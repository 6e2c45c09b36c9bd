"""glowflow: Glow-family normalizing flows in Rust, numpy in and out.

Two models, each fitted by maximum likelihood in Rust with the GIL released:

* :class:`VectorFlow` -- a density on the rows of a table (Glow: ActNorm, invertible 1x1
  "convolution" W = P L U, affine coupling; or Real NVP), optionally conditioned on context
  columns: ``log_prob`` scores rows (anomaly scores), ``sample`` draws new rows.
* :class:`ImageGlow` -- multi-scale Glow on uint8 images (Kingma & Dhariwal 2018), optionally
  class-conditional: ``bits_per_dim``, ``sample``, ``encode`` / ``decode``.

:func:`load` reads what ``save`` writes and the run directories of the ``glowflow`` command.

>>> import numpy as np, glowflow
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(512, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]])
>>> flow = glowflow.VectorFlow(features=2, flow_steps=4, net_width=16)
>>> flow = flow.fit(X, steps=50, batch_size=128, lr=1e-3, progress=False, threads=1)
>>> flow.log_prob(X[:3]).shape
(3,)
>>> flow.sample(5, seed=1).shape
(5, 2)
>>> flow
VectorFlow(features=2, context=0, model='glow', flow_steps=4, net_width=16, net_depth=2, coupling='tanh', permutation='lu')
"""

import json
import operator
import os
import sys
import warnings

import numpy as np

from . import _core

__all__ = ["VectorFlow", "ImageGlow", "load"]
__version__ = _core.__version__


def _integer(name, value, low=None, none=False):
    """`value` as a Python int (numpy integers too; never a float), at least `low`."""
    if value is None and none:
        return None
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an integer, got {value!r}") from None
    if low is not None and v < low:
        raise ValueError(f"`{name}` {v}: must be at least {low}")
    return v


def _number(name, value):
    """`value` as a finite float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"`{name}` {v}: must be finite")
    return v


def _threads(threads):
    """`threads=`: None (every core) or a positive integer."""
    return _integer("threads", threads, low=1, none=True)


def _fit_numbers(steps, batch_size, lr, seed, threads, log_every, ema_decay, clip_grad_norm,
                weight_decay, callback):
    """The keywords both fits share, checked: (steps, batch_size, lr, seed, threads, log_every,
    ema_decay, clip_grad_norm, weight_decay)."""
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable, got {callback!r}")
    return (_integer("steps", steps, low=1), _integer("batch_size", batch_size, low=1),
            _number("lr", lr), _integer("seed", seed, low=0), _threads(threads),
            _integer("log_every", log_every, low=1), _number("ema_decay", ema_decay),
            _number("clip_grad_norm", clip_grad_norm), _number("weight_decay", weight_decay))


def _seed(seed):
    """A seed for the core: the one given, or a fresh one from the OS."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (1 << 63))
    return _integer("seed", seed, low=0)


def _matrix(x, name):
    """Any array-like (numpy, pandas, a torch tensor) as float64 [n, w], and its column names
    (a DataFrame's, else None)."""
    columns = None
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):
        columns = [str(c) for c in x.columns]
        x = x.to_numpy()
    elif hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}`: not an array of numbers ({e})") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"`{name}`: expected a 2-D array [rows, columns], got shape {a.shape}")
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        i, j = bad[0]
        col = f"column '{columns[j]}'" if columns else f"column {j}"
        raise ValueError(f"`{name}` row {i}, {col}: {a[i, j]} is not a finite number "
                         f"({len(bad)} such value(s))")
    return np.ascontiguousarray(a), columns


def _by_name(a, columns, want, name):
    """The columns `want` of `a` (named `columns`), in that order; a's own order when either
    side has no names."""
    if columns is None or want is None:
        return a
    missing = [c for c in want if c not in columns]
    if missing:
        raise ValueError(f"`{name}` has no column {missing[0]!r} (the model's columns: {want})")
    return np.ascontiguousarray(a[:, [columns.index(c) for c in want]])


def _reporter(progress, callback):
    """The progress callback the core calls with (step, steps, loss, lr, rows_per_second)."""
    bar = None
    tqdm = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None

    def report(step, steps, loss, lr, rate):
        nonlocal bar
        if progress:
            if tqdm is not None:
                if bar is None:
                    bar = tqdm(total=steps, unit="step")
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.4f}")
            else:
                end = "\n" if step >= steps else ""
                sys.stderr.write(f"\rstep {step}/{steps} loss {loss:.4f} {rate:.0f} rows/s{end}")
        if callback is not None:
            callback(step, loss)

    return report, (lambda: bar.close() if bar is not None else None)


class VectorFlow:
    """A Glow (or Real NVP) flow on vectors: the rows of a table, optionally conditioned on
    context columns.

    Parameters
    ----------
    features : int
        Modelled columns. One column (a one-dimensional density, or a conditional density of
        one variable given ``context``) needs ``coupling="spline"``: nothing conditions, so
        each flow step is one spline whose parameters are learned constants or a function of
        the context.
    context : int
        Context columns the density is conditioned on (0: unconditional).
    model : {"glow", "realnvp"}
        Glow (ActNorm, invertible 1x1 with W = P L U, affine coupling; Kingma & Dhariwal 2018)
        or Real NVP (batch norm, alternating masks; Dinh et al. 2016).
    flow_steps : int
        Flow steps (each: ActNorm, permutation, coupling).
    net_width, net_depth : int
        Hidden width and depth of each coupling network (an MLP).
    coupling : {"tanh", "sigmoid", "additive", "spline"}
        The affine coupling's scale: ``exp(tanh(raw) * alpha + beta)`` (the default), Glow's
        ``sigmoid(raw + 2)``, none (NICE's additive coupling), or a rational-quadratic spline
        of ``spline_bins`` bins per value on [-5, 5] of the standardised data, identity
        outside (neural spline flows; slower per step, more expressive).
    permutation : {"lu", "plain", "shuffle", "reverse"}
        Invertible 1x1 "convolution" with W = P L U, an unconstrained W, a fixed shuffle, or
        reversal.
    spline_bins : int
        Bins K of each spline (``coupling="spline"``): 3K - 1 network outputs per value.
    context_embedding : int
        Width E of a learned context embedding (0: none): an MLP context -> [E, ReLU] -> E
        applied once per row, whose output every coupling network reads, trained jointly.
    spline_affine : bool
        Follow each spline by a conditional affine map from the same network,
        ``y = spline(x) * exp(s) + t`` with the tanh-bounded log-scale (Flow++'s composition;
        rescales values conditionally, tails included). False: the plain spline of neural
        spline flows. Saved models made before this option load as plain splines.

    Attributes
    ----------
    columns : list of str or None
        The modelled columns' names (a DataFrame's, else ``x0, x1, ...``) once fitted.
    context_columns : list of str
        The context columns' names.
    figures : dict
        Steps, training and test NLL (nats per row), parameters and seconds of the fit.

    The data are standardised inside the model with the training rows' float64 mean and
    standard deviation; ``log_prob`` is in the data's own units (nats per row).

    >>> import numpy as np, glowflow
    >>> rng = np.random.default_rng(1)
    >>> c = rng.normal(size=(400, 1))
    >>> X = np.hstack([2 * c + 0.1 * rng.normal(size=(400, 1)), rng.normal(size=(400, 1))])
    >>> f = glowflow.VectorFlow(features=2, context=1, flow_steps=4, net_width=16)
    >>> f = f.fit(X, context=c, steps=100, batch_size=100, lr=1e-3, progress=False, threads=1)
    >>> f.sample(3, context=[[1.0]], seed=0).shape  # one context for every sample
    (3, 2)
    >>> f.log_prob(X[:2], context=c[:2]).dtype
    dtype('float64')
    """

    def __init__(self, features, context=0, model="glow", flow_steps=32, net_width=64, net_depth=2,
                 coupling="tanh", permutation="lu", spline_bins=8, context_embedding=0,
                 spline_affine=True):
        self.features = _integer("features", features, low=1)
        if not isinstance(spline_affine, (bool, np.bool_)):
            raise ValueError(f"`spline_affine` must be True or False, got {spline_affine!r}")
        self.spline_affine = bool(spline_affine)
        self.context = _integer("context", context, low=0)
        self.spline_bins = _integer("spline_bins", spline_bins, low=2)
        self.context_embedding = _integer("context_embedding", context_embedding, low=0)
        if self.features == 1 and str(coupling) != "spline":
            raise ValueError(f"features=1: coupling={str(coupling)!r} splits the columns in two; "
                             "one modelled column needs coupling='spline'")
        if self.context_embedding and not self.context:
            raise ValueError("`context_embedding` embeds the context: it needs context > 0")
        self.model = str(model)
        self.flow_steps = _integer("flow_steps", flow_steps, low=1)
        self.net_width = _integer("net_width", net_width, low=1)
        self.net_depth = _integer("net_depth", net_depth, low=1)
        self.coupling, self.permutation = str(coupling), str(permutation)
        self._core = None
        self.columns, self.context_columns = None, []
        self._named = False

    def __repr__(self):
        return (f"VectorFlow(features={self.features}, context={self.context}, model={self.model!r}, "
                f"flow_steps={self.flow_steps}, net_width={self.net_width}, net_depth={self.net_depth}, "
                f"coupling={self.coupling!r}, permutation={self.permutation!r}"
                + (f", spline_bins={self.spline_bins}" if self.coupling == "spline" else "")
                + (", spline_affine=False" if self.coupling == "spline" and not self.spline_affine else "")
                + (f", context_embedding={self.context_embedding}" if self.context_embedding else "")
                + ")")

    def fit(self, X, context=None, steps=20000, batch_size=1024, lr=1e-4, seed=0, validation=None,
            progress=True, callback=None, run_dir=None, threads=None, log_every=100, ema_decay=0.0,
            clip_grad_norm=0.0, weight_decay=0.0):
        """Fit by maximum likelihood (Adam, mean NLL of each batch); returns self.

        X : array-like [N, features] (numpy, pandas DataFrame, torch tensor); a DataFrame's
            column names are kept (``columns``) and used by ``log_prob`` and ``sample``.
        context : array-like [N, context] or None.
        validation : rows held out for the fit's test NLL (``X`` or ``(X, context)``); without
            it the fit holds out no rows and ``figures["test_nll"]`` is None.
        progress : a progress bar (tqdm when installed, else one line on stderr).
        callback : ``callback(step, loss)`` every ``log_every`` steps; an exception it raises
            stops the fit (the model of the last complete step is kept) and is re-raised.
        run_dir : a directory to write the run into (metrics, checkpoints, summary, as the
            command line does); None writes nothing.
        threads : data-parallel threads (default: every core). Results are deterministic for
            a given seed and thread count.
        ema_decay : decay of an exponential moving average of the weights (0: none); the fitted
            model (scores, samples, save) then holds the averaged weights. 0.99-0.999 often
            lowers the test NLL of a short fit.
        clip_grad_norm : clip the gradients' global L2 norm to this (0: no clipping).
        weight_decay : decoupled weight decay (AdamW; 0: none): each step multiplies every
            parameter of two or more dimensions (the networks' weight matrices, the 1x1
            convolution's matrices, image Glow's learned top prior) by
            ``1 - lr * weight_decay``; biases, ActNorm and scales do not decay. On small
            tables it trades training fit for test NLL (``docs/splines.md``).

        Ctrl-C raises ``KeyboardInterrupt`` at the next step; the model keeps its last complete
        step (``figures["interrupted"]``).
        """
        x, names = _matrix(X, "X")
        if x.shape[1] != self.features:
            raise ValueError(f"`X` has {x.shape[1]} columns; this flow models features={self.features}")
        steps, batch_size, lr, seed, threads, log_every, ema_decay, clip, decay = _fit_numbers(
            steps, batch_size, lr, seed, threads, log_every, ema_decay, clip_grad_norm,
            weight_decay, callback)
        self._named = names is not None
        names = names or [f"x{i}" for i in range(self.features)]
        ctx_names = []
        if context is not None:
            if not self.context:
                raise ValueError("`context` given, but this flow has context=0")
            c, cnames = _matrix(context, "context")
            if c.shape != (x.shape[0], self.context):
                raise ValueError(f"`context` has shape {c.shape}; expected ({x.shape[0]}, {self.context})")
            ctx_names = cnames or [f"c{i}" for i in range(self.context)]
            x = np.hstack([x, c])
        elif self.context:
            raise ValueError(f"this flow is conditioned on context={self.context} column(s): give `context`")
        if len(set(names + ctx_names)) != len(names + ctx_names):
            raise ValueError(f"column names repeat: {names + ctx_names}")
        val = None
        if validation is not None:
            vx, vc = validation if isinstance(validation, tuple) else (validation, None)
            vals, vnames = _matrix(vx, "validation")
            val = _by_name(vals, vnames, names if self._named else None, "validation")
            if vc is not None:
                val = np.hstack([val, _matrix(vc, "validation context")[0]])
            if val.shape[1] != x.shape[1]:
                raise ValueError(f"`validation` has {val.shape[1]} columns (with its context); "
                                 f"expected {x.shape[1]}")
        report, close = _reporter(progress, callback)
        try:
            core, pending = _core.fit_vectors(
                self.model, self.flow_steps, self.net_width, self.net_depth, self.coupling,
                self.spline_bins, self.spline_affine, self.context_embedding, self.permutation, names + ctx_names, x, ctx_names, val, steps, batch_size,
                lr, seed, None if run_dir is None else str(run_dir), False, threads,
                log_every, ema_decay, clip, decay, report)
        finally:
            close()
        self._core, self.columns, self.context_columns = core, names, ctx_names
        if pending is not None:
            raise pending
        return self

    def _fitted(self):
        if self._core is None:
            raise RuntimeError("this VectorFlow is not fitted: call fit() or glowflow.load()")
        return self._core

    def _rows(self, X, context):
        """The rows to score: modelled columns (by name for a DataFrame when the fit's columns
        were named), then the context columns."""
        x, names = _matrix(X, "X")
        x = _by_name(x, names, self.columns if self._named else None, "X")
        if x.shape[1] != self.features:
            raise ValueError(f"`X` has {x.shape[1]} columns; this flow models features={self.features}")
        if self.context:
            if context is None:
                raise ValueError(f"this flow is conditioned on context={self.context} column(s): give `context`")
            c, cnames = _matrix(context, "context")
            c = _by_name(c, cnames, self.context_columns if self._named else None, "context")
            if c.shape != (x.shape[0], self.context):
                raise ValueError(f"`context` has shape {c.shape}; expected ({x.shape[0]}, {self.context})")
            x = np.hstack([x, c])
        elif context is not None:
            raise ValueError("`context` given, but this flow has context=0")
        return np.ascontiguousarray(x)

    def log_prob(self, X, context=None):
        """log p(x | context) of each row, nats in the data's units, float64 (N,).

        Computed in float64. Low values are unlikely rows (anomaly scores). Columns the fit
        dequantised get the same noise draw as the command line's ``score``.
        """
        return self._fitted().log_prob(self._rows(X, context))

    def sample(self, n, context=None, temperature=1.0, seed=None, as_frame=False):
        """n samples, float64 (n, features), decoded in float64.

        context : one row [1, context] for every sample, or one per sample [n, context].
        temperature : the base distribution's standard deviation (1 samples the model).
        as_frame : return a pandas DataFrame with the fit's column names.

        A sample that is not finite (possible far in the tails at high temperature) is left
        out with a ``RuntimeWarning`` naming how many, so fewer than n rows may come back.
        """
        n = _integer("n", n, low=0)
        temperature = _number("temperature", temperature)
        c = None
        if context is not None:
            c, cnames = _matrix(context, "context")
            c = _by_name(c, cnames, self.context_columns if self._named else None, "context")
        x, lp = self._fitted().sample(n, temperature, c, _seed(seed))
        ok = np.isfinite(x).all(axis=1) & np.isfinite(lp)
        if not ok.all():
            warnings.warn(f"{int((~ok).sum())} of {n} samples were not finite at temperature "
                          f"{temperature} and were left out (first: sample {int(np.argmin(ok))})",
                          RuntimeWarning, stacklevel=2)
            x = x[ok]
        if as_frame:
            import pandas as pd
            return pd.DataFrame(x, columns=self.columns)
        return x

    @property
    def figures(self):
        """Steps, training and test NLL (nats per row), parameters, seconds of the fit (a dict)."""
        return json.loads(self._fitted().figures_json())

    def save(self, path, overwrite=False):
        """Save into the directory `path` (read by glowflow.load and by the command line's
        ``score`` and ``sample``). A directory that holds files is refused (FileExistsError)
        unless ``overwrite=True``, which replaces a previous save as one unit; a resumable run
        (a fit's ``run_dir``) is never overwritten."""
        _check_save(path, overwrite)
        self._fitted().save(str(path))


def _check_save(path, overwrite):
    """Refuse to save over files unless asked to."""
    p = os.fspath(path)
    if os.path.isdir(p) and os.listdir(p) and not overwrite:
        raise FileExistsError(f"`path` {p} holds files; save into a new directory, or pass "
                              "overwrite=True to replace a previous save")
    if os.path.exists(p) and not os.path.isdir(p):
        raise FileExistsError(f"`path` {p} is a file, not a directory")


def _labels(labels, n, name="labels"):
    """Class labels as uint8 [n]: integers in [0, 255] (the model checks its own class count)."""
    if labels is None:
        return None
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    a = np.asarray(labels)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"`{name}` must be one label per image ({n}), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        if not (np.issubdtype(a.dtype, np.floating) and np.all(a == np.round(a))):
            raise TypeError(f"`{name}` must be integers, got {a.dtype}")
    bad = np.flatnonzero((a < 0) | (a > 255))
    if len(bad):
        raise ValueError(f"`{name}`: label {a[bad[0]]} of image {bad[0]} is not a class number")
    return np.ascontiguousarray(a.astype(np.uint8))


class ImageGlow:
    """Multi-scale Glow on images (Kingma & Dhariwal 2018, section 3 and figure 2).

    Parameters
    ----------
    levels : int
        Levels L of the multi-scale architecture (squeeze, K flow steps, split).
    steps_per_level : int
        Flow steps K per level (ActNorm, invertible 1x1 convolution, coupling).
    net_width : int
        Channels of the coupling networks' hidden convolutions.
    coupling : {"affine", "additive", "spline"}
        Glow's affine coupling ``(x + t) * sigmoid(raw + 2)``, additive ``x + t``, or a
        rational-quadratic spline of 8 bins per value (RQ-NSF (C); slower per step).
    permutation : {"lu", "plain", "shuffle", "reverse"}
        Invertible 1x1 convolution with W = P L U (Glow's), an unconstrained W, a fixed
        shuffle, or reversal.
    classes : int or None
        Class-conditional prior with this many classes (labels 0..classes-1).
    n_bits : int
        Bits per pixel modelled (8: all 256 levels); bits/dim is per pixel value.
    class_conditioning : {"couplings", "prior"}
        Where a class-conditional model reads its class: the top prior and every coupling
        network and split prior (its own flow per class; the default), or the top prior only
        (openai/glow's ``ycond``). Needs ``classes``.

    Images are uint8 ``[N, H, W]`` (grey) or ``[N, H, W, C]``; H and W must be divisible by
    2**levels. The loss and ``bits_per_dim`` are in bits per pixel value (uniform
    dequantisation).
    """

    def __init__(self, levels=3, steps_per_level=6, net_width=64, coupling="affine", permutation="lu",
                 classes=None, n_bits=8, class_conditioning=None):
        self.levels = _integer("levels", levels, low=1)
        self.steps_per_level = _integer("steps_per_level", steps_per_level, low=1)
        self.net_width = _integer("net_width", net_width, low=1)
        self.coupling, self.permutation = str(coupling), str(permutation)
        self.classes = _integer("classes", classes, low=1, none=True)
        self.n_bits = _integer("n_bits", n_bits, low=1)
        if class_conditioning is not None and not self.classes:
            raise ValueError("`class_conditioning` says where a class-conditional model reads its "
                             "class: it needs `classes`")
        self.class_conditioning = "couplings" if class_conditioning is None else str(class_conditioning)
        self._core, self._grey = None, False

    def __repr__(self):
        return (f"ImageGlow(levels={self.levels}, steps_per_level={self.steps_per_level}, "
                f"net_width={self.net_width}, coupling={self.coupling!r}, permutation={self.permutation!r}, "
                f"classes={self.classes}, n_bits={self.n_bits}"
                + (f", class_conditioning={self.class_conditioning!r}" if self.classes else "")
                + ")")

    @staticmethod
    def _images(images, name="images"):
        if hasattr(images, "detach") and hasattr(images, "cpu"):
            images = images.detach().cpu().numpy()
        a = np.asarray(images)
        if a.dtype != np.uint8:
            raise TypeError(f"`{name}` must be uint8 pixels, got {a.dtype}")
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4:
            raise ValueError(f"`{name}` must be [N, H, W] or [N, H, W, C], got shape {a.shape}")
        return np.ascontiguousarray(a)

    def fit(self, images, labels=None, steps=1000, batch_size=64, lr=1e-3, warmup=200, seed=0,
            test_images=None, test_labels=None, progress=True, callback=None, run_dir=None,
            threads=None, log_every=10, test_limit=0, ema_decay=0.999, clip_grad_norm=50.0,
            weight_decay=0.0, low_memory=False):
        """Fit by maximum likelihood (Adam with ``warmup`` steps of linear warm-up; loss in
        bits/dim); returns self.

        images : uint8 [N, H, W] or [N, H, W, C]; labels : [N] class numbers (with ``classes``).
        test_images, test_labels : held-out images for ``figures["summary"]``'s test bits/dim
            (without them the summary is measured on the first training image only).
        progress, callback, run_dir, threads, ema_decay, clip_grad_norm, weight_decay : as in
            :meth:`VectorFlow.fit` (the defaults are the command line's ``train`` recipe).
        low_memory : invertible backpropagation (``train --low-memory``): each flow step's
            input is rebuilt from its output in the backward pass instead of kept, so memory
            stays nearly flat in depth (the Glow paper's CIFAR-10 model: 0.9 GiB instead of 3.9), for
            about 1.22x the time per step; the same gradients
            up to float32 round-off.
        """
        if not isinstance(low_memory, bool):
            raise TypeError(f"`low_memory` must be True or False, got {low_memory!r}")
        x = self._images(images)
        steps, batch_size, lr, seed, threads, log_every, ema_decay, clip, decay = _fit_numbers(
            steps, batch_size, lr, seed, threads, log_every, ema_decay, clip_grad_norm,
            weight_decay, callback)
        warmup, test_limit = _integer("warmup", warmup, low=0), _integer("test_limit", test_limit, low=0)
        self._grey = x.shape[3] == 1 and np.asarray(images).ndim == 3
        lab = _labels(labels, len(x))
        if test_images is None:
            tx, tlab = x[:1], None if lab is None else lab[:1]
        else:
            tx = self._images(test_images, "test_images")
            tlab = _labels(test_labels, len(tx), "test_labels")
        report, close = _reporter(progress, callback)
        try:
            core, pending = _core.fit_images(
                self.levels, self.steps_per_level, self.net_width, self.coupling, self.permutation,
                int(self.classes or 0), self.class_conditioning, self.n_bits, x, lab, tx, tlab, steps, batch_size, lr,
                warmup, seed, None if run_dir is None else str(run_dir), False, threads,
                log_every, test_limit, ema_decay, clip, decay, low_memory, report)
        finally:
            close()
        self._core = core
        if pending is not None:
            raise pending
        return self

    def _fitted(self):
        if self._core is None:
            raise RuntimeError("this ImageGlow is not fitted: call fit() or glowflow.load()")
        return self._core

    def _out(self, px):
        return px[..., 0] if self._grey else px

    def bits_per_dim(self, images, labels=None):
        """Bits/dim of each image (one seeded dequantisation draw), float64 (N,)."""
        x = self._images(images)
        return self._fitted().bits_per_dim(x, _labels(labels, len(x)))

    def sample(self, n, temperature=0.7, label=None, guidance=None, seed=None):
        """n images, uint8 [n, H, W, C] ([n, H, W] for grey input).

        temperature : the prior's standard deviation (Glow's samples use 0.7).
        label : the class to sample (class-conditional models); guidance : its weight (1: the
            model's class-conditional prior; above 1 pushes samples towards the class).
        """
        n = _integer("n", n, low=0)
        temperature = _number("temperature", temperature)
        label = _integer("label", label, low=0, none=True)
        g = None if guidance is None else _number("guidance", guidance)
        return self._out(self._fitted().sample(n, temperature, label, g, _seed(seed)))

    def encode(self, images, labels=None):
        """The latents of every level: a list of float32 arrays [N, C_l, H_l, W_l], one per
        level (the split-off halves, then the top), of the images at their bins' centres.
        ``decode(encode(x)) == x`` exactly. A model with ``class_conditioning="couplings"``
        encodes for ``labels`` (the null class without them); other models ignore them."""
        x = self._images(images)
        return self._fitted().encode(x, _labels(labels, len(x)))

    def decode(self, latents, labels=None):
        """The images of latents (a list as :meth:`encode` gives it), for ``labels`` as in
        :meth:`encode`."""
        if not isinstance(latents, (list, tuple)):
            raise TypeError("`latents` must be a list of arrays, one per level, as encode() gives")
        zs = [np.ascontiguousarray(z, dtype=np.float32) for z in latents]
        n = zs[0].shape[0] if zs else 0
        return self._out(self._fitted().decode(zs, _labels(labels, n)))

    @property
    def figures(self):
        """Steps of the fit, whether it was interrupted, and its summary (test bits/dim...)."""
        return json.loads(self._fitted().figures_json())

    def save(self, path, overwrite=False):
        """Save into the directory `path` (read by glowflow.load and the command line's
        ``eval`` and ``sample``); ``overwrite`` as in :meth:`VectorFlow.save`."""
        _check_save(path, overwrite)
        self._fitted().save(str(path))


def load(path):
    """Load what ``save`` writes, or a command-line run directory (``train2d`` or ``train``):
    a :class:`VectorFlow` or an :class:`ImageGlow`. A missing path raises FileNotFoundError."""
    if not os.path.exists(os.fspath(path)):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file or directory")
    core = _core.load(os.fspath(path))
    cfg = json.loads(core.config_json())
    if isinstance(core, _core.VectorCore):
        f = VectorFlow(cfg["features"], cfg["context"], cfg["model"], cfg["flow_steps"], cfg["net_width"],
                       cfg["net_depth"], cfg["coupling"], cfg["permutation"], cfg["spline_bins"],
                       cfg["context_embedding"], cfg["spline_affine"])
        names = core.columns()
        f._core, f.columns, f.context_columns = core, names[:f.features], names[f.features:]
        default = [f"x{i}" for i in range(len(names))]
        f._named = names != default and not all(n.startswith("c") and n[1:].isdigit() for n in names)
        return f
    g = ImageGlow(cfg["levels"], cfg["steps_per_level"], cfg["net_width"], cfg["coupling"],
                  cfg["permutation"], cfg["classes"] or None, cfg["n_bits"],
                  cfg["class_conditioning"] if cfg["classes"] else None)
    g._core, g._grey = core, cfg["channels"] == 1
    return g
