"""The search service's state, free of any web framework: one run's Searcher (model, store
metadata and index loaded once), thumbnails, and ``refresh()``, which reopens everything when
the index files change (a rebuilt index, an incremental update, a new model version), so a
long-running server answers from the new index without a restart.

The HTTP layer (aepipe.serve.app) maps this class's errors to status codes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aepipe.errors import AepipeError
from aepipe.features import ImagePreprocessor, TextPreprocessor
from aepipe.index.search import Hit, SearchArrays, Searcher
from aepipe.layout import RunLayout
from aepipe.model.saved import LoadedModel
from aepipe.report.figures import thumbnail_png
from aepipe.report.html import open_run
from aepipe.report.items import ItemImages, stored_rows

log = logging.getLogger(__name__)

# a search by stored vectors that compares at most this many floats (query vectors x stored items
# x dim; a Flat scan of ~1 ms) is answered on the event loop, see runs_inline
INLINE_MAX_SCAN = 2**22


class UnknownItem(AepipeError):
    """A stored id the index does not hold."""


class BadQuery(AepipeError):
    """A query that cannot be used (not an image, no vocabulary term, wrong kind for this run)."""


class TooLarge(AepipeError):
    """An upload over the service's size limit."""


@dataclass
class Generation:
    """One consistent set of opened artifacts; replaced whole by refresh()."""

    searcher: Searcher
    items: ItemImages | None
    stamp: tuple
    opened_at: float
    labels: list[str]
    codes: np.ndarray | None  # every stored code in memory when it fits codes_in_memory_mb: by-id queries skip Parquet
    position: dict[str, int]  # id -> row of ``codes``
    scan: int  # stored floats one query may compare: n_items x dim (an upper bound for approximate indexes)


def _freeze_loaded_objects() -> None:
    """Move every object alive now (torch, the model, the id maps: millions) out of the garbage
    collector's sight. Each request makes thousands of short-lived objects (a hit per result), so
    full collections come often, and each traversed everything loaded: ~0.3 s pauses, p99 of
    100-vector searches ~300 ms before, 43 ms after (benchmarks/RESULTS-service.md). On a reopen the
    previous generation is unfrozen and collected first, so its cycles are not kept for good."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class SearchService:
    def __init__(
        self,
        run_dir: str | Path,
        max_upload_bytes: int = 5 * 2**20,
        max_k: int = 1000,
        check_every_s: float = 1.0,
        codes_in_memory_mb: float = 512,
        freeze_gc: bool = False,
    ):
        self.layout = RunLayout.at(run_dir)
        self.freeze_gc = freeze_gc
        self.codes_in_memory_mb = codes_in_memory_mb
        self.max_upload_bytes = max_upload_bytes
        self.max_k = max_k
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._gen: Generation = self._open()

    # -- generations ---------------------------------------------------------------------------

    def _stamp(self) -> tuple:
        """What changes when a new index is in place: the published generation's pointer (the Searcher
        answers from that generation), and for runs without generations the working index files and
        the model pointer."""
        files = self.layout.index
        paths = [self.layout.current_generation, files.index, files.ids, files.infos, self.layout.current_model]
        return tuple((st.st_mtime_ns, st.st_size) if (st := _stat(p)) else None for p in paths)

    def _open(self) -> Generation:
        stamp = self._stamp()
        searcher = Searcher(self.layout.root)
        rows = searcher._rows()  # noqa: SLF001  built now: requests never race to build it
        model = searcher.model
        items = None
        if isinstance(model.prep, ImagePreprocessor):
            run = open_run(self.layout)
            items = ItemImages(run.cfg, model, searcher._store_checked())  # noqa: SLF001
        labels = sorted({r[1] for r in rows if r[1] is not None})
        store = searcher._store_checked()  # noqa: SLF001
        codes, position = None, {}
        if store.n_items * store.code_size * 4 <= self.codes_in_memory_mb * 2**20:
            ids, codes = store.read_codes()  # (n, code) float32
            position = {i: p for p, i in enumerate(ids)}
        self._thumbnail.cache_clear()
        log.info("serving index %s (model %s, %d items)", searcher.infos["index_string"], searcher.model_id, len(rows))
        scan = int(searcher.index.ntotal) * searcher.dim
        generation = Generation(searcher, items, stamp, time.time(), labels, codes, position, scan)
        if self.freeze_gc:
            _freeze_loaded_objects()
        return generation

    def refresh_due(self) -> bool:
        """Whether the next ``refresh()`` will look at the index files (once every ``check_every_s``)."""
        return time.monotonic() - self._checked_at >= self.check_every_s

    def refresh(self, force: bool = False) -> bool:
        """Reopen the run if its index files changed since they were opened; True if it did.
        A half-swapped index (files missing or not matching) keeps the current generation."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.check_every_s:
            return False
        self._checked_at = now
        if not force and self._stamp() == self._gen.stamp:
            return False
        with self._lock:
            if not force and self._stamp() == self._gen.stamp:
                return False
            try:
                self._gen = self._open()
            except AepipeError as exc:
                log.warning("index files changed but cannot be opened yet (%s); still serving the previous one", exc)
                return False
        return True

    @property
    def searcher(self) -> Searcher:
        self.refresh()
        return self._gen.searcher

    def runs_inline(self, n_queries: int, label: str | None = None, by_id: bool = False) -> bool:
        """Whether a search of ``n_queries`` stored (``by_id``) or given vectors is small enough to
        answer on the event loop. Handing a ~0.1 ms search to a worker thread costs more than the
        search, and under load the threads and the loop queue for the GIL. A big scan still goes
        to a thread (faiss releases the GIL: other requests go on meanwhile), and so do a label
        filter (it may turn every stored item into a hit) and stored codes read from Parquet.
        Uploads and texts always do: their decoding and encoder pass also run largely without the
        GIL (inline, 28x28 uploads under 8 clients measured slower)."""
        gen = self._gen
        if label is not None or (by_id and gen.codes is None):
            return False
        return n_queries * gen.scan <= INLINE_MAX_SCAN

    # -- what it answers -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        s, gen = self.searcher, self._gen
        infos = s.infos
        return {
            "run_dir": str(self.layout.root),
            "model_id": s.model_id,
            "generation": s.generation.name or None,  # the published generation answering (None: a run without)
            "kind": "documents" if isinstance(s.model.prep, TextPreprocessor) else "images",
            "index_type": infos["index_string"],
            "metric": infos["metric"],
            "dim": s.dim,
            "n_items": int(s.index.ntotal),
            "recall_at_10": infos.get("recall_at_10"),
            "params": infos.get("params", {}),
            "labels": gen.labels,
            "opened_at": gen.opened_at,
        }

    def _k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise BadQuery(f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int,
        label: str | None = None,
        names: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> list[list[Hit]]:
        """k nearest items; with ``label``, only items of that label (the search looks further
        until it has k of them or has seen the whole index)."""
        s, k = self.searcher, self._k(k)
        if label is None:
            return s.search_vectors(vectors, k, names, exclude)
        wanted, n = k, int(s.index.ntotal)
        while True:
            wanted = min(wanted * 10, n)
            found = s.search_vectors(vectors, wanted, names, exclude)
            kept = [[h for h in hits if h.label == label][:k] for hits in found]
            if wanted >= n or all(len(h) == k for h in kept):
                return [[_reranked(h, r) for r, h in enumerate(hits, 1)] for hits in kept]

    def search_arrays(self, vectors: np.ndarray, k: int) -> SearchArrays:
        """k nearest items of each vector as (n, k) arrays of ids and distances (bulk by-vector
        queries: no record per hit)."""
        return self.searcher.search_arrays(vectors, self._k(k))

    def search_ids(
        self, ids: list[str], k: int, label: str | None = None
    ) -> tuple[list[list[Hit]], list[dict[str, str]]]:
        """Neighbours of stored items; unknown ids are reported one by one, the others answered."""
        s, gen = self.searcher, self._gen
        known = s.metadata()  # id -> (label, source, snippet), in memory since the generation opened
        errors = [{"id": i, "error": "id not in the store"} for i in ids if i not in known]
        good = [i for i in ids if i in known]
        if not good:
            return [], errors
        if gen.codes is not None:
            vectors = gen.codes[[gen.position[i] for i in good]]  # (q, code)
        else:
            vectors = s.vectors_for_ids(good)
        return self.search_vectors(vectors, k, label, names=good, exclude=good), errors

    def search_image_bytes(self, images: list[tuple[str, bytes]], k: int, label: str | None = None) -> list[list[Hit]]:
        s = self.searcher
        model = s.model
        if not isinstance(model.prep, ImagePreprocessor):
            raise BadQuery("this run was trained on documents; query it by text, id or vector")
        xs = []
        for name, data in images:
            if len(data) > self.max_upload_bytes:
                raise TooLarge(f"{name}: {len(data)} bytes is over the limit of {self.max_upload_bytes}")
            try:
                xs.append(model.prep(data, model.config.corpus.images.max_pixels))  # (C, H, W)
            except Exception as exc:  # BadItem (not an image, truncated, too many pixels) or a decoder error
                raise BadQuery(f"{name} is not a usable image: {getattr(exc, 'reason', exc)}") from None
        codes = query_codes(model, np.stack(xs))  # (Q, C, H, W) -> (Q, code)
        return self.search_vectors(codes, k, label, names=[n for n, _ in images])

    def search_texts(self, texts: list[str], k: int, label: str | None = None) -> list[list[Hit]]:
        s = self.searcher
        model = s.model
        if not isinstance(model.prep, TextPreprocessor):
            raise BadQuery("this run was trained on images; query it by image, id or vector")
        x = model.prep.transform(list(texts))  # (Q, V)
        empty = [t for t, n in zip(texts, x.sum(1)) if n <= 0]
        if empty:
            raise BadQuery(f"query {empty[0][:60]!r} has no term of the model's vocabulary; use other words")
        return self.search_vectors(query_codes(model, x), k, label, names=[t[:80] for t in texts])

    def item(self, item_id: str) -> dict[str, Any]:
        rows = stored_rows(self.searcher._store_checked(), [item_id])  # noqa: SLF001
        if item_id not in rows:
            raise UnknownItem(f"id {item_id!r} is not in the store")
        r = rows[item_id]
        return {"id": r.id, "label": r.label, "source": r.source, "position": r.position, "snippet": r.snippet}

    def thumbnail(self, item_id: str, size: int = 96) -> bytes:
        """PNG of a stored image item (the original from the corpus, else its decoded code)."""
        if self._gen.items is None:
            raise BadQuery("a document run has no thumbnails; see the item's snippet")
        self.refresh()
        return self._thumbnail(item_id, size)

    @lru_cache(maxsize=4096)  # noqa: B019  one service per process; cleared on refresh
    def _thumbnail(self, item_id: str, size: int) -> bytes:
        assert self._gen.items is not None
        found = self._gen.items.images([item_id])
        if item_id not in found:
            raise UnknownItem(f"id {item_id!r} is not in the store")
        return thumbnail_png(found[item_id][0], size)


@torch.inference_mode()
def query_codes(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """Codes of query inputs, (Q, C, H, W) or (Q, V) -> (Q, code): the same encoder pass as
    ``codes_of``, without the decoder pass that ``codes_of`` makes to measure reconstruction error
    (a third of an upload's time in the service)."""
    net = model.net
    device = next(net.parameters()).device
    return net.encode(torch.from_numpy(np.asarray(x, dtype=np.float32)).to(device)).float().cpu().numpy()


def _reranked(hit: Hit, rank: int) -> Hit:
    hit.rank = rank
    return hit


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None


def hits_json(results: list[list[Hit]], names: list[str]) -> list[dict[str, Any]]:
    return [{"query": name, "hits": [h.to_dict() for h in hits]} for name, hits in zip(names, results)]
