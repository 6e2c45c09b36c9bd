"""glowflow: Glow-family normalizing flows in Rust, numpy in and out.

>>> import numpy as np, glowflow
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(512, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]])
>>> flow = glowflow.VectorFlow(features=2, flow_steps=4, net_width=16)
>>> flow = flow.fit(X, steps=50, batch_size=128, lr=1e-3, progress=False)
>>> flow.log_prob(X[:3]).shape
(3,)
>>> flow.sample(5, seed=1).shape
(5, 2)
"""

import json
import sys

import numpy as np

from . import _core

__all__ = ["VectorFlow", "ImageGlow", "load"]
__version__ = _core.__version__


def _matrix(x, name):
    """Any array-like (numpy, pandas, a CPU torch tensor) as float64 [n, w], and its column names."""
    columns = None
    if hasattr(x, "columns") and hasattr(x, "to_numpy"):
        columns = [str(c) for c in x.columns]
        x = x.to_numpy()
    elif hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: not an array of numbers ({e})") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [rows, columns], got shape {a.shape}")
    return np.ascontiguousarray(a), columns


def _reporter(progress, callback):
    """The progress callback the core calls with (step, steps, loss, lr, rows_per_second)."""
    bar = None
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
    """A Glow (or Real NVP) flow on vectors: rows of a table, optionally conditioned on context columns."""

    def __init__(self, features, context=0, model="glow", flow_steps=32, net_width=64, net_depth=2,
                 coupling="tanh", permutation="lu"):
        self.features, self.context = int(features), int(context)
        self.model, self.flow_steps, self.net_width, self.net_depth = model, int(flow_steps), int(net_width), int(net_depth)
        self.coupling, self.permutation = coupling, permutation
        self._core = None
        self.columns = None

    def __repr__(self):
        return (f"VectorFlow(features={self.features}, context={self.context}, model={self.model!r}, "
                f"flow_steps={self.flow_steps}, net_width={self.net_width}, net_depth={self.net_depth}, "
                f"coupling={self.coupling!r}, permutation={self.permutation!r})")

    def fit(self, X, context=None, steps=20000, batch_size=1024, lr=1e-4, seed=0, validation=None,
            progress=True, callback=None, run_dir=None, threads=None, log_every=100):
        """Fit by maximum likelihood; returns self. Ctrl-C stops at the next step and keeps that model."""
        x, names = _matrix(X, "X")
        if x.shape[1] != self.features:
            raise ValueError(f"X has {x.shape[1]} columns; this flow models features={self.features}")
        names = names or [f"x{i}" for i in range(self.features)]
        ctx_names = []
        if context is not None:
            c, cnames = _matrix(context, "context")
            if c.shape != (x.shape[0], self.context):
                raise ValueError(f"context has shape {c.shape}; expected ({x.shape[0]}, {self.context})")
            ctx_names = cnames or [f"c{i}" for i in range(self.context)]
            x = np.hstack([x, c])
        elif self.context:
            raise ValueError(f"this flow is conditioned on context={self.context} values: give context=")
        val = None
        if validation is not None:
            vx, vc = validation if isinstance(validation, tuple) else (validation, None)
            val, _ = _matrix(vx, "validation")
            if vc is not None:
                val = np.hstack([val, _matrix(vc, "validation context")[0]])
        report, close = _reporter(progress, callback)
        try:
            core, pending = _core.fit_vectors(
                self.model, self.flow_steps, self.net_width, self.net_depth, self.coupling,
                self.permutation, names + ctx_names, x, ctx_names, val, int(steps), int(batch_size),
                float(lr), int(seed), None if run_dir is None else str(run_dir), False, threads,
                int(log_every), report)
        finally:
            close()
        self._core, self.columns = core, names + ctx_names
        if pending is not None:
            raise pending
        return self

    def _fitted(self):
        if self._core is None:
            raise RuntimeError("this VectorFlow is not fitted: call fit() or glowflow.load()")
        return self._core

    def log_prob(self, X, context=None):
        """log p(x | context) of each row, nats, float64 (N,)."""
        x, _ = _matrix(X, "X")
        if context is not None:
            x = np.hstack([x, _matrix(context, "context")[0]])
        return self._fitted().log_prob(np.ascontiguousarray(x))

    def sample(self, n, context=None, temperature=1.0, seed=None):
        """n samples (n, features); context: one row for all samples or one per sample."""
        c = None if context is None else _matrix(context, "context")[0]
        seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else int(seed)
        x, _ = self._fitted().sample(int(n), float(temperature), c, seed)
        return x

    @property
    def figures(self):
        """Steps, training and test NLL, seconds of the fit (a dict)."""
        return json.loads(self._fitted().figures_json())

    def save(self, path):
        """Save into the directory `path` (read by glowflow.load and the command line)."""
        self._fitted().save(str(path))


class ImageGlow:
    """Multi-scale Glow on images: uint8 [N, H, W] or [N, H, W, C]."""

    def __init__(self, levels=3, steps_per_level=6, net_width=64, coupling="affine", permutation="lu",
                 classes=None, n_bits=8):
        self.levels, self.steps_per_level, self.net_width = int(levels), int(steps_per_level), int(net_width)
        self.coupling, self.permutation = coupling, permutation
        self.classes, self.n_bits = classes, int(n_bits)
        self._core, self._grey = None, False

    def __repr__(self):
        return (f"ImageGlow(levels={self.levels}, steps_per_level={self.steps_per_level}, "
                f"net_width={self.net_width}, coupling={self.coupling!r}, permutation={self.permutation!r}, "
                f"classes={self.classes}, n_bits={self.n_bits})")

    @staticmethod
    def _images(images):
        a = np.asarray(images)
        if a.dtype != np.uint8:
            raise TypeError(f"images must be uint8, got {a.dtype}")
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4:
            raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {a.shape}")
        return np.ascontiguousarray(a)

    @staticmethod
    def _labels(labels):
        return None if labels is None else np.ascontiguousarray(np.asarray(labels, dtype=np.uint8))

    def fit(self, images, labels=None, steps=1000, batch_size=64, lr=1e-3, warmup=200, seed=0,
            test_images=None, test_labels=None, progress=True, callback=None, run_dir=None,
            threads=None, log_every=10, test_limit=0):
        """Fit by maximum likelihood (loss in bits/dim); returns self."""
        x = self._images(images)
        self._grey = np.asarray(images).ndim == 3
        if test_images is None:
            # No held-out images: the fit's summary is measured on the first training image.
            test_images = x[:1]
            test_labels = None if labels is None else np.asarray(labels)[:1]
        tx = self._images(test_images)
        report, close = _reporter(progress, callback)
        try:
            core, pending = _core.fit_images(
                self.levels, self.steps_per_level, self.net_width, self.coupling, self.permutation,
                int(self.classes or 0), self.n_bits, x, self._labels(labels), tx, self._labels(test_labels),
                int(steps), int(batch_size), float(lr), int(warmup), int(seed),
                None if run_dir is None else str(run_dir), False, threads, int(log_every),
                int(test_limit), report)
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
        """Bits/dim of each image, float64 (N,)."""
        return self._fitted().bits_per_dim(self._images(images), self._labels(labels))

    def sample(self, n, temperature=0.7, label=None, guidance=None, seed=None):
        """n images uint8 [n, H, W, C] ([n, H, W] for grey input)."""
        seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else int(seed)
        g = None if guidance is None else float(guidance)
        return self._out(self._fitted().sample(int(n), float(temperature), label, g, seed))

    def encode(self, images):
        """The latents of every level (a list of float32 arrays)."""
        return self._fitted().encode(self._images(images))

    def decode(self, latents):
        """The images of latents (as encode gives them)."""
        return self._out(self._fitted().decode([np.ascontiguousarray(z, dtype=np.float32) for z in latents]))

    def save(self, path):
        """Save into the directory `path`."""
        self._fitted().save(str(path))


def load(path):
    """Load what save() writes, or a command-line run directory (vector or image)."""
    core = _core.load(str(path))
    cfg = json.loads(core.config_json())
    if isinstance(core, _core.VectorCore):
        f = VectorFlow(cfg["features"], cfg["context"], cfg["model"], cfg["flow_steps"], cfg["net_width"],
                       cfg["net_depth"], cfg["coupling"], cfg["permutation"])
        f._core, f.columns = core, core.columns()
        return f
    g = ImageGlow(cfg["levels"], cfg["steps_per_level"], cfg["net_width"], cfg["coupling"],
                  cfg["permutation"], cfg["classes"] or None, cfg["n_bits"])
    g._core, g._grey = core, cfg["channels"] == 1
    return g
