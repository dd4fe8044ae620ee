"""vigil's gRPC application: the API (servicers), security, jobs, settings and the command line."""

from importlib.metadata import version

#: The installed server distribution's version (pyproject.toml holds it, once).
__version__ = version("vigil")
