r"""The engine: one solve for every equilibrium problem.

* :mod:`~optjax.engine.problem`: what a model family supplies (:class:`EquilibriumProblem`: its
  map, parameters, per-sample data, assumptions and certificate);
* :mod:`~optjax.engine.equilibrium`: :func:`equilibrium`, the entry point;
* :mod:`~optjax.engine.implicit`: the fixed point with implicit gradients (a ``custom_vjp``);
* :mod:`~optjax.engine.backward`: the backward modes (linear solvers of :math:`(I - J^\top) v = g`);
* :mod:`~optjax.engine.result`: the result type :class:`SolveInfo` with its status codes;
* :mod:`~optjax.engine.certificate`: the suboptimality certificate;
* :mod:`~optjax.engine.numerics`: rounding margins and checks shared with the families.
"""
