"""The ``vigil`` command line: the client commands, plus those of installed plugins.

``vigil-client`` owns the ``vigil`` script. The server distribution adds its commands (``serve``,
``worker``, ``models``, ``admin bootstrap``, ``bench``) through the ``vigil.commands`` entry-point
group, so the client never imports the server: with the client alone, ``vigil serve`` says which
distribution to install.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, entry_points, version
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


def _version() -> str:
    """``vigil-client X`` and, when installed, ``vigil (server) Y``."""
    versions = []
    for distribution, label in (("vigil-client", "vigil-client"), ("vigil", "vigil server")):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{label} {version(distribution)}")
    return ", ".join(versions) or "vigil (version unknown: not installed as a distribution)"


def _completion(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # shtab writes the script from the parser itself: nothing runs at <TAB> time (argcomplete
    # would start Python and import the CLI on every key press).
    import shtab

    print(shtab.complete(parser, shell=args.shell))
    return 0


def _parser() -> tuple[argparse.ArgumentParser, set[str]]:
    """The parser, and the names of its top-level commands."""
    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Face liveness and matching over gRPC",
        epilog=(
            "exit status: 0 done, 1 a call failed, 2 usage or an unreadable file, "
            "3 a negative answer with --fail-on-decline (SPOOF, DECLINED, NO MATCH)"
        ),
    )
    parser.add_argument("--version", action="version", version=_version())
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
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description='print a completion script: eval "$(vigil completion bash)" in ~/.bashrc; '
        "for zsh, vigil completion zsh > ~/.zfunc/_vigil (a directory on $fpath)",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler=lambda args: _completion(parser, args))
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
    try:
        code = int(args.handler(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`vigil admin audit | head`): stop quietly, as other tools do.
        # stdout is pointed at /dev/null so the interpreter's own final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    return code


if __name__ == "__main__":
    sys.exit(main())
