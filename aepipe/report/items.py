"""Stored items as people see them: the original input of an image item (read back from the corpus
at the position the store recorded), or the snippet of a document. Used by the run report, the
contact sheets and the search service for thumbnails."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from aepipe.codes.store import CodeStore, open_store
from aepipe.config import PipelineConfig
from aepipe.corpus import Corpus, Quarantine, Shard, open_corpus
from aepipe.errors import AepipeError
from aepipe.features import ImagePreprocessor
from aepipe.model.saved import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class StoredRow:
    id: str
    label: str | None
    source: str | None
    position: int
    snippet: str | None


def stored_rows(store: CodeStore, ids: list[str]) -> dict[str, StoredRow]:
    """Store metadata of ``ids`` (those not in the store are missing from the result)."""
    names = store.dataset.schema.names
    cols = ["id", "label", "source", "position"] + (["snippet"] if "snippet" in names else [])
    t = store.dataset.to_table(columns=cols, filter=pc.field("id").isin(ids)).to_pydict()
    snippets = t.get("snippet", [None] * len(t["id"]))
    return {
        i: StoredRow(i, lb, src, pos, sn)
        for i, lb, src, pos, sn in zip(t["id"], t["label"], t["source"], t["position"], snippets)
    }


def read_inputs(
    cfg: PipelineConfig, prep: ImagePreprocessor, positions: list[int], corpus: Corpus | None = None
) -> dict[int, np.ndarray]:
    """Model inputs (C, H, W) of the corpus items at ``positions``, read from the corpus the run was
    encoded from (``corpus``: that corpus already open). Items that cannot be read (moved, now
    broken) are missing from the result."""
    if not positions:
        return {}
    corpus = corpus or open_corpus(cfg.corpus)
    wanted = sorted(set(positions))
    files = getattr(corpus, "_files", None)
    if files is not None:  # folder: read only the wanted files, not every file between them
        wanted = [p for p in wanted if p < len(files)]
        shard = Shard(0, 0, 0, files=tuple(files[p] for p in wanted), positions=tuple(wanted))
    else:
        shard = Shard(0, wanted[0], min(wanted[-1] + 1, corpus.n_items))
    out: dict[int, np.ndarray] = {}
    for batch in corpus.iter_batches(prep, 256, Quarantine("report"), shard=shard, keep=set(wanted)):  # type: ignore[arg-type]
        out.update(zip(batch.positions, batch.x))
    return out


class ItemImages:
    """Input images of stored ids, for thumbnails: read from the corpus; when the corpus cannot
    be read any more, the decoded stored code (marked as such) stands in."""

    def __init__(self, cfg: PipelineConfig, model: LoadedModel, store: CodeStore | None = None):
        self.cfg, self.model = cfg, model
        self.store = store or open_store(Path(cfg.run_dir) / "store")
        self.is_image = isinstance(model.prep, ImagePreprocessor)
        self._corpus: Corpus | None = None  # opened on first use, kept (a folder corpus lists its files once)

    def images(self, ids: list[str]) -> dict[str, tuple[np.ndarray, bool]]:
        """id -> (image (C, H, W) in [0, 1], True if decoded from the code rather than the original)."""
        if not self.is_image:
            raise AepipeError("a document run has no images; use the stored snippets")
        rows = stored_rows(self.store, ids)
        try:
            self._corpus = self._corpus or open_corpus(self.cfg.corpus)
            positions = [r.position for r in rows.values()]
            found = read_inputs(self.cfg, self.model.prep, positions, self._corpus)  # type: ignore[arg-type]
        except AepipeError as exc:
            log.warning("cannot read the corpus for thumbnails (%s); showing decoded codes", exc)
            found = {}
        out = {i: (found[r.position], False) for i, r in rows.items() if r.position in found}
        missing = [i for i in rows if i not in out]
        if missing and self.model.net.decodes_codes:  # a U-Net / residual decoder needs the input too
            for i, img in zip(missing, self.decode(self.codes(missing))):
                out[i] = (img, True)
        return out

    def codes(self, ids: list[str]) -> np.ndarray:
        t = self.store.dataset.to_table(columns=["id", "code"], filter=pc.field("id").isin(ids))
        by_id = dict(zip(t.column("id").to_pylist(), self.store.codes(t.column("code"))))
        return np.stack([by_id[i] for i in ids]).astype(np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (N, code) through the decoder: (N, C, H, W) in [0, 1]."""
        with torch.inference_mode():
            return self.model.net.activate(
                self.model.net.decode(torch.from_numpy(codes))
            ).numpy()  # (N, code) -> (N, C, H, W)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model.net.reconstruct(torch.from_numpy(x)).numpy()  # (N, C, H, W) -> (N, C, H, W)
