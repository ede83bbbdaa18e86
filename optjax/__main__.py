"""``python -m optjax``: the ``optjax`` command (see :mod:`optjax.cli`)."""

import sys

from optjax.cli import main

sys.exit(main())
