"""Benchmarks: one command each, run by hand (not in CI; CI runs tiny versions)."""

from __future__ import annotations

from pathlib import Path

from aepipe.files import atomic_write_bytes, atomic_write_json


def write_results(out: str | Path, rows: list[dict], table: str) -> None:
    """results.json (rows) and results.md (the table) under ``out``; the table also goes to stdout."""
    atomic_write_json(Path(out) / "results.json", rows)
    atomic_write_bytes(Path(out) / "results.md", (table + "\n").encode())
    print(table)
