"""The run remembers: every writing stage starts from the run's recorded config and records the
config it ran with.

``RUN/config.yaml`` is the run's config: the sections each stage owns, as that stage last ran them
(``STAGE_SECTIONS``). A stage takes its own sections from the config it was given (your ``--set``,
a Prefect parameter) and every other section from the record, so ``aepipe index --set
index.metric=cosine`` stays cosine through later ``aepipe update`` and ``cluster`` runs, and a
nightly deployment built from a default config updates the run as it was built. A section a stage
does not own and that differs from the record is logged and ignored: change it with its stage.
``RUN/configs/<stage>.yaml`` keeps the full config of each stage's last successful run.

Paths are stored absolute: a relative ``corpus.source``, ``evaluation.queries``,
``index.eval_queries`` or ``model.transfer.init_from`` that exists is resolved against the working
directory of the command that first gave it, so later stages work from any directory (and on
another worker that sees the same filesystem). ``run_dir`` is always the directory the stage was
called with (a run can be moved).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from aepipe.config import PipelineConfig, build_config, dump_config, load_yaml
from aepipe.files import atomic_write_bytes
from aepipe.layout import RunLayout
from aepipe.runlock import command_line, run_lock

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

ALL_SECTIONS = tuple(PipelineConfig.model_fields)
# what each stage decides; the rest it takes from the run
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "pipeline": ALL_SECTIONS,
    "train": ("preset", "corpus", "features", "model", "training"),
    "encode": ("corpus", "encode"),
    "index": ("index",),
    "cluster": ("cluster",),
    "update": ("corpus", "encode", "drift"),
    "eval": ("evaluation",),
}
# corpus sources that name a built-in corpus, not a path
_BUILTIN_SOURCES = {"digits", "python-docs"}


def _absolute(value: str | None) -> str | None:
    if not value or value in _BUILTIN_SOURCES or "://" in value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    return str(p.resolve()) if p.exists() else value  # a path that does not exist: the stage says so


def with_absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with its existing relative paths made absolute (and ``run_dir`` absolute)."""
    data = cfg.model_dump(mode="json")
    data["run_dir"] = str(Path(cfg.run_dir).expanduser().resolve())
    data["corpus"]["source"] = _absolute(data["corpus"]["source"])
    data["evaluation"]["queries"] = _absolute(data["evaluation"]["queries"])
    data["index"]["eval_queries"] = _absolute(data["index"]["eval_queries"])
    if data["model"].get("transfer"):
        data["model"]["transfer"]["init_from"] = _absolute(data["model"]["transfer"]["init_from"])
    return build_config(data)


def recorded_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's recorded config as a dict, or None for a new run (or an unreadable record)."""
    path = RunLayout.at(run_dir).config
    if not path.is_file():
        return None
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError:
        log.warning("%s is not valid YAML; starting from the given config", path)
        return None
    return data if isinstance(data, dict) else None


def stage_config(cfg: PipelineConfig, stage: str) -> PipelineConfig:
    """The config ``stage`` runs with: its own sections from ``cfg``, the others from the run's record."""
    cfg = with_absolute_paths(cfg)
    recorded = recorded_config(cfg.run_dir)
    if recorded is None:
        return cfg
    given = cfg.model_dump(mode="json")
    try:
        base = build_config({**recorded, "run_dir": given["run_dir"]}).model_dump(mode="json")
    except Exception as exc:  # noqa: BLE001  a record from an older version that no longer validates
        log.warning("the run's recorded config cannot be used (%s); starting from the given config", exc)
        return cfg
    own = STAGE_SECTIONS[stage]
    ignored = [s for s in ALL_SECTIONS if s not in own and s != "run_dir" and given[s] != base[s]]
    if ignored:
        log.warning(
            "%s: using the run's recorded %s (the given config differs; change them with the stage that owns them)",
            stage,
            ", ".join(ignored),
        )
    merged = {**base, **{s: given[s] for s in own}, "run_dir": given["run_dir"]}
    return build_config(merged)


def record_stage_config(cfg: PipelineConfig, stage: str) -> None:
    """After ``stage`` succeeded: ``RUN/configs/<stage>.yaml`` and its sections in ``RUN/config.yaml``."""
    layout = RunLayout.at(cfg.run_dir)
    _write_if_changed(layout.stage_config(stage), dump_config(cfg).encode())
    recorded = recorded_config(cfg.run_dir) or {}
    given = cfg.model_dump(mode="json")
    merged = {**given, **recorded, **{s: given[s] for s in STAGE_SECTIONS[stage]}, "run_dir": given["run_dir"]}
    _write_if_changed(layout.config, yaml.safe_dump(merged, sort_keys=False).encode())


def _write_if_changed(path: Path, data: bytes) -> None:
    """A stage that changed nothing (an update with no new items) leaves the record untouched."""
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(path, data)


def save_run_config(cfg: PipelineConfig) -> None:
    """Record ``cfg`` whole as the run's config (a full pipeline run decides every section)."""
    cfg = with_absolute_paths(cfg)
    atomic_write_bytes(RunLayout.at(cfg.run_dir).config, dump_config(cfg).encode())


def run_stage(stage: str) -> Callable[[F], F]:
    """Decorate a writing stage function ``f(cfg, ...)``: under the run's writer lock, it runs with
    :func:`stage_config` and records it when it returns."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(cfg: PipelineConfig, *args: Any, **kwargs: Any) -> Any:
            with run_lock(cfg.run_dir, f"{stage}: {command_line()}"):
                resolved = stage_config(cfg, stage)
                result = func(resolved, *args, **kwargs)
                record_stage_config(resolved, stage)
                return result

        return wrapper  # type: ignore[return-value]

    return decorate
