"""Shared benchmark plumbing: fresh child processes that report JSON, peak memory, results files and tables."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    return {"cores": os.cpu_count(), "accelerator": "none"}


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log(message: str) -> None:
    # stdout carries a child's JSON result; progress goes to stderr so it never corrupts it.
    print(message, file=sys.stderr, flush=True)


def emit(result: dict) -> None:
    """Child side: print the result, with this process's peak RSS, as the last line of stdout."""
    print(json.dumps({**result, "peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


def run_fresh(module: str, args: Sequence[str], env: dict[str, str] | None = None) -> dict:
    """Run `python -m module args` in a new interpreter, so that its peak RSS is its own, and return what it emits."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(text: str, out: Path, note: str = "") -> None:
    """A results table on stdout, then where the results were written (the table flushed first, so that the two
    stay in order when piped)."""
    print(text, flush=True)
    log(f"written to {out}{note}")


def write_results(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed, so an interrupted run never leaves half a results file behind.
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells[1:]]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)
