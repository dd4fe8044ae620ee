"""The README documents every setting, and the commands it promises exist."""

from __future__ import annotations

from tests.conftest import ROOT
from vigil.client.cli import build_parser
from vigil.server.settings import Settings

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [
        f"VIGIL_{name.upper()}"
        for name in Settings.model_fields
        if f"`VIGIL_{name.upper()}`" not in README
    ]
    assert not missing, f"README lacks {missing}"


def test_every_setting_has_a_description() -> None:
    assert all(field.description for field in Settings.model_fields.values())


def test_the_cli_has_the_promised_commands() -> None:
    parser = build_parser()
    for argv in (
        ["serve", "--port", "1", "--metrics-port", "2"],
        ["models", "install", "--mirror", "/tmp"],
        ["liveness", "f.jpg", "--server", "h:1", "--json"],
        ["verify", "a.jpg", "b.jpg", "--server", "h:1", "--json"],
        ["detect", "f.jpg", "--json"],
        ["template", "f.jpg", "--json"],
        ["bench"],
    ):
        assert parser.parse_args(argv).handler is not None
