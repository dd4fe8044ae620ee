"""Mirror the package-dir mapping of both distributions as links under .typecheck/vigil/.

mypy has no notion of setuptools' package-dir: it finds ``vigil.server`` only in a folder named
``vigil/server``. This makes ``.typecheck/vigil/<package> -> <folder>`` for every mapping in
pyproject.toml and clients/pyproject.toml (the one source of the layout), so ``mypy`` with
``mypy_path = [".typecheck"]`` checks the real files. Run by ``make lint``; .typecheck is ignored.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".typecheck"


def mappings() -> dict[str, Path]:
    """Top-level subpackage of ``vigil`` → its folder, from both pyproject files."""
    found: dict[str, Path] = {}
    for project in (ROOT / "pyproject.toml", ROOT / "clients" / "pyproject.toml"):
        config = tomllib.loads(project.read_text())["tool"]["setuptools"]["package-dir"]
        for package, folder in config.items():
            parts = package.split(".")
            if len(parts) == 2 and parts[0] == "vigil":
                found[parts[1]] = (project.parent / folder).resolve()
    return found


def main() -> None:
    shutil.rmtree(TREE, ignore_errors=True)
    namespace = TREE / "vigil"
    namespace.mkdir(parents=True)
    for name, folder in sorted(mappings().items()):
        os.symlink(os.path.relpath(folder, namespace), namespace / name)


if __name__ == "__main__":
    main()
