"""Types of the glowflow package (the documentation is in glowflow/__init__.py)."""

import os
from typing import Any, Callable, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = Any  # numpy arrays, nested lists, pandas DataFrames, CPU torch tensors
PathLike = Union[str, os.PathLike[str]]
Callback = Callable[[int, float], None]

class VectorFlow:
    features: int
    context: int
    model: str
    flow_steps: int
    net_width: int
    net_depth: int
    coupling: str
    permutation: str
    spline_bins: int
    context_embedding: int
    spline_affine: bool
    columns: Optional[list[str]]
    context_columns: list[str]
    def __init__(
        self,
        features: int,
        context: int = 0,
        model: Literal["glow", "realnvp"] = "glow",
        flow_steps: int = 32,
        net_width: int = 64,
        net_depth: int = 2,
        coupling: Literal["tanh", "sigmoid", "additive", "spline"] = "tanh",
        permutation: Literal["lu", "plain", "shuffle", "reverse"] = "lu",
        spline_bins: int = 8,
        context_embedding: int = 0,
        spline_affine: bool = True,
    ) -> None: ...
    def fit(
        self,
        X: ArrayLike,
        context: Optional[ArrayLike] = None,
        steps: int = 20000,
        batch_size: int = 1024,
        lr: float = 1e-4,
        seed: int = 0,
        validation: Union[None, ArrayLike, Tuple[ArrayLike, ArrayLike]] = None,
        progress: bool = True,
        callback: Optional[Callback] = None,
        run_dir: Optional[PathLike] = None,
        threads: Optional[int] = None,
        log_every: int = 100,
        ema_decay: float = 0.0,
        clip_grad_norm: float = 0.0,
        weight_decay: float = 0.0,
    ) -> "VectorFlow": ...
    def log_prob(self, X: ArrayLike, context: Optional[ArrayLike] = None) -> npt.NDArray[np.float64]: ...
    @overload
    def sample(
        self, n: int, context: Optional[ArrayLike] = None, temperature: float = 1.0,
        seed: Optional[int] = None, as_frame: Literal[False] = False,
    ) -> npt.NDArray[np.float64]: ...
    @overload
    def sample(
        self, n: int, context: Optional[ArrayLike] = None, temperature: float = 1.0,
        seed: Optional[int] = None, *, as_frame: Literal[True],
    ) -> Any: ...
    @property
    def figures(self) -> dict[str, Any]: ...
    def save(self, path: PathLike, overwrite: bool = False) -> None: ...

class ImageGlow:
    levels: int
    steps_per_level: int
    net_width: int
    coupling: str
    permutation: str
    classes: Optional[int]
    n_bits: int
    class_conditioning: str
    def __init__(
        self,
        levels: int = 3,
        steps_per_level: int = 6,
        net_width: int = 64,
        coupling: Literal["affine", "additive", "spline"] = "affine",
        permutation: Literal["lu", "plain", "shuffle", "reverse"] = "lu",
        classes: Optional[int] = None,
        n_bits: int = 8,
        class_conditioning: Optional[Literal["couplings", "prior"]] = None,
    ) -> None: ...
    def fit(
        self,
        images: ArrayLike,
        labels: Optional[ArrayLike] = None,
        steps: int = 1000,
        batch_size: int = 64,
        lr: float = 1e-3,
        warmup: int = 200,
        seed: int = 0,
        test_images: Optional[ArrayLike] = None,
        test_labels: Optional[ArrayLike] = None,
        progress: bool = True,
        callback: Optional[Callback] = None,
        run_dir: Optional[PathLike] = None,
        threads: Optional[int] = None,
        log_every: int = 10,
        test_limit: int = 0,
        ema_decay: float = 0.999,
        clip_grad_norm: float = 50.0,
        weight_decay: float = 0.0,
        low_memory: bool = False,
    ) -> "ImageGlow": ...
    def bits_per_dim(self, images: ArrayLike, labels: Optional[ArrayLike] = None) -> npt.NDArray[np.float64]: ...
    def sample(
        self, n: int, temperature: float = 0.7, label: Optional[int] = None,
        guidance: Optional[float] = None, seed: Optional[int] = None,
    ) -> npt.NDArray[np.uint8]: ...
    def encode(
        self, images: ArrayLike, labels: Optional[ArrayLike] = None
    ) -> list[npt.NDArray[np.float32]]: ...
    def decode(
        self,
        latents: Sequence[npt.NDArray[np.float32]],
        labels: Optional[ArrayLike] = None,
    ) -> npt.NDArray[np.uint8]: ...
    @property
    def figures(self) -> dict[str, Any]: ...
    def save(self, path: PathLike, overwrite: bool = False) -> None: ...

def load(path: PathLike) -> Union[VectorFlow, ImageGlow]: ...
