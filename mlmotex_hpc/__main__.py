"""``python -m mlmotex_hpc`` is the ``mlmotex-hpc`` command."""

import sys

from .cli import main

sys.exit(main())
