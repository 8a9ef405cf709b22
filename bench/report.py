"""How every bench script prints: readable lines, or with --json one JSON object per metric.

Each metric line is exactly {"metric", "value", "unit", "floor", "ratio"}; with --json, the
notes that explain a run go to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys


class Report:
    """Readable lines on stdout; with --json, JSON lines on stdout and notes on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def note(self, line: str) -> None:
        print(line, file=sys.stderr if self.as_json else sys.stdout, flush=True)

    def metric(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        floor: float | None = None,
        ratio: float | None = None,
        line: str,
    ) -> None:
        if self.as_json:
            record = {"metric": name, "value": value, "unit": unit, "floor": floor, "ratio": ratio}
            print(json.dumps(record), flush=True)
        else:
            print(line, flush=True)
