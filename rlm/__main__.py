"""``python -m rlm``: the command line of :mod:`rlm.cli`."""

import sys

from rlm.cli import main

sys.exit(main())
