"""Results of a benchmark run, accumulated in <out>/results.json as each stage finishes (a run
cut short keeps what it measured; ``--report-only`` rebuilds the report from it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Results:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2, default=float))
        print(f"[bench] {key}: done", flush=True)
