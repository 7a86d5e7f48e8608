"""Topics of a document run: each k-means cluster of the document codes, described by its top
terms, its size, its most common labels and a few exemplar documents.

Top terms come from the model itself: the cluster's mean code is decoded through the decoder
into a distribution over the vocabulary (softmax of the word logits), and terms are ranked by
how much more likely they are in this topic than across all topics, p * log(p / p_all)
(each term's contribution to the KL divergence from the corpus-wide distribution), so words
common everywhere do not fill every topic.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from aepipe.errors import ConfigError
from aepipe.features import TextPreprocessor
from aepipe.model.saved import LoadedModel

METHOD = "decoded cluster mean: softmax word distribution p, ranked by p * log(p / p_all)"


def decode_term_weights(model: LoadedModel, codes: np.ndarray) -> np.ndarray:
    """Word distributions the decoder assigns to codes. (k, code) -> (k, V)"""
    with torch.inference_mode():
        logits = model.net.decode(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32)))
        return torch.softmax(logits.reshape(len(codes), -1), dim=-1).numpy()


def describe_topics(
    model: LoadedModel,
    means: np.ndarray,
    assign: np.ndarray,
    distance: np.ndarray,
    ids: list[str],
    labels: list[str | None],
    snippets: list[str | None],
    n_terms: int = 10,
    n_exemplars: int = 3,
) -> dict[str, Any]:
    """One entry per cluster: top terms with their probability, size, labels and the exemplars
    (the members nearest the cluster centre), from every item's ids, labels and snippets in
    memory. The cluster stage streams its store instead and calls :func:`topics_report` with
    the same per-cluster summaries."""
    top_labels, exemplars = [], []
    for c in range(len(means)):
        members = np.flatnonzero(assign == c)
        nearest = members[np.argsort(distance[members])[:n_exemplars]]
        top_labels.append(Counter(lb for lb in (labels[i] for i in members) if lb is not None).most_common(3))
        exemplars.append([{"id": ids[i], "label": labels[i], "snippet": snippets[i]} for i in nearest])
    return topics_report(model, means, np.bincount(assign, minlength=len(means)), top_labels, exemplars, n_terms)


def topics_report(
    model: LoadedModel,
    means: np.ndarray,
    sizes: np.ndarray,
    top_labels: list[list[tuple[str, int]]],
    exemplars: list[list[dict[str, Any]]],
    n_terms: int = 10,
) -> dict[str, Any]:
    """The topics from per-cluster summaries only (no per-item data): sizes, the most common
    labels with their counts (most common first) and the exemplars (nearest first)."""
    if not isinstance(model.prep, TextPreprocessor):
        raise ConfigError("topics need a document run (corpus.kind=documents): this model has no text vocabulary")
    vocab = np.asarray(model.prep.vocabulary, dtype=object)
    k = len(means)
    sizes = np.asarray(sizes)
    p = decode_term_weights(model, means)  # (k, V)
    p_all = (sizes[:, None] * p).sum(0) / max(sizes.sum(), 1)  # (V,)
    score = p * np.log(np.maximum(p, 1e-12) / np.maximum(p_all, 1e-12))
    topics = []
    for c in range(k):
        top = np.argsort(-score[c])[:n_terms]
        topics.append(
            {
                "topic": c,
                "size": int(sizes[c]),
                "top_terms": [{"term": str(vocab[v]), "weight": round(float(p[c, v]), 5)} for v in top],
                "labels": [{"label": lb, "count": int(n)} for lb, n in top_labels[c]],
                "exemplars": exemplars[c],
            }
        )
    topics.sort(key=lambda t: -int(t["size"]))  # type: ignore[call-overload]
    return {"model_id": model.model_id, "n_topics": k, "method": METHOD, "topics": topics}


def format_topics(report: dict[str, Any], width: int = 100) -> str:
    """Readable text: one block per topic, largest first."""
    lines = [f"{report['n_topics']} topics (model {report['model_id']}; top terms: {report['method']})"]
    for t in report["topics"]:
        labels = ", ".join(f"{x['label']} {x['count']}" for x in t["labels"])
        lines.append(f"\ntopic {t['topic']}  ({t['size']} documents{'; labels: ' + labels if labels else ''})")
        lines.append("  terms: " + ", ".join(x["term"] for x in t["top_terms"]))
        for ex in t["exemplars"]:
            text = (ex["snippet"] or "").replace("\n", " ")
            line = f"  - {ex['id']}: {text}"
            lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)
