"""Model versions: every model whose store and index are complete is kept under
``RUN/models/<model_id>/``, and ``RUN/models/current.json`` names the one that answers queries.

``RUN/model`` stays the working model that training writes and encoding uses. The pointer is
switched (an atomic JSON replace) only when an index is complete over a store of that same
model, so queries keep using the model that matches the live index while a retrained model is
being encoded and indexed. The last ``training.keep_versions`` versions are kept.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from aepipe.files import atomic_write_json, fsync_dir, link_or_copy, read_json
from aepipe.layout import RunLayout

log = logging.getLogger(__name__)


def current_model_id(layout: RunLayout) -> str | None:
    path = layout.current_model
    return read_json(path)["model_id"] if path.is_file() else None


def current_model_dir(layout: RunLayout) -> Path:
    """The model that matches the live index: the current version, else (older runs) RUN/model."""
    model_id = current_model_id(layout)
    return layout.model_version(model_id).root if model_id else layout.model.root


def publish_model_version(layout: RunLayout, model_id: str, keep: int) -> bool:
    """Archive RUN/model as version ``model_id`` and point ``current`` at it, if RUN/model is
    that model (the caller has just completed an index over a store of ``model_id``)."""
    if not layout.model.info.is_file() or read_json(layout.model.info).get("model_id") != model_id:
        return False
    version = layout.model_version(model_id).root
    if not version.is_dir():
        tmp = version.with_name(f".{version.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        # RUN/model is replaced as a whole, never modified in place: hard links are safe copies
        shutil.copytree(layout.model.root, tmp, copy_function=link_or_copy)
        os.replace(tmp, version)
        fsync_dir(version.parent)
    if current_model_id(layout) != model_id:
        atomic_write_json(layout.current_model, {"model_id": model_id})
        log.info("current model version: %s", model_id)
    prune_versions(layout, keep)
    return True


def prune_versions(layout: RunLayout, keep: int) -> list[str]:
    """Remove all but the ``keep`` most recently published versions (never the current one)."""
    current = current_model_id(layout)
    versions = sorted(
        (p for p in layout.models.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime_ns,
        reverse=True,
    )
    removed = [p for p in versions[keep:] if p.name != current]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in removed]
