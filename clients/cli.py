"""The ``vigil`` command line: the client commands, plus those of installed plugins.

``vigil-client`` owns the ``vigil`` script. The server distribution adds its commands (``serve``,
``worker``, ``models``, ``admin bootstrap``, ``bench``) through the ``vigil.commands`` entry-point
group, so the client never imports the server: with the client alone, ``vigil serve`` says which
distribution to install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeAlias

from vigil.client.admin_cli import add_admin_commands
from vigil.client.commands import add_client_commands
from vigil.client.stream import add_stream_command

PLUGIN_GROUP = "vigil.commands"
#: What a plugin's entry point is: it adds its commands to the top level and to `vigil admin`.
# (argparse's subparsers action is generic only in its type stubs: the alias is a string.)
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddCommands: TypeAlias = Callable[[Subcommands, Subcommands], None]
#: Commands the server distribution provides; named here only to say what to install.
SERVER_COMMANDS = ("serve", "worker", "models", "bench")


def _parser() -> tuple[argparse.ArgumentParser, set[str]]:
    """The parser, and the names of its top-level commands."""
    parser = argparse.ArgumentParser(
        prog="vigil", description="Face liveness and matching over gRPC"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    admin = sub.add_parser("admin", help="administration").add_subparsers(
        dest="admin_command", required=True
    )
    for plugin in entry_points(group=PLUGIN_GROUP):
        add_commands: AddCommands = plugin.load()
        add_commands(sub, admin)
    add_admin_commands(admin)
    add_client_commands(sub)
    add_stream_command(sub)
    return parser, set(sub.choices)


def build_parser() -> argparse.ArgumentParser:
    return _parser()[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, commands = _parser()
    if argv[:1] and argv[0] in SERVER_COMMANDS and argv[0] not in commands:
        print(
            f"vigil: `vigil {argv[0]}` is part of the vigil server, which is not installed here: "
            "install its wheel (vigil-VERSION-py3-none-any.whl; `make wheels`) beside vigil-client",
            file=sys.stderr,
        )
        return 2
    # A command may take arguments it passes on unread (`vigil bench ARGS` → the harness).
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_arguments = extra
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
