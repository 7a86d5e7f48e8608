"""Document corpora: a folder of ``.txt``/``.md`` files (recursive), a Parquet, JSONL or CSV
file with a text column, or ``python-docs`` (docstrings of Python's own standard library,
labelled by package: a real text corpus that needs no download).

Same interface as :class:`~aepipe.corpus.images.ImageCorpus`: ``n_items``, ``has_labels``,
``shards``, ``iter_raw``, ``iter_batches`` and ``infer_preprocessor`` (which fits the
vocabulary). Raw payloads are bytes (files) or str (tables); bad documents become BadItem
payloads and end in the quarantine.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from aepipe.config import CorpusConfig, FeaturesConfig
from aepipe.corpus.base import (
    BadItem,
    ItemBatch,
    Quarantine,
    RawItem,
    Shard,
    iter_folder,
    iter_row_slices,
    list_files,
    make_shards,
)
from aepipe.corpus.text import DecodedText, check_text, decode_text, snippet
from aepipe.errors import CorpusError
from aepipe.features.text import TextPreprocessor, fit_text_preprocessor

log = logging.getLogger(__name__)

PYTHON_DOCS = "python-docs"
# Packages of the standard library with enough docstrings to be a class of their own.
_PYTHON_DOCS_MIN_PER_PACKAGE = 20
_PYTHON_DOCS_MIN_WORDS = 20
_PYTHON_DOCS_SKIP = {"test", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "venv", "site-packages"}


class DocumentCorpus:
    """A readable, shardable document corpus described by a CorpusConfig."""

    def __init__(self, cfg: CorpusConfig):
        self.cfg = cfg
        self.format = _detect_format(cfg)
        self._files: list[str] | None = None
        self._records: list[tuple[str, Any, str | None, str]] | None = None  # (id, text or BadItem, label, source)
        self._dataset: pads.Dataset | None = None
        if self.format == "folder":
            self._files = list_files(Path(cfg.source))
        elif self.format == "python_docs":
            self._records = python_docs_records()
        elif self.format == "csv":
            self._records = _read_csv(cfg)
        elif self.format == "parquet":
            self._dataset = _open_parquet(cfg)
        n = self._count()
        self.n_items = min(n, cfg.limit) if cfg.limit else n

    def _count(self) -> int:
        if self._files is not None:
            return len(self._files)
        if self._records is not None:
            return len(self._records)
        if self._dataset is not None:
            return self._dataset.count_rows()
        with open(self.cfg.source, "rb") as fh:  # jsonl: one document per non-blank line
            return sum(1 for line in fh if line.strip())

    @property
    def has_labels(self) -> bool:
        if self.format == "folder":
            return any("/" in f for f in (self._files or []))
        if self._records is not None:
            return any(r[2] is not None for r in self._records)
        if self._dataset is not None:
            return self.cfg.label_column is not None and self.cfg.label_column in self._dataset.schema.names
        return any(item.label is not None for item in self._iter_jsonl(Shard(0, 0, min(self.n_items, 100))))

    def shards(self, rows_per_shard: int) -> list[Shard]:
        return make_shards(self.n_items, rows_per_shard, self._files)

    def iter_raw(self, shard: Shard | None = None) -> Iterator[RawItem]:
        """Items of ``shard`` (default: all); payloads are DecodedText or BadItem."""
        shard = shard or Shard(0, 0, self.n_items, tuple(self._files or ()))
        if self._files is not None:
            items = self._iter_folder(shard)
        elif self._records is not None:
            items = (
                RawItem(pos=p, id=rid, source=source, label=label, payload=text)
                for p, (rid, text, label, source) in zip(
                    range(shard.start, shard.stop), self._records[shard.start : shard.stop]
                )
            )
        elif self._dataset is not None:
            items = self._iter_parquet(shard)
        else:
            items = self._iter_jsonl(shard)
        for item in items:
            item.payload = self._decode(item.payload)
            yield item

    def _decode(self, payload: Any) -> DecodedText | BadItem:
        try:
            if isinstance(payload, BadItem):
                return payload
            if payload is None:
                raise BadItem(f"missing text in column '{self.cfg.documents.text_column}'")
            if isinstance(payload, (bytes, bytearray, memoryview)):
                return decode_text(bytes(payload), self.cfg.documents.encoding, self.cfg.documents.max_doc_bytes)
            if isinstance(payload, DecodedText):
                doc = payload
            elif isinstance(payload, str):
                doc = DecodedText(payload, "utf-8")
            else:
                raise BadItem(f"text column holds a {type(payload).__name__}, not text")
            if len(doc.text) > self.cfg.documents.max_doc_bytes:
                limit = self.cfg.documents.max_doc_bytes
                raise BadItem(f"document of {len(doc.text)} characters exceeds corpus.documents.max_doc_bytes {limit}")
            return check_text(doc)
        except BadItem as bad:
            return bad

    def _iter_folder(self, shard: Shard) -> Iterator[RawItem]:
        return iter_folder(
            Path(self.cfg.source),
            shard,
            "a text",
            self.cfg.documents.extensions,
            "corpus.documents.extensions",
            self.cfg.documents.max_doc_bytes,
            "corpus.documents.max_doc_bytes",
        )

    def _iter_parquet(self, shard: Shard) -> Iterator[RawItem]:
        names = self._dataset.schema.names  # type: ignore[union-attr]
        cols = [self.cfg.documents.text_column] + [
            c for c in (self.cfg.id_column, self.cfg.label_column) if c and c in names
        ]
        has_id = self.cfg.id_column in names
        for first, rows in iter_row_slices(self._dataset, cols, shard):
            texts = rows[self.cfg.documents.text_column].to_pylist()
            ids = rows[self.cfg.id_column].to_pylist() if has_id else [None] * len(texts)
            labels = rows[self.cfg.label_column].to_pylist() if self.cfg.label_column in rows else [None] * len(texts)
            for p, item_id, text, label in zip(range(first, first + len(texts)), ids, texts, labels):
                yield self._row_item(p, item_id, text, label, has_id)

    def _row_item(self, p: int, item_id: Any, text: Any, label: Any, has_id: bool) -> RawItem:
        rid = str(item_id) if item_id is not None else f"row-{p}"
        raw = RawItem(
            pos=p,
            id=rid,
            source=f"{self.cfg.source}#row={p}",
            label=None if label is None else str(label),
            payload=text,
        )
        if has_id and item_id is None:
            raw.payload = BadItem(f"missing id in column '{self.cfg.id_column}'")
        return raw

    def _iter_jsonl(self, shard: Shard) -> Iterator[RawItem]:
        pos = -1
        with open(self.cfg.source, "rb") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                pos += 1
                if pos < shard.start:
                    continue
                if pos >= shard.stop:
                    break
                item = RawItem(
                    pos=pos, id=f"line-{line_no}", source=f"{self.cfg.source}#line={line_no}", label=None, payload=None
                )
                try:
                    row = json.loads(decode_text(line, self.cfg.documents.encoding).text)
                    if not isinstance(row, dict):
                        raise BadItem(f"line {line_no} is not a JSON object")
                except BadItem as bad:
                    item.payload = bad
                except json.JSONDecodeError as exc:
                    item.payload = BadItem(f"invalid JSON on line {line_no}: {exc.msg}")
                else:
                    label = row.get(self.cfg.label_column) if self.cfg.label_column else None
                    has_id = self.cfg.id_column in row
                    item = self._row_item(
                        pos, row.get(self.cfg.id_column), row.get(self.cfg.documents.text_column), label, has_id
                    )
                    item.source = f"{self.cfg.source}#line={line_no}"
                    if not has_id:
                        item.id = f"line-{line_no}"
                yield item

    def texts(self, keep: set[int] | None = None) -> Iterator[str]:
        """The decoded text of every good document (restricted to positions in ``keep``)."""
        for raw in self.iter_raw():
            if (keep is None or raw.pos in keep) and isinstance(raw.payload, DecodedText):
                yield raw.payload.text

    def infer_preprocessor(
        self, features: FeaturesConfig, keep: set[int] | None = None, architecture: str = "dense", seed: int = 0
    ) -> TextPreprocessor:
        """Fit the vocabulary and weighting (features.text) on the corpus (or the positions in ``keep``).
        ``architecture`` and ``seed`` are accepted for the interface of ImageCorpus (a vocabulary has no size
        to choose)."""
        texts = list(self.texts(keep))
        if not texts:
            raise CorpusError(f"corpus {self.cfg.source} holds no readable document")
        return fit_text_preprocessor(texts, features.text)

    def iter_batches(
        self,
        prep: TextPreprocessor,
        batch_size: int,
        quarantine: Quarantine,
        shard: Shard | None = None,
        keep: set[int] | None = None,
    ) -> Iterator[ItemBatch]:
        """Vectorised batches (x: (B, V) float32) with ``snippet`` and ``text_encoding`` metadata;
        bad documents, and documents without a term of the vocabulary, go to ``quarantine``."""
        pending: list[RawItem] = []
        for raw in self.iter_raw(shard):
            if keep is not None and raw.pos not in keep:
                continue
            if isinstance(raw.payload, BadItem):
                quarantine.add(raw.id, raw.source, raw.payload.reason)
                continue
            pending.append(raw)
            if len(pending) == batch_size:
                batch = self._vectorise(prep, pending, quarantine)
                if batch is not None:
                    yield batch
                pending = []
        if pending:
            batch = self._vectorise(prep, pending, quarantine)
            if batch is not None:
                yield batch

    def _vectorise(self, prep: TextPreprocessor, items: list[RawItem], quarantine: Quarantine) -> ItemBatch | None:
        counts = prep.counts([it.payload.text for it in items])
        n_terms = np.asarray(counts.sum(1)).ravel()
        good = [i for i, n in enumerate(n_terms) if n > 0]
        for i in np.flatnonzero(n_terms == 0):
            quarantine.add(items[i].id, items[i].source, "no term of the model's vocabulary")
        if not good:
            return None
        x = prep.weigh(counts[good])  # (B, V)
        kept = [items[i] for i in good]
        for it in kept:
            if it.payload.encoding.endswith("(fallback)"):
                log.warning("%s: not UTF-8 nor a declared or detected encoding; decoded as Latin-1", it.source)
        meta = {
            "snippet": [snippet(it.payload.text, self.cfg.documents.snippet_chars) for it in kept],
            "text_encoding": [it.payload.encoding for it in kept],
        }
        return ItemBatch(
            [it.id for it in kept],
            x,
            [it.label for it in kept],
            [it.source for it in kept],
            [it.pos for it in kept],
            meta,
        )


def _detect_format(cfg: CorpusConfig) -> str:
    if cfg.format != "auto":
        fmt = cfg.format
    elif cfg.source == PYTHON_DOCS:
        return "python_docs"
    else:
        p = Path(cfg.source)
        if not p.exists():
            raise CorpusError(
                f"corpus source {cfg.source} does not exist (give a folder, .parquet, .jsonl, .csv or '{PYTHON_DOCS}')"
            )
        suffix = p.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            fmt = "jsonl"
        elif suffix in (".csv", ".tsv"):
            fmt = "csv"
        elif suffix == ".parquet" or (p.is_dir() and any(p.rglob("*.parquet"))):
            fmt = "parquet"
        elif p.is_dir():
            fmt = "folder"
        else:
            raise CorpusError(
                f"cannot tell the format of {cfg.source}; set corpus.format (folder, parquet, jsonl, csv)"
            )
    if fmt not in ("folder", "parquet", "jsonl", "csv", "python_docs"):
        raise CorpusError(
            f"corpus.format {fmt} is for images; documents are folder, parquet, jsonl, csv or python_docs"
        )
    if fmt != "python_docs" and not Path(cfg.source).exists():
        raise CorpusError(f"corpus source {cfg.source} does not exist")
    return fmt


def _open_parquet(cfg: CorpusConfig) -> pads.Dataset:
    try:
        ds = pads.dataset(cfg.source, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"cannot open Parquet corpus {cfg.source}: {exc}") from None
    if cfg.documents.text_column not in ds.schema.names:
        raise CorpusError(
            f"Parquet corpus {cfg.source} has no column '{cfg.documents.text_column}' "
            f"(columns: {', '.join(ds.schema.names)}); set corpus.documents.text_column"
        )
    return ds


def _read_csv(cfg: CorpusConfig) -> list[tuple[str, Any, str | None, str]]:
    """Rows of a CSV (TSV for .tsv) file with a header; the whole file is decoded once."""
    path = Path(cfg.source)
    data = path.read_bytes()
    try:
        doc = decode_text(data, cfg.documents.encoding, check=False)  # rows are checked one by one
    except BadItem as bad:
        raise CorpusError(f"cannot read CSV corpus {path}: {bad.reason}") from None
    if doc.encoding.endswith("(fallback)"):
        log.warning("%s: not UTF-8 nor a declared or detected encoding; decoded as Latin-1", path)
    reader = csv.DictReader(io.StringIO(doc.text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if not reader.fieldnames or cfg.documents.text_column not in reader.fieldnames:
        raise CorpusError(
            f"CSV corpus {path} has no column '{cfg.documents.text_column}' "
            f"(columns: {', '.join(reader.fieldnames or [])}); set corpus.documents.text_column"
        )
    records = []
    for row_no, row in enumerate(reader, 1):
        item_id = row.get(cfg.id_column) or f"row-{row_no}"
        label = row.get(cfg.label_column) if cfg.label_column else None
        text: Any = row.get(cfg.documents.text_column)
        text = DecodedText(text, doc.encoding) if text else BadItem("empty document")
        records.append((item_id, text, label or None, f"{path}#row={row_no}"))
    return records


def python_docs_records() -> list[tuple[str, Any, str | None, str]]:
    """Docstrings (modules, classes, functions) of the standard library's packages, labelled by
    package. Parsed with ``ast`` from the source files, never imported. Only packages with at
    least 20 docstrings of 20+ words count; the exact set depends on the Python version."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    by_package: dict[str, list[tuple[str, Any, str | None, str]]] = {}
    for init in sorted(stdlib.glob("*/__init__.py")):
        package = init.parent.name
        if package in _PYTHON_DOCS_SKIP:
            continue
        for path in sorted(init.parent.rglob("*.py")):
            rel = path.relative_to(stdlib).as_posix()
            if "test" in path.relative_to(stdlib).parts[1:]:
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= _PYTHON_DOCS_MIN_WORDS:
                    name = getattr(node, "name", "<module>")
                    item_id = f"{rel}:{name}:{getattr(node, 'lineno', 0)}"
                    by_package.setdefault(package, []).append((item_id, DecodedText(doc, "utf-8"), package, str(path)))
    records = [r for docs in by_package.values() if len(docs) >= _PYTHON_DOCS_MIN_PER_PACKAGE for r in docs]
    if not records:
        raise CorpusError(f"no docstrings found under {stdlib}")
    return records
