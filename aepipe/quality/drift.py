"""Drift: do new items reconstruct worse than the items the model was checked on?"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aepipe.config import PipelineConfig
from aepipe.layout import RunLayout
from aepipe.quality.metrics import RECON_TARGET_WORDS

log = logging.getLogger(__name__)


@dataclass
class DriftReport:
    n_new: int
    n_reference: int
    reference: str  # "held-out": the model's val/test items as stored; "store": all earlier items
    percentile: float
    reference_quantile: float  # recon_error at that percentile of the reference
    share_above: float  # share of new items above it (about 1 - percentile/100 without drift)
    ks_statistic: float  # two-sample Kolmogorov-Smirnov, new vs reference
    threshold: float
    drifted: bool
    action: str  # none | recommend | retrain


def measure_drift(
    cfg: PipelineConfig, layout: RunLayout, store, drop: pa.Array, new_errors: np.ndarray
) -> DriftReport | None:
    """New items' reconstruction errors against the held-out (val/test) items' of the model's
    training split, as stored (all earlier items when too few held-out items are in the store)."""
    from scipy.stats import ks_2samp

    dc = cfg.drift
    if len(new_errors) == 0:
        return None
    if cfg.corpus.kind == "documents" and store.meta.get("recon_error_target") != RECON_TARGET_WORDS:
        # stores encoded before 589afba measured documents against the normalised TF-IDF inputs:
        # their errors are not comparable with the new items' (a false alarm, or a missed one)
        log.warning(
            "drift not measured: this store's reconstruction errors were written by an earlier aepipe, against "
            "a different target than the new items'; run `aepipe encode --run-dir %s` once to measure them again",
            cfg.run_dir,
        )
        return None
    t = store.read(["id", "recon_error"])
    ids = t.column("id")
    errors = t.column("recon_error").to_numpy()
    mask = pc.invert(pc.is_in(ids, value_set=drop)).to_numpy(zero_copy_only=False)
    reference = "store"
    split_path = layout.model.split
    if split_path.is_file():
        s = pq.read_table(split_path)
        held = s.column("id").filter(pc.is_in(s.column("split"), value_set=pa.array(["val", "test"])))
        held_mask = mask & pc.is_in(ids, value_set=held).to_numpy(zero_copy_only=False)
        if held_mask.sum() >= dc.min_items:
            mask, reference = held_mask, "held-out"
    ref = errors[mask]
    if len(ref) == 0:
        return None
    q = float(np.percentile(ref, dc.percentile))
    share = float(np.mean(new_errors > q))
    ks = float(ks_2samp(new_errors, ref).statistic)
    drifted = len(new_errors) >= dc.min_items and share > dc.threshold
    return DriftReport(
        len(new_errors),
        int(len(ref)),
        reference,
        dc.percentile,
        round(q, 6),
        round(share, 4),
        round(ks, 4),
        dc.threshold,
        drifted,
        dc.action if drifted else "none",
    )
