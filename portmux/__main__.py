"""``python -m portmux``: the same as the ``portmux`` command."""

import sys

from portmux.cli import main

sys.exit(main())
