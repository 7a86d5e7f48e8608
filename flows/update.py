"""Update flow (nightly): encode what is new or changed in the corpus, drop what is gone,
update the store and the index in place, check the new items for drift. A Markdown artifact
reports the counts and the drift verdict."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from aepipe.config import PipelineConfig
from aepipe.update import UpdateResult, update_run
from aepipe_flows.stages import flow_lock, run_name


@task(name="update")
def update_task(config: PipelineConfig) -> UpdateResult:
    return update_run(config)


def update_markdown(r: UpdateResult) -> str:
    lines = [
        f"# aepipe update: {r.store_dir}",
        "",
        f"model `{r.model_id}`",
        "",
        "| new | changed | removed | unchanged | quarantined | items | index |",
        "|---|---|---|---|---|---|---|",
        f"| {r.n_added} | {r.n_changed} | {r.n_removed} | {r.n_unchanged} | {r.n_quarantined} | {r.n_items} "
        f"| {r.index_update}, {r.index_ntotal} vectors |",
        "",
    ]
    if r.drift:
        d = r.drift
        lines.append(
            f"drift: {'**yes**' if d['drifted'] else 'no'} ({100 * d['share_above']:.0f}% of {d['n_new']} new "
            f"items above the {d['percentile']:g}th percentile of {d['n_reference']} {d['reference']} items; "
            f"threshold {100 * d['threshold']:.0f}%, KS {d['ks_statistic']:.3f}); action: {d['action']}"
            + (" (retrained)" if r.retrained else "")
        )
    if r.rebuild_advised:
        lines.append(f"index: {r.rebuild_advised}")
    return "\n".join(lines) + "\n"


@flow(name="aepipe-update", flow_run_name=run_name("update"))
def update_flow(config: PipelineConfig = PipelineConfig()) -> UpdateResult:
    with flow_lock(config, "aepipe-update"):
        result = update_task(config)
    create_markdown_artifact(
        update_markdown(result), key="aepipe-update", description=f"aepipe update {config.run_dir}"
    )
    return result
