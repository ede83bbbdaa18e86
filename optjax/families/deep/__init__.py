r"""Deep OptEq: a chain of layers with feed-forward and feedback couplings (docs/maths.md,
section 4).

Layers :math:`l = 1..L` with states :math:`s_l` (vectors, or feature maps of any shape) and
couplings :math:`A_l` from layer :math:`l` to layer :math:`l + 1` (dense matrices, or any linear
map of :mod:`optjax.linalg.linear_map`: a convolution, a strided convolution between resolutions),
:math:`l = 1..L-1`:

.. math::

    s_l = \sigma_l\big(A_{l-1} s_{l-1} + A_l^\top s_{l+1} + b_l\big), \qquad
    b_1 = U x + b \ (\text{the injection}), \quad A_0 = A_L = 0.

This is :math:`s = \sigma(K s + b)` with :math:`K` symmetric block-tridiagonal (:math:`A_l`
below the diagonal, :math:`A_l^\top` above), the prox-gradient step with step 1 on

.. math::

    H(s) = \sum_l \Big[\textstyle\sum_i f_l(s_{l,i}) + \tfrac12\|s_l\|^2 - b_l^\top s_l\Big]
           - \sum_l \langle s_{l+1}, A_l s_l \rangle,

with :math:`f_l` the penalty of :math:`\sigma_l = \operatorname{prox}_{f_l}`. Since
:math:`|s^\top K s| \le \sum_l (\|A_{l-1}\| + \|A_l\|)\|s_l\|^2`,

.. math:: \|K\| \le 1 - m, \qquad m = 1 - \max_l\big(\|A_{l-1}\| + \|A_l\|\big)

(the *convexity margin*): for :math:`m > 0`, :math:`H` is :math:`m`-strongly convex, its
minimiser is the unique equilibrium, and the Jacobi map :math:`J(s) = \sigma(K s + b)` is an
:math:`(1 - m)`-contraction. Two maps share these fixed points:

* Jacobi: all layers at once; prox-gradient with step :math:`1 < 2 / \|I - K\|`, so :math:`H`
  decreases monotonically.
* Gauss--Seidel: layers :math:`1..L` in turn, each using the newest :math:`s_{l-1}` (a forward
  pass with feedback); each layer update exactly minimises :math:`H` over :math:`s_l`
  (block-coordinate descent), so :math:`H` decreases monotonically.

**Certificate** at a returned point :math:`s`, with :math:`r_J = \|s - J(s)\|`: the contraction
gives :math:`\|s - s^\star\| \le r_J / m`; and :math:`K(s - J s) \in \partial H(J s)` gives
:math:`H(J s) - H^\star \le (1 - m)^2 r_J^2 / (2m)`, so
:math:`H(s) - H^\star \le \max(0, H(s) - H(J s)) + (1 - m)^2 r_J^2 / (2m)`.

Both sweeps are solved by the engine (:func:`optjax.equilibrium`); the implicit gradient depends
only on the fixed point, so both give the same gradients. The Jacobian of either map is not
symmetric (:math:`D K` for Jacobi, :math:`D = \operatorname{diag}\sigma'`), so the backward
system is solved with GMRES (default) or fixed-point iteration, not conjugate gradients;
:math:`J^\top` is applied with the couplings' adjoints (one product with every :math:`A_l` and
:math:`A_l^\top`, like a sweep), never by differentiating the map.

States are handled per sample as one flat vector :math:`(s_1, \dots, s_L)` (each layer
raveled); :func:`equilibrium` returns them split per layer, in their shapes.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import optjax
  >>> k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  >>> A1 = jax.random.normal(k1, (6, 4))                 # layer 1 (4 units) -> layer 2 (6)
  >>> couplings = optjax.deep.normalize([A1], rho=0.9)   # ||A_(l-1)|| + ||A_l|| <= 0.9
  >>> U = jax.random.normal(k2, (4, 3))
  >>> problem = optjax.deep.DeepProblem(couplings, U, sweep="gauss_seidel")
  >>> states, info = optjax.deep.equilibrium(problem, jax.random.normal(k3, (2, 3)))
  >>> [s.shape for s in states], bool(info.converged.all())
  ([(2, 4), (2, 6)], True)
"""

from optjax.families.deep.normalization import (convexity_margin, coupling_norms, normalization_scales,
                                                normalize)
from optjax.families.deep.problem import SWEEPS, DeepProblem
from optjax.families.deep.solve import equilibrium, objective, states_of
from optjax.families.deep.sweeps import gauss_seidel_map, jacobi_map, split

__all__ = [
    "DeepProblem",
    "SWEEPS",
    "jacobi_map",
    "gauss_seidel_map",
    "objective",
    "convexity_margin",
    "coupling_norms",
    "normalize",
    "normalization_scales",
    "split",
    "states_of",
    "equilibrium",
]
