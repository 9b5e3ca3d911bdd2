"""``python -m posenc``: the ``posenc`` command, so that ``torchrun -m posenc train ...`` can start it."""

import sys

from posenc.cli import main

sys.exit(main())
