"""Generations: model, store, index (and clusters) published together under one atomic pointer.

Writers keep building the working artifacts (``RUN/model``, ``RUN/store``, ``RUN/index``,
``RUN/clusters``) as before. When an index is complete over a store of the model (``aepipe index``,
``aepipe update``, the pipeline), :func:`publish_generation` hard-links the three into
``RUN/generations/gNNNNNN/`` (artifacts are replaced, never modified in place, so a link is a
frozen copy that costs no space) and then switches ``RUN/generations/current.json`` with one
atomic rename: the commit point. Clusters built for that model join it later
(:func:`attach_clusters`).

Readers pin a generation (``RunLayout.current()``; ``Searcher`` does) and keep answering from it
while the next one is built; ``Searcher.refresh()`` moves to the newest. A superseded generation is
removed once more than ``training.keep_versions`` are newer AND it was superseded more than
``training.generation_grace_s`` seconds ago: a reader that pinned it has that long to refresh.
(Files a reader already opened stay readable after removal on POSIX; the grace covers files it
opens later, such as store parts for metadata.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from aepipe.files import (
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    fsync_tree,
    link_or_copy,
    read_json,
)
from aepipe.layout import GenerationFiles, RunLayout

log = logging.getLogger(__name__)

INFO = "generation.json"


def _model_id(model_root: Path) -> str | None:
    info = model_root / "model.json"
    return read_json(info).get("model_id") if info.is_file() else None


def _generation_number(name: str) -> int:
    return int(name[1:]) if name.startswith("g") and name[1:].isdigit() else -1


def list_generations(layout: RunLayout) -> list[str]:
    """Published generation names, oldest first."""
    if not layout.generations.is_dir():
        return []
    return sorted(
        (p.name for p in layout.generations.iterdir() if _generation_number(p.name) >= 0), key=_generation_number
    )


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=link_or_copy)


def publish_generation(layout: RunLayout, keep: int, grace_s: float) -> str | None:
    """Publish the working model, store and index as the next generation, if they belong together
    (the index's model is the model's and the store's); return its name, else None."""
    infos_path = layout.index.infos
    if not infos_path.is_file():
        return None
    model_id = read_json(infos_path).get("model_id")
    store_meta = layout.store / "_manifest.json"
    store_model = read_json(store_meta).get("model_id") if store_meta.is_file() else model_id
    model_root = layout.model.root
    if _model_id(model_root) != model_id:  # RUN/model retrained since: the archived version of the index's
        model_root = layout.model_version(str(model_id)).root
    if _model_id(model_root) != model_id or store_model != model_id:
        log.warning("not publishing a generation: model, store and index of %s are from different models", layout.root)
        return None
    existing = list_generations(layout)
    name = f"g{(_generation_number(existing[-1]) + 1) if existing else 1:06d}"
    layout.generations.mkdir(parents=True, exist_ok=True)
    tmp = layout.generations / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    gen = GenerationFiles(tmp)
    _link_tree(model_root, gen.model.root)
    _link_tree(layout.store, gen.store)
    _link_tree(layout.index.root, gen.index.root)
    published = time.time()
    atomic_write_json(tmp / INFO, {"generation": name, "model_id": model_id, "published": published})
    previous = layout.generation(existing[-1]) if existing else None
    sums = record_checksums(gen, previous)
    fsync_tree(tmp)
    os.replace(tmp, layout.generations / name)
    fsync_dir(layout.generations)
    # the commit point: readers that resolve the pointer from now on get the new generation; the
    # pointer holds the checksum of the checksum list, so an edited list is detected too
    atomic_write_json(
        layout.current_generation,
        {"generation": name, "model_id": model_id, "published": published, "checksums_sha256": sums},
    )
    log.info("published generation %s (model %s)", name, model_id)
    prune_generations(layout, keep, grace_s)
    return name


CHECKSUMS = "checksums.json"
CHECKED = ("model", "store", "index")  # clusters are attached later and not checksummed


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_checksums(gen: GenerationFiles, previous: GenerationFiles | None) -> str:
    """Write ``checksums.json`` (size and sha256 of every file of model/, store/, index/) into
    ``gen``; return the sha256 of that list. A file hard-linked from the previous generation (same
    inode, size and mtime: unchanged by an incremental update) reuses its recorded checksum."""
    known: dict[tuple[int, int, int], str] = {}
    if previous is not None and (previous.root / CHECKSUMS).is_file():
        for rel, entry in read_json(previous.root / CHECKSUMS)["files"].items():
            p = previous.root / rel
            if p.is_file() and "inode" in entry:
                st = p.stat()
                if (st.st_ino, st.st_size, st.st_mtime_ns) == (entry["inode"], entry["size"], entry["mtime_ns"]):
                    known[(st.st_ino, st.st_size, st.st_mtime_ns)] = entry["sha256"]
    files: dict[str, dict[str, int | str]] = {}
    for part in CHECKED:
        for p in sorted((gen.root / part).rglob("*")):
            if p.is_file():
                st = p.stat()
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                digest = known.get(key) or file_sha256(p)
                rel = p.relative_to(gen.root).as_posix()
                files[rel] = {"size": st.st_size, "sha256": digest, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}
    data = (json.dumps({"files": files}, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(gen.root / CHECKSUMS, data)
    return hashlib.sha256(data).hexdigest()


def unpublished(layout: RunLayout) -> bool:
    """True when the working store and index belong together but are not what the current
    generation holds: a writer put them in place and was stopped before it published them (the
    window between an update's directory swaps and its publish). Compared by the checksums of the
    two sidecars the current generation recorded, so a copied (not linked) generation counts too."""
    infos, manifest = layout.index.infos, layout.store / "_manifest.json"
    if not (infos.is_file() and manifest.is_file()):
        return False
    if read_json(infos).get("model_id") != read_json(manifest).get("model_id"):
        return False
    current = layout.current_generation_name()
    if current is None:
        return True
    sums = layout.generation(current).root / CHECKSUMS
    if not sums.is_file():
        return True
    recorded = read_json(sums)["files"]
    for work, rel in ((infos, f"index/{infos.name}"), (manifest, "store/_manifest.json")):
        entry = recorded.get(rel)
        if entry is None or entry["size"] != work.stat().st_size or entry["sha256"] != file_sha256(work):
            return True
    return False


def attach_clusters(layout: RunLayout) -> bool:
    """Add the working clusters to the current generation if they were built from its model."""
    current = layout.current_generation_name()
    summary = layout.clusters.summary
    if current is None or not summary.is_file():
        return False
    gen = layout.generation(current)
    if read_json(summary).get("model_id") != read_json(gen.root / INFO).get("model_id"):
        return False
    tmp = gen.root / f".clusters.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(layout.clusters.root, tmp)
    fsync_tree(tmp)
    if gen.clusters.root.exists():  # re-clustered: replace (readers of clusters read one file at a time)
        old = gen.root / f".clusters.old-{os.getpid()}"
        os.replace(gen.clusters.root, old)
        os.replace(tmp, gen.clusters.root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, gen.clusters.root)
    fsync_dir(gen.root)
    return True


def prune_generations(layout: RunLayout, keep: int, grace_s: float, now: float | None = None) -> list[str]:
    """Remove generations older than the ``keep`` newest, each only once it was superseded more
    than ``grace_s`` seconds ago (never the current one). Leftover temporary directories go too."""
    now = time.time() if now is None else now
    names = list_generations(layout)
    current = layout.current_generation_name()
    removed = []
    for older, newer in zip(names[: max(len(names) - keep, 0)], names[1:]):
        if older == current:
            continue
        superseded = read_json(layout.generation(newer).root / INFO).get("published", now)
        if now - superseded > grace_s:
            shutil.rmtree(layout.generation(older).root, ignore_errors=True)
            removed.append(older)
    for tmp in layout.generations.glob(".tmp-*") if layout.generations.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)  # the caller holds the writer lock: nobody is writing these
    return removed
