"""Did the autoencoder beat the linear baseline? Every training run answers in ``metrics.json``
(``baseline``), the CLI summary and the report: reconstruction of held-out items next to PCA at
the same code size and, with labels, precision@10 of held-out queries against the training items
next to PCA codes (LSA, a truncated SVD of the weighted word counts, for documents). When the
autoencoder loses, a warning lists concrete changes to try."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.decomposition import TruncatedSVD

from aepipe.config import PipelineConfig
from aepipe.quality.metrics import fit_pca, paired_difference, per_query_precision

log = logging.getLogger(__name__)


def linear_codes(cfg: PipelineConfig, xtrain: np.ndarray, xtest: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """The baseline's codes of train and test items at the AE's code size: PCA for images, LSA
    (scikit-learn TruncatedSVD, uncentred, as LSA is defined) for documents. (N, ...) -> (N, code)"""
    a, b = xtrain.reshape(len(xtrain), -1), xtest.reshape(len(xtest), -1)
    if cfg.corpus.kind == "documents":
        k = max(1, min(cfg.model.code_size, a.shape[1] - 1, len(a) - 1))
        svd = TruncatedSVD(n_components=k, random_state=cfg.training.seed).fit(a)
        return "lsa", svd.transform(a), svd.transform(b)
    pca = fit_pca(a, cfg.model.code_size, cfg.training.seed)
    return "pca", pca.transform(a), pca.transform(b)


def retrieval_comparison(
    cfg: PipelineConfig,
    ae_train: np.ndarray,
    ae_test: np.ndarray,
    base_train: np.ndarray,
    base_test: np.ndarray,
    y_train: list[str | None],
    y_test: list[str | None],
) -> dict[str, Any] | None:
    """P@10 of held-out queries against the training items, AE codes vs baseline codes, with the
    index's metric, and the paired difference with its standard error over the queries (``noise``:
    on 60 queries a few neighbours either way is within it). None without labels (every item
    needs one, and two labels at least)."""
    if not len(y_test) or any(v is None for v in [*y_train, *y_test]) or len(set(y_train)) < 2:
        return None
    lt, lq = np.array(y_train, dtype=object), np.array(y_test, dtype=object)
    metric = cfg.index.metric
    ae = per_query_precision(ae_train, ae_test, lt, lq, metric=metric, k=10)
    base = per_query_precision(base_train, base_test, lt, lq, metric=metric, k=10)
    return {
        "ae_precision_at_10": float(ae.mean()),
        "baseline_precision_at_10": float(base.mean()),
        "metric": metric,
        "n_queries": len(lq),
        "noise": paired_difference(ae, base),
    }


def baseline_verdict(
    cfg: PipelineConfig,
    metrics: dict[str, Any],
    name: str,
    retrieval: dict[str, Any] | None,
    n_parameters: int,
    input_shape: tuple[int, ...],
) -> dict[str, Any]:
    """``metrics['baseline']``: who won on each measure, and hints when the AE lost."""
    recon_win = metrics["ae"]["sse_per_item"] < metrics["pca"]["sse_per_item"]
    ret_win = None if retrieval is None else retrieval["ae_precision_at_10"] > retrieval["baseline_precision_at_10"]
    outcome = {"reconstruction": "won" if recon_win else "lost"}
    if retrieval is not None:
        ae, base = retrieval["ae_precision_at_10"], retrieval["baseline_precision_at_10"]
        outcome["precision@10"] = "won" if ae > base else "tied" if ae == base else "lost"
    held_out = metrics.get("evaluated_on", "test") == "test"
    verdict: dict[str, Any] = {
        "name": name,
        "held_out": held_out,  # False: measured on validation/training items (no test split)
        "reconstruction_baseline": "pca",
        "ae_beats_reconstruction": recon_win,
        "retrieval": retrieval,
        "ae_beats_retrieval": ret_win,
        "ae_beats_baseline": recon_win and ret_win is not False,
        "outcome": outcome,  # per measure: won / tied / lost (a tie on P@10: e.g. the PCA start was kept)
        "hints": [],
    }
    if not verdict["ae_beats_baseline"]:
        verdict["hints"] = loss_hints(cfg, metrics, recon_win, ret_win, n_parameters, input_shape)
        short = [f"{result} on {m}" for m, result in outcome.items() if result != "won"]
        notes = " (training did not beat its PCA start, which was kept)" if metrics.get("kept_pca_start") else ""
        close = within_noise(retrieval) if outcome.get("precision@10") == "lost" else None
        if close:  # say how close it was
            notes += f" (precision@10 {close})"
        log.warning(
            "the autoencoder did not beat %s: %s of %s items%s; try: %s",
            name.upper() if name == "lsa" else "PCA",
            " and ".join(short),
            "held-out" if held_out else f"{metrics.get('evaluated_on')} (not held-out)",
            notes,
            "; ".join(verdict["hints"]),
        )
    return verdict


def outcome_word(b: dict[str, Any], measure: str) -> str:
    """won / tied / lost for one measure of a verdict (verdicts saved before "outcome" say won/lost)."""
    if "outcome" in b and measure in b["outcome"]:
        return str(b["outcome"][measure])
    key = "ae_beats_reconstruction" if measure == "reconstruction" else "ae_beats_retrieval"
    return "won" if b[key] else "lost"


def within_noise(retrieval: dict[str, Any] | None) -> str | None:
    """'within noise: +0.0050 ± 0.0120 over 60 queries' when the paired P@10 difference of a
    retrieval comparison is within two standard errors, else None (also for comparisons saved
    before the noise was recorded)."""
    noise = (retrieval or {}).get("noise")
    if not noise or not noise["within_noise"]:
        return None
    return (
        f"within noise: {noise['difference']:+.4f} ± {noise['standard_error']:.4f} "
        f"over {retrieval['n_queries']} queries"  # type: ignore[index]  # noise implies a comparison
    )


def retrieval_outcome(b: dict[str, Any]) -> str:
    """won / tied / lost on precision@10, and when the paired difference is within two standard
    errors: 'won, within noise: +0.0050 ± 0.0120 over 60 queries'."""
    word = outcome_word(b, "precision@10")
    close = within_noise(b["retrieval"])
    if close and word != "tied":
        word += f", {close}"
    return word


def loss_hints(
    cfg: PipelineConfig,
    metrics: dict[str, Any],
    recon_win: bool,
    ret_win: bool | None,
    n_parameters: int,
    input_shape: tuple[int, ...],
) -> list[str]:
    """Concrete overrides that address the likely cause, most likely first."""
    tc, mc = cfg.training, cfg.model
    hints = []
    if metrics.get("epochs", 0) + 1 >= metrics.get("max_epochs", tc.max_epochs):
        steps = int(metrics.get("steps") or tc.min_steps or 0)
        more = f"training.min_steps={2 * steps} or " if steps else ""
        hints.append(f"more steps: {more}training.max_epochs={2 * tc.max_epochs} (it stopped at the limit, not early)")
    if n_parameters > 100 * max(metrics.get("n_train", 1), 1):
        hints.append(
            f"a smaller network: {n_parameters:,} parameters for {metrics.get('n_train')} training items; "
            "e.g. model.n_layers=2 model.nodes_per_layer=[256, 128]"
        )
    if cfg.corpus.kind == "images" and mc.architecture == "dense" and len(input_shape) == 3:
        if input_shape[1] * input_shape[2] > 32 * 32:
            hints.append("convolutions for images this large: model.architecture=conv")
    if not recon_win and mc.code_size > 8:
        hints.append(f"a smaller code beats PCA more easily: model.code_size={mc.code_size // 2}")
    if ret_win is False and tc.knn_target is None:
        hints.append("codes shaped for retrieval: training.knn_target={k: 20}")
    if not hints:
        hints.append(f"a lower learning rate (training.lr={tc.lr / 3:.2g}) or more items")
    return hints


def baseline_summary(metrics: dict[str, Any]) -> str:
    """One line: 'AE SSE/item 4.74 vs PCA 1.24 (lost), P@10 0.59 vs PCA 0.90 (lost) on 180 held-out items'."""
    b = metrics["baseline"]
    base = b["name"].upper()
    parts = [
        f"AE SSE/item {metrics['ae']['sse_per_item']:.3f} vs PCA {metrics['pca']['sse_per_item']:.3f}"
        f" ({outcome_word(b, 'reconstruction')})"
    ]
    r = b["retrieval"]
    if r is not None:
        parts.append(
            f"P@10 {r['ae_precision_at_10']:.3f} vs {base} {r['baseline_precision_at_10']:.3f} ({retrieval_outcome(b)})"
        )
    where = "held-out" if b.get("held_out", True) else f"{metrics.get('evaluated_on')} (not held-out)"
    return ", ".join(parts) + f" on {metrics['n_test']} {where} items"
