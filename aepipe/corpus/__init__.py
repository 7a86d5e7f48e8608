"""Corpora: readers that yield raw items, and mappers that turn them into arrays.

Reader -> mapper -> writer: a reader lists shards (serialisable: paths and row
ranges) and yields :class:`RawItem` for a shard; a preprocessor turns a raw item
into a model input or raises :class:`BadItem`; bad items go to the quarantine.
"""

from typing import Any

from aepipe.config import CorpusConfig
from aepipe.corpus.base import BadItem, ItemBatch, Quarantine, RawItem, Shard
from aepipe.corpus.documents import DocumentCorpus
from aepipe.corpus.images import ImageCorpus, ImagePreprocessor, open_image_corpus
from aepipe.corpus.text import TextPreprocessor

Corpus = ImageCorpus | DocumentCorpus
Preprocessor = ImagePreprocessor | TextPreprocessor


def open_corpus(cfg: CorpusConfig) -> Corpus:
    """The reader for ``cfg.kind``: images or documents."""
    return DocumentCorpus(cfg) if cfg.kind == "documents" else ImageCorpus(cfg)


def preprocessor_from_dict(d: dict[str, Any]) -> Preprocessor:
    """Rebuild a saved preprocessor (``preprocess.json``) of either kind."""
    return TextPreprocessor.from_dict(d) if d.get("kind") == "text" else ImagePreprocessor.from_dict(d)


__all__ = [
    "BadItem",
    "Corpus",
    "DocumentCorpus",
    "Preprocessor",
    "TextPreprocessor",
    "open_corpus",
    "preprocessor_from_dict",
    "ImageCorpus",
    "ImagePreprocessor",
    "ItemBatch",
    "Quarantine",
    "RawItem",
    "Shard",
    "open_image_corpus",
]
