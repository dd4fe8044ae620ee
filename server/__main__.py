import sys

from vigil.server.cli import main

sys.exit(main())
