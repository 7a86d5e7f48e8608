"""``aepipe verify RUN``: are the run's published artifacts what was written?

Checks the current generation against its ``checksums.json`` (size and sha256 of every file of
model/, store/, index/; the list's own sha256 is in the pointer ``generations/current.json``), and
the working artifacts (``RUN/model``, ``RUN/store``, ``RUN/index``) that belong to the same model
against the same list: a truncated Parquet part, flipped bytes in the index or the weights, a
deleted ``ids.parquet`` or an edited sidecar are each reported with the file's path. Reads only
(takes no lock); run it when no writer is busy, as a write in progress changes working files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aepipe.errors import MissingArtifact
from aepipe.generations import CHECKED, CHECKSUMS, INFO, file_sha256
from aepipe.layout import GenerationFiles, RunLayout


@dataclass
class VerifyReport:
    run_dir: str
    generation: str | None = None
    n_files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _model_id_of(root: Path, part: str) -> str | None:
    sidecar = {"model": "model.json", "store": "_manifest.json", "index": "index_infos.json"}[part]
    try:
        return json.loads((root / part / sidecar).read_text()).get("model_id")
    except (OSError, ValueError, AttributeError):
        return None


def _check(path: Path, entry: dict, problems: list[str]) -> None:
    if not path.is_file():
        problems.append(f"{path}: missing")
        return
    size = path.stat().st_size
    if size != entry["size"]:
        problems.append(f"{path}: {size} bytes, {entry['size']} were written (truncated or changed)")
    elif file_sha256(path) != entry["sha256"]:
        problems.append(f"{path}: checksum differs from the one recorded (bytes changed)")


def verify_run(run_dir: str | Path) -> VerifyReport:
    layout = RunLayout.at(run_dir)
    if not layout.root.is_dir():
        raise MissingArtifact(f"{layout.root} does not exist")
    report = VerifyReport(str(layout.root))
    name = layout.current_generation_name()
    if name is None:
        raise MissingArtifact(
            f"{layout.root} has no published generation to verify; run `aepipe index` (or `aepipe run`) first"
        )
    report.generation = name
    gen: GenerationFiles = layout.generation(name)
    pointer = json.loads(layout.current_generation.read_text())
    sums_path = gen.root / CHECKSUMS
    if not sums_path.is_file():
        report.problems.append(f"{sums_path}: missing")
        return report
    data = sums_path.read_bytes()
    if pointer.get("checksums_sha256") and hashlib.sha256(data).hexdigest() != pointer["checksums_sha256"]:
        report.problems.append(f"{sums_path}: edited (its checksum is not the one in {layout.current_generation})")
        return report
    files: dict[str, dict] = json.loads(data)["files"]
    model_id = pointer.get("model_id") or json.loads((gen.root / INFO).read_text()).get("model_id")
    working = {part for part in CHECKED if _model_id_of(layout.root, part) == model_id}
    for part in CHECKED:
        if part not in working and (layout.root / part).is_dir() and _model_id_of(layout.root, part) is None:
            # a working sidecar that cannot be read at all is itself damage
            report.problems.append(f"{layout.root / part}: its sidecar is missing or unreadable")
    for rel, entry in sorted(files.items()):
        report.n_files += 1
        _check(gen.root / rel, entry, report.problems)
        part = rel.split("/", 1)[0]
        if part in working:
            work = layout.root / rel
            if work.is_file() and (gen.root / rel).is_file() and work.samefile(gen.root / rel):
                continue  # the same file, checked above
            _check(work, entry, report.problems)
    return report
