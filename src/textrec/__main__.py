"""``python -m textrec``: the ``textrec`` command (what ``torchrun -m textrec ...`` starts in every process)."""

import sys

from textrec.cli import main

sys.exit(main())
