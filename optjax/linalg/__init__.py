"""Linear algebra: linear maps (:mod:`~optjax.linalg.linear_map`), convolutions with their
adjoints (:mod:`~optjax.linalg.convolution`), exact spectral norms (:mod:`~optjax.linalg.norms`),
linear solves (:mod:`~optjax.linalg.linear_solve`) and LAPACK threading
(:mod:`~optjax.linalg.lapack`)."""
