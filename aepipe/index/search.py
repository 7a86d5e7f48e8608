"""Query API: open a run directory, search by vectors, stored ids, image files or texts.

from aepipe.index.search import Searcher
s = Searcher("runs/default")
hits = s.search_images(["cat.png"], k=5)    # one list of Hit per query
hits = s.search_texts(["event loop"], k=5)  # document runs
res = s.search_arrays(vectors, k=10)        # batch jobs: (Q, k) arrays of ids and distances
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aepipe.codes.encode import codes_of
from aepipe.codes.store import open_store
from aepipe.corpus.base import BadItem
from aepipe.errors import AepipeError, DimensionMismatch, IndexMismatch, MissingArtifact
from aepipe.features import TextPreprocessor
from aepipe.files import read_json
from aepipe.index.faissio import normalize, read_index_file, set_search_params
from aepipe.layout import RunLayout
from aepipe.model.registry import current_model_dir
from aepipe.model.saved import LoadedModel, load_model


@dataclass(slots=True)  # one per result: slots make it cheaper to build
class Hit:
    query: str
    rank: int
    id: str
    distance: float  # squared L2, or 1 - cosine similarity
    label: str | None
    source: str | None
    snippet: str | None = None  # documents: the start of the text

    def to_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies field by field, ~5 % of a by-id request in the service
        return {
            "query": self.query,
            "rank": self.rank,
            "id": self.id,
            "distance": self.distance,
            "label": self.label,
            "source": self.source,
            "snippet": self.snippet,
        }


@dataclass
class SearchArrays:
    """Results of ``Searcher.search_arrays``: (queries, k) arrays."""

    id_array: pa.Array  # the stored ids, flat (queries * k), null where a query has fewer than k results
    distances: np.ndarray  # float32: squared L2, or 1 - cosine similarity; NaN as padding
    rows: np.ndarray  # int64 rows of ids.parquet (-1 as padding), e.g. to join store metadata

    @property
    def ids(self) -> np.ndarray:
        """(queries, k) object array of ids (None as padding): a Python string per hit, so bulk
        consumers should prefer ``id_array`` or ``to_arrow()``."""
        return self.id_array.to_numpy(zero_copy_only=False).reshape(self.rows.shape)

    def to_arrow(self) -> pa.Table:
        """One row per query: ``ids`` and ``distances`` as fixed-size lists of k (no Python object
        per hit; what the search service sends to bulk clients as an Arrow IPC stream)."""
        k = self.rows.shape[1]
        return pa.table(
            {
                "ids": pa.FixedSizeListArray.from_arrays(self.id_array, k),
                "distances": pa.FixedSizeListArray.from_arrays(pa.array(self.distances.ravel()), k),
            }
        )


class Searcher:
    def __init__(self, run_dir: str | Path, model_dir: str | Path | None = None):
        self.layout = RunLayout.at(run_dir)
        # pinned: every artifact below comes from this one generation until refresh()
        self.generation = self.layout.current()
        self._given_model_dir = model_dir
        files = self.generation.index
        if not files.infos.is_file() or not files.index.is_file():
            raise MissingArtifact(f"no index in {files.root}; run `aepipe index` first")
        self.infos = read_json(files.infos)
        self.index = read_index_file(files, self.infos)  # on-disk inverted lists: memory-mapped
        set_search_params(self.index, self.infos.get("params", {}))
        # ids stay an Arrow column (a 10M-item index would cost ~0.7 GB as Python strings)
        table = pq.read_table(files.ids)
        self._id_column: pa.Array = table.column("id").combine_chunks()
        # after an incremental update of an IVF index, faiss labels are explicit (ids.parquet "label"), not positions
        self._label_column = table.column("label").to_numpy() if "label" in table.column_names else None
        if self._label_column is not None:  # label -> row by binary search over the sorted labels
            self._label_order = np.argsort(self._label_column, kind="stable")
            self._sorted_labels = self._label_column[self._label_order]
        self._ids: list[str] | None = None
        self.dim = int(self.infos["dim"])
        self.metric = self.infos["metric"]
        # default: the model version that matches the live index (not a retrained RUN/model not yet indexed)
        if model_dir:
            self._model_dir = Path(model_dir)
        elif self.generation.name:  # the generation's own model
            self._model_dir = self.generation.model.root
        else:  # a run without generations: the model version that matches the live index
            self._model_dir = current_model_dir(self.layout)
        self._model: LoadedModel | None = None
        self._meta: dict[str, tuple[str | None, str | None, str | None]] | None = None
        self._row_meta: list[tuple[str, str | None, str | None, str | None]] | None = None
        self._store = None

    def refresh(self) -> bool:
        """Move to the run's newest published generation (True), or stay (False: one small JSON read).
        Between two calls every answer comes from the same generation."""
        if self.layout.current_generation_name() == self.generation.name:
            return False
        fresh = Searcher(self.layout.root, self._given_model_dir)
        self.__dict__.update(fresh.__dict__)
        return True

    @property
    def model_id(self) -> str:
        return self.infos["model_id"]

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            model = load_model(self._model_dir)
            if model.model_id != self.model_id:
                raise IndexMismatch(
                    f"index was built from model {self.model_id}, but {self._model_dir} holds model {model.model_id}; "
                    "rebuild with `aepipe encode` and `aepipe index`, or pass the matching model"
                )
            self._model = model
        return self._model

    def _store_checked(self):
        if self._store is None:
            store = open_store(self.generation.store)
            if store.model_id != self.model_id:
                raise IndexMismatch(
                    f"store was encoded with model {store.model_id} but the index with {self.model_id}; "
                    "rebuild with `aepipe index`"
                )
            self._store = store
        return self._store

    def metadata(self) -> dict[str, tuple[str | None, str | None, str | None]]:
        """id -> (label, source, snippet); snippet is None for stores without one (images)."""
        if self._meta is None:
            store = self._store_checked()
            cols = ["id", "label", "source"] + (["snippet"] if "snippet" in store.dataset.schema.names else [])
            t = store.read(cols)
            snippets = t.column("snippet").to_pylist() if "snippet" in cols else [None] * t.num_rows
            self._meta = dict(
                zip(
                    t.column("id").to_pylist(),
                    zip(t.column("label").to_pylist(), t.column("source").to_pylist(), snippets),
                )
            )
        return self._meta

    @property
    def ids(self) -> list[str]:
        """Stored ids in ids.parquet order (Python strings, made on first use)."""
        if self._ids is None:
            self._ids = self._id_column.to_pylist()
        return self._ids

    def _rows(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(id, label, source, snippet) of each ids.parquet row, built once, so a hit costs one list
        lookup (an id lookup plus a dict lookup over all ids per hit was most of the Python cost)."""
        if self._row_meta is None:
            meta, unknown = self.metadata(), (None, None, None)
            self._row_meta = [(i, *meta.get(i, unknown)) for i in self.ids]
        return self._row_meta

    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DimensionMismatch(
                f"query vectors of shape {tuple(q.shape)} have dimension {q.shape[-1] if q.ndim else 0}, "
                f"the index has dimension {self.dim} (give an (n, {self.dim}) array)"
            )
        return normalize(q, self.metric)  # cosine: normalised in a copy, never the caller's array

    def search_arrays(self, vectors: np.ndarray, k: int = 10) -> SearchArrays:
        """k nearest stored items of each vector as arrays, for batch jobs: no Python object per
        hit, so throughput stays close to faiss's own. Rows with fewer than k results are padded
        (id None, distance NaN)."""
        q = self._queries(vectors)
        dist, labels = self.index.search(q, min(k, self.index.ntotal))
        rows = self.rows_of(labels.ravel())
        ids = pc.take(self._id_column, pa.array(rows, mask=rows < 0))
        dist = np.where(labels >= 0, 1.0 - dist if self.metric == "cosine" else dist, np.nan).astype(np.float32)
        return SearchArrays(
            id_array=ids,
            distances=dist,
            rows=rows.reshape(labels.shape),
        )

    def rows_of(self, labels: np.ndarray) -> np.ndarray:
        """Row of ids.parquet of each faiss label (-1 for faiss's -1 padding or an unknown label)."""
        labels = np.asarray(labels, dtype=np.int64)
        if self._label_column is None:
            return np.where((labels >= 0) & (labels < len(self._id_column)), labels, -1)
        if not len(self._sorted_labels):
            return np.full(labels.shape, -1, np.int64)
        at = np.clip(np.searchsorted(self._sorted_labels, labels), 0, len(self._sorted_labels) - 1)
        return np.where((self._sorted_labels[at] == labels) & (labels >= 0), self._label_order[at], -1)

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, query_names: list[str] | None = None, exclude: list[str] | None = None
    ) -> list[list[Hit]]:
        """k nearest stored items of each vector, as ``Hit`` objects with label, source and snippet.
        ``exclude[i]``: an id to drop from query i's results."""
        q = self._queries(vectors)
        extra = 1 if exclude else 0
        dist, labels = self.index.search(q, min(k + extra, self.index.ntotal))
        names = query_names or [str(i) for i in range(len(q))]
        meta, cosine = self._rows(), self.metric == "cosine"
        results = []
        # Python lists, not numpy scalars: the per-hit loop is the cost here besides faiss itself
        for qi, (drow, rrow) in enumerate(zip(dist.tolist(), self.rows_of(labels).tolist())):
            hits: list[Hit] = []
            for d, r in zip(drow, rrow):
                if r < 0:
                    continue
                row = meta[r]
                if exclude and row[0] == exclude[qi]:
                    continue
                hits.append(Hit(names[qi], len(hits) + 1, row[0], 1.0 - d if cosine else d, *row[1:]))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def id_of(self, label: int) -> str | None:
        """The stored id of a faiss label."""
        row = int(self.rows_of(np.array([label]))[0])
        return None if row < 0 else self._id_column[row].as_py()

    def vectors_for_ids(self, ids: list[str]) -> np.ndarray:
        table = self._store_checked().dataset.to_table(columns=["id", "code"], filter=pc.field("id").isin(ids))
        found = dict(zip(table.column("id").to_pylist(), self._store_checked().codes(table.column("code"))))
        missing = [i for i in ids if i not in found]
        if missing:
            raise MissingArtifact(f"id(s) not in the store: {', '.join(missing[:5])}")
        return np.stack([found[i] for i in ids])

    def search_ids(self, ids: list[str], k: int = 10) -> list[list[Hit]]:
        """Neighbours of stored items (the item itself is left out)."""
        return self.search_vectors(self.vectors_for_ids(ids), k, query_names=ids, exclude=ids)

    def search_images(self, paths: list[str | Path], k: int = 10) -> list[list[Hit]]:
        model = self.model
        xs = []
        for p in paths:
            try:
                xs.append(model.prep(Path(p).read_bytes(), model.config.corpus.images.max_pixels))
            except BadItem as bad:
                raise AepipeError(f"cannot use {p} as a query: {bad.reason}") from None
            except OSError as exc:
                raise AepipeError(f"cannot read {p}: {exc.strerror or exc}") from None
        return self.search_vectors(codes_of(model, np.stack(xs)), k, query_names=[str(p) for p in paths])

    def search_texts(self, texts: list[str], k: int = 10) -> list[list[Hit]]:
        """Nearest stored documents of each query text (a document run's vocabulary and encoder)."""
        model = self.model
        if not isinstance(model.prep, TextPreprocessor):
            raise AepipeError("this run's model was trained on images; query it with --image, --id or --vectors")
        x = model.prep.transform(list(texts))  # (Q, V)
        empty = [t for t, n in zip(texts, x.sum(1)) if n <= 0]
        if empty:
            raise AepipeError(f"query {empty[0][:60]!r} has no term of the model's vocabulary; use other words")
        return self.search_vectors(codes_of(model, x), k, query_names=[t[:80] for t in texts])


def hits_table(results: list[list[Hit]]) -> pa.Table:
    rows = [h.to_dict() for hits in results for h in hits]
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("query", pa.string()),
                ("rank", pa.int32()),
                ("id", pa.string()),
                ("distance", pa.float32()),
                ("label", pa.string()),
                ("source", pa.string()),
                ("snippet", pa.string()),
            ]
        ),
    )
