"""Benchmarks: one command each, run by hand (not in CI; CI runs tiny versions)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aepipe.files import atomic_write_bytes, atomic_write_json


def write_results(out: str | Path, rows: list[dict], table: str) -> None:
    """results.json (rows) and results.md (the table) under ``out``; the table also goes to stdout."""
    atomic_write_json(Path(out) / "results.json", rows)
    atomic_write_bytes(Path(out) / "results.md", (table + "\n").encode())
    print(table)


def commit() -> str:
    """The checked-out commit, and whether tracked files differ from it (what a results table records)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
