"""Progress of long work on stderr, with no dependency: a line rewritten in place on a terminal,
a line at each quarter otherwise (logs and pipes get a few lines, not thousands)."""

from __future__ import annotations

import sys
from typing import TextIO

MB = 1024 * 1024


class ProgressLine:
    """``ProgressLine()(name, done, total)``: how far ``name`` is (bytes; total may be None)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._quarter: dict[str, int] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        size = f"{done / MB:.1f}" + (f"/{total / MB:.1f} MB" if total else " MB")
        percent = f" {100 * done // total:3d}%" if total else ""
        finished = total is not None and done >= total
        if self.live:
            end = "\n" if finished else ""
            self.stream.write(f"\r{name}  {size}{percent}{end}")
        else:
            quarter = 4 * done // total if total else 0
            if total and quarter <= self._quarter.get(name, 0):
                return
            self._quarter[name] = quarter
            self.stream.write(f"{name}  {size}{percent}\n")
        self.stream.flush()
