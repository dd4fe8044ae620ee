"""Rewrites the configuration table in README.md from server/settings.py (`make docs`; it runs
with the project's virtual environment, where vigil is installed)."""

from __future__ import annotations

from pathlib import Path

from vigil.server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

HEADER = "| variable | default | meaning |\n| --- | --- | --- |\n"


def table() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        computed = extra.get("default_doc", "number of cores")
        default = computed if field.default_factory is not None else field.default
        default = "unset" if default is None else default
        text = " ".join((field.description or "").split()).replace("``", "`").replace("|", "\\|")
        rows.append(f"| `VIGIL_{name.upper()}` | `{default}` | {text} |")
    return HEADER + "\n".join(rows) + "\n"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index(HEADER)
    end = text.index("\n\n", start)
    readme.write_text(text[:start] + table() + text[end + 1 :])


if __name__ == "__main__":
    main()
