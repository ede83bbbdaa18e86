"""LAPACK on CPU: one thread for the factorisations optjax runs eagerly.

JAX runs ``eigvalsh``, ``svd`` and ``cholesky`` on the CPU through scipy's OpenBLAS. With its
default of one thread per core, a 256 x 256 ``eigvalsh`` took 814 ms on a 2-core machine busy
with other work (threads spinning for cores they cannot get) and 3.5 ms with one thread; on an
idle machine one thread costs about 1 ms more. :func:`single_threaded` limits the BLAS thread
pools for the duration of a block (threadpoolctl, nothing global); the ``optjax`` command runs
under it, and so do the norms optjax computes eagerly (``OptEqProblem.with_norm``, the norm cache
of eager ``equilibrium`` calls). Inside your own ``jit`` the limit of the process applies: set
``OPENBLAS_NUM_THREADS=1`` or use ``threadpoolctl`` yourself on a shared CPU machine.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["single_threaded"]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Limit the BLAS/LAPACK thread pools to one thread inside the block."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; never fatal
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
