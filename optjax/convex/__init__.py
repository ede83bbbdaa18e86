"""The convex building blocks: activations as proximal operators
(:mod:`~optjax.convex.activations`, their closed forms in :mod:`~optjax.convex.closed_forms`) and
priors (:mod:`~optjax.convex.priors`)."""
