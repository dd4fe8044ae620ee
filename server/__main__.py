"""``python -m vigil.server``: the ``vigil`` command line (the server's commands included)."""

import sys

from vigil.client.cli import main

sys.exit(main())
