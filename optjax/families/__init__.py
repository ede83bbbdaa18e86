"""The model families, one module (or small folder) each: its problem type (an
:class:`optjax.EquilibriumProblem`), its map and its objective or bounds.

* :mod:`~optjax.families.opteq`: the OptEq unit layer, with priors (:class:`optjax.OptEqProblem`);
* :mod:`~optjax.families.deep`: deep OptEq chains, dense and convolutional (``optjax.deep``);
* :mod:`~optjax.families.deq`: the unconstrained DEQ baseline (``optjax.deq``);
* :mod:`~optjax.families.mondeq`: monotone DEQs (``optjax.mondeq``).

A new family is a new module here: a problem type and its map; the engine does the rest.
"""
