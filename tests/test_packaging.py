"""Packaging, proved outside the checkout and non-editable: the two wheels build from a copy of the
tree and hold exactly what they should; the client wheel alone installs into a fresh virtual
environment without the server's dependencies and calls the real session server; both wheels
together install into another one whose ``vigil serve`` starts on an empty data directory (so the
packaged Alembic migrations run), answers real liveness calls and stops cleanly on SIGTERM.

Speed: the two environments are installed at once, in the background, from the first test on (they
are pip or network bound), with uv when it is installed (seconds), else the development venv's pip
driving the new interpreter (``pip --python``: the new venvs need no pip of their own).
"""

from __future__ import annotations

import configparser
import csv
import email
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging.requirements import Requirement

from tests.conftest import FACES, ROOT, SPOOF, ServerThread
from vigil.client import VigilClient

#: Wheel folder → source folder (relative to the repository root), as the two pyproject files map
#: them. No ``vigil/__init__.py``: ``vigil`` is a namespace both distributions contribute to.
CLIENT_LAYOUT = {"vigil/client": "clients", "vigil/v1": "protos/vigil/v1"}
SERVER_LAYOUT = {
    "vigil/server": "server",
    "vigil/inference": "inference",
    "vigil/storage": "storage",
    "vigil/web": "web",
}
#: The files of a source folder that its wheel folder must hold: modules, stubs, contract, markers,
#: and the Web Adapter's static files.
PACKAGED = ("*.py", "*.pyi", "*.proto", "py.typed", "*.mako", "*.js", "*.css", "*.html")
#: Distributions of the server that a client-only install must not pull in.
SERVER_ONLY = frozenset(
    {
        "vigil",
        "onnxruntime",
        "openvino",
        "opencv-python",
        "opencv-python-headless",
        "av",
        "sqlmodel",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "psycopg-binary",
        "numpy",
    }
)
#: The client's only run-time dependencies (standardwebhooks and shtab: pure Python, no
#: dependencies of their own; webhook verification and `vigil completion`).
CLIENT_REQUIRES = {
    "grpcio": set(),
    "protobuf": set(),
    "pyjwt": {"crypto"},
    "standardwebhooks": set(),
    "shtab": set(),
}
#: Not copied for the build: what .gitignore keeps out of a clean checkout.
IGNORED_AT_ROOT = {".git", ".venv", "var", "models", "data", "dist", ".typecheck"}
IGNORED_ANYWHERE = ("__pycache__", "build", "*.egg-info", "*.pyc", ".*_cache", "*.onnx", "*.engine")
INSTALL_TIMEOUT_S = 240.0
#: ``uv`` (fast) or ``pip``; by default uv when it is installed, else pip.
INSTALLER = os.environ.get("VIGIL_TEST_INSTALLER", "")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without what would put the checkout on a child's sys.path or
    configure vigil (PYTHON*, VIRTUAL_ENV, VIGIL_*), plus ``values``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "VIGIL_")) and key != "VIRTUAL_ENV"
    }
    env.update(values)
    return env


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _ignored(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if _matches(n, IGNORED_ANYWHERE)}
    if Path(directory) == ROOT:
        skipped |= IGNORED_AT_ROOT & set(names)
    return skipped


def source_files(root: Path, layout: dict[str, str]) -> set[str]:
    """The wheel paths ``layout``'s source folders should be packaged as."""
    found = set()
    for prefix, folder in layout.items():
        base = root / folder
        for path in base.rglob("*"):
            relative = path.relative_to(base)
            skipped = any(_matches(part, IGNORED_ANYWHERE) for part in relative.parts)
            if path.is_file() and _matches(path.name, PACKAGED) and not skipped:
                found.add(f"{prefix}/{relative.as_posix()}")
    return found


class _CaseSensitiveParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr


@dataclass(frozen=True)
class Wheel:
    path: Path

    @property
    def version(self) -> str:
        return self.path.name.split("-")[1]

    @property
    def dist_info(self) -> str:
        return "-".join(self.path.name.split("-")[:2]) + ".dist-info"

    def names(self) -> set[str]:
        with zipfile.ZipFile(self.path) as archive:
            return set(archive.namelist())

    def text(self, name: str) -> str:
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(f"{self.dist_info}/{name}").decode()

    def metadata(self) -> Message:
        return email.message_from_string(self.text("METADATA"))

    def requires(self) -> dict[str, Requirement]:
        """Run-time requirements (those of no extra), by normalized name."""
        found = {}
        for line in self.metadata().get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is None or "extra" not in str(requirement.marker):
                found[normalized(requirement.name)] = requirement
        return found

    def entry_points(self) -> dict[str, dict[str, str]]:
        parser = _CaseSensitiveParser(delimiters=("=",), interpolation=None)
        parser.read_string(self.text("entry_points.txt"))
        return {section: dict(parser[section]) for section in parser.sections()}


@dataclass(frozen=True)
class Wheels:
    source: Path  # the copy of the tree they were built from
    client: Wheel
    server: Wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    """Both wheels, built at once with ``python -m build --wheel --no-isolation`` from a copy of the
    tree (no stale build/ or egg-info of the checkout can leak in, and the checkout stays clean)."""
    base = tmp_path_factory.mktemp("packaging-build")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_ignored, symlinks=True)
    builds = {}
    for name, project in (("client", "clients"), ("server", ".")):
        log = base / f"build-{name}.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
            command += ["--outdir", str(base / name), project]
            process = subprocess.Popen(
                command, cwd=source, env=clean_env(), stdout=out, stderr=subprocess.STDOUT
            )
        builds[name] = (process, log)
    built = {}
    for name, (process, log) in builds.items():
        assert process.wait(timeout=120) == 0, f"building {name} failed:\n{log.read_text()}"
        (wheel,) = (base / name).glob("*.whl")
        built[name] = Wheel(wheel)
    return Wheels(source, built["client"], built["server"])


def _installer(python: Path, requirements: Iterable[Path]) -> list[str]:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    uv = shutil.which("uv", path=search)
    if INSTALLER == "uv":
        assert uv, "VIGIL_TEST_INSTALLER=uv but uv is not installed"
    if uv and INSTALLER != "pip":
        return [uv, "pip", "install", "--quiet", "--python", str(python), *map(str, requirements)]
    # pip ≥ 22.3 installs into another interpreter; --no-compile: only what runs gets compiled.
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    return [*command, "--no-compile", "--no-input", *map(str, requirements)]


@dataclass
class Install:
    """A fresh venv (no pip of its own) and the install running into it in the background."""

    venv: Path
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, venv_dir: Path, wheels: Iterable[Path], cwd: Path) -> Install:
        venv.EnvBuilder(with_pip=False, symlinks=True).create(venv_dir)
        log = venv_dir.with_suffix(".log")
        with log.open("wb") as out:
            process = subprocess.Popen(
                _installer(venv_dir / "bin" / "python", wheels),
                cwd=cwd,
                env=clean_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so that stop() ends pip's child interpreter too
            )
        return cls(venv_dir, process, log)

    def ready(self) -> Path:
        """The venv, once the install has succeeded."""
        try:
            code = self.process.wait(timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"installing into {self.venv} took over {INSTALL_TIMEOUT_S} s")
        assert code == 0, f"installing into {self.venv} failed:\n{self.log.read_text()}"
        return self.venv

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass(frozen=True)
class Installs:
    client: Install  # vigil-client alone
    server: Install  # vigil-client and vigil


@pytest.fixture(scope="module", autouse=True)
def installs(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installs]:
    """Both installs, started as soon as the module starts: they run while its tests do."""
    base = tmp_path_factory.mktemp("packaging-venvs")
    client = Install.start(base / "client", [wheels.client.path], base)
    server = Install.start(base / "server", [wheels.client.path, wheels.server.path], base)
    yield Installs(client, server)
    client.stop()
    server.stop()


def site_packages(venv_dir: Path) -> Path:
    (found,) = venv_dir.glob("lib/python*/site-packages")
    return found


def installed_top_level(site: Path, dist_info: str) -> set[str]:
    """The top-level names the RECORD of ``dist_info`` installed into ``site`` (scripts aside)."""
    with (site / dist_info / "RECORD").open(newline="") as record:
        parts = {Path(row[0]).parts[0] for row in csv.reader(record) if row}
    return parts - {".."}


def check_site(site: Path, namespace: set[str]) -> None:
    """``site``'s ``vigil`` is a namespace of exactly ``namespace``, and nothing there points back
    at the checkout (no editable install, no .pth)."""
    vigil_dir = site / "vigil"
    assert not (vigil_dir / "__init__.py").exists()
    assert {p.name for p in vigil_dir.iterdir() if p.name != "__pycache__"} == namespace
    assert not list(site.glob("__editable__*"))
    for pth in site.glob("*.pth"):
        assert str(ROOT) not in pth.read_text(), pth


def test_wheels_hold_exactly_their_packages(wheels: Wheels) -> None:
    client, server = wheels.client, wheels.server
    assert client.path.name.startswith("vigil_client-") and server.path.name.startswith("vigil-")
    for wheel, layout in ((client, CLIENT_LAYOUT), (server, SERVER_LAYOUT)):
        names = wheel.names()
        meta = {n for n in names if n.startswith(f"{wheel.dist_info}/")}
        assert f"{wheel.dist_info}/licenses/LICENSE" in meta
        assert wheel.text("licenses/LICENSE") == (ROOT / "LICENSE").read_text()
        assert wheel.text("top_level.txt").split() == ["vigil"]
        # Every module of the source folders, the stubs, contract and markers; nothing else: a
        # sub-package missing from pyproject's explicit `packages` list shows here.
        assert names - meta == source_files(wheels.source, layout), wheel.path.name
        assert "vigil/__init__.py" not in names
        assert all(n.startswith("vigil/") for n in names - meta)

    names = client.names()
    for marker in ("vigil/client/py.typed", "vigil/v1/py.typed", "vigil/client/cli.py"):
        assert marker in names
    for proto in (ROOT / "protos" / "vigil" / "v1").glob("*.proto"):
        stem = proto.stem
        expected = {f"vigil/v1/{proto.name}", f"vigil/v1/{stem}_pb2.py", f"vigil/v1/{stem}_pb2.pyi"}
        assert expected | {f"vigil/v1/{stem}_pb2_grpc.py", f"vigil/v1/{stem}_pb2_grpc.pyi"} <= names
    names = server.names()
    for package in ("server", "inference", "storage", "web"):
        assert {f"vigil/{package}/__init__.py", f"vigil/{package}/py.typed"} <= names
    migrations = "vigil/storage/migrations"
    assert {f"{migrations}/env.py", f"{migrations}/script.py.mako"} <= names
    assert [n for n in names if re.fullmatch(rf"{migrations}/versions/\w+\.py", n)]

    requires = client.requires()
    assert set(requires) == set(CLIENT_REQUIRES)
    for name, extras in CLIENT_REQUIRES.items():
        assert requires[name].extras == extras
    pin = server.requires()["vigil-client"]
    assert str(pin.specifier) == f"=={client.version}"  # built together, installed together
    assert client.entry_points()["console_scripts"] == {"vigil": "vigil.client.cli:main"}
    assert server.entry_points() == {
        "vigil.commands": {
            "server": "vigil.server.cli:add_commands",
            "web": "vigil.web.cli:add_commands",
        }
    }
    # the Web Adapter's static files (the plugin, its style, the demo page)
    assert {"vigil/web/static/vigil-web.js", "vigil/web/static/demo.html"} <= names
    # the operator console's style and script
    assert {"vigil/web/console/static/console.css", "vigil/web/console/static/console.js"} <= names


#: Run by the client venv's interpreter: what is installed, where vigil comes from, a real call.
CLIENT_PROBE = """
import importlib.metadata, json, sys

import vigil
from vigil.client import VigilClient

address, key, image = sys.argv[1:4]
with VigilClient(address, api_key=key) as client:
    live = client.liveness(image).live
print(json.dumps({
    "distributions": [d.metadata["Name"] for d in importlib.metadata.distributions()],
    "vigil_path": list(vigil.__path__),
    "vigil_file": getattr(vigil, "__file__", None),
    "client_file": sys.modules["vigil.client"].__file__,
    "sys_path": sys.path,
    "live": live,
}))
"""


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 60)
def test_client_alone(
    installs: Installs, wheels: Wheels, server: ServerThread, tmp_path: Path
) -> None:
    venv_dir = installs.client.ready()
    site = site_packages(venv_dir)
    check_site(site, {"client", "v1"})
    assert installed_top_level(site, wheels.client.dist_info) == {"vigil", wheels.client.dist_info}

    probe = tmp_path / "probe.py"
    probe.write_text(CLIENT_PROBE)
    image = SPOOF / "image_F1.jpg"  # a printed-photo attack
    env = clean_env()
    commands = {
        "probe": [venv_dir / "bin" / "python", probe, server.address, server.admin_key, image],
        "help": [venv_dir / "bin" / "vigil", "--help"],
        "serve": [venv_dir / "bin" / "vigil", "serve"],
    }
    running = {
        name: subprocess.Popen(
            [str(a) for a in command],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, command in commands.items()
    }
    done = {}
    try:
        for name, process in running.items():
            out, err = process.communicate(timeout=60)
            done[name] = (process.returncode, out, err)
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()

    code, out, err = done["probe"]
    assert code == 0, err
    found = json.loads(out)
    installed = {normalized(name) for name in found["distributions"]}
    assert "vigil-client" in installed
    assert not installed & SERVER_ONLY, sorted(installed)
    assert found["vigil_file"] is None  # a namespace package…
    assert found["vigil_path"] == [str(site / "vigil")]  # …from this venv only
    assert Path(found["client_file"]).is_relative_to(site)
    assert not [p for p in found["sys_path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    assert found["live"] is False

    code, out, err = done["help"]
    assert code == 0, err
    assert "liveness" in out and "verify" in out

    code, out, err = done["serve"]
    assert code != 0
    assert "part of the vigil server, which is not installed" in err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, f"vigil serve exited early:\n{log.read_text()}"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"vigil serve never became SERVING:\n{log.read_text()}")


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)
def test_installed_server_serves(
    installs: Installs, wheels: Wheels, models_dir: Path, tmp_path: Path
) -> None:
    venv_dir = installs.server.ready()
    site = site_packages(venv_dir)
    check_site(site, {"client", "v1", "server", "inference", "storage", "web"})
    assert installed_top_level(site, wheels.server.dist_info) == {"vigil", wheels.server.dist_info}

    vigil = str(venv_dir / "bin" / "vigil")
    data = tmp_path / "data"  # empty: the server creates and migrates its SQLite database
    env = clean_env(
        VIGIL_DATA_DIR=str(data),
        VIGIL_MODELS_DIR=str(models_dir),
        VIGIL_ALLOW_PLAINTEXT="true",
        VIGIL_INTRA_OP_THREADS="1",
    )
    address = f"127.0.0.1:{free_port()}"
    host, port = address.split(":")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [vigil, "serve", "--host", host, "--port", port, "--metrics-port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(address, process, log)
        key_file = tmp_path / "admin.key"
        done = subprocess.run(
            [vigil, "admin", "bootstrap", "--key-file", str(key_file)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        with VigilClient(address, api_key=key_file.read_text().strip()) as client:
            assert client.liveness(SPOOF / "image_F1.jpg").live is False
            assert client.liveness(FACES / "obama.jpg").live is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (data / "vigil.db").is_file()
