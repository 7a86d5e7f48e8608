"""``python -m benchmarks.prefect_child OVERRIDES...``: the Prefect half of the stage benchmark's
pipeline comparison (``python -m benchmarks.stages --only pipeline``). A trivial
flow runs first so the ephemeral server's start is timed apart from the pipeline."""

from __future__ import annotations

from prefect import flow

from aepipe_flows.pipeline import pipeline_flow
from benchmarks.stages import pipeline_child


@flow(name="aepipe-benchmark-warmup")
def warmup_flow() -> int:
    return 0


if __name__ == "__main__":
    raise SystemExit(pipeline_child(run=pipeline_flow, warmup=warmup_flow))  # overrides from the command line
