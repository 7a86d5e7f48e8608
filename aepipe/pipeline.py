"""The whole pipeline as plain function calls (no orchestrator). The Prefect
pipeline flow in flows/pipeline.py composes the same stage functions."""

from __future__ import annotations

import time
from typing import Any

from aepipe.cluster import cluster_codes
from aepipe.config import PipelineConfig, dump_config
from aepipe.encode import encode_corpus
from aepipe.index import build_index
from aepipe.io import atomic_write_bytes
from aepipe.layout import RunLayout
from aepipe.report import build_report
from aepipe.train import train_model


def save_run_config(cfg: PipelineConfig) -> None:
    atomic_write_bytes(RunLayout.at(cfg.run_dir).config, dump_config(cfg).encode())


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    save_run_config(cfg)
    timings: dict[str, float] = {}
    results = []
    for name, stage in (("train", train_model), ("encode", encode_corpus), ("index", build_index), ("cluster", cluster_codes)):
        t = time.perf_counter()
        results.append(stage(cfg))
        timings[name] = time.perf_counter() - t
    return build_report(cfg, *results, timings)
