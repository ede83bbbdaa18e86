"""The only place optjax touches jaxopt.

jaxopt is no longer maintained; optjax's own solvers do not use it. The two functions below
back the reference solvers ``"jaxopt_fixed_point"`` and ``"jaxopt_anderson"``
(:mod:`optjax.solvers.jaxopt_reference`), kept to compare against; removing jaxopt means
removing this file and those two solvers. jaxopt is imported only when one of them is asked for
(:func:`load`): ``import optjax`` and every default solve work without it. Its import-time
DeprecationWarning is filtered by its exact message, nothing else is silenced.

``unroll=False`` everywhere: with implicit_diff off, jaxopt's default unrolls into a
``scan`` of ``max_steps`` conditional no-ops, which costs max_steps iterations whatever the
tolerance. Both functions solve one sample (the caller vmaps them); they return the last point
``x`` whose residual ``||x - S(x)||`` jaxopt measured, that residual, jaxopt's returned iterate,
the number of steps and the number of evaluations of S.
"""

from __future__ import annotations

import functools
import types
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from optjax.config import ConfigError

__all__ = ["load", "JaxoptRun", "fixed_point_iteration", "anderson"]


@functools.cache
def load() -> types.ModuleType:
    """The jaxopt module, imported on first use; a ConfigError saying what to do when it is
    missing or fails to import (a jax release it does not support)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"JAXopt is no longer maintained", category=DeprecationWarning
            )
            import jaxopt
    except Exception as err:  # ImportError, or jaxopt failing against this jax
        raise ConfigError(
            f"the jaxopt reference solvers need jaxopt, which could not be imported ({err!r}); "
            "install it with `pip install jaxopt` (a version that supports this jax), or use "
            "one of optjax's own solvers: fixed_point, anderson, safeguarded_anderson, nesterov, "
            "halpern") from None
    return jaxopt


class JaxoptRun(NamedTuple):
    point: jax.Array  # last point whose residual jaxopt measured
    image: jax.Array | None  # S(point) when jaxopt kept it, else None
    residual: jax.Array  # ||point - S(point)|| (Anderson) or jaxopt's error (fixed point)
    iterate: jax.Array  # what jaxopt returned
    steps: jax.Array
    evaluations: jax.Array


def fixed_point_iteration(
    fn: Callable[[jax.Array], jax.Array], z0: jax.Array, *, tol: float, max_steps: int
) -> JaxoptRun:
    """Plain iteration z <- fn(z) until ||fn(z) - z|| <= tol (jaxopt.FixedPointIteration)."""
    solver = load().FixedPointIteration(
        fixed_point_fun=lambda z: fn(z), maxiter=max_steps, tol=tol, implicit_diff=False,
        unroll=False,
    )
    out = solver.run(z0)
    # jaxopt returns fn(previous point) and the residual of the previous point, which it
    # does not keep: the caller evaluates S once more at `iterate`.
    return JaxoptRun(
        point=out.params,
        image=None,
        residual=out.state.error,
        iterate=out.params,
        steps=out.state.iter_num,
        evaluations=out.state.num_fun_eval,
    )


def anderson(
    fn: Callable[[jax.Array], jax.Array],
    z0: jax.Array,
    *,
    tol: float,
    max_steps: int,
    history: int,
    ridge: float,
    mixing: float,
) -> JaxoptRun:
    """Anderson acceleration of z <- fn(z) (jaxopt.AndersonAcceleration)."""
    # jaxopt builds its Gram matrix in the default float dtype; with x64 on, a float32 state would
    # meet float64 mixing weights inside a lax.cond and fail. Keep the history in the default
    # dtype and evaluate fn in the state's own dtype.
    dtype = z0.dtype
    work = jnp.promote_types(dtype, jnp.zeros(()).dtype)
    solver = load().AndersonAcceleration(
        fixed_point_fun=lambda z: fn(z.astype(dtype)).astype(work),
        history_size=history,
        beta=mixing,
        ridge=ridge,
        maxiter=max_steps,
        tol=tol,
        implicit_diff=False,
        unroll=False,
    )
    out = solver.run(z0.astype(work))
    state = out.state
    # The last extrapolated point and its residual sit at slot (iter_num - 1) mod history.
    pos = jnp.mod(state.iter_num - 1, history)
    point = state.params_history[pos]
    image = point + state.residuals_history[pos]
    return JaxoptRun(
        point=point.astype(dtype),
        image=image.astype(dtype),
        residual=state.error.astype(dtype),
        iterate=out.params.astype(dtype),
        steps=state.iter_num,
        evaluations=state.num_fun_eval,
    )
