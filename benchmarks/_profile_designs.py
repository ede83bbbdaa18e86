"""The designs of ``train_step_profile.py``: the :class:`Design` record and the named designs
(see that script's docstring for what a design is and how the profile, table and training use it).
"""

from __future__ import annotations

import dataclasses
import pathlib

INPUT_SHAPE, NUM_CLASSES, BATCH = (28, 28, 1), 10, 64
STEPS_PER_EPOCH = 60000 // BATCH  # 937
DATA_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


# -- designs -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Design:
    """A convolutional classifier built from the core (see the module docstring).

    ``stem``: ``(kernel, channels, stride)`` convolutions with relu ('SAME' padding).
    ``injection``: ``(kernel, stride)`` of the linear convolution giving ``U x + b``.
    ``family``: ``"opteq"`` (``channels = (c, hidden)``: z has c channels, W maps c -> hidden) or
    ``"deep"`` (``channels``: per layer; ``strides``: per coupling, 2 halves the grid).
    ``pool``: average pooling before the head; ``head``: hidden width of a 2-layer head (0: one
    dense layer). ``norm``: ``"power"`` (one power step per call, no certified norm) or
    ``"certified"`` (the FFT norm each step: rescaled to ``||W|| <= rho`` exactly, bounds;
    ``"certified_at_norm"``: the same with the gradient stopped at the norm, not the weight)."""

    name: str
    family: str
    channels: tuple
    stem: tuple = ()
    injection: tuple = (3, 1)
    strides: tuple = ()
    kernel: int = 3
    pool: int = 2
    head: int = 0
    solver: str = "nesterov"
    tol: float = 1e-3
    max_steps: int = 50
    backward: str = "gmres"
    backward_tol: float | None = None
    backward_steps: int = 30
    norm: str = "power"
    sweep: str = "gauss_seidel"
    rho: float = 0.95
    dense: bool = False  # OptEqDense on the flattened image: channels = (features, hidden)
    note: str = ""

    @property
    def spatial(self) -> tuple[int, int]:
        """The equilibrium's (first layer's) grid."""
        size = INPUT_SHAPE[0]
        for _, _, s in self.stem:
            size //= s
        size //= self.injection[1]
        return (size, size)


_CG = dict(backward="cg", backward_tol=1e-2, backward_steps=20)
# dense OptEq as in the Fashion-MNIST dense benchmark (width 69, hidden 138): as landed
# (Nesterov, GMRES capped at 30, the exact norm every step) and with this work's defaults
# (safeguarded Anderson, CG, the power-iteration norm in training)
_DENSE = dict(dense=True, pool=1, channels=(69, 138))
_FP = dict(solver="fixed_point", backward="fixed_point", backward_tol=1e-2, backward_steps=30)
_STEM = ((3, 32, 2),)  # 28x28x1 -> 14x14x32
DESIGNS = {d.name: d for d in (
    Design("current_as_is", "opteq", (32, 64), norm="certified_at_norm",
           note="today's classifier: 28x28 equilibrium, TrainConfig defaults"),
    Design("current", "opteq", (32, 64), norm="certified",
           note="today's classifier, the norm's gradient stopped at the weight"),
    Design("current_power", "opteq", (32, 64), note="current, no certified norm per step"),
    Design("current_cg", "opteq", (32, 64), **_CG, note="current, power norm, CG to 1e-2"),
    Design("opteq14_gmres", "opteq", (32, 64), stem=_STEM, head=32,
           note="strided stem to 14x14, GMRES (default tol)"),
    Design("opteq14", "opteq", (32, 64), stem=_STEM, head=32, **_CG,
           note="strided stem to 14x14, CG to 1e-2"),
    Design("opteq14_certified", "opteq", (32, 64), stem=_STEM, head=32, norm="certified", **_CG,
           note="recommended 'opteq' conv: opteq14, certified every step"),
    Design("opteq14_tol1e-2", "opteq", (32, 64), stem=_STEM, head=32, tol=1e-2, **_CG),
    Design("opteq14_anderson", "opteq", (32, 64), stem=_STEM, head=32, solver="anderson", **_CG),
    Design("opteq14_w48", "opteq", (48, 96), stem=_STEM, **_CG),
    Design("opteq7", "opteq", (48, 96), stem=((3, 32, 2), (3, 48, 2)), pool=1, **_CG,
           note="equilibrium at 7x7"),
    Design("deep14_7_certified", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1,
           norm="certified", **_FP, note="recommended 'deep_opteq' conv: 14x14x32 -> 7x7x64 "
           "-> 7x7x64, differentiable certified FFT norms (as DeepOptEq)"),
    Design("deep14_7", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1, **_FP,
           note="deep14_7_certified with power-iteration norms"),
    Design("deep14_7_gmres", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1,
           solver="fixed_point", backward="gmres", backward_tol=1e-2, backward_steps=30),
    Design("deep14_7_jacobi", "deep", (32, 64, 64), stem=_STEM, strides=(2, 1), pool=1,
           sweep="jacobi", **_FP),
    Design("deep14_7_2", "deep", (32, 64), stem=_STEM, strides=(2,), pool=1, **_FP,
           note="two layers: 14x14x32 -> 7x7x64"),
    Design("dense_before", "opteq", **_DENSE, norm="certified_at_norm",
           note="dense OptEq (118,552 parameters) with the landed training defaults"),
    Design("dense_after", "opteq", **_DENSE, solver="safeguarded_anderson", **_CG,
           note="dense OptEq with this work's training defaults"),
)}
