r"""Monotone operator equilibrium (monDEQ) problems (Winston & Kolter, 2020).

.. math::

    z^\star = \operatorname{relu}(W z^\star + U x + b), \qquad
    W = (1 - m) I - A^\top A + B - B^\top,

with :math:`A, B` dense ``(d, d)`` matrices or square linear maps (convolutions) and
:math:`m > 0`. Then :math:`I - W = m I + A^\top A - (B - B^\top)` has symmetric part
:math:`\succeq m I`: the operator :math:`G(z) = (I - W) z - c` is :math:`m`-strongly monotone,
and the equilibrium (:math:`0 \in G(z) + N_{\ge 0}(z)`) exists and is unique for every input.
:math:`W` is not symmetric, so no objective is minimised; ``backward="auto"`` solves the
backward system with Peaceman--Rachford on the adjoint problem when the forward uses it
(*Backward* below), with GMRES after forward-backward.

**Solving** (the engine's ``solve_map``): forward-backward splitting
:math:`z \leftarrow \operatorname{relu}(z - \alpha G(z)) = \operatorname{relu}((1 - \alpha) z +
\alpha (W z + c))`, a contraction with factor :math:`\sqrt{1 - 2\alpha m + \alpha^2 L^2}`,
:math:`L = \|I - W\|`, for every :math:`0 < \alpha < 2m/L^2`; the default
:math:`\alpha = m/L^2` minimises that factor. It runs on :math:`y = z / s`,
:math:`s = \min(\alpha, 1)`, so that the solver's test :math:`\|y - \text{FB}(y)\| \le` tol
implies the equilibrium residual :math:`\|z - \operatorname{relu}(W z + c)\| \le` tol: for a
projection :math:`P`, :math:`t \mapsto \|z - P(z - t d)\|` is nondecreasing and
:math:`t \mapsto \|z - P(z - t d)\| / t` nonincreasing, so the residual at :math:`t = 1` is at
most :math:`\max(1, 1/\alpha)` times the splitting's. (Both splittings scale by a further
:math:`1 + 2^{-8}`: the two residuals can be equal in exact arithmetic, and the margin absorbs
their rounding.)

**Peaceman--Rachford** (``splitting="peaceman_rachford"``, what the monDEQ paper uses for
convolutions): with :math:`F(z) = (I - W) z - c` and :math:`R_F = (I + \alpha F)^{-1}`, i.e.
:math:`R_F(v) = M^{-1}(v + \alpha c)`, :math:`M = I + \alpha(I - W)`, and :math:`R_G =
\operatorname{relu}` (the resolvent of :math:`N_{\ge 0}`), one step on the splitting's own
variable :math:`u` is

.. math::

    z = \operatorname{relu}(u), \quad u_{1/2} = 2z - u, \quad z_{1/2} = R_F(u_{1/2}), \quad
    u \leftarrow 2 z_{1/2} - u_{1/2},

the composition of the reflected resolvents :math:`(2R_G - I)(2R_F - I)`; for an
:math:`m`-strongly monotone, :math:`L`-Lipschitz :math:`F` it is a contraction with factor
:math:`\sqrt{1 - 4\alpha m / (1 + \alpha L)^2}` for every :math:`\alpha > 0`, and
:math:`\operatorname{relu}(u^\star) = z^\star`. The default step is
:math:`\alpha = 1/\sqrt{m L}`, :math:`L = \|I - W\|_2` computed exactly (as the resolvent is):
the step that minimises the contraction factor of the reflected resolvent :math:`2R_F - I`
when :math:`F` is the gradient of an :math:`m`-strongly convex, :math:`L`-smooth function
(Giselsson & Boyd, 2017); the monDEQ's :math:`F` also has a skew part, so here it is a
heuristic. The monDEQ authors use
:math:`\alpha = 1` and tune it by halving while the forward steps drop; on a trained
Fashion-MNIST conv layer (:math:`m = 1`, :math:`L = 26`, 256 test images, tol
:math:`10^{-3}`) the mean steps to tol were 50 at :math:`\alpha = 1`, 27 at 1/2, 22 at 0.35, 27
at 1/4 and 30 at :math:`1/\sqrt{mL} = 0.196`; on one trained longer (:math:`L = 87`) 43 at the
default 0.107, 41 at 0.13 (the best) and 105 at 1/2: near the best with no search.
:math:`M^{-1}` is applied exactly, computed once
per call (a step then costs one application of :math:`M^{-1}` and no product with
:math:`W`): for dense
:math:`A, B` an explicit inverse (the symmetric part of :math:`M` is :math:`\succeq (1 + \alpha
m) I`, so :math:`\|M^{-1}\| \le 1` and the inverse is as accurate as a solve); for circular
convolutions (:class:`optjax.linalg.convolution.Conv2D` with ``padding="circular"``) by the FFT, where
:math:`M` is block-diagonal with one :math:`c \times c` complex matrix per frequency,
:math:`(1 + \alpha m) I + \alpha(\hat A_f^H \hat A_f - \hat B_f + \hat B_f^H)`, inverted once.
(A zero-padded convolution is not diagonalised by the DFT: use forward-backward there.)

*Stopping test and returned point.* The step's residual is :math:`d = u - u^+ = 2(z -
z_{1/2})`. The point handed to the engine is :math:`z_{1/2}` (``equilibrium_point``, one more
resolvent), where the equilibrium residual :math:`r = z_{1/2} - \operatorname{relu}(W z_{1/2} +
c)` costs no product with :math:`W`: from :math:`M z_{1/2} = u_{1/2} + \alpha c`,
:math:`W z_{1/2} + c = z_{1/2} + (z_{1/2} - u_{1/2})/\alpha`. With :math:`e = z_{1/2} - z`
this is :math:`z + (u - z)/\alpha + (1 + 1/\alpha) e`, and :math:`z = \operatorname{relu}(z + (u
- z)/\alpha)` (where :math:`u > 0`, :math:`u = z`; elsewhere :math:`z = 0 \ge u`); a check of the
four sign cases (:math:`u_i > 0` or not, :math:`(W z_{1/2} + c)_i > 0` or not) shows that every
:math:`r_i` lies between :math:`e_i` and :math:`-e_i/\alpha`. So

.. math:: \|z_{1/2} - \operatorname{relu}(W z_{1/2} + c)\| \le \max(1, 1/\alpha)\,\|e\| =
          \kappa\,\|d\|, \qquad \kappa = \max(1, 1/\alpha) / 2,

for any :math:`u` (also an extrapolated one), with equality when every component stays active
and :math:`\alpha \le 1`. The solver runs on :math:`y = \kappa u`, so its test :math:`\|y -
\text{PR}(y)\| \le` tol implies the equilibrium residual :math:`\le` tol at :math:`z_{1/2}`.
(At :math:`z = \operatorname{relu}(u)` the same argument needs :math:`\|M\|_2/(2\alpha)`, up to
:math:`1 + \alpha L` times larger: 6 to 11 on trained Fashion-MNIST conv layers, where stopping
at :math:`z_{1/2}` saves 14-31% of the forward steps.)

*Backward.* The backward system :math:`(I - J^\top) v = g`, :math:`J^\top v = W^\top D v`,
:math:`D = \operatorname{diag}(\operatorname{relu}'(Wz + c)) \in \{0, 1\}`, is again a strongly
monotone inclusion: :math:`w = Dv` solves :math:`0 \in F(w) + N_V(w)`, :math:`F(w) = (I -
W^\top) w - g`, :math:`V = \{w : (I - D) w = 0\}`, and :math:`v = g + W^\top w`.
Peaceman--Rachford with :math:`R_F = M^{-\top}(\cdot + \alpha g)` (the transposed inverse, per
frequency its conjugate transpose) and :math:`R_G = D` (the projection onto :math:`V`) solves it
at the forward's rate and cost per step (``backward="splitting"``, what ``"auto"`` picks): one
step is :math:`u_{1/2} = 2Du - u`, :math:`w_{1/2} = R_F(u_{1/2})`, :math:`u \leftarrow 2w_{1/2}
- u_{1/2}`, with residual :math:`d = 2(Du - w_{1/2})`. As in the forward, the answer is taken
at the half point, :math:`v = g + W^\top w_{1/2}`: with :math:`e = w_{1/2} - Du` and
:math:`F(w_{1/2}) = (u_{1/2} - w_{1/2})/\alpha` (from :math:`M^\top w_{1/2} = u_{1/2} + \alpha
g`), the system's residual is :math:`g - (I - W^\top D) v = -W^\top((I - D) e - De/\alpha)`, so

.. math:: \|g - (I - J^\top) v\| \le \|W\|\,\max(1, 1/\alpha)\,\|d\| / 2,

with :math:`\|W\| \le (1 + \alpha + \|M\|) / \alpha` (:math:`W = ((1 + \alpha) I - M) /
\alpha`): the stopping test, which needs no product with :math:`W`; the exact residual is
computed once after the loop.

**The map** the engine certifies and differentiates is :math:`S(z) = \operatorname{relu}(W z +
c)` itself (same fixed points): ``info.residual`` is the equilibrium residual, and the backward
uses :math:`J^\top v = W^\top (D v)`, :math:`D = \operatorname{diag}(\operatorname{relu}'(Wz +
c))`, with the adjoints of :math:`A, B`.

**Certificate**: for the returned :math:`x = \operatorname{relu}(W z + c)` one has
:math:`W(z - x) \in G(x) + N_{\ge 0}(x)`, and :math:`G + N` is :math:`m`-strongly monotone, so
:math:`\|x - z^\star\| \le \|W (z - x)\| / m` (the ``distance_bound``).

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import optjax
  >>> ka, kb, kx = jax.random.split(jax.random.PRNGKey(0), 3)
  >>> A = 0.3 * jax.random.normal(ka, (4, 4))
  >>> B = 0.3 * jax.random.normal(kb, (4, 4))     # W = (1 - m) I - A^T A + B - B^T
  >>> problem = optjax.mondeq.MonDEQProblem(A, B, m=0.5, splitting="peaceman_rachford")
  >>> z, info = optjax.equilibrium(problem, jax.random.normal(kx, (2, 4)))
  >>> z.shape, bool(info.converged.all())
  ((2, 4), True)
  >>> bool((info.certificate.distance_bound < 1e-3).all())    # ||z - z*|| <= this
  True
"""

from optjax.families.mondeq.map import SPLITTINGS, AdjointSplitting, MonDEQMap
from optjax.families.mondeq.operators import (Resolvent, apply_w, lipschitz, peaceman_rachford_step,
                                              resolvent, step_size)
from optjax.families.mondeq.problem import MonDEQProblem

__all__ = ["MonDEQProblem", "MonDEQMap", "SPLITTINGS", "Resolvent", "AdjointSplitting", "resolvent",
           "step_size", "peaceman_rachford_step", "lipschitz", "apply_w"]
