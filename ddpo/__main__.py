"""``python -m ddpo``: the ``ddpo`` command (see :mod:`ddpo.cli`)."""

import sys

from ddpo.cli import main

sys.exit(main())
